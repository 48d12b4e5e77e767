/** Every differentiable op against float64 central differences on the CPU backend. */
import { beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';

type Gen = 'any' | 'pos' | 'away0' | 'unit';
interface Case {
  name: string;
  shapes: number[][];
  fn: (...x: fg.Tensor[]) => fg.Tensor;
  gen?: Gen[] | Gen;
  double?: boolean;
}

function input(shape: number[], gen: Gen): fg.Tensor {
  let t = fg.randn(shape, { dtype: 'float64' });
  if (gen === 'pos') t = t.abs().add(0.5);
  if (gen === 'away0') t = t.add(t.sign().mul(0.3)); // keeps kinks (relu, abs, max) out of the difference step
  if (gen === 'unit') t = fg.uniform(shape, -0.9, 0.9, { dtype: 'float64' });
  return t.detach().requiresGrad_();
}

const labels = (n: number, c: number) => fg.tensor(Int32Array.from({ length: n }, (_, i) => (i * 7 + 3) % c), { dtype: 'int32' });

const cases: Case[] = [
  // binary with broadcasting corners: size-1 dims, rank mismatch, scalars
  { name: 'add broadcast', shapes: [[2, 3, 4], [3, 1]], fn: (a, b) => a.add(b) },
  { name: 'sub broadcast', shapes: [[1, 4], [3, 1]], fn: (a, b) => a.sub(b) },
  { name: 'mul broadcast', shapes: [[2, 1, 3], [4, 1]], fn: (a, b) => a.mul(b) },
  { name: 'div', shapes: [[3, 4], [4]], fn: (a, b) => a.div(b), gen: ['any', 'pos'] },
  { name: 'pow tensor', shapes: [[3, 2], [3, 2]], fn: (a, b) => a.pow(b), gen: ['pos', 'any'] },
  { name: 'pow scalar', shapes: [[5]], fn: (a) => a.pow(3.5), gen: 'pos' },
  { name: 'maximum', shapes: [[3, 4], [4]], fn: (a, b) => fg.maximum(a, b) },
  { name: 'minimum', shapes: [[3, 4], [3, 1]], fn: (a, b) => fg.minimum(a, b) },
  { name: 'scalar ops', shapes: [[3, 2]], fn: (a) => a.mul(2.5).add(1).sub(0.25).div(3) },
  { name: 'rank-0 operand', shapes: [[], [2, 3]], fn: (a, b) => a.mul(b) },
  // unary
  { name: 'neg', shapes: [[4, 3]], fn: (a) => a.neg() },
  { name: 'exp', shapes: [[4, 3]], fn: (a) => a.exp() },
  { name: 'log', shapes: [[4, 3]], fn: (a) => a.log(), gen: 'pos' },
  { name: 'sqrt', shapes: [[4, 3]], fn: (a) => a.sqrt(), gen: 'pos' },
  { name: 'rsqrt', shapes: [[4, 3]], fn: (a) => a.rsqrt(), gen: 'pos' },
  { name: 'abs', shapes: [[4, 3]], fn: (a) => a.abs(), gen: 'away0' },
  { name: 'sign', shapes: [[4]], fn: (a) => a.sign().mul(a), gen: 'away0' },
  { name: 'square', shapes: [[4, 3]], fn: (a) => a.square() },
  { name: 'reciprocal', shapes: [[4, 3]], fn: (a) => a.reciprocal(), gen: 'pos' },
  { name: 'relu', shapes: [[4, 3]], fn: (a) => a.relu(), gen: 'away0', double: true },
  { name: 'gelu erf', shapes: [[4, 3]], fn: (a) => a.gelu(), double: true },
  { name: 'gelu tanh', shapes: [[4, 3]], fn: (a) => a.gelu('tanh'), double: true },
  { name: 'tanh', shapes: [[4, 3]], fn: (a) => a.tanh(), double: true },
  { name: 'sigmoid', shapes: [[4, 3]], fn: (a) => a.sigmoid(), double: true },
  { name: 'softplus', shapes: [[4, 3]], fn: (a) => a.softplus(), double: true },
  { name: 'sin cos', shapes: [[5]], fn: (a) => a.sin().add(a.cos()) },
  { name: 'clamp', shapes: [[4, 3]], fn: (a) => a.clamp(-0.5, 0.7), gen: 'away0' },
  { name: 'where', shapes: [[3, 4], [4]], fn: (a, b) => fg.where(a.gt(0), a, b) },
  // reductions
  { name: 'sum all', shapes: [[3, 4]], fn: (a) => a.sum() },
  { name: 'sum dims keepdim', shapes: [[2, 3, 4]], fn: (a) => a.sum([0, 2], true) },
  { name: 'sum scattered dims', shapes: [[2, 3, 4, 2]], fn: (a) => a.sum([1, 3]) },
  { name: 'mean', shapes: [[2, 3, 4]], fn: (a) => a.mean(1) },
  { name: 'max dim', shapes: [[3, 5]], fn: (a) => a.max(1) },
  { name: 'min all', shapes: [[3, 5]], fn: (a) => a.min() },
  { name: 'var', shapes: [[3, 5]], fn: (a) => a.var(1) },
  { name: 'var all biased', shapes: [[3, 5]], fn: (a) => a.var(null, { correction: 0 }) },
  { name: 'logsumexp', shapes: [[3, 5]], fn: (a) => a.logsumexp(1) },
  { name: 'softmax', shapes: [[3, 5]], fn: (a) => a.softmax(1), double: true },
  { name: 'softmax dim 0', shapes: [[3, 2, 2]], fn: (a) => a.softmax(0) },
  { name: 'logSoftmax', shapes: [[3, 5]], fn: (a) => a.logSoftmax(-1), double: true },
  { name: 'norm', shapes: [[7]], fn: (a) => a.norm() },
  // linear algebra
  { name: 'matmul 2-D non-square', shapes: [[3, 4], [4, 5]], fn: (a, b) => a.matmul(b), double: true },
  { name: 'matmul vector-matrix', shapes: [[4], [4, 3]], fn: (a, b) => a.matmul(b) },
  { name: 'matmul matrix-vector', shapes: [[3, 4], [4]], fn: (a, b) => a.matmul(b) },
  { name: 'matmul dot', shapes: [[4], [4]], fn: (a, b) => a.matmul(b) },
  { name: 'matmul batched broadcast', shapes: [[2, 1, 3, 4], [3, 4, 2]], fn: (a, b) => a.matmul(b) },
  { name: 'mm transposed flags', shapes: [[4, 3], [5, 4]], fn: (a, b) => fg.mm(a, b, true, true), double: true },
  { name: 'linear', shapes: [[2, 3, 4], [5, 4], [5]], fn: (x, w, b) => fg.linear(x, w, b) },
  // shape
  { name: 'reshape flatten', shapes: [[2, 3, 4]], fn: (a) => a.reshape(4, -1).flatten() },
  { name: 'squeeze unsqueeze', shapes: [[2, 1, 3]], fn: (a) => a.squeeze(1).unsqueeze(0).mul(a.sum()) },
  { name: 'transpose', shapes: [[2, 3, 4]], fn: (a) => a.transpose(0, 2) },
  { name: 'permute', shapes: [[2, 3, 4]], fn: (a) => a.permute(1, 2, 0) },
  { name: 'expand', shapes: [[3, 1]], fn: (a) => a.expand(2, 3, 4) },
  { name: 'broadcastTo', shapes: [[4]], fn: (a) => a.broadcastTo([3, 4]) },
  { name: 'slice step', shapes: [[7, 3]], fn: (a) => a.slice(0, 1, 6, 2) },
  { name: 'narrow', shapes: [[4, 5]], fn: (a) => a.narrow(1, 1, 3) },
  { name: 'concat', shapes: [[2, 3], [2, 1]], fn: (a, b) => fg.concat([a, b, a], 1) },
  { name: 'stack', shapes: [[2, 3], [2, 3]], fn: (a, b) => fg.stack([a, b], 1) },
  { name: 'pad', shapes: [[2, 3, 3]], fn: (a) => a.pad([1, 2, 0, 1], 0.5) },
  { name: 'gather', shapes: [[3, 4]], fn: (a) => a.gather(1, fg.tensor([[0, 3], [1, 1], [2, 0]], { dtype: 'int32' })) },
  { name: 'indexSelect', shapes: [[4, 3]], fn: (a) => a.indexSelect(0, fg.tensor([3, 0, 3], { dtype: 'int32' })) },
  // nn
  { name: 'crossEntropy', shapes: [[5, 4]], fn: (a) => fg.crossEntropy(a, labels(5, 4)), double: true },
  { name: 'crossEntropy smoothing sum', shapes: [[5, 4]], fn: (a) => fg.crossEntropy(a, labels(5, 4), { labelSmoothing: 0.2, reduction: 'sum' }), double: true },
  { name: 'crossEntropy none', shapes: [[3, 6]], fn: (a) => fg.crossEntropy(a, labels(3, 6), { reduction: 'none' }) },
  { name: 'conv2d', shapes: [[2, 3, 5, 4], [4, 3, 3, 2], [4]], fn: (x, w, b) => fg.conv2d(x, w, b, { stride: [2, 1], padding: 1 }), double: true },
  { name: 'conv2d dilation groups', shapes: [[1, 4, 6, 6], [6, 2, 2, 2]], fn: (x, w) => fg.conv2d(x, w, null, { dilation: 2, groups: 2, padding: [1, 0] }) },
  { name: 'maxPool2d', shapes: [[2, 2, 5, 5]], fn: (x) => fg.maxPool2d(x, 2, { stride: 2, padding: 1 }), double: true },
  { name: 'maxPool2d overlapping ceil', shapes: [[1, 1, 5, 5]], fn: (x) => fg.maxPool2d(x, 3, { stride: 2, ceilMode: true }) },
  { name: 'avgPool2d', shapes: [[2, 2, 5, 4]], fn: (x) => fg.avgPool2d(x, [2, 3], { stride: 1, padding: 1 }), double: true },
  { name: 'adaptiveAvgPool2d', shapes: [[2, 3, 4, 4]], fn: (x) => fg.adaptiveAvgPool2d(x, 1) },
  { name: 'layerNorm', shapes: [[3, 2, 4], [2, 4], [2, 4]], fn: (x, w, b) => fg.layerNorm(x, [2, 4], w, b), double: true },
  { name: 'dropout (seeded mask)', shapes: [[4, 5]], fn: (x) => (fg.manualSeed(3), fg.dropout(x, 0.3)) },
  { name: 'cast float64 -> float32 -> float64 chain', shapes: [[3]], fn: (x) => x.mul(2) },
];

beforeAll(async () => {
  await fg.init({ backend: 'cpu' });
  fg.manualSeed(1234);
});

describe('gradcheck (float64, central differences)', () => {
  for (const c of cases) {
    it(c.name, () => {
      const gens = Array.isArray(c.gen) ? c.gen : c.shapes.map(() => (c.gen as Gen) ?? 'any');
      const xs = c.shapes.map((s, i) => input(s, gens[i] ?? 'any'));
      expect(fg.gradcheck(c.fn, xs)).toBe(true);
      if (c.double) expect(fg.gradgradcheck(c.fn, xs, { atol: 1e-4, rtol: 1e-3 })).toBe(true);
    });
  }
});

describe('gradcheck catches a wrong rule', () => {
  it('fails on a function whose gradient is deliberately wrong', () => {
    const x = input([3], 'any');
    // detach() hides part of the dependence from autograd, so the analytical gradient is wrong.
    expect(() => fg.gradcheck((a) => a.mul(a.detach()), [x])).toThrow(/gradcheck: input 0/);
  });
});
