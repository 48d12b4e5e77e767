/**
 * fg.testing.checkOptimizer: it passes the worked examples (examples/lion.mjs, a base optimizer;
 * examples/friendly-sam.mjs, a SAM-family member) on cpu, wasm and WebGPU, and it reports each
 * kind of wrong definition with the backend, the check and the worst element:
 * - a kernel that loses its precision in float32 (float64-reference),
 * - a SAM member whose EMA does not skip a NaN gradient (nan-skip),
 * - a SAM member whose state collides with its base optimizer's (rho0-vs-base).
 * Lion also holds the fix it found: an arena optimizer now skips a step with a NaN gradient.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { CheckOptimizerError, checkOptimizer, type CheckReport } from '../src/testing/index.js';
import defineLion from '../examples/lion.mjs';
import defineFriendlySAM from '../examples/friendly-sam.mjs';
import { acquireWebGPU } from './helpers/webgpu.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';

const { arena, optim } = fg;
let hosts: Backend[];
let wasm: WasmBackend;
beforeAll(async () => {
  wasm = await createWasmBackend({ threads: 1 });
  hosts = [new CpuBackend(), wasm];
});
afterAll(() => wasm?.dispose());

async function allBackends(): Promise<Backend[]> {
  const { backend: gpu, reason } = await acquireWebGPU();
  if (!gpu) console.warn(`webgpu not checked: no adapter (${reason})`);
  return gpu ? [...hosts, gpu] : hosts;
}

function checksRun(r: CheckReport): string[] {
  return [...new Set(r.results.map((x) => `${x.check} ${x.backend}`))].sort();
}

describe('checkOptimizer passes the worked examples', () => {
  it('Lion (a defineOptimizer definition) on every backend', async () => {
    const backends = await allBackends();
    const r = await checkOptimizer(defineLion(arena), { options: { lr: 0.01, weight_decay: 0.1 }, groups: [{}, { lr: 0.003, beta1: 0.95 }], backends });
    expect(r.passed, r.toString()).toBe(true);
    expect(r.name).toBe('lion');
    for (const b of backends) expect(checksRun(r)).toContain(`float64-reference ${b.name}`);
    expect(checksRun(r)).toEqual(expect.arrayContaining(['fused-vs-per-tensor cpu', 'fused-vs-per-tensor wasm', 'nan-skip cpu', 'nan-skip wasm']));
    // Not a SAM member: that check is reported as skipped, not passed.
    expect(r.skipped.join('\n')).toMatch(/rho0-vs-base: not a member of the SAM family/);
  }, 240_000);

  it('Friendly-SAM (a defineSamVariant class) on every backend, rho = 0 equal to SGD', async () => {
    const backends = await allBackends();
    const r = await checkOptimizer(defineFriendlySAM(fg), { options: { rho: 0.05, sigma: 1, lmbda: 0.9 }, groups: [{}, { rho: 0.1 }], baseOptions: { lr: 0.05, momentum: 0.9, weightDecay: 1e-3 }, backends });
    expect(r.passed, r.toString()).toBe(true);
    expect(r.name).toBe('FriendlySAM');
    expect(checksRun(r)).toContain('rho0-vs-base cpu');
    if (backends.length === 3) expect(checksRun(r)).toContain('nan-skip webgpu');
  }, 240_000);
});

describe('checkOptimizer reports wrong definitions', () => {
  it('a kernel that cancels catastrophically in float32: float64-reference, with the worst element', async () => {
    // SGD written as ((p - lr g) + 4096) - 4096: exact in float64, rounded to 2^-11 in float32.
    const sloppy = arena.defineOptimizer({
      name: 'sloppy-sgd',
      vectors: { p: 'readwrite', g: 'read' },
      hyper: { lr: 0.01 },
      body: ({ p, g }, h, _s, k) => ({ p: k.sub(k.add(k.sub(p, k.mul(h.lr, g)), 4096), 4096) }),
    });
    const err = await checkOptimizer(sloppy, { backends: hosts }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CheckOptimizerError);
    const msg = (err as CheckOptimizerError).message;
    expect(msg).toMatch(/^checkOptimizer\(sloppy-sgd\): \d+ check\(s\) failed/);
    expect(msg).toMatch(/sloppy-sgd: float64-reference on cpu float32 \(fused, against cpu float64\): FAILED, worst at step \d+, parameter \d+ \[\d+\] \(shape \[[\d,]+\]\): got -?[\d.e-]+, expected -?[\d.e-]+ \([\d.]+ ulps, tolerance 16\)/);
    expect(msg).toMatch(/float64-reference on wasm float32/);
    // float64 itself and the per-tensor baseline agree: only the precision check fails.
    const report = (err as CheckOptimizerError).report;
    expect(report.failures.every((f) => f.check === 'float64-reference' && f.dtype === 'float32')).toBe(true);
    expect(report.failures[0].worst!.ulps).toBeGreaterThan(16);
  }, 120_000);

  it('a SAM member whose EMA takes in a NaN gradient: nan-skip', async () => {
    const direction = arena.defineArenaKernel({
      name: 'unguarded-direction',
      vectors: { g: 'read', ema: 'readwrite', d: 'write' },
      hyper: { beta: 0.9 },
      // No guard on S_FLAG: the finite elements of a NaN step's gradient still move the EMA.
      body: ({ g, ema }, h, _s, k) => {
        const m = k.lerp(g, ema, h.beta);
        return { ema: m, d: k.sub(g, m) };
      },
    });
    const Unguarded = optim.defineSamVariant({ name: 'UnguardedSAM', hyper: { beta: 0.9 }, ascent: [direction], direction: 'd' });
    const r = await checkOptimizer(Unguarded, { backends: hosts, throwOnFailure: false });
    expect(r.passed).toBe(false);
    expect(new Set(r.failures.map((f) => `${f.check} ${f.backend}`))).toEqual(new Set(['nan-skip cpu', 'nan-skip wasm']));
    expect(r.failures[0].message).toMatch(/UnguardedSAM: nan-skip on cpu float32 \(NaN gradient at step 2, later steps equal a run without it\): FAILED, worst at step \d+, parameter \d+/);
  }, 120_000);

  it("a SAM member whose state shares its base optimizer's name: rho0-vs-base", async () => {
    // The EMA is kept in 'momentum_buffer', which is also SGD's momentum: the variant changes the
    // base update even with rho = 0.
    const direction = arena.defineArenaKernel({
      name: 'colliding-direction',
      vectors: { g: 'read', momentum_buffer: 'readwrite', d: 'write' },
      hyper: { beta: 0.9 },
      slots: { flag: arena.S_FLAG },
      guard: (_h, s, k) => k.eq(s.flag, 0),
      body: ({ g, momentum_buffer }, h, _s, k) => {
        const m = k.lerp(g, momentum_buffer, h.beta);
        return { momentum_buffer: m, d: k.sub(g, m) };
      },
    });
    const Colliding = optim.defineSamVariant({ name: 'CollidingSAM', hyper: { beta: 0.9 }, ascent: [direction], direction: 'd' });
    const r = await checkOptimizer(Colliding, { backends: [hosts[0]], checks: ['rho0-vs-base'], throwOnFailure: false });
    expect(r.failures.map((f) => f.check)).toEqual(['rho0-vs-base']);
    expect(r.failures[0].message).toMatch(/CollidingSAM: rho0-vs-base on cpu float64 \(rho = 0, against SGD alone\): FAILED, worst at step \d+/);
  }, 60_000);

  it('rejects bad arguments with messages that name them', async () => {
    await expect(checkOptimizer(defineLion(arena), { steps: 1 })).rejects.toThrow(/checkOptimizer\(lion\): steps must be an integer >= 2, got 1/);
    await expect(checkOptimizer(defineLion(arena), { backends: ['tpu' as never] })).rejects.toThrow(/unknown backend "tpu"/);
    await expect(checkOptimizer(42 as never)).rejects.toThrow(/expected a definition from defineOptimizer/);
  });
});

describe('arena optimizers skip a step with a NaN gradient (found by checkOptimizer)', () => {
  it('Lion leaves parameters and state alone, fused and per tensor', async () => {
    const Lion = defineLion(arena);
    for (const fused of [true, false]) {
      const p = fg.tensor([1, -2, 3], { requiresGrad: true }).keep();
      const opt = Lion.create([p], { lr: 0.1, fused });
      p.grad = fg.tensor([1, NaN, 1]);
      opt.step();
      expect(Array.from(await p.data()), `fused ${fused}`).toEqual([1, -2, 3]);
      expect(Array.from(await opt.stateTensors('exp_avg')[0].data())).toEqual([0, 0, 0]);
      opt.zeroGrad();
      p.grad = fg.tensor([1, -1, 1]);
      opt.step();
      expect(Array.from(await p.data())).toEqual([Math.fround(0.9), Math.fround(-1.9), Math.fround(2.9)]);
      opt.dispose();
    }
  });
});
