/**
 * Zero padding in the WebGPU convolutions when a weight or dY is infinite or NaN, as torch 1.13's
 * im2col computes it (checked against torch): the forward and the weight gradient sum the products
 * with the padded zeros (Inf * 0 and NaN * 0 are NaN), the input gradient sums only over real
 * output positions (no product with a dY outside the output). Both forms of every kernel: the
 * register-tiled direct forms of a CPU-emulated adapter and the tiled implicit GEMM of a GPU,
 * forced with `cpuEmulated` so that either adapter tests both.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Conv2dLayout } from '../src/kernels/backend.js';
import { createWebGPUBackend, type WebGPUBackend } from '../src/kernels/webgpu/index.js';
import { layoutOf, run, type Kernel } from './helpers/conv-parity.js';
import { acquireWebGPU } from './helpers/webgpu.js';

const { backend: adapter, reason } = await acquireWebGPU();
const forms: WebGPUBackend[] = adapter ? [await createWebGPUBackend({ cpuEmulated: true }), await createWebGPUBackend({ cpuEmulated: false })] : [];

/** x = ones [1, 1, 3, 3], one 3x3 filter, padding 1, the given stride. */
const layout = (stride: number): Conv2dLayout => layoutOf({ name: '', n: 1, c: 1, h: 3, w: 3, o: 1, k: [3, 3], pad: [1, 1], stride: [stride, stride] });
const ones = (n: number) => new Float32Array(n).fill(1);
/** n zeros but `v` at index i. */
const oneHot = (n: number, i: number, v: number) => {
  const a = new Float32Array(n);
  a[i] = v;
  return a;
};
const { NaN: N } = Number;
const I = Infinity;

interface Check {
  name: string;
  kernel: Kernel;
  l: Conv2dLayout;
  a: Float32Array;
  b: Float32Array;
  /** torch 1.13's result (NaN compared as NaN, infinities by sign). */
  want: number[];
}

const CHECKS: Check[] = [
  // w = 0 but w[0, 0, 0, 0] = +Inf: every output whose top-left tap is in the padding is NaN.
  { name: 'forward, +Inf weight, pad 1', kernel: 'conv2d', l: layout(1), a: ones(9), b: oneHot(9, 0, I), want: [N, N, N, N, I, I, N, I, I] },
  // The same weight, dY = ones: the pixels that tap (0, 0) of a real output lands on are +Inf,
  // the last row and column (reached by that tap only from outputs outside the 3x3 output) 0.
  { name: 'input gradient, +Inf weight, pad 1', kernel: 'conv2dBackwardInput', l: layout(1), a: ones(9), b: oneHot(9, 0, I), want: [I, I, 0, I, I, 0, 0, 0, 0] },
  // Stride 2: every 2x2 output's window holds tap (2, 2), in the padding for output (1, 1).
  { name: 'forward, NaN weight, stride 2, pad 1', kernel: 'conv2d', l: layout(2), a: ones(9), b: oneHot(9, 8, N), want: [N, N, N, N] },
  // Tap (2, 2) of output (oy, ox) is pixel (2oy + 1, 2ox + 1): only (1, 1) is real.
  { name: 'input gradient, NaN weight, stride 2, pad 1', kernel: 'conv2dBackwardInput', l: layout(2), a: ones(4), b: oneHot(9, 8, N), want: [0, 0, 0, 0, N, 0, 0, 0, 0] },
  { name: 'input gradient, NaN weight at tap (0, 0), stride 2, pad 1', kernel: 'conv2dBackwardInput', l: layout(2), a: ones(4), b: oneHot(9, 0, N), want: [0, 0, 0, 0, N, 0, 0, 0, 0] },
  // dY[0, 0, 0, 0] = +Inf: the taps that read padding for output (0, 0) are NaN, the others +Inf.
  { name: 'weight gradient, +Inf dY, pad 1', kernel: 'conv2dBackwardWeight', l: layout(1), a: ones(9), b: oneHot(9, 0, I), want: [N, N, N, N, I, I, N, I, I] },
  // Stride 2, dY[0, 0, 1, 1] = -Inf: output (1, 1) reads pixels 1..3, row and column 3 padding.
  { name: 'weight gradient, -Inf dY, stride 2, pad 1', kernel: 'conv2dBackwardWeight', l: layout(2), a: ones(9), b: oneHot(4, 3, -I), want: [-I, -I, N, -I, -I, N, N, N, N] },
];

describe.skipIf(!adapter)(`WebGPU convolutions treat zero padding as torch when a weight or dY is not finite${adapter ? '' : ` (skipped: ${reason})`}`, () => {
  afterAll(() => forms.forEach((f) => f.destroy?.()));

  it('tests both forms', () => expect(forms.map((f) => f.rt.cpuEmulated)).toEqual([true, false]));
  for (const c of CHECKS) {
    for (const emulated of [true, false]) {
      it(`${c.name} (${emulated ? 'direct' : 'tiled'} form)`, async () => {
        const be = forms[emulated ? 0 : 1];
        const got = await run(be, c.kernel, c.l, c.a, c.b, c.want.length);
        expect(Array.from(got)).toEqual(c.want);
        expect(be.memory().liveBuffers).toBe(0);
      });
    }
  }
});
