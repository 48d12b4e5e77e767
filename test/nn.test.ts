/**
 * nn: Module containers and names, state dicts, layers with PyTorch layouts and default inits,
 * BatchNorm running statistics, MultiheadAttention and LayerNorm against PyTorch reference values
 * (test/fixtures/nn/reference.json from scripts/gen-nn-fixtures.py), the ready models, losses.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';

const { nn } = fg;
const here = dirname(fileURLToPath(import.meta.url));
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const REF: any = JSON.parse(readFileSync(join(here, 'fixtures/nn/reference.json'), 'utf8'));
const f64 = { dtype: 'float64' as const };

function flat(x: unknown): number[] {
  return Array.isArray(x) ? x.flatMap(flat) : [x as number];
}
function expectAll(t: fg.Tensor, want: unknown, tol = 1e-12): void {
  const a = Array.from(t.dataSync());
  const w = flat(want);
  expect(a.length).toBe(w.length);
  a.forEach((v, i) => expect(Math.abs(v - w[i]), `element ${i}: ${v} vs ${w[i]}`).toBeLessThanOrEqual(tol * (1 + Math.abs(w[i]))));
}

describe('Module', () => {
  it('names parameters with dotted paths, as PyTorch', () => {
    const m = nn.models.mlp([4, 5, 3]);
    expect(m.namedParameters().map(([n]) => n)).toEqual(['0.weight', '0.bias', '2.weight', '2.bias']);
    const r = nn.models.resnetSmall({ widths: [4, 8], inChannels: 1, numClasses: 3 });
    const names = r.namedParameters().map(([n]) => n);
    expect(names).toContain('0.0.weight');
    expect(names).toContain('2.shortcut.0.weight');
    expect(names).toContain('2.bn2.bias');
    expect(Object.keys(r.stateDict())).toContain('2.bn1.running_mean');
    expect(Object.keys(r.stateDict())).toContain('0.1.num_batches_tracked');
    const v = nn.models.vit({ depth: 2, dim: 8, heads: 2 });
    expect(v.namedParameters().map(([n]) => n).slice(0, 8)).toEqual([
      'cls_token',
      'pos_embed',
      'patch_embed.proj.weight',
      'patch_embed.proj.bias',
      'blocks.0.norm1.weight',
      'blocks.0.norm1.bias',
      'blocks.0.attn.in_proj_weight',
      'blocks.0.attn.in_proj_bias',
    ]);
    expect(v.namedParameters().map(([n]) => n)).toContain('blocks.1.attn.out_proj.weight');
  });
  it('the default ViT has about 150 parameter tensors', () => {
    const v = nn.models.vit({ dim: 16, heads: 2 });
    expect(v.parameters().length).toBe(152);
  });
  it('train() and eval() reach every descendant', () => {
    const r = nn.models.resnetSmall({ widths: [4], numClasses: 2 });
    r.eval();
    expect(r.modules().every((m) => !m.training)).toBe(true);
    r.train();
    expect(r.modules().every((m) => m.training)).toBe(true);
  });
  it('a shared parameter is listed once', () => {
    const l = new nn.Linear(3, 3);
    const seq = new nn.Sequential(l, new nn.ReLU(), l);
    expect(seq.parameters().length).toBe(2);
  });
  it('loadStateDict copies into the existing parameters (identity and storage kept)', () => {
    fg.manualSeed(1);
    const a = nn.models.mlp([3, 4, 2], f64);
    fg.manualSeed(2);
    const b = nn.models.mlp([3, 4, 2], f64);
    const w = b.parameters()[0];
    const storage = w.storage;
    b.loadStateDict(a.stateDict());
    expect(b.parameters()[0]).toBe(w);
    expect(w.storage).toBe(storage);
    expect(Array.from(w.dataSync())).toEqual(Array.from(a.parameters()[0].dataSync()));
    // from nested arrays and across dtypes
    const c = nn.models.mlp([3, 4, 2]);
    c.loadStateDict(Object.fromEntries(Object.entries(a.stateDict()).map(([k, t]) => [k, t.arraySync() as number[]])));
    expect(Array.from(c.parameters()[2].dataSync())).toEqual(Array.from(Float32Array.from(a.parameters()[2].dataSync())));
  });
  it('loadStateDict reports missing, unexpected and mis-shaped entries', () => {
    const m = nn.models.mlp([3, 4, 2]);
    const sd = { ...m.stateDict() };
    delete sd['2.bias'];
    expect(() => m.loadStateDict(sd)).toThrow(/missing keys: 2\.bias/);
    expect(() => m.loadStateDict({ ...m.stateDict(), extra: fg.zeros([1]) })).toThrow(/unexpected keys: extra/);
    expect(m.loadStateDict(sd, { strict: false }).missingKeys).toEqual(['2.bias']);
    expect(() => m.loadStateDict({ ...m.stateDict(), '0.weight': fg.zeros([3, 4]) })).toThrow(/shape/);
  });
  it('zeroGrad zeroes in place by default, clears with setToNone', () => {
    const l = new nn.Linear(2, 2);
    fg.tidy(() => l.forward(fg.ones([1, 2])).sum().backward());
    const g = l.weight.grad!;
    l.zeroGrad();
    expect(l.weight.grad).toBe(g);
    expect(Array.from(g.dataSync())).toEqual([0, 0, 0, 0]);
    l.zeroGrad({ setToNone: true });
    expect(l.weight.grad).toBeNull();
  });
  it('parameters survive tidy()', () => {
    let l!: fg.nn.Linear;
    fg.tidy(() => {
      l = new nn.Linear(2, 2);
    });
    expect(l.weight.isDisposed).toBe(false);
    expect(l.weight.requiresGrad).toBe(true);
    expect(l.weight).toBeInstanceOf(nn.Parameter);
  });
});

describe('layers', () => {
  it('Linear: layout [out, in], kaiming_uniform(a=sqrt(5)) and bias bounds, seeded', () => {
    fg.manualSeed(3);
    const l = new nn.Linear(16, 8, f64);
    expect(l.weight.shape).toEqual([8, 16]);
    expect(l.weight.dtype).toBe('float64');
    const w = Array.from(l.weight.dataSync());
    expect(Math.max(...w.map(Math.abs))).toBeLessThanOrEqual(0.25);
    expect(Math.max(...w.map(Math.abs))).toBeGreaterThan(0.2);
    expect(Math.max(...Array.from(l.bias!.dataSync()).map(Math.abs))).toBeLessThanOrEqual(0.25);
    fg.manualSeed(3);
    expect(Array.from(new nn.Linear(16, 8, f64).weight.dataSync())).toEqual(w);
    const y = fg.tidy(() => l.forward(fg.ones([2, 16], f64)));
    expect(y.shape).toEqual([2, 8]);
    expect(new nn.Linear(3, 2, { bias: false }).bias).toBeNull();
  });
  it('Conv2d: layout [out, in/groups, kh, kw], fan-in bounds, forward shape', () => {
    const c = new nn.Conv2d(4, 6, 3, { padding: 1, groups: 2 });
    expect(c.weight.shape).toEqual([6, 2, 3, 3]);
    const bound = 1 / Math.sqrt(2 * 9);
    expect(Math.max(...Array.from(c.weight.dataSync()).map(Math.abs))).toBeLessThanOrEqual(bound);
    expect(fg.tidy(() => c.forward(fg.ones([1, 4, 5, 5]))).shape).toEqual([1, 6, 5, 5]);
  });
  it('pooling, flatten, activations and dropout', () => {
    const x = fg.tensor([[[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]]]);
    expect(Array.from(new nn.MaxPool2d(2).forward(x).dataSync())).toEqual([6, 8, 14, 16]);
    expect(Array.from(new nn.AvgPool2d(2).forward(x).dataSync())).toEqual([3.5, 5.5, 11.5, 13.5]);
    expect(Array.from(new nn.AdaptiveAvgPool2d(1).forward(x).dataSync())).toEqual([8.5]);
    expect(new nn.Flatten().forward(x).shape).toEqual([1, 16]);
    expect(Array.from(new nn.ReLU().forward(fg.tensor([-1, 2])).dataSync())).toEqual([0, 2]);
    expect(new nn.GELU().forward(fg.tensor([1], f64)).itemSync()).toBeCloseTo(0.8413447460685429, 12);
    expect(new nn.Tanh().forward(fg.tensor([0.5], f64)).itemSync()).toBeCloseTo(Math.tanh(0.5), 14);
    const d = new nn.Dropout(0.5);
    const ones = fg.ones([1000]);
    const y = Array.from(d.forward(ones).dataSync());
    expect(y.every((v) => v === 0 || v === 2)).toBe(true);
    expect(y.filter((v) => v === 0).length).toBeGreaterThan(400);
    d.eval();
    expect(d.forward(ones)).toBe(ones);
  });
  it('LayerNorm matches PyTorch', () => {
    const R = REF.layernorm;
    const ln = new nn.LayerNorm(5, f64);
    ln.loadStateDict({ weight: R.weight, bias: R.bias });
    expectAll(ln.forward(fg.tensor(R.x, f64)), R.y);
  });
});

describe('BatchNorm', () => {
  it('BatchNorm1d: training output, running statistics (momentum) and eval output match PyTorch', () => {
    const R = REF.bn1d;
    const bn = new nn.BatchNorm1d(4, { momentum: R.momentum, dtype: 'float64' });
    bn.loadStateDict({ weight: R.weight, bias: R.bias, running_mean: [0, 0, 0, 0], running_var: [1, 1, 1, 1], num_batches_tracked: 0 });
    expectAll(bn.forward(fg.tensor(R.x1, f64)), R.y1);
    bn.forward(fg.tensor(R.x2, f64));
    expectAll(bn.runningMean!, R.running_mean);
    expectAll(bn.runningVar!, R.running_var);
    expect(bn.numBatchesTracked!.itemSync()).toBe(2);
    bn.eval();
    expectAll(bn.forward(fg.tensor(R.x3, f64)), R.y3_eval);
  });
  it('BatchNorm2d with a cumulative average (momentum null) matches PyTorch', () => {
    const R = REF.bn2d;
    const bn = new nn.BatchNorm2d(3, { momentum: null, dtype: 'float64' });
    expectAll(bn.forward(fg.tensor(R.xa, f64)), R.ya);
    bn.forward(fg.tensor(R.xb, f64));
    expectAll(bn.runningMean!, R.running_mean);
    expectAll(bn.runningVar!, R.running_var);
  });
  it('running statistics stay put while frozen, and the buffers keep their identity', () => {
    const bn = new nn.BatchNorm1d(2, f64);
    const rm = bn.runningMean!;
    nn.withFrozenRunningStats(() => bn.forward(fg.tensor([[1, 2], [3, 5]], f64)));
    expect(Array.from(rm.dataSync())).toEqual([0, 0]);
    bn.forward(fg.tensor([[1, 2], [3, 5]], f64));
    expect(bn.runningMean).toBe(rm);
    expectAll(rm, [0.2, 0.35]);
  });
  it('gradients flow through the batch statistics', () => {
    const bn = new nn.BatchNorm1d(3, f64);
    const x = fg.tensor([[1, 2, 3], [4, 0, 1], [2, 2, 2]], { dtype: 'float64', requiresGrad: true });
    const r = fg.gradcheck((xx: fg.Tensor) => nn.withFrozenRunningStats(() => bn.forward(xx).square().sum()), [x]);
    expect(r).toBeTruthy();
  });
});

describe('MultiheadAttention', () => {
  it('sequence-first, and batch-first with a bool mask, match PyTorch (output and averaged weights)', () => {
    const R = REF.mha;
    const m = new nn.MultiheadAttention(R.E, R.H, f64);
    m.loadStateDict(R.state);
    const [o, w] = m.forward(fg.tensor(R.q, f64), fg.tensor(R.k, f64), fg.tensor(R.v, f64));
    expectAll(o, R.out, 1e-10);
    expectAll(w!, R.weights, 1e-10);
    const bf = new nn.MultiheadAttention(R.E, R.H, { dtype: 'float64', batchFirst: true });
    bf.loadStateDict(R.state);
    const xs = fg.tensor(R.xs, f64);
    const [o2, w2] = bf.forward(xs, xs, xs, { attnMask: fg.tensor(R.mask) });
    expectAll(o2, R.out_bf, 1e-10);
    expectAll(w2!, R.weights_bf, 1e-10);
  });
  it('is differentiable (gradcheck on a tiny instance)', () => {
    fg.manualSeed(4);
    const m = new nn.MultiheadAttention(4, 2, { dtype: 'float64', batchFirst: true });
    const x = fg.randn([1, 3, 4], { dtype: 'float64', requiresGrad: true });
    expect(fg.gradcheck((xx: fg.Tensor) => m.forward(xx, xx, xx)[0].square().sum(), [x])).toBeTruthy();
  });
});

describe('ready models', () => {
  it('mlp, resnetSmall and vit run forward and backward', () => {
    fg.manualSeed(5);
    for (const [m, x] of [
      [nn.models.mlp([12, 8, 3]), fg.randn([2, 12])],
      [nn.models.resnetSmall({ widths: [4, 8], numClasses: 3 }), fg.randn([2, 1, 8, 8])],
      [nn.models.vit({ imageSize: 8, patchSize: 4, dim: 8, depth: 2, heads: 2, numClasses: 3 }), fg.randn([2, 1, 8, 8])],
    ] as const) {
      fg.tidy(() => {
        const y = m.forward(x);
        expect(y.shape).toEqual([2, 3]);
        nn.functional.crossEntropy(y, fg.tensor([0, 2], { dtype: 'int32' })).backward();
      });
      expect(m.parameters().every((p) => p.grad !== null)).toBe(true);
    }
  });
  it('dtype float64 models on the CPU', () => {
    const v = nn.models.vit({ imageSize: 4, patchSize: 2, dim: 4, depth: 1, heads: 1, dtype: 'float64' });
    expect(v.parameters().every((p) => p.dtype === 'float64')).toBe(true);
    expect(v.forward(fg.randn([1, 1, 4, 4], f64)).dtype).toBe('float64');
  });
});

describe('losses', () => {
  it('crossEntropy (mean, label smoothing, none) matches PyTorch', () => {
    const R = REF.ce;
    const logits = fg.tensor(R.logits, f64);
    const labels = fg.tensor(R.labels, { dtype: 'int32' });
    expect(nn.functional.crossEntropy(logits, labels).itemSync()).toBeCloseTo(R.mean, 13);
    expect(nn.functional.crossEntropy(logits, labels, { labelSmoothing: 0.2 }).itemSync()).toBeCloseTo(R.ls, 13);
    expectAll(nn.functional.crossEntropy(logits, labels, { labelSmoothing: 0.1, reduction: 'none' }), R.none);
  });
  it('mseLoss matches PyTorch', () => {
    const R = REF.mse;
    const [a, b] = [fg.tensor(R.a, f64), fg.tensor(R.b, f64)];
    expect(nn.functional.mseLoss(a, b).itemSync()).toBeCloseTo(R.mean, 14);
    expect(nn.functional.mseLoss(a, b, { reduction: 'sum' }).itemSync()).toBeCloseTo(R.sum, 13);
    expect(() => nn.functional.mseLoss(a, fg.zeros([3]))).toThrow(/shape/);
  });
});
