/**
 * WebGPU parity with the CPU oracle for the kernels of issue 11's tensor ops: argsort (the merge
 * sort that sort/topk and the sorted scatterAdd stand on), cumsum, the prod reduction, scatterAdd
 * over sorted indices, and flip's negative-stride copy; then the op front-ends on a WebGPU
 * tensor. Sizes are small and awkward (1, 3, 7, 63, 65, 257) because SwiftShader is slow.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Backend, GatherLayout, ReduceLayout, SortLayout, Storage } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import type { DType } from '../src/tensor/dtype.js';
import { Tensor } from '../src/tensor/tensor.js';
import * as fg from '../src/index.js';
import { createWebGPUBackend } from '../src/kernels/webgpu/index.js';
import { expectOutputsMatch, f32, i32, runKernelOn, type KernelInput } from './helpers/kernel-parity.js';
import { acquireWebGPU, expectClose, expectExact, randomF32, randomI32, type Tolerance } from './helpers/webgpu.js';

const { backend: gpuOrNull, reason } = await acquireWebGPU();
const cpu = new CpuBackend();
/** The reduction kernel family the adapter does not pick (workgroup trees on a CPU emulator, or the reverse). */
const otherFamily = gpuOrNull ? await createWebGPUBackend({ cpuEmulated: !gpuOrNull.rt.cpuEmulated }) : null;

/** Runs `kernel` on the GPU and the CPU with the same inputs and compares every output. */
async function expectParity(
  inputs: KernelInput[],
  outs: { numel: number; dtype: DType }[],
  kernel: (b: Backend, ins: Storage[], outs: Storage[]) => void,
  tol: Tolerance | 'exact',
  what: string,
  gpu: Backend = gpuOrNull!,
): Promise<void> {
  const [got, want] = await runKernelOn([gpu, cpu], inputs, outs, kernel);
  expectOutputsMatch(got, want, tol, what);
}

/** float32 data with many ties, some NaN and infinities, and signed zeros. */
function awkward(n: number, seed: number): Float32Array {
  const x = Float32Array.from(randomI32(n, seed, -4, 5), (v) => v / 2);
  const specials = [NaN, Infinity, -Infinity, -0, 0, NaN];
  for (let k = 0; k < specials.length && k * 5 < n; k++) x[(k * 5 + seed) % n] = specials[k];
  return x;
}

const LAYOUTS: ReduceLayout[] = [
  { outer: 1, size: 1, inner: 1 },
  { outer: 2, size: 3, inner: 1 },
  { outer: 3, size: 7, inner: 2 },
  { outer: 1, size: 63, inner: 1 },
  { outer: 2, size: 65, inner: 3 },
  { outer: 1, size: 257, inner: 1 },
];

describe.skipIf(!gpuOrNull)(`tensor-op kernels on webgpu (${gpuOrNull ? gpuOrNull.info().adapter : `skipped: ${reason}`})`, { timeout: 120_000 }, () => {
  afterAll(async () => {
    await gpuOrNull!.sync();
    otherFamily!.destroy();
  });

  it.each(LAYOUTS)('argsort %o: stable, NaN largest, both directions, float32 and int32', async (l) => {
    const n = l.outer * l.size * l.inner;
    for (const descending of [false, true]) {
      const layout: SortLayout = { ...l, descending };
      const out = [{ numel: n, dtype: 'int32' as const }];
      await expectParity([f32(awkward(n, n))], out, (b, [x], [o]) => b.argsort(x, o, layout), 'exact', `argsort f32 ${JSON.stringify(layout)}`);
      await expectParity([i32(randomI32(n, n + 1, -3, 3))], out, (b, [x], [o]) => b.argsort(x, o, layout), 'exact', `argsort i32 ${JSON.stringify(layout)}`);
    }
  });

  it('argsort of bool data', async () => {
    const x: KernelInput = { data: Uint8Array.from(randomI32(20, 4, 0, 2)), dtype: 'bool' };
    await expectParity([x], [{ numel: 20, dtype: 'int32' }], (b, [s], [o]) => b.argsort(s, o, { outer: 2, size: 10, inner: 1, descending: true }), 'exact', 'argsort bool');
  });

  it.each(LAYOUTS)('cumsum %o', async (l) => {
    const n = l.outer * l.size * l.inner;
    const out = (dtype: DType) => [{ numel: n, dtype }];
    await expectParity([f32(randomF32(n, n + 2))], out('float32'), (b, [x], [o]) => b.cumsum(x, o, l), { atol: 1e-5 * Math.sqrt(l.size) }, `cumsum f32 ${JSON.stringify(l)}`);
    await expectParity([i32(randomI32(n, n + 3, -50, 50))], out('int32'), (b, [x], [o]) => b.cumsum(x, o, l), 'exact', `cumsum i32 ${JSON.stringify(l)}`);
  });

  it('cumsum carries NaN and infinities forward', async () => {
    const x = Float32Array.from([1, Infinity, 2, -Infinity, 3, NaN, 4, 5]);
    await expectParity([f32(x)], [{ numel: 8, dtype: 'float32' }], (b, [s], [o]) => b.cumsum(s, o, { outer: 2, size: 4, inner: 1 }), 'exact', 'cumsum non-finite');
  });

  it.each([...LAYOUTS, { outer: 3, size: 0, inner: 2 }])('prod reduction %o', async (l) => {
    const n = l.outer * l.size * l.inner;
    const outN = l.outer * l.inner;
    // Factors near 1 keep long products finite; a few zeros and a NaN test the propagation.
    const x = Float32Array.from(randomF32(n, n + 4, 0.8, 1.25), (v, i) => (i % 17 === 5 ? 0 : i === 11 ? NaN : v));
    const xi = Int32Array.from(randomI32(n, n + 5, -2, 3));
    for (const gpu of [gpuOrNull!, otherFamily!]) {
      const what = `${JSON.stringify(l)} ${gpu.rt.cpuEmulated ? 'loop' : 'tree'} kernels`;
      await expectParity([f32(x)], [{ numel: outN, dtype: 'float32' }], (b, [s], [o]) => b.reduce('prod', s, o, l), { atol: 1e-6, rtol: 1e-5 }, `prod f32 ${what}`, gpu);
      await expectParity([i32(xi)], [{ numel: outN, dtype: 'int32' }], (b, [s], [o]) => b.reduce('prod', s, o, l), 'exact', `prod i32 ${what}`, gpu);
    }
  });

  it.each([true, false])('scatterAdd over sorted indices, perPosition=%s: repeats and out-of-range indices', async (perPosition) => {
    for (const l of [
      { outer: 3, inner: 5, xDim: 7, idxDim: 9, perPosition },
      { outer: 1, inner: 1, xDim: 4, idxDim: 65, perPosition },
      { outer: 2, inner: 3, xDim: 1, idxDim: 1, perPosition },
      { outer: 2, inner: 3, xDim: 5, idxDim: 0, perPosition },
    ] as GatherLayout[]) {
      const idxN = perPosition ? l.outer * l.idxDim * l.inner : l.idxDim;
      const idx = randomI32(idxN, idxN + 6, 0, l.xDim);
      if (idxN > 2) {
        idx[1] = l.xDim; // ignored, as on the CPU
        idx[2] = -1;
      }
      const srcN = l.outer * l.idxDim * l.inner;
      const outN = l.outer * l.xDim * l.inner;
      // The GPU adds each output's sources in ascending source order, as the CPU does: bit for bit.
      await expectParity([f32(randomF32(srcN, srcN + 7)), i32(idx)], [{ numel: outN, dtype: 'float32' }], (b, [s, i], [o]) => b.scatterAdd(s, i, o, l), 'exact', `scatterAdd ${JSON.stringify(l)}`);
      await expectParity([i32(randomI32(srcN, srcN + 8, -9, 9)), i32(idx)], [{ numel: outN, dtype: 'int32' }], (b, [s, i], [o]) => b.scatterAdd(s, i, o, l), 'exact', `scatterAdd int ${JSON.stringify(l)}`);
    }
  });

  it('stridedCopy with negative strides (flip)', async () => {
    const shape = [3, 4, 5];
    const x = randomF32(60, 12);
    const layout = { shape, srcStrides: [-20, 5, -1], srcOffset: 40 + 4, dstStrides: [20, 5, 1], dstOffset: 0 };
    await expectParity([f32(x)], [{ numel: 60, dtype: 'float32' }], (b, [s], [o]) => b.stridedCopy(s, o, layout), 'exact', 'flip copy');
  });

  it('op front-ends on webgpu tensors agree with cpu', async () => {
    const gpu = gpuOrNull!;
    const data = awkward(2 * 3 * 7, 3);
    const on = (b: Backend) => Tensor.fromStorage(b.upload(data, 'float32'), [2, 3, 7], b);
    const programs: [string, (x: Tensor) => Tensor[]][] = [
      ['sort', (x) => Object.values(fg.sort(x, 1, true))],
      ['topk', (x) => Object.values(fg.topk(x, 3, -1))],
      ['maxWithIndices', (x) => Object.values(fg.maxWithIndices(x, 2))],
      ['cumsum', (x) => [fg.cumsum(x, -1)]],
      ['prod', (x) => [fg.prod(x.clamp(-1.5, 1.5), 0)]],
      ['flip', (x) => [fg.flip(x, [0, 2])]],
      ['tril and maskedFill', (x) => [fg.tril(x, 1), fg.maskedFill(x, x.gt(0), -5)]],
      ['any and all', (x) => [fg.any(x, 2), fg.all(x, 1)]],
      ['einsum', (x) => [fg.einsum('bij,bkj->bik', x.clamp(-2, 2), x.clamp(-2, 2))]],
    ];
    for (const [name, program] of programs) {
      const [g, c] = [program(on(gpu)), program(on(cpu))];
      expect(g.length).toBe(c.length);
      for (let k = 0; k < g.length; k++) {
        expect(g[k].shape, `${name} out${k} shape`).toEqual(c[k].shape);
        const gv = await g[k].data();
        const cv = await c[k].data();
        // Float sums and products accumulate in f32 on the GPU, in float64 on the CPU.
        if (g[k].dtype === 'float32') expectClose(gv, cv, { atol: 1e-5 }, `${name} out${k}`);
        else expectExact(gv, cv, `${name} out${k}`);
      }
      fg.dispose([g, c]);
    }
  });
});
