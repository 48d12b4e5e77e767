/**
 * The fused layerNorm: the kernels (forward: out, mean, rstd; backward: dx, dweight, dbias) of
 * wasm and WebGPU (both WGSL row reductions) against the cpu reference on awkward shapes, with
 * every weight / bias / wanted-gradient combination; non-finite rows, a normalized dim of size 1
 * and empty shapes; the op against the same formula composed of tensor ops on every backend;
 * gradcheck and gradgradcheck in float64; and the WebGPU dispatch counts. The op against
 * PyTorch 1.13 is in test/diff-pytorch.test.ts (test/fixtures/diff/layerNorm.json).
 */
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend, LayerNormLayout, Storage } from '../src/kernels/backend.js';
import type { TypedArray } from '../src/tensor/dtype.js';
import { withBackend } from './helpers/backend-scope.js';
import { f32, runKernelOn, type KernelInput } from './helpers/kernel-parity.js';
import { expectClose, randomF32, withDispatchNames, type Tolerance } from './helpers/webgpu.js';
import { gradcheckCases, parityDevices } from './helpers/parity-devices.js';

const { cpu, wasm, webgpu, devices: DEVICES } = await parityDevices('webgpu workgroup rows');

// float32 kernels against the float64-accumulating reference: the row sums are a few ulps of
// their terms, the outputs (about unit size) and dx a few ulps more; dweight sums over the rows.
const TOL: Tolerance = { atol: 3e-6, rtol: 3e-6 };
const TOL_PARAMS: Tolerance = { atol: 2e-5, rtol: 1e-5 };

const SHAPES: [number, number][] = [
  [1, 1],
  [3, 1],
  [2, 3],
  [3, 7],
  [5, 63],
  [4, 65],
  [2, 257],
  [65, 192],
  [3, 1030],
];

const combos = [
  { weight: false, bias: false },
  { weight: true, bias: false },
  { weight: false, bias: true },
  { weight: true, bias: true },
];

function forwardOn(backends: Backend[], x: Float32Array, w: Float32Array | null, b: Float32Array | null, l: LayerNormLayout): Promise<TypedArray[][]> {
  const inputs: KernelInput[] = [f32(x), ...(w ? [f32(w)] : []), ...(b ? [f32(b)] : [])];
  const outs = [
    { numel: l.rows * l.cols, dtype: 'float32' as const },
    // The means as (hi, lo) pairs, then rstd.
    { numel: 2 * l.rows, dtype: 'float32' as const },
    { numel: l.rows, dtype: 'float32' as const },
  ];
  return runKernelOn(backends, inputs, outs, (be, [xs, ...p], [o, m, r]) => be.layerNorm(xs, w ? p[0] : null, b ? p[p.length - 1] : null, o, m, r, l));
}

interface Wanted {
  dx: boolean;
  dweight: boolean;
  dbias: boolean;
}

/** The backward kernel with the given saved statistics; the outputs come back in the order dx, dweight, dbias (the wanted ones). */
function backwardOn(
  backends: Backend[],
  g: Float32Array,
  x: Float32Array,
  mean: Float32Array,
  rstd: Float32Array,
  w: Float32Array | null,
  want: Wanted,
  l: LayerNormLayout,
): Promise<TypedArray[][]> {
  const inputs: KernelInput[] = [f32(g), f32(x), f32(mean), f32(rstd), ...(w ? [f32(w)] : [])];
  const outs = [
    ...(want.dx ? [{ numel: l.rows * l.cols, dtype: 'float32' as const }] : []),
    ...(want.dweight ? [{ numel: l.cols, dtype: 'float32' as const }] : []),
    ...(want.dbias ? [{ numel: l.cols, dtype: 'float32' as const }] : []),
  ];
  return runKernelOn(backends, inputs, outs, (be, [gs, xs, ms, rs, ws], os) => {
    const it = os[Symbol.iterator]();
    const next = (on: boolean): Storage | null => (on ? it.next().value! : null);
    be.layerNormBackward(gs, xs, ms, rs, w ? ws : null, next(want.dx), next(want.dweight), next(want.dbias), l);
  });
}

describe('layerNorm kernels: wasm and WebGPU against the cpu reference', () => {
  for (const [name, device] of DEVICES) {
    it.skipIf(!device)(`${name}: forward and backward, every shape and weight / bias combination`, async () => {
      let seed = 1;
      for (const [rows, cols] of SHAPES) {
        for (const { weight, bias } of combos) {
          const what = `${name} ${rows}x${cols} weight=${weight} bias=${bias}`;
          const l = { rows, cols, eps: 1e-5 };
          // An offset mean, so that a one-pass variance (E[x^2] - mean^2) would cancel visibly.
          const x = randomF32(rows * cols, seed++, 2, 4);
          const w = weight ? randomF32(cols, seed++, -2, 2) : null;
          const b = bias ? randomF32(cols, seed++, -1, 1) : null;
          const [want, got] = await forwardOn([cpu, device!], x, w, b, l);
          ['out', 'mean', 'rstd'].forEach((o, k) => expectClose(got[k], want[k], TOL, `${what} ${o}`));

          const g = randomF32(rows * cols, seed++);
          const [mean, rstd] = want.slice(1) as Float32Array[];
          const wantAll = { dx: true, dweight: true, dbias: true };
          const [bWant, bGot] = await backwardOn([cpu, device!], g, x, mean, rstd, w, wantAll, l);
          expectClose(bGot[0], bWant[0], TOL, `${what} dx`);
          expectClose(bGot[1], bWant[1], TOL_PARAMS, `${what} dweight`);
          expectClose(bGot[2], bWant[2], TOL_PARAMS, `${what} dbias`);
        }
      }
    });

    it.skipIf(!device)(`${name}: backward writes only the gradients asked for, each as when all are asked for`, async () => {
      const l = { rows: 6, cols: 13, eps: 1e-5 };
      const x = randomF32(78, 91);
      const g = randomF32(78, 92);
      const w = randomF32(13, 93);
      const [[out, mean, rstd]] = await forwardOn([cpu], x, w, null, l);
      expect(out.length).toBe(78);
      const [all] = await backwardOn([device!], g, x, mean as Float32Array, rstd as Float32Array, w, { dx: true, dweight: true, dbias: true }, l);
      for (const want of [
        { dx: false, dweight: true, dbias: false },
        { dx: true, dweight: false, dbias: false },
        { dx: false, dweight: false, dbias: true },
        { dx: true, dweight: false, dbias: true },
      ]) {
        const [got] = await backwardOn([device!], g, x, mean as Float32Array, rstd as Float32Array, w, want, l);
        const expected = [want.dx && all[0], want.dweight && all[1], want.dbias && all[2]].filter((a): a is TypedArray => !!a);
        expect(got.length).toBe(expected.length);
        got.forEach((a, k) => expectClose(a, expected[k], { atol: 0, rtol: 0 }, `${name} ${JSON.stringify(want)} out${k}`));
      }
    });

    it.skipIf(!device)(`${name}: a row holding NaN or an infinity is NaN throughout, the other rows are untouched`, async () => {
      for (const bad of [NaN, Infinity, -Infinity]) {
        const rows = 4;
        for (const cols of [3, 70]) {
          const l = { rows, cols, eps: 1e-5 };
          const x = randomF32(rows * cols, 7);
          x[cols + 1] = bad; // row 1
          x[3 * cols] = bad; // row 3, first element
          const w = randomF32(cols, 8);
          const b = randomF32(cols, 9);
          const [want, got] = await forwardOn([cpu, device!], x, w, b, l);
          for (const r of [1, 3]) expect(Array.from(got[0].subarray(r * cols, (r + 1) * cols)).every(Number.isNaN), `${name} ${bad} row ${r}`).toBe(true);
          expectClose(got[0], want[0], TOL, `${name} ${bad} ${cols} out`);
          const g = randomF32(rows * cols, 10);
          const [bWant, bGot] = await backwardOn([cpu, device!], g, x, want[1] as Float32Array, want[2] as Float32Array, w, { dx: true, dweight: true, dbias: true }, l);
          for (const r of [1, 3]) expect(Array.from(bGot[0].subarray(r * cols, (r + 1) * cols)).every(Number.isNaN), `${name} ${bad} dx row ${r}`).toBe(true);
          expectClose(bGot[0], bWant[0], TOL, `${name} ${bad} ${cols} dx`);
          // Every dweight sums a NaN row; dbias sums only the upstream gradient, which is finite.
          expect(Array.from(bGot[1]).every(Number.isNaN), `${name} ${bad} dweight`).toBe(true);
          expectClose(bGot[2], bWant[2], TOL_PARAMS, `${name} ${bad} dbias`);
        }
      }
    });

    it.skipIf(!device)(`${name}: no rows give zero parameter gradients`, async () => {
      const l = { rows: 0, cols: 5, eps: 1e-5 };
      const [[dw, db]] = await backwardOn([device!], new Float32Array(0), new Float32Array(0), new Float32Array(0), new Float32Array(0), randomF32(5, 1), { dx: false, dweight: true, dbias: true }, l);
      expect(Array.from(dw)).toEqual([0, 0, 0, 0, 0]);
      expect(Array.from(db)).toEqual([0, 0, 0, 0, 0]);
    });
  }
});

/** layerNorm as it was before the fused kernel: mean, deviation, variance, rsqrt, scale, shift. */
function composed(x: fg.Tensor, normalizedShape: number[], w: fg.Tensor | null, b: fg.Tensor | null, eps: number): fg.Tensor {
  const axes = normalizedShape.map((_, i) => x.ndim - normalizedShape.length + i);
  const dev = x.sub(fg.mean(x, axes, true));
  let y = dev.mul(fg.rsqrt(fg.mean(dev.square(), axes, true).add(eps)));
  if (w) y = y.mul(w);
  if (b) y = y.add(b);
  return y;
}

const OP_BACKENDS: [string, () => Backend | null, fg.DType, Tolerance][] = [
  ['cpu float64', () => cpu, 'float64', { atol: 1e-12, rtol: 1e-12 }],
  ['cpu float32', () => cpu, 'float32', { atol: 2e-6, rtol: 2e-6 }],
  ['wasm', () => wasm, 'float32', { atol: 1e-5, rtol: 1e-5 }],
  // float64 on wasm runs the reference kernels over the wasm memory.
  ['wasm float64', () => wasm, 'float64', { atol: 1e-12, rtol: 1e-12 }],
  ['webgpu', () => webgpu, 'float32', { atol: 1e-5, rtol: 1e-5 }],
];

describe('layerNorm op: the fused kernels agree with the composed tensor ops', () => {
  for (const [name, backend, dtype, tol] of OP_BACKENDS) {
    it.skipIf(!backend())(`${name}: output and the gradients of x, weight and bias`, async () => {
      await withBackend(backend()!, async () => {
        for (const [shape, normalizedShape, affine] of [
          [[4, 3, 10], [10], true],
          [[2, 3, 5], [3, 5], true],
          [[7, 33], [33], false],
          [[5, 1], [1], true],
        ] as [number[], number[], boolean][]) {
          fg.manualSeed(5);
          const x = fg.randn(shape, { dtype }).mul(2).add(1).detach().requiresGrad_();
          const w = affine ? fg.randn(normalizedShape, { dtype }).detach().requiresGrad_() : null;
          const b = affine ? fg.randn(normalizedShape, { dtype }).detach().requiresGrad_() : null;
          const g = fg.randn(shape, { dtype });
          const run = (f: typeof fg.layerNorm | typeof composed) => {
            const y = f(x, normalizedShape, w, b, 1e-5);
            const grads = fg.grad(y.mul(g).sum(), [x, ...(w ? [w, b!] : [])]);
            return [y, ...grads];
          };
          const fused = run(fg.layerNorm);
          const ref = run(composed);
          for (let k = 0; k < ref.length; k++) {
            expectClose(await fused[k]!.data(), await ref[k]!.data(), tol, `${name} ${JSON.stringify(shape)} ${['y', 'dx', 'dw', 'db'][k]}`);
          }
        }
      });
    });
  }

  it('a normalized dim of size 1 gives the bias exactly and a zero input gradient', async () => {
    await withBackend(wasm, async () => {
      const x = fg.randn([6, 1]).requiresGrad_();
      const b = fg.randn([1]);
      const y = fg.layerNorm(x, [1], fg.randn([1]), b);
      expect(Array.from(await y.data())).toEqual(new Array(6).fill((await b.data())[0]));
      const [dx] = fg.grad(y.mul(fg.randn([6, 1])).sum(), [x]);
      expect(Array.from(await dx!.data()).every((v) => v === 0)).toBe(true);
    });
  });

  it('empty shapes: no rows, and a normalized dim of size 0', async () => {
    for (const b of ([cpu, wasm, webgpu] as (Backend | null)[]).filter((x): x is Backend => !!x)) {
      await withBackend(b, async () => {
        const x = fg.zeros([0, 4]).requiresGrad_();
        const w = fg.ones([4]).requiresGrad_();
        const bias = fg.zeros([4]).requiresGrad_();
        const y = fg.layerNorm(x, [4], w, bias);
        expect(y.shape).toEqual([0, 4]);
        const [dw, db] = fg.grad(y.sum(), [w, bias]);
        expect(Array.from(await dw!.data())).toEqual([0, 0, 0, 0]);
        expect(Array.from(await db!.data())).toEqual([0, 0, 0, 0]);
        const z = fg.layerNorm(fg.zeros([3, 0]).requiresGrad_(), [0]);
        expect(z.shape).toEqual([3, 0]);
      });
    }
  });

  it('a training loop keeps the number of live buffers flat (the saved statistics are freed)', () =>
    withBackend(wasm, () => {
      const x = fg.randn([9, 20]);
      const w = fg.ones([20]).requiresGrad_();
      const b = fg.zeros([20]).requiresGrad_();
      const live: number[] = [];
      for (let i = 0; i < 4; i++) {
        fg.tidy(() => {
          fg.grad(fg.layerNorm(x, [20], w, b).square().sum(), [w, b]);
        });
        live.push(wasm.memory().liveBuffers);
      }
      expect(new Set(live).size).toBe(1);
    }));

  it('names the shapes and dtypes of a bad weight or bias', () => {
    const x = fg.zeros([2, 3]);
    expect(() => fg.layerNorm(x, [3], fg.ones([1, 3]))).toThrow(/layerNorm: weight \[1,3\] must have the normalized shape \[3\]/);
    expect(() => fg.layerNorm(x, [3], null, fg.ones([3], { dtype: 'float64' }))).toThrow(/layerNorm: bias is float64 but the input is float32/);
    expect(() => fg.layerNorm(x, [3], null, null, -1)).toThrow(/layerNorm: eps must be >= 0, got -1/);
  });
});

describe('layerNorm gradients in float64 on the cpu backend', () => {
  const cases: [string, number[][], (...t: fg.Tensor[]) => fg.Tensor][] = [
    ['no affine', [[3, 5]], (x) => fg.layerNorm(x, [5])],
    ['weight only', [[2, 3, 4], [4]], (x, w) => fg.layerNorm(x, [4], w)],
    ['bias only', [[4, 3], [3]], (x, b) => fg.layerNorm(x, [3], null, b)],
    ['two dims, large eps', [[2, 2, 3], [2, 3], [2, 3]], (x, w, b) => fg.layerNorm(x, [2, 3], w, b, 0.5)],
  ];
  gradcheckCases(cpu, cases);
});

describe.skipIf(!webgpu)('layerNorm on WebGPU: dispatches', () => {
  it('forward is one dispatch, backward two (one without parameter gradients)', async () => {
    const gpu = webgpu!;
    await withDispatchNames(gpu, (names) =>
      withBackend(gpu, async () => {
        const x = fg.randn([64, 192]).requiresGrad_();
        const w = fg.ones([192]).requiresGrad_();
        const b = fg.zeros([192]).requiresGrad_();
        const g = fg.randn([64, 192]);
        names.length = 0;
        const y = fg.layerNorm(x, [192], w, b);
        expect(names).toEqual(['layerNorm']);
        names.length = 0;
        y.backward(g);
        expect(names).toEqual(['layerNormBackward', 'layerNormBackwardParams']);
        names.length = 0;
        const x2 = fg.randn([8, 192]).requiresGrad_();
        fg.layerNorm(x2, [192], w.detach(), b.detach()).backward(fg.randn([8, 192]));
        expect(names.filter((n) => n.startsWith('layerNorm'))).toEqual(['layerNorm', 'layerNormBackward']);
        await x.grad!.data();
      }),
    );
  });
});
