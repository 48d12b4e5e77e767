/**
 * What a SAM step costs against a SGD step, counted in device calls rather than timed (timing
 * belongs in bench/: bench/cnn-profile.ts measures the same split in CPU time). A SAM step is two
 * forward-backward passes and a handful of arena kernels, so no backend kernel may run more than
 * twice as often as in a SGD step of the same model, and the optimizer side may add only the
 * global norm of the first gradient and the perturbation (the second norm and the fused
 * restore + update stand in for SGD's own check and update). Guards against the regressions that
 * would push SAM / SGD past 2: BatchNorm running statistics updated in both passes, gradients
 * zeroed or copied twice, a per-tensor path, an extra trace.
 *
 * The ResNet of `flatgrad train --model cnn` (BatchNorm in train mode), small, on cpu and wasm,
 * eager and captured (fg.compile around the whole step).
 */
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { fusedKernelsFor } from '../src/kernels/fused.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import { instrumentCalls } from '../bench/instrument.js';

const { nn, optim } = fg;
type Kind = 'SGD' | 'SAM';

/**
 * Counts the outermost calls of every method of the backend and of its fused arena kernels
 * ('arena.' prefix) while `counting` is on. Installed before the step is traced, so that a
 * captured plan binds the counting wrappers too.
 */
function callCounter(b: Backend): { counts: Map<string, number>; counting: boolean; remove: () => void } {
  const c = { counts: new Map<string, number>(), counting: false, remove: () => {} };
  c.remove = instrumentCalls([['', b], ['arena.', fusedKernelsFor(b)]], (name, _args, run) => {
    if (c.counting) c.counts.set(name, (c.counts.get(name) ?? 0) + 1);
    return run();
  });
  return c;
}

function makeStep(kind: Kind): { step: (x: fg.Tensor, y: fg.Tensor) => fg.Tensor; model: fg.nn.Module } {
  fg.manualSeed(3);
  const model = nn.models.resnetSmall({ inChannels: 1, numClasses: 4, widths: [4, 8], blocksPerStage: 1 });
  model.train();
  const sgd = { lr: 0.05, momentum: 0.9 };
  const opt = kind === 'SGD' ? new optim.SGD(model.parameters(), sgd) : new optim.SAM(model.parameters(), optim.SGD, { ...sgd, rho: 0.05 });
  const lossOf = (x: fg.Tensor, y: fg.Tensor) => fg.crossEntropy((model as unknown as { forward(x: fg.Tensor): fg.Tensor }).forward(x), y);
  const step = (x: fg.Tensor, y: fg.Tensor): fg.Tensor =>
    fg.tidy(() => {
      if (kind === 'SGD') {
        opt.zeroGrad();
        const l = lossOf(x, y);
        l.backward();
        opt.step();
        return l;
      }
      return opt.step(() => {
        const l = lossOf(x, y);
        l.backward();
        return l;
      }) as fg.Tensor;
    });
  return { step, model };
}

/** Device calls of one steady-state step (after two warm-up steps; captured: a replay). */
function callsPerStep(b: Backend, kind: Kind, captured: boolean): Map<string, number> {
  const prev = getBackend();
  setBackend(b);
  const counter = callCounter(b);
  try {
    const { step } = makeStep(kind);
    const run = captured ? fg.compile(step, { onMessage: (m) => { throw new Error(m); } }) : step;
    const x = fg.randn([4, 1, 12, 12]).keep();
    const y = fg.tensor(Int32Array.from([0, 1, 2, 3]), { dtype: 'int32' }).keep();
    for (let i = 0; i < 3; i++) run(x, y).dispose();
    counter.counting = true;
    run(x, y).dispose();
    counter.counting = false;
    if (captured) expect((run as fg.CompiledStep<[fg.Tensor, fg.Tensor], fg.Tensor>).stats()).toMatchObject({ traces: 1, replays: 2 });
    fg.dispose([x, y]);
    return counter.counts;
  } finally {
    counter.remove();
    setBackend(prev);
  }
}

/** Device calls that are not kernels (allocation, transfers) and so are not compared. */
const HOST_CALLS = new Set(['alloc', 'allocUninit', 'release', 'view', 'upload', 'write', 'read', 'readSync', 'memory', 'info', 'supportsDtype']);

const BACKENDS: [string, () => Promise<Backend>][] = [
  ['cpu', async () => new CpuBackend()],
  ['wasm', () => createWasmBackend({ threads: 1 })],
];

describe.each(BACKENDS)('SAM step cost against SGD on %s', (_name, make) => {
  for (const captured of [false, true]) {
    it(`${captured ? 'captured' : 'eager'}: no kernel runs more than twice as often as in SGD, and the optimizer adds only the first norm and the perturbation`, async () => {
      const b = await make();
      const sgd = callsPerStep(b, 'SGD', captured);
      const sam = callsPerStep(b, 'SAM', captured);
      const kernels = [...new Set([...sgd.keys(), ...sam.keys()])].filter((k) => !HOST_CALLS.has(k) && !k.startsWith('arena.'));
      expect(kernels.length).toBeGreaterThan(5);
      const over = kernels.filter((k) => (sam.get(k) ?? 0) > 2 * (sgd.get(k) ?? 0)).map((k) => `${k}: SAM ${sam.get(k) ?? 0}, SGD ${sgd.get(k) ?? 0}`);
      expect(over).toEqual([]);
      // The convolutions and BatchNorm run exactly twice as often: two full passes, nothing skipped.
      for (const k of ['conv2d', 'conv2dBackwardWeight', 'batchNorm', 'batchNormBackward']) expect(sam.get(k)).toBe(2 * sgd.get(k)!);
      // Arena kernels: SGD's gradient check (norm) and update; SAM's first norm, perturbation,
      // second gradient's check and the update fused with the restore.
      const arena = (m: Map<string, number>) => Object.fromEntries([...m].filter(([k]) => k.startsWith('arena.')).sort());
      expect(arena(sam)).toEqual({ 'arena.norm': 2, 'arena.perturb': 1, 'arena.sgd': 1 });
      expect(arena(sgd)).toEqual({ 'arena.norm': 1, 'arena.sgd': 1 });
    });
  }

  it('BatchNorm running statistics move once per SAM step (first pass only), as in a SGD step', async () => {
    const b = await make();
    const prev = getBackend();
    setBackend(b);
    try {
      const tracked = (m: fg.nn.Module) => m.namedBuffers().filter(([n]) => n.endsWith('num_batches_tracked'));
      for (const kind of ['SGD', 'SAM'] as const) {
        const { step, model } = makeStep(kind);
        const x = fg.randn([4, 1, 12, 12]).keep();
        const y = fg.tensor(Int32Array.from([0, 1, 2, 3]), { dtype: 'int32' }).keep();
        for (let i = 0; i < 3; i++) step(x, y).dispose();
        const counts = tracked(model);
        expect(counts.length).toBeGreaterThan(2);
        for (const [, t] of counts) expect(t.itemSync()).toBe(3);
        fg.dispose([x, y]);
      }
    } finally {
      setBackend(prev);
    }
  });
});
