/**
 * The fusion pass of captured steps (src/compile/fuse.ts) and the fused elementwise kernels
 * (src/kernels/cpu/fusedmap.ts, src/kernels/wasm/fusedmap.ts, src/kernels/webgpu/fusedmap.ts): a fused replay equals the eager
 * step bit for bit on cpu and wasm for the MLP, the CNN and the ViT with SGD, SAM and AdamW; it
 * makes fewer calls than the same plan unfused; a chain whose intermediate escapes (returned, or
 * read later by another call) keeps it; on WebGPU (src/kernels/webgpu/fusedmap.ts) the fused
 * replay stays within float32 tolerance, in fewer calls.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { acquireWebGPU, expectClose } from './helpers/webgpu.js';
import { withBackend } from './helpers/backend-scope.js';
import { rng } from './helpers/random.js';
import { expectBitEqual, runSteps, trainingStep, type StepRun } from './helpers/train-steps.js';

const { nn } = fg;
type Tensor = fg.Tensor;
type ModelKind = 'mlp' | 'cnn' | 'vit';
type OptKind = 'SGD' | 'SAM' | 'AdamW';
type Net = fg.nn.Module & { forward(x: Tensor): Tensor };

function makeModel(m: ModelKind): Net {
  if (m === 'mlp') return nn.models.mlp([12, 16, 16, 4]);
  if (m === 'cnn') return nn.models.resnetSmall({ inChannels: 1, numClasses: 4, widths: [4, 8] });
  return nn.models.vit({ imageSize: 8, patchSize: 4, dim: 8, depth: 1, heads: 2, mlpRatio: 2, numClasses: 4 });
}
const inputShape = (m: ModelKind, n: number) => (m === 'mlp' ? [n, 12] : [n, 1, 8, 8]);

function makeStep(m: ModelKind, o: OptKind): { model: Net; step: (x: Tensor, y: Tensor) => Tensor } {
  const model = makeModel(m);
  model.train();
  return { model, step: trainingStep(model, o) };
}

/** Steps from seed 7 with the same data each run: eager, captured unfused, or captured fused. */
async function run(m: ModelKind, o: OptKind, mode: 'eager' | 'unfused' | 'fused', steps = 5): Promise<StepRun> {
  fg.manualSeed(7);
  const { model, step } = makeStep(m, o);
  return runSteps(model, step, { shape: inputShape(m, 4), steps, seed: 500, compile: mode === 'eager' ? null : { fuse: mode === 'fused' } });
}

const CASES: [ModelKind, OptKind][] = (['mlp', 'cnn', 'vit'] as const).flatMap((m) => (['SGD', 'SAM', 'AdamW'] as const).map((o): [ModelKind, OptKind] => [m, o]));

for (const which of ['cpu', 'wasm'] as const) {
  describe(`fused replay on ${which}: bit for bit the eager step, in fewer calls`, () => {
    const backend = hostBackend(which);
    for (const [m, o] of CASES) {
      it(`${m} + ${o}`, () => withBackend(backend(), async () => {
        const eager = await run(m, o, 'eager');
        const fused = await run(m, o, 'fused');
        const unfused = await run(m, o, 'unfused');
        expectBitEqual(fused.losses, eager.losses, 'losses (fused)');
        expectBitEqual(unfused.losses, eager.losses, 'losses (unfused)');
        eager.state.forEach(([k, v], i) => {
          expect(fused.state[i][0]).toBe(k);
          expectBitEqual(fused.state[i][1], v, k);
        });
        const f = fused.stats!.plan!;
        const u = unfused.stats!.plan!;
        expect(fused.stats!.replays).toBeGreaterThanOrEqual(3);
        expect(f.fusedKernels).toBeGreaterThan(0);
        expect(u.fusedKernels).toBe(0);
        expect(f.calls).toBeLessThan(u.calls);
        // The CNN's elementwise work (BatchNorm's running statistics updated in place, relu's
        // backward, residual adds, gradient copies into the arena) goes: at most half the calls.
        if (m === 'cnn') expect(f.calls * 2).toBeLessThanOrEqual(u.calls);
      }));
    }
  });
}

/** A step of elementwise ops on x alone, compiled, against eager: results bit for bit. */
async function elementwiseCase(step: (x: Tensor) => Tensor[], fuse = true): Promise<{ stats: fg.CompileStats; equal: boolean }> {
  const r = rng(3);
  const data = Array.from({ length: 4 }, () => Float32Array.from({ length: 6 * 5 }, () => r() * 4 - 2));
  const compiled = fg.compile((x: Tensor) => step(x), { fuse, onMessage: (m) => { throw new Error(m); } });
  let equal = true;
  for (const d of data) {
    const x = fg.tensor(d, { shape: [6, 5] });
    const want = step(x);
    const got = compiled(x);
    for (let k = 0; k < want.length; k++) {
      const [a, b] = [await got[k].data(), await want[k].data()];
      for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) equal = false;
    }
    fg.dispose([x, ...want, ...got]);
  }
  return { stats: compiled.stats(), equal };
}

for (const which of ['cpu', 'wasm'] as const) {
  describe(`fusion rules on ${which}`, () => {
    const backend = hostBackend(which);

    it('fuses a chain with a transpose and a broadcast in it into one kernel', () => withBackend(backend(), async () => {
      const chain = (x: Tensor) => [fg.add(fg.mul(fg.exp(x).transpose(0, 1), 0.5), fg.sum(x, 1, true).transpose(0, 1))];
      const fused = await elementwiseCase(chain);
      const plain = await elementwiseCase(chain, false);
      expect(fused.equal).toBe(true);
      expect(fused.stats.plan!.fusedKernels).toBeGreaterThanOrEqual(1);
      expect(fused.stats.plan!.calls).toBeLessThan(plain.stats.plan!.calls);
    }));

    it('keeps an intermediate that the step returns (written, and equal to eager)', () => withBackend(backend(), async () => {
      // b is returned as well as consumed by the chain: it must be materialized by the fused kernel.
      const res = await elementwiseCase((x) => {
        const b = fg.mul(fg.exp(x), 3);
        return [fg.add(b, 1), b];
      });
      expect(res.equal).toBe(true);
    }));

    it('keeps an intermediate that a later non-elementwise call reads', () => withBackend(backend(), async () => {
      const res = await elementwiseCase((x) => {
        const b = fg.tanh(fg.mul(x, 2));
        const c = fg.add(b, 1);
        // The matmul reads b after the chain: b cannot be an intermediate of a fused kernel.
        return [fg.matmul(c, b.transpose(0, 1))];
      });
      expect(res.equal).toBe(true);
      const plain = await elementwiseCase((x) => {
        const b = fg.tanh(fg.mul(x, 2));
        const c = fg.add(b, 1);
        return [fg.matmul(c, b.transpose(0, 1))];
      }, false);
      // Fewer calls (the chain), but b's producer is still a call that writes it: at least one fused output more than c.
      expect(res.stats.plan!.calls).toBeLessThanOrEqual(plain.stats.plan!.calls);
    }));
  });
}

describe('fused plans on WebGPU: within float32 tolerance of eager, in fewer calls', () => {
  let gpu: Backend | null = null;
  beforeAll(async () => {
    gpu = (await acquireWebGPU()).backend;
  });
  for (const [m, o] of [['cnn', 'SGD'], ['vit', 'SAM']] as [ModelKind, OptKind][]) {
    it(`${m} + ${o}`, async (ctx) => {
      if (!gpu) return ctx.skip();
      await withBackend(gpu, () => gpuCase(m, o));
    });
  }
});

/** A WebGPU step fused, unfused and eager: within float32 tolerance, the fused plan in fewer calls. */
async function gpuCase(m: ModelKind, o: OptKind): Promise<void> {
  const eager = await run(m, o, 'eager', 4);
  const fused = await run(m, o, 'fused', 4);
  expectClose(Float32Array.from(fused.losses), Float32Array.from(eager.losses), { rtol: 1e-4, atol: 1e-5 }, 'losses');
  eager.state.forEach(([k, v], i) => expectClose(fused.state[i][1], v, { rtol: 1e-4, atol: 1e-5 }, k));
  const unfused = await run(m, o, 'unfused', 4);
  expectClose(Float32Array.from(unfused.losses), Float32Array.from(eager.losses), { rtol: 1e-4, atol: 1e-5 }, 'losses (unfused)');
  expect(fused.stats!.plan!.fusedKernels).toBeGreaterThan(0);
  expect(fused.stats!.plan!.calls).toBeLessThan(unfused.stats!.plan!.calls);
}

/** A cpu or wasm backend of the describe block's own, made in its beforeAll (tests make it active). */
function hostBackend(which: 'cpu' | 'wasm'): () => Backend {
  let b: Backend | null = null;
  beforeAll(async () => {
    b = which === 'cpu' ? new CpuBackend() : await createWasmBackend({ threads: 1 });
  });
  afterAll(() => (b as { dispose?: () => void } | null)?.dispose?.());
  return () => b!;
}
