/**
 * 3x3 stride-1 convolutions by Winograd's F(2x2, 3x3) on the wasm backend
 * (src/kernels/wasm/conv-winograd.ts): forward and input gradient against the CPU reference on
 * many shapes (paddings 0, 1, 2, odd output sizes, channel counts off multiples of 4 and 8, one
 * image and none), which layouts take the form, results that do not depend on the thread count,
 * 'off' giving conv.ts's bits, and fg.conv2d's gradients through it.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import * as fg from '../src/index.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { isWinogradConv, useWinogradConv, WinogradConv } from '../src/kernels/wasm/conv-winograd.js';
import { WasmConv } from '../src/kernels/wasm/conv.js';
import type { Backend, Conv2dLayout } from '../src/kernels/backend.js';
import { randomF32 } from './helpers/webgpu.js';
import { type Case, cpu, layoutOf, run, sizes, type Kernel } from './helpers/conv-parity.js';

const k3 = (t: Omit<Case, 'k'>): Case => ({ ...t, k: [3, 3] });

const CASES: Case[] = [
  k3({ name: 'issue case shape, batch 2, 16 -> 32, 28x28, pad 1', n: 2, c: 16, h: 28, w: 28, o: 32, pad: [1, 1] }),
  k3({ name: 'ResNet 32 -> 32, 7x7 (odd output), pad 1', n: 3, c: 32, h: 7, w: 7, o: 32, pad: [1, 1] }),
  k3({ name: 'stem 1 -> 8, 28x28, pad 1', n: 2, c: 1, h: 28, w: 28, o: 8, pad: [1, 1] }),
  k3({ name: 'pad 0, 3 -> 5 channels, 11x9 (odd output 9x7)', n: 2, c: 3, h: 11, w: 9, o: 5, pad: [0, 0] }),
  k3({ name: 'pad 0, 12x12 (even output), 7 -> 13', n: 1, c: 7, h: 12, w: 12, o: 13, pad: [0, 0] }),
  k3({ name: 'pad 2, 6 -> 9, 5x8', n: 2, c: 6, h: 5, w: 8, o: 9, pad: [2, 2] }),
  k3({ name: 'mixed pads (1, 0), 9 -> 3, 10x13', n: 2, c: 9, h: 10, w: 13, o: 3, pad: [1, 0] }),
  k3({ name: 'a single output pixel (3x3 input, pad 0)', n: 3, c: 4, h: 3, w: 3, o: 6, pad: [0, 0] }),
  k3({ name: 'one output row, wide (3x40, pad 0), 2 -> 17', n: 1, c: 2, h: 3, w: 40, o: 17, pad: [0, 0] }),
  k3({ name: 'tall and thin (33x4, pad 1), 5 -> 8', n: 2, c: 5, h: 33, w: 4, o: 8, pad: [1, 1] }),
  k3({ name: 'many tile rows per block (96x96, pad 1), 4 -> 4', n: 1, c: 4, h: 96, w: 96, o: 4, pad: [1, 1] }),
  k3({ name: 'batch 1, 40 -> 36 channels, 14x14, pad 1', n: 1, c: 40, h: 14, w: 14, o: 36, pad: [1, 1] }),
];

const KERNELS: Kernel[] = ['conv2d', 'conv2dBackwardInput'];

/** Calls of the form's two entry points while f runs. */
async function winogradCalls(f: () => Promise<void> | void): Promise<number> {
  const spies = (['forward', 'backwardInput'] as const).map((m) => vi.spyOn(WinogradConv.prototype, m));
  try {
    await f();
    return spies.reduce((s, sp) => s + sp.mock.calls.length, 0);
  } finally {
    for (const sp of spies) sp.mockRestore();
  }
}

/** Operands: the input (or output gradient) uniform in [-1, 1], the weights scaled by He's sqrt(2 / (9 C)). */
function operands(kernel: Kernel, l: Conv2dLayout, seed: number): [Float32Array, Float32Array] {
  const s = sizes(kernel, l);
  const scale = Math.sqrt(2 / (l.c * 9));
  return [randomF32(s.a, seed), randomF32(s.b, seed + 1).map((v) => v * scale)];
}

/**
 * The tolerance, per element, in units of eps * S (S = the element's sum of |products|, the
 * scale of a float32 dot product's rounding error): the direct form (conv.ts) was measured at up
 * to 3.3 eps S against this reference on the shapes below, Winograd at up to 12.8 (the
 * one-channel stem: the transforms round sums of a tile's 16 inputs, so an output whose own
 * window is small takes its neighbours' error). So 4x a direct-form bound of 8 eps S, plus
 * 2 eps of the largest S (an output near zero among large ones).
 */
function expectClose(got: Float32Array, want: Float32Array, absSum: Float64Array, what: string): void {
  expect(got.length).toBe(want.length);
  const eps = 2 ** -24;
  const largest = absSum.reduce((m, v) => Math.max(m, v), 0);
  for (let i = 0; i < want.length; i++) {
    const tol = 4 * 8 * eps * absSum[i] + 2 * eps * largest;
    if (!(Math.abs(got[i] - want[i]) <= tol)) throw new Error(`${what}: element ${i} is ${got[i]}, the reference says ${want[i]} (tolerance ${tol})`);
  }
}

/** The kernel over |a| and |b| on the CPU: each output's sum of |products|, the scale of its rounding error. */
async function absSums(kernel: Kernel, l: Conv2dLayout, a: Float32Array, b: Float32Array): Promise<Float64Array> {
  const r = await run(cpu, kernel, l, a.map(Math.abs), b.map(Math.abs), sizes(kernel, l).out);
  return Float64Array.from(r);
}

async function checkCase(be: Backend, t: Case, seed: number): Promise<void> {
  const l = layoutOf(t);
  for (const kernel of KERNELS) {
    const [a, b] = operands(kernel, l, seed);
    const want = await run(cpu, kernel, l, a, b, sizes(kernel, l).out);
    const got = await run(be, kernel, l, a, b, sizes(kernel, l).out);
    expectClose(got, want, await absSums(kernel, l, a, b), `${kernel} (${t.name})`);
  }
}

describe('Winograd F(2x2, 3x3) convolutions on wasm match the CPU reference', () => {
  let wasm: WasmBackend;
  beforeAll(async () => {
    wasm = await createWasmBackend({ threads: 1 });
  });
  afterAll(() => wasm?.dispose());
  afterEach(() => {
    wasm.winogradConvs = 'auto';
    expect(wasm.memory().liveBuffers).toBe(0);
  });

  CASES.forEach((t, i) =>
    it(t.name, async () => {
      expect(isWinogradConv(layoutOf(t), 'forward')).toBe(true);
      wasm.winogradConvs = 'on';
      // Both kernels ran by Winograd.
      expect(await winogradCalls(() => checkCase(wasm, t, 20 + 10 * i))).toBe(2);
    }),
  );

  it('an empty batch writes nothing and reads nothing', async () => {
    wasm.winogradConvs = 'on';
    const l = layoutOf(k3({ name: 'empty', n: 0, c: 4, h: 6, w: 6, o: 5, pad: [1, 1] }));
    for (const kernel of KERNELS) {
      const s = sizes(kernel, l);
      expect(s.out).toBe(0);
      const calls = await winogradCalls(async () => expect((await run(wasm, kernel, l, new Float32Array(s.a), new Float32Array(s.b), 0)).length).toBe(0));
      expect(calls).toBe(1);
    }
  });
});

describe('Winograd convolutions do not depend on the thread count', () => {
  it('2 and 3 threads give 1 thread\'s bits (units split by image and by block of tile rows)', async () => {
    const backends = await Promise.all([1, 2, 3].map((threads) => createWasmBackend({ threads, minThreadedWork: threads > 1 ? 1 : undefined })));
    try {
      for (const be of backends) be.winogradConvs = 'on';
      expect(backends[1].threadsUnavailable).toBeNull();
      const cases: Case[] = [
        CASES[0],
        CASES[1],
        // One image of many tile rows: several blocks per image, split between the threads.
        k3({ name: 'batch 1, 130x70, 3 -> 6', n: 1, c: 3, h: 130, w: 70, o: 6, pad: [1, 1] }),
        CASES[3],
      ];
      for (const t of cases) {
        const l = layoutOf(t);
        for (const kernel of KERNELS) {
          const [a, b] = operands(kernel, l, 90);
          const results: Float32Array[] = [];
          for (const be of backends) {
            // The parts each split ran in (WasmConv.split's first argument): one on one thread, several on more.
            const split = vi.spyOn(WasmConv.prototype, 'split');
            results.push(await run(be, kernel, l, a, b, sizes(kernel, l).out));
            const parts = split.mock.calls.map((c) => c[0]);
            split.mockRestore();
            expect(parts.length, `${t.name} ${kernel}: one split`).toBe(1);
            if (be === backends[0]) expect(parts[0]).toBe(1);
            else expect(parts[0], `${t.name} ${kernel} on ${be.activeThreads} threads`).toBeGreaterThan(1);
          }
          for (const r of results.slice(1)) expect(new Uint32Array(r.buffer), `${t.name} ${kernel}`).toEqual(new Uint32Array(results[0].buffer));
        }
      }
      for (const be of backends) expect(be.memory().liveBuffers).toBe(0);
    } finally {
      for (const be of backends) be.dispose();
    }
  });
});

describe('which layouts take the Winograd form', () => {
  const base = k3({ name: 'base', n: 2, c: 4, h: 8, w: 8, o: 4, pad: [1, 1] });
  it('3x3, stride 1, dilation 1, one group only; the input gradient only for paddings up to 2', () => {
    expect(isWinogradConv(layoutOf(base), 'forward')).toBe(true);
    expect(isWinogradConv(layoutOf({ ...base, stride: [2, 2] }), 'forward')).toBe(false);
    expect(isWinogradConv(layoutOf({ ...base, dil: [2, 2] }), 'forward')).toBe(false);
    expect(isWinogradConv(layoutOf({ ...base, groups: 2 }), 'forward')).toBe(false);
    expect(isWinogradConv(layoutOf({ ...base, k: [3, 1] }), 'forward')).toBe(false);
    expect(isWinogradConv(layoutOf({ ...base, k: [5, 5] }), 'forward')).toBe(false);
    expect(isWinogradConv(layoutOf({ ...base, pad: [3, 3] }), 'forward')).toBe(true);
    expect(isWinogradConv(layoutOf({ ...base, pad: [3, 3] }), 'backwardInput')).toBe(false);
    expect(isWinogradConv(layoutOf({ ...base, c: 0 }), 'forward')).toBe(false);
  });

  it("'auto' (useWinogradConv): all but 2 or fewer input channels of the form's convolution into a 7x7 output", () => {
    const resnet = (c: number, o: number, hw: number) => layoutOf(k3({ name: '', n: 32, c, h: hw, w: hw, o, pad: [1, 1] }));
    expect([useWinogradConv(resnet(1, 8, 28), 'forward'), useWinogradConv(resnet(1, 8, 28), 'backwardInput')]).toEqual([true, true]);
    expect([useWinogradConv(resnet(1, 8, 7), 'forward'), useWinogradConv(resnet(1, 8, 7), 'backwardInput')]).toEqual([false, true]);
    expect([useWinogradConv(resnet(16, 32, 28), 'forward'), useWinogradConv(resnet(16, 32, 28), 'backwardInput')]).toEqual([true, true]);
    expect([useWinogradConv(resnet(32, 32, 7), 'forward'), useWinogradConv(resnet(2, 8, 7), 'forward'), useWinogradConv(resnet(3, 8, 7), 'forward')]).toEqual([true, false, true]);
    expect([useWinogradConv(resnet(8, 2, 7), 'backwardInput'), useWinogradConv(resnet(8, 2, 9), 'backwardInput')]).toEqual([false, true]);
    expect(useWinogradConv(layoutOf({ ...base, stride: [2, 2] }), 'forward')).toBe(false);
  });

  it("layouts it does not take keep conv.ts's kernels on 'on', still matching", async () => {
    const wasm = await createWasmBackend({ threads: 1 });
    try {
      wasm.winogradConvs = 'on';
      for (const t of [
        { ...base, stride: [2, 2] as [number, number] },
        { ...base, groups: 2 },
        { ...base, k: [5, 5] as [number, number], pad: [2, 2] as [number, number] },
      ]) {
        expect(await winogradCalls(() => checkCase(wasm, t, 5))).toBe(0);
      }
      // A padding of 3 runs the forward by Winograd, the input gradient by conv.ts.
      expect(await winogradCalls(() => checkCase(wasm, { ...base, pad: [3, 3] }, 6))).toBe(1);
    } finally {
      wasm.dispose();
    }
  });

  it("'off' gives conv.ts's results bit for bit, and 'auto' takes the form on the issue case", async () => {
    const wasm = await createWasmBackend({ threads: 1 });
    try {
      const t = CASES[0];
      const l = layoutOf(t);
      for (const kernel of KERNELS) {
        const [a, b] = operands(kernel, l, 7);
        wasm.winogradConvs = 'off';
        let off: Float32Array = new Float32Array();
        expect(await winogradCalls(async () => void (off = await run(wasm, kernel, l, a, b, sizes(kernel, l).out)))).toBe(0);
        // conv.ts's kernels, called on their own: the same bits as 'off'.
        const spy = vi.spyOn(WasmConv.prototype, kernel === 'conv2d' ? 'forward' : 'backwardInput');
        const again = await run(wasm, kernel, l, a, b, sizes(kernel, l).out);
        expect(spy).toHaveBeenCalledTimes(1);
        spy.mockRestore();
        expect(new Uint32Array(off.buffer)).toEqual(new Uint32Array(again.buffer));
        wasm.winogradConvs = 'auto';
        let auto: Float32Array = new Float32Array();
        expect(await winogradCalls(async () => void (auto = await run(wasm, kernel, l, a, b, sizes(kernel, l).out)))).toBe(1);
        // The two forms differ in rounding only.
        expect(new Uint32Array(auto.buffer)).not.toEqual(new Uint32Array(off.buffer));
        expectClose(auto, off, await absSums(kernel, l, a, b), `${kernel} auto vs off`);
      }
    } finally {
      wasm.dispose();
    }
  });
});

describe('fg.conv2d through the Winograd form on wasm agrees with cpu (forward and gradients)', () => {
  it('a 3x3 same-padded layer with a bias, and a valid one', async () => {
    const wasm = await createWasmBackend({ threads: 1 });
    try {
      wasm.winogradConvs = 'on';
      const compute = (be: Backend, pad: number) => {
        const on = (data: Float32Array, shape: number[]) => fg.Tensor.fromStorage(be.upload(data, 'float32'), shape, be).requiresGrad_();
        const x = on(randomF32(2 * 5 * 9 * 7, 1), [2, 5, 9, 7]);
        const w = on(randomF32(6 * 5 * 9, 2), [6, 5, 3, 3]);
        const b = on(randomF32(6, 3), [6]);
        const y = fg.conv2d(x, w, b, { padding: pad });
        y.square().sum().backward();
        return [y, x.grad!, w.grad!, b.grad!].map((t) => Float32Array.from(t.dataSync() as Float32Array));
      };
      for (const pad of [0, 1]) {
        const want = compute(cpu, pad);
        let got: Float32Array[] = [];
        // The forward and the input gradient ran by Winograd (the weight gradient stays on conv.ts).
        expect(await winogradCalls(() => void (got = compute(wasm, pad)))).toBe(2);
        want.forEach((v, i) => {
          const scale = Math.max(...v.map(Math.abs));
          for (let j = 0; j < v.length; j++) expect(Math.abs(got[i][j] - v[j]), `pad ${pad} result ${i} element ${j}`).toBeLessThanOrEqual(1e-5 * scale);
        });
      }
    } finally {
      wasm.dispose();
    }
  });

  it('the input gradient through the form against central differences of the loss', async () => {
    // The wasm gradients of a loss through the Winograd form against central differences of
    // the same loss in float32, on a small layer where the differences resolve the gradient.
    const wasm = await createWasmBackend({ threads: 1 });
    try {
      wasm.winogradConvs = 'on';
      const xs = randomF32(1 * 2 * 5 * 6, 11);
      const ws = randomF32(3 * 2 * 9, 12);
      const r = randomF32(3 * 5 * 6, 13);
      const loss = (xv: Float32Array, wv: Float32Array, grad: boolean) => {
        const x = fg.Tensor.fromStorage(wasm.upload(xv, 'float32'), [1, 2, 5, 6], wasm);
        const w = fg.Tensor.fromStorage(wasm.upload(wv, 'float32'), [3, 2, 3, 3], wasm);
        if (grad) {
          x.requiresGrad_();
          w.requiresGrad_();
        }
        const R = fg.Tensor.fromStorage(wasm.upload(r, 'float32'), [1, 3, 5, 6], wasm);
        const L = fg.conv2d(x, w, undefined, { padding: 1 }).mul(R).sum();
        if (grad) L.backward();
        return { L: (L.dataSync() as Float32Array)[0], gx: grad ? (x.grad!.dataSync() as Float32Array) : null };
      };
      let gx: Float32Array | null = null;
      // The forward and the input gradient ran by Winograd.
      expect(await winogradCalls(() => void ({ gx } = loss(xs, ws, true)))).toBe(2);
      const h = 1e-2;
      for (const i of [0, 7, 13, 29, 31, 44, 59]) {
        const plus = Float32Array.from(xs);
        const minus = Float32Array.from(xs);
        plus[i] += h;
        minus[i] -= h;
        // The loss is linear in x: central differences are exact up to float32 rounding.
        const fd = (loss(plus, ws, false).L - loss(minus, ws, false).L) / (2 * h);
        expect(Math.abs(gx![i] - fd), `dL/dx[${i}]`).toBeLessThanOrEqual(2e-3 * (1 + Math.abs(fd)));
      }
    } finally {
      wasm.dispose();
    }
  });
});
