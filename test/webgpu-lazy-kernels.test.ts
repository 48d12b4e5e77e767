/**
 * Kernel families that load on first dispatch (Runtime.lazy, src/kernels/webgpu/index.ts): in a
 * browser the conv, softmax, sort, gather, scan, rng and math-prelude kernels are imported when an
 * op first needs them, while the op itself returns at once. These tests hold a family's import
 * open and check that the work issued meanwhile (kernels, writes, releases, submits) runs in issue
 * order once it arrives, that a readback waits for it, that a failed import is reported by the
 * next readback, and that the real families give the CPU's results when they load lazily (this
 * file's backend is made with preloadKernels: false, before anything else loads them).
 */
import { describe, expect, it } from 'vitest';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import type { Backend, Storage } from '../src/kernels/backend.js';
import { createWebGPUBackend, type WebGPUBackend } from '../src/kernels/webgpu/index.js';
import { asGPU, kernelFamily, type Runtime } from '../src/kernels/webgpu/runtime.js';
import { unary } from '../src/kernels/webgpu/elementwise.js';
import { needsMath } from '../src/kernels/webgpu/wgsl.js';
import { MATH_FNS } from '../src/kernels/webgpu/wgsl-math.js';
import { UNARY_OPS, BINARY_OPS } from '../src/kernels/optable.js';
import { expectClose, randomF32 } from './helpers/webgpu.js';

let gpu: WebGPUBackend | null = null;
let reason = '';
try {
  gpu = await createWebGPUBackend({ preloadKernels: false });
} catch (e) {
  if (process.env.REQUIRE_WEBGPU === '1') throw e;
  reason = (e as Error).message;
}
const cpu = new CpuBackend();

/** A family whose import resolves (or fails) when the test says so. */
function heldFamily(rt: Runtime) {
  let open!: () => void;
  let fail!: (e: Error) => void;
  const gate = new Promise<void>((res, rej) => ((open = res), (fail = rej)));
  const family = kernelFamily('held test', async () => {
    await gate;
    return { neg: (x: Storage, out: Storage) => unary(rt, 'neg', asGPU(x), asGPU(out), 0, 0) };
  });
  return { family, open, fail };
}

const flat = (n: number) => ({ shape: [n], aStrides: [1], bStrides: [1] });
const read = async (b: Backend, s: Storage) => Array.from(await b.read(s));

describe.skipIf(!gpu)(`WebGPU kernel families loaded on first dispatch ${reason}`, () => {
  it('runs the work issued while a family loads in issue order, and a readback waits for it', async () => {
    const b = gpu!;
    const { family, open } = heldFamily(b.rt);
    const x = b.upload(Float32Array.of(1, 2, 3, 4), 'float32');
    const y = b.alloc(4, 'float32');
    const z = b.alloc(4, 'float32');
    const w = b.alloc(4, 'float32');
    const scratch = b.alloc(4, 'float32');
    b.rt.lazy(family, (m) => m.neg(x, y)); // waits for the import: y = -x
    b.binary('add', y, x, z, flat(4)); // an eager kernel after it: z = y + x = 0
    const host = Float32Array.of(10, 20, 30, 40);
    b.write(x, host); // a write after both: they must still see x = 1..4
    host.fill(-7); // the caller may reuse its array at once
    b.unary('neg', x, w); // sees the new x
    b.release(scratch);
    b.flush();
    let done = false;
    const pending = read(b, y).then((v) => ((done = true), v));
    await new Promise((r) => setTimeout(r, 50));
    expect(done).toBe(false);
    open();
    expect(await pending).toEqual([-1, -2, -3, -4]);
    expect(await read(b, z)).toEqual([0, 0, 0, 0]);
    expect(await read(b, x)).toEqual([10, 20, 30, 40]);
    expect(await read(b, w)).toEqual([-10, -20, -30, -40]);
    // Once loaded, the family runs at once (no backlog), and the released storage went back.
    b.rt.lazy(family, (m) => m.neg(w, y));
    expect(await read(b, y)).toEqual([10, 20, 30, 40]);
    for (const s of [x, y, z, w]) b.release(s);
  });

  it('reports a family that fails to load at the next readback, naming it', async () => {
    const b = gpu!;
    const { family, fail } = heldFamily(b.rt);
    const x = b.upload(Float32Array.of(1, 2), 'float32');
    const y = b.alloc(2, 'float32');
    b.rt.lazy(family, (m) => m.neg(x, y));
    fail(new Error('network down'));
    await expect(b.read(y)).rejects.toThrow(/the held test kernels failed to load: network down/);
    // The backend goes on working.
    b.unary('neg', x, y);
    expect(await read(b, y)).toEqual([-1, -2]);
    b.release(x);
    b.release(y);
  });

  it('reports an error that a deferred kernel throws at the next readback, naming its family', async () => {
    const b = gpu!;
    const { family, open } = heldFamily(b.rt);
    const x = b.upload(Float32Array.of(1, 2, 3), 'float32');
    const short = b.alloc(2, 'float32');
    b.rt.lazy(family, (m) => m.neg(x, short)); // 3 inputs for 2 outputs: unary's RangeError, later
    open();
    await expect(b.read(x)).rejects.toThrow(/the held test kernels, dispatched while a kernel family loaded: unary neg: 3 inputs for 2 outputs/);
    expect(Array.from(await b.read(x))).toEqual([1, 2, 3]);
    b.release(x);
    b.release(short);
  });

  it('the real families (softmax, math prelude, gather, sort, random) give the CPU results when loaded lazily', async () => {
    const b = gpu!;
    const n = 3 * 37;
    const data = randomF32(n, 5, -4, 4);
    const run = async (be: Backend) => {
      const x = be.upload(data, 'float32');
      const sm = be.alloc(n, 'float32');
      be.softmax(x, sm, { rows: 3, cols: 37, log: true });
      const e = be.alloc(n, 'float32');
      be.unary('exp', sm, e); // first use of the math prelude
      const t = be.alloc(n, 'float32');
      be.unary('tanh', x, t);
      const sum = be.alloc(n, 'float32');
      be.binary('add', e, t, sum, flat(n));
      const order = be.alloc(n, 'int32');
      be.argsort(x, order, { outer: 3, size: 37, inner: 1, descending: false });
      const out = [await be.read(sum), await be.read(order)];
      for (const s of [x, sm, e, t, sum, order]) be.release(s);
      return out;
    };
    const [gSum, gOrder] = await run(b);
    const [cSum, cOrder] = await run(cpu);
    expectClose(gSum, cSum, { rtol: 1e-5, atol: 1e-6 }, 'exp(logSoftmax(x)) + tanh(x)');
    expect(Array.from(gOrder)).toEqual(Array.from(cOrder));
  });
});

describe('which elementwise ops wait for the math prelude', () => {
  it('exactly those whose WGSL calls a function of the math table', () => {
    const calls = (expr: string) => [...expr.matchAll(/\b(fg_[a-z0-9_]+)\(/g)].some((m) => m[1] in MATH_FNS);
    for (const [op, def] of Object.entries({ ...UNARY_OPS, ...BINARY_OPS })) expect(needsMath(def.wgsl), op).toBe(calls(def.wgsl));
    expect(needsMath(UNARY_OPS.exp.wgsl)).toBe(true);
    expect(needsMath(UNARY_OPS.relu.wgsl)).toBe(false);
  });
});
