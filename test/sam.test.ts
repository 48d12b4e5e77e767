/**
 * The sharpness-aware family: rho = 0 reduces bit for bit to the base optimizer (and LookSAM with
 * k = 1 to SAM), fused and unfused agree, non-finite gradients skip the step (and only that step),
 * BatchNorm statistics come from the clean pass only, each variant trains a small model, option
 * errors name the option. CPU in float64 and float32; the WebGPU checks are tiny.
 */
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { initWebGPU, useBackend } from './helpers/backend-scope.js';

const { nn, optim } = fg;
type Tensor = fg.Tensor;

interface Setup {
  model: fg.nn.Sequential;
  x: Tensor;
  y: Tensor;
  params: fg.nn.Parameter[];
}

/** A 4-8-3 MLP (tanh) and 12 samples of 3 classes, the same for the same seed. */
function setup(seed: number, dtype: fg.DType = 'float64', opts: { bn?: boolean; n?: number } = {}): Setup {
  fg.manualSeed(seed);
  const model = opts.bn
    ? new nn.Sequential(new nn.Linear(4, 8, { dtype }), new nn.BatchNorm1d(8, { dtype }), new nn.Tanh(), new nn.Linear(8, 3, { dtype }))
    : nn.models.mlp([4, 8, 3], { activation: 'tanh', dtype });
  const n = opts.n ?? 12;
  const labels = Int32Array.from({ length: n }, (_, i) => i % 3);
  // Host data (so that WebGPU runs get the same): uniform noise, the first feature shifted by class.
  let h = seed * 2654435761;
  const rnd = () => ((h = (Math.imul(h ^ (h >>> 15), 2246822507) + 0x6d2b79f5) >>> 0) / 2 ** 32) * 2 - 1;
  const xs = Float64Array.from({ length: n * 4 }, () => rnd());
  for (let i = 0; i < n; i++) xs[i * 4] += 2 * labels[i] - 2;
  const xt = fg.tensor(xs, { dtype, shape: [n, 4] });
  return { model, x: xt, y: fg.tensor(labels, { dtype: 'int32' }), params: model.parameters() };
}

function lossOf(s: Setup, idx: Tensor | null = null, reduction: 'mean' | 'none' = 'mean'): Tensor {
  const x = idx ? s.x.indexSelect(0, idx) : s.x;
  const y = idx ? s.y.indexSelect(0, idx) : s.y;
  return nn.functional.crossEntropy(s.model.forward(x), y, { reduction });
}

const closureOf = (s: Setup) => () =>
  fg.tidy(() => {
    const l = lossOf(s);
    l.backward();
    return l;
  });

/** Runs `steps` steps of a family member (or the base optimizer with variant 'base'). */
function run(variant: string, s: Setup, opts: Record<string, unknown>, steps = 3, Base: fg.optim.BaseOptimizerClass = optim.SGD): fg.optim.Optimizer {
  const base: Record<string, unknown> =
    Base === optim.SGD ? { lr: 0.1, momentum: 0.9, weightDecay: 1e-3, nesterov: true, ...opts } : { lr: 0.01, weightDecay: 1e-3, ...opts };
  if (Base !== optim.SGD) for (const k of ['momentum', 'nesterov', 'dampening']) delete base[k];
  const closure = closureOf(s);
  let opt: fg.optim.Optimizer;
  switch (variant) {
    case 'base': {
      const { rho: _r, adaptive: _a, k: _k, alpha: _al, m: _m, beta: _b, gamma: _g, ...rest } = base as Record<string, unknown>;
      opt = new Base(s.params, rest);
      break;
    }
    case 'SAM':
      opt = new optim.SAM(s.params, Base, base);
      break;
    case 'ASAM':
      opt = new optim.ASAM(s.params, Base, base);
      break;
    case 'LookSAM':
      opt = new optim.LookSAM(s.params, Base, base);
      break;
    case 'MSAM':
      opt = new optim.MSAM(s.params, Base, base);
      break;
    case 'ESAM':
      opt = new optim.ESAM(s.params, Base, base);
      break;
    case 'RandomSAM':
      opt = new optim.RandomSAM(s.params, Base, base);
      break;
    case 'RWP':
      opt = new optim.RWP(s.params, Base, base);
      break;
    case 'GSAM':
      opt = new optim.GSAM(s.params, Base, base);
      break;
    default:
      throw new Error(variant);
  }
  const n = s.x.shape[0];
  for (let t = 0; t < steps; t++) {
    if (variant === 'base') {
      opt.zeroGrad();
      closure();
      opt.step();
    } else if (variant === 'MSAM') {
      const m = (opt as fg.optim.MSAM)['opts'].m as number;
      opt.step(((i: number) =>
        fg.tidy(() => {
          const per = n / m;
          const idx = fg.tensor(Int32Array.from({ length: per }, (_, j) => i * per + j), { dtype: 'int32' });
          const l = lossOf(s, idx);
          l.backward();
          return l;
        })) as never);
    } else if (variant === 'ESAM') {
      opt.step(((idx: Tensor | null) => lossOf(s, idx, 'none')) as never);
    } else opt.step(closure);
  }
  return opt;
}

function values(s: Setup): number[] {
  return s.params.flatMap((p) => Array.from(p.dataSync()));
}

function expectBitEqual(a: number[], b: number[]): void {
  expect(a.length).toBe(b.length);
  const bad = a.findIndex((v, i) => !(v === b[i]));
  if (bad >= 0) throw new Error(`element ${bad}: ${a[bad]} vs ${b[bad]} (not bit-equal)`);
}

function expectClose(a: number[], b: number[], tol: number): void {
  expect(a.length).toBe(b.length);
  let worst = 0;
  a.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - b[i]) / (1e-3 + Math.abs(b[i])))));
  expect(worst).toBeLessThan(tol);
}

const VARIANTS = ['SAM', 'ASAM', 'LookSAM', 'MSAM', 'ESAM', 'RandomSAM', 'GSAM'];
/** Options under which each variant reduces to the base optimizer exactly. */
const IDENTITY: Record<string, Record<string, unknown>> = {
  SAM: { rho: 0 },
  ASAM: { rho: 0 },
  LookSAM: { rho: 0, k: 3 },
  MSAM: { rho: 0, m: 1 },
  ESAM: { rho: 0, beta: 1, gamma: 1 },
  RandomSAM: { rho: 0 },
  GSAM: { rho: 0 },
};

describe('rho = 0 reduces to the base optimizer bit for bit (CPU)', () => {
  for (const dtype of ['float64', 'float32'] as const) {
    for (const fused of [true, false]) {
      for (const v of VARIANTS) {
        for (const Base of [optim.SGD, optim.AdamW]) {
          it(`${v} / ${Base.name} ${dtype} ${fused ? 'fused' : 'unfused'}`, () => {
            const a = setup(1, dtype);
            run('base', a, { fused }, 4, Base);
            const b = setup(1, dtype);
            const opt = run(v, b, { ...IDENTITY[v], fused }, 4, Base);
            expect(opt.fused).toBe(fused);
            expectBitEqual(values(b), values(a));
          });
        }
      }
    }
  }
  it('LookSAM with k = 1 is SAM, bit for bit (both paths)', () => {
    for (const fused of [true, false]) {
      const a = setup(2);
      run('SAM', a, { rho: 0.1, fused }, 4);
      const b = setup(2);
      run('LookSAM', b, { rho: 0.1, k: 1, fused }, 4);
      expectBitEqual(values(b), values(a));
    }
  });
  it('the unfused SGD and AdamW updates equal the fused kernels bit for bit', () => {
    for (const dtype of ['float64', 'float32'] as const) {
      for (const Base of [optim.SGD, optim.Adam, optim.AdamW]) {
        const a = setup(3, dtype);
        run('base', a, { fused: true, dampening: 0 }, 5, Base);
        const b = setup(3, dtype);
        run('base', b, { fused: false, dampening: 0 }, 5, Base);
        expectBitEqual(values(b), values(a));
      }
    }
  });
});

describe('fused and unfused agree bit for bit (CPU, float64 and float32): the same arena kernels, per arena and per tensor', () => {
  const opts: Record<string, Record<string, unknown>> = {
    SAM: { rho: 0.1 },
    ASAM: { rho: 0.5 },
    LookSAM: { rho: 0.1, k: 2, alpha: 0.7 },
    MSAM: { rho: 0.1, m: 3 },
    ESAM: { rho: 0.1, beta: 0.6, gamma: 0.5 },
    RandomSAM: { rho: 0.1 },
    RWP: { gamma: 0.05, alpha: 0.5 },
    GSAM: { rho: 0.1, alpha: 0.3 },
  };
  for (const v of Object.keys(opts)) {
    for (const Base of [optim.SGD, optim.AdamW]) {
      for (const dtype of ['float64', 'float32'] as const) it(`${v} / ${Base.name} ${dtype}`, () => {
        const a = setup(4, dtype);
        run(v, a, { ...opts[v], fused: true }, 4, Base);
        const b = setup(4, dtype);
        run(v, b, { ...opts[v], fused: false }, 4, Base);
        expectBitEqual(values(a), values(b));
        // and it moved the parameters differently from the base optimizer
        const c = setup(4, dtype);
        run('base', c, { fused: true }, 4, Base);
        expect(Math.max(...values(a).map((x, i) => Math.abs(x - values(c)[i])))).toBeGreaterThan(1e-6);
      });
    }
  }
  it("subtract restore equals copy restore up to rounding, fused and unfused", () => {
    for (const fused of [true, false]) {
      const a = setup(5);
      run('SAM', a, { rho: 0.2, fused }, 3);
      const b = setup(5);
      run('SAM', b, { rho: 0.2, fused, restore: 'subtract' }, 3);
      expectClose(values(a), values(b), 1e-13);
    }
  });
});

describe('a non-finite gradient skips the step, and only that step', () => {
  for (const fused of [true, false]) {
    for (const Base of [optim.SGD, optim.AdamW]) {
      for (const where of ['first', 'second'] as const) {
        it(`SAM / ${Base.name} ${fused ? 'fused' : 'unfused'}, NaN in the ${where} pass`, async () => {
          const good = setup(6);
          const bo = Base === optim.SGD ? { lr: 0.05, momentum: 0.9 } : { lr: 0.01 };
          const ref = new optim.SAM(good.params, Base, { rho: 0.05, ...bo, fused });
          ref.step(closureOf(good));
          ref.step(closureOf(good));
          const s = setup(6);
          const opt = new optim.SAM(s.params, Base, { rho: 0.05, ...bo, fused });
          opt.step(closureOf(s));
          const before = values(s);
          let pass = 0;
          opt.step(() =>
            fg.tidy(() => {
              pass++;
              const poison = (where === 'first' && pass === 1) || (where === 'second' && pass === 2);
              const l = poison ? lossOf(s).mul(NaN) : lossOf(s);
              l.backward();
              return l;
            }),
          );
          expectBitEqual(values(s), before);
          const st = await (opt as fg.optim.SAM).stats();
          expect(st.skipped).toBe(1);
          expect(st.lastSkipped).toBe(true);
          opt.step(closureOf(s));
          // Momentum, Adam's moments and its step count are as if the bad step never happened.
          expectBitEqual(values(s), values(good));
          const st2 = await (opt as fg.optim.SAM).stats();
          expect(st2).toMatchObject({ attempted: 3, taken: 2, skipped: 1, lastSkipped: false });
        });
      }
    }
  }
  it('every variant skips and counts', async () => {
    for (const v of ['LookSAM', 'GSAM', 'RandomSAM', 'RWP', 'MSAM']) {
      const s = setup(7);
      const extra = v === 'LookSAM' ? { k: 1 } : v === 'MSAM' ? { m: 2 } : v === 'RWP' ? {} : { rho: 0.05 };
      const opt = run(v, s, { ...extra, fused: true }, 1);
      const before = values(s);
      const bad = () =>
        fg.tidy(() => {
          const l = lossOf(s).mul(Infinity);
          l.backward();
          return l;
        });
      if (v === 'MSAM') opt.step(((_i: number) => bad()) as never);
      else opt.step(bad);
      expectBitEqual(values(s), before);
      expect((await (opt as fg.optim.SharpnessAware).stats()).skipped).toBe(1);
    }
  });
});

describe('BatchNorm running statistics come from the first (clean) pass only', () => {
  for (const fused of [true, false]) {
    it(`SAM ${fused ? 'fused' : 'unfused'}`, () => {
      // Reference: one clean forward in training mode from the same weights.
      const a = setup(8, 'float64', { bn: true });
      fg.tidy(() => lossOf(a));
      const bnA = a.model.at(1) as fg.nn.BatchNorm1d;
      const s = setup(8, 'float64', { bn: true });
      const opt = new optim.SAM(s.params, optim.SGD, { rho: 0.5, lr: 0.1, fused });
      opt.step(closureOf(s));
      const bn = s.model.at(1) as fg.nn.BatchNorm1d;
      expectBitEqual(Array.from(bn.runningMean!.dataSync()), Array.from(bnA.runningMean!.dataSync()));
      expectBitEqual(Array.from(bn.runningVar!.dataSync()), Array.from(bnA.runningVar!.dataSync()));
      expect(bn.numBatchesTracked!.itemSync()).toBe(1);
      expect(fg.nn.runningStatsFrozen()).toBe(false);
      // Without the freeze, the perturbed pass updates them too.
      const t = setup(8, 'float64', { bn: true });
      new optim.SAM(t.params, optim.SGD, { rho: 0.5, lr: 0.1, fused, freezeBatchNorm: false }).step(closureOf(t));
      expect((t.model.at(1) as fg.nn.BatchNorm1d).numBatchesTracked!.itemSync()).toBe(2);
    });
  }
  it('firstStep/secondStep freeze in between', () => {
    const s = setup(9, 'float64', { bn: true });
    const opt = new optim.SAM(s.params, optim.SGD, { rho: 0.1, lr: 0.1 });
    closureOf(s)();
    opt.firstStep({ zeroGrad: true });
    expect(fg.nn.runningStatsFrozen()).toBe(true);
    closureOf(s)();
    opt.secondStep({ zeroGrad: true });
    expect(fg.nn.runningStatsFrozen()).toBe(false);
    expect((s.model.at(1) as fg.nn.BatchNorm1d).numBatchesTracked!.itemSync()).toBe(1);
  });
});

describe('every variant trains a small model', () => {
  const opts: Record<string, Record<string, unknown>> = {
    SAM: { rho: 0.05 },
    ASAM: { rho: 0.5 },
    LookSAM: { rho: 0.05, k: 3 },
    MSAM: { rho: 0.05, m: 2 },
    ESAM: { rho: 0.05, beta: 0.6, gamma: 0.5 },
    RandomSAM: { rho: 0.05 },
    RWP: { gamma: 0.01 },
    GSAM: { rho: 0.05, alpha: 0.3, rhoMin: 0.01 },
  };
  for (const v of Object.keys(opts)) {
    for (const dtype of ['float32', 'float64'] as const) {
      it(`${v} ${dtype}`, () => {
        const s = setup(10, dtype, { n: 24 });
        const l0 = fg.tidy(() => lossOf(s).itemSync());
        run(v, s, { ...opts[v], lr: 0.05, momentum: 0.9, nesterov: false }, 25);
        const l1 = fg.tidy(() => lossOf(s).itemSync());
        expect(l1).toBeLessThan(0.7 * l0);
      });
    }
  }
  it('GSAM ties rho to the learning-rate schedule', () => {
    const s = setup(11);
    const opt = new optim.GSAM(s.params, optim.SGD, { rho: 0.1, rhoMin: 0.02, lr: 0.1 });
    const sched = new optim.CosineAnnealingLR(opt, { tMax: 10 });
    expect(opt.rhoT()[0]).toBeCloseTo(0.1, 12);
    for (let i = 0; i < 10; i++) sched.step();
    expect(opt.rhoT()[0]).toBeCloseTo(0.02, 12);
  });
  it('rho schedulers work for every variant (key: rho)', () => {
    const s = setup(12);
    const opt = new optim.LookSAM(s.params, optim.SGD, { rho: 0.2, lr: 0.1 });
    const sched = new optim.StepLR(opt, { key: 'rho', stepSize: 2, gamma: 0.5 });
    sched.step();
    sched.step();
    expect(opt.paramGroups[0].rho).toBeCloseTo(0.1, 15);
    expect(opt.paramGroups[0].lr).toBe(0.1);
    const p = new optim.ProportionScheduler(opt, { maxLr: 0.1, minLr: 0, maxValue: 0.2, minValue: 0 });
    opt.paramGroups[0].lr = 0.05;
    p.step();
    expect(opt.paramGroups[0].rho).toBeCloseTo(0.1, 15);
  });
});

describe('ESAM data selection', () => {
  it('topkIndices returns exactly k indices of the largest values, ties to the lower index', () => {
    const d = fg.tensor([0.5, 2, -1, 2, 0.5, 3], { dtype: 'float64' });
    expect(Array.from(optim.topkIndices(d, 3).dataSync())).toEqual([5, 1, 3]);
    expect(Array.from(optim.topkIndices(d, 5).dataSync())).toEqual([5, 1, 3, 0, 4]);
    expect(Array.from(optim.topkIndices(d, 1).dataSync())).toEqual([5]);
  });
  it('the second pass sees exactly round(gamma |B|) samples', () => {
    const s = setup(13);
    const opt = new optim.ESAM(s.params, optim.SGD, { rho: 0.05, gamma: 0.25, lr: 0.1 });
    const seen: (number | null)[] = [];
    opt.step(((idx: Tensor | null) => {
      seen.push(idx ? idx.size : null);
      return lossOf(s, idx, 'none');
    }) as never);
    expect(seen).toEqual([null, null, 3]);
  });
});

describe('options', () => {
  it('an unknown option is an error that names it', () => {
    const s = setup(14);
    expect(() => new optim.SAM(s.params, optim.SGD, { rhoo: 0.1, lr: 0.1 })).toThrow(/rhoo/);
    expect(() => new optim.SAM(s.params, optim.SGD, { rhoo: 0.1, lr: 0.1 })).toThrow(/known options: .*rho.*momentum/);
    expect(() => new optim.LookSAM(s.params, optim.SGD, { lr: 0.1, kk: 2 })).toThrow(/"kk"/);
    expect(() => new optim.SAM([{ params: s.params, rhoo: 1 }], optim.SGD, { lr: 0.1 })).toThrow(/rhoo/);
  });
  it('negative or non-finite rho and lr are errors', () => {
    const s = setup(15);
    expect(() => new optim.SAM(s.params, optim.SGD, { rho: -0.1, lr: 0.1 })).toThrow(/rho/);
    expect(() => new optim.SAM(s.params, optim.SGD, { rho: NaN, lr: 0.1 })).toThrow(/rho/);
    expect(() => new optim.SAM(s.params, optim.SGD, { lr: -1 })).toThrow(/lr/);
    expect(() => new optim.SAM(s.params, optim.SGD, { lr: Infinity })).toThrow(/lr/);
    const opt = new optim.SAM(s.params, optim.SGD, { lr: 0.1 });
    opt.paramGroups[0].rho = -1;
    expect(() => opt.step(closureOf(s))).toThrow(/rho/);
  });
  it('rho per group, one global norm', () => {
    const s = setup(16);
    const [w0, b0, w1, b1] = s.params;
    const opt = new optim.SAM(
      [
        { params: [w0, b0], rho: 0.2 },
        { params: [w1, b1], rho: 0 },
      ],
      optim.SGD,
      { lr: 0.1 },
    );
    closureOf(s)();
    const g = s.params.map((p) => Array.from(p.grad!.dataSync()));
    const before = values(s);
    opt.firstStep();
    const after = values(s);
    const norm = Math.sqrt(g.flat().reduce((a, v) => a + v * v, 0));
    const e = after.map((v, i) => v - before[i]);
    const n0 = w0.size + b0.size;
    e.forEach((v, i) => expect(v).toBeCloseTo(i < n0 ? (0.2 * g.flat()[i]) / norm : 0, 12));
    opt.secondStep();
  });
  it('defaults: SAM rho 0.05; ASAM rho 0.5, eta 0.01, adaptive', () => {
    const s = setup(17);
    expect(new optim.SAM(s.params, optim.SGD, { lr: 0.1 }).paramGroups[0]).toMatchObject({ rho: 0.05, adaptive: false });
    const s2 = setup(17);
    expect(new optim.ASAM(s2.params, optim.SGD, { lr: 0.1 }).paramGroups[0]).toMatchObject({ rho: 0.5, eta: 0.01, adaptive: true });
  });
});

describe('WebGPU (tiny, float32)', () => {
  const gpuScope = useBackend(initWebGPU);
  const onGpu = gpuScope.run;
  const read = async (s: Setup) => (await Promise.all(s.params.map((p) => p.data()))).flatMap((a) => Array.from(a));

  // The per-tensor baseline runs the fused pass's own WGSL once per tensor, its partials in the
  // arena's block order: the two agree bit for bit here too.
  it('fused and unfused agree bit for bit for every variant', async (ctx) => {
    await onGpu(ctx, async () => {
      const opts: Record<string, Record<string, unknown>> = {
        SAM: { rho: 0.1 },
        ASAM: { rho: 0.5 },
        LookSAM: { rho: 0.1, k: 2 },
        MSAM: { rho: 0.1, m: 2 },
        RandomSAM: { rho: 0.1 },
        RWP: { gamma: 0.05 },
        GSAM: { rho: 0.1, alpha: 0.3 },
        ESAM: { rho: 0.1, beta: 0.6, gamma: 0.5 },
      };
      const values0 = await read(setup(20, 'float32'));
      for (const v of Object.keys(opts)) {
        const a = setup(20, 'float32');
        const oa = run(v, a, { ...opts[v], fused: true }, 2, optim.AdamW);
        expect(oa.fused).toBe(true);
        const b = setup(20, 'float32');
        run(v, b, { ...opts[v], fused: false }, 2, optim.AdamW);
        const [va, vb] = [await read(a), await read(b)];
        expectBitEqual(va, vb);
        expect(va.some((x, i) => x !== values0[i]), `${v} moved the parameters`).toBe(true);
      }
    });
  });
  it('matches the CPU fused run', async (ctx) => {
    const c = setup(21, 'float32');
    run('SAM', c, { rho: 0.1, fused: true }, 3);
    const cpu = values(c);
    await onGpu(ctx, async () => {
      const g = setup(21, 'float32');
      run('SAM', g, { rho: 0.1, fused: true }, 3);
      const vg = await read(g);
      vg.forEach((x, i) => expect(Math.abs(x - cpu[i])).toBeLessThan(2e-5));
    });
  });
  it('the GPU code path (workgroup reductions, one vec4 a thread) also matches the CPU', async (ctx) => {
    const c = setup(24, 'float32');
    run('ASAM', c, { rho: 0.5, fused: true }, 2, optim.AdamW);
    const cpu = values(c);
    await onGpu(ctx, async () => {
      const rt = (gpuScope.backend() as unknown as { rt: { cpuEmulated: boolean } }).rt;
      const was = rt.cpuEmulated;
      rt.cpuEmulated = false;
      try {
        const g = setup(24, 'float32');
        run('ASAM', g, { rho: 0.5, fused: true }, 2, optim.AdamW);
        const vg = await read(g);
        vg.forEach((x, i) => expect(Math.abs(x - cpu[i])).toBeLessThan(2e-5));
      } finally {
        rt.cpuEmulated = was;
      }
    });
  });
  it('rho = 0 is the base optimizer bit for bit, and NaN steps are skipped', async (ctx) => {
    await onGpu(ctx, async () => {
      for (const Base of [optim.SGD, optim.AdamW]) {
        const a = setup(22, 'float32');
        run('base', a, { fused: true }, 3, Base);
        const b = setup(22, 'float32');
        run('SAM', b, { rho: 0, fused: true }, 3, Base);
        expectBitEqual(await read(b), await read(a));
      }
      for (const fused of [true, false]) {
        const s = setup(23, 'float32');
        const opt = new optim.SAM(s.params, optim.SGD, { rho: 0.1, lr: 0.1, momentum: 0.9, fused });
        opt.step(closureOf(s));
        const before = await read(s);
        opt.step(() =>
          fg.tidy(() => {
            const l = lossOf(s).mul(NaN);
            l.backward();
            return l;
          }),
        );
        expectBitEqual(await read(s), before);
        expect((await opt.stats()).skipped).toBe(1);
      }
    });
  });
});
