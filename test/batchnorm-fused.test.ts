/**
 * The fused batchNorm: the kernels (train forward: out, mean pairs, variance, rstd; eval forward;
 * backward: dx, dweight, dbias) of wasm and WebGPU (both WGSL channel forms) against the cpu
 * reference on awkward shapes (hw 1, 7x7, 14x14, odd channel counts) with every weight / bias /
 * wanted-gradient combination; non-finite channels; the op and nn.BatchNorm2d against the
 * composed tensor ops they replaced, on every backend (output, gradients, running statistics,
 * eval mode); gradcheck and gradgradcheck in float64; the edge cases (one value per channel,
 * empty batch); and the WebGPU dispatch counts. nn.test.ts holds BatchNorm1d/2d against PyTorch.
 */
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend, BatchNormLayout, Storage } from '../src/kernels/backend.js';
import { batchNormEval, batchNormTrain } from '../src/tensor/ops/normalization.js';
import type { TypedArray } from '../src/tensor/dtype.js';
import { withBackend } from './helpers/backend-scope.js';
import { f32, runKernelOn, type KernelInput } from './helpers/kernel-parity.js';
import { expectClose, randomF32, withDispatchNames, type Tolerance } from './helpers/webgpu.js';
import { gradcheckCases, parityDevices } from './helpers/parity-devices.js';

const { cpu, wasm, webgpu, devices: DEVICES } = await parityDevices('webgpu workgroup channels');

// float32 kernels against the float64-accumulating reference: the channel sums are a few ulps of
// their terms, the outputs (about unit size) and dx a few ulps more; dweight and dbias are sums
// over the channel's n * hw values.
const TOL: Tolerance = { atol: 5e-6, rtol: 5e-6 };
const TOL_PARAMS: Tolerance = { atol: 5e-5, rtol: 2e-5 };

// [n, c, hw]: hw 1 (BatchNorm1d on [N, C], a 1x1 map), 7x7, 14x14, short and odd rows.
const SHAPES: [number, number, number][] = [
  [2, 1, 1],
  [5, 3, 1],
  [3, 2, 2],
  [2, 3, 7],
  [4, 5, 49],
  [3, 4, 196],
  [1, 2, 65],
  [17, 3, 9],
];

const combos = [
  { weight: false, bias: false },
  { weight: true, bias: false },
  { weight: false, bias: true },
  { weight: true, bias: true },
];

function forwardOn(backends: Backend[], x: Float32Array, w: Float32Array | null, b: Float32Array | null, l: BatchNormLayout): Promise<TypedArray[][]> {
  const inputs: KernelInput[] = [f32(x), ...(w ? [f32(w)] : []), ...(b ? [f32(b)] : [])];
  const outs = [
    { numel: l.n * l.c * l.hw, dtype: 'float32' as const },
    // The means as (hi, lo) pairs, the variance, rstd.
    { numel: 2 * l.c, dtype: 'float32' as const },
    { numel: l.c, dtype: 'float32' as const },
    { numel: l.c, dtype: 'float32' as const },
  ];
  return runKernelOn(backends, inputs, outs, (be, [xs, ...p], [o, m, v, r]) => be.batchNorm(xs, w ? p[0] : null, b ? p[p.length - 1] : null, o, m, v, r, l));
}

function evalOn(backends: Backend[], x: Float32Array, rm: Float32Array, rv: Float32Array, w: Float32Array | null, b: Float32Array | null, l: BatchNormLayout): Promise<TypedArray[][]> {
  const inputs: KernelInput[] = [f32(x), f32(rm), f32(rv), ...(w ? [f32(w)] : []), ...(b ? [f32(b)] : [])];
  return runKernelOn(backends, inputs, [{ numel: x.length, dtype: 'float32' }], (be, [xs, ms, vs, ...p], [o]) =>
    be.batchNormEval(xs, ms, vs, w ? p[0] : null, b ? p[p.length - 1] : null, o, l),
  );
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
  l: BatchNormLayout,
): Promise<TypedArray[][]> {
  const inputs: KernelInput[] = [f32(g), f32(x), f32(mean), f32(rstd), ...(w ? [f32(w)] : [])];
  const outs = [
    ...(want.dx ? [{ numel: x.length, dtype: 'float32' as const }] : []),
    ...(want.dweight ? [{ numel: l.c, dtype: 'float32' as const }] : []),
    ...(want.dbias ? [{ numel: l.c, dtype: 'float32' as const }] : []),
  ];
  return runKernelOn(backends, inputs, outs, (be, [gs, xs, ms, rs, ws], os) => {
    const it = os[Symbol.iterator]();
    const next = (on: boolean): Storage | null => (on ? it.next().value! : null);
    be.batchNormBackward(gs, xs, ms, rs, w ? ws : null, next(want.dx), next(want.dweight), next(want.dbias), l);
  });
}

describe('batchNorm kernels: wasm and WebGPU against the cpu reference', () => {
  for (const [name, device] of DEVICES) {
    it.skipIf(!device)(`${name}: train forward, eval forward and backward, every shape and weight / bias combination`, async () => {
      let seed = 1;
      for (const [n, c, hw] of SHAPES) {
        for (const { weight, bias } of combos) {
          const what = `${name} [${n},${c},${hw}] weight=${weight} bias=${bias}`;
          const l = { n, c, hw, eps: 1e-5 };
          // An offset mean, so that a one-pass variance (E[x^2] - mean^2) would cancel visibly.
          const x = randomF32(n * c * hw, seed++, 2, 4);
          const w = weight ? randomF32(c, seed++, -2, 2) : null;
          const b = bias ? randomF32(c, seed++, -1, 1) : null;
          const [want, got] = await forwardOn([cpu, device!], x, w, b, l);
          ['out', 'mean', 'variance', 'rstd'].forEach((o, k) => expectClose(got[k], want[k], TOL, `${what} ${o}`));

          const rm = randomF32(c, seed++, 2, 4);
          const rv = randomF32(c, seed++, 0.1, 2);
          const [eWant, eGot] = await evalOn([cpu, device!], x, rm, rv, w, b, l);
          expectClose(eGot[0], eWant[0], TOL, `${what} eval out`);

          const g = randomF32(n * c * hw, seed++);
          const [mean, , rstd] = [want[1], want[2], want[3]] as Float32Array[];
          const [bWant, bGot] = await backwardOn([cpu, device!], g, x, mean, rstd, w, { dx: true, dweight: true, dbias: true }, l);
          expectClose(bGot[0], bWant[0], TOL, `${what} dx`);
          expectClose(bGot[1], bWant[1], TOL_PARAMS, `${what} dweight`);
          expectClose(bGot[2], bWant[2], TOL_PARAMS, `${what} dbias`);
        }
      }
    });

    it.skipIf(!device)(`${name}: backward writes only the gradients asked for, each as when all are asked for`, async () => {
      const l = { n: 3, c: 4, hw: 13, eps: 1e-5 };
      const x = randomF32(156, 91);
      const g = randomF32(156, 92);
      const w = randomF32(4, 93);
      const [[, mean, , rstd]] = await forwardOn([cpu], x, w, null, l);
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

    it.skipIf(!device)(`${name}: a channel holding NaN or an infinity is NaN throughout, the other channels are untouched`, async () => {
      for (const bad of [NaN, Infinity, -Infinity]) {
        for (const hw of [3, 70]) {
          const l = { n: 2, c: 3, hw, eps: 1e-5 };
          const x = randomF32(6 * hw, 7);
          x[(1 * 3 + 1) * hw + 1] = bad; // channel 1, in sample 1
          const w = randomF32(3, 8);
          const b = randomF32(3, 9);
          const [want, got] = await forwardOn([cpu, device!], x, w, b, l);
          const channel = (a: TypedArray, ch: number) => [0, 1].flatMap((i) => Array.from(a.subarray((i * 3 + ch) * hw, (i * 3 + ch + 1) * hw)));
          expect(channel(got[0], 1).every(Number.isNaN), `${name} ${bad} channel 1`).toBe(true);
          expect(channel(got[0], 0).concat(channel(got[0], 2)).every(Number.isFinite), `${name} ${bad} channels 0, 2`).toBe(true);
          expectClose(got[0], want[0], TOL, `${name} ${bad} ${hw} out`);
          const g = randomF32(6 * hw, 10);
          const [bWant, bGot] = await backwardOn([cpu, device!], g, x, want[1] as Float32Array, want[3] as Float32Array, w, { dx: true, dweight: true, dbias: true }, l);
          expect(channel(bGot[0], 1).every(Number.isNaN), `${name} ${bad} dx channel 1`).toBe(true);
          expectClose(bGot[0], bWant[0], TOL, `${name} ${bad} ${hw} dx`);
          expect(Number.isNaN(bGot[1][1]) && Number.isFinite(bGot[1][0]) && Number.isFinite(bGot[1][2]), `${name} ${bad} dweight`).toBe(true);
          expectClose(bGot[2], bWant[2], TOL_PARAMS, `${name} ${bad} dbias`);
        }
      }
    });
  }
});

/** nn.BatchNorm2d's training forward as it was before the fused kernel: mean, deviation, variance, rsqrt folded with the weight, bias. */
function composedTrain(x: fg.Tensor, w: fg.Tensor | null, b: fg.Tensor | null, eps: number): { y: fg.Tensor; mean: () => fg.Tensor; variance: fg.Tensor } {
  const c = x.shape[1];
  const axes = x.shape.map((_, i) => i).filter((i) => i !== 1);
  const bshape = x.shape.map((d, i) => (i === 1 ? d : 1));
  const mu = fg.mean(x, axes, true);
  const dev = x.sub(mu);
  const v = fg.mean(dev.mul(dev), axes, true);
  const inv = fg.rsqrt(v.add(eps));
  let y = dev.mul(w ? inv.mul(w.reshape(bshape)) : inv);
  if (b) y = y.add(b.reshape(bshape));
  return { y, mean: () => mu.reshape([c]), variance: v.reshape([c]) };
}

function composedEval(x: fg.Tensor, rm: fg.Tensor, rv: fg.Tensor, w: fg.Tensor | null, b: fg.Tensor | null, eps: number): fg.Tensor {
  const bshape = x.shape.map((d, i) => (i === 1 ? d : 1));
  const inv = fg.rsqrt(rv.reshape(bshape).add(eps));
  let y = x.sub(rm.reshape(bshape)).mul(w ? inv.mul(w.reshape(bshape)) : inv);
  if (b) y = y.add(b.reshape(bshape));
  return y;
}

const OP_BACKENDS: [string, () => Backend | null, fg.DType, Tolerance][] = [
  ['cpu float64', () => cpu, 'float64', { atol: 1e-12, rtol: 1e-12 }],
  ['cpu float32', () => cpu, 'float32', { atol: 3e-6, rtol: 3e-6 }],
  ['wasm', () => wasm, 'float32', { atol: 2e-5, rtol: 2e-5 }],
  // float64 on wasm runs the reference kernels over the wasm memory.
  ['wasm float64', () => wasm, 'float64', { atol: 1e-12, rtol: 1e-12 }],
  ['webgpu', () => webgpu, 'float32', { atol: 2e-5, rtol: 2e-5 }],
];

describe('batchNorm op: the fused kernels agree with the composed tensor ops', () => {
  for (const [name, backend, dtype, tol] of OP_BACKENDS) {
    it.skipIf(!backend())(`${name}: train and eval outputs, batch statistics and the gradients of x, weight and bias`, async () => {
      await withBackend(backend()!, async () => {
        for (const [shape, affine] of [
          [[4, 3, 7, 7], true],
          [[2, 5, 14, 14], true],
          [[6, 4, 1, 1], false],
          [[5, 3], true],
          [[3, 2, 9], true],
        ] as [number[], boolean][]) {
          fg.manualSeed(5);
          const c = shape[1];
          const x = fg.randn(shape, { dtype }).mul(2).add(1).detach().requiresGrad_();
          const w = affine ? fg.randn([c], { dtype }).detach().requiresGrad_() : null;
          const b = affine ? fg.randn([c], { dtype }).detach().requiresGrad_() : null;
          const rm = fg.randn([c], { dtype });
          const rv = fg.rand([c], { dtype }).add(0.5);
          const g = fg.randn(shape, { dtype });
          const params = [x, ...(w ? [w, b!] : [])];
          const run = (f: typeof batchNormTrain | typeof composedTrain, e: typeof batchNormEval | typeof composedEval) => {
            const { y, mean, variance } = f(x, w, b, 1e-5);
            const ye = e(x, rm, rv, w, b, 1e-5);
            return [y, mean(), variance, ...fg.grad(y.mul(g).sum(), params), ye, ...fg.grad(ye.mul(g).sum(), params)];
          };
          const fused = run(batchNormTrain, batchNormEval);
          const ref = run(composedTrain, composedEval);
          const labels = ['y', 'mean', 'var', 'dx', 'dw', 'db'].slice(0, 3 + params.length);
          labels.push('eval y', ...['eval dx', 'eval dw', 'eval db'].slice(0, params.length));
          for (let k = 0; k < ref.length; k++) {
            expectClose(await fused[k]!.data(), await ref[k]!.data(), tol, `${name} ${JSON.stringify(shape)} ${labels[k]}`);
          }
        }
      });
    });

    it.skipIf(!backend())(`${name}: nn.BatchNorm2d running statistics over steps (momentum and cumulative), then eval`, async () => {
      await withBackend(backend()!, async () => {
        for (const momentum of [0.1, null]) {
          fg.manualSeed(3);
          const bn = new fg.nn.BatchNorm2d(3, { momentum, dtype });
          let rm = fg.zeros([3], { dtype });
          let rv = fg.ones([3], { dtype });
          for (let step = 1; step <= 3; step++) {
            const x = fg.randn([4, 3, 5, 5], { dtype }).mul(step).add(step);
            bn.forward(x);
            // PyTorch's update: the unbiased batch variance (m = 4 * 25 values per channel).
            const { mean, variance } = composedTrain(x, null, null, 1e-5);
            const f = momentum ?? 1 / step;
            rm = rm.mul(1 - f).add(mean().mul(f));
            rv = rv.mul(1 - f).add(variance.mul((f * 100) / 99));
          }
          expectClose(await bn.runningMean!.data(), await rm.data(), tol, `${name} running mean momentum=${momentum}`);
          expectClose(await bn.runningVar!.data(), await rv.data(), tol, `${name} running var momentum=${momentum}`);
          expect(await bn.numBatchesTracked!.item()).toBe(3);
          bn.eval();
          const x = fg.randn([2, 3, 4, 4], { dtype });
          expectClose(await bn.forward(x).data(), await composedEval(x, rm, rv, bn.weight, bn.bias, 1e-5).data(), tol, `${name} eval momentum=${momentum}`);
        }
      });
    });
  }

  it('one value per channel in training mode is an error naming the shape, as PyTorch; eval mode accepts it', () =>
    withBackend(wasm, async () => {
      const bn = new fg.nn.BatchNorm2d(3);
      expect(() => bn.forward(fg.randn([1, 3, 1, 1]))).toThrow(/batchNorm: expected more than 1 value per channel when training, got input \[1,3,1,1\]/);
      expect(() => batchNormTrain(fg.randn([1, 2]))).toThrow(/batchNorm: expected more than 1 value per channel when training, got input \[1,2\]/);
      bn.eval();
      expect(bn.forward(fg.randn([1, 3, 1, 1])).shape).toEqual([1, 3, 1, 1]);
      // Without running statistics eval mode normalizes with the batch's: a lone value becomes the bias.
      const free = new fg.nn.BatchNorm1d(2, { trackRunningStats: false });
      free.eval();
      free.loadStateDict({ weight: [1, 1], bias: [0.5, -2] });
      expect(Array.from(await free.forward(fg.tensor([[3, 4]])).data())).toEqual([0.5, -2]);
    }));

  it('an empty batch gives an empty output and zero parameter gradients and leaves the running statistics alone', async () => {
    for (const b of ([cpu, wasm, webgpu] as (Backend | null)[]).filter((x): x is Backend => !!x)) {
      await withBackend(b, async () => {
        const bn = new fg.nn.BatchNorm2d(2);
        const x = fg.zeros([0, 2, 3, 3]).requiresGrad_();
        const y = bn.forward(x);
        expect(y.shape).toEqual([0, 2, 3, 3]);
        const [dw, db] = fg.grad(y.sum(), [bn.weight!, bn.bias!]);
        expect(Array.from(await dw!.data())).toEqual([0, 0]);
        expect(Array.from(await db!.data())).toEqual([0, 0]);
        expect(Array.from(await bn.runningMean!.data())).toEqual([0, 0]);
        expect(Array.from(await bn.runningVar!.data())).toEqual([1, 1]);
        expect(await bn.numBatchesTracked!.item()).toBe(0);
      });
    }
  });

  it('a training loop keeps the number of live buffers flat (the saved statistics are freed)', () =>
    withBackend(wasm, () => {
      const bn = new fg.nn.BatchNorm2d(4);
      const x = fg.randn([3, 4, 5, 5]);
      const live: number[] = [];
      for (let i = 0; i < 4; i++) {
        fg.tidy(() => {
          fg.grad(bn.forward(x).square().sum(), [bn.weight!, bn.bias!]);
        });
        live.push(wasm.memory().liveBuffers);
      }
      expect(new Set(live).size).toBe(1);
    }));

  it('names the shapes and dtypes of a bad weight, bias or statistic', () => {
    const x = fg.zeros([2, 3, 4]);
    expect(() => batchNormTrain(x, fg.ones([1, 3]))).toThrow(/batchNorm: weight \[1,3\] must be \[3\] for the input \[2,3,4\]/);
    expect(() => batchNormTrain(x, null, fg.ones([3], { dtype: 'float64' }))).toThrow(/batchNorm: bias is float64 but the input is float32/);
    expect(() => batchNormTrain(x, null, null, -1)).toThrow(/batchNorm: eps must be >= 0, got -1/);
    expect(() => batchNormEval(x, fg.zeros([4]), fg.ones([3]))).toThrow(/batchNormEval: runningMean \[4\] must be \[3\]/);
    expect(() => batchNormTrain(fg.zeros([3]))).toThrow(/batchNorm: expected an input \[N, C, \.\.\.\], got \[3\]/);
  });
});

describe('batchNorm gradients in float64 on the cpu backend', () => {
  const cases: [string, number[][], (...t: fg.Tensor[]) => fg.Tensor][] = [
    ['train, no affine', [[3, 2, 2, 3]], (x) => batchNormTrain(x).y],
    ['train, weight and bias, 1x1 maps', [[5, 3, 1, 1], [3], [3]], (x, w, b) => batchNormTrain(x, w, b).y],
    ['train, weight only, [N, C, L], large eps', [[2, 3, 4], [3]], (x, w) => batchNormTrain(x, w, null, 0.5).y],
    ['eval, weight and bias', [[3, 2, 2, 2], [2], [2]], (x, w, b) => batchNormEval(x, fg.tensor([0.3, -0.2], { dtype: 'float64' }), fg.tensor([0.5, 2], { dtype: 'float64' }), w, b)],
  ];
  gradcheckCases(cpu, cases);
});

describe.skipIf(!webgpu)('batchNorm on WebGPU: dispatches', () => {
  it('train forward is one dispatch, backward one, eval one', async () => {
    const gpu = webgpu!;
    await withDispatchNames(gpu, (names) =>
      withBackend(gpu, async () => {
        const x = fg.randn([8, 4, 7, 7]).requiresGrad_();
        const w = fg.ones([4]).requiresGrad_();
        const b = fg.zeros([4]).requiresGrad_();
        names.length = 0;
        const { y } = batchNormTrain(x, w, b);
        expect(names).toEqual(['batchNorm']);
        const g = fg.randn([8, 4, 7, 7]);
        names.length = 0;
        y.backward(g);
        expect(names).toEqual(['batchNormBackward']);
        const [rm, rv] = [fg.zeros([4]), fg.ones([4])];
        names.length = 0;
        batchNormEval(x.detach(), rm, rv, w.detach(), b.detach());
        expect(names).toEqual(['batchNormEval']);
        await x.grad!.data();
        // The composed ops that nn.BatchNorm2d ran before: a pass over the input per op.
        const x2 = x.detach().requiresGrad_();
        names.length = 0;
        const y2 = composedTrain(x2, w, b, 1e-5).y;
        const composedForward = names.length;
        names.length = 0;
        y2.backward(g);
        const composedBackward = names.length;
        names.length = 0;
        composedEval(x2.detach(), rm, rv, w.detach(), b.detach(), 1e-5);
        // (13, 26 and 6 when this was written.)
        for (const count of [composedForward, composedBackward, names.length]) expect(count).toBeGreaterThan(1);
        await x2.grad!.data();
      }),
    );
  });
});
