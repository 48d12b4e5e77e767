/**
 * The tensor ops of issue 11 (cumsum, prod, std, any/all, sort/argsort/topk, max/min with indices,
 * flip, split/chunk, tril/triu, scatterAdd/indexAdd, maskedFill, einsum, bmm, outer, linspace):
 * values against PyTorch 1.13 at the edges (test/fixtures/ops-tensor.json, written by
 * scripts/gen-ops-tensor-fixtures.py), gradients against central differences, and the errors.
 * Values run on the cpu and wasm backends; the WebGPU kernels are in ops-tensor-webgpu.test.ts.
 */
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { DType } from '../src/tensor/dtype.js';
import { decodeValue } from './helpers/torch-fixture.js';

interface FixtureTensor {
  shape: number[];
  dtype: DType;
  data: (number | boolean | string)[];
}
interface Case {
  name: string;
  op: string;
  inputs: FixtureTensor[];
  args: Record<string, unknown>;
  out: Record<string, FixtureTensor>;
}
const fixture = JSON.parse(readFileSync(new URL('./fixtures/ops-tensor.json', import.meta.url), 'utf8')) as { cases: Case[] };

function load(t: FixtureTensor): fg.Tensor {
  return fg.tensor(t.data.map(decodeValue), { shape: t.shape, dtype: t.dtype });
}

const arr = (t: fg.Tensor) => Array.from(t.dataSync());

/** Runs one fixture case's op on the active backend; returns the outputs by the fixture's names. */
function run(c: Case, xs: fg.Tensor[]): Record<string, fg.Tensor> {
  const a = c.args as Record<string, never>;
  const vi = (r: fg.ValuesIndices) => ({ values: r.values, indices: r.indices });
  const parts = (ts: fg.Tensor[]) => Object.fromEntries(ts.map((t, i) => [`p${i}`, t]));
  switch (c.op) {
    case 'cumsum':
      return { y: fg.cumsum(xs[0], a.dim) };
    case 'prod':
      return { y: fg.prod(xs[0], a.dim, a.keepdim ?? false) };
    case 'prodGrad': {
      const x = xs[0].detach().requiresGrad_();
      const y = fg.prod(x, a.dim);
      y.mul(xs[1]).sum().backward();
      return { y, grad: x.grad! };
    }
    case 'std':
      return { y: fg.std(xs[0], a.dim, { correction: a.correction, keepdim: a.keepdim }) };
    case 'any':
      return { y: fg.any(xs[0], a.dim, a.keepdim ?? false) };
    case 'all':
      return { y: fg.all(xs[0], a.dim, a.keepdim ?? false) };
    case 'sort':
      return vi(fg.sort(xs[0], a.dim ?? -1, a.descending ?? false));
    case 'argsort':
      return { y: fg.argsort(xs[0], a.dim, a.descending) };
    case 'topk':
      return vi(fg.topk(xs[0], a.k, a.dim ?? -1, a.largest ?? true));
    case 'maxWithIndices':
      return vi(fg.maxWithIndices(xs[0], a.dim, a.keepdim ?? false));
    case 'minWithIndices':
      return vi(fg.minWithIndices(xs[0], a.dim, a.keepdim ?? false));
    case 'maxWithIndicesGrad': {
      const x = xs[0].detach().requiresGrad_();
      fg.maxWithIndices(x, a.dim).values.mul(xs[1]).sum().backward();
      return { grad: x.grad! };
    }
    case 'flip':
      return { y: fg.flip(xs[0], a.dims) };
    case 'split':
      return parts(fg.split(xs[0], a.size, a.dim ?? 0));
    case 'chunk':
      return parts(fg.chunk(xs[0], a.chunks, a.dim ?? 0));
    case 'tril':
      return { y: fg.tril(xs[0], a.diagonal) };
    case 'triu':
      return { y: fg.triu(xs[0], a.diagonal) };
    case 'scatterAdd':
      return { y: fg.scatterAdd(xs[0], a.dim, xs[1], xs[2]) };
    case 'indexAdd':
      return { y: fg.indexAdd(xs[0], a.dim, xs[1], xs[2], a.alpha ?? 1) };
    case 'maskedFill':
      return { y: fg.maskedFill(xs[0], xs[1], a.value === 'inf' ? Infinity : a.value === '-inf' ? -Infinity : a.value) };
    case 'einsum':
      return { y: fg.einsum(a.equation, ...xs) };
    case 'bmm':
      return { y: fg.bmm(xs[0], xs[1]) };
    case 'outer':
      return { y: fg.outer(xs[0], xs[1]) };
    case 'linspace':
      return { y: fg.linspace(a.start, a.end, a.steps, { dtype: a.dtype }) };
    default:
      throw new Error(`no runner for fixture op ${c.op}`);
  }
}

/** Exact for integers, bools and the ops that only move or select values; close for arithmetic. */
const EXACT_OPS = new Set(['sort', 'argsort', 'topk', 'maxWithIndices', 'minWithIndices', 'flip', 'split', 'chunk', 'tril', 'triu', 'maskedFill', 'any', 'all']);

function expectMatches(c: Case, name: string, got: fg.Tensor, want: FixtureTensor): void {
  const what = `${c.name}: ${name}`;
  expect(got.shape, `${what} shape`).toEqual(want.shape);
  expect(got.dtype, `${what} dtype`).toBe(want.dtype);
  const g = arr(got);
  const w = want.data.map(decodeValue);
  const exact = EXACT_OPS.has(c.op) || want.dtype === 'int32' || want.dtype === 'bool';
  w.forEach((e, i) => {
    const v = g[i];
    if (Number.isNaN(e)) expect(v, `${what}[${i}]`).toBeNaN();
    else if (exact || !Number.isFinite(e)) expect(Object.is(v, e) || v === e, `${what}[${i}]: ${v} vs torch ${e}`).toBe(true);
    else expect(Math.abs(v - e), `${what}[${i}]: ${v} vs torch ${e}`).toBeLessThanOrEqual((want.dtype === 'float32' ? 2e-6 : 1e-12) * Math.max(1, Math.abs(e)));
  });
}

for (const backend of ['cpu', 'wasm'] as const) {
  describe(`values vs PyTorch 1.13 (${backend})`, () => {
    beforeAll(async () => {
      await fg.init({ backend });
    });
    for (const c of fixture.cases) {
      it(c.name, () => {
        fg.tidy(() => {
          const outs = run(c, c.inputs.map(load));
          expect(Object.keys(outs).sort(), `${c.name}: outputs`).toEqual(Object.keys(c.out).sort());
          for (const [name, want] of Object.entries(c.out)) expectMatches(c, name, outs[name], want);
        });
      });
    }
  });
}

describe('gradients (float64 central differences, cpu)', () => {
  beforeAll(async () => {
    await fg.init({ backend: 'cpu' });
    fg.manualSeed(3);
  });
  const input = (shape: number[]) => fg.randn(shape, { dtype: 'float64' }).detach().requiresGrad_();
  /** Distinct values spaced well apart, so that no difference step reorders a sort. */
  const spaced = (shape: number[]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const perm = fg.argsort(fg.randn([n], { dtype: 'float64' })).dataSync();
    return fg.tensor(Float64Array.from(perm, (p) => p * 0.1 - n * 0.05), { shape }).requiresGrad_();
  };
  const cases: [string, number[][], (...x: fg.Tensor[]) => fg.Tensor, ((s: number[]) => fg.Tensor)?][] = [
    ['cumsum dim 1', [[3, 4]], (x) => fg.cumsum(x, 1)],
    ['cumsum dim -2', [[3, 2, 2]], (x) => x.cumsum(-2)],
    ['prod dim 1', [[3, 4]], (x) => fg.prod(x, 1)],
    ['prod all keepdim', [[2, 3]], (x) => fg.prod(x, null, true)],
    ['std', [[3, 4]], (x) => fg.std(x, 1)],
    ['sort values', [[3, 5]], (x) => fg.sort(x, 1, true).values, spaced],
    ['topk values dim 0', [[5, 3]], (x) => fg.topk(x, 2, 0).values, spaced],
    ['maxWithIndices values', [[3, 4]], (x) => fg.maxWithIndices(x, 1).values, spaced],
    ['minWithIndices values keepdim', [[3, 4]], (x) => fg.minWithIndices(x, 0, true).values, spaced],
    ['flip', [[2, 3, 4]], (x) => fg.flip(x, [0, 2])],
    ['split', [[5, 2]], (x) => fg.concat(fg.split(x, 2).map((p, i) => p.mul(i + 1)))],
    ['chunk', [[2, 7]], (x) => fg.chunk(x, 3, 1)[1]],
    ['tril', [[3, 4]], (x) => fg.tril(x, -1)],
    ['triu', [[2, 3, 3]], (x) => fg.triu(x, 1)],
    ['scatterAdd', [[3, 4], [2, 4]], (x, s) => fg.scatterAdd(x, 0, fg.tensor(new Int32Array([0, 2, 2, 1, 0, 0, 2, 1]), { shape: [2, 4] }), s)],
    ['indexAdd', [[3, 4], [3, 3]], (x, s) => fg.indexAdd(x, 1, fg.tensor(new Int32Array([3, 0, 3])), s, 2)],
    ['maskedFill', [[3, 4], []], (x, v) => fg.maskedFill(x, fg.tensor([true, false, false, true]), v)],
    ['einsum matmul', [[3, 4], [4, 2]], (a, b) => fg.einsum('ij,jk->ik', a, b)],
    ['einsum trace and diagonal', [[3, 3]], (a) => fg.einsum('ii->i', a).add(fg.einsum('ii', a))],
    ['einsum three operands', [[2, 3], [3, 4], [4, 2]], (a, b, c) => fg.einsum('ij,jk,kl->il', a, b, c)],
    ['einsum ellipsis broadcast', [[2, 1, 3, 2], [4, 2, 3]], (a, b) => fg.einsum('...ij,...jk->...ik', a, b)],
    ['einsum outer and sum', [[3], [4]], (a, b) => fg.einsum('i,j->j', a, b)],
    ['bmm', [[2, 3, 4], [2, 4, 2]], (a, b) => fg.bmm(a, b)],
    ['outer', [[3], [4]], (a, b) => fg.outer(a, b)],
  ];
  for (const [name, shapes, fn, make] of cases) {
    it(name, () => {
      fg.tidy(() => {
        const xs = shapes.map((s) => (make ?? input)(s));
        expect(fg.gradcheck(fn, xs)).toBe(true);
      });
    });
  }
  it('prod gradients where the input holds zeros (one and several per slice), first and second order', () => {
    fg.tidy(() => {
      const x = fg.tensor([[0, 1.5, -2, 0.5], [0, 3, 0, 1], [2, -1, 0.5, 1.5]], { dtype: 'float64' }).requiresGrad_();
      expect(fg.gradcheck((a) => fg.prod(a, 1), [x])).toBe(true);
      expect(fg.gradcheck((a) => fg.prod(a), [x])).toBe(true);
      // The gradient itself as the checked function: its Jacobian is the Hessian, which the
      // squared-gradient projection of gradgradcheck does not see at a zero.
      const gradOf = (f: (a: fg.Tensor) => fg.Tensor) => (a: fg.Tensor) => fg.grad(f(a).mul(fg.tensor([0.5, -1.5, 2, 0.75], { dtype: 'float64' }).slice(0, 0, f(a).size)).sum(), [a], { createGraph: true })[0]!;
      expect(fg.gradcheck(gradOf((a) => fg.prod(a, 1)), [x])).toBe(true);
      expect(fg.gradcheck(gradOf((a) => fg.prod(a, 0)), [x])).toBe(true);
      expect(fg.gradgradcheck((a) => fg.prod(a, 1), [x], { atol: 1e-4 })).toBe(true);
    });
  });
  it('double backward through prod, cumsum and einsum', () => {
    fg.tidy(() => {
      const x = input([2, 3]).abs().add(0.5).detach().requiresGrad_();
      expect(fg.gradgradcheck((a) => fg.prod(a, 1), [x], { atol: 1e-4 })).toBe(true);
      expect(fg.gradgradcheck((a) => fg.cumsum(a.square(), 1), [x], { atol: 1e-4 })).toBe(true);
      expect(fg.gradgradcheck((a) => fg.einsum('ij,kj->ik', a, a), [x], { atol: 1e-4 })).toBe(true);
    });
  });
});

describe('API and errors', () => {
  beforeAll(async () => {
    await fg.init({ backend: 'cpu' });
  });
  it('keeps max(x, dim) a values-only reduction and offers the methods', () => {
    fg.tidy(() => {
      const x = fg.tensor([[1, 5, 5], [7, 0, 7]]);
      expect(fg.max(x, 1).shape).toEqual([2]);
      expect(arr(x.maxWithIndices(1).indices)).toEqual([1, 0]);
      expect(arr(x.minWithIndices(0, true).indices)).toEqual([0, 1, 0]);
      expect(arr(x.sort(1, true).values)).toEqual([5, 5, 1, 7, 7, 0]);
      expect(arr(x.argsort(1))).toEqual([0, 1, 2, 1, 0, 2]);
      expect(arr(x.topk(1, 0).indices)).toEqual([1, 0, 1]);
      expect(arr(x.cumsum(1))).toEqual([1, 6, 11, 7, 7, 14]);
      expect(arr(x.prod(1))).toEqual([25, 0]);
      expect(arr(x.any(1))).toEqual([1, 1]);
      expect(arr(x.all(1))).toEqual([1, 0]);
      expect(arr(x.flip(1))).toEqual([5, 5, 1, 7, 0, 7]);
      expect(x.split(2, 1).map((p) => p.shape)).toEqual([[2, 2], [2, 1]]);
      expect(x.chunk(2).length).toBe(2);
      expect(arr(x.tril())).toEqual([1, 0, 0, 7, 0, 0]);
      expect(arr(x.triu(1))).toEqual([0, 5, 5, 0, 0, 7]);
      expect(arr(x.maskedFill(fg.tensor([true, false, true]), -1))).toEqual([-1, 5, -1, -1, 0, -1]);
      expect(x.std(1).shape).toEqual([2]);
      expect(arr(fg.zeros([3]).scatterAdd(0, fg.tensor(new Int32Array([2, 2])), fg.ones([2])))).toEqual([0, 0, 2]);
      expect(arr(fg.zeros([3]).indexAdd(0, fg.tensor(new Int32Array([1, 1])), fg.ones([2]), 3))).toEqual([0, 6, 0]);
      expect(arr(fg.ones([2]).outer(fg.ones([2])))).toEqual([1, 1, 1, 1]);
      expect(fg.ones([2, 2, 3]).bmm(fg.ones([2, 3, 1])).shape).toEqual([2, 2, 1]);
      // Both ends exact, whatever the rounding of the step.
      const ls = arr(fg.linspace(-3.3, 8.1, 100));
      expect([ls[0], ls[99]]).toEqual([Math.fround(-3.3), Math.fround(8.1)]);
    });
  });
  it('einsum takes a diagonal without touching what is off it', () => {
    fg.tidy(() => {
      const x = fg.tensor([[1, NaN], [Infinity, 2]]);
      expect(arr(fg.einsum('ii->i', x))).toEqual([1, 2]);
      expect(arr(fg.einsum('ii', x))).toEqual([3]);
    });
  });
  it('names the op and the values at fault', () => {
    fg.tidy(() => {
      const x = fg.ones([2, 3]);
      expect(() => fg.cumsum(x, 2)).toThrow(/cumsum: dim 2 is out of range for a tensor of rank 2/);
      expect(() => fg.topk(x, 4)).toThrow(/topk: k 4 is out of range \[0, 3\]/);
      expect(() => fg.topk(x, -1)).toThrow(/topk: k -1/);
      expect(() => fg.sort(x, -3)).toThrow(/argsort: dim -3 is out of range/);
      expect(() => fg.maxWithIndices(fg.ones([2, 0]), 1)).toThrow(/maxWithIndices: dim 1 of \[2,0\] is empty/);
      expect(() => fg.flip(x, [0, 0])).toThrow(/flip: dims \[0,0\] repeat an axis/);
      expect(() => fg.split(x, [1, 1], 1)).toThrow(/split: sections \[1,1\] must be non-negative integers adding up to 3/);
      expect(() => fg.split(x, 0, 1)).toThrow(/split: split size must be a positive integer, got 0/);
      expect(() => fg.chunk(x, 0)).toThrow(/chunk: chunks must be a positive integer, got 0/);
      expect(() => fg.tril(fg.ones([3]))).toThrow(/tril: needs a tensor of rank >= 2, got \[3\]/);
      expect(() => fg.triu(x, 0.5)).toThrow(/triu: diagonal must be an integer, got 0.5/);
      const idx = fg.tensor(new Int32Array([0, 3, 1]), { shape: [1, 3] });
      expect(() => fg.scatterAdd(x, 0, idx, fg.ones([1, 3]))).toThrow(/scatterAdd: index 3 at position 1 is out of range \[0, 2\)/);
      expect(() => fg.scatterAdd(x, 1, fg.tensor(new Int32Array([0, 1]), { shape: [1, 2] }), fg.ones([1, 1]))).toThrow(
        /scatterAdd: index \[1,2\] must match input \[2,3\] in every dim but 1/,
      );
      expect(() => fg.scatterAdd(x, 1, fg.tensor(new Int32Array([0, 1, 0, 0]), { shape: [2, 2] }), fg.ones([2, 1]))).toThrow(
        /scatterAdd: src \[2,1\] must be at least as large as index \[2,2\]/,
      );
      expect(() => fg.scatterAdd(x, 1, fg.tensor(new Int32Array([0, 1, 0, 0]), { shape: [2, 2] }), fg.ones([2, 2], { dtype: 'float64' }))).toThrow(
        /scatterAdd: src dtype float64 differs from the input's float32/,
      );
      expect(() => fg.indexAdd(x, 1, fg.tensor(new Int32Array([0, 1])), fg.ones([2, 3]))).toThrow(/indexAdd: source \[2,3\] must be \[2,2\]/);
      expect(() => fg.indexAdd(x, 0, fg.tensor([0, 1]), fg.ones([2, 3]))).toThrow(/indexAdd: index must be int32, got float32/);
      expect(() => fg.maskedFill(x, fg.ones([3]), 0)).toThrow(/maskedFill: mask must be bool, got float32/);
      expect(() => fg.maskedFill(x, fg.tensor([[true], [false], [true]]), 0)).toThrow(/maskedFill: shapes \[3,1\] and \[2,3\] cannot be broadcast/);
      expect(() => fg.einsum('ij,jk->ik', x, fg.ones([2, 2]))).toThrow(/einsum: 'ij,jk->ik': label 'j' has sizes 3 and 2/);
      expect(() => fg.einsum('ij->k', x)).toThrow(/einsum: 'ij->k': output label 'k' is not in any input/);
      expect(() => fg.einsum('ij->ii', x)).toThrow(/einsum: 'ij->ii': an output label repeats/);
      expect(() => fg.einsum('ijk', x)).toThrow(/einsum: 'ijk': term 'ijk' has 3 labels for operand 0 of shape \[2,3\]/);
      expect(() => fg.einsum('i,j', x)).toThrow(/einsum: 'i,j' has 2 operand terms but 1 operands were given/);
      expect(() => fg.einsum('i1', x)).toThrow(/einsum: 'i1': invalid character '1'/);
      expect(() => fg.einsum('...i...', x)).toThrow(/more than one '...'/);
      expect(() => fg.einsum('ii', x)).toThrow(/einsum: 'ii': label 'i' has sizes 2 and 3/);
      expect(() => fg.einsum('ii', fg.ones([2, 1]))).toThrow(/einsum: repeated label 'i' has sizes 2 and 1 in one operand \[2,1\]/);
      expect(() => fg.einsum('ij', fg.ones([2, 3], { dtype: 'int32' }))).toThrow(/einsum: operand 0 must be float32 or float64, got int32/);
      expect(() => fg.bmm(fg.ones([2, 3, 4]), fg.ones([3, 4, 2]))).toThrow(/bmm: needs \[b, n, m\] and \[b, m, p\], got \[2,3,4\] and \[3,4,2\]/);
      expect(() => fg.outer(x, fg.ones([2]))).toThrow(/outer: needs two 1-D tensors, got \[2,3\] and \[2\]/);
      expect(() => fg.linspace(0, 1, -1)).toThrow(/linspace: steps must be a non-negative integer, got -1/);
      expect(() => fg.std(fg.ones([2], { dtype: 'int32' }))).toThrow(/std: input must be float32 or float64, got int32/);
    });
  });
});
