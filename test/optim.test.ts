/**
 * optim: SGD, Adam and AdamW against PyTorch trajectories, the flat arena (aligned views, zero
 * padding, gradients accumulated in place, grad None skipped), fused against unfused bit for bit,
 * param groups and option errors, state dict round trips, schedulers against PyTorch's values,
 * gradient clipping, and flat memory over many steps.
 */
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { FlatEngine } from '../src/optim/engine.js';

const { nn, optim } = fg;
const f64 = { dtype: 'float64' as const };

const P0 = [0.5, -1.25, 2.0, 0.0, -0.3];
const gradAt = (t: number) => P0.map((_, i) => Math.sin(1.3 * t + i) * (i + 1) * 0.7);

/** PyTorch 1.13 after 5 steps with the gradients above (scripts: see the test's history). */
const TORCH: Record<string, number[]> = {
  sgd_m_damp_wd: [0.335668907613752, -1.6412340575257027, 1.7913510507465744, 0.5475686865754538, 0.7503350447755055],
  sgd_nesterov: [0.4474388479694779, -1.3720817404649495, 1.9558656768715068, 0.18440621827149792, 0.020485215352927705],
  sgd_plain: [0.5129025760731658, -1.2721518467094217, 1.9253861902114882, -0.06320034252339575, -0.2610118773450977],
  adam_l2: [0.4705696900281337, -1.269848471656085, 1.9844344004550765, 0.005578970219242935, -0.2750906820159036],
  adamw: [0.48216371908358924, -1.263997726438861, 1.9812774626819922, 0.004728527600699412, -0.276961963586976],
  adamw_default: [0.49491541197979605, -1.2568169856470355, 1.9964395057384208, 0.0016733500778354686, -0.29257251794660655],
};

const MAKERS: Record<string, (ps: fg.Tensor[], fused: boolean) => fg.optim.Optimizer> = {
  sgd_m_damp_wd: (ps, fused) => new optim.SGD(ps, { lr: 0.1, momentum: 0.9, dampening: 0.1, weightDecay: 0.01, fused }),
  sgd_nesterov: (ps, fused) => new optim.SGD(ps, { lr: 0.05, momentum: 0.8, nesterov: true, weightDecay: 0.001, fused }),
  sgd_plain: (ps, fused) => new optim.SGD(ps, { lr: 0.2, fused }),
  adam_l2: (ps, fused) => new optim.Adam(ps, { lr: 0.01, weightDecay: 0.1, fused }),
  adamw: (ps, fused) => new optim.AdamW(ps, { lr: 0.01, betas: [0.8, 0.99], weightDecay: 0.1, fused }),
  adamw_default: (ps, fused) => new optim.AdamW(ps, { lr: 0.003, fused }),
};

describe('SGD, Adam and AdamW as torch.optim defines them', () => {
  for (const [name, make] of Object.entries(MAKERS)) {
    for (const fused of [true, false]) {
      it(`${name} ${fused ? 'fused' : 'unfused'}`, () => {
        const p = fg.tensor(P0, { ...f64, requiresGrad: true });
        const opt = make([p], fused);
        expect(opt.fused).toBe(fused);
        for (let t = 0; t < 5; t++) {
          p.grad = fg.tensor(gradAt(t), f64);
          opt.step();
        }
        Array.from(p.dataSync()).forEach((v, i) => expect(Math.abs(v - TORCH[name][i])).toBeLessThan(1e-13));
      });
    }
  }
});

/** Two parameter groups, a weight matrix and vectors of awkward sizes. */
function params(dtype: fg.DType, seed = 1): fg.Tensor[] {
  fg.manualSeed(seed);
  return [[7, 9], [7], [1], [65], [3, 3, 2]].map((s) => fg.randn(s, { dtype, requiresGrad: true }));
}
function setGrads(ps: fg.Tensor[], t: number): void {
  ps.forEach((p, k) => {
    const g = Float64Array.from({ length: p.size }, (_, i) => Math.sin(0.37 * i + 1.1 * k + 0.7 * t));
    if (p.grad) p.grad.backend.write(p.grad.storage, p.dtype === 'float32' ? Float32Array.from(g) : g);
    else p.grad = fg.tensor(g, { dtype: p.dtype, shape: p.shape.slice() }).keep();
  });
}
const groups = (ps: fg.Tensor[], o: Record<string, unknown>) => [
  { params: ps.slice(0, 2), ...o },
  { params: ps.slice(2), lr: 0.02, weightDecay: 0 },
];

describe('fused and unfused updates are bit-identical on the CPU', () => {
  const cases: [string, (ps: fg.Tensor[], fused: boolean) => fg.optim.Optimizer][] = [
    ['SGD', (ps, fused) => new optim.SGD(groups(ps, { momentum: 0.9, dampening: 0.2 }), { lr: 0.1, weightDecay: 0.01, fused })],
    ['SGD nesterov', (ps, fused) => new optim.SGD(groups(ps, { momentum: 0.9, nesterov: true }), { lr: 0.1, weightDecay: 0.01, momentum: 0.5, fused })],
    ['Adam', (ps, fused) => new optim.Adam(groups(ps, { betas: [0.8, 0.9] }), { lr: 0.01, weightDecay: 0.01, fused })],
    ['AdamW', (ps, fused) => new optim.AdamW(groups(ps, { eps: 1e-6 }), { lr: 0.01, fused })],
  ];
  for (const [name, make] of cases) {
    for (const dtype of ['float32', 'float64'] as const) {
      it(`${name} ${dtype}`, () => {
        const a = params(dtype);
        const b = params(dtype);
        const oa = make(a, true);
        const ob = make(b, false);
        for (let t = 0; t < 6; t++) {
          setGrads(a, t);
          setGrads(b, t);
          oa.step();
          ob.step();
        }
        a.forEach((p, k) => {
          const x = p.dataSync();
          const y = b[k].dataSync();
          x.forEach((v, i) => expect(v === y[i], `${k}[${i}]: ${v} vs ${y[i]}`).toBe(true));
        });
      });
    }
  }
});

describe('the flat arena', () => {
  it('puts every parameter at a 64-element aligned view of one storage, with zero padding', () => {
    const ps = params('float32');
    const vals = ps.map((p) => Array.from(p.dataSync()));
    const opt = new optim.SGD(ps, { lr: 0.1 });
    const eng = opt.engine as FlatEngine;
    expect(eng).toBeInstanceOf(FlatEngine);
    const L = eng.arena.layout;
    expect(L.params.map((i) => i.offset)).toEqual([0, 64, 128, 192, 320]);
    expect(L.numel).toBe(384);
    const arena = eng.arena.P as unknown as { data: Float32Array };
    ps.forEach((p, k) => {
      expect(Array.from(p.dataSync())).toEqual(vals[k]);
      expect((p.storage as unknown as { data: Float32Array }).data.buffer).toBe(arena.data.buffer);
    });
    setGrads(ps, 0);
    opt.step();
    const all = arena.data;
    L.params.forEach((info, k) => {
      const next = k + 1 < L.params.length ? L.params[k + 1].offset : L.numel;
      for (let i = info.offset + info.numel; i < next; i++) expect(all[i]).toBe(0);
    });
    expect(L.params.map((i) => i.flags & 1)).toEqual([1, 0, 0, 0, 1]);
  });
  it('backward accumulates into the flat gradient in place; zeroGrad keeps the views', () => {
    const lin = new nn.Linear(3, 2);
    const opt = new optim.SGD(lin.parameters(), { lr: 0.1 });
    const g = lin.weight.grad!;
    const gs = g.storage;
    fg.tidy(() => lin.forward(fg.ones([1, 3])).sum().backward());
    fg.tidy(() => lin.forward(fg.ones([1, 3])).sum().backward());
    expect(lin.weight.grad).toBe(g);
    expect(g.storage).toBe(gs);
    expect(Array.from(lin.bias!.grad!.dataSync())).toEqual([2, 2]);
    opt.zeroGrad();
    expect(lin.weight.grad).toBe(g);
    expect(Array.from(g.dataSync())).toEqual([0, 0, 0, 0, 0, 0]);
  });
  it('takes in replaced gradients, and skips parameters without one (as torch skips grad None)', () => {
    for (const fused of [true, false]) {
      const ps = params('float64');
      const before = ps.map((p) => Array.from(p.dataSync()));
      const opt = new optim.SGD(ps, { lr: 0.1, momentum: 0.9, weightDecay: 0.1, fused });
      opt.zeroGrad({ setToNone: true });
      ps[0].grad = fg.tensor(new Float64Array(63).fill(1), { dtype: 'float64', shape: [7, 9] });
      opt.step();
      expect(Array.from(ps[0].dataSync())).toEqual(before[0].map((v) => v - 0.1 * (1 + 0.1 * v)));
      for (let k = 1; k < ps.length; k++) expect(Array.from(ps[k].dataSync())).toEqual(before[k]);
    }
  });
  it("decay: 'weights' leaves biases and other vectors out of weight decay (both engines)", () => {
    for (const fused of [true, false]) {
      for (const Opt of [optim.SGD, optim.AdamW]) {
        const lin = new nn.Linear(3, 2, f64);
        const w0 = Array.from(lin.weight.dataSync());
        const b0 = Array.from(lin.bias!.dataSync());
        const opt = new Opt(lin.parameters(), { lr: 0.1, weightDecay: 0.5, decay: 'weights', fused });
        lin.weight.grad = fg.zeros([2, 3], f64);
        lin.bias!.grad = fg.zeros([2], f64);
        opt.step();
        expect(Array.from(lin.bias!.dataSync())).toEqual(b0);
        Array.from(lin.weight.dataSync()).forEach((v, i) => expect(v).toBeCloseTo(w0[i] * 0.95, 14));
      }
    }
    expect(() => new optim.SGD([fg.zeros([1], { requiresGrad: true })], { decay: 'some' as never })).toThrow(/decay/);
  });
  it('a frozen parameter (requiresGrad false) is never updated, as torch skips grad None', () => {
    for (const fused of [true, false]) {
      const lin = new nn.Linear(3, 2, f64);
      lin.bias!.requiresGrad = false;
      const b0 = Array.from(lin.bias!.dataSync());
      const opt = new optim.SGD(lin.parameters(), { lr: 0.1, momentum: 0.9, weightDecay: 0.1, fused });
      for (let i = 0; i < 2; i++) {
        opt.zeroGrad();
        fg.tidy(() => lin.forward(fg.ones([1, 3], f64)).sum().backward());
        opt.step();
      }
      expect(lin.bias!.grad).toBeNull();
      expect(Array.from(lin.bias!.dataSync())).toEqual(b0);
    }
  });
  it('Module.loadStateDict writes through into the arena', () => {
    const m = nn.models.mlp([3, 4, 2]);
    const opt = new optim.SGD(m.parameters(), { lr: 0.1 });
    const sd = Object.fromEntries(Object.entries(m.stateDict()).map(([k, t]) => [k, new Float32Array(t.size).fill(0.5)]));
    m.loadStateDict(sd);
    const arena = ((opt.engine as FlatEngine).arena.P as unknown as { data: Float32Array }).data;
    expect(Array.from(arena.subarray(0, 12))).toEqual(new Array(12).fill(0.5));
    expect(Array.from(m.parameters()[0].dataSync())).toEqual(new Array(12).fill(0.5));
  });
});

describe('param groups and options', () => {
  it('per-group options override the defaults', () => {
    const ps = params('float64');
    const opt = new optim.SGD(groups(ps, { momentum: 0.5 }), { lr: 0.1 });
    expect(opt.paramGroups[0]).toMatchObject({ lr: 0.1, momentum: 0.5 });
    expect(opt.paramGroups[1]).toMatchObject({ lr: 0.02, momentum: 0 });
  });
  it('unknown options are errors that name them', () => {
    const ps = params('float64');
    expect(() => new optim.SGD(ps, { lr: 0.1, momentun: 0.9 } as never)).toThrow(/"momentun"/);
    expect(() => new optim.AdamW([{ params: ps, beta: 0.9 }])).toThrow(/"beta"/);
    expect(() => new optim.SGD(ps, { lr: 0.1, rhoo: 0.1 } as never)).toThrow(/rhoo/);
  });
  it('invalid values are errors', () => {
    const ps = params('float64');
    expect(() => new optim.SGD(ps, { lr: -0.1 })).toThrow(/lr/);
    expect(() => new optim.SGD(ps, { lr: NaN })).toThrow(/lr/);
    expect(() => new optim.AdamW(ps, { betas: [0.9, 1] })).toThrow(/betas/);
    expect(() => new optim.SGD(ps, { nesterov: true })).toThrow(/nesterov/);
    expect(() => new optim.SGD([...ps, ps[0]])).toThrow(/more than one group/);
    const opt = new optim.SGD(ps, { lr: 0.1 });
    opt.paramGroups[0].lr = Infinity;
    setGrads(ps, 0);
    expect(() => opt.step()).toThrow(/lr/);
  });
});

describe('state dicts', () => {
  const makers: [string, (ps: fg.Tensor[], fused: boolean) => fg.optim.Optimizer][] = [
    ['SGD', (ps, fused) => new optim.SGD(ps, { lr: 0.1, momentum: 0.9, fused })],
    ['AdamW', (ps, fused) => new optim.AdamW(ps, { lr: 0.01, fused })],
    ['SAM+SGD', (ps, fused) => new optim.SAM(ps, optim.SGD, { lr: 0.1, momentum: 0.9, rho: 0.1, fused })],
  ];
  for (const [name, make] of makers) {
    for (const [fa, fb] of [
      [true, true],
      [false, false],
      [true, false],
      [false, true],
    ]) {
      it(`${name}: ${fa ? 'fused' : 'unfused'} -> ${fb ? 'fused' : 'unfused'} round trip continues identically`, () => {
        const a = params('float64');
        const oa = make(a, fa);
        const step = (o: fg.optim.Optimizer, ps: fg.Tensor[], t: number) => {
          if (o instanceof optim.SAM) {
            setGrads(ps, t);
            o.firstStep();
            setGrads(ps, t + 0.5);
            o.secondStep();
          } else {
            setGrads(ps, t);
            o.step();
          }
        };
        for (let t = 0; t < 3; t++) step(oa, a, t);
        const sd = oa.stateDict();
        expect(Object.keys(sd.state[0])).toContain(name === 'AdamW' ? 'exp_avg_sq' : 'momentum_buffer');
        const b = params('float64', 99);
        b.forEach((p, k) => p.backend.write(p.storage, a[k].dataSync()));
        const ob = make(b, fb);
        ob.loadStateDict(sd);
        for (let t = 3; t < 6; t++) {
          step(oa, a, t);
          step(ob, b, t);
        }
        a.forEach((p, k) => Array.from(p.dataSync()).forEach((v, i) => expect(Math.abs(v - b[k].dataSync()[i])).toBeLessThan(1e-14)));
      });
    }
  }
  it('group options come back too', () => {
    const ps = params('float64');
    const o = new optim.SGD(ps, { lr: 0.1 });
    const sd = o.stateDict();
    sd.param_groups[0].lr = 0.5;
    const o2 = new optim.SGD(params('float64'), { lr: 0.1 });
    o2.loadStateDict(sd);
    expect(o2.paramGroups[0].lr).toBe(0.5);
    expect(() => new optim.SGD(params('float64').slice(1), { lr: 0.1 }).loadStateDict(sd)).toThrow(/parameters/);
  });
});

describe('schedulers match torch.optim.lr_scheduler', () => {
  const lrs = (make: (o: fg.optim.Optimizer) => fg.optim.Scheduler, n: number, opt?: (ps: fg.Tensor[]) => fg.optim.Optimizer, key = 'lr') => {
    const p = fg.zeros([1], { requiresGrad: true });
    const o = opt ? opt([p]) : new optim.SGD([p], { lr: 0.1, momentum: 0.9 });
    const s = make(o);
    const out: number[] = [];
    const mom: number[] = [];
    for (let i = 0; i < n; i++) {
      out.push(o.paramGroups[0][key] as number);
      mom.push((o.paramGroups[0].momentum as number) ?? (o.paramGroups[0].betas as number[])[0]);
      s.step();
    }
    return { out, mom };
  };
  const close = (a: number[], b: number[]) => a.forEach((v, i) => expect(v).toBeCloseTo(b[i], 12));
  it('StepLR', () => close(lrs((o) => new optim.StepLR(o, { stepSize: 3, gamma: 0.5 }), 8).out, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]));
  it('CosineAnnealingLR', () =>
    close(lrs((o) => new optim.CosineAnnealingLR(o, { tMax: 5, etaMin: 0.01 }), 6).out, [0.1, 0.09140576474687263, 0.06890576474687263, 0.04109423525312736, 0.018594235253127367, 0.01]));
  it('LinearWarmup (torch LinearLR)', () =>
    close(lrs((o) => new optim.LinearWarmup(o, { warmupSteps: 4, startFactor: 0.25 }), 6).out, [0.025, 0.04375, 0.0625, 0.08125, 0.1, 0.1]));
  it('OneCycleLR (cos, with momentum)', () => {
    const r = lrs((o) => new optim.OneCycleLR(o, { maxLr: 1, totalSteps: 10 }), 10);
    close(r.out, [0.04, 0.52, 1.0, 0.9504846320134737, 0.8117456539497631, 0.6112620219362893, 0.38874197806371075, 0.18825834605023697, 0.049519367986526286, 4e-6]);
    close(r.mom, [0.95, 0.9, 0.85, 0.854951556604879, 0.8688255099070633, 0.8888739533021842, 0.9111260466978157, 0.9311744900929366, 0.945048443395121, 0.95]);
  });
  it('OneCycleLR (three-phase, linear, Adam beta1)', () => {
    const r = lrs((o) => new optim.OneCycleLR(o, { maxLr: 1, totalSteps: 12, threePhase: true, annealStrategy: 'linear' }), 12, (ps) => new optim.Adam(ps, { lr: 0.1 }));
    close(r.out, [0.04, 0.4092307692307693, 0.7784615384615386, 0.8523076923076922, 0.48307692307692296, 0.1138461538461536, 0.03448331034482758, 0.027587448275862066, 0.020691586206896546, 0.01379572413793103, 0.0068998620689655135, 3.9999999999970615e-6]);
    close(r.mom, [0.95, 0.9115384615384615, 0.8730769230769231, 0.8653846153846154, 0.9038461538461539, 0.9423076923076923, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]);
  });
});

describe('clipGradNorm', () => {
  it('scales the gradients to the max norm and returns the total norm (per tensor and fused)', () => {
    const a = params('float64');
    const b = params('float64');
    const ob = new optim.SGD(b, { lr: 0.1 });
    setGrads(a, 0);
    setGrads(b, 0);
    const g = a.flatMap((p) => Array.from(p.grad!.dataSync()));
    const norm = Math.sqrt(g.reduce((s, v) => s + v * v, 0));
    const total = optim.clipGradNorm(a, 1.5);
    expect(total.itemSync()).toBeCloseTo(norm, 12);
    const g2 = a.flatMap((p) => Array.from(p.grad!.dataSync()));
    g2.forEach((v, i) => expect(v).toBeCloseTo((g[i] * 1.5) / (norm + 1e-6), 12));
    optim.clipGradNormFused(ob, 1.5);
    const g3 = b.flatMap((p) => Array.from(p.grad!.dataSync()));
    g3.forEach((v, i) => expect(v).toBeCloseTo(g2[i], 13));
  });
});

describe('memory', () => {
  for (const fused of [true, false]) {
    it(`live buffers stay flat over many SAM steps (${fused ? 'fused' : 'unfused'})`, () => {
      fg.manualSeed(1);
      const m = nn.models.mlp([4, 8, 3]);
      const x = fg.randn([6, 4]);
      const y = fg.tensor([0, 1, 2, 0, 1, 2], { dtype: 'int32' });
      const opt = new optim.SAM(m.parameters(), optim.SGD, { lr: 0.1, momentum: 0.9, fused });
      const stepOnce = () =>
        fg.tidy(() => {
          opt.step(() => {
            const l = nn.functional.crossEntropy(m.forward(x), y);
            l.backward();
            return l;
          });
        });
      stepOnce();
      stepOnce();
      const live = fg.memory().liveBuffers;
      for (let i = 0; i < 20; i++) stepOnce();
      expect(fg.memory().liveBuffers).toBe(live);
    });
  }
});
