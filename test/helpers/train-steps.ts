/**
 * Training steps for the captured-step suites: a model's step run eagerly or compiled (fg.compile)
 * on the same data, batches drawn from seeded generators (inputs in [-1, 1), 4-class labels),
 * returning what a bit-for-bit comparison of the runs needs.
 */
import { expect } from 'vitest';
import * as fg from '../../src/index.js';
import { rng } from './random.js';

type Tensor = fg.Tensor;
const { optim } = fg;

/**
 * A training step of `model`: cross-entropy, backward and the optimizer's step, with SGD
 * (momentum, weight decay), SAM over that SGD, or AdamW.
 */
export function trainingStep(model: fg.nn.Module & { forward(x: Tensor): Tensor }, o: 'SGD' | 'SAM' | 'AdamW'): (x: Tensor, y: Tensor) => Tensor {
  const sgd = { lr: 0.05, momentum: 0.9, weightDecay: 1e-3 };
  const opt = o === 'SGD' ? new optim.SGD(model.parameters(), sgd)
    : o === 'AdamW' ? new optim.AdamW(model.parameters(), { lr: 1e-2, weightDecay: 1e-2 })
    : new optim.SAM(model.parameters(), optim.SGD, { ...sgd, rho: 0.05 });
  const closure = (x: Tensor, y: Tensor) => () => fg.tidy(() => {
    const l = fg.crossEntropy(model.forward(x), y);
    l.backward();
    return l;
  });
  return function trainStep(x, y) {
    if (o === 'SAM') return opt.step(closure(x, y)) as Tensor;
    opt.zeroGrad();
    const l = closure(x, y)();
    opt.step();
    return l;
  };
}

export interface StepRun {
  losses: number[];
  /** The model's state dict after the last step (parameters, BatchNorm statistics). */
  state: [string, Float32Array][];
  /** The compiled step's figures (null when eager). */
  stats: fg.CompileStats | null;
}

/**
 * `steps` steps of `step` on batches of `shape` (batch first), step t drawn from generator
 * `seed + t`; compiled with `compile` (a fall-back fails the test) or eager when it is null.
 */
export async function runSteps(
  model: fg.nn.Module,
  step: (x: Tensor, y: Tensor) => Tensor,
  o: { shape: number[]; steps: number; seed: number; compile: fg.CompileOptions | null },
): Promise<StepRun> {
  const compiled = o.compile ? fg.compile(step, { onMessage: (msg) => { throw new Error(`unexpected fall-back: ${msg}`); }, ...o.compile }) : null;
  const run = compiled ?? step;
  const batch = o.shape[0];
  const losses: number[] = [];
  for (let t = 0; t < o.steps; t++) {
    const r = rng(o.seed + t);
    const x = fg.tensor(Float32Array.from({ length: o.shape.reduce((a, c) => a * c, 1) }, () => r() * 2 - 1), { shape: o.shape });
    const y = fg.tensor(Int32Array.from({ length: batch }, () => Math.floor(r() * 4)), { dtype: 'int32' });
    const l = run(x, y);
    losses.push(...(await l.data()));
    fg.dispose([l, x, y]);
  }
  const state: [string, Float32Array][] = [];
  for (const [k, v] of Object.entries(model.stateDict())) state.push([k, Float32Array.from(await (v as Tensor).data())]);
  return { losses, state, stats: compiled?.stats() ?? null };
}

export function expectBitEqual(a: ArrayLike<number>, b: ArrayLike<number>, what: string): void {
  expect(a.length, `${what}: length`).toBe(b.length);
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) expect.fail(`${what}: element ${i} differs: ${a[i]} vs ${b[i]}`);
}

/** Two runs' losses and model states, bit for bit. */
export function expectSameRun(got: StepRun, want: StepRun): void {
  expectBitEqual(got.losses, want.losses, 'losses');
  want.state.forEach(([k, v], i) => {
    expect(got.state[i][0]).toBe(k);
    expectBitEqual(got.state[i][1], v, k);
  });
}
