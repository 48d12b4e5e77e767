/**
 * The fused scaled dot-product attention (src/nn/attention.ts scaledDotProductAttention, the
 * Backend's attention / attentionBackward): the wasm kernels against the cpu reference on awkward
 * shapes (head dims that are not multiples of 4, l != s, single rows, the ViT's packed
 * projection); the op against the same math composed of permutes, matmuls and softmax on cpu
 * (float64), wasm and WebGPU (here SwiftShader, where the emulated-GPU family's kernel runs); gradcheck and
 * gradgradcheck in float64; and MultiheadAttention taking the fused op exactly when no mask,
 * dropout or weights are asked for, with the same result as its composed path.
 */
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { AttentionLayout, Backend } from '../src/kernels/backend.js';
import { MultiheadAttention, scaledDotProductAttention } from '../src/nn/attention.js';
import { withBackend } from './helpers/backend-scope.js';
import { expectOutputsMatch, f32, runKernelOn } from './helpers/kernel-parity.js';
import { expectClose, randomF32, type Tolerance } from './helpers/webgpu.js';
import { gradcheckCases, parityDevices } from './helpers/parity-devices.js';

const { cpu, wasm, webgpu } = await parityDevices('webgpu workgroup rows');

// float32 kernels against the float64-accumulating reference: sums of s and d terms of unit size.
const TOL: Tolerance = { atol: 2e-6, rtol: 2e-5 };

/** [n, heads, l, s, d, packed]: packed inputs are one [n, l, 3 * heads * d] projection (s = l). */
const SHAPES: [number, number, number, number, number, boolean][] = [
  [3, 4, 17, 17, 8, true], // the ViT's blocks
  [2, 2, 5, 5, 3, true],
  [2, 3, 5, 7, 5, false],
  [1, 1, 1, 1, 1, false],
  [2, 2, 4, 9, 4, false],
  [1, 2, 33, 31, 12, false],
  [2, 1, 6, 6, 16, true],
  [1, 3, 2, 3, 2, false],
];

function layoutOf([n, heads, l, s, d, packed]: (typeof SHAPES)[number], scale = 1 / Math.sqrt(d)): AttentionLayout {
  const e = heads * d;
  const row = packed ? 3 * e : e;
  return { n, heads, l, s, d, scale, q: { offset: 0, row }, k: { offset: packed ? e : 0, row }, v: { offset: packed ? 2 * e : 0, row } };
}

describe('attention kernels: wasm against the cpu reference', () => {
  for (const shape of SHAPES) {
    const [n, heads, l, s, d, packed] = shape;
    const e = heads * d;
    it(`n ${n}, heads ${heads}, l ${l}, s ${s}, d ${d}${packed ? ', packed' : ''}: probabilities, output and the three gradients`, async () => {
      const g = layoutOf(shape, 0.37);
      const inputs = packed ? [f32(randomF32(n * l * 3 * e, 1, -2, 2))] : [f32(randomF32(n * l * e, 1, -2, 2)), f32(randomF32(n * s * e, 2, -2, 2)), f32(randomF32(n * s * e, 3, -2, 2))];
      const qkv = (ins: ReturnType<Backend['upload']>[]) => (packed ? [ins[0], ins[0], ins[0]] : ins);
      const fwd = await runKernelOn([cpu, wasm], inputs, [{ numel: n * l * e, dtype: 'float32' }, { numel: n * heads * l * s, dtype: 'float32' }], (b, ins, [out, probs]) => {
        const [q, k, v] = qkv(ins);
        b.attention!(q, k, v, out, probs, g);
      });
      expectOutputsMatch(fwd[1], fwd[0], TOL, 'forward');
      // Rows of probabilities sum to 1.
      const probs = fwd[0][1] as Float32Array;
      for (let r = 0; r < n * heads * l; r++) expect(Math.abs(probs.slice(r * s, (r + 1) * s).reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-5);
      // Backward from the reference's probabilities and a random upstream gradient.
      const grad = f32(randomF32(n * l * e, 4, -1, 1));
      const sizes = packed ? [n * l * 3 * e] : [n * l * e, n * s * e, n * s * e];
      const bwd = await runKernelOn([cpu, wasm], [grad, ...inputs, f32(probs)], sizes.map((numel) => ({ numel, dtype: 'float32' as const })), (b, [gs, ...rest], outs) => {
        const p = rest[rest.length - 1];
        const [q, k, v] = qkv(rest.slice(0, -1));
        const [dq, dk, dv] = packed ? [outs[0], outs[0], outs[0]] : outs;
        b.attentionBackward!(gs, q, k, v, p, dq, dk, dv, g);
      });
      expectOutputsMatch(bwd[1], bwd[0], { atol: 1e-5, rtol: 1e-4 }, 'backward');
    });
  }
});

describe('attention kernels: non-finite scores', () => {
  it('rows with an inf or NaN score are NaN on wasm where they are on cpu (the softmax rules), the others equal', async () => {
    const shape: (typeof SHAPES)[number] = [2, 2, 5, 6, 4, false];
    const [n, heads, l, s, d] = shape;
    const e = heads * d;
    const q = randomF32(n * l * e, 5, -1, 1);
    const k = randomF32(n * s * e, 6, -1, 1);
    q[3] = Infinity; // batch 0, row 0, head 0
    q[e + 4] = NaN; // batch 0, row 1, head 1
    k[e * s + 2] = -Infinity; // batch 1, key 0, head 0: -inf and +inf scores in every row of that head
    const v = randomF32(n * s * e, 7, -1, 1);
    const [want, got] = await runKernelOn([cpu, wasm], [f32(q), f32(k), f32(v)], [{ numel: n * l * e, dtype: 'float32' }, { numel: n * heads * l * s, dtype: 'float32' }], (b, [qs, ks, vs], [out, probs]) =>
      b.attention!(qs, ks, vs, out, probs, layoutOf(shape)),
    );
    for (const [w, g, what] of [[want[0], got[0], 'out'], [want[1], got[1], 'probs']] as const) {
      expect(Array.from(g, Number.isNaN), what).toEqual(Array.from(w, Number.isNaN));
      expect(Array.from(w, Number.isNaN).some((x) => x), `${what} has NaN rows`).toBe(true);
      expectClose(g.map((x) => (Number.isNaN(x) ? 0 : x)) as Float32Array, w.map((x) => (Number.isNaN(x) ? 0 : x)) as Float32Array, TOL, what);
    }
  });
});

/** The composition the fused op replaces, in tensor ops: split heads, softmax(scale Q K^T) V, merge. */
function composed(inputs: fg.Tensor[], heads: number, scale?: number): fg.Tensor {
  const e = inputs.length === 1 ? inputs[0].shape[2] / 3 : inputs[0].shape[2];
  const [q, k, v] = (inputs.length === 1 ? [0, 1, 2].map((i) => fg.narrow(inputs[0], 2, i * e, e)) : inputs).map((t) =>
    fg.permute(fg.reshape(t, [t.shape[0], t.shape[1], heads, e / heads]), [0, 2, 1, 3]),
  );
  const p = fg.softmax(fg.mul(fg.mm(q, k, false, true), scale ?? 1 / Math.sqrt(e / heads)), -1);
  const o = fg.matmul(p, v);
  return fg.reshape(fg.permute(o, [0, 2, 1, 3]), [o.shape[0], o.shape[2], e]);
}

/** The op's output and the gradients of a weighted sum of it, on backend b, from host inputs. */
function runOp(b: Backend, f: typeof composed, data: Float64Array[], shapes: number[][], heads: number, dtype: fg.DType, scale?: number): Promise<number[][]> {
  return withBackend(b, async () => {
    const xs = data.map((x, i) => fg.tensor(Array.from(x), { shape: shapes[i], dtype, requiresGrad: true }));
    const out = f(xs, heads, scale);
    const w = fg.tensor(Array.from({ length: out.size }, (_, i) => Math.sin(i)), { shape: out.shape, dtype });
    out.mul(w).sum().backward();
    const res = [Array.from(await out.data()), ...(await Promise.all(xs.map(async (x) => Array.from(await x.grad!.data()))))];
    fg.dispose([out, w, ...xs]);
    return res;
  });
}

const OP_CASES: [string, number[][], number, number?][] = [
  ['packed [2, 5, 3*6], 2 heads', [[2, 5, 18]], 2],
  ['q [2, 3, 8], k, v [2, 6, 8], 4 heads, scale 0.3', [[2, 3, 8], [2, 6, 8], [2, 6, 8]], 4, 0.3],
  ['packed [3, 17, 3*32], 4 heads (the ViT)', [[3, 17, 96]], 4],
];
const hostData = (shapes: number[][]) => shapes.map((s, i) => Float64Array.from(randomF32(s.reduce((a, b) => a * b, 1), 10 + i, -2, 2)));

describe('the op against the composition', () => {
  for (const [name, shapes, heads, scale] of OP_CASES) {
    it(`${name}: cpu float64 (fused kernels) equals the composition`, async () => {
      const data = hostData(shapes);
      const got = await runOp(cpu, scaledDotProductAttention as typeof composed, data, shapes, heads, 'float64', scale);
      const want = await runOp(cpu, composed, data, shapes, heads, 'float64', scale);
      got.forEach((g, k) => expectClose(Float64Array.from(g), Float64Array.from(want[k]), { atol: 1e-12, rtol: 1e-10 }, `${name} out${k}`));
    });
    for (const [label, b, tol] of [
      ['wasm', () => wasm, { atol: 2e-5, rtol: 1e-4 }],
      ['webgpu', () => webgpu, { atol: 1e-4, rtol: 1e-3 }],
    ] as const) {
      it(`${name}: ${label} float32 equals the cpu float64 op`, async (ctx) => {
        const be = b();
        if (!be) return ctx.skip();
        const data = hostData(shapes);
        const got = await runOp(be, scaledDotProductAttention as typeof composed, data, shapes, heads, 'float32', scale);
        const want = await runOp(cpu, scaledDotProductAttention as typeof composed, data, shapes, heads, 'float64', scale);
        got.forEach((g, k) => expectClose(Float32Array.from(g), Float32Array.from(want[k]), tol, `${name} ${label} out${k}`));
      });
    }
  }
  it('float64 on wasm runs the reference on the host: the same bits as cpu', async () => {
    const [, shapes, heads] = OP_CASES[0];
    const data = hostData(shapes);
    const got = await runOp(wasm, scaledDotProductAttention as typeof composed, data, shapes, heads, 'float64');
    expect(got).toEqual(await runOp(cpu, scaledDotProductAttention as typeof composed, data, shapes, heads, 'float64'));
  });
  it('refuses bad inputs with their shapes', () =>
    withBackend(cpu, () => {
      expect(() => scaledDotProductAttention([fg.zeros([2, 3, 8])], 2)).toThrow(/3 \* E/);
      expect(() => scaledDotProductAttention([fg.zeros([2, 3, 8]), fg.zeros([2, 4, 8]), fg.zeros([2, 5, 8])], 2)).toThrow(/k \[2,4,8\] and v \[2,5,8\]/);
      expect(() => scaledDotProductAttention([fg.zeros([2, 3, 9])], 2)).toThrow(/divisible/);
      expect(() => scaledDotProductAttention([fg.zeros([2, 3, 12], { dtype: 'int32' })], 2)).toThrow(/float/);
    }));
});

describe('gradients in float64 (cpu)', () => {
  gradcheckCases(cpu, [
    ['packed [2, 3, 3*4], 2 heads', [[2, 3, 12]], (x) => scaledDotProductAttention([x], 2)],
    ['q [2, 3, 6], k, v [2, 4, 6], 3 heads, scale 0.7', [[2, 3, 6], [2, 4, 6], [2, 4, 6]], (q, k, v) => scaledDotProductAttention([q, k, v], 3, 0.7)],
  ]);
  it('an input that does not require grad gets none', () =>
    withBackend(cpu, () => {
      const q = fg.randn([1, 2, 4], { dtype: 'float64', requiresGrad: true });
      const [k, v] = [fg.randn([1, 3, 4], { dtype: 'float64' }), fg.randn([1, 3, 4], { dtype: 'float64', requiresGrad: true })];
      scaledDotProductAttention([q, k, v], 2).sum().backward();
      expect(q.grad).not.toBeNull();
      expect(k.grad).toBeNull();
      expect(v.grad).not.toBeNull();
    }));
});

describe('MultiheadAttention takes the fused op only where it is the same math', () => {
  /** Forward on backend b, counting the backend's attention kernel calls. */
  function countFused(b: Backend, f: () => void): number {
    let calls = 0;
    const orig = b.attention!;
    b.attention = (...a) => {
      calls++;
      return orig.apply(b, a);
    };
    try {
      f();
    } finally {
      delete (b as { attention?: unknown }).attention;
    }
    return calls;
  }
  for (const [label, b] of [['cpu', cpu], ['wasm', wasm]] as const) {
    it(`${label}: fused without masks, dropout or weights; composed otherwise, with the same output`, () =>
      withBackend(b, () => {
        fg.manualSeed(3);
        const m = new MultiheadAttention(8, 2, { batchFirst: true, dropout: 0.1 });
        const x = fg.randn([2, 5, 8]);
        const y = fg.randn([2, 7, 8]);
        let fused: fg.Tensor | null = null;
        let plain: fg.Tensor | null = null;
        m.eval();
        expect(countFused(b, () => (fused = m.forward(x, x, x, { needWeights: false })[0]))).toBe(1);
        expect(countFused(b, () => (plain = m.forward(x, x, x)[0]))).toBe(0);
        expectClose(fused!.dataSync(), plain!.dataSync(), { atol: 1e-6, rtol: 1e-5 }, 'fused vs composed');
        expect(countFused(b, () => m.forward(x, y, y, { needWeights: false }))).toBe(1);
        expect(countFused(b, () => m.forward(x, x, x, { needWeights: false, attnMask: fg.zeros([5, 5], { dtype: 'bool' }) }))).toBe(0);
        expect(countFused(b, () => m.forward(x, x, x, { needWeights: false, keyPaddingMask: fg.zeros([2, 5], { dtype: 'bool' }) }))).toBe(0);
        m.train();
        expect(countFused(b, () => m.forward(x, x, x, { needWeights: false }))).toBe(0);
      }));
  }
});
