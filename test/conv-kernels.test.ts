/**
 * The convolution kernels (conv2d and its input and weight gradients) of every backend against
 * the CPU reference, on awkward geometries: groups (depthwise too), stride, dilation, padding
 * wider than the kernel, 1x1, odd sizes, channel counts that are not multiples of the wasm tile,
 * and sizes that span several column blocks; then gradchecks of the ops built on them.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { conv2dReference } from '../src/kernels/cpu/conv.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { createWebGPUBackend } from '../src/kernels/webgpu/index.js';
import { acquireWebGPU, randomF32 } from './helpers/webgpu.js';
import { type Case, checkParity, cpu, expectNear, layoutOf, run } from './helpers/conv-parity.js';

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
  // Rows long enough for several vectors of the stride-2 gather and scatter, even and odd widths.
  { name: 'stride 2, wide rows, odd height', n: 2, c: 5, h: 29, w: 30, o: 8, k: [3, 3], stride: [2, 2], pad: [1, 1], wasmOnly: true },
  { name: '1x1 stride 2, wide rows', n: 2, c: 8, h: 28, w: 27, o: 16, k: [1, 1], stride: [2, 2], wasmOnly: true },
  // The last input row and column lie in no window: their gradient is zero, not left as it was.
  { name: 'stride 2, last row and column outside every window', n: 2, c: 3, h: 8, w: 8, o: 8, k: [3, 3], stride: [2, 2], wasmOnly: true },
  // A pointwise grid written straight into the output: a partial last tile of columns (49 = 12*4
  // + 1) and of channels (13 is not a multiple of 8).
  { name: '1x1 pointwise, partial tiles', n: 3, c: 17, h: 7, w: 7, o: 13, k: [1, 1], wasmOnly: true },
  { name: '1x1 stride 2, 7x7 output', n: 2, c: 16, h: 14, w: 13, o: 32, k: [1, 1], stride: [2, 2], wasmOnly: true },
];

describe('wasm convolution kernels match the CPU reference', () => {
  let wasm: WasmBackend;
  beforeAll(async () => {
    wasm = await createWasmBackend({ threads: 1 });
  });
  afterAll(() => wasm?.dispose());
  afterEach(() => expect(wasm.memory().liveBuffers).toBe(0));

  CASES.forEach((t, i) => it(t.name, () => checkParity(wasm, t, 100 + 10 * i)));

  it('on a backend with worker threads (shared memory) too', async () => {
    const threaded = await createWasmBackend({ threads: 2 });
    try {
      for (const t of [CASES[1], CASES[13]]) await checkParity(threaded, t, 900);
      expect(threaded.memory().liveBuffers).toBe(0);
    } finally {
      threaded.dispose();
    }
  });

  it('an infinity in the last input column gives the weight gradient the reference gives (no 0 * inf from the grid)', async () => {
    const t = CASES[0];
    const l = layoutOf(t);
    const x = randomF32(l.n * l.c * l.h * l.w, 17);
    x[((1 * l.c + 1) * l.h + 2) * l.w + (l.w - 1)] = Infinity;
    const dy = randomF32(l.n * l.outChannels * l.oh * l.ow, 18);
    const numel = l.outChannels * l.c * l.kh * l.kw;
    const want = await run(cpu, 'conv2dBackwardWeight', l, x, dy, numel);
    const got = await run(wasm, 'conv2dBackwardWeight', l, x, dy, numel);
    // The taps that never see that column stay finite; the others are infinite.
    expect(want.some((v) => Number.isFinite(v)) && want.some((v) => !Number.isFinite(v))).toBe(true);
    // The same infinities (and no NaN) where the reference has them; the finite taps agree within
    // the float32 rounding of a differently ordered sum.
    for (let i = 0; i < want.length; i++) if (!Number.isFinite(want[i])) expect(got[i], `tap ${i}`).toBe(want[i]);
    expectNear(got.map((v, i) => (Number.isFinite(want[i]) ? v : 0)), want.map((v) => (Number.isFinite(v) ? v : 0)), l.n * l.oh * l.ow, 'finite taps');
  });

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
/** The adapter's own kernel form and the other one (direct kernels for CPU emulation, tiled implicit GEMM for GPUs). */
const gpuForms = gpu ? [gpu, await createWebGPUBackend({ cpuEmulated: !gpu.rt.cpuEmulated })] : [];
describe.skipIf(!gpu)(`WebGPU convolution kernels match the CPU reference${gpu ? '' : ` (skipped: ${reason})`}`, () => {
  afterAll(() => gpuForms[1]?.destroy?.());
  for (const be of gpuForms) {
    const form = be.rt.cpuEmulated ? 'direct kernels' : 'tiled implicit GEMM';
    CASES.filter((t) => !t.wasmOnly).forEach((t, i) => it(`${form}: ${t.name}`, () => checkParity(be, t, 300 + 10 * i)));
  }
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

describe('conv2d dtypes', () => {
  it('a float32 input with float64 weights promotes to float64, as matmul does', () => {
    const x = fg.tensor(randomF32(2 * 3 * 5 * 5, 40), { shape: [2, 3, 5, 5] });
    const w64 = fg.tensor(Float64Array.from(randomF32(4 * 3 * 3 * 3, 41)), { shape: [4, 3, 3, 3], dtype: 'float64' });
    const y = fg.conv2d(x, w64, null, { padding: 1 });
    expect(y.dtype).toBe('float64');
    const want = fg.conv2d(x.to('float64'), w64, null, { padding: 1 });
    expect(Array.from(y.dataSync())).toEqual(Array.from(want.dataSync()));
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

describe('wasm pooling (SIMD interior, reference border) matches the CPU reference', () => {
  let wasm: WasmBackend;
  beforeAll(async () => {
    wasm = await createWasmBackend({ threads: 1 });
  });
  afterAll(() => wasm?.dispose());
  afterEach(() => expect(wasm.memory().liveBuffers).toBe(0));

  // [n*c planes, h, w, k, stride, pad, dilation]: strides 1, 2 (the vector paths) and 3 (scalar), borders, odd sizes.
  const GEOMS: [number, number, number, [number, number], [number, number], [number, number], [number, number]][] = [
    [3, 28, 28, [2, 2], [2, 2], [0, 0], [1, 1]],
    [2, 13, 17, [3, 3], [2, 2], [1, 1], [1, 1]],
    [2, 9, 23, [3, 3], [1, 1], [1, 1], [1, 1]],
    [1, 11, 14, [3, 2], [3, 3], [1, 1], [1, 1]],
    [2, 12, 19, [2, 3], [1, 2], [1, 1], [2, 2]],
    [1, 5, 4, [5, 4], [1, 1], [2, 2], [1, 1]],
  ];
  const windowOf = ([planes, h, w, k, s, p, d]: (typeof GEOMS)[number]) => {
    const out = (size: number, i: number) => Math.floor((size + 2 * p[i] - d[i] * (k[i] - 1) - 1) / s[i]) + 1;
    return { n: 1, c: planes, h, w, kh: k[0], kw: k[1], oh: out(h, 0), ow: out(w, 1), sh: s[0], sw: s[1], ph: p[0], pw: p[1], dh: d[0], dw: d[1] };
  };
  /** Ties, NaNs (first one wins) and -Infinity among random values. */
  const awkward = (n: number, seed: number) => {
    const x = randomF32(n, seed);
    for (let i = 0; i < n; i += 7) x[i] = x[(i * 5) % n];
    for (let i = 3; i < n; i += 37) x[i] = NaN;
    for (let i = 5; i < n; i += 41) x[i] = -Infinity;
    return x;
  };

  GEOMS.forEach((geom, t) =>
    it(`maxPool2d and avgPool2d ${JSON.stringify(geom)}`, async () => {
      const g = windowOf(geom);
      const outN = g.c * g.oh * g.ow;
      const x = awkward(g.c * g.h * g.w, 500 + t);
      const results = await Promise.all(
        [cpu, wasm].map(async (be: Backend) => {
          const xs = be.upload(x, 'float32');
          const [o, a, avg] = [be.alloc(outN, 'float32'), be.alloc(outN, 'int32'), be.alloc(outN, 'float32')];
          be.write(o, new Float32Array(outN).fill(7));
          be.write(a, new Int32Array(outN).fill(-7));
          be.maxPool2d(xs, o, a, g);
          be.avgPool2d(xs, avg, { ...g, dh: 1, dw: 1, countIncludePad: t % 2 === 0, divisorOverride: t === 3 ? 5 : 0 });
          const r = [await be.read(o), await be.read(a), await be.read(avg)];
          for (const s of [xs, o, a, avg]) be.release(s);
          return r;
        }),
      );
      const [[maxC, argC, avgC], [maxW, argW, avgW]] = results;
      expect(Array.from(argW)).toEqual(Array.from(argC));
      expect(Array.from(maxW)).toEqual(Array.from(maxC));
      for (let i = 0; i < outN; i++) {
        const [want, got] = [avgC[i], avgW[i]];
        if (Number.isNaN(want) || !Number.isFinite(want)) expect(got, `avg ${i}`).toBe(want);
        else expect(Math.abs(got - want), `avg ${i}: ${got} vs ${want}`).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(want)));
      }
    }),
  );
});
