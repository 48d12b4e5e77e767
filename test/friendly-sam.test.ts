/**
 * examples/friendly-sam.mjs (Friendly-SAM, Li et al. CVPR 2024, written with the arena-kernel API
 * and defineSamVariant) against PyTorch trajectories written from the paper
 * (scripts/gen-friendly-sam-fixtures.py, test/fixtures/optim/friendly-sam.json): two parameter
 * groups with their own rho, sigma, lambda and lr over SGD with momentum and weight decay, a
 * parameter without a gradient on some steps, and a step whose gradient holds a NaN (skipped
 * whole, the EMA untouched). cpu float64 and float32, wasm float32 and float64, fused and per
 * tensor; WebGPU float32 fused and per tensor.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { Tensor, tidy } from '../src/tensor/tensor.js';
import defineFriendlySAM from '../examples/friendly-sam.mjs';
import { acquireWebGPU } from './helpers/webgpu.js';

interface StepRef {
  params: number[][];
  m: number[][];
  skipped: boolean;
}
interface Fixture {
  shapes: number[][];
  group_of: number[];
  groups: { rho: number; sigma: number; lmbda: number; lr: number; momentum: number; weight_decay: number }[];
  init: number[][];
  data: { A: number[][]; B: number[][]; active: number[]; nan: [number, number] | null }[];
  float64: StepRef[];
  float32: StepRef[];
}

const fx = JSON.parse(readFileSync(new URL('./fixtures/optim/friendly-sam.json', import.meta.url), 'utf8')) as Fixture;
const FriendlySAM = defineFriendlySAM(fg);
const TOL = { float64: { atol: 1e-12, rtol: 1e-10 }, float32: { atol: 2e-6, rtol: 2e-5 } };

let cpu: CpuBackend;
let wasm: WasmBackend;
beforeAll(async () => {
  cpu = new CpuBackend();
  wasm = await createWasmBackend({ threads: 1 });
});
afterAll(() => wasm?.dispose());

function expectClose(what: string, ours: ArrayLike<number>, want: readonly number[], tol: { atol: number; rtol: number }): void {
  expect(ours.length, `${what}: length`).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(ours[i] - want[i]) <= tol.atol + tol.rtol * Math.abs(want[i]))) {
      expect.fail(`${what}[${i}]: ours ${ours[i]} vs PyTorch ${want[i]} (|diff| ${Math.abs(ours[i] - want[i]).toExponential(3)})`);
    }
  }
}

async function trajectory(b: Backend, dtype: 'float32' | 'float64', fused: boolean): Promise<void> {
  const Arr = dtype === 'float64' ? Float64Array : Float32Array;
  const up = (v: readonly number[], shape: number[]) => Tensor.fromStorage(b.upload(Arr.from(v), dtype), shape.slice(), b);
  const params = fx.shapes.map((s, k) => up(fx.init[k], s).requiresGrad_());
  const groups = fx.groups.map(({ rho, sigma, lmbda, lr, momentum, weight_decay }, gi) => ({
    params: params.filter((_, k) => fx.group_of[k] === gi),
    rho,
    sigma,
    lmbda,
    lr,
    momentum,
    weightDecay: weight_decay,
  }));
  const opt = new FriendlySAM(groups, fg.optim.SGD, { fused });
  const label = `${b.name} ${dtype} ${fused ? 'fused' : 'per tensor'}`;
  try {
    for (const [t, step] of fx.data.entries()) {
      const A = step.A.map((v, k) => up(v, fx.shapes[k]).keep());
      const B = step.B.map((v, k) => {
        const vals = v.slice();
        if (step.nan && step.nan[0] === k) vals[step.nan[1]] = NaN;
        return up(vals, fx.shapes[k]).keep();
      });
      const loss = opt.step(() =>
        tidy(() => {
          let total: Tensor | null = null;
          for (const k of step.active) {
            const term = A[k].mul(params[k]).mul(params[k]).sum().add(B[k].mul(params[k].tanh()).sum());
            total = total ? total.add(term) : term;
          }
          total!.backward();
          return total!;
        }),
      );
      if (loss instanceof Tensor) loss.dispose();
      for (const x of [...A, ...B]) x.dispose();
      const ref = fx[dtype][t];
      const m = opt.engine.stateTensors('fsam_m')!;
      for (let k = 0; k < params.length; k++) {
        expectClose(`${label} step ${t} param ${k}`, await params[k].data(), ref.params[k], TOL[dtype]);
        expectClose(`${label} step ${t} m ${k}`, await m[k].data(), ref.m[k], TOL[dtype]);
      }
    }
    // The NaN step was skipped and counted as such.
    const c = await opt.counters();
    expect(c, label).toEqual({ attempted: fx.data.length, taken: fx.data.length - 1, skipped: 1 });
  } finally {
    opt.dispose();
  }
}

describe('examples/friendly-sam.mjs against PyTorch (test/fixtures/optim/friendly-sam.json)', () => {
  it('the fixture has a skipped NaN step and a parameter without a gradient', () => {
    expect(fx.float64.filter((s) => s.skipped)).toHaveLength(1);
    expect(fx.data.some((d) => !d.active.includes(3))).toBe(true);
  });
  it('cpu float64, fused and per tensor', async () => {
    await trajectory(cpu, 'float64', true);
    await trajectory(cpu, 'float64', false);
  });
  it('cpu float32, fused and per tensor', async () => {
    await trajectory(cpu, 'float32', true);
    await trajectory(cpu, 'float32', false);
  });
  it('wasm float32 and float64, fused and per tensor', async () => {
    await trajectory(wasm, 'float32', true);
    await trajectory(wasm, 'float32', false);
    await trajectory(wasm, 'float64', true);
  });
  it('webgpu float32, fused and per tensor', async () => {
    const { backend: gpu, reason } = await acquireWebGPU();
    if (!gpu) {
      console.warn(`skipped: no WebGPU adapter (${reason})`);
      return;
    }
    await trajectory(gpu, 'float32', true);
    await trajectory(gpu, 'float32', false);
  }, 180_000);
});

describe('defineSamVariant checks a variant when it is defined', () => {
  const { arena, optim } = fg;
  const ema = arena.defineArenaKernel({
    name: 'ema',
    vectors: { g: 'read', m: 'readwrite' },
    hyper: { beta: 0.9 },
    body: ({ g, m }, h, _s, k) => ({ m: k.lerp(g, m, h.beta) }),
  });
  it('rejects a direction no kernel writes', () => {
    expect(() => optim.defineSamVariant({ name: 'V', hyper: { beta: 0.9 }, ascent: [ema], direction: 'd' })).toThrow(/defineSamVariant "V": direction 'd' is neither 'g' nor written by an ascent kernel \(g, m\)/);
  });
  it('rejects a kernel hyper-parameter the variant does not declare', () => {
    expect(() => optim.defineSamVariant({ name: 'V', ascent: [ema], direction: 'm' })).toThrow(/defineSamVariant "V": kernel "ema" reads hyper-parameter 'beta', which the variant does not declare in hyper/);
  });
  it('rejects an ascent that is not a list of kernels', () => {
    expect(() => optim.defineSamVariant({ name: 'V', ascent: [{}] as never, direction: 'g' })).toThrow(/ascent must be a list of kernels from defineArenaKernel/);
  });
  it('names the class after the variant and takes its options per group', () => {
    const V = optim.defineSamVariant({ name: 'EmaSAM', hyper: { beta: 0.9 }, ascent: [ema], direction: 'm' });
    expect(V.name).toBe('EmaSAM');
    const p = Tensor.fromStorage(cpu.upload(Float64Array.of(1, 2), 'float64'), [2], cpu).requiresGrad_();
    const opt = new V([{ params: [p], beta: 0.5 }], fg.optim.SGD, { lr: 0.1 });
    expect(opt.paramGroups[0].beta).toBe(0.5);
    expect(() => new V([p], fg.optim.SGD, { lr: 0.1, betta: 1 })).toThrow(/EmaSAM \(base SGD\): unknown option "betta"/);
    opt.dispose();
  });
});
