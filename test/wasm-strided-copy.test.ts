/**
 * The wasm stridedCopy kernels (src/kernels/wasm/copy.ts: the loop nest in wasm, f32x4 runs,
 * splats and 4x4 transposes) against the CPU reference, bit for bit, over many layouts: every
 * permute of 2-4-d tensors and sampled permutes of 5-d ones, narrow and offset views, broadcasts
 * (stride 0), size-0 and size-1 dims, negative strides, strided destinations (whose untouched
 * elements must keep their values) and large odd sizes, in every element width (float32, int32,
 * bool, float64). One check also follows NaN payloads through, which must survive the copy.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { planStridedCopy } from '../src/kernels/wasm/copy.js';
import type { Backend, StridedCopyLayout } from '../src/kernels/backend.js';
import type { DType } from '../src/tensor/dtype.js';
import { rng } from './helpers/random.js';

let wasm: WasmBackend;
const cpu = new CpuBackend();
beforeAll(async () => {
  wasm = await createWasmBackend({ threads: 1 });
});
afterAll(() => wasm?.dispose());

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const contiguous = (s: readonly number[]) => {
  const st = new Array<number>(s.length).fill(1);
  for (let i = s.length - 2; i >= 0; i--) st[i] = st[i + 1] * s[i + 1];
  return st;
};
/** The number of elements a layout can reach from offset 0: the largest index + 1 (0 for an empty shape). */
function extent(shape: readonly number[], strides: readonly number[], offset: number): number {
  if (shape.some((n) => n === 0)) return offset;
  let hi = offset;
  shape.forEach((n, i) => (hi += Math.max(0, (n - 1) * strides[i])));
  return hi + 1;
}
/** The lowest index a layout reaches (negative strides reach below the offset). */
function lowest(shape: readonly number[], strides: readonly number[], offset: number): number {
  let lo = offset;
  shape.forEach((n, i) => (lo += Math.min(0, (n - 1) * strides[i])));
  return lo;
}

function values(n: number, dtype: DType, seed: number): Float32Array | Float64Array | Int32Array | Uint8Array {
  const r = rng(seed);
  switch (dtype) {
    case 'float32':
      return Float32Array.from({ length: n }, () => r() * 200 - 100);
    case 'float64':
      return Float64Array.from({ length: n }, () => r() * 200 - 100);
    case 'int32':
      return Int32Array.from({ length: n }, () => Math.floor(r() * 2 ** 31) * (r() < 0.5 ? -1 : 1));
    case 'bool':
      return Uint8Array.from({ length: n }, () => (r() < 0.5 ? 1 : 0));
  }
}

/** The destination's bytes after the copy on a backend, from `src` and a destination prefilled with `dst0`. */
async function copyOn(be: Backend, dtype: DType, src: ArrayLike<number>, dst0: ArrayLike<number>, l: StridedCopyLayout): Promise<Uint8Array> {
  const s = be.upload(src as never, dtype);
  const d = be.upload(dst0 as never, dtype);
  be.stridedCopy(s, d, l);
  const out = await be.read(d);
  be.release(s);
  be.release(d);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength).slice();
}

/** Copies with the layout on both backends and expects the same destination bytes. */
async function expectParity(l: StridedCopyLayout, dtype: DType, seed: number): Promise<void> {
  const srcN = Math.max(1, extent(l.shape, l.srcStrides, l.srcOffset));
  const dstN = Math.max(1, extent(l.shape, l.dstStrides, l.dstOffset));
  const src = values(srcN, dtype, seed);
  const dst0 = values(dstN, dtype, seed + 1000);
  const what = `${dtype} ${JSON.stringify(l)} (${planStridedCopy(l.shape, l.srcStrides, l.dstStrides, 4).mode})`;
  const [got, want] = [await copyOn(wasm, dtype, src, dst0, l), await copyOn(cpu, dtype, src, dst0, l)];
  // The first differing byte (a loop: a deep equality over large typed arrays is slow).
  let first = got.length === want.length ? -1 : Math.min(got.length, want.length);
  for (let i = 0; first < 0 && i < got.length; i++) if (got[i] !== want[i]) first = i;
  expect(first, `${what}: first differing byte`).toBe(-1);
}

function permutations(n: number): number[][] {
  if (n === 1) return [[0]];
  return permutations(n - 1).flatMap((p) => Array.from({ length: n }, (_, i) => [...p.slice(0, i), n - 1, ...p.slice(i)]));
}

/** The layout of permute(x, dims) for a contiguous x of `shape`, read into a contiguous result. */
function permuteLayout(shape: number[], dims: number[], srcOffset = 0, srcStrides = contiguous(shape)): StridedCopyLayout {
  const out = dims.map((a) => shape[a]);
  return { shape: out, srcStrides: dims.map((a) => srcStrides[a]), srcOffset, dstStrides: contiguous(out), dstOffset: 0 };
}

const DTYPES: DType[] = ['float32', 'int32', 'bool', 'float64'];

describe('wasm stridedCopy equals the reference', () => {
  it('every permute of 2-, 3- and 4-d tensors (odd sizes, size-1 dims)', async () => {
    const shapes = [[5, 7], [4, 8], [1, 9], [17, 8], [3, 5, 7], [2, 1, 9], [4, 8, 12], [2, 3, 5, 7], [3, 4, 17, 8], [1, 5, 1, 6], [4, 4, 4, 4]];
    let seed = 1;
    for (const shape of shapes) for (const dims of permutations(shape.length)) await expectParity(permuteLayout(shape, dims), 'float32', seed++);
  });

  it('sampled permutes of 5-d tensors, in every dtype', async () => {
    const r = rng(7);
    const perms = permutations(5);
    let seed = 100;
    for (const shape of [[2, 3, 4, 5, 6], [3, 1, 5, 4, 9], [2, 5, 3, 8, 4]]) {
      for (let t = 0; t < 12; t++) {
        const dims = perms[Math.floor(r() * perms.length)];
        for (const dtype of DTYPES) await expectParity(permuteLayout(shape, dims), dtype, seed++);
      }
    }
  });

  it("attention's head split and merge ([N, L, H, d] <-> [N, H, L, d]) and transposes of the last two dims", async () => {
    let seed = 200;
    // The heads of a query narrowed out of a packed [N, L, 3E] projection: rows 3E apart, offset.
    await expectParity({ shape: [32, 4, 17, 8], srcStrides: [1632, 8, 96, 1], srcOffset: 32, dstStrides: [544, 136, 8, 1], dstOffset: 0 }, 'float32', seed++);
    await expectParity(permuteLayout([32, 4, 17, 8], [0, 2, 1, 3]), 'float32', seed++);
    for (const [a, b] of [[17, 96], [96, 17], [16, 32], [4, 4], [5, 4], [4, 5], [3, 3], [257, 131], [64, 200]]) {
      for (const dtype of DTYPES) await expectParity(permuteLayout([3, a, b], [0, 2, 1]), dtype, seed++);
    }
  });

  it('narrow and offset views, broadcasts (stride 0), negative strides, strided destinations', async () => {
    const layouts: StridedCopyLayout[] = [
      // narrow along the last dim and along a middle dim, with offsets
      { shape: [6, 5], srcStrides: [9, 1], srcOffset: 3, dstStrides: [5, 1], dstOffset: 0 },
      { shape: [3, 2, 7], srcStrides: [35, 7, 1], srcOffset: 14, dstStrides: [14, 7, 1], dstOffset: 0 },
      { shape: [3, 100], srcStrides: [150, 1], srcOffset: 7, dstStrides: [100, 1], dstOffset: 0 },
      // expand: a row repeated, a column repeated, a scalar everywhere
      { shape: [4, 9], srcStrides: [0, 1], srcOffset: 0, dstStrides: [9, 1], dstOffset: 0 },
      { shape: [9, 7], srcStrides: [1, 0], srcOffset: 2, dstStrides: [7, 1], dstOffset: 0 },
      { shape: [5, 3, 70], srcStrides: [0, 0, 0], srcOffset: 4, dstStrides: [210, 70, 1], dstOffset: 0 },
      { shape: [32], srcStrides: [0], srcOffset: 0, dstStrides: [1], dstOffset: 0 },
      { shape: [2, 3, 4, 5], srcStrides: [0, 5, 0, 1], srcOffset: 0, dstStrides: [60, 20, 5, 1], dstOffset: 0 },
      // flip: negative strides from the far end
      { shape: [4, 6], srcStrides: [6, -1], srcOffset: 5, dstStrides: [6, 1], dstOffset: 0 },
      { shape: [5, 7], srcStrides: [-7, -1], srcOffset: 34, dstStrides: [7, 1], dstOffset: 0 },
      // scatter into a slice of a larger destination (slice backward, concat, pad), transposed too
      { shape: [32, 17, 32], srcStrides: [544, 32, 1], srcOffset: 0, dstStrides: [1632, 96, 1], dstOffset: 64 },
      { shape: [3, 5, 6], srcStrides: [30, 6, 1], srcOffset: 0, dstStrides: [80, 10, 1], dstOffset: 12 },
      { shape: [6, 9], srcStrides: [1, 6], srcOffset: 0, dstStrides: [20, 2], dstOffset: 1 },
      { shape: [8, 12], srcStrides: [1, 8], srcOffset: 0, dstStrides: [13, 1], dstOffset: 3 },
      // both sides strided along every dim
      { shape: [5, 6, 7], srcStrides: [100, 3, 14], srcOffset: 1, dstStrides: [2, 10, 70], dstOffset: 0 },
      // a scalar, a single element, size-1 dims only
      { shape: [], srcStrides: [], srcOffset: 3, dstStrides: [], dstOffset: 1 },
      { shape: [1, 1, 1], srcStrides: [5, 3, 1], srcOffset: 2, dstStrides: [1, 1, 1], dstOffset: 0 },
      // a long contiguous run (the bulk path) and a long run with an odd tail
      { shape: [2, 1027], srcStrides: [2000, 1], srcOffset: 9, dstStrides: [1027, 1], dstOffset: 0 },
      { shape: [4099], srcStrides: [1], srcOffset: 1, dstStrides: [1], dstOffset: 2 },
    ];
    let seed = 300;
    for (const l of layouts) {
      const lo = Math.min(lowest(l.shape, l.srcStrides, l.srcOffset), lowest(l.shape, l.dstStrides, l.dstOffset));
      expect(lo, `layout ${JSON.stringify(l)} stays inside its storages`).toBeGreaterThanOrEqual(0);
      for (const dtype of DTYPES) await expectParity(l, dtype, seed++);
    }
  });

  it('size-0 dims copy nothing and leave the destination as it was', async () => {
    for (const shape of [[0], [3, 0, 4], [0, 5]]) {
      const l = { shape, srcStrides: contiguous(shape), srcOffset: 0, dstStrides: contiguous(shape), dstOffset: 0 };
      const dst0 = values(8, 'float32', 9);
      const got = await copyOn(wasm, 'float32', values(8, 'float32', 8), dst0, l);
      expect(got).toEqual(new Uint8Array(dst0.buffer));
    }
  });

  it('random layouts: sizes 0-9, permuted, sliced, broadcast and flipped, in every dtype', async () => {
    const r = rng(42);
    const pick = (n: number) => Math.floor(r() * n);
    let seed = 1000;
    for (let t = 0; t < 150; t++) {
      const rank = 1 + pick(5);
      const shape = Array.from({ length: rank }, () => [0, 1, 1, 2, 3, 4, 5, 7, 8, 9][pick(10)]);
      // The source: a contiguous parent larger along each dim, read permuted, with a start offset
      // per dim, some dims broadcast and some flipped.
      const perm = permutations(rank)[pick(numel(Array.from({ length: rank }, (_, i) => i + 1)))];
      // The parent's dim perm[i] is read along dim i: at least as long.
      const parent = new Array<number>(rank);
      shape.forEach((n, i) => (parent[perm[i]] = n + pick(3)));
      const pst = contiguous(parent);
      let srcOffset = 0;
      const srcStrides = shape.map((n, i) => {
        const ax = perm[i];
        const st = pst[ax];
        const start = pick(parent[ax] - n + 1);
        if (r() < 0.15) return (srcOffset += start * st), 0;
        if (r() < 0.15 && n > 0) return (srcOffset += (start + n - 1) * st), -st;
        srcOffset += start * st;
        return st;
      });
      const dstParent = shape.map((n) => n + pick(2));
      const dstOffset = shape.reduce((o, n, i) => o + pick(dstParent[i] - n + 1) * contiguous(dstParent)[i], 0);
      const l = { shape, srcStrides, srcOffset, dstStrides: contiguous(dstParent), dstOffset };
      await expectParity(l, DTYPES[t % DTYPES.length], seed++);
    }
  });

  it('NaN payloads survive a transpose, a run and a splat (float32 and float64 bit patterns)', async () => {
    const bits = Uint32Array.from({ length: 40 }, (_, i) => 0x7fc00000 + i * 977 + 1); // quiet NaNs, distinct payloads
    const src = new Float32Array(bits.buffer);
    for (const l of [permuteLayout([5, 8], [1, 0]), permuteLayout([5, 8], [0, 1]), { shape: [3, 8], srcStrides: [0, 0], srcOffset: 7, dstStrides: [8, 1], dstOffset: 0 }]) {
      const got = new Uint32Array((await copyOn(wasm, 'float32', src, new Float32Array(40), l)).buffer);
      const want = new Uint32Array(40);
      const [R, C] = l.shape;
      for (let i = 0; i < R; i++) for (let j = 0; j < C; j++) want[i * l.dstStrides[0] + j] = bits[l.srcOffset + i * l.srcStrides[0] + j * l.srcStrides[1]];
      expect(Array.from(got), JSON.stringify(l)).toEqual(Array.from(want));
    }
    const bits64 = BigUint64Array.from({ length: 12 }, (_, i) => 0x7ff8000000000000n + BigInt(i * 12345 + 1));
    const got64 = new BigUint64Array((await copyOn(wasm, 'float64', new Float64Array(bits64.buffer), new Float64Array(12), permuteLayout([3, 4], [1, 0]))).buffer);
    const want64 = Array.from({ length: 12 }, (_, k) => bits64[(k % 3) * 4 + Math.floor(k / 3)]);
    expect(Array.from(got64)).toEqual(want64);
  });

  it('plans the ViT shapes onto the fast modes', () => {
    // The guard against a silent fall back to the element loop on the shapes that matter.
    expect(planStridedCopy([32, 4, 17, 8], [544, 8, 32, 1], [544, 136, 8, 1], 4).mode).toBe('run');
    expect(planStridedCopy([32, 17, 96], [1632, 1, 17], [1632, 96, 1], 4).mode).toBe('transpose');
    expect(planStridedCopy([32, 96, 17], [1632, 1, 96], [1632, 17, 1], 4).mode).toBe('transpose');
    expect(planStridedCopy([32, 17, 32], [0, 0, 1], [544, 32, 1], 4).mode).toBe('run');
    expect(planStridedCopy([32, 17, 32], [32, 0, 1], [544, 32, 1], 4).mode).toBe('run');
    expect(planStridedCopy([8, 32], [1, 0], [32, 1], 4).mode).toBe('splat');
  });
});
