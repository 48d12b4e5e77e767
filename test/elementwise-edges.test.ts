/**
 * Elementwise semantics at the edges, against PyTorch 1.13 (test/fixtures/elementwise/torch-edges.json,
 * written by scripts/gen-elementwise-fixtures.py): the float64 closures of the op table (the CPU
 * oracle) value by value; NaN, ±Inf and ±0 through every op on every backend; pow's special cases;
 * the gradients at NaN, at kinks, at ties and at clamp's bounds; logsumexp of -inf rows; bool casts
 * of NaN; int32 wrap-around; the logical ops; and gradchecks of the ops added to the table.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { UNARY_OPS, type UnaryOp, type UnaryOpDef } from '../src/kernels/optable.js';
import { useBackendMatrix } from './helpers/backend-matrix.js';
import { decodeValue, type EncodedValue } from './helpers/torch-fixture.js';

type Tensor = fg.Tensor;
type Encoded = EncodedValue;
interface Fixture {
  torch: string;
  x: Encoded[];
  unary: Record<string, Encoded[]>;
  params: Record<string, number>;
  predicates: Record<string, boolean[]>;
  pow: { a: Encoded[]; b: Encoded[]; out: Encoded[] };
  grads: Record<string, { x: Encoded[]; grad: Encoded[] }>;
  binaryGrads: Record<string, { a: Encoded[]; b: Encoded[]; gradA: Encoded[]; gradB: Encoded[] }>;
  logsumexp: { x: Encoded[][]; out: Encoded[] };
  int32: Record<string, number[]>;
  logical: { a: Encoded[]; b: Encoded[]; and: boolean[]; or: boolean[]; xor: boolean[] };
}

const FIX = JSON.parse(readFileSync(new URL('./fixtures/elementwise/torch-edges.json', import.meta.url), 'utf8')) as Fixture;
const dec = decodeValue;
const decAll = (vs: Encoded[]) => vs.map(dec);
const X = decAll(FIX.x);

const { configs: CONFIGS, onConfig } = useBackendMatrix();

const read = async (t: Tensor): Promise<number[]> => Array.from(await t.data(), Number);
/** Values a float32 tensor holds exactly (the float64 fixture inputs that survive the rounding). */
const exactIn = (dtype: string, v: number) => dtype === 'float64' || Number.isNaN(v) || Math.fround(v) === v;

/**
 * Same NaN-ness, same infinities, and finite values within `rtol` (or `atol`), with a message
 * naming the case, the input and both values.
 */
function expectSame(what: string, inputs: string[], got: number[], want: number[], rtol: number, atol = 0): void {
  const bad: string[] = [];
  for (let i = 0; i < want.length; i++) {
    const g = got[i];
    const w = want[i];
    const ok = Number.isNaN(w) ? Number.isNaN(g) : !Number.isFinite(w) ? g === w : Number.isFinite(g) && Math.abs(g - w) <= atol + rtol * Math.abs(w);
    if (!ok) bad.push(`${what}(${inputs[i]}) = ${g}, PyTorch ${w}`);
  }
  expect(bad, bad.slice(0, 8).join('; ')).toEqual([]);
}

// ---- the CPU oracle itself ----

describe(`the float64 closures of the op table agree with PyTorch ${FIX.torch}`, () => {
  for (const [op, encoded] of Object.entries(FIX.unary)) {
    it(op, () => {
      const def: UnaryOpDef = UNARY_OPS[op as UnaryOp];
      const p0 = FIX.params[op] ?? 0;
      const want = decAll(encoded);
      const got = X.map((x) => def.cpu(x, p0, 0));
      // PyTorch's float64 GELUs compute 0.5 x (1 + erf) and 0.5 x (1 + tanh), which cancel on the
      // left (the closures do not): allow |x| 2^-52 there. PyTorch's softplus returns x past 20, and
      // its elu computes alpha (e^x - 1), which cancels near 0 (the closure calls expm1).
      const atol = X.map((x) =>
        op === 'geluErf' || op === 'geluTanh' ? Math.abs(x) * 2 ** -52 : op === 'softplus' && x > 20 ? Math.exp(-x) : op === 'elu' ? 1.5 * 2 ** -52 : 0,
      );
      const bad: string[] = [];
      X.forEach((x, i) => {
        const g = got[i];
        const w = want[i];
        const ok = Number.isNaN(w) ? Number.isNaN(g) : !Number.isFinite(w) ? g === w : Math.abs(g - w) <= atol[i] + 2 ** -44 * Math.abs(w) + 1e-320;
        if (!ok) bad.push(`${op}(${x}) = ${g}, PyTorch ${w}`);
      });
      expect(bad, bad.slice(0, 8).join('; ')).toEqual([]);
    });
  }

  it('pow follows C and PyTorch where Math.pow does not: pow(1, NaN) = 1, pow(-1, ±inf) = 1', () => {
    const a = decAll(FIX.pow.a);
    const b = decAll(FIX.pow.b);
    const want = decAll(FIX.pow.out);
    const got = a.map((av, i) => UNARY_OPS.powScalar.cpu(av, b[i]));
    expectSame('pow', a.map((av, i) => `${av}, ${b[i]}`), got, want, 2 ** -50);
  });
});

// ---- every op on every backend: NaN, infinities, zeros and values ----

describe.each(CONFIGS)('elementwise edges on $name', (cfg) => {
  it('every unary op of the fixture: same NaN, infinities and values as PyTorch', async ({ skip }) => {
    await onConfig(cfg, skip, async () => {
      const xs = X.filter((v) => exactIn(cfg.dtype, v));
      const idx = X.map((v, i) => (exactIn(cfg.dtype, v) ? i : -1)).filter((i) => i >= 0);
      const x = fg.tensor(xs);
      const call: Record<string, (t: Tensor) => Tensor> = {
        geluTanh: (t) => fg.gelu(t, 'tanh'),
        geluErf: (t) => fg.gelu(t),
        leakyRelu: (t) => fg.leakyRelu(t, FIX.params.leakyRelu),
        elu: (t) => fg.elu(t, FIX.params.elu),
      };
      for (const [op, encoded] of Object.entries(FIX.unary)) {
        const f = call[op] ?? ((t: Tensor) => (fg as unknown as Record<string, (t: Tensor) => Tensor>)[op](t));
        const got = await read(f(x));
        let want = idx.map((i) => dec(encoded[i]));
        if (cfg.dtype === 'float32') want = want.map(Math.fround);
        // float32: the sweep (test/unary-sweep.test.ts) holds the ulps; here the semantics, and values
        // to 1e-5 (PyTorch's float64 GELU tails cancel; below float32's smallest subnormal, 0).
        const rtol = cfg.dtype === 'float32' ? 1e-5 : 2 ** -40;
        const atol = op.startsWith('gelu') ? 1e-15 : op === 'elu' ? 1.5 * 2 ** -52 : cfg.dtype === 'float32' ? 1e-44 : 1e-300;
        expectSame(
          op,
          xs.map(String),
          got,
          want,
          rtol,
          atol,
        );
      }
    });
  });

  it('isnan, isinf, isfinite, logicalNot and the bool cast (NaN is true)', async ({ skip }) => {
    await onConfig(cfg, skip, async () => {
      const idx = X.map((v, i) => (exactIn(cfg.dtype, v) ? i : -1)).filter((i) => i >= 0);
      const x = fg.tensor(idx.map((i) => X[i]));
      const tests: [string, Tensor][] = [
        ['isnan', fg.isnan(x)],
        ['isinf', fg.isinf(x)],
        ['isfinite', fg.isfinite(x)],
        ['logicalNot', fg.logicalNot(x)],
        ['bool', x.bool()],
      ];
      for (const [name, t] of tests) {
        expect(t.dtype, name).toBe('bool');
        expectSame(name, idx.map((i) => String(X[i])), await read(t), idx.map((i) => Number(FIX.predicates[name][i])), 0);
      }
    });
  });

  it('pow with tensor and scalar exponents: every special base and exponent', async ({ skip }) => {
    await onConfig(cfg, skip, async () => {
      const a = decAll(FIX.pow.a);
      const b = decAll(FIX.pow.b);
      const keep = a.map((av, i) => exactIn(cfg.dtype, av) && exactIn(cfg.dtype, b[i]));
      const as = a.filter((_, i) => keep[i]);
      const bs = b.filter((_, i) => keep[i]);
      const want = decAll(FIX.pow.out).filter((_, i) => keep[i]).map((w) => (cfg.dtype === 'float32' ? Math.fround(w) : w));
      const names = as.map((av, i) => `${av}, ${bs[i]}`);
      const rtol = cfg.dtype === 'float32' ? 1e-5 : 1e-14;
      expectSame('pow', names, await read(fg.pow(fg.tensor(as), fg.tensor(bs))), want, rtol, 1e-44);
      const scalar: number[] = [];
      for (let i = 0; i < as.length; i++) scalar.push((await read(fg.pow(fg.tensor([as[i]]), bs[i])))[0]);
      expectSame('pow (scalar exponent)', names, scalar, want, rtol, 1e-44);
    });
  });

  it('gradients at NaN, at the kinks and at the bounds match PyTorch (clamp is 1 at its bounds)', async ({ skip }) => {
    await onConfig(cfg, skip, async () => {
      const fns: Record<string, (t: Tensor) => Tensor> = {
        abs: fg.abs,
        relu: fg.relu,
        sign: fg.sign,
        leakyRelu: (t) => fg.leakyRelu(t, 0.2),
        elu: (t) => fg.elu(t, 1.5),
        silu: fg.silu,
        clamp: (t) => fg.clamp(t, 0, 1),
        expm1: fg.expm1,
        log1p: fg.log1p,
        floor: fg.floor,
        ceil: fg.ceil,
        round: fg.round,
        powScalar0: (t) => fg.pow(t, 0),
        'powScalar2.5': (t) => fg.pow(t, 2.5),
      };
      for (const [name, f] of Object.entries(fns)) {
        const { x, grad } = FIX.grads[name];
        const t = fg.tensor(decAll(x), { requiresGrad: true });
        fg.sum(f(t)).backward();
        // elu at NaN: PyTorch's vectorized loop (any tensor of 8+ elements) gives NaN, its scalar
        // tail (this fixture's one-element calls) 1; flatgrad propagates NaN (diff suite elu/nan_inf).
        const want = decAll(grad).map((w, i) => (name === 'elu' && Number.isNaN(dec(x[i])) ? NaN : w));
        expectSame(`d ${name}`, decAll(x).map(String), await read(t.grad!), want, 1e-6);
      }
      for (const [name, f] of Object.entries({ maximum: fg.maximum, minimum: fg.minimum, pow: fg.pow })) {
        const g = FIX.binaryGrads[name];
        const a = fg.tensor(decAll(g.a), { requiresGrad: true });
        const b = fg.tensor(decAll(g.b), { requiresGrad: true });
        fg.sum(f(a, b)).backward();
        const names = decAll(g.a).map((av, i) => `${av}, ${dec(g.b[i])}`);
        expectSame(`d/da ${name}`, names, await read(a.grad!), decAll(g.gradA), 1e-6);
        expectSame(`d/db ${name}`, names, await read(b.grad!), decAll(g.gradB), 1e-6);
      }
    });
  });

  it('logsumexp: a row of -inf is -inf, +inf wins, NaN propagates', async ({ skip }) => {
    await onConfig(cfg, skip, async () => {
      const x = fg.tensor(FIX.logsumexp.x.map(decAll));
      expectSame('logsumexp', FIX.logsumexp.x.map((r) => r.join(' ')), await read(fg.logsumexp(x, 1)), decAll(FIX.logsumexp.out), 1e-6);
    });
  });

  it('softmax keeps tiny probabilities (subnormal ones included) and log-softmax its far tail', async ({ skip }) => {
    await onConfig(cfg, skip, async () => {
      const row = [0, -20, -87.5, -100, -103.5, -30];
      const lse = Math.log(row.reduce((acc, v) => acc + Math.exp(v), 0));
      const round = (v: number) => (cfg.dtype === 'float32' ? Math.fround(v) : v);
      const x = fg.tensor([row]);
      const names = row.map(String);
      expectSame('softmax', names, await read(fg.softmax(x, 1)), row.map((v) => round(Math.exp(v - lse))), 1e-5, 1e-45);
      // In float32 the sum of exponentials is 1 + 2e-9 = 1: log-softmax(0) is 0, as in PyTorch.
      expectSame('logSoftmax', names, await read(fg.logSoftmax(x, 1)), row.map((v) => round(v - lse)), 1e-6, cfg.dtype === 'float32' ? 2e-7 : 0);
    });
  });

  it('int32 add, sub, mul and square wrap around like int32', async ({ skip }) => {
    await onConfig(cfg, skip, async () => {
      const a = fg.tensor(Int32Array.from(FIX.int32.a), { dtype: 'int32' });
      const b = fg.tensor(Int32Array.from(FIX.int32.b), { dtype: 'int32' });
      const names = FIX.int32.a.map((v, i) => `${v}, ${FIX.int32.b[i]}`);
      for (const [name, t] of [['add', fg.add(a, b)], ['sub', fg.sub(a, b)], ['mul', fg.mul(a, b)], ['square', fg.square(a)]] as const) {
        expect(t.dtype).toBe('int32');
        expectSame(name, names, await read(t), FIX.int32[name], 0);
      }
    });
  });

  it('comparisons, maximum and minimum with NaN, infinities, signed zeros and subnormals follow IEEE (as PyTorch)', async ({ skip }) => {
    await onConfig(cfg, skip, async () => {
      const round = (v: number) => (cfg.dtype === 'float32' ? Math.fround(v) : v);
      const specials = [NaN, Infinity, -Infinity, 0, -0, 1e-40, -1e-40, 1, -2.5].map(round);
      const a = specials.flatMap((u) => specials.map(() => u));
      const b = specials.flatMap(() => specials);
      const ta = fg.tensor(a);
      const tb = fg.tensor(b);
      const ieee: [string, (x: Tensor, y: Tensor) => Tensor, (u: number, v: number) => number][] = [
        ['eq', fg.eq, (u, v) => Number(u === v)],
        ['ne', fg.ne, (u, v) => Number(u !== v)],
        ['lt', fg.lt, (u, v) => Number(u < v)],
        ['le', fg.le, (u, v) => Number(u <= v)],
        ['gt', fg.gt, (u, v) => Number(u > v)],
        ['ge', fg.ge, (u, v) => Number(u >= v)],
        ['maximum', fg.maximum, (u, v) => (u !== u || v !== v ? NaN : u > v ? u : v)],
        ['minimum', fg.minimum, (u, v) => (u !== u || v !== v ? NaN : u < v ? u : v)],
      ];
      // WGSL may flush subnormals in comparisons and min/max: there ±1e-40 may act as ±0.
      const flush = (v: number) => (cfg.name.startsWith('webgpu') && Math.abs(v) < 2 ** -126 ? 0 : v);
      const same = (g: number, w: number) => (Number.isNaN(w) ? Number.isNaN(g) : g === w);
      for (const [name, f, want] of ieee) {
        const got = await read(f(ta, tb));
        const bad = got
          .map((g, i) => (same(g, want(a[i], b[i])) || same(flush(g), want(flush(a[i]), flush(b[i]))) ? '' : `${name}(${a[i]}, ${b[i]}) = ${g}, IEEE ${want(a[i], b[i])}`))
          .filter((m) => m);
        expect(bad, bad.slice(0, 8).join('; ')).toEqual([]);
      }
    });
  });

  it('logicalAnd, logicalOr, logicalXor treat NaN as true', async ({ skip }) => {
    await onConfig(cfg, skip, async () => {
      const a = fg.tensor(decAll(FIX.logical.a));
      const b = fg.tensor(decAll(FIX.logical.b));
      const names = decAll(FIX.logical.a).map((v, i) => `${v}, ${dec(FIX.logical.b[i])}`);
      for (const [name, t] of [['and', fg.logicalAnd(a, b)], ['or', fg.logicalOr(a, b)], ['xor', a.logicalXor(b)]] as const) {
        expect(t.dtype).toBe('bool');
        expectSame(`logical ${name}`, names, await read(t), FIX.logical[name].map(Number), 0);
      }
    });
  });

  it('floor, ceil and round keep int32 tensors; the predicates of an int tensor are exact', async ({ skip }) => {
    await onConfig(cfg, skip, async () => {
      const i = fg.tensor(Int32Array.from([-3, 0, 7, 2147483647]), { dtype: 'int32' });
      for (const t of [fg.floor(i), fg.ceil(i), i.round()]) {
        expect(t.dtype).toBe('int32');
        expect(await read(t)).toEqual([-3, 0, 7, 2147483647]);
      }
      expect(await read(fg.isfinite(i))).toEqual([1, 1, 1, 1]);
      expect(await read(fg.isnan(i))).toEqual([0, 0, 0, 0]);
      expect(await read(fg.logicalNot(i))).toEqual([0, 1, 0, 0]);
    });
  });
});

// ---- gradchecks of the new ops (float64, cpu) ----

describe('gradcheck of the ops added to the table (float64, cpu)', () => {
  const input = (values: number[]) => fg.tensor(values, { dtype: 'float64', requiresGrad: true });
  // Away from the kinks (0 for leakyRelu/elu) and from the integers (floor/ceil/round), so that the
  // central differences see one smooth piece.
  const xs = [-2.3, -0.7, -0.2, 0.3, 0.9, 1.7, 3.1];
  const cases: [string, (t: Tensor) => Tensor, number[], boolean][] = [
    ['expm1', fg.expm1, xs, true],
    ['log1p', fg.log1p, [-0.7, -0.2, 0.3, 0.9, 1.7, 3.1, 40], true],
    ['leakyRelu', (t) => fg.leakyRelu(t, 0.1), xs, false],
    ['elu', (t) => t.elu(1.5), xs, true],
    ['silu', fg.silu, xs, true],
    ['floor', fg.floor, xs, false],
    ['ceil', fg.ceil, xs, false],
    ['round', fg.round, xs, false],
    ['pow with a zero exponent', (t) => fg.pow(t, 0), [0, 1.5, -2], false],
  ];
  for (const [name, f, values, second] of cases) {
    it(name, () => {
      expect(fg.gradcheck(f, [input(values)])).toBe(true);
      if (second) expect(fg.gradgradcheck(f, [input(values)], { atol: 1e-4, rtol: 1e-3 })).toBe(true);
    });
  }
  it('pow of a tensor exponent where the base is 0 and the exponent >= 0 (d/db = 0, not NaN)', () => {
    const a = fg.tensor([0, 0, 2], { dtype: 'float64', requiresGrad: true });
    const b = fg.tensor([0.5, 2, 1.5], { dtype: 'float64', requiresGrad: true });
    fg.sum(fg.pow(a, b)).backward();
    expect(Array.from(b.grad!.dataSync())).toEqual([0, 0, 2 ** 1.5 * Math.log(2)]);
  });
  it('maximum and minimum split the gradient on ties (gradcheck away from ties)', () => {
    expect(fg.gradcheck((a, b) => fg.maximum(a, b), [input([1, -2, 3]), input([0.5, -1, 4])])).toBe(true);
    expect(fg.gradcheck((a, b) => fg.minimum(a, b), [input([1, -2, 3]), input([0.5, -1, 4])])).toBe(true);
  });
});
