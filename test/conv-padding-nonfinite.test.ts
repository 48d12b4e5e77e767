/**
 * Convolution with an Inf or NaN next to zero padding, against torch 1.13 (CPU, values printed by
 * torch on this project's machine and copied here; torch is not needed to run the test): padding
 * is a product with zero in the forward and the weight gradient (so an Inf weight or an Inf output
 * gradient there gives NaN), and the input gradient sums over real output positions only (no
 * border products). The cpu reference and the wasm backend (every conv form: conv.ts, Winograd,
 * 1 and 2 threads) follow that rule.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Conv2dLayout } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { layoutOf, run, type Kernel } from './helpers/conv-parity.js';

const I = Infinity;
const N = NaN;
const ones = (n: number) => new Float32Array(n).fill(1);
const withAt = (n: number, fill: number, at: number, v: number) => {
  const a = new Float32Array(n).fill(fill);
  a[at] = v;
  return a;
};
const arange = (n: number, scale: number, shift: number) => Float32Array.from({ length: n }, (_, i) => i / scale - shift);

interface Case {
  name: string;
  l: Conv2dLayout;
  kernel: Kernel;
  a: Float32Array;
  b: Float32Array;
  /** torch 1.13's result. */
  want: number[];
}

const pad1 = layoutOf({ name: '', n: 1, c: 1, h: 3, w: 3, o: 1, k: [3, 3], pad: [1, 1] });
const valid = layoutOf({ name: '', n: 1, c: 1, h: 4, w: 4, o: 1, k: [3, 3] });
const s2 = layoutOf({ name: '', n: 1, c: 2, h: 5, w: 5, o: 2, k: [3, 3], pad: [1, 1], stride: [2, 2] });
// torch: w = arange(36).reshape(2, 2, 3, 3) / 8 - 2 with w[1, 0, 2, 2] = NaN; x = arange(50) / 10; dY = ones.
const s2w = arange(36, 8, 2);
s2w[((1 * 2 + 0) * 3 + 2) * 3 + 2] = NaN;
const s2x = arange(50, 10, 0);

const CASES: Case[] = [
  { name: 'forward, +Inf weight at a corner tap, pad 1', l: pad1, kernel: 'conv2d', a: ones(9), b: withAt(9, 0, 0, I), want: [N, N, N, N, I, I, N, I, I] },
  { name: 'input gradient, +Inf weight at a corner tap, pad 1', l: pad1, kernel: 'conv2dBackwardInput', a: ones(9), b: withAt(9, 0, 0, I), want: [I, I, 0, I, I, 0, 0, 0, 0] },
  { name: 'weight gradient, +Inf output gradient at a corner, pad 1', l: pad1, kernel: 'conv2dBackwardWeight', a: ones(9), b: withAt(9, 0, 0, I), want: [N, N, N, N, I, I, N, I, I] },
  { name: 'input gradient, +Inf output gradient at a corner, pad 1', l: pad1, kernel: 'conv2dBackwardInput', a: withAt(9, 0, 0, I), b: ones(9), want: [I, I, 0, I, I, 0, 0, 0, 0] },
  { name: 'input gradient of a valid convolution, -Inf weight', l: valid, kernel: 'conv2dBackwardInput', a: ones(4), b: withAt(9, 0, 8, -I), want: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -I, -I, 0, 0, -I, -I] },
  {
    name: 'forward, stride 2, pad 1, a NaN weight',
    l: s2,
    kernel: 'conv2d',
    a: s2x,
    b: s2w,
    want: [-2.499999761581421, -6.1999993324279785, -6.0, -14.175000190734863, -26.28750228881836, -21.225000381469727, -19.899999618530273, -34.099998474121094, -25.799999237060547, N, N, N, N, N, N, N, N, N],
  },
  {
    name: 'input gradient, stride 2, pad 1, a NaN weight',
    l: s2,
    kernel: 'conv2dBackwardInput',
    a: ones(18),
    b: s2w,
    want: [
      -0.75, -1.5, -0.75, -1.5, -0.75, -1.5, N, -1.5, N, -1.5, -0.75, -1.5, -0.75, -1.5, -0.75, -1.5, N, -1.5, N, -1.5, -0.75, -1.5, -0.75, -1.5, -0.75, 1.5, 3.0, 1.5, 3.0, 1.5, 3.0, 6.0, 3.0,
      6.0, 3.0, 1.5, 3.0, 1.5, 3.0, 1.5, 3.0, 6.0, 3.0, 6.0, 3.0, 1.5, 3.0, 1.5, 3.0, 1.5,
    ],
  },
];

function expectTorch(got: Float32Array, want: number[], what: string): void {
  expect(got.length, what).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    const w = want[i];
    const ok = Number.isNaN(w) ? Number.isNaN(got[i]) : Number.isFinite(w) ? Math.abs(got[i] - w) <= 1e-5 * (1 + Math.abs(w)) : got[i] === w;
    if (!ok) throw new Error(`${what}: element ${i} is ${got[i]}, torch gives ${w} (all: ${Array.from(got).join(', ')})`);
  }
}

describe('convolution next to zero padding with Inf and NaN, as torch', () => {
  let wasm: WasmBackend[] = [];
  beforeAll(async () => {
    wasm = [await createWasmBackend({ threads: 1 }), await createWasmBackend({ threads: 2, minThreadedWork: 1 })];
  });
  afterAll(() => wasm.forEach((b) => b.dispose()));

  for (const c of CASES) {
    it(c.name, async () => {
      expectTorch(await run(new CpuBackend(), c.kernel, c.l, c.a, c.b, c.want.length), c.want, `cpu: ${c.name}`);
      for (const be of wasm)
        for (const mode of ['off', 'on'] as const) {
          be.winogradConvs = mode;
          expectTorch(await run(be, c.kernel, c.l, c.a, c.b, c.want.length), c.want, `wasm ${be.activeThreads} threads, Winograd ${mode}: ${c.name}`);
        }
    });
  }
});
