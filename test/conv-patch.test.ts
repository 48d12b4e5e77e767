/**
 * Convolutions whose windows tile the input (stride == kernel, no padding: patch embeddings) on
 * the wasm backend as gemms over the patch matrix (src/kernels/wasm/conv-patch.ts): forward,
 * input gradient and weight gradient against the CPU reference; which layouts take the form (and
 * that the others keep conv.ts's kernels); results that do not depend on the thread count; and
 * the autograd front-end (fg.conv2d with a bias) through it, against cpu.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import * as fg from '../src/index.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { isPatchConv, PatchConv, usePatchConv } from '../src/kernels/wasm/conv-patch.js';
import type { Backend } from '../src/kernels/backend.js';
import { randomF32 } from './helpers/webgpu.js';
import { type Case, checkParity, cpu, expectNear, KERNELS, layoutOf, run, sizes } from './helpers/conv-parity.js';

const patch = (t: Omit<Case, 'stride'>): Case => ({ ...t, stride: t.k });

const PATCH_CASES: Case[] = [
  patch({ name: 'ViT patch embedding 1 -> 32, 28x28, 7x7', n: 2, c: 1, h: 28, w: 28, o: 32, k: [7, 7] }),
  patch({ name: 'batch 1, 3 -> 6 channels (not a multiple of 4), 4x4', n: 1, c: 3, h: 12, w: 16, o: 6, k: [4, 4] }),
  patch({ name: 'odd image 21x15, 3x5 windows, 8 -> 5 channels', n: 3, c: 8, h: 21, w: 15, o: 5, k: [3, 5] }),
  patch({ name: '16x16 windows, 3 -> 7 channels, one row of patches', n: 2, c: 3, h: 16, w: 48, o: 7, k: [16, 16] }),
  patch({ name: '2x2 windows, 8 -> 13 channels', n: 2, c: 8, h: 10, w: 6, o: 13, k: [2, 2] }),
  patch({ name: 'one output channel, 1x7 windows', n: 2, c: 2, h: 3, w: 14, o: 1, k: [1, 7] }),
  patch({ name: 'a single patch (the window is the image)', n: 3, c: 2, h: 5, w: 5, o: 9, k: [5, 5] }),
];

/** Layouts the patch form must leave to conv.ts. */
const OTHER_CASES: Case[] = [
  // 29 = 4*7 + 1: the last row and column lie in no window (their input gradient is zero).
  { name: 'not a whole number of windows (29x29, 7x7 stride 7)', n: 2, c: 1, h: 29, w: 29, o: 8, k: [7, 7], stride: [7, 7] },
  { name: 'padded (4x4 stride 4, pad 1)', n: 2, c: 3, h: 14, w: 14, o: 5, k: [4, 4], stride: [4, 4], pad: [1, 1] },
  { name: 'stride below the kernel (4x4 stride 2)', n: 1, c: 2, h: 12, w: 12, o: 4, k: [4, 4], stride: [2, 2] },
  { name: 'grouped (4x4 stride 4, groups 2)', n: 1, c: 4, h: 8, w: 8, o: 6, k: [4, 4], stride: [4, 4], groups: 2 },
  { name: 'dilated (2x2 stride 2, dilation 2)', n: 1, c: 2, h: 8, w: 8, o: 3, k: [2, 2], stride: [2, 2], dil: [2, 2] },
];

/** Calls of the patch form's three entry points while f runs. */
async function patchCalls(f: () => Promise<void>): Promise<number> {
  const spies = (['forward', 'backwardInput', 'backwardWeight'] as const).map((m) => vi.spyOn(PatchConv.prototype, m));
  try {
    await f();
    return spies.reduce((s, sp) => s + sp.mock.calls.length, 0);
  } finally {
    for (const sp of spies) sp.mockRestore();
  }
}

describe('patch convolutions on wasm match the CPU reference', () => {
  let wasm: WasmBackend;
  beforeAll(async () => {
    wasm = await createWasmBackend({ threads: 1 });
  });
  afterAll(() => wasm?.dispose());
  afterEach(() => {
    wasm.patchConvs = 'auto';
    expect(wasm.memory().liveBuffers).toBe(0);
  });

  PATCH_CASES.forEach((t, i) =>
    it(t.name, async () => {
      expect(isPatchConv(layoutOf(t))).toBe(true);
      wasm.patchConvs = 'on';
      // All three kernels ran as patch gemms (checkParity runs each once on wasm).
      expect(await patchCalls(() => checkParity(wasm, t, 40 + 10 * i))).toBe(3);
    }),
  );

  OTHER_CASES.forEach((t, i) =>
    it(`${t.name}: conv.ts's kernels, still matching`, async () => {
      expect(isPatchConv(layoutOf(t))).toBe(false);
      wasm.patchConvs = 'on';
      expect(await patchCalls(() => checkParity(wasm, t, 140 + 10 * i))).toBe(0);
    }),
  );

  it("'auto' takes the form for windows of 16 taps or more (the ViT's), not for 2x2 ones; 'off' never", async () => {
    const vit = layoutOf(PATCH_CASES[0]);
    const small = layoutOf(PATCH_CASES[4]);
    const k3 = layoutOf(patch({ name: '3x3', n: 1, c: 1, h: 6, w: 6, o: 2, k: [3, 3] }));
    for (const kernel of ['forward', 'backwardInput', 'backwardWeight'] as const) {
      expect([usePatchConv(vit, kernel), usePatchConv(small, kernel), usePatchConv(k3, kernel)]).toEqual([true, false, kernel === 'backwardInput']);
    }
    const callsFor = (t: Case) => patchCalls(() => checkParity(wasm, t, 7));
    wasm.patchConvs = 'auto';
    expect(await callsFor(PATCH_CASES[0])).toBe(3);
    expect(await callsFor(PATCH_CASES[4])).toBe(0);
    wasm.patchConvs = 'off';
    expect(await callsFor(PATCH_CASES[0])).toBe(0);
  });

  it('infinities and NaNs of the input reach the outputs the reference gives them', async () => {
    const t = PATCH_CASES[1];
    const l = layoutOf(t);
    wasm.patchConvs = 'on';
    for (const kernel of KERNELS) {
      const s = sizes(kernel, l);
      const a = randomF32(s.a, 60);
      const b = randomF32(s.b, 61);
      a[5] = Infinity;
      a[s.a - 3] = NaN;
      const want = await run(cpu, kernel, l, a, b, s.out);
      const got = await run(wasm, kernel, l, a, b, s.out);
      const finite = (x: Float32Array) => x.map((v) => (Number.isFinite(v) ? v : 0));
      for (let i = 0; i < want.length; i++) expect(Object.is(got[i], want[i]) || (Number.isFinite(want[i]) && Number.isFinite(got[i])), `${kernel} ${i}`).toBe(true);
      expectNear(finite(got), finite(want), s.terms, kernel);
    }
  });
});

describe('patch convolutions do not depend on the thread count', () => {
  it('2 threads give 1 thread\'s bits, on shapes whose gemms split (by image, by rows and by columns)', async () => {
    const one = await createWasmBackend({ threads: 1 });
    const two = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
    try {
      one.patchConvs = two.patchConvs = 'on';
      expect(two.threadsUnavailable).toBeNull();
      const cases: Case[] = [
        PATCH_CASES[0],
        patch({ name: 'batch 1, wide', n: 1, c: 3, h: 32, w: 64, o: 40, k: [4, 4] }),
        patch({ name: 'many channels', n: 3, c: 2, h: 14, w: 14, o: 70, k: [7, 7] }),
      ];
      for (const t of cases) {
        const l = layoutOf(t);
        for (const kernel of KERNELS) {
          const s = sizes(kernel, l);
          const a = randomF32(s.a, 70);
          const b = randomF32(s.b, 71);
          const [r1, r2] = [await run(one, kernel, l, a, b, s.out), await run(two, kernel, l, a, b, s.out)];
          expect(new Uint32Array(r2.buffer), `${t.name} ${kernel}`).toEqual(new Uint32Array(r1.buffer));
          expectNear(r1, await run(cpu, kernel, l, a, b, s.out), s.terms, `${t.name} ${kernel}`);
        }
      }
      expect(two.memory().liveBuffers).toBe(0);
    } finally {
      one.dispose();
      two.dispose();
    }
  });
});

describe('fg.conv2d with a bias through the patch form on wasm agrees with cpu (forward and gradients)', () => {
  it('a ViT-style patch embedding', async () => {
    const wasm = await createWasmBackend({ threads: 1 });
    try {
      wasm.patchConvs = 'on';
      const compute = (be: Backend) => {
        const on = (data: Float32Array, shape: number[]) => fg.Tensor.fromStorage(be.upload(data, 'float32'), shape, be).requiresGrad_();
        const x = on(randomF32(2 * 3 * 12 * 8, 1), [2, 3, 12, 8]);
        const w = on(randomF32(5 * 3 * 4 * 4, 2), [5, 3, 4, 4]);
        const b = on(randomF32(5, 3), [5]);
        const y = fg.conv2d(x, w, b, { stride: 4 });
        y.square().sum().backward();
        return [y, x.grad!, w.grad!, b.grad!].map((t) => Float32Array.from(t.dataSync() as Float32Array));
      };
      const want = compute(cpu);
      let got: Float32Array[] = [];
      // The forward and both gradients ran as patch gemms.
      expect(await patchCalls(async () => void (got = compute(wasm)))).toBe(3);
      want.forEach((v, i) => expectNear(got[i], v, 200, `result ${i}`));
    } finally {
      wasm.dispose();
    }
  });
});
