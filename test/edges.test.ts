/**
 * Edges where flatgrad must agree with PyTorch 1.13: Hessian-vector products whose Hessian is
 * zero, ownership of the gradients a caller passes to grad()/backward(), 0-d and empty tensors
 * through the reductions, shape ops, linalg and creation, and avgPool2d's divisor rules
 * (ceilMode, countIncludePad, divisorOverride) on every backend.
 */
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { DType } from '../src/tensor/dtype.js';
import { useBackendMatrix } from './helpers/backend-matrix.js';
import { expectClose } from './helpers/webgpu.js';

type Tensor = fg.Tensor;

const { configs: CONFIGS, onConfig, gpu: gpuBackend, gpuReason } = useBackendMatrix();

const read = async (t: Tensor): Promise<number[]> => Array.from(await t.data());
const live = () => fg.memory().liveBuffers;

// ---- Hessian-vector products with a zero Hessian ----

describe('hvp where the Hessian is zero (torch.autograd.functional.hvp gives zeros)', () => {
  // Made inside each test: at collection time init() has not chosen the backend yet.
  let w: Tensor;
  let v: Tensor;
  beforeAll(() => {
    w = fg.tensor([1, 2, 3, 4]);
    v = fg.tensor([1, -2, 0.5, 3]);
  });
  const x = () => fg.tensor([-1, 0.5, 2, -0.3], { requiresGrad: true });

  it('piecewise linear: sum(relu(p) * w)', () => {
    const [hv] = fg.hvp((p) => fg.sum(fg.mul(fg.relu(p), w)), [x()], [v]);
    expect(hv.shape).toEqual([4]);
    expect(Array.from(hv.dataSync())).toEqual([0, 0, 0, 0]);
  });

  it('linear, so the gradient does not depend on the parameters: sum(p * w)', () => {
    const [hv] = fg.hvp((p) => fg.sum(fg.mul(p, w)), [x()], [v]);
    expect(Array.from(hv.dataSync())).toEqual([0, 0, 0, 0]);
  });

  it('a loss that does not depend on the parameters at all', () => {
    const [hv] = fg.hvp(() => fg.sum(w), [x()], [v]);
    expect(Array.from(hv.dataSync())).toEqual([0, 0, 0, 0]);
  });

  it('one parameter with a zero Hessian block beside one with a nonzero block', () => {
    const b = fg.tensor([1, -2], { requiresGrad: true });
    const vb = fg.tensor([0.5, 2]);
    const [ha, hb] = fg.hvp((a, bb) => fg.add(fg.sum(fg.mul(fg.relu(a), w)), fg.sum(fg.pow(bb, 3))), [x(), b], [v, vb]);
    expect(Array.from(ha.dataSync())).toEqual([0, 0, 0, 0]);
    // d²/db² sum(b³) = diag(6b): H·v = 6 b v.
    expect(Array.from(hb.dataSync())).toEqual([3, -24]);
  });

  it("Hutchinson's trace of a piecewise-linear loss is 0 (it threw before)", async () => {
    const p = fg.tensor([[0.3, -1.2], [2, 0.5]], { requiresGrad: true });
    const y = fg.tensor([[1, 2], [3, 4]]);
    const trace = await fg.analysis.hessianTrace((q) => fg.sum(fg.mul(fg.relu(fg.matmul(q, y)), 0.5)), [p], 3);
    expect(trace.mean).toBe(0);
  });

  it('the zero Hessian of a float64 parameter keeps its dtype and backend', () => {
    const p = fg.tensor([1, 2], { dtype: 'float64', requiresGrad: true });
    const [hv] = fg.hvp((q) => fg.sum(fg.relu(q)), [p], [fg.tensor([1, 1], { dtype: 'float64' })]);
    expect(hv.dtype).toBe('float64');
    expect(hv.backend).toBe(p.backend);
  });
});

// ---- the caller's gradient tensors ----

describe('grad(gradOutputs) and backward(grad) never dispose or alias what the caller owns', () => {
  const r = (shape: number[]) => fg.randn(shape, { requiresGrad: true });
  const cases: { name: string; build: () => { inputs: Tensor[]; out: Tensor } }[] = [
    { name: 'add', build: () => { const [a, b] = [r([2, 3]), r([2, 3])]; return { inputs: [a, b], out: fg.add(a, b) }; } },
    { name: 'add with broadcasting', build: () => { const [a, b] = [r([2, 3]), r([3])]; return { inputs: [a, b], out: fg.add(a, b) }; } },
    { name: 'add beside a broadcast constant that needs no gradient', build: () => { const a = r([2, 3]); return { inputs: [a], out: fg.add(a, fg.randn([3])) }; } },
    { name: 'linear with bias', build: () => { const [x, w, b] = [r([4, 3]), r([2, 3]), r([2])]; return { inputs: [x, w, b], out: fg.linear(x, w, b) }; } },
    { name: 'conv2d with bias', build: () => { const [x, w, b] = [r([1, 2, 5, 5]), r([3, 2, 3, 3]), r([3])]; return { inputs: [x, w, b], out: fg.conv2d(x, w, b, { padding: 1 }) }; } },
    { name: 'layerNorm', build: () => { const [x, w, b] = [r([2, 4]), r([4]), r([4])]; return { inputs: [x, w, b], out: fg.layerNorm(x, [4], w, b) }; } },
    { name: 'logsumexp with keepdim', build: () => { const x = r([2, 3]); return { inputs: [x], out: fg.logsumexp(x, 1, true) }; } },
    { name: 'reshape (a view of the gradient)', build: () => { const x = r([2, 3]); return { inputs: [x], out: fg.reshape(x, [6]) }; } },
    { name: 'the leaf itself', build: () => { const x = r([3]); return { inputs: [x], out: x }; } },
    {
      name: 'one gradient reaching two leaves, one through a view',
      build: () => { const [a, b] = [r([2, 3]), r([6])]; return { inputs: [a, b], out: fg.add(fg.reshape(a, [6]), b) }; },
    },
  ];

  for (const c of cases) {
    it(c.name, () => {
      const { inputs, out } = c.build();
      const gradOut = fg.randn(out.shape.slice());
      const given = Array.from(gradOut.dataSync());
      const callerUnchanged = () => {
        expect(gradOut.isDisposed).toBe(false);
        expect(Array.from(gradOut.dataSync())).toEqual(given);
      };

      const before = live();
      const gs = fg.grad(out, inputs, { gradOutputs: [gradOut], retainGraph: true }) as Tensor[];
      callerUnchanged();
      for (const g of gs) expect(g.storageRef).not.toBe(gradOut.storageRef);
      const once = gs.map((g) => Array.from(g.dataSync()));
      fg.dispose(gs);
      expect(live(), 'no engine-made tensor outlives grad()').toBe(before);

      out.backward(gradOut, { retainGraph: true });
      callerUnchanged();
      expect(live(), 'backward adds one buffer per .grad, nothing else').toBe(before + inputs.length);
      // The second backward accumulates into each .grad in place: the caller's tensor, and the
      // other leaves' gradients, must not be what it writes into.
      out.backward(gradOut, { retainGraph: true });
      callerUnchanged();
      expect(live()).toBe(before + inputs.length);
      inputs.forEach((x, i) => expectClose(x.grad!.dataSync(), Float32Array.from(once[i], (v) => 2 * v), { atol: 1e-6, rtol: 1e-5 }, `${c.name} input ${i}`));
    });
  }

  it('the gradient implied for a scalar output is freed too', () => {
    const x = r([3, 4]);
    const loss = fg.sum(fg.mul(fg.tanh(x), x));
    loss.backward(undefined, { retainGraph: true });
    const before = live();
    loss.backward(undefined, { retainGraph: true });
    expect(live()).toBe(before);
    const gs = fg.grad(loss, [x]) as Tensor[];
    expect(live()).toBe(before + 1);
    fg.dispose(gs);
  });

  it('gradOutputs that do not match the outputs are refused by name', () => {
    const x = r([2, 3]);
    const y = fg.mul(x, 2);
    expect(() => fg.grad(y, [x], { gradOutputs: [] })).toThrow(/grad: 0 gradOutputs for 1 outputs/);
    expect(() => fg.grad(y, [x], { gradOutputs: [fg.ones([3, 2])] })).toThrow(/grad: gradOutputs\[0\] has shape \[3,2\] for an output of shape \[2,3\]/);
  });
});

// ---- 0-d and empty tensors ----

/*
 * Expected values are PyTorch 1.13's, from /usr/bin/python3 with `s = torch.tensor(2.5)` and
 * `E = torch.zeros(2, 0, 3)`; each case names the torch expression it mirrors. Errors are where
 * PyTorch raises too; ours name the op and the shape.
 */
type Expect = { shape: number[]; values: number[]; dtype?: DType } | { error: RegExp };
const s = () => fg.tensor(2.5);
const E = () => fg.zeros([2, 0, 3]);
const EDGE_CASES: [string, () => Tensor, Expect][] = [
  ['s.softmax(0)', () => fg.softmax(s(), 0), { shape: [], values: [1] }],
  ['s.softmax(-1)', () => fg.softmax(s(), -1), { shape: [], values: [1] }],
  ['s.log_softmax(0)', () => fg.logSoftmax(s(), 0), { shape: [], values: [0] }],
  ['s.softmax(1)', () => fg.softmax(s(), 1), { error: /softmax: dim 1 is out of range for a tensor of rank 0/ }],
  ['s.transpose(0, 0)', () => fg.transpose(s(), 0, 0), { shape: [], values: [2.5] }],
  ['s.transpose(-1, -1)', () => fg.transpose(s(), -1, -1), { shape: [], values: [2.5] }],
  ['s.transpose(0, -1)', () => fg.transpose(s(), 0, -1), { shape: [], values: [2.5] }],
  ['s.transpose(0, 1)', () => fg.transpose(s(), 0, 1), { error: /transpose: dim 1 is out of range for a tensor of rank 0/ }],
  ['s.mean(0)', () => fg.mean(s(), 0), { shape: [], values: [2.5] }],
  ['s.mean(-1, keepdim=True)', () => fg.mean(s(), -1, true), { shape: [], values: [2.5] }],
  ['s.var(0, correction=0)', () => fg.variance(s(), 0, { correction: 0 }), { shape: [], values: [0] }],
  ['s.var()', () => fg.variance(s()), { shape: [], values: [NaN] }],
  ['s.max(0)', () => fg.max(s(), 0), { shape: [], values: [2.5] }],
  ['s.argmax(0)', () => fg.argmax(s(), 0), { shape: [], values: [0], dtype: 'int32' }],
  ['E.max(0)', () => fg.max(E(), 0), { shape: [0, 3], values: [] }],
  ['E.max(2)', () => fg.max(E(), 2), { shape: [2, 0], values: [] }],
  ['E.max(2, keepdim=True)', () => fg.max(E(), 2, true), { shape: [2, 0, 1], values: [] }],
  ['E.min(0, keepdim=True)', () => fg.min(E(), 0, true), { shape: [1, 0, 3], values: [] }],
  ['E.amax((0, 2))', () => fg.max(E(), [0, 2]), { shape: [0], values: [] }],
  ['E.argmax(2)', () => fg.argmax(E(), 2), { shape: [2, 0], values: [], dtype: 'int32' }],
  ['E.argmin(0, keepdim=True)', () => fg.argmin(E(), 0, true), { shape: [1, 0, 3], values: [], dtype: 'int32' }],
  ['E.max(1)', () => fg.max(E(), 1), { error: /max: cannot reduce over dim 1 of size 0 in \[2,0,3\]/ }],
  ['E.min(-2, keepdim=True)', () => fg.min(E(), -2, true), { error: /min: cannot reduce over dim 1 of size 0 in \[2,0,3\]/ }],
  ['E.amax((0, 1))', () => fg.max(E(), [0, 1]), { error: /max: cannot reduce over dim 1 of size 0 in \[2,0,3\]/ }],
  ['E.max()', () => fg.max(E()), { error: /max: cannot reduce the empty tensor \[2,0,3\] over all dims/ }],
  ['E.argmax(1)', () => fg.argmax(E(), 1), { error: /argmax: cannot reduce over dim 1 of size 0 in \[2,0,3\]/ }],
  ['E.argmin()', () => fg.argmin(E()), { error: /argmin: cannot reduce the empty tensor \[2,0,3\] over all dims/ }],
  ['E.sum(1)', () => fg.sum(E(), 1), { shape: [2, 3], values: [0, 0, 0, 0, 0, 0] }],
  ['E.sum()', () => fg.sum(E()), { shape: [], values: [0] }],
  ['E.mean(1)', () => fg.mean(E(), 1), { shape: [2, 3], values: [NaN, NaN, NaN, NaN, NaN, NaN] }],
  ['E.mean()', () => fg.mean(E()), { shape: [], values: [NaN] }],
  ['E.logsumexp(1)', () => fg.logsumexp(E(), 1), { shape: [2, 3], values: Array(6).fill(-Infinity) }],
  ['E.logsumexp(1, keepdim=True)', () => fg.logsumexp(E(), 1, true), { shape: [2, 1, 3], values: Array(6).fill(-Infinity) }],
  ['E.logsumexp(2)', () => fg.logsumexp(E(), 2), { shape: [2, 0], values: [] }],
  ['torch.zeros(0).logsumexp(0)', () => fg.logsumexp(fg.zeros([0]), 0), { shape: [], values: [-Infinity] }],
  ['E.softmax(1)', () => fg.softmax(E(), 1), { shape: [2, 0, 3], values: [] }],
  ['torch.cat([torch.zeros(0), torch.ones(2, 3)])', () => fg.concat([fg.zeros([0]), fg.ones([2, 3])]), { shape: [2, 3], values: [1, 1, 1, 1, 1, 1] }],
  ['torch.cat([torch.zeros(0), torch.zeros(0)])', () => fg.concat([fg.zeros([0]), fg.zeros([0])]), { shape: [0], values: [] }],
  ['torch.cat([s, s])', () => fg.concat([s(), s()]), { error: /concat: tensor 0 is a 0-d tensor/ }],
  ['torch.stack([s, s])', () => fg.stack([s(), s()]), { shape: [2], values: [2.5, 2.5] }],
  ['s[0:1]', () => fg.slice(s(), 0, 0, 1), { error: /slice: the input is a 0-d tensor/ }],
  ['s.narrow(0, 0, 1)', () => fg.narrow(s(), 0, 0, 1), { error: /narrow: the input is a 0-d tensor/ }],
  ['F.linear(s, torch.ones(2, 1))', () => fg.linear(s(), fg.ones([2, 1])), { error: /linear: input must have at least one dim/ }],
  ['torch.mm(torch.zeros(2, 0), torch.zeros(0, 3))', () => fg.mm(fg.zeros([2, 0]), fg.zeros([0, 3])), { shape: [2, 3], values: [0, 0, 0, 0, 0, 0] }],
  ['torch.arange(5, 0)', () => fg.arange(5, 0), { error: /arange: step 1 points away from end 0 \(start 5\)/ }],
  ['torch.arange(0, 5, -1)', () => fg.arange(0, 5, -1), { error: /arange: step -1 points away from end 5 \(start 0\)/ }],
  ['torch.arange(5, 5)', () => fg.arange(5, 5), { shape: [0], values: [], dtype: 'int32' }],
  ['torch.arange(0, float("inf"))', () => fg.arange(0, Infinity), { error: /arange: start and end must be finite/ }],
  ['torch.eye(-1)', () => fg.eye(-1), { error: /eye: n and m must be non-negative integers, got -1 and -1/ }],
  ['torch.eye(0, 3)', () => fg.eye(0, 3), { shape: [0, 3], values: [] }],
];

describe.each(CONFIGS)('0-d and empty tensors as PyTorch: $name', (cfg) => {
  it.for(EDGE_CASES)('%s', async ([, run, want], ctx) => {
    await onConfig(cfg, (why) => ctx.skip(why), async () => {
      if ('error' in want) {
        expect(run).toThrow(want.error);
        return;
      }
      const t = run();
      expect(t.shape).toEqual(want.shape);
      expect(t.dtype).toBe(want.dtype ?? cfg.dtype);
      const got = await read(t);
      expect(got.length).toBe(want.values.length);
      got.forEach((g, i) => (Number.isNaN(want.values[i]) ? expect(g).toBeNaN() : expect(g).toBeCloseTo(want.values[i], 6)));
    });
  });
});

describe('gradients through 0-d and empty tensors', () => {
  it('softmax and logSoftmax of a 0-d tensor have the gradient 0 (PyTorch), and gradcheck', () => {
    for (const op of [fg.softmax, fg.logSoftmax]) {
      const x = fg.tensor(0.7, { dtype: 'float64', requiresGrad: true });
      const y = op(x, 0);
      expect(y.shape).toEqual([]);
      const [g] = fg.grad(y, [x]) as Tensor[];
      expect(g.shape).toEqual([]);
      expect(g.itemSync()).toBe(0);
      expect(fg.gradcheck((a) => op(a, -1), [x])).toBe(true);
    }
  });

  it('a reduction of an empty tensor over a non-empty dim back-propagates an empty gradient', () => {
    for (const op of [(x: Tensor) => fg.max(x, 2), (x: Tensor) => fg.min(x, 0, true), (x: Tensor) => fg.logsumexp(x, 1), (x: Tensor) => fg.mean(x, 2)]) {
      const x = fg.zeros([2, 0, 3], { requiresGrad: true });
      const y = op(x);
      const [g] = fg.grad(y, [x], { gradOutputs: [fg.onesLike(y)] }) as Tensor[];
      expect(g.shape).toEqual([2, 0, 3]);
    }
  });

  // Each op's gradient (of sum(y), seeded with ones) has the input's shape; for 0-d inputs, the
  // value is the number of outputs each input reached, as PyTorch gives.
  const SHAPE_GRADS: [string, number[], (x: Tensor) => Tensor, number[]][] = [
    ['reshape [2,0,3] -> [0,5]', [2, 0, 3], (x) => fg.reshape(x, [0, 5]), []],
    ['flatten', [2, 0, 3], (x) => fg.flatten(x), []],
    ['permute', [2, 0, 3], (x) => fg.permute(x, [2, 0, 1]), []],
    ['transpose', [2, 0, 3], (x) => fg.transpose(x, 0, 2), []],
    ['expand [1,0] -> [4,0]', [1, 0], (x) => fg.expand(x, [4, 0]), []],
    ['slice', [2, 0, 3], (x) => fg.slice(x, 2, 1, 2), []],
    ['narrow to length 0', [2, 3], (x) => fg.narrow(x, 1, 1, 0), [0, 0, 0, 0, 0, 0]],
    ['concat beside a non-empty tensor', [2, 0], (x) => fg.concat([x, fg.ones([2, 3])], 1), []],
    ['pad', [2, 0], (x) => fg.pad(x, [1, 1]), []],
    ['mm with inner size 0', [2, 0], (x) => fg.mm(x, fg.ones([0, 3])), []],
    ['var over a non-empty dim', [2, 0, 3], (x) => fg.variance(x, 0), []],
    ['0-d expand to [2,3]', [], (x) => fg.expand(x, [2, 3]), [6]],
    ['0-d unsqueeze', [], (x) => fg.unsqueeze(x, 0), [1]],
    ['0-d stack', [], (x) => fg.stack([x, x, x]), [3]],
    ['0-d pad with no pads', [], (x) => fg.pad(x, []), [1]],
    ['0-d transpose(0, -1)', [], (x) => fg.transpose(x, 0, -1), [1]],
    ['0-d sum over dim 0', [], (x) => fg.sum(x, 0), [1]],
  ];
  it.for(SHAPE_GRADS)('%s', ([, shape, op, want]) => {
    const x = fg.zeros(shape, { requiresGrad: true });
    const y = op(x);
    const [g] = fg.grad(y, [x], { gradOutputs: [fg.onesLike(y)] }) as Tensor[];
    expect(g.shape).toEqual(shape);
    expect(Array.from(g.dataSync())).toEqual(want);
  });

  it('transpose of a 0-d tensor passes its gradient through', () => {
    const x = fg.tensor(1.5, { requiresGrad: true });
    const [g] = fg.grad(fg.mul(fg.transpose(x, 0, -1), 3), [x]) as Tensor[];
    expect(g.itemSync()).toBe(3);
  });
});

// ---- avgPool2d as PyTorch has it ----

interface PoolCase {
  input: string;
  kernelSize: number | [number, number];
  stride: number | [number, number];
  padding: number | [number, number];
  ceilMode: boolean;
  countIncludePad: boolean;
  divisorOverride: number | null;
  outShape: number[];
  out: number[];
  gradX: number[];
}
// torch.nn.functional.avg_pool2d in float64, from scripts/gen-edges-fixtures.py (see its header).
const POOL = JSON.parse(readFileSync(new URL('./fixtures/edges/avgpool2d.json', import.meta.url), 'utf8')) as {
  inputs: Record<string, { shape: number[]; data: number[] }>;
  cases: PoolCase[];
};
/** The upstream gradient the generator used: r[j] = ((j * 7) % 11 - 5) / 4. */
const upstream = (n: number) => Array.from({ length: n }, (_, j) => (((j * 7) % 11) - 5) / 4);
const poolOpts = (c: PoolCase): fg.AvgPool2dOptions => ({
  stride: c.stride,
  padding: c.padding,
  ceilMode: c.ceilMode,
  countIncludePad: c.countIncludePad,
  divisorOverride: c.divisorOverride,
});
const poolName = (c: PoolCase) =>
  `${c.input} k=${JSON.stringify(c.kernelSize)} s=${JSON.stringify(c.stride)} p=${JSON.stringify(c.padding)} ceil=${c.ceilMode} countIncludePad=${c.countIncludePad} divisor=${c.divisorOverride}`;

describe('avgPool2d', () => {
  it("the issue's example: arange(25) as 5x5, k=2, ceilMode divides overhanging windows by their cut size", () => {
    const y = fg.avgPool2d(fg.arange(25, undefined, 1, { dtype: 'float32' }).reshape(1, 1, 5, 5), 2, { ceilMode: true });
    expect(Array.from(y.dataSync())).toEqual([3, 5, 6.5, 13, 15, 16.5, 20.5, 22.5, 24]);
  });

  it('the fixture covers every option combination against PyTorch', () => {
    const seen = new Set(POOL.cases.map((c) => `${c.ceilMode}/${c.countIncludePad}/${c.divisorOverride}`));
    expect(seen.size).toBe(8);
    // Ceil mode adds an overhanging window somewhere, so that the cut-window divisor is exercised.
    const pairOf = (v: number | [number, number]) => (typeof v === 'number' ? [v, v] : v);
    const overhangs = POOL.cases.filter((c) => {
      const [k, st, pd] = [pairOf(c.kernelSize), pairOf(c.stride), pairOf(c.padding)];
      const size = POOL.inputs[c.input].shape;
      return c.ceilMode && [0, 1].some((i) => c.outShape[2 + i] > Math.floor((size[2 + i] + 2 * pd[i] - k[i]) / st[i]) + 1);
    });
    expect(overhangs.length).toBeGreaterThan(4);
  });

  describe.each(CONFIGS)('matches PyTorch, value and input gradient: $name', (cfg) => {
    const tol = cfg.dtype === 'float64' ? { atol: 1e-12, rtol: 1e-12 } : { atol: 2e-6, rtol: 2e-6 };
    it.for(POOL.cases.map((c) => [poolName(c), c] as const))('%s', async ([, c], ctx) => {
      await onConfig(cfg, (why) => ctx.skip(why), async () => {
        const inp = POOL.inputs[c.input];
        const x = fg.tensor(inp.data, { shape: inp.shape, requiresGrad: true });
        const y = fg.avgPool2d(x, c.kernelSize, poolOpts(c));
        expect(y.shape).toEqual(c.outShape);
        const ArrayType = cfg.dtype === 'float64' ? Float64Array : Float32Array;
        expectClose(ArrayType.from(await read(y)), ArrayType.from(c.out), tol, 'avgPool2d');
        const r = fg.tensor(upstream(y.size), { shape: y.shape.slice() });
        const [gx] = fg.grad(fg.sum(fg.mul(y, r)), [x]) as Tensor[];
        expectClose(ArrayType.from(await read(gx)), ArrayType.from(c.gradX), tol, 'avgPool2d gradient');
      });
    });
  });

  it('gradcheck and gradgradcheck with ceilMode, countIncludePad false and divisorOverride (float64, cpu)', () => {
    const shape = [1, 2, 5, 4];
    const optsList: [number | [number, number], fg.AvgPool2dOptions][] = [
      [3, { stride: 2, padding: 1, ceilMode: true, countIncludePad: false }],
      [[2, 3], { stride: [2, 1], padding: 1, ceilMode: true }],
      [2, { stride: 2, padding: 1, ceilMode: true, divisorOverride: 3 }],
      [3, { stride: 3, padding: 1, ceilMode: true, countIncludePad: false, divisorOverride: -2 }],
    ];
    for (const [k, opts] of optsList) {
      const x = fg.randn(shape, { dtype: 'float64', requiresGrad: true });
      expect(fg.gradcheck((a) => fg.avgPool2d(a, k, opts), [x])).toBe(true);
      expect(fg.gradgradcheck((a) => fg.avgPool2d(a, k, opts), [x])).toBe(true);
    }
  });

  it('WebGPU kernels match the CPU reference on the divisor rules, random sizes', async (ctx) => {
    const gpu = gpuBackend();
    if (!gpu) {
      ctx.skip(`no WebGPU: ${gpuReason()}`);
      return;
    }
    const shapes: [number[], number | [number, number], fg.AvgPool2dOptions][] = [
      [[2, 3, 7, 9], 3, { stride: 2, padding: 1, ceilMode: true, countIncludePad: false }],
      [[1, 2, 8, 7], [3, 2], { stride: [2, 3], padding: [1, 0], ceilMode: true }],
      [[1, 1, 5, 5], 2, { ceilMode: true, divisorOverride: 7 }],
      [[3, 1, 6, 5], [2, 3], { stride: 1, padding: 1, countIncludePad: false }],
    ];
    /** avgPool2d of x and the gradient of sum(avgPool2d(x) * r) with respect to x. */
    const poolAndGrad = (x: Tensor, k: number | [number, number], opts: fg.AvgPool2dOptions, r: Tensor) => {
      const y = fg.avgPool2d(x, k, opts);
      const [g] = fg.grad(fg.sum(fg.mul(y, r)), [x]) as Tensor[];
      return [y, g];
    };
    for (const [shape, k, opts] of shapes) {
      const xCpu = fg.randn(shape, { requiresGrad: true });
      const rCpu = fg.randn(fg.avgPool2d(xCpu, k, opts).shape.slice());
      const [yCpu, gCpu] = poolAndGrad(xCpu, k, opts, rCpu);
      const xGpu = (await fg.toBackend(xCpu, gpu)).requiresGrad_();
      const [yGpu, gGpu] = poolAndGrad(xGpu, k, opts, await fg.toBackend(rCpu, gpu));
      expectClose(await yGpu.data(), yCpu.dataSync(), { atol: 1e-6, rtol: 1e-5 }, `avgPool2d ${JSON.stringify([shape, k, opts])}`);
      expectClose(await gGpu.data(), gCpu.dataSync(), { atol: 1e-6, rtol: 1e-5 }, `avgPool2d backward ${JSON.stringify([shape, k, opts])}`);
    }
  });

  it('refuses a zero divisorOverride, as PyTorch', () => {
    expect(() => fg.avgPool2d(fg.ones([1, 1, 4, 4]), 2, { divisorOverride: 0 })).toThrow(/avgPool2d: divisorOverride must be a nonzero integer, got 0/);
    expect(() => fg.avgPool2d(fg.ones([1, 1, 4, 4]), 2, { divisorOverride: 1.5 })).toThrow(/avgPool2d: divisorOverride must be a nonzero integer, got 1.5/);
  });

  it('nn.AvgPool2d passes the options through', () => {
    const x = fg.randn([1, 2, 5, 5]);
    const opts: fg.AvgPool2dOptions = { stride: 2, padding: 1, ceilMode: true, countIncludePad: false, divisorOverride: 2 };
    expect(Array.from(new fg.nn.AvgPool2d(3, opts).forward(x).dataSync())).toEqual(Array.from(fg.avgPool2d(x, 3, opts).dataSync()));
  });
});
