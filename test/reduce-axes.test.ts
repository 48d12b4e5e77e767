/**
 * Reductions over several non-adjacent axes (BatchNorm's [0,2,3]) run as a chain of
 * contiguous-block reductions instead of permuting x into a copy first (issue 13). Checked on
 * every backend against a float64 oracle written here from the definition, bit-for-bit against
 * the same chain spelled out with single-block reductions (so the summation order is the
 * documented one), deterministic run to run, free of strided copies, and differentiable.
 */
import { describe, expect, it } from 'vitest';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import type { DType, TypedArray } from '../src/tensor/dtype.js';
import { Tensor } from '../src/tensor/tensor.js';
import * as fg from '../src/index.js';
import { acquireWebGPU, randomF32 } from './helpers/webgpu.js';

const { backend: gpu } = await acquireWebGPU();
const wasm = await createWasmBackend({ threads: 1 });
const backends: [string, Backend][] = [['cpu', new CpuBackend()], ['wasm', wasm]];
if (gpu) backends.push(['webgpu', gpu]);

function on(b: Backend, data: TypedArray, shape: number[], dtype: DType = 'float32'): Tensor {
  return Tensor.fromStorage(b.upload(data, dtype), shape, b);
}

type Op = 'sum' | 'max' | 'min' | 'prod';

/** The reduction from its definition: float64, row-major over the reduced axes, NaN-propagating max/min. */
function oracle(op: Op, x: TypedArray, shape: number[], axes: number[]): { values: number[]; shape: number[] } {
  const outShape = shape.filter((_, i) => !axes.includes(i));
  const outSize = outShape.reduce((a, b) => a * b, 1);
  const init = op === 'sum' ? 0 : op === 'prod' ? 1 : op === 'max' ? -Infinity : Infinity;
  const values = new Array<number>(outSize).fill(init);
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  const total = shape.reduce((a, b) => a * b, 1);
  for (let flat = 0; flat < total; flat++) {
    let o = 0;
    for (let i = 0; i < shape.length; i++) {
      if (axes.includes(i)) continue;
      o = o * shape[i] + (Math.floor(flat / strides[i]) % shape[i]);
    }
    const v = x[flat];
    const acc = values[o];
    if (op === 'sum') values[o] = acc + v;
    else if (op === 'prod') values[o] = acc * v;
    else if (Number.isNaN(v) || Number.isNaN(acc)) values[o] = NaN;
    else values[o] = op === 'max' ? Math.max(acc, v) : Math.min(acc, v);
  }
  return { values, shape: outShape };
}

const cases: { shape: number[]; axes: number[] }[] = [
  { shape: [5, 3, 4, 6], axes: [0, 2, 3] }, // BatchNorm2d's batch statistics
  { shape: [3, 4, 5, 2], axes: [0, 2] },
  { shape: [2, 3, 4, 5], axes: [1, 3] },
  { shape: [2, 3, 4, 5, 2], axes: [0, 2, 4] },
  { shape: [4, 1, 3, 1], axes: [1, 3] }, // size-1 reduced axes
  { shape: [0, 3, 4], axes: [0, 2] }, // empty: the sum is 0 for each of the 3 outputs
];

for (const [name, b] of backends) {
  describe(`reduce over non-adjacent axes on ${name}`, () => {
    for (const { shape, axes } of cases) {
      const n = shape.reduce((a, c) => a * c, 1);
      const data = randomF32(n, 7 + n, -2, 2);
      const ops: Op[] = n === 0 ? ['sum', 'prod'] : ['sum', 'max', 'min', 'prod'];
      for (const op of ops) {
        it(`${op} over ${JSON.stringify(axes)} of [${shape}] agrees with the float64 oracle`, async () => {
          const x = on(b, data, shape);
          const got = fg[op](x, axes);
          const want = oracle(op, data, shape, axes);
          expect(got.shape).toEqual(want.shape);
          const g = Array.from(await got.data());
          for (let i = 0; i < want.values.length; i++) {
            if (op === 'max' || op === 'min') expect(g[i], `${op} output ${i}`).toBe(Math.fround(want.values[i]));
            else expect(Math.abs(g[i] - want.values[i]), `${op} output ${i}: ${g[i]} vs ${want.values[i]}`).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(want.values[i])) * Math.sqrt(n));
          }
          const kept = fg[op](x, axes, true);
          expect(kept.shape).toEqual(shape.map((d, i) => (axes.includes(i) ? 1 : d)));
          expect(Array.from(await kept.data())).toEqual(g);
        });
      }
    }

    it('max and min propagate NaN and keep infinities through the chain', async () => {
      const data = randomF32(2 * 3 * 4, 3);
      data[5] = NaN; // output channel 1 (index 5 = [0,1,1])
      data[13] = Infinity; // [1,0,1] -> channel 0
      const x = on(b, data, [2, 3, 4]);
      for (const op of ['max', 'min'] as const) {
        const got = Array.from(await fg[op](x, [0, 2]).data());
        expect(got).toEqual(oracle(op, data, [2, 3, 4], [0, 2]).values.map(Math.fround));
        expect(Number.isNaN(got[1])).toBe(true);
      }
    });

    it('a sum over [0,2,3] is the chain sum over [2,3] then over 0, bit for bit, and the same every run', async () => {
      const shape = [9, 5, 7, 7];
      const data = randomF32(9 * 5 * 49, 11, -3, 3);
      const x = on(b, data, shape);
      const chained = await fg.sum(x, [0, 2, 3]).data();
      const explicit = await fg.sum(fg.sum(x, [2, 3], true), 0).data();
      expect(Array.from(chained)).toEqual(Array.from(explicit).slice(0, 5));
      expect(Array.from(await fg.sum(x, [0, 2, 3]).data())).toEqual(Array.from(chained));
      expect(Array.from(await fg.mean(x, [0, 2, 3]).data())).toEqual(Array.from(await fg.mean(x, [0, 2, 3]).data()));
    });

    it('makes no permuted copy of x', () => {
      const x = on(b, randomF32(4 * 3 * 5 * 5, 5), [4, 3, 5, 5]);
      const original = b.stridedCopy;
      let copies = 0;
      b.stridedCopy = function (...args: Parameters<Backend['stridedCopy']>) {
        copies++;
        return original.apply(this, args);
      };
      try {
        fg.sum(x, [0, 2, 3]).dispose();
        fg.max(x, [0, 2, 3]).dispose();
      } finally {
        b.stridedCopy = original;
      }
      expect(copies).toBe(0);
    });
  });
}

describe('reduce over non-adjacent axes: gradients', () => {
  it('gradcheck of sum, mean, var and max over [0,2] (float64, cpu)', () => {
    const x = fg.tensor(Float64Array.from(randomF32(3 * 2 * 4, 21, -1, 1)), { shape: [3, 2, 4], dtype: 'float64', requiresGrad: true });
    expect(fg.gradcheck((t) => fg.sum(fg.mul(t, t), [0, 2]), [x])).toBe(true);
    expect(fg.gradcheck((t) => fg.mean(t, [0, 2], true), [x])).toBe(true);
    expect(fg.gradcheck((t) => fg.variance(t, [0, 2]), [x])).toBe(true);
    expect(fg.gradcheck((t) => fg.max(t, [0, 2]), [x])).toBe(true);
  });
});

describe('wasm stridedCopy of broadcast runs (the expand in a sum over [0,2,3]\'s backward)', () => {
  const cpu = new CpuBackend();
  const bytes = (a: TypedArray) => Array.from(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
  const sources: Record<string, TypedArray> = {
    float32: new Float32Array(new Uint32Array([0x7fc01234, 0x80000000, 0x3f800000, 0xff800000, 0x00000001]).buffer), // NaN payload, -0, 1, -inf, denormal
    float64: Float64Array.from([-0, 1.5, NaN, Infinity, 5e-324]),
    int32: Int32Array.from([-7, 2147483647, -2147483648, 0, 3]),
    bool: Uint8Array.from([1, 0, 1, 1, 0]),
  };
  for (const [dtype, src] of Object.entries(sources) as [DType, TypedArray][]) {
    for (const run of [15, 16, 33]) {
      it(`${dtype}, runs of ${run}: bit for bit the cpu reference`, async () => {
        // [3 (src stride 0), 4 (src stride 1), run (src stride 0)] into a contiguous dst at offset 2.
        const layout = { shape: [3, 4, run], srcStrides: [0, 1, 0], srcOffset: 1, dstStrides: [4 * run, run, 1], dstOffset: 2 };
        const numel = 2 + 12 * run;
        const out: TypedArray[] = [];
        for (const b of [wasm, cpu] as Backend[]) {
          const s = b.upload(src, dtype);
          const d = b.alloc(numel, dtype);
          b.stridedCopy(s, d, layout);
          out.push(await b.read(d));
          b.release(s);
          b.release(d);
        }
        expect(bytes(out[0])).toEqual(bytes(out[1]));
        expect(out[1][2 + 5 * run]).toEqual(src[2]); // [0,1,0] reads src[1 + 1]
      });
    }
  }
});

describe('wasm allocUninit: unary and binary outputs are written in full over a reused, dirty buffer', () => {
  const cpu = new CpuBackend();
  /** Leaves pooled buffers of exactly `numel` elements of every dtype holding nonzero junk. */
  async function poison(numel: number): Promise<void> {
    for (const dtype of ['float64', 'float32', 'int32', 'bool'] as DType[]) {
      const s = wasm.alloc(numel, dtype);
      wasm.fill(s, dtype === 'bool' ? 1 : dtype === 'int32' ? -1 : NaN);
      wasm.release(s);
    }
    // The test only means something if the next output does land on junk.
    const probe = wasm.allocUninit(numel, 'float32');
    expect(Array.from(await wasm.read(probe)).every((v) => v !== 0)).toBe(true);
    wasm.release(probe);
  }
  const cases: { what: string; shapes: number[][]; dtype: DType; f: (...t: Tensor[]) => Tensor }[] = [
    { what: 'neg', shapes: [[3, 37]], dtype: 'float32', f: (a) => fg.neg(a) },
    { what: 'relu', shapes: [[5, 1, 13]], dtype: 'float32', f: (a) => fg.relu(a) },
    { what: 'isnan (bool out)', shapes: [[2, 19]], dtype: 'float32', f: (a) => fg.isnan(a) },
    { what: 'add, broadcast', shapes: [[4, 3, 11], [3, 1]], dtype: 'float32', f: (a, b) => fg.add(a, b) },
    { what: 'mul, broadcast rows', shapes: [[6, 1], [1, 23]], dtype: 'float32', f: (a, b) => fg.mul(a, b) },
    { what: 'lt (bool out)', shapes: [[7, 9], [9]], dtype: 'float32', f: (a, b) => fg.lt(a, b) },
    { what: 'int32 mul', shapes: [[5, 17], [17]], dtype: 'int32', f: (a, b) => fg.mul(a, b) },
    { what: 'float64 sub', shapes: [[3, 10], [3, 1]], dtype: 'float64', f: (a, b) => fg.sub(a, b) },
  ];
  for (const { what, shapes, dtype, f } of cases) {
    it(`${what} matches the cpu reference bit for bit`, async () => {
      const datas = shapes.map((s, k) => {
        const n = s.reduce((a, c) => a * c, 1);
        const r = randomF32(n, 40 + k, -3, 3);
        return dtype === 'int32' ? Int32Array.from(r, (v) => Math.round(v * 100)) : dtype === 'float64' ? Float64Array.from(r) : r;
      });
      const want = await f(...datas.map((d, k) => on(cpu, d, shapes[k], dtype))).data();
      await poison(want.length);
      const got = await f(...datas.map((d, k) => on(wasm, d, shapes[k], dtype))).data();
      const bytes = (a: TypedArray) => Array.from(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
      expect(bytes(got)).toEqual(bytes(want));
    });
  }
});
