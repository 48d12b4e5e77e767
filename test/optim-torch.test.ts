/**
 * The optimizers exactly as torch.optim, at the edges:
 * - parameters that receive no gradient on some steps are left alone (no weight decay, momentum or
 *   Adam step, step count not advanced), and Adam's bias correction uses each parameter's own count
 *   (PyTorch reference trajectories from scripts/gen-optim-fixtures.py), on cpu, wasm and webgpu,
 *   fused and unfused; per-parameter steps survive a state dict, and old state dicts load;
 * - a step skipped for a non-finite gradient changes nothing, state creation and step counts
 *   included (the unfused path on WebGPU gates on the device);
 * - the SAM wrappers pass `eps` to the base optimizer (the norm's epsilon is `normEps`) and reject
 *   ambiguous options;
 * - a finite gradient too large to square in float32 (1e20) is neither skipped nor overflows the norm.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import { initWebGPU, useBackend } from './helpers/backend-scope.js';

const { optim } = fg;
type Tensor = fg.Tensor;

interface Fixture {
  case: { name: string; type: 'sgd' | 'adam' | 'adamw'; lr: number; momentum?: number; dampening?: number; nesterov?: boolean; weight_decay: number; betas?: [number, number]; eps?: number };
  shapes: number[][];
  schedule: number[][];
  steps: number;
  params_after: number[][][];
  param_steps: number[];
}

const FIXTURE_DIR = new URL('./fixtures/optim/', import.meta.url);
const FIXTURES: Fixture[] = readdirSync(FIXTURE_DIR)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((f) => JSON.parse(readFileSync(new URL(f, FIXTURE_DIR), 'utf8')) as Fixture)
  // The directory also holds the worked examples' fixtures (lion.json, ...), of another format.
  .filter((f) => typeof f.case?.name === 'string' && Array.isArray(f.param_steps));

/** The generator's formulas (scripts/gen-optim-fixtures.py). */
const sines = (n: number, seed: number) => Float64Array.from({ length: n }, (_, i) => Math.sin(0.37 * i + seed));
const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
const initOf = (c: Fixture, k: number) => sines(size(c.shapes[k]), 0.5 + k);
const gradOf = (c: Fixture, k: number, t: number) => sines(size(c.shapes[k]), 1.3 * k + 0.7 * t + 0.1);

function makeOptimizer(c: Fixture, ps: Tensor[], fused: boolean): fg.optim.Optimizer {
  const o = c.case;
  if (o.type === 'sgd') return new optim.SGD(ps, { lr: o.lr, momentum: o.momentum, dampening: o.dampening, nesterov: o.nesterov, weightDecay: o.weight_decay, fused });
  const Cls = o.type === 'adam' ? optim.Adam : optim.AdamW;
  return new Cls(ps, { lr: o.lr, betas: o.betas, eps: o.eps, weightDecay: o.weight_decay, fused });
}

/**
 * Backward of sum_k <p_k, g_k> over the scheduled parameters: each gets exactly g_k, accumulated
 * by backward into its .grad (the arena's view when fused), the others none.
 */
function backwardWith(ps: Tensor[], grads: Map<number, Float64Array>): void {
  fg.tidy(() => {
    let loss: Tensor | null = null;
    for (const [k, g] of grads) {
      const term = ps[k].mul(fg.tensor(g, { dtype: ps[k].dtype, shape: ps[k].shape.slice() })).sum();
      loss = loss ? loss.add(term) : term;
    }
    loss!.backward();
  });
}

interface RunOptions {
  dtype: fg.DType;
  fused: boolean;
  /** Steps [from, to) of the schedule (default all). */
  from?: number;
  to?: number;
  /** One step with a NaN gradient on every parameter first: it must be skipped without a trace. */
  nanFirst?: boolean;
  /** Continue an existing run. */
  resume?: { ps: Tensor[]; opt: fg.optim.Optimizer };
}

function run(c: Fixture, o: RunOptions): { ps: Tensor[]; opt: fg.optim.Optimizer } {
  const ps = o.resume?.ps ?? c.shapes.map((s, k) => fg.tensor(initOf(c, k), { dtype: o.dtype, shape: s, requiresGrad: true }));
  const opt = o.resume?.opt ?? makeOptimizer(c, ps, o.fused);
  expect(opt.fused).toBe(o.fused);
  if (o.nanFirst) {
    opt.zeroGrad();
    backwardWith(ps, new Map(ps.map((p, k) => [k, new Float64Array(p.size).fill(NaN)])));
    opt.step();
  }
  for (let t = o.from ?? 0; t < (o.to ?? c.steps); t++) {
    opt.zeroGrad();
    backwardWith(ps, new Map(c.schedule[t].map((k) => [k, gradOf(c, k, t)])));
    opt.step();
  }
  return { ps, opt };
}

async function expectTrajectoryEnd(c: Fixture, ps: Tensor[], tol: number, what: string): Promise<void> {
  const want = c.params_after[c.steps - 1];
  for (let k = 0; k < ps.length; k++) {
    const got = await ps[k].data();
    want[k].forEach((w, i) => {
      const err = Math.abs(got[i] - w);
      expect(err, `${what}: parameter ${k}[${i}] = ${got[i]}, torch ${w}`).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(w)));
    });
  }
}

async function paramSteps(opt: fg.optim.Optimizer): Promise<number[]> {
  const sd = opt.stateDict();
  const out: number[] = [];
  for (let k = 0; k < opt.engine.params.length; k++) {
    const s = sd.state[k]?.step;
    out.push(s instanceof fg.Tensor ? (await s.data())[0] : (s as number));
  }
  return out;
}

/** The whole matrix on one backend: every fixture, fused and unfused, plain and after a skipped NaN step. */
async function checkBackend(dtype: fg.DType, tol: number, label: string, modes = [true, false]): Promise<void> {
  for (const c of FIXTURES) {
    for (const fused of modes) {
      for (const nanFirst of [false, true]) {
        const what = `${label} ${c.case.name} ${fused ? 'fused' : 'unfused'}${nanFirst ? ' after a skipped NaN step' : ''}`;
        const { ps, opt } = run(c, { dtype, fused, nanFirst });
        await expectTrajectoryEnd(c, ps, tol, what);
        expect(await paramSteps(opt), `${what}: per-parameter steps`).toEqual(c.param_steps);
        opt.dispose();
      }
    }
  }
}

describe('parameters without a gradient are skipped as torch.optim skips them (fixtures from PyTorch)', () => {
  it('the fixtures cover SGD with momentum, Nesterov, Adam and AdamW, with parameters missing steps', () => {
    expect(FIXTURES.map((f) => f.case.name)).toEqual(['adam_l2', 'adamw', 'sgd_momentum_damp_wd', 'sgd_nesterov_wd']);
    for (const f of FIXTURES) expect(new Set(f.param_steps).size).toBeGreaterThan(1);
  });

  it('cpu float64, fused and unfused', async () => {
    await checkBackend('float64', 1e-12, 'cpu f64');
  });

  it('cpu float32, fused and unfused', async () => {
    await checkBackend('float32', 2e-5, 'cpu f32');
  });

  describe('wasm float32', () => {
    let prev: Backend;
    beforeAll(async () => {
      prev = getBackend();
      await fg.init({ backend: 'wasm' });
    });
    afterAll(() => setBackend(prev));
    it('fused and unfused', async () => {
      await checkBackend('float32', 2e-5, 'wasm');
    });
  });

  describe('webgpu float32', () => {
    const gpu = useBackend(initWebGPU);
    for (const fused of [true, false]) {
      it(fused ? 'fused' : 'unfused (the gate, state creation and bias correction on the device)', (ctx) =>
        gpu.run(ctx, () => checkBackend('float32', 5e-5, 'webgpu', [fused])),
      );
    }
  });

  it('zeroGrad({ setToNone: false }) keeps zero gradients that the update uses, as torch', () => {
    const c = FIXTURES.find((f) => f.case.name === 'adamw')!;
    for (const fused of [true, false]) {
      const ps = c.shapes.map((s, k) => fg.tensor(initOf(c, k), { dtype: 'float64', shape: s, requiresGrad: true }));
      const opt = makeOptimizer(c, ps, fused);
      opt.zeroGrad({ setToNone: false });
      backwardWith(ps, new Map([[0, gradOf(c, 0, 0)]]));
      opt.step();
      // Parameter 1 had a zero gradient: AdamW decays it (its Adam step is 0 / (0 + eps) = 0).
      const p1 = ps[1].dataSync();
      initOf(c, 1).forEach((v, i) => expect(p1[i], `${fused}`).toBeCloseTo(v * (1 - c.case.lr * c.case.weight_decay), 14));
      expect(opt.stateDict().state[1].step).toBe(1);
    }
  });

  it('per-parameter steps survive stateDict / loadStateDict: resuming matches torch', async () => {
    for (const c of FIXTURES) {
      for (const fused of [true, false]) {
        const first = run(c, { dtype: 'float64', fused, to: 3 });
        const sd = first.opt.stateDict();
        const ps = first.ps.map((p) => fg.tensor(p.dataSync(), { dtype: 'float64', shape: p.shape.slice(), requiresGrad: true }));
        const opt = makeOptimizer(c, ps, fused);
        opt.loadStateDict(sd);
        run(c, { dtype: 'float64', fused, from: 3, resume: { ps, opt } });
        await expectTrajectoryEnd(c, ps, 1e-12, `${c.case.name} resumed ${fused}`);
      }
    }
  });

  it('old state dicts load: a number step per parameter, or only step_count', () => {
    const c = FIXTURES.find((f) => f.case.name === 'adam_l2')!;
    for (const fused of [true, false]) {
      const a = run(c, { dtype: 'float64', fused, to: 2 });
      const sd = a.opt.stateDict();
      // The format before per-parameter counts: every parameter's step was the optimizer's count.
      const old = { ...sd, state: Object.fromEntries(Object.entries(sd.state).map(([k, v]) => [k, { ...v, step: 2 }])) };
      const ps = a.ps.map((p) => fg.tensor(p.dataSync(), { dtype: 'float64', shape: p.shape.slice(), requiresGrad: true }));
      const b = makeOptimizer(c, ps, fused);
      b.loadStateDict(old);
      expect(b.stateDict().state[2].step).toBe(2);
      const noSteps = { ...sd, state: Object.fromEntries(Object.entries(sd.state).map(([k, v]) => [k, Object.fromEntries(Object.entries(v).filter(([n]) => n !== 'step'))])) };
      const b2 = makeOptimizer(c, ps, fused);
      b2.loadStateDict(noSteps);
      expect(b2.stateDict().state[3].step).toBe(2);
      // torch keeps state['step'] as a one-element tensor: that loads too.
      const b3 = makeOptimizer(c, ps, fused);
      b3.loadStateDict({ ...sd, state: { ...sd.state, 1: { ...sd.state[1], step: fg.tensor([5], { dtype: 'float64' }) } } });
      expect(b3.stateDict().state[1].step).toBe(5);
      expect(() => b2.loadStateDict({ ...sd, state: { 0: { step: 'three' as unknown as number } } })).toThrow(/step of parameter 0/);
    }
  });
});

describe('SAM wrappers pass eps to the base optimizer', () => {
  const model = (seed: number) => {
    fg.manualSeed(seed);
    return fg.nn.models.mlp([3, 5, 2], { activation: 'tanh', dtype: 'float64' });
  };
  const data = () => ({ x: fg.tensor(sines(12, 0.3), { dtype: 'float64', shape: [4, 3] }), y: fg.tensor(Int32Array.from([0, 1, 1, 0]), { dtype: 'int32' }) });
  const closure = (m: fg.nn.Sequential, d: ReturnType<typeof data>) => () =>
    fg.tidy(() => {
      const l = fg.nn.functional.crossEntropy(m.forward(d.x) as Tensor, d.y);
      l.backward();
      return l;
    });

  it('new SAM(params, AdamW, { eps }) sets AdamW eps: with rho 0 it is AdamW bit for bit', () => {
    for (const fused of [true, false]) {
      const ma = model(5);
      const mb = model(5);
      const d = data();
      const sam = new optim.SAM(ma.parameters(), optim.AdamW, { rho: 0, lr: 0.05, eps: 1e-3, fused });
      expect(sam.base.paramGroups[0].eps).toBe(1e-3);
      const plain = new optim.AdamW(mb.parameters(), { lr: 0.05, eps: 1e-3, fused });
      for (let t = 0; t < 3; t++) {
        sam.step(closure(ma, d));
        plain.zeroGrad();
        closure(mb, d)();
        plain.step();
      }
      const pa = ma.parameters().flatMap((p) => Array.from(p.dataSync()));
      const pb = mb.parameters().flatMap((p) => Array.from(p.dataSync()));
      pa.forEach((v, i) => expect(v, `${fused} [${i}]`).toBe(pb[i]));
    }
  });

  it('normEps is the norm epsilon: e = rho g / (||g|| + normEps)', () => {
    for (const fused of [true, false]) {
      const m = model(6);
      const d = data();
      const ps = m.parameters();
      const sam = new optim.SAM(ps, optim.SGD, { rho: 0.5, lr: 0.1, normEps: 2, fused });
      sam.zeroGrad();
      closure(m, d)();
      const p0 = ps.map((p) => Array.from(p.dataSync()));
      const g = ps.map((p) => Array.from(p.grad!.dataSync()));
      const norm = Math.sqrt(g.flat().reduce((a, x) => a + x * x, 0));
      sam.firstStep();
      ps.forEach((p, k) => p.dataSync().forEach((v, i) => expect(v - p0[k][i], `${fused}`).toBeCloseTo((0.5 * g[k][i]) / (norm + 2), 12)));
      sam.secondStep();
    }
  });

  it('every wrapper routes eps to its base and names the option when the base has none', () => {
    const wrappers: [string, unknown][] = [
      ['SAM', optim.SAM],
      ['ASAM', optim.ASAM],
      ['LookSAM', optim.LookSAM],
      ['MSAM', optim.MSAM],
      ['ESAM', optim.ESAM],
      ['RandomSAM', optim.RandomSAM],
      ['RWP', optim.RWP],
      ['GSAM', optim.GSAM],
    ];
    for (const [name, W] of wrappers) {
      const Ctor = W as unknown as new (p: Tensor[], b: fg.optim.BaseOptimizerClass, o: Record<string, unknown>) => fg.optim.SharpnessAware;
      const w = new Ctor(model(7).parameters(), optim.Adam, { eps: 1e-4, normEps: 1e-9 });
      expect(w.base.paramGroups[0].eps, name).toBe(1e-4);
      expect(() => new Ctor(model(7).parameters(), optim.SGD, { eps: 1e-4 }), name).toThrow(/"eps".*normEps/);
    }
  });

  it('an option both the wrapper and its base take is an error naming it', () => {
    class RhoSGD extends optim.SGD {
      constructor(params: fg.optim.ParamsInput, opts: Record<string, unknown> = {}) {
        super(params, opts, { extraKeys: [] });
        this.defaults.rho = 0;
      }
    }
    expect(() => new optim.SAM(model(8).parameters(), RhoSGD, { rho: 0.1 })).toThrow(/"rho" is ambiguous/);
  });
});

describe('finite gradients too large to square in float32 are neither skipped nor overflow the norm', () => {
  const backends: { name: string; be: Backend | null }[] = [];
  let prev: Backend;
  beforeAll(async () => {
    prev = getBackend();
    backends.push({ name: 'cpu', be: prev });
    await fg.init({ backend: 'wasm' });
    backends.push({ name: 'wasm', be: getBackend() });
    try {
      await fg.init({ backend: 'webgpu' });
      backends.push({ name: 'webgpu', be: getBackend() });
    } catch (e) {
      if (process.env.REQUIRE_WEBGPU === '1') throw e;
    }
    setBackend(prev);
  });
  afterAll(() => setBackend(prev));
  /**
   * Runs f on every backend, fused and unfused (float32); on WebGPU also with the GPU code path
   * (workgroup tree reductions) that SwiftShader does not take by default.
   */
  const everywhere = async (f: (what: string, fused: boolean) => Promise<void>) => {
    for (const { name, be } of backends) {
      setBackend(be!);
      const rt = (be as unknown as { rt?: { cpuEmulated: boolean } }).rt;
      const was = rt?.cpuEmulated;
      try {
        for (const fused of [true, false]) await f(`${name} ${fused ? 'fused' : 'unfused'}`, fused);
        if (rt && was) {
          rt.cpuEmulated = false;
          await f(`${name} fused, GPU code path`, true);
        }
      } finally {
        if (rt) rt.cpuEmulated = was!;
        setBackend(prev);
      }
    }
  };
  // 1 + 5 + 600 elements: several partial sums on every backend, combined across magnitudes.
  const SHAPES = [[3, 4], [5], [600]];
  const make = () => SHAPES.map((s, k) => fg.tensor(sines(size(s), 0.5 + k), { dtype: 'float32', shape: s, requiresGrad: true }));
  const bigGrads = (scale: number) => new Map(SHAPES.map((s, k) => [k, sines(size(s), 2 + k).map((v) => v * scale * 10 ** (k - 1))]));

  it('SGD steps with a gradient of 1e20 and 1e30 (not skipped); NaN and Inf still skip', async () => {
    await everywhere(async (what, fused) => {
      for (const [scale, special] of [[1e20, null], [1e30, null], [1, NaN], [1, Infinity]] as const) {
        const ps = make();
        const opt = new optim.SGD(ps, { lr: 1e-20, fused });
        opt.zeroGrad();
        const grads = bigGrads(scale);
        if (special !== null) grads.get(1)![2] = special;
        backwardWith(ps, grads);
        opt.step();
        const c = await opt.counters();
        expect(c.skipped, `${what} scale ${scale} ${special}`).toBe(special === null ? 0 : 1);
        for (let k = 0; k < ps.length; k++) {
          const got = await ps[k].data();
          const p0 = sines(ps[k].size, 0.5 + k);
          const g = grads.get(k)!;
          got.forEach((v, i) => {
            const want = special === null ? Math.fround(p0[i]) - 1e-20 * Math.fround(g[i]) : Math.fround(p0[i]);
            expect(Math.abs(v - want), `${what} scale ${scale} ${special}: ${k}[${i}]`).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(want)));
          });
        }
        opt.dispose();
      }
    });
  });

  it('SAM: the norm of a 1e20 gradient is finite and the perturbation is rho g / ||g||', async () => {
    await everywhere(async (what, fused) => {
      const ps = make();
      const sam = new optim.SAM(ps, optim.SGD, { rho: 0.5, lr: 0.1, fused });
      sam.zeroGrad();
      const grads = bigGrads(1e20);
      backwardWith(ps, grads);
      sam.firstStep();
      const norm = Math.sqrt([...grads.values()].reduce((a, g) => a + g.reduce((b, x) => b + Math.fround(x) ** 2, 0), 0));
      const stats = await sam.stats();
      expect(Math.abs(stats.gradNorm - norm) / norm, `${what}: gradNorm ${stats.gradNorm} vs ${norm}`).toBeLessThan(1e-5);
      expect(stats.lastSkipped, what).toBe(false);
      for (let k = 0; k < ps.length; k++) {
        const got = await ps[k].data();
        const p0 = sines(ps[k].size, 0.5 + k);
        got.forEach((v, i) => {
          const want = p0[i] + (0.5 * grads.get(k)![i]) / norm;
          expect(Math.abs(v - want), `${what}: ${k}[${i}] ${v} vs ${want}`).toBeLessThan(1e-5);
        });
      }
      sam.zeroGrad();
      backwardWith(ps, grads);
      sam.secondStep();
      sam.dispose();
    });
  });

  it('clipGradNormFused scales a 1e30 gradient to maxNorm', async () => {
    for (const { name, be } of backends) {
      setBackend(be!);
      try {
        const ps = make();
        const opt = new optim.SGD(ps, { lr: 0.1 });
        opt.zeroGrad();
        const grads = bigGrads(1e30);
        backwardWith(ps, grads);
        optim.clipGradNormFused(opt, 2);
        const norm = Math.sqrt([...grads.values()].reduce((a, g) => a + g.reduce((b, x) => b + Math.fround(x) ** 2, 0), 0));
        for (let k = 0; k < ps.length; k++) {
          const got = await ps[k].grad!.data();
          got.forEach((v, i) => expect(Math.abs(v - (2 * grads.get(k)![i]) / norm), `${name} ${k}[${i}]`).toBeLessThan(1e-6));
        }
        opt.dispose();
      } finally {
        setBackend(prev);
      }
    }
  });
});
