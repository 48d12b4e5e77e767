/**
 * The narrow convolution paths of the wasm backend against the CPU reference: the small ResNet's
 * layers at their real sizes (stem 1 -> 8, stride-2 8 -> 16 and 16 -> 32, 1x1 stride-2
 * shortcuts), and the forms this stop added around them:
 * - a strided input gradient whose stride phases share one padded copy of dY (each phase reads
 *   it shifted by its own padding) and whose 8-channel phases are stored straight into their
 *   pixels of dX (conv_fwd_strided: whole tiles as lane stores every second pixel, partial tiles
 *   and other steps a lane at a time);
 * - a weight gradient summed per chunk of images and the chunks added in order (conv_wgrad_out),
 *   with batches above, below and not a multiple of the chunk count.
 * One thread and three (every call split): both must match the reference, and each other bit
 * for bit (test/wasm-threads.test.ts checks the splits themselves).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { type Case, checkParity, KERNELS, layoutOf, run, sizes } from './helpers/conv-parity.js';
import { randomF32 } from './helpers/webgpu.js';

const CASES: Case[] = [
  // The small ResNet (widths 8/16/32, 28x28 input) at batch 4.
  { name: 'resnet stem 1 -> 8, 28x28', n: 4, c: 1, h: 28, w: 28, o: 8, k: [3, 3], pad: [1, 1] },
  { name: 'resnet 8 -> 16 stride 2, 28x28', n: 4, c: 8, h: 28, w: 28, o: 16, k: [3, 3], stride: [2, 2], pad: [1, 1] },
  { name: 'resnet 16 -> 32 stride 2, 14x14', n: 4, c: 16, h: 14, w: 14, o: 32, k: [3, 3], stride: [2, 2], pad: [1, 1] },
  { name: 'resnet shortcut 8 -> 16 1x1 stride 2', n: 4, c: 8, h: 28, w: 28, o: 16, k: [1, 1], stride: [2, 2] },
  { name: 'resnet shortcut 16 -> 32 1x1 stride 2', n: 4, c: 16, h: 14, w: 14, o: 32, k: [1, 1], stride: [2, 2] },
  // Phases of different paddings sharing one buffer: 5x5 at stride 2 has phases of 3 and 2 taps
  // per side (buffer padded by 2, the 2-tap phases read it shifted by one row and column).
  { name: '5x5 stride 2, phases of 3 and 2 taps', n: 3, c: 8, h: 17, w: 18, o: 16, k: [5, 5], stride: [2, 2], pad: [2, 2] },
  { name: '4x4 stride 2 (every phase 2x2 taps), odd width', n: 2, c: 16, h: 12, w: 13, o: 8, k: [4, 4], stride: [2, 2], pad: [1, 1] },
  // Stride 3 (lane stores 12 bytes apart) and mixed strides, 8-channel phases.
  { name: '3x3 stride 3', n: 2, c: 8, h: 16, w: 17, o: 8, k: [3, 3], stride: [3, 3], pad: [1, 1] },
  { name: '3x3 stride (2, 1)', n: 2, c: 8, h: 13, w: 11, o: 16, k: [3, 3], stride: [2, 1], pad: [1, 1] },
  { name: '3x3 stride (1, 2), groups 2', n: 2, c: 16, h: 9, w: 15, o: 16, k: [3, 3], stride: [1, 2], pad: [1, 1], groups: 2 },
  // Phase rows of 1, 2 and 3 columns: nothing but partial tiles.
  { name: 'stride 2, tiny images', n: 5, c: 8, h: 5, w: 3, o: 8, k: [3, 3], stride: [2, 2], pad: [1, 1] },
  // The weight gradient's image chunks: 8 of 2-3 images, fewer chunks than 8, one image.
  { name: 'weight gradient, 21 images', n: 21, c: 8, h: 8, w: 8, o: 8, k: [3, 3], pad: [1, 1] },
  { name: 'weight gradient, 3 images, 3 tiles', n: 3, c: 4, h: 9, w: 9, o: 24, k: [3, 3], pad: [1, 1] },
  { name: 'weight gradient, one image, 1x1', n: 1, c: 5, h: 6, w: 6, o: 13, k: [1, 1] },
];

describe('wasm narrow convolution paths against the CPU reference, on one thread and three', () => {
  let one: WasmBackend;
  let three: WasmBackend;
  beforeAll(async () => {
    one = await createWasmBackend({ threads: 1 });
    three = await createWasmBackend({ threads: 3, minThreadedWork: 1 });
  });
  afterAll(() => [one, three].forEach((b) => b?.dispose()));

  CASES.forEach((t, i) =>
    it(t.name, async () => {
      await checkParity(one, t, 3100 + 10 * i);
      await checkParity(three, t, 3100 + 10 * i);
      const l = layoutOf(t);
      for (const kernel of KERNELS) {
        const s = sizes(kernel, l);
        const [a, b] = [randomF32(s.a, 3500 + i), randomF32(s.b, 3600 + i)];
        expect(Array.from(await run(three, kernel, l, a, b, s.out)), kernel).toEqual(Array.from(await run(one, kernel, l, a, b, s.out)));
      }
      expect(one.memory().liveBuffers).toBe(0);
      expect(three.memory().liveBuffers).toBe(0);
    }),
  );

  it('an input gradient of zeros where no window reaches: every pixel written, none left as it was', async () => {
    // 1x1 at stride 2: three pixels of four get no gradient; run() fills the output with NaN first.
    const t: Case = { name: 'zeros', n: 2, c: 8, h: 9, w: 9, o: 8, k: [1, 1], stride: [2, 2] };
    const l = layoutOf(t);
    const s = sizes('conv2dBackwardInput', l);
    const dx = await run(three, 'conv2dBackwardInput', l, randomF32(s.a, 1), randomF32(s.b, 2), s.out);
    for (let n = 0; n < l.n * l.c; n++)
      for (let y = 0; y < l.h; y++)
        for (let x = 0; x < l.w; x++) {
          const v = dx[(n * l.h + y) * l.w + x];
          if (y % 2 || x % 2) expect(v, `pixel ${n}/${y}/${x}`).toBe(0);
          else expect(Number.isFinite(v) && v !== 0, `pixel ${n}/${y}/${x}`).toBe(true);
        }
  });
});
