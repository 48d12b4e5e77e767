/**
 * The convolution kernels (conv2d and its input and weight gradients) of every backend against
 * the CPU reference, on awkward geometries: groups (depthwise too), stride, dilation, padding
 * wider than the kernel, 1x1, odd sizes, channel counts that are not multiples of the wasm tile,
 * and sizes that span several column blocks; then gradchecks of the ops built on them.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { conv2dReference } from '../src/kernels/cpu/conv.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import type { Backend, Conv2dLayout } from '../src/kernels/backend.js';
import { acquireWebGPU, randomF32 } from './helpers/webgpu.js';

interface Case {
  name: string;
  n: number;
  c: number;
  h: number;
  w: number;
  o: number;
  k: [number, number];
  stride?: [number, number];
  pad?: [number, number];
  dil?: [number, number];
  groups?: number;
  /** Too large for SwiftShader's direct kernels in a test. */
  wasmOnly?: boolean;
}

const CASES: Case[] = [
  { name: '3x3 pad 1', n: 2, c: 3, h: 7, w: 9, o: 5, k: [3, 3], pad: [1, 1] },
  { name: 'stride 2x3, 3x2 kernel, groups 2', n: 1, c: 4, h: 9, w: 7, o: 6, k: [3, 2], stride: [2, 3], pad: [1, 0], groups: 2 },
  { name: 'dilation 2', n: 2, c: 2, h: 8, w: 8, o: 3, k: [3, 3], pad: [2, 2], dil: [2, 2] },
  { name: 'dilation and stride mixed', n: 1, c: 3, h: 11, w: 10, o: 4, k: [2, 3], stride: [3, 2], pad: [1, 2], dil: [3, 1] },
  { name: '1x1', n: 3, c: 8, h: 5, w: 5, o: 16, k: [1, 1] },
  { name: '1x1 stride 2', n: 1, c: 3, h: 6, w: 7, o: 4, k: [1, 1], stride: [2, 2] },
  { name: 'depthwise 3x3', n: 2, c: 6, h: 5, w: 6, o: 6, k: [3, 3], pad: [1, 1], groups: 6 },
  { name: 'groups 2, 3 outputs per group', n: 1, c: 4, h: 6, w: 6, o: 6, k: [3, 3], groups: 2 },
  { name: 'padding wider than the kernel', n: 1, c: 2, h: 3, w: 4, o: 3, k: [2, 2], pad: [3, 3] },
  { name: 'height 1 (conv1d)', n: 2, c: 3, h: 1, w: 17, o: 4, k: [1, 5], pad: [0, 2] },
  { name: 'single output pixel', n: 2, c: 5, h: 3, w: 3, o: 7, k: [3, 3] },
  { name: 'deep input, several column blocks', n: 1, c: 64, h: 9, w: 9, o: 8, k: [3, 3], pad: [1, 1], wasmOnly: true },
  { name: 'resnet-like 16 -> 32, 28x28', n: 2, c: 16, h: 28, w: 28, o: 32, k: [3, 3], pad: [1, 1], wasmOnly: true },
  { name: 'resnet-like stride 2, 8 -> 16', n: 3, c: 8, h: 15, w: 15, o: 16, k: [3, 3], stride: [2, 2], pad: [1, 1], wasmOnly: true },
];

function layoutOf(t: Case): Conv2dLayout {
  const [sh, sw] = t.stride ?? [1, 1];
  const [ph, pw] = t.pad ?? [0, 0];
  const [dh, dw] = t.dil ?? [1, 1];
  const [kh, kw] = t.k;
  const oh = Math.floor((t.h + 2 * ph - dh * (kh - 1) - 1) / sh) + 1;
  const ow = Math.floor((t.w + 2 * pw - dw * (kw - 1) - 1) / sw) + 1;
  return { n: t.n, c: t.c, h: t.h, w: t.w, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw, outChannels: t.o, groups: t.groups ?? 1 };
}

type Kernel = 'conv2d' | 'conv2dBackwardInput' | 'conv2dBackwardWeight';
const KERNELS: Kernel[] = ['conv2d', 'conv2dBackwardInput', 'conv2dBackwardWeight'];

/** Sizes of a kernel's two operands and its output, and how many products each output sums. */
function sizes(kernel: Kernel, l: Conv2dLayout): { a: number; b: number; out: number; terms: number } {
  const x = l.n * l.c * l.h * l.w;
  const wt = l.outChannels * (l.c / l.groups) * l.kh * l.kw;
  const y = l.n * l.outChannels * l.oh * l.ow;
  const K = (l.c / l.groups) * l.kh * l.kw;
  if (kernel === 'conv2d') return { a: x, b: wt, out: y, terms: K };
  if (kernel === 'conv2dBackwardInput') return { a: y, b: wt, out: x, terms: (l.outChannels / l.groups) * l.kh * l.kw };
  return { a: x, b: y, out: wt, terms: l.n * l.oh * l.ow };
}

async function run(be: Backend, kernel: Kernel, l: Conv2dLayout, a: Float32Array, b: Float32Array, outNumel: number): Promise<Float32Array> {
  const sa = be.upload(a, 'float32');
  const sb = be.upload(b, 'float32');
  const out = be.alloc(outNumel, 'float32');
  // Garbage in the output first: a kernel must write (not accumulate onto) every element.
  be.write(out, new Float32Array(outNumel).fill(NaN));
  be[kernel](sa, sb, out, l);
  const r = (await be.read(out)) as Float32Array;
  for (const s of [sa, sb, out]) be.release(s);
  return r;
}

/** float32 sums of `terms` products of values in [-1, 1]: error grows with the number of terms. */
function expectNear(got: Float32Array, want: Float32Array, terms: number, what: string): void {
  expect(got.length).toBe(want.length);
  const tol = 4e-6 * Math.sqrt(terms) * 8;
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i] - want[i]) <= tol * (1 + Math.abs(want[i])))) {
      throw new Error(`${what}: element ${i} is ${got[i]}, the reference says ${want[i]} (tolerance ${tol})`);
    }
  }
}

const cpu = new CpuBackend();

async function checkParity(be: Backend, t: Case, seed: number): Promise<void> {
  const l = layoutOf(t);
  for (const kernel of KERNELS) {
    const s = sizes(kernel, l);
    const a = randomF32(s.a, seed);
    const b = randomF32(s.b, seed + 1);
    const want = await run(cpu, kernel, l, a, b, s.out);
    const got = await run(be, kernel, l, a, b, s.out);
    expectNear(got, want, s.terms, `${be.name} ${kernel} (${t.name})`);
  }
}

describe('wasm convolution kernels match the CPU reference', () => {
  let wasm: WasmBackend;
  beforeAll(async () => {
    wasm = await createWasmBackend({ threads: 1 });
  });
  afterAll(() => wasm?.dispose());
  afterEach(() => expect(wasm.memory().liveBuffers).toBe(0));

  CASES.forEach((t, i) => it(t.name, () => checkParity(wasm, t, 100 + 10 * i)));

  it('a NaN in the input reaches exactly the outputs whose window holds it', async () => {
    const t = CASES[0];
    const l = layoutOf(t);
    const x = randomF32(l.n * l.c * l.h * l.w, 7);
    x[((1 * l.c + 2) * l.h + 3) * l.w + 4] = NaN;
    const wt = randomF32(l.outChannels * l.c * l.kh * l.kw, 8);
    const want = new Float32Array(l.n * l.outChannels * l.oh * l.ow);
    conv2dReference(x, wt, want, l);
    const got = await run(wasm, 'conv2d', l, x, wt, want.length);
    for (let i = 0; i < want.length; i++) expect(Number.isNaN(got[i]), `output ${i}`).toBe(Number.isNaN(want[i]));
  });
});

const { backend: gpu, reason } = await acquireWebGPU();
describe.skipIf(!gpu)(`WebGPU convolution kernels match the CPU reference${gpu ? '' : ` (skipped: ${reason})`}`, () => {
  CASES.filter((t) => !t.wasmOnly).forEach((t, i) => it(t.name, () => checkParity(gpu!, t, 300 + 10 * i)));
});

describe('conv2d front-end on wasm agrees with cpu (bias, groups, same padding, conv1d, convTranspose2d)', () => {
  it('forward and gradients', async () => {
    const wasm = await createWasmBackend({ threads: 1 });
    try {
      const results = [cpu, wasm].map((be: Backend) => {
        const on = (data: Float32Array, shape: number[]) => fg.Tensor.fromStorage(be.upload(data, 'float32'), shape, be).requiresGrad_();
        const x = on(randomF32(2 * 4 * 9 * 8, 1), [2, 4, 9, 8]);
        const w = on(randomF32(6 * 2 * 3 * 3, 2), [6, 2, 3, 3]);
        const b = on(randomF32(6, 3), [6]);
        const y = fg.conv2d(x, w, b, { padding: 'same', groups: 2 });
        const x1 = on(randomF32(2 * 3 * 11, 4), [2, 3, 11]);
        const w1 = on(randomF32(5 * 3 * 4, 5), [5, 3, 4]);
        const y1 = fg.conv1d(x1, w1, null, { stride: 2, padding: 1, dilation: 2 });
        const wt = on(randomF32(4 * 3 * 3 * 3, 6), [4, 3, 3, 3]);
        const yt = fg.convTranspose2d(x, wt, null, { stride: 2, padding: 1, outputPadding: 1 });
        y.square().sum().add(y1.square().sum()).add(yt.square().sum()).backward();
        return [y, y1, yt, x.grad!, w.grad!, b.grad!, x1.grad!, w1.grad!, wt.grad!].map((t) => Float32Array.from(t.dataSync() as Float32Array));
      });
      results[0].forEach((want, i) => expectNear(results[1][i], want, 200, `result ${i}`));
    } finally {
      wasm.dispose();
    }
  });
});

describe('gradcheck of the convolution ops (float64, cpu)', () => {
  const input = (shape: number[]) => fg.randn(shape, { dtype: 'float64' }).detach().requiresGrad_();
  it('conv2d with stride, dilation, groups and padding, and its double backward', () => {
    const xs = [input([2, 4, 7, 6]), input([6, 2, 3, 2])];
    const fn = (x: fg.Tensor, w: fg.Tensor) => fg.conv2d(x, w, null, { stride: [2, 1], padding: [2, 1], dilation: [1, 2], groups: 2 });
    expect(fg.gradcheck(fn, xs)).toBe(true);
    expect(fg.gradgradcheck(fn, xs, { atol: 1e-4, rtol: 1e-3 })).toBe(true);
  });
  it('depthwise 1x1 and 3x3', () => {
    expect(fg.gradcheck((x, w) => fg.conv2d(x, w, null, { groups: 3, padding: 1 }), [input([1, 3, 5, 5]), input([3, 1, 3, 3])])).toBe(true);
    expect(fg.gradcheck((x, w) => fg.conv2d(x, w, null, { stride: 2 }), [input([2, 3, 5, 4]), input([2, 3, 1, 1])])).toBe(true);
  });
});
