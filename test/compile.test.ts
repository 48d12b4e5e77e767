/**
 * Captured steps (fg.compile): a replayed plan equals the eager step bit for bit on cpu and wasm
 * (within float32 tolerance on WebGPU) for the MLP, the CNN (BatchNorm in train mode) and the ViT
 * (dropout from the counter-based generator), with SGD, AdamW and the sharpness-aware family, over
 * several steps with new inputs each step. Also: a new shape traces again, a step that reads back
 * falls back to eager with a message naming the read, the label range check still runs on replay,
 * host state (LookSAM's phase, step counts) advances as eagerly, and memory stays flat.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import type { Backend, Storage } from '../src/kernels/backend.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { CpuBackend, type CpuStorage } from '../src/kernels/cpu/index.js';
import { captureHooks } from '../src/compile/hooks.js';
import { acquireWebGPU, expectClose } from './helpers/webgpu.js';
import { rng } from './helpers/random.js';
import defineLion from '../examples/lion.mjs';
import defineFriendlySAM from '../examples/friendly-sam.mjs';

const { nn, optim } = fg;
type Tensor = fg.Tensor;

type ModelKind = 'mlp' | 'cnn' | 'vit';
type OptKind = 'SGD' | 'AdamW' | 'SAM' | 'ASAM' | 'LookSAM' | 'GSAM';

interface Config {
  model: ModelKind;
  opt: OptKind;
  /** Dropout probability (mlp and vit). */
  dropout?: number;
  batch?: number;
  /** Labels without a host copy (made on the device): the label check cannot run on the host. */
  labelsOnDevice?: boolean;
  /**
   * A cosine schedule of the lr (and of rho for the sharpness-aware family) stepped after every
   * step: one trace must serve every value (LookSAM: one per phase).
   */
  schedule?: boolean;
  /** The per-tensor engine (fused: false), whose zeroGrad drops the .grad tensors. */
  perTensor?: boolean;
}

/** The models here all map one tensor to logits. */
type Net = fg.nn.Module & { forward(x: Tensor): Tensor };

function makeModel(c: Config): Net {
  if (c.model === 'mlp') return nn.models.mlp([12, 16, 16, 4], { dropout: c.dropout });
  if (c.model === 'cnn') return nn.models.resnetSmall({ inChannels: 1, numClasses: 4, widths: [4, 8] });
  return nn.models.vit({ imageSize: 8, patchSize: 4, dim: 8, depth: 1, heads: 2, mlpRatio: 2, numClasses: 4, dropout: c.dropout });
}

function inputShape(c: Config, n: number): number[] {
  return c.model === 'mlp' ? [n, 12] : [n, 1, 8, 8];
}

function makeOpt(c: Config, params: fg.nn.Parameter[]): fg.optim.Optimizer {
  const sgd = { lr: 0.05, momentum: 0.9, weightDecay: 1e-3 };
  switch (c.opt) {
    case 'SGD': return new optim.SGD(params, { ...sgd, ...(c.perTensor ? { fused: false } : {}) });
    case 'AdamW': return new optim.AdamW(params, { lr: 1e-2, weightDecay: 1e-2, ...(c.perTensor ? { fused: false } : {}) });
    // rho follows the lr (rhoMin .. rho as lr goes lrMin .. its initial value).
    case 'GSAM': return new optim.GSAM(params, optim.SGD, { ...sgd, rho: 0.05, rhoMin: 0.01, alpha: 0.3 });
    case 'SAM': return new optim.SAM(params, optim.SGD, { ...sgd, rho: 0.05 });
    case 'ASAM': return new optim.ASAM(params, optim.AdamW, { lr: 1e-2, rho: 0.5 });
    case 'LookSAM': return new optim.LookSAM(params, optim.SGD, { ...sgd, rho: 0.05, k: 2, alpha: 0.7 });
  }
}

/** The training step under test: forward, backward and the update, returning the loss. */
function stepFor(model: Net, opt: fg.optim.Optimizer, c: Config) {
  return function trainStep(x: Tensor, y: Tensor): Tensor {
    const closure = () =>
      fg.tidy(() => {
        const loss = fg.crossEntropy(model.forward(x), y);
        loss.backward();
        return loss;
      });
    if (c.opt === 'SGD' || c.opt === 'AdamW') {
      opt.zeroGrad();
      const loss = closure();
      opt.step();
      return loss;
    }
    return opt.step(closure) as Tensor;
  };
}

/** Host data for step t: the same for every run of a config. */
function batch(c: Config, t: number, n: number): { x: Float32Array; y: Int32Array } {
  const r = rng(1000 + t);
  const shape = inputShape(c, n);
  const x = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => r() * 2 - 1);
  const y = Int32Array.from({ length: n }, () => Math.floor(r() * 4));
  return { x, y };
}

interface RunResult {
  losses: Float32Array;
  state: Map<string, Float32Array>;
  stepCount: number;
  compiled: fg.CompiledStep<[Tensor, Tensor], Tensor> | null;
}

/** Runs `steps` steps from seed 7, eagerly or captured; returns losses and the model's state dict. */
async function run(c: Config, steps: number, captured: boolean, sizes?: number[]): Promise<RunResult> {
  fg.manualSeed(7);
  const model = makeModel(c);
  model.train();
  const opt = makeOpt(c, model.parameters());
  const step = stepFor(model, opt, c);
  const compiled = captured ? fg.compile(step, { onMessage: (m) => { throw new Error(`unexpected fall-back: ${m}`); } }) : null;
  const schedules = !c.schedule ? [] : [
    new optim.CosineAnnealingLR(opt, { tMax: steps, etaMin: 1e-3 }),
    ...(opt instanceof optim.SharpnessAware && c.opt !== 'GSAM' ? [new optim.CosineAnnealingLR(opt, { key: 'rho', tMax: steps, etaMin: 0.01 })] : []),
  ];
  const f = compiled ?? step;
  const losses: number[] = [];
  for (let t = 0; t < steps; t++) {
    const n = sizes?.[t] ?? c.batch ?? 4;
    const { x, y } = batch(c, t, n);
    const xt = fg.tensor(x, { shape: inputShape(c, n) });
    const yHost = fg.tensor(y, { dtype: 'int32' });
    const yt = c.labelsOnDevice ? fg.add(yHost, 0) : yHost;
    if (c.labelsOnDevice) {
      expect(yt.hostData).toBeNull();
      yHost.dispose();
    }
    const loss = f(xt, yt);
    for (const s of schedules) s.step();
    losses.push(...(await loss.data()));
    loss.dispose();
    xt.dispose();
    yt.dispose();
  }
  const state = new Map<string, Float32Array>();
  for (const [k, v] of Object.entries(model.stateDict())) state.set(k, Float32Array.from(await (v as Tensor).data()));
  const stepCount = (opt as unknown as { stepCount: number }).stepCount;
  return { losses: Float32Array.from(losses), state, stepCount, compiled };
}

function expectBitEqual(a: ArrayLike<number>, b: ArrayLike<number>, what: string): void {
  expect(a.length, `${what}: length`).toBe(b.length);
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) expect.fail(`${what}: element ${i} differs: captured ${a[i]}, eager ${b[i]}`);
  }
}

async function compareBitExact(c: Config, steps = 5): Promise<RunResult> {
  const eager = await run(c, steps, false);
  const cap = await run(c, steps, true);
  expectBitEqual(cap.losses, eager.losses, 'losses');
  expect([...cap.state.keys()]).toEqual([...eager.state.keys()]);
  for (const [k, v] of eager.state) expectBitEqual(cap.state.get(k)!, v, k);
  expect(cap.stepCount).toBe(eager.stepCount);
  const st = cap.compiled!.stats();
  // One warm-up call, one trace, and the rest replayed.
  expect(st.traces).toBeGreaterThanOrEqual(1);
  expect(st.replays).toBeGreaterThanOrEqual(1);
  expect(st.eagerCalls + st.traces + st.replays).toBe(steps);
  // Scheduled values are inputs of the plan: one trace serves them all (LookSAM: one per phase).
  if (c.schedule) expect(st.traces, 'traces under a schedule').toBe(c.opt === 'LookSAM' ? 2 : 1);
  return cap;
}

/** Every model with every optimizer, under a cosine schedule of lr (and rho), BatchNorm in train mode (cnn), dropout (mlp, vit). */
const SCHEDULED: Config[] = (['mlp', 'cnn', 'vit'] as const).flatMap((model) =>
  (['SGD', 'AdamW', 'SAM', 'ASAM', 'LookSAM'] as const).map((opt): Config => ({ model, opt, schedule: true, dropout: model === 'cnn' ? undefined : 0.1 })),
).concat([
  { model: 'mlp', opt: 'GSAM', schedule: true },
  { model: 'mlp', opt: 'SGD', schedule: true, perTensor: true },
  { model: 'cnn', opt: 'AdamW', schedule: true, perTensor: true },
]);

/**
 * CNN steps (eager or captured) with an eager train-mode forward after each, which points
 * BatchNorm's running statistics at new storage: the plans must follow (on WebGPU: record their
 * command streams again, since a buffer they bound was released). Returns the model's state.
 */
async function stepsWithEagerForwards(captured: boolean): Promise<Map<string, Float32Array>> {
  const c: Config = { model: 'cnn', opt: 'SGD' };
  fg.manualSeed(9);
  const model = makeModel(c);
  model.train();
  const opt = makeOpt(c, model.parameters());
  const raw = stepFor(model, opt, c);
  const step = captured ? fg.compile(raw, { onMessage: (m) => { throw new Error(m); } }) : raw;
  for (let t = 0; t < 5; t++) {
    const { x, y } = batch(c, t, 2);
    fg.dispose(fg.tidy(() => step(fg.tensor(x, { shape: inputShape(c, 2) }), fg.tensor(y, { dtype: 'int32' }))));
    fg.noGrad(() => fg.tidy(() => void model.forward(fg.tensor(batch(c, 100 + t, 2).x, { shape: inputShape(c, 2) }))));
  }
  const state = new Map<string, Float32Array>();
  for (const [k, v] of Object.entries(model.stateDict())) state.set(k, Float32Array.from(await (v as Tensor).data()));
  if (captured) expect((step as fg.CompiledStep<[Tensor, Tensor], Tensor>).stats()).toMatchObject({ traces: 1, replays: 3 });
  return state;
}

const CONFIGS: Config[] = [
  { model: 'mlp', opt: 'SGD' },
  { model: 'mlp', opt: 'AdamW' },
  { model: 'mlp', opt: 'SAM', dropout: 0.25 },
  { model: 'mlp', opt: 'ASAM' },
  { model: 'mlp', opt: 'LookSAM' },
  { model: 'cnn', opt: 'SGD' },
  { model: 'cnn', opt: 'SAM' },
  { model: 'cnn', opt: 'LookSAM' },
  { model: 'vit', opt: 'AdamW', dropout: 0.1 },
  { model: 'vit', opt: 'SAM', dropout: 0.1 },
  { model: 'vit', opt: 'ASAM', dropout: 0.1 },
];

const label = (c: Config) =>
  `${c.model} + ${c.opt}${c.perTensor ? ' (per tensor)' : ''}${c.dropout ? ` + dropout ${c.dropout}` : ''}${c.labelsOnDevice ? ', labels on the device' : ''}${c.schedule ? ', cosine schedule' : ''}`;

for (const which of ['cpu', 'wasm', 'wasm with 2 threads'] as const) {
  describe(`compile on ${which}: replay equals the eager step bit for bit`, () => {
    let prev: Backend;
    beforeAll(async () => {
      prev = getBackend();
      setBackend(
        which === 'cpu' ? new CpuBackend()
        : which === 'wasm' ? await createWasmBackend({ threads: 1 })
        // Every matmul split over the worker threads.
        : await createWasmBackend({ threads: 2, minThreadedWork: 1 }),
      );
    });
    afterAll(() => setBackend(prev));
    for (const c of which === 'wasm with 2 threads' ? CONFIGS.filter((x) => x.opt === 'SAM') : [...CONFIGS, ...SCHEDULED]) {
      it(label(c), async () => {
        await compareBitExact(c, c.opt === 'LookSAM' ? 7 : 5);
      });
    }
  });
}

describe('compile: signatures, fall-back, host checks and memory (cpu)', () => {
  let prev: Backend;
  beforeAll(() => {
    prev = getBackend();
    setBackend(new CpuBackend());
  });
  afterAll(() => setBackend(prev));

  it('traces again for a new batch size and replays each shape bit for bit', async () => {
    const c: Config = { model: 'mlp', opt: 'SAM' };
    const sizes = [4, 4, 4, 6, 6, 6, 4, 6];
    fg.manualSeed(7);
    const eager = await run(c, sizes.length, false, sizes);
    const cap = await run(c, sizes.length, true, sizes);
    expectBitEqual(cap.losses, eager.losses, 'losses');
    for (const [k, v] of eager.state) expectBitEqual(cap.state.get(k)!, v, k);
    // Per shape: one warm-up, one trace; the other four calls replay.
    expect(cap.compiled!.stats()).toMatchObject({ eagerCalls: 2, traces: 2, replays: 4 });
  });

  it('falls back to eager, once and saying why, when the step reads a tensor back', () => {
    fg.manualSeed(3);
    const model = nn.models.mlp([3, 4, 2]);
    const opt = new optim.SGD(model.parameters(), { lr: 0.1 });
    const messages: string[] = [];
    let sawLoss = 0;
    const step = fg.compile(function readsLoss(x: Tensor, y: Tensor) {
      opt.zeroGrad();
      const loss = fg.tidy(() => {
        const l = fg.crossEntropy(model.forward(x), y);
        l.backward();
        return l;
      });
      sawLoss = loss.itemSync(); // a data-dependent host value
      opt.step();
      return loss;
    }, { onMessage: (m) => messages.push(m) });
    for (let t = 0; t < 4; t++) {
      const x = fg.randn([2, 3]);
      const y = fg.tensor([0, 1], { dtype: 'int32' });
      const loss = step(x, y);
      // Every call ran the step, so the host value is that of this call.
      expect(sawLoss).toBe(loss.itemSync());
      fg.dispose([x, y, loss]);
    }
    expect(messages).toHaveLength(1);
    expect(messages[0]).toMatch(/compile\(readsLoss\): running eagerly/);
    expect(messages[0]).toMatch(/reads a float32 tensor of 1 element back to the host \(readSync in Tensor\.dataSync .*<- Tensor\.itemSync .*<- readsLoss /);
    expect(step.fallback).toBe(messages[0].replace(/^.*running eagerly from now on: /, ''));
    expect(step.stats()).toMatchObject({ traces: 1, replays: 0, eagerCalls: 3 });
  });

  it('falls back to eager when the step replaces state without Tensor.rebind', () => {
    let state = fg.tensor([1, 2, 3]).keep();
    const messages: string[] = [];
    const step = fg.compile(function accumulate(x: Tensor) {
      const next = fg.add(state, x).keep();
      state.dispose();
      state = next;
      return fg.mul(state, 2);
    }, { onMessage: (m) => messages.push(m) });
    const x = fg.tensor([1, 1, 1]);
    const outs: number[][] = [];
    for (let t = 0; t < 4; t++) outs.push(Array.from(step(x).dataSync()));
    expect(outs).toEqual([[4, 6, 8], [6, 8, 10], [8, 10, 12], [10, 12, 14]]);
    expect(messages).toEqual([
      'flatgrad compile(accumulate): running eagerly from now on: the step disposes a float32 tensor of 3 elements that existed before it, without replacing it in place (Tensor.rebind)',
    ]);
  });

  it('falls back to eager when the step returns one of its inputs', () => {
    const messages: string[] = [];
    const step = fg.compile(function passThrough(x: Tensor, y: Tensor) {
      return [x, fg.add(x, y)];
    }, { onMessage: (m) => messages.push(m) });
    const x = fg.tensor([1, 2]);
    for (let t = 0; t < 3; t++) {
      const y = fg.tensor([t, t]);
      const [a, b] = step(x, y);
      expect(a).toBe(x);
      expect(Array.from(b.dataSync())).toEqual([1 + t, 2 + t]);
    }
    expect(messages).toEqual(['flatgrad compile(passThrough): running eagerly from now on: the step returns one of its input tensors (return a copy)']);
  });

  it('runs the label range check on every replay', () => {
    fg.manualSeed(4);
    const model = nn.models.mlp([3, 4, 2]);
    const opt = new optim.SGD(model.parameters(), { lr: 0.1 });
    const step = fg.compile(stepFor(model, opt, { model: 'mlp', opt: 'SGD' }), { onMessage: (m) => { throw new Error(m); } });
    const x = fg.randn([2, 3]);
    for (let t = 0; t < 3; t++) fg.dispose(step(x, fg.tensor([1, 0], { dtype: 'int32' })));
    expect(step.stats().replays).toBe(1);
    const before = model.stateDict()['0.weight'].dataSync().slice();
    expect(() => step(x, fg.tensor([0, 2], { dtype: 'int32' }))).toThrow(/crossEntropy: label 2 at position 1 is out of range \[0, 2\)/);
    // The check runs before the replay: nothing moved.
    expect(model.stateDict()['0.weight'].dataSync()).toEqual(before);
  });

  it('keeps memory flat over many replays and frees its buffers on dispose', () => {
    fg.manualSeed(5);
    const c: Config = { model: 'cnn', opt: 'SAM' };
    const model = makeModel(c);
    model.train();
    const opt = makeOpt(c, model.parameters());
    const step = fg.compile(stepFor(model, opt, c));
    const x = fg.randn([2, 1, 8, 8]);
    const y = fg.tensor([1, 3], { dtype: 'int32' });
    for (let t = 0; t < 3; t++) step(x, y).dispose();
    const live = fg.memory().liveBuffers;
    const bytes = fg.memory().liveBytes;
    for (let t = 0; t < 20; t++) step(x, y).dispose();
    expect(fg.memory().liveBuffers).toBe(live);
    expect(fg.memory().liveBytes).toBe(bytes);
    const plan = step.stats().plan!;
    expect(plan.buffers).toBeGreaterThan(0);
    // Liveness lets temporaries share buffers.
    expect(plan.buffers).toBeLessThan(plan.temporaries);
    step.dispose();
    expect(fg.memory().liveBuffers).toBe(live - plan.buffers - plan.keptState);
  });

  /**
   * A tiny SGD run, eagerly and captured, where `change` edits the param group before step t;
   * returns the captured run's statistics after checking that both runs agree bit for bit.
   */
  const sgdWithChange = (steps: number, change: (g: Record<string, unknown>, t: number) => void) => {
    const go = (captured: boolean) => {
      fg.manualSeed(8);
      const model = nn.models.mlp([3, 4, 2]);
      const opt = new optim.SGD(model.parameters(), { lr: 0.1, momentum: 0.9 });
      const raw = stepFor(model, opt, { model: 'mlp', opt: 'SGD' });
      const step = captured ? fg.compile(raw, { onMessage: (m) => { throw new Error(m); } }) : raw;
      const x = fg.randn([2, 3]);
      const y = fg.tensor([1, 0], { dtype: 'int32' });
      const losses: number[] = [];
      for (let t = 0; t < steps; t++) {
        change(opt.paramGroups[0], t);
        const l = step(x, y);
        losses.push(l.itemSync());
        l.dispose();
      }
      return { losses, w: Array.from(model.stateDict()['0.weight'].dataSync()), stats: captured ? (step as fg.CompiledStep<[Tensor, Tensor], Tensor>).stats() : null };
    };
    const eager = go(false);
    const cap = go(true);
    expectBitEqual(cap.losses, eager.losses, 'losses');
    expectBitEqual(cap.w, eager.w, 'weight');
    return cap.stats;
  };

  it('takes a new learning rate as an input of the plan, without tracing again', () => {
    // Warm-up, one trace, and replays for lr 0.1 and 0.01 alike.
    expect(sgdWithChange(7, (g, t) => { if (t === 4) g.lr = 0.01; })).toMatchObject({ eagerCalls: 1, traces: 1, replays: 5 });
  });

  it('traces again when an option that steers host code changes (SGD momentum on, then off)', () => {
    expect(sgdWithChange(6, (g, t) => { if (t === 3) g.momentum = 0; })).toMatchObject({ eagerCalls: 1, traces: 2, replays: 3 });
  });

  it('follows state that host code moves between replays (an eager forward in train mode)', async () => {
    const eager = await stepsWithEagerForwards(false);
    const cap = await stepsWithEagerForwards(true);
    for (const [k, v] of eager) expectBitEqual(cap.get(k)!, v, k);
  });

  it('runs every call eagerly with { eager: true }', () => {
    fg.manualSeed(6);
    const model = nn.models.mlp([3, 2]);
    const opt = new optim.SGD(model.parameters(), { lr: 0.1 });
    const step = fg.compile(stepFor(model, opt, { model: 'mlp', opt: 'SGD' }), { eager: true });
    const x = fg.randn([2, 3]);
    const y = fg.tensor([1, 0], { dtype: 'int32' });
    for (let t = 0; t < 4; t++) step(x, y).dispose();
    expect(step.stats()).toMatchObject({ eagerCalls: 4, traces: 0, replays: 0 });
  });

  it('frees what a step without a tidy of its own leaves to the caller\'s tidy (no stale state in the plan)', () => {
    const go = (captured: boolean) => {
      fg.manualSeed(4);
      const model = nn.models.mlp([3, 5, 2]);
      const opt = new optim.AdamW(model.parameters(), { lr: 0.05 });
      // No tidy inside: the activations are garbage that the caller's tidy frees after each call.
      const raw = function bare(x: Tensor, y: Tensor): Tensor {
        opt.zeroGrad();
        const loss = fg.crossEntropy(model.forward(x), y);
        loss.backward();
        opt.step();
        return loss.detach();
      };
      const step = captured ? fg.compile(raw, { onMessage: (m) => { throw new Error(m); } }) : raw;
      const losses: number[] = [];
      for (let t = 0; t < 6; t++) {
        const l = fg.tidy(() => step(fg.tensor([[t, 1, -1], [0.5, t, 2]]), fg.tensor([t % 2, 1], { dtype: 'int32' })));
        losses.push(l.itemSync());
        l.dispose();
      }
      return { losses, stats: captured ? (step as fg.CompiledStep<[Tensor, Tensor], Tensor>).stats() : null };
    };
    const eager = go(false);
    const cap = go(true);
    expectBitEqual(cap.losses, eager.losses, 'losses');
    expect(cap.stats).toMatchObject({ eagerCalls: 1, traces: 1, replays: 4 });
  });

  it('passes a declared host value to the kernel that receives it, and guards with one that no kernel receives as is', () => {
    const w = fg.tensor([1, 2, 3]).keep();
    const hp = { scale: 2 };
    // Multiplies w in place by the scale it is given (host memory, as the arena kernels write it).
    const scaleInPlace = (s: Storage, h: { scale: number }): void => {
      const d = (s as CpuStorage).data;
      for (let i = 0; i < d.length; i++) d[i] *= h.scale;
    };
    const make = (consumed: boolean) =>
      fg.compile(function scaled(x: Tensor) {
        const h = { scale: hp.scale };
        captureHooks.hostValue?.(h, () => ({ scale: hp.scale }));
        // Received as is, or only a number derived from it (then the plan must trace again for a new scale).
        const arg = consumed ? h : { scale: h.scale };
        if (captureHooks.deviceCall) captureHooks.deviceCall('scaleInPlace', scaleInPlace, [w.storage, arg]);
        else scaleInPlace(w.storage, arg);
        return fg.add(w, x);
      }, { onMessage: (m) => { throw new Error(m); } });
    for (const consumed of [true, false]) {
      getBackend().write(w.storage, Float32Array.from([1, 2, 3]));
      const step = make(consumed);
      const x = fg.tensor([0, 0, 0]);
      const seen: number[][] = [];
      for (const scale of [2, 2, 2, 3, 3, 0.5]) {
        hp.scale = scale;
        seen.push(Array.from(step(x).dataSync()));
      }
      // 1 2 3 -> x2 x2 x2 x3 x3 x0.5, as eagerly.
      expect(seen, consumed ? 'received as is' : 'derived').toEqual([[2, 4, 6], [4, 8, 12], [8, 16, 24], [24, 48, 72], [72, 144, 216], [36, 72, 108]]);
      expect(step.stats().traces, consumed ? 'received as is' : 'derived').toBe(consumed ? 1 : 3);
    }
  });

  it('keeps one plan per LookSAM phase and replays both', async () => {
    const cap = await run({ model: 'mlp', opt: 'LookSAM' }, 8, true);
    // Warm-up (a recompute step), then one trace per phase, then replays.
    expect(cap.compiled!.stats()).toMatchObject({ eagerCalls: 1, traces: 2, replays: 5 });
  });
});

describe('compile on WebGPU: replay matches the eager step within float32 tolerance', () => {
  let prev: Backend;
  let gpu: Backend | null = null;
  beforeAll(async () => {
    prev = getBackend();
    gpu = (await acquireWebGPU()).backend;
    if (gpu) setBackend(gpu);
  });
  afterAll(() => setBackend(prev));
  // Six steps: warm-up, trace, a replay that records the command streams, three encoded from them.
  for (const c of [
    { model: 'mlp', opt: 'SAM', dropout: 0.25 },
    { model: 'mlp', opt: 'SGD', labelsOnDevice: true },
    { model: 'mlp', opt: 'AdamW', dropout: 0.25, schedule: true },
    { model: 'cnn', opt: 'SGD' },
    { model: 'cnn', opt: 'SAM', schedule: true },
    { model: 'vit', opt: 'AdamW', dropout: 0.1 },
  ] as Config[]) {
    it(label(c), async (ctx) => {
      if (!gpu) ctx.skip();
      const eager = await run(c, 6, false);
      const cap = await run(c, 6, true);
      expectClose(cap.losses, eager.losses, { atol: 1e-5, rtol: 1e-4 }, 'losses');
      for (const [k, v] of eager.state) expectClose(cap.state.get(k)!, v, { atol: 1e-5, rtol: 1e-4 }, k);
      expect(cap.stepCount).toBe(eager.stepCount);
      expect(cap.compiled!.stats()).toMatchObject({ traces: 1, replays: 4 });
    });
  }

  it('follows state that host code moves between replays, recording the command streams again', async (ctx) => {
    if (!gpu) ctx.skip();
    const eager = await stepsWithEagerForwards(false);
    const cap = await stepsWithEagerForwards(true);
    for (const [k, v] of eager) expectClose(cap.get(k)!, v, { atol: 1e-5, rtol: 1e-4 }, k);
  });

  it('replays from recorded command streams: one submit per step, host code only for the calls whose arguments change', async (ctx) => {
    if (!gpu) ctx.skip();
    const rt = (gpu as unknown as { rt: { dispatch(...a: unknown[]): void }; device: GPUDevice }).rt;
    const device = (gpu as unknown as { device: GPUDevice }).device;
    const c: Config = { model: 'cnn', opt: 'SGD' };
    fg.manualSeed(3);
    const model = makeModel(c);
    model.train();
    const opt = makeOpt(c, model.parameters());
    const step = fg.compile(stepFor(model, opt, c), { onMessage: (m) => { throw new Error(m); } });
    const counts = { dispatch: 0, submit: 0 };
    const dispatch = rt.dispatch;
    const submit = device.queue.submit;
    rt.dispatch = function (this: unknown, ...a: unknown[]) {
      counts.dispatch++;
      return dispatch.apply(this, a);
    };
    device.queue.submit = function (this: GPUQueue, ...a: Parameters<GPUQueue['submit']>) {
      counts.submit++;
      return submit.apply(this, a);
    };
    try {
      const seen: { dispatch: number; submit: number }[] = [];
      for (let t = 0; t < 5; t++) {
        const { x, y } = batch(c, t, 4);
        const xt = fg.tensor(x, { shape: inputShape(c, 4) });
        const yt = fg.tensor(y, { dtype: 'int32' });
        counts.dispatch = counts.submit = 0;
        const loss = step(xt, yt);
        seen.push({ ...counts });
        await loss.data();
        fg.dispose([loss, xt, yt]);
      }
      const plan = step.stats().plan!;
      expect(step.stats()).toMatchObject({ eagerCalls: 1, traces: 1, replays: 3 });
      // Calls 4 and 5 encode from the recordings of call 3: one submit each, and only the dynamic
      // calls (inputs, outputs, the update with its live lr) dispatch through the host code.
      for (const s of seen.slice(3)) {
        expect(s.submit).toBe(1);
        expect(s.dispatch).toBeLessThan(seen[2].dispatch / 4);
      }
      expect(plan.dynamicCalls).toBeLessThan(plan.calls / 4);
    } finally {
      rt.dispatch = dispatch;
      device.queue.submit = submit;
      step.dispose();
    }
  });
});

describe('compile: device work outside the Backend methods (cpu)', () => {
  let prev: Backend;
  beforeAll(() => {
    prev = getBackend();
    setBackend(new CpuBackend());
  });
  afterAll(() => setBackend(prev));

  it('replays a call routed through captureHooks.deviceCall', () => {
    const w = fg.tensor([1, 2, 3]).keep();
    // Writes host memory directly, as the arena kernels do: invisible at the Backend boundary.
    const doubleInPlace = (s: Storage): void => {
      const d = (s as CpuStorage).data;
      for (let i = 0; i < d.length; i++) d[i] *= 2;
    };
    const step = fg.compile(function doubles(x: Tensor) {
      if (captureHooks.deviceCall) captureHooks.deviceCall('doubleInPlace', doubleInPlace, [w.storage]);
      else doubleInPlace(w.storage);
      return fg.add(w, x);
    }, { onMessage: (m) => { throw new Error(m); } });
    const x = fg.tensor([10, 20, 30]);
    const seen: number[][] = [];
    for (let t = 0; t < 4; t++) seen.push(Array.from(step(x).dataSync()));
    expect(step.stats()).toMatchObject({ eagerCalls: 1, traces: 1, replays: 2 });
    expect(seen).toEqual([[12, 24, 36], [14, 28, 42], [18, 36, 54], [26, 52, 78]]);
  });
});

/**
 * Optimizers written with the arena-kernel language run their passes through src/kernels/arena/run.ts,
 * which writes device memory itself rather than through the Backend methods: a captured step routes
 * those passes through captureHooks.deviceCall, or a replay would skip the update on cpu and WebGPU.
 * Each runs eagerly and captured from the same seed; parameters, optimizer state and losses must agree.
 */
describe('compile: optimizers from arena kernels (defineOptimizer, defineSamVariant) replay their passes', () => {
  const Lion = defineLion(fg.arena);
  const FriendlySAM = defineFriendlySAM(fg);
  type Case = { opt: 'lion' | 'friendly-sam' | 'rwp'; fused: boolean };
  const CASES: Case[] = [
    { opt: 'lion', fused: true },
    { opt: 'lion', fused: false },
    { opt: 'friendly-sam', fused: true },
    { opt: 'friendly-sam', fused: false },
    // The per-tensor engine of the built-in optimizers, with RWP's noise: drawn on the host (cpu,
    // wasm), or by the device kernel once per tensor with a shifted key (WebGPU).
    { opt: 'rwp', fused: false },
  ];

  async function runArenaOpt(c: Case, steps: number, captured: boolean): Promise<{ losses: Float32Array; state: Map<string, Float32Array>; messages: string[]; compiled: fg.CompiledStep<[Tensor, Tensor], Tensor> | null }> {
    fg.manualSeed(7);
    const model = nn.models.mlp([12, 16, 16, 4]);
    model.train();
    const params = model.parameters();
    const lossOf = (x: Tensor, y: Tensor) => fg.tidy(() => {
      const loss = fg.crossEntropy(model.forward(x), y);
      loss.backward();
      return loss;
    });
    let step: (x: Tensor, y: Tensor) => Tensor;
    let optState: () => Tensor[];
    if (c.opt === 'lion') {
      const opt = Lion.create(params, { lr: 1e-2, weight_decay: 0.1, fused: c.fused });
      // Gradients cleared after the update (not before the next one): a step that disposes
      // gradients made by an earlier call cannot be replayed (the per-tensor engine's set_to_none).
      step = function lionStep(x, y) {
        const loss = lossOf(x, y);
        opt.step();
        opt.zeroGrad();
        return loss;
      };
      optState = () => opt.stateTensors('exp_avg');
    } else {
      const opts = { lr: 0.05, momentum: 0.9, rho: 0.05, fused: c.fused };
      const opt = c.opt === 'rwp' ? new optim.RWP(params, optim.SGD, opts) : new FriendlySAM(params, optim.SGD, { ...opts, sigma: 1, lmbda: 0.9 });
      step = function samStep(x, y) {
        const loss = opt.step(() => lossOf(x, y)) as Tensor;
        opt.zeroGrad();
        return loss;
      };
      optState = () => {
        const sd = opt.stateDict();
        return [...Object.values(sd.state).flatMap((s) => Object.values(s).filter((v): v is Tensor => v instanceof fg.Tensor)), ...(sd.scalars ? [sd.scalars] : [])];
      };
    }
    const messages: string[] = [];
    const compiled = captured ? fg.compile(step, { onMessage: (m) => messages.push(m) }) : null;
    const losses: number[] = [];
    for (let t = 0; t < steps; t++) {
      const { x, y } = batch({ model: 'mlp', opt: 'SGD' }, t, 4);
      const xt = fg.tensor(x, { shape: [4, 12] });
      const yt = fg.tensor(y, { dtype: 'int32' });
      const loss = (compiled ?? step)(xt, yt);
      losses.push(...(await loss.data()));
      for (const tt of [loss, xt, yt]) tt.dispose();
    }
    const state = new Map<string, Float32Array>();
    for (const [k, v] of Object.entries(model.stateDict())) state.set(k, Float32Array.from(await (v as Tensor).data()));
    const opt = optState();
    for (let i = 0; i < opt.length; i++) state.set(`optimizer state ${i}`, Float32Array.from(await opt[i].data()));
    return { losses: Float32Array.from(losses), state, messages, compiled };
  }

  const caseLabel = (c: Case) => `${c.opt}${c.fused ? ' (fused)' : ' (per tensor)'}`;

  it('the public entry points (runPerTensor, runScalarProgram) called in a step replay on cpu', () => {
    const prev = getBackend();
    setBackend(new CpuBackend());
    try {
      const double = fg.arena.defineArenaKernel({ name: 'test-double', vectors: { x: 'readwrite' }, body: ({ x }, _h, _s, k) => ({ x: k.mul(x, 2) }) });
      const count = fg.arena.defineArenaKernel({ name: 'test-count', vectors: {}, slots: { c: 0 }, after: (s, k) => ({ c: k.add(s.c, 1) }) });
      const w = fg.tensor([1, 2, 3]).keep();
      const S = fg.zeros([fg.arena.S_SLOTS]).keep();
      const step = fg.compile(function doublesAndCounts(x: Tensor) {
        fg.arena.runPerTensor(double, w.backend, { dtype: 'float32', params: [{ vectors: { x: w.storage }, numel: 3, group: 0, flags: fg.arena.FLAG_ACTIVE }] });
        fg.arena.runScalarProgram(count, w.backend, S.storage);
        return fg.add(w, x);
      }, { onMessage: (m) => { throw new Error(m); } });
      const x = fg.tensor([10, 20, 30]);
      const seen: number[][] = [];
      for (let t = 0; t < 4; t++) seen.push(Array.from(step(x).dataSync()));
      expect(step.stats()).toMatchObject({ eagerCalls: 1, traces: 1, replays: 2 });
      expect(seen).toEqual([[12, 24, 36], [14, 28, 42], [18, 36, 54], [26, 52, 78]]);
      expect(S.dataSync()[0]).toBe(4);
    } finally {
      setBackend(prev);
    }
  });

  for (const which of ['cpu', 'wasm'] as const) {
    describe(`on ${which}: bit for bit`, () => {
      let prev: Backend;
      beforeAll(async () => {
        prev = getBackend();
        setBackend(which === 'cpu' ? new CpuBackend() : await createWasmBackend({ threads: 1 }));
      });
      afterAll(() => setBackend(prev));
      for (const c of CASES) {
        it(caseLabel(c), async () => {
          const eager = await runArenaOpt(c, 5, false);
          const cap = await runArenaOpt(c, 5, true);
          expect(cap.messages).toEqual([]);
          expect(cap.compiled!.stats()).toMatchObject({ eagerCalls: 1, traces: 1, replays: 3 });
          expectBitEqual(cap.losses, eager.losses, 'losses');
          expect([...cap.state.keys()]).toEqual([...eager.state.keys()]);
          // The optimizer's own state is compared too (Lion's exp_avg, the SAM family's momentum and scalars).
          expect([...eager.state.keys()].filter((k) => k.startsWith('optimizer state')).length).toBeGreaterThan(1);
          for (const [k, v] of eager.state) expectBitEqual(cap.state.get(k)!, v, k);
        });
      }
    });
  }

  describe('on WebGPU: within float32 tolerance', () => {
    let prev: Backend;
    let gpu: Backend | null = null;
    beforeAll(async () => {
      prev = getBackend();
      gpu = (await acquireWebGPU()).backend;
      if (gpu) setBackend(gpu);
    });
    afterAll(() => setBackend(prev));
    for (const c of CASES) {
      it(caseLabel(c), async (ctx) => {
        if (!gpu) ctx.skip();
        const eager = await runArenaOpt(c, 4, false);
        const cap = await runArenaOpt(c, 4, true);
        expect(cap.messages).toEqual([]);
        expect(cap.compiled!.stats().replays).toBe(2);
        expectClose(cap.losses, eager.losses, { atol: 1e-5, rtol: 1e-4 }, 'losses');
        for (const [k, v] of eager.state) expectClose(cap.state.get(k)!, v, { atol: 1e-5, rtol: 1e-4 }, k);
      });
    }
  });
});
