/** Tensor creation, dtypes, ops semantics, autograd behaviour and memory scopes on the CPU backend. */
import { beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { hashBits, uniformAt } from '../src/kernels/rng.js';
import { normalAt } from '../src/kernels/normal.js';

beforeAll(async () => {
  await fg.init({ backend: 'cpu' });
});

const arr = (t: fg.Tensor) => Array.from(t.dataSync());

describe('creation and dtypes', () => {
  it('infers shapes and dtypes', async () => {
    const t = fg.tensor([[1, 2, 3], [4, 5, 6]]);
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe('float32');
    expect(await t.array()).toEqual([[1, 2, 3], [4, 5, 6]]);
    expect(fg.tensor([true, false]).dtype).toBe('bool');
    expect(fg.tensor(new Int32Array([1, 2])).dtype).toBe('int32');
    expect(fg.tensor(new Float64Array([1, 2]), { shape: [2, 1] }).shape).toEqual([2, 1]);
    expect(fg.tensor(3).shape).toEqual([]);
    expect(await fg.tensor(3).item()).toBe(3);
  });
  it('creates constants and ranges like PyTorch', () => {
    expect(arr(fg.zeros([2, 2]))).toEqual([0, 0, 0, 0]);
    expect(arr(fg.ones([3]))).toEqual([1, 1, 1]);
    expect(arr(fg.full([2], 7))).toEqual([7, 7]);
    expect(arr(fg.arange(5))).toEqual([0, 1, 2, 3, 4]);
    expect(fg.arange(5).dtype).toBe('int32');
    expect(arr(fg.arange(1, 2, 0.25))).toEqual([1, 1.25, 1.5, 1.75]);
    expect(arr(fg.eye(2, 3))).toEqual([1, 0, 0, 0, 1, 0]);
    expect(fg.zerosLike(fg.ones([2, 3], { dtype: 'float64' })).dtype).toBe('float64');
    expect(arr(fg.onesLike(fg.zeros([2])))).toEqual([1, 1]);
  });
  it('promotes dtypes as PyTorch does', () => {
    const i = fg.tensor(new Int32Array([1, 2, 3]));
    expect(i.add(i).dtype).toBe('int32');
    expect(i.div(2).dtype).toBe('float32');
    expect(arr(i.div(2))).toEqual([0.5, 1, 1.5]);
    expect(i.mul(0.5).dtype).toBe('float32');
    expect(i.mul(2).dtype).toBe('int32');
    expect(i.exp().dtype).toBe('float32');
    expect(i.eq(2).dtype).toBe('bool');
    expect(arr(i.eq(2))).toEqual([0, 1, 0]);
    expect(fg.tensor([1], { dtype: 'float64' }).add(fg.tensor([1])).dtype).toBe('float64');
    expect(fg.tensor([true, true]).sum().dtype).toBe('int32');
    fg.setDefaultDtype('float64');
    expect(fg.tensor([1.5]).dtype).toBe('float64');
    fg.setDefaultDtype('float32');
  });
  it('reads back nested arrays, and synchronously only on host backends', async () => {
    const t = fg.tensor([[1, 2], [3, 4]]);
    expect(t.arraySync()).toEqual([[1, 2], [3, 4]]);
    expect(await fg.tensor([true, false]).array()).toEqual([true, false]);
    await expect(fg.tensor([1, 2]).item()).rejects.toThrow(/item: tensor of shape \[2\] has 2 elements/);
  });
});

describe('op semantics', () => {
  it('matmul follows torch.matmul for 1-D and batched operands', () => {
    const a = fg.tensor([[1, 2], [3, 4]]);
    const v = fg.tensor([1, 1]);
    expect(fg.matmul(v, v).shape).toEqual([]);
    expect(arr(fg.matmul(a, v))).toEqual([3, 7]);
    expect(arr(fg.matmul(v, a))).toEqual([4, 6]);
    const b = fg.ones([3, 2, 2]);
    expect(fg.matmul(a, b).shape).toEqual([3, 2, 2]);
    expect(arr(fg.mm(a, a, true, false))).toEqual([10, 14, 14, 20]);
    expect(arr(fg.mm(a, a, false, true))).toEqual([5, 11, 11, 25]);
  });
  it('reductions, arg reductions and softmax', () => {
    const x = fg.tensor([[1, 5, 3], [4, 2, 6]]);
    expect(arr(x.sum(0))).toEqual([5, 7, 9]);
    expect(x.sum(1, true).shape).toEqual([2, 1]);
    expect(arr(x.max(1))).toEqual([5, 6]);
    expect(arr(x.min())).toEqual([1]);
    expect(arr(x.argmax(1))).toEqual([1, 2]);
    expect(arr(x.argmin(0))).toEqual([0, 1, 0]);
    expect(arr(x.argmax())).toEqual([5]);
    expect(x.var(1).dataSync()[0]).toBeCloseTo(4, 5);
    const s = x.softmax(1);
    expect(arr(s.sum(1)).map((v) => Math.round(v * 1e6) / 1e6)).toEqual([1, 1]);
    expect(x.logsumexp(1).dataSync()[0]).toBeCloseTo(Math.log(Math.exp(1) + Math.exp(5) + Math.exp(3)), 5);
    expect(arr(fg.tensor([-Infinity, -Infinity]).logsumexp(0))).toEqual([-Infinity]);
  });
  it('shape ops', () => {
    const x = fg.arange(24).reshape(2, 3, 4);
    expect(x.transpose(0, 2).shape).toEqual([4, 3, 2]);
    expect(arr(x.permute(2, 0, 1).slice(0, 1, 2))).toEqual([1, 5, 9, 13, 17, 21]);
    expect(arr(fg.arange(6).reshape(2, 3).transpose(0, 1))).toEqual([0, 3, 1, 4, 2, 5]);
    expect(arr(fg.arange(5).slice(0, -3))).toEqual([2, 3, 4]);
    expect(arr(fg.arange(5).slice(0, 0, 5, 2))).toEqual([0, 2, 4]);
    expect(arr(fg.concat([fg.arange(2), fg.arange(3)]))).toEqual([0, 1, 0, 1, 2]);
    expect(fg.stack([fg.ones([2]), fg.ones([2])], 1).shape).toEqual([2, 2]);
    expect(arr(fg.tensor([[1, 2]]).pad([1, 0, 0, 1], 9))).toEqual([9, 1, 2, 9, 9, 9]);
    expect(arr(fg.tensor([[1], [2]]).expand(-1, 3))).toEqual([1, 1, 1, 2, 2, 2]);
    expect(fg.ones([2, 1, 3]).squeeze().shape).toEqual([2, 3]);
    expect(fg.ones([2, 3, 4]).flatten(1).shape).toEqual([2, 12]);
  });
  it('indexing, one-hot and cross-entropy', () => {
    const x = fg.tensor([[1, 2, 3], [4, 5, 6]]);
    expect(arr(x.gather(1, fg.tensor([[2], [0]], { dtype: 'int32' })))).toEqual([3, 4]);
    expect(arr(x.indexSelect(1, fg.tensor([2, 2], { dtype: 'int32' })))).toEqual([3, 3, 6, 6]);
    expect(arr(fg.oneHot(fg.tensor([1, 0], { dtype: 'int32' }), 3))).toEqual([0, 1, 0, 1, 0, 0]);
    const logits = fg.tensor([[2, 1, 0.1]], { dtype: 'float64' });
    const p = [2, 1, 0.1].map(Math.exp);
    const z = p.reduce((a, b) => a + b);
    const ce = fg.crossEntropy(logits, fg.tensor([0], { dtype: 'int32' }));
    expect(ce.itemSync()).toBeCloseTo(-Math.log(p[0] / z), 12);
    const ls = fg.crossEntropy(logits, fg.tensor([0], { dtype: 'int32' }), { labelSmoothing: 0.3 });
    const nll = p.map((v) => -Math.log(v / z));
    expect(ls.itemSync()).toBeCloseTo(0.7 * nll[0] + (0.3 / 3) * nll.reduce((a, b) => a + b), 12);
  });
  it('conv2d equals a direct convolution', () => {
    fg.manualSeed(5);
    const x = fg.randn([1, 2, 4, 4], { dtype: 'float64' });
    const w = fg.randn([3, 2, 3, 3], { dtype: 'float64' });
    const y = fg.conv2d(x, w, null, { padding: 1 });
    const X = x.dataSync();
    const W = w.dataSync();
    let direct = 0; // output (o=1, y=0, x=1)
    for (let c = 0; c < 2; c++) for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) {
      const yy = i - 1;
      const xx = 1 + j - 1;
      if (yy >= 0 && yy < 4 && xx >= 0 && xx < 4) direct += X[c * 16 + yy * 4 + xx] * W[((1 * 2 + c) * 3 + i) * 3 + j];
    }
    expect(y.shape).toEqual([1, 3, 4, 4]);
    expect(y.dataSync()[1 * 16 + 0 * 4 + 1]).toBeCloseTo(direct, 12);
  });
  it('pools like PyTorch', () => {
    const x = fg.arange(16, undefined, 1, { dtype: 'float32' }).reshape(1, 1, 4, 4);
    expect(arr(fg.maxPool2d(x, 2))).toEqual([5, 7, 13, 15]);
    expect(arr(fg.avgPool2d(x, 2))).toEqual([2.5, 4.5, 10.5, 12.5]);
    expect(fg.maxPool2d(fg.ones([1, 1, 5, 5]), 2, { ceilMode: true }).shape).toEqual([1, 1, 3, 3]);
    expect(arr(fg.adaptiveAvgPool2d(x, 1))).toEqual([7.5]);
  });
  it('layerNorm normalizes the trailing dims', () => {
    const y = fg.layerNorm(fg.tensor([[1, 2, 3, 4]], { dtype: 'float64' }), [4]);
    expect(y.mean().itemSync()).toBeCloseTo(0, 12);
    expect(y.square().mean().itemSync()).toBeCloseTo(1 / (1 + 1e-5 / 1.25), 6);
  });
  it('dropout keeps the expectation and is seeded', () => {
    fg.manualSeed(9);
    const a = fg.dropout(fg.ones([10000]), 0.25);
    fg.manualSeed(9);
    const b = fg.dropout(fg.ones([10000]), 0.25);
    expect(arr(a)).toEqual(arr(b));
    expect(a.mean().itemSync()).toBeCloseTo(1, 1);
    const kept = arr(a).filter((v) => v !== 0);
    expect(kept.every((v) => Math.abs(v - 4 / 3) < 1e-6)).toBe(true);
    expect(fg.dropout(fg.ones([3]), 0.5, false).dataSync()).toEqual(new Float32Array([1, 1, 1]));
  });
});

describe('counter-based randomness', () => {
  it('same seed, same numbers; element i depends only on the key and i', () => {
    fg.manualSeed(42);
    const a = arr(fg.rand([100]));
    const n = arr(fg.randn([50]));
    fg.manualSeed(42);
    expect(arr(fg.rand([100]))).toEqual(a);
    expect(arr(fg.randn([50]))).toEqual(n);
    fg.manualSeed(42);
    const [k0, k1] = fg.generator.nextKey();
    expect(a[7]).toBe(Math.fround(uniformAt(k0, k1, 7)));
    expect(hashBits(k0, k1, 7)).toBeGreaterThanOrEqual(0);
    const [m0, m1] = fg.generator.nextKey();
    expect(n[3]).toBe(Math.fround(normalAt(m0, m1, 3)));
  });
  it('has the right moments', () => {
    fg.manualSeed(1);
    const u = fg.rand([20000], { dtype: 'float64' });
    expect(u.mean().itemSync()).toBeCloseTo(0.5, 2);
    expect(u.var().itemSync()).toBeCloseTo(1 / 12, 2);
    const z = fg.randn([20000], { dtype: 'float64' });
    expect(z.mean().itemSync()).toBeCloseTo(0, 1);
    expect(z.var().itemSync()).toBeCloseTo(1, 1);
    const r = arr(fg.randint(3, 7, [1000]));
    expect(Math.min(...r)).toBe(3);
    expect(Math.max(...r)).toBe(6);
  });
});

describe('autograd behaviour', () => {
  it('accumulates into .grad across backward calls, and detach cuts the graph', () => {
    const x = fg.tensor([1, 2, 3], { requiresGrad: true });
    x.mul(2).sum().backward();
    x.mul(3).sum().backward();
    expect(arr(x.grad!)).toEqual([5, 5, 5]);
    expect(x.detach().requiresGrad).toBe(false);
    expect(fg.noGrad(() => x.mul(2)).requiresGrad).toBe(false);
  });
  it('a shared gradient is copied, so two leaves never alias one .grad', () => {
    const a = fg.tensor([1, 2], { requiresGrad: true });
    const b = fg.tensor([3, 4], { requiresGrad: true });
    a.add(b).sum().backward();
    a.add(b).sum().backward();
    expect(arr(a.grad!)).toEqual([2, 2]);
    expect(arr(b.grad!)).toEqual([2, 2]);
  });
  it('refuses a second backward through a freed graph, and allows it with retainGraph', () => {
    const x = fg.tensor([1, 2], { requiresGrad: true });
    const y = x.square().sum();
    y.backward(undefined, { retainGraph: true });
    y.backward();
    expect(arr(x.grad!)).toEqual([4, 8]);
    expect(() => y.backward()).toThrow(/already used by a backward pass/);
  });
  it('grad() returns gradients and supports higher order', () => {
    const x = fg.tensor([2], { dtype: 'float64', requiresGrad: true });
    const y = x.pow(3).sum();
    const [g] = fg.grad(y, x, { createGraph: true });
    expect(g!.itemSync()).toBe(12);
    const [h] = fg.grad(g!.sum(), x);
    expect(h!.itemSync()).toBe(12);
  });
  it('double backward through matmul, tanh, relu, logSoftmax and crossEntropy matches finite differences of the gradient', () => {
    fg.manualSeed(2);
    const w = fg.randn([4, 3], { dtype: 'float64' }).requiresGrad_();
    const x = fg.randn([5, 4], { dtype: 'float64' });
    const y = fg.tensor(Int32Array.from([0, 2, 1, 1, 0]));
    const f = (w_: fg.Tensor) => {
      const h = x.matmul(w_).tanh();
      return fg.crossEntropy(h.relu().add(h.logSoftmax(1)), y);
    };
    expect(fg.gradgradcheck(f, [w], { atol: 1e-5 })).toBe(true);
  });
});

describe('memory scopes', () => {
  it('tidy frees what it created except the result; keep exempts', () => {
    const before = fg.memory().liveBuffers;
    let kept!: fg.Tensor;
    const r = fg.tidy(() => {
      const a = fg.ones([10]);
      kept = a.mul(2).keep();
      return a.add(1);
    });
    expect(fg.memory().liveBuffers).toBe(before + 2);
    r.dispose();
    kept.dispose();
    expect(fg.memory().liveBuffers).toBe(before);
  });
  it('a training loop in tidy keeps the live buffer count flat', () => {
    fg.manualSeed(0);
    const w = fg.randn([8, 4]).mul(0.1).detach().requiresGrad_().keep();
    const x = fg.randn([16, 4]).keep();
    const y = fg.randint(0, 8, [16]).keep();
    const step = () =>
      fg.tidy(() => {
        const loss = fg.crossEntropy(fg.linear(x, w).relu(), y);
        loss.backward();
        w.backend.axpy(w.storage, w.grad!.storage, -0.1);
        w.grad!.dispose();
        w.grad = null;
      });
    step();
    const base = fg.memory();
    for (let i = 0; i < 200; i++) step();
    expect(fg.memory()).toEqual(base);
  });
  it('using a disposed tensor is a clear error', () => {
    const t = fg.ones([2]);
    t.dispose();
    expect(() => t.add(1)).toThrow(/was disposed and cannot be used/);
    const u = fg.ones([2]);
    {
      using v = u.add(1);
      expect(v.size).toBe(2);
    }
  });
  it('tidy rejects async functions', () => {
    expect(() => fg.tidy((async () => fg.ones([1])) as never)).toThrow(/tidy scopes are synchronous/);
  });
});
