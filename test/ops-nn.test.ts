/**
 * The nn ops added for issue 11 (conv1d, convTranspose2d, conv2d 'same'/'valid', embedding,
 * interpolate, groupNorm, nllLoss, crossEntropy with weights and ignoreIndex, the binary and
 * regression losses, klDiv, cosineSimilarity, normalize) against PyTorch 1.13:
 * test/fixtures/nn/ops.json from scripts/gen-nn-ops-fixtures.py holds each case's inputs, output
 * and the gradient of sum(output * r). Every case runs in float64 on the CPU backend (tight) and in
 * float32 on cpu, wasm and WebGPU; every case whose gradient is the derivative is gradchecked.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import type { DType } from '../src/tensor/dtype.js';
import { withBackend } from './helpers/backend-scope.js';
import { decodeTensor, type EncodedTensor } from './helpers/torch-fixture.js';
import { acquireWebGPU, expectClose, type Tolerance } from './helpers/webgpu.js';

const { nn } = fg;
const here = dirname(fileURLToPath(import.meta.url));

interface Case {
  name: string;
  op: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  opts: Record<string, any>;
  floats: Record<string, EncodedTensor>;
  ints: Record<string, EncodedTensor>;
  out: EncodedTensor;
  proj: EncodedTensor;
  grads: Record<string, EncodedTensor>;
}
const REF: { torch_version: string; cases: Case[] } = JSON.parse(readFileSync(join(here, 'fixtures/nn/ops.json'), 'utf8'));

type T = fg.Tensor;
/** Each fixture op as flatgrad spells it; float inputs in `f`, int32 inputs in `i`. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const OPS: Record<string, (f: Record<string, T>, i: Record<string, T>, o: any) => T> = {
  conv1d: (f, _i, o) => fg.conv1d(f.x, f.w, f.b, o),
  conv2d: (f, _i, o) => fg.conv2d(f.x, f.w, f.b, o),
  convTranspose2d: (f, _i, o) => fg.convTranspose2d(f.x, f.w, f.b, o),
  embedding: (f, i, o) => fg.embedding(i.idx, f.w, o.paddingIdx),
  interpolate: (f, _i, o) => fg.interpolate(f.x, o),
  groupNorm: (f, _i, o) => fg.groupNorm(f.x, o.numGroups, f.w, f.b, o.eps),
  nllLoss: (f, i, o) => fg.nllLoss(f.x, i.y, { ...o, weight: f.w }),
  crossEntropy: (f, i, o) => fg.crossEntropy(f.x, i.y, { ...o, weight: f.w }),
  binaryCrossEntropy: (f, _i, o) => fg.binaryCrossEntropy(f.x, f.t, { ...o, weight: f.w }),
  binaryCrossEntropyWithLogits: (f, _i, o) => fg.binaryCrossEntropyWithLogits(f.x, f.t, { ...o, weight: f.w, posWeight: f.pw }),
  l1Loss: (f, _i, o) => fg.l1Loss(f.x, f.t, o),
  smoothL1Loss: (f, _i, o) => fg.smoothL1Loss(f.x, f.t, o),
  huberLoss: (f, _i, o) => fg.huberLoss(f.x, f.t, o),
  klDiv: (f, _i, o) => fg.klDiv(f.x, f.t, o),
  cosineSimilarity: (f, _i, o) => fg.cosineSimilarity(f.x1, f.x2, o),
  normalize: (f, _i, o) => fg.normalize(f.x, { ...o, p: o.p === 'inf' ? Infinity : o.p }),
};

/**
 * Cases whose PyTorch gradient is deliberately not the derivative of the forward, or where the
 * forward is not differentiable: gradcheck would compare against the wrong thing.
 */
const NOT_GRADCHECKED: Record<string, string> = {
  'binaryCrossEntropy at 0 and 1 (log clamped at -100), sum': 'PyTorch rule (x-t)/max(x(1-x),1e-12), and x +- eps leaves [0, 1]',
  'cosineSimilarity dim 1, eps 0.5': 'PyTorch 1.13 passes the gradient through a clamped norm',
  'normalize p 2 dim 1, a zero row': 'the norm is not differentiable at a zero row',
  'cosineSimilarity broadcast, dim -1, a zero row': 'the norm is not differentiable at a zero row',
  'nllLoss all ignored (mean is NaN)': 'the output is NaN (0/0), as PyTorch',
  'embedding with paddingIdx': 'the padding row gets no gradient by design (as PyTorch); gradchecked without it below',
  'embedding with negative paddingIdx': 'the padding row gets no gradient by design (as PyTorch)',
};

/** Runs a case on the active backend in `dtype`: the output and the gradients named by the fixture. */
function runCase(c: Case, dtype: DType): { out: T; grads: Record<string, T> } {
  return fg.tidy(() => {
    const f: Record<string, T> = {};
    for (const [k, e] of Object.entries(c.floats)) f[k] = fg.tensor(decodeTensor(e), { shape: e.shape, dtype, requiresGrad: k in c.grads });
    const i: Record<string, T> = {};
    for (const [k, e] of Object.entries(c.ints)) i[k] = fg.tensor(decodeTensor(e), { shape: e.shape, dtype: 'int32' });
    const out = OPS[c.op](f, i, c.opts);
    const names = Object.keys(c.grads);
    const grads = names.length ? fg.grad(fg.sum(fg.mul(out, fg.tensor(decodeTensor(c.proj), { shape: c.proj.shape, dtype }))), names.map((k) => f[k])) : [];
    return { out, grads: Object.fromEntries(names.map((k, n) => [k, grads[n]!])) as Record<string, T> };
  });
}

async function checkCase(c: Case, dtype: DType, tol: Tolerance, where: string): Promise<void> {
  const { out, grads } = runCase(c, dtype);
  try {
    expect(out.shape, `${where} ${c.name}: output shape`).toEqual(c.out.shape);
    const typed = (v: number[]) => (dtype === 'float64' ? Float64Array.from(v) : Float32Array.from(v));
    expectClose(await out.data(), typed(decodeTensor(c.out)), tol, `${where} ${c.name}: output`);
    for (const [k, e] of Object.entries(c.grads)) expectClose(await grads[k].data(), typed(decodeTensor(e)), tol, `${where} ${c.name}: d/d${k}`);
  } finally {
    out.dispose();
    for (const g of Object.values(grads)) g.dispose();
  }
}

const F64: Tolerance = { atol: 1e-10, rtol: 1e-8 };
const F32: Tolerance = { atol: 1e-4, rtol: 1e-3 };

const prev = getBackend();
const cpu = new CpuBackend();
const wasm = await createWasmBackend({ threads: 1 });
const gpu = (await acquireWebGPU()).backend;
afterAll(() => setBackend(prev));

it('the fixture comes from PyTorch 1.13 and covers every op', () => {
  expect(REF.torch_version).toMatch(/^1\.13/);
  expect(new Set(REF.cases.map((c) => c.op))).toEqual(new Set(Object.keys(OPS)));
});

describe('against PyTorch, float64 on cpu', () => {
  for (const c of REF.cases) it(c.name, () => withBackend(cpu, () => checkCase(c, 'float64', F64, 'cpu f64')));
});

describe('gradcheck (float64, cpu)', () => {
  for (const c of REF.cases) {
    if (Object.keys(c.grads).length === 0 || c.name in NOT_GRADCHECKED) continue;
    it(c.name, () =>
      withBackend(cpu, () => {
        const names = Object.keys(c.grads);
        const f: Record<string, T> = {};
        for (const [k, e] of Object.entries(c.floats)) f[k] = fg.tensor(decodeTensor(e), { shape: e.shape, dtype: 'float64', requiresGrad: names.includes(k) });
        const i: Record<string, T> = {};
        for (const [k, e] of Object.entries(c.ints)) i[k] = fg.tensor(decodeTensor(e), { shape: e.shape, dtype: 'int32' });
        const fn = (...xs: T[]) => OPS[c.op]({ ...f, ...Object.fromEntries(names.map((k, n) => [k, xs[n]])) }, i, c.opts);
        expect(fg.gradcheck(fn, names.map((k) => f[k]))).toBe(true);
      }),
    );
  }
});

describe('against PyTorch, float32 on cpu', () => {
  for (const c of REF.cases) it(c.name, () => withBackend(cpu, () => checkCase(c, 'float32', F32, 'cpu f32')));
});

describe('against PyTorch, float32 on wasm', () => {
  for (const c of REF.cases) it(c.name, () => withBackend(wasm, () => checkCase(c, 'float32', F32, 'wasm')));
});

describe('against PyTorch, float32 on WebGPU', () => {
  for (const c of REF.cases) {
    it(c.name, async (ctx) => {
      if (!gpu) return ctx.skip();
      await withBackend(gpu, () => checkCase(c, 'float32', F32, 'webgpu'));
    });
  }
});

describe('gradients beyond the fixture', () => {
  const f64 = (shape: number[], seed: number, lo = -1, hi = 1) => {
    fg.manualSeed(seed);
    return fg.uniform(shape, lo, hi, { dtype: 'float64' }).requiresGrad_();
  };
  const i32 = (v: number[]) => fg.tensor(v, { dtype: 'int32' });
  it('embedding without paddingIdx is gradchecked; with it, the padding row alone gets zero', () =>
    withBackend(cpu, () => {
      const w = f64([5, 3], 1);
      const idx = i32([4, 1, 1, 0]);
      expect(fg.gradcheck((ww) => fg.embedding(idx, ww), [w])).toBe(true);
      const [g] = fg.grad(fg.embedding(idx, w, 1).sum(), [w]);
      expect(Array.from(g!.dataSync())).toEqual([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
    }));
  it('double backward (gradgradcheck) through convTranspose2d, bilinear interpolate, groupNorm and binaryCrossEntropy', () =>
    withBackend(cpu, () => {
      const x = f64([1, 2, 3, 3], 2);
      const w = f64([2, 2, 2, 2], 3);
      expect(fg.gradgradcheck((a, b) => fg.convTranspose2d(a, b, null, { stride: 2, padding: 1, outputPadding: 1 }).square(), [x, w], { atol: 1e-4 })).toBe(true);
      expect(fg.gradgradcheck((a) => fg.interpolate(a, { size: [5, 4], mode: 'bilinear' }).square(), [x], { atol: 1e-4 })).toBe(true);
      expect(fg.gradgradcheck((a) => fg.groupNorm(a, 2), [f64([2, 4, 3], 4)], { atol: 1e-4 })).toBe(true);
      const p = f64([6], 5, 0.1, 0.9);
      const t = f64([6], 6, 0, 1);
      expect(fg.gradgradcheck((a, b) => fg.binaryCrossEntropy(a, b), [p, t], { atol: 1e-4 })).toBe(true);
    }));
});

describe('crossEntropy is one fused kernel without class weights', () => {
  it('no weight, with or without ignored labels: one fused node; with weights the composite', () =>
    withBackend(cpu, () => {
      const x = fg.randn([3, 4]).requiresGrad_();
      const y = fg.tensor([0, 3, 1], { dtype: 'int32' });
      expect(fg.crossEntropy(x, y, { reduction: 'none' }).gradFn?.op).toBe('crossEntropy');
      expect(fg.crossEntropy(x, fg.tensor([0, -100, 1], { dtype: 'int32' }), { reduction: 'none' }).gradFn?.op).toBe('crossEntropy');
      expect(fg.crossEntropy(x, y, { reduction: 'none', weight: fg.ones([4]) }).gradFn?.op).not.toBe('crossEntropy');
    }));
  it('on WebGPU, labels with no host copy ignore rows as on cpu', async (ctx) => {
    if (!gpu) return ctx.skip();
    const logits = [[1, 2, 0.5], [0.1, -1, 2], [3, 0, 0]];
    const run = (b: Backend) =>
      withBackend(b, async () => {
        // A label tensor made by a cast has no host copy: nothing on the host says which rows are ignored.
        const labels = fg.tensor([2, -100, 0], { dtype: 'float32' }).int();
        expect(labels.hostData).toBeNull();
        return (await fg.crossEntropy(fg.tensor(logits), labels).data())[0];
      });
    const [onGpu, onCpu] = [await run(gpu), await run(cpu)];
    expect(Number.isFinite(onCpu)).toBe(true);
    expect(Math.abs(onGpu - onCpu)).toBeLessThan(1e-5);
  });
});

describe('errors name the op, the shapes and the values', () => {
  const i32 = (v: number[]) => fg.tensor(v, { dtype: 'int32' });
  const cases: [string, () => unknown, RegExp][] = [
    ['label out of range with ignoreIndex', () => fg.crossEntropy(fg.ones([2, 3]), i32([0, 5]), { ignoreIndex: -1 }), /crossEntropy: label 5 at position 1 is out of range \[0, 3\) \(and is not the ignoreIndex -1\)/],
    ['class weight shape', () => fg.crossEntropy(fg.ones([2, 3]), i32([0, 1]), { weight: fg.ones([2]) }), /crossEntropy: weight \[2\] must be \[3\], one per class/],
    ['nllLoss target', () => fg.nllLoss(fg.ones([2, 3]), i32([3, 0])), /nllLoss: target 3 at position 0 is out of range \[0, 3\)/],
    ['nllLoss target shape', () => fg.nllLoss(fg.ones([2, 3, 4]), i32([0, 1])), /nllLoss: labels \[2\] do not match input \[2,3,4\] \(expected \[2,4\]\)/],
    ['same with stride', () => fg.conv2d(fg.ones([1, 1, 4, 4]), fg.ones([1, 1, 3, 3]), null, { padding: 'same', stride: 2 }), /conv2d: padding='same' needs stride 1/],
    ['unknown padding mode', () => fg.conv2d(fg.ones([1, 1, 4, 4]), fg.ones([1, 1, 3, 3]), null, { padding: 'full' as never }), /conv2d: padding must be a number, a pair, 'same' or 'valid', got "full"/],
    ['conv1d same with stride', () => fg.conv1d(fg.ones([1, 1, 4]), fg.ones([1, 1, 3]), null, { padding: 'same', stride: 2 }), /conv1d: padding='same' needs stride 1/],
    ['conv1d channels', () => fg.conv1d(fg.ones([1, 3, 4]), fg.ones([2, 2, 3])), /conv1d: input \[1,3,4\] has 3 channels but weight \[2,2,3\] expects 2/],
    ['convTranspose2d outputPadding', () => fg.convTranspose2d(fg.ones([1, 1, 3, 3]), fg.ones([1, 1, 3, 3]), null, { stride: 2, outputPadding: 2 }), /convTranspose2d: outputPadding 2,2 must be smaller than either the stride 2,2 or the dilation 1,1/],
    ['convTranspose2d channels', () => fg.convTranspose2d(fg.ones([1, 2, 3, 3]), fg.ones([3, 1, 3, 3])), /convTranspose2d: input \[1,2,3,3\] has 2 channels but weight \[3,1,3,3\] expects 3/],
    ['embedding index', () => fg.embedding(i32([0, 9]), fg.ones([4, 2])), /embedding: index 9 at position 1 is out of range \[0, 4\)/],
    ['embedding paddingIdx', () => fg.embedding(i32([0]), fg.ones([4, 2]), 4), /embedding: paddingIdx 4 must be an integer in \[-4, 4\)/],
    ['interpolate alignCorners with nearest', () => fg.interpolate(fg.ones([1, 1, 2, 2]), { size: 3, alignCorners: true }), /interpolate: alignCorners can only be set with mode 'bilinear'/],
    ['interpolate size and scale', () => fg.interpolate(fg.ones([1, 1, 2, 2]), { size: 3, scaleFactor: 2 }), /interpolate: give exactly one of size and scaleFactor/],
    ['interpolate rank', () => fg.interpolate(fg.ones([2, 2]), { size: 3 }), /interpolate: input must be NCHW \(rank 4\), got \[2,2\]/],
    ['groupNorm groups', () => fg.groupNorm(fg.ones([1, 6, 2]), 4), /groupNorm: numGroups 4 must be a positive integer dividing the 6 channels of \[1,6,2\]/],
    ['bce probability', () => fg.binaryCrossEntropy(fg.tensor([0.5, 1.5]), fg.tensor([1, 0])), /binaryCrossEntropy: input 1.5 at position 1 is outside \[0, 1\]/],
    ['loss shapes', () => fg.l1Loss(fg.ones([2, 3]), fg.ones([3])), /l1Loss: input \[2,3\] and target \[3\] differ in shape/],
    ['huber delta', () => fg.huberLoss(fg.ones([2]), fg.ones([2]), { delta: 0 }), /huberLoss: delta must be > 0, got 0/],
    ['klDiv reduction', () => fg.klDiv(fg.ones([2]), fg.ones([2]), { reduction: 'avg' as never }), /klDiv: reduction must be 'mean', 'sum' or 'none', got "avg"/],
    ['cosine shapes', () => fg.cosineSimilarity(fg.ones([2, 3]), fg.ones([4])), /cosineSimilarity/],
    ['normalize p', () => fg.normalize(fg.ones([2, 3]), { p: 0 }), /normalize: p must be > 0 \(or Infinity\), got 0/],
  ];
  for (const [name, f, re] of cases) it(name, () => withBackend(cpu, () => expect(f).toThrow(re)));
});

describe('layers', () => {
  it('Conv1d, ConvTranspose2d, Embedding, GroupNorm, Upsample: PyTorch layouts, names and shapes', () =>
    withBackend(cpu, () => {
      fg.manualSeed(0);
      const c1 = new nn.Conv1d(4, 6, 3, { padding: 'same', groups: 2 });
      expect(c1.namedParameters().map(([n, p]) => [n, p.shape])).toEqual([['weight', [6, 2, 3]], ['bias', [6]]]);
      expect(c1.forward(fg.randn([2, 4, 7])).shape).toEqual([2, 6, 7]);
      const ct = new nn.ConvTranspose2d(4, 6, [3, 2], { stride: 2, padding: 1, outputPadding: 1, groups: 2 });
      expect(ct.weight.shape).toEqual([4, 3, 3, 2]);
      expect(ct.forward(fg.randn([1, 4, 5, 5])).shape).toEqual([1, 6, 10, 9]);
      // PyTorch's bound for both: 1/sqrt(fan_in) with fan_in = out/groups * kh * kw = 18 here.
      expect(Math.max(...Array.from(ct.bias!.dataSync()).map(Math.abs))).toBeLessThanOrEqual(1 / Math.sqrt(18));
      const e = new nn.Embedding(5, 3, { paddingIdx: -2 });
      expect(e.paddingIdx).toBe(3);
      expect(Array.from(e.weight.dataSync()).slice(9, 12)).toEqual([0, 0, 0]);
      expect(e.forward(fg.tensor([[1, 3]], { dtype: 'int32' })).shape).toEqual([1, 2, 3]);
      const gn = new nn.GroupNorm(2, 4);
      expect(gn.namedParameters().map(([n]) => n)).toEqual(['weight', 'bias']);
      const y = gn.forward(fg.randn([3, 4, 5]));
      const perGroup = fg.reshape(y, [3, 2, 10]);
      expect(Math.max(...Array.from(fg.mean(perGroup, 2).dataSync()).map(Math.abs))).toBeLessThan(1e-6);
      expect(new nn.Upsample({ scaleFactor: 2, mode: 'bilinear' }).forward(fg.randn([1, 1, 3, 4])).shape).toEqual([1, 1, 6, 8]);
    }));
});
