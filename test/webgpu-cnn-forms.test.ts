/**
 * The register-tiled direct convolution forms that a CPU-emulated adapter (SwiftShader) runs
 * (src/kernels/webgpu/conv.ts: 4 channels x 4 pixels per invocation; the input gradient's pixel
 * tiles one stride phase apart; the weight gradient in row chunks plus a reduction), against the
 * CPU reference: the small ResNet's exact layer shapes, channel counts and widths that are not
 * multiples of the tile, groups, strides with and without dilation (including stride phases that
 * no tap reaches), and the weight gradient's chunking with one chunk, many, and a short last one.
 * The form is forced with `cpuEmulated: true`, so a real GPU tests it too.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Backend } from '../src/kernels/backend.js';
import { createWebGPUBackend, type WebGPUBackend } from '../src/kernels/webgpu/index.js';
import { type Case, checkParity, cpu, KERNELS, layoutOf, run, sizes } from './helpers/conv-parity.js';
import { acquireWebGPU, randomF32 } from './helpers/webgpu.js';

/** resnetSmall (widths 8/16/32, 28x28x1 input) at batch 2: stem, stages, stride-2 shortcuts. */
const RESNET: Case[] = [
  { name: 'stem 1 -> 8, 28x28', n: 2, c: 1, h: 28, w: 28, o: 8, k: [3, 3], pad: [1, 1] },
  { name: '8 -> 8, 28x28', n: 2, c: 8, h: 28, w: 28, o: 8, k: [3, 3], pad: [1, 1] },
  { name: '8 -> 16 stride 2', n: 2, c: 8, h: 28, w: 28, o: 16, k: [3, 3], stride: [2, 2], pad: [1, 1] },
  { name: '8 -> 16 1x1 stride 2 shortcut', n: 2, c: 8, h: 28, w: 28, o: 16, k: [1, 1], stride: [2, 2] },
  { name: '16 -> 16, 14x14', n: 2, c: 16, h: 14, w: 14, o: 16, k: [3, 3], pad: [1, 1] },
  { name: '16 -> 32 stride 2', n: 2, c: 16, h: 14, w: 14, o: 32, k: [3, 3], stride: [2, 2], pad: [1, 1] },
  { name: '16 -> 32 1x1 stride 2 shortcut', n: 2, c: 16, h: 14, w: 14, o: 32, k: [1, 1], stride: [2, 2] },
  { name: '32 -> 32, 7x7', n: 2, c: 32, h: 7, w: 7, o: 32, k: [3, 3], pad: [1, 1] },
];

const ODD: Case[] = [
  { name: '5 -> 7 channels, width 13 (partial tiles)', n: 3, c: 5, h: 6, w: 13, o: 7, k: [3, 3], pad: [1, 1] },
  { name: 'height 1, width 1', n: 2, c: 3, h: 1, w: 1, o: 5, k: [1, 1] },
  { name: 'groups 3, 5 outputs and 2 inputs per group', n: 2, c: 6, h: 9, w: 11, o: 15, k: [3, 3], pad: [1, 1], groups: 3 },
  { name: 'depthwise, stride 2, odd size', n: 2, c: 6, h: 9, w: 9, o: 6, k: [3, 3], stride: [2, 2], pad: [1, 1], groups: 6 },
  { name: 'stride 3, dilation 2 (every third tap column)', n: 2, c: 3, h: 13, w: 14, o: 5, k: [3, 4], stride: [3, 3], pad: [2, 1], dil: [2, 2] },
  { name: 'stride 2, dilation 2 (phases no tap reaches)', n: 1, c: 4, h: 11, w: 12, o: 6, k: [3, 3], stride: [2, 2], pad: [1, 2], dil: [2, 2] },
  { name: 'stride 4, dilation 2, pad 1', n: 1, c: 3, h: 15, w: 17, o: 4, k: [3, 3], stride: [4, 4], pad: [1, 1], dil: [2, 2] },
  { name: 'stride 2x3, 2x5 kernel, padding wider than the kernel', n: 2, c: 3, h: 7, w: 10, o: 9, k: [2, 5], stride: [2, 3], pad: [3, 6] },
  { name: 'last rows and columns outside every window', n: 2, c: 3, h: 8, w: 9, o: 4, k: [3, 3], stride: [2, 2] },
  // The weight gradient's chunking: many weights (one chunk, written straight to the output)...
  { name: '64 -> 64 on 3x3 (weight gradient in one chunk)', n: 1, c: 64, h: 3, w: 3, o: 64, k: [3, 3], pad: [1, 1] },
  // ... and one weight tile over 913 rows: chunks of 2 rows and a last chunk of 1.
  { name: '1 -> 1 over 913 rows (short last chunk)', n: 1, c: 1, h: 913, w: 3, o: 1, k: [3, 3], pad: [1, 1] },
];

const { backend: adapter, reason } = await acquireWebGPU();
let direct: WebGPUBackend | null = null;

describe.skipIf(!adapter)(`WebGPU register-tiled direct convolution forms match the CPU reference${adapter ? '' : ` (skipped: ${reason})`}`, () => {
  const be = async (): Promise<WebGPUBackend> => (direct ??= await createWebGPUBackend({ cpuEmulated: true }));
  afterEach(async () => expect((await be()).memory().liveBuffers).toBe(0));
  afterAll(() => direct?.destroy?.());

  it('runs the CPU-emulated form', async () => expect((await be()).rt.cpuEmulated).toBe(true));
  RESNET.forEach((t, i) => it(`resnetSmall layer: ${t.name}`, async () => checkParity(await be(), t, 500 + 10 * i)));
  ODD.forEach((t, i) => it(t.name, async () => checkParity(await be(), t, 700 + 10 * i)));

  it('a NaN in the input or dY reaches exactly the outputs the reference gives it, a NaN weight at least those', async () => {
    const gpu: Backend = await be();
    // The kernels for which some case has both NaN and finite outputs (padding and window edges at work).
    const mixed = new Set<string>();
    for (const t of [ODD[0], ODD[4], RESNET[2]]) {
      const l = layoutOf(t);
      for (const kernel of KERNELS) {
        const s = sizes(kernel, l);
        for (const which of ['a', 'b'] as const) {
          const a = randomF32(s.a, 31);
          const b = randomF32(s.b, 32);
          (which === 'a' ? a : b)[Math.floor((which === 'a' ? s.a : s.b) / 3)] = NaN;
          const want = await run(cpu, kernel, l, a, b, s.out);
          const got = await run(gpu, kernel, l, a, b, s.out);
          if (want.some(Number.isNaN) && want.some((v) => !Number.isNaN(v))) mixed.add(kernel);
          // NaN lands where the reference puts it, padding included (torch's rule: see
          // test/webgpu-conv-padding-nonfinite.test.ts).
          for (let i = 0; i < want.length; i++) {
            expect(Number.isNaN(got[i]), `${kernel} ${t.name}, NaN in ${which}, output ${i}`).toBe(Number.isNaN(want[i]));
          }
        }
      }
    }
    expect([...mixed].sort()).toEqual([...KERNELS].sort());
  });
});
