/**
 * planProfile (src/compile/plan.ts): the seam through which bench/compile.bench and
 * bench/step-profile time a captured step's calls, generated kernels (fusedMap, matmulEpilogue)
 * included, which no backend wrapper sees.
 * - set while a plan is built, every call of each replay runs through it exactly once (zero fills
 *   and constant writes too), named by kind, with the call's arguments;
 * - the replay's results are the eager step's bit for bit with the hook in place;
 * - a plan built while it is null is not wrapped (setting it later changes nothing).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { planProfile } from '../src/compile/plan.js';
import { withBackend } from './helpers/backend-scope.js';
import { rng } from './helpers/random.js';
import { expectSameRun, runSteps, trainingStep } from './helpers/train-steps.js';

type Tensor = fg.Tensor;
const vit = () => fg.nn.models.vit({ imageSize: 8, patchSize: 4, dim: 12, depth: 2, heads: 2, mlpRatio: 2, numClasses: 4 });

afterEach(() => { planProfile.around = null; });

for (const which of ['cpu', 'wasm'] as const) {
  describe(`planProfile on ${which}`, () => {
    let b: Backend | null = null;
    beforeAll(async () => { b = which === 'cpu' ? new CpuBackend() : await createWasmBackend({ threads: 1 }); });
    afterAll(() => (b as { dispose?: () => void } | null)?.dispose?.());

    const train = (profiled: boolean, o: 'SGD' | 'SAM') => {
      fg.manualSeed(11);
      const model = vit();
      model.train();
      return runSteps(model, trainingStep(model, o), { shape: [6, 1, 8, 8], steps: 4, seed: 900, compile: profiled ? {} : null });
    };

    for (const o of ['SGD', 'SAM'] as const) {
      it(`a ViT + ${o} replay through the hook equals the eager step bit for bit`, () => withBackend(b!, async () => {
        const names: string[] = [];
        planProfile.around = (name, run) => { names.push(name); return run(); };
        const profiled = await train(true, o);
        planProfile.around = null;
        const eager = await train(false, o);
        expectSameRun(profiled, eager);
        // The generated kernels are seen, by name.
        expect(names).toContain('matmulEpilogue');
        expect(names).toContain('fusedMap');
        expect(names).toContain('matmul');
      }));
    }

    it('every call of a replay passes through it once, with its arguments; a plan built without it is not wrapped', () => withBackend(b!, () => {
      fg.manualSeed(3);
      const model = vit();
      model.train();
      const r = rng(5);
      const x = fg.tensor(Float32Array.from({ length: 6 * 64 }, () => r() * 2 - 1), { shape: [6, 1, 8, 8] });
      const y = fg.tensor(Int32Array.from({ length: 6 }, () => Math.floor(r() * 4)), { dtype: 'int32' });
      const calls: { name: string; args: unknown[] }[] = [];
      planProfile.around = (name, run, args) => { calls.push({ name, args }); return run(); };
      const step = fg.compile(trainingStep(model, 'SGD'), { onMessage: (m) => { throw new Error(m); } });
      // Warm-up (eager), then the trace: the plan is built with the hook set.
      for (let i = 0; i < 2; i++) fg.dispose(step(x, y));
      calls.length = 0;
      fg.dispose(step(x, y));
      const plan = step.stats().plan!;
      expect(calls.length).toBe(plan.calls);
      expect(calls.filter((c) => c.name === 'matmulEpilogue').length).toBe(plan.epilogues);
      // The epilogue's operands are storages (the matmul's a and b first).
      const epi = calls.find((c) => c.name === 'matmulEpilogue')!;
      expect(epi.args.slice(0, 2).every((a) => typeof (a as { numel?: unknown }).numel === 'number')).toBe(true);
      step.dispose();

      // Built while the hook is null: not wrapped, even once it is set again.
      planProfile.around = null;
      const plain = fg.compile(trainingStep(model, 'SGD'), { onMessage: (m) => { throw new Error(m); } });
      for (let i = 0; i < 2; i++) fg.dispose(plain(x, y));
      planProfile.around = (name, run, args) => { calls.push({ name, args }); return run(); };
      calls.length = 0;
      fg.dispose(plain(x, y));
      expect(calls.length).toBe(0);
      plain.dispose();
      fg.dispose([x, y]);
    }));
  });
}
