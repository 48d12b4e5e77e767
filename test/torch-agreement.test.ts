/**
 * Edges around the fixes that closed the differential suite's known disagreements with PyTorch
 * (test/diff-pytorch.test.ts), where that suite's fixtures do not reach: erfc's accuracy where
 * 1 - erf(x) cancels (mpmath references from scripts/gen-erfc-fixtures.py), int32 pow's
 * wrap-around and negative exponents, the non-finite softmax rows on every backend, and the
 * errors of pad's crops and of bool ** bool.
 */
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { erfc } from '../src/kernels/mathfns.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import { createWebGPUBackend } from '../src/kernels/webgpu/index.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { acquireWebGPU } from './helpers/webgpu.js';

const ERFC = JSON.parse(readFileSync(new URL('./fixtures/erfc/mpmath.json', import.meta.url), 'utf8')) as { cases: { x: number; erfc: number }[] };

describe('float64 erfc', () => {
  it('is within 3 ulps of mpmath where 1 - erf(x) cancels and in the tail', () => {
    const bad = ERFC.cases
      .map(({ x, erfc: want }) => ({ x, want, got: erfc(x), ulps: Math.abs(erfc(x) - want) / (Math.abs(want) * 2 ** -52) }))
      .filter((c) => !(c.ulps <= 3));
    expect(bad).toEqual([]);
  });
});

interface Config {
  name: string;
  backend: () => Backend | null;
}
const cpu = new CpuBackend();
let wasm: Backend | null = null;
let gpu: Backend | null = null;
// The same device with the real-GPU kernel choice: softmax rows longer than 64 get a workgroup
// each (a CPU-emulated adapter gives every row one thread), so both WGSL row reductions run.
let gpuWorkgroupRows: Backend | null = null;
let gpuReason = '';
const CONFIGS: Config[] = [
  { name: 'cpu', backend: () => cpu },
  { name: 'wasm', backend: () => wasm },
  { name: 'webgpu', backend: () => gpu },
  { name: 'webgpu (workgroup rows)', backend: () => gpuWorkgroupRows },
];

beforeAll(async () => {
  wasm = await createWasmBackend({ threads: 1 });
  const acquired = await acquireWebGPU();
  gpu = acquired.backend;
  gpuReason = acquired.reason;
  gpuWorkgroupRows = acquired.backend ? await createWebGPUBackend({ device: acquired.backend.device, cpuEmulated: false }) : null;
});

async function onBackend(cfg: Config, skip: (why: string) => void, fn: () => Promise<void>): Promise<void> {
  const b = cfg.backend();
  if (!b) return skip(`no ${cfg.name} backend: ${gpuReason}`);
  const prev = getBackend();
  setBackend(b);
  try {
    await fn();
  } finally {
    setBackend(prev);
  }
}

const read = async (t: Tensor): Promise<number[]> => Array.from(await t.data(), Number);

for (const cfg of CONFIGS) {
  describe(`on ${cfg.name}`, () => {
    it('int32 ** int32 stays int32, wraps like int32, and truncates negative exponents as PyTorch', async ({ skip }) => {
      await onBackend(cfg, skip, async () => {
        // Eight of each so that the WebGPU kernel takes both its vec4 and its scalar walks.
        const base = [3, -3, 2, 1, -1, -1, 0, 7, 5, -2, 0, 46341];
        const exponent = [40, 21, -1, -5, -3, -4, -1, 0, 13, 31, 0, 2];
        for (const n of [base.length, 8]) {
          const a = fg.tensor(Int32Array.from(base.slice(0, n)), { dtype: 'int32' });
          const b = fg.tensor(Int32Array.from(exponent.slice(0, n)), { dtype: 'int32' });
          const y = fg.pow(a, b);
          expect(y.dtype).toBe('int32');
          // The reference: exact integer powers reduced mod 2^32, and 1 / a truncated below 0.
          const want = base.slice(0, n).map((x, i) => {
            const e = exponent[i];
            if (e < 0) return x === 1 ? 1 : x === -1 ? (e % 2 === 0 ? 1 : -1) : 0;
            return Number(BigInt.asIntN(32, BigInt(x) ** BigInt(e)));
          });
          expect(await read(y), `n = ${n}`).toEqual(want);
        }
      });
    });

    it('softmax and logSoftmax rows with NaN, +inf, all -inf and logits near 1000 agree with the CPU reference', async ({ skip }) => {
      // 70 columns: past the 64 that one thread takes on a real GPU. The special value sits late
      // in its row so that a thread other than the first of the workgroup sees it.
      const cols = 70;
      const row = (special: number[]) => Array.from({ length: cols }, (_, j) => (j >= cols - special.length ? special[j - (cols - special.length)] : Math.sin(j)));
      const rows = [row([NaN]), row([Infinity]), Array<number>(cols).fill(-Infinity), row([]).map((v) => 1000 + v)];
      const data = Float32Array.from(rows.flat());
      const ops = [fg.softmax, fg.logSoftmax];
      const wants: number[][] = [];
      await onBackend(CONFIGS[0], skip, async () => {
        for (const f of ops) wants.push(await read(f(fg.tensor(data, { shape: [4, cols] }), 1)));
      });
      // PyTorch: a NaN or +inf anywhere in a row (x - max = inf - inf) makes the whole row NaN.
      for (const [k, want] of wants.entries()) expect(want.slice(0, 2 * cols).every(Number.isNaN), `cpu ${ops[k].name} of the NaN and +inf rows`).toBe(true);
      await onBackend(cfg, skip, async () => {
        for (const [k, f] of ops.entries()) {
          const want = wants[k];
          const got = await read(f(fg.tensor(data, { shape: [4, cols] }), 1));
          for (let i = 0; i < want.length; i++) {
            if (Number.isNaN(want[i])) expect(got[i], `${f.name} [${i}]`).toBeNaN();
            else if (!Number.isFinite(want[i])) expect(got[i], `${f.name} [${i}]`).toBe(want[i]);
            else expect(Math.abs(got[i] - want[i]), `${f.name} [${i}]: ${got[i]} vs ${want[i]}`).toBeLessThanOrEqual(4 * 2 ** -23 * Math.max(1, Math.abs(want[i])));
          }
        }
      });
    });
  });
}

describe('errors', () => {
  it('pad names itself when negative pads crop more than the dim holds, and crops otherwise', async () => {
    const x = fg.tensor(Float32Array.from([0, 1, 2, 3, 4, 5]), { shape: [2, 3] });
    expect(() => fg.pad(x, [-2, -2])).toThrow(/pad: pads \[-2,-2\] crop more than dim 1 of \[2,3\]/);
    expect(await read(fg.pad(x, [-1, 1, 0, -1], 9))).toEqual([1, 2, 9]);
    expect(fg.pad(x, [-3, 0]).shape).toEqual([2, 0]);
  });

  it('pow of two bool tensors throws, as PyTorch ("pow" not implemented for Bool)', () => {
    const b = fg.tensor([true, false]);
    expect(() => fg.pow(b, b)).toThrow(/pow: not implemented for bool \*\* bool/);
  });

  it('an int32 tensor to a whole-number power stays int32; to a negative one it throws, as PyTorch', async () => {
    const a = fg.tensor(Int32Array.from([3, -2, 5]), { dtype: 'int32' });
    const cubed = fg.pow(a, 3);
    expect(cubed.dtype).toBe('int32');
    expect(await read(cubed)).toEqual([27, -8, 125]);
    expect(fg.pow(a, 0.5).dtype).toBe(fg.getDefaultDtype());
    expect(() => fg.pow(a, -1)).toThrow(/pow: integers to negative integer powers are not allowed \(int32 \[3\] \*\* -1\)/);
  });
});
