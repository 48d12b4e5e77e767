/**
 * Parity of every wasm kernel with the CPU reference backend, on awkward sizes (1, 3, 7, 63, 65,
 * 257), broadcasting corners, every transpose combination and window geometry; float32 within
 * tolerance, int/bool/argmax/RNG exactly; threaded matmul bit-equal to single-threaded; and a
 * memory test that keeps the live counters and the heap flat over many steps.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend, sizeClass, type WasmBackend } from '../src/kernels/wasm/index.js';
import { BINARY_OPS, UNARY_OPS, type BinaryOp, type BinaryOpDef, type UnaryOp, type UnaryOpDef } from '../src/kernels/optable.js';
import type { Backend, MatmulLayout, Storage, Window2d } from '../src/kernels/backend.js';
import { typedArrayFor, type DType, type TypedArray } from '../src/tensor/dtype.js';
import { broadcastShapes, broadcastStrides } from '../src/tensor/shape.js';
import { rng } from './helpers/random.js';
import '../src/kernels/arena/fused.js';
import {
  BLOCK,
  FLAG_ACTIVE,
  FLAG_DECAY,
  FLAG_VECTOR,
  FLAG_WEIGHT,
  fusedKernelsFor,
  S_FLAG,
  S_SLOTS,
  S_STEPS,
  type ArenaLayout,
  type ArenaParamInfo,
  type FusedKernels,
} from '../src/kernels/fused.js';

const SIZES = [1, 3, 7, 63, 65, 257];
const SPECIALS = [NaN, Infinity, -Infinity, 0, -0, 1e-30, -1e-30, 1e30, -1e30, 88.5, -88.5, 89, -104];

let wasm: WasmBackend;
let wasm2: WasmBackend;
const cpu = new CpuBackend();

beforeAll(async () => {
  wasm = await createWasmBackend({ threads: 1 });
  // A low threshold so that the threaded path runs on test-sized matmuls.
  wasm2 = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
});
afterAll(() => {
  wasm?.dispose();
  wasm2?.dispose();
});
afterEach(() => {
  // Every test releases what it allocates: the kernels must not leak either.
  expect(wasm.memory().liveBuffers).toBe(0);
  expect(wasm2.memory().liveBuffers).toBe(0);
});

function uniform(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * r());
}
function ints(n: number, seed: number, lo: number, hi: number): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: n }, () => lo + Math.floor((hi - lo) * r()));
}
function withSpecials(x: Float32Array): Float32Array {
  const y = x.slice();
  SPECIALS.forEach((v, i) => {
    if (i * 5 < y.length) y[i * 5] = v;
  });
  return y;
}
function asDtype(x: ArrayLike<number>, dtype: DType): TypedArray {
  const out = typedArrayFor(dtype, x.length);
  for (let i = 0; i < x.length; i++) out[i] = dtype === 'bool' ? (x[i] ? 1 : 0) : dtype === 'int32' ? Math.trunc(x[i]) : x[i];
  return out;
}

type Input = TypedArray;
type Output = [numel: number, dtype: DType];

/**
 * Uploads the inputs to `be`, runs `fn`, and returns the outputs followed by the inputs as they
 * are afterwards (so in-place kernels are checked, and so is leaving inputs alone); releases all.
 */
function runOn(be: Backend, inputs: Input[], outputs: Output[], fn: (be: Backend, ins: Storage[], outs: Storage[]) => void): TypedArray[] {
  const ins = inputs.map((x) => be.upload(x, dtypeOf(x)));
  const outs = outputs.map(([n, d]) => be.alloc(n, d));
  // Kernels must write every element of out: start from garbage, not from zeros.
  outs.forEach((o) => be.fill(o, o.dtype === 'bool' ? 1 : o.dtype === 'int32' ? -7 : NaN));
  const all = [...outs, ...ins];
  try {
    fn(be, ins, outs);
    return all.map((o) => be.readSync!(o));
  } finally {
    for (const s of all) be.release(s);
  }
}
function dtypeOf(x: TypedArray): DType {
  return x instanceof Float32Array ? 'float32' : x instanceof Float64Array ? 'float64' : x instanceof Int32Array ? 'int32' : 'bool';
}

/** Runs the same kernel on wasm and on the CPU reference. */
function both(inputs: Input[], outputs: Output[], fn: (be: Backend, ins: Storage[], outs: Storage[]) => void, be: Backend = wasm) {
  return { got: runOn(be, inputs, outputs, fn), want: runOn(cpu, inputs, outputs, fn) };
}

interface Tol {
  atol?: number;
  rtol?: number;
  /** Per-element magnitude that atol is scaled by (e.g. sum |a||b| for a matmul). */
  scale?: ArrayLike<number>;
}

function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, what: string, tol: Tol = {}): void {
  const { atol = 1e-5, rtol = 1e-4, scale } = tol;
  expect(got.length, `${what}: length`).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    const g = got[i];
    const w = want[i];
    if (Number.isNaN(w) || !Number.isFinite(w)) {
      if (!Object.is(g, w) && !(Number.isNaN(g) && Number.isNaN(w))) throw new Error(`${what}[${i}]: got ${g}, want ${w}`);
      continue;
    }
    const bound = atol * (scale ? Math.max(scale[i], 1e-30) : 1) + rtol * Math.abs(w);
    if (!(Math.abs(g - w) <= bound)) throw new Error(`${what}[${i}]: got ${g}, want ${w} (|diff| ${Math.abs(g - w)} > ${bound})`);
  }
}

function expectExact(got: ArrayLike<number>, want: ArrayLike<number>, what: string): void {
  expect(Array.from(got), what).toEqual(Array.from(want));
}

function bothClose(what: string, inputs: Input[], outputs: Output[], fn: (be: Backend, ins: Storage[], outs: Storage[]) => void, tol?: Tol, be?: Backend) {
  const { got, want } = both(inputs, outputs, fn, be);
  got.forEach((g, i) => {
    const isFloat = g instanceof Float32Array || g instanceof Float64Array;
    const which = i < outputs.length ? `${what} (output ${i})` : `${what} (input ${i - outputs.length} afterwards)`;
    if (isFloat) expectClose(g, want[i], which, i < outputs.length ? tol : {});
    else expectExact(g, want[i], which);
  });
}

describe('wasm backend: memory', () => {
  it('allocates zeroed storage, uploads, writes, reads and views', async () => {
    const a = wasm.alloc(65, 'float32');
    expect(Array.from(wasm.readSync(a))).toEqual(new Array(65).fill(0));
    wasm.write(a, uniform(65, 1));
    expect(wasm.readSync(a)).toEqual(uniform(65, 1));
    const v = wasm.view(a, 3, 7);
    expect(await wasm.read(v)).toEqual(uniform(65, 1).subarray(3, 10));
    wasm.fill(v, 2);
    expect(wasm.readSync(a)[2]).not.toBe(2);
    expect(wasm.readSync(a)[3]).toBe(2);
    wasm.release(v);
    wasm.release(a);
    // A reused block comes back zeroed.
    const b = wasm.alloc(60, 'float32');
    expect(Array.from(wasm.readSync(b))).toEqual(new Array(60).fill(0));
    expect(() => wasm.view(b, 50, 11)).toThrow(RangeError);
    wasm.release(b);
    expect(() => wasm.release(b)).toThrow(/released/);
    for (const d of ['float64', 'int32', 'bool'] as const) {
      const data = asDtype([1, -2, 3, 0, 5], d);
      const s = wasm.upload(data, d);
      expect(wasm.readSync(s)).toEqual(data);
      // typed() is a live view of the storage (the host-memory fused optimizer kernels use it).
      wasm.typed(wasm.view(s, 1, 2))[1] = 1;
      expect(Array.from(wasm.readSync(s))).toEqual([1, -2, 1, 0, 5].map((v) => (d === 'bool' ? Number(v !== 0) : v)));
      wasm.release(s);
    }
  });

  it('counts live and pooled buffers and keeps 256-byte alignment', () => {
    const base = wasm.memory();
    const s = [wasm.alloc(10, 'float32'), wasm.alloc(1000, 'float64'), wasm.alloc(3, 'bool')];
    expect(wasm.memory().liveBuffers).toBe(base.liveBuffers + 3);
    expect(wasm.memory().liveBytes).toBe(base.liveBytes + 40 + 8000 + 3);
    for (const x of s) expect((x as unknown as { ptr: number }).ptr % 256).toBe(0);
    s.forEach((x) => wasm.release(x));
    expect(wasm.memory().liveBytes).toBe(base.liveBytes);
    expect(wasm.memory().pooledBuffers).toBeGreaterThanOrEqual(3);
    for (const n of [1, 255, 256, 257, 8192, 8193, 100000]) {
      expect(sizeClass(n) % 256).toBe(0);
      expect(sizeClass(n)).toBeGreaterThanOrEqual(n);
      expect(sizeClass(n)).toBeLessThanOrEqual(Math.max(256, n * 1.25 + 256));
    }
  });

  it('keeps working after the memory grows, shared or not', () => {
    for (const be of [wasm, wasm2]) {
      const big = be.alloc(40_000_000, 'float32');
      try {
        bothClose('relu after growth', [uniform(257, 2)], [[257, 'float32']], (b, [a], [o]) => b.unary('relu', a, o), {}, be);
        const l = { batch: 1, m: 65, n: 70, k: 33, transA: false, transB: true, aBatchStride: 0, bBatchStride: 0 };
        bothClose('matmul after growth', [uniform(65 * 33, 3), uniform(70 * 33, 4)], [[65 * 70, 'float32']], (b, [x, y], [o]) => b.matmul(x, y, o, l), { atol: 1e-5 * 33 }, be);
      } finally {
        be.release(big);
      }
    }
  });

  it('runs on one thread after dispose()', async () => {
    const be = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
    expect(be.activeThreads).toBe(2);
    be.dispose();
    expect(be.activeThreads).toBe(1);
    const l = { batch: 1, m: 33, n: 17, k: 9, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 };
    bothClose('matmul after dispose', [uniform(33 * 9, 5), uniform(9 * 17, 6)], [[33 * 17, 'float32']], (b, [x, y], [o]) => b.matmul(x, y, o, l), {}, be);
  });

  it('holds steady over 500 steps of allocate / run kernels / release', () => {
    const x = uniform(128 * 64, 3);
    const w = uniform(64 * 32, 4);
    const y = ints(128, 5, 0, 32);
    const step = () => {
      const xs = wasm.upload(x, 'float32');
      const ws = wasm.upload(w, 'float32');
      const ys = wasm.upload(y, 'int32');
      const h = wasm.alloc(128 * 32, 'float32');
      wasm.matmul(xs, ws, h, { batch: 1, m: 128, n: 32, k: 64, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 });
      const r = wasm.alloc(128 * 32, 'float32');
      wasm.unary('relu', h, r);
      const loss = wasm.alloc(128, 'float32');
      wasm.crossEntropy(r, ys, loss, { rows: 128, cols: 32, labelSmoothing: 0, ignoreIndex: -100 });
      const total = wasm.alloc(1, 'float32');
      wasm.reduce('sum', loss, total, { outer: 1, size: 128, inner: 1 });
      const v = wasm.view(r, 64, 64);
      wasm.axpy(v, wasm.view(h, 0, 64), -0.1);
      for (const s of [xs, ws, ys, h, r, loss, total, v]) wasm.release(s);
    };
    step();
    const before = wasm.memory();
    const heapBefore = (wasm.info().details as { memoryBytes: number }).memoryBytes;
    for (let i = 0; i < 500; i++) step();
    const after = wasm.memory();
    expect(after.liveBuffers).toBe(before.liveBuffers);
    expect(after.liveBytes).toBe(before.liveBytes);
    expect(after.pooledBuffers).toBe(before.pooledBuffers);
    expect((wasm.info().details as { memoryBytes: number }).memoryBytes).toBe(heapBefore);
  });
});

describe('wasm backend: fill, cast, elementwise', () => {
  it('fills and casts every dtype', () => {
    const x = withSpecials(uniform(65, 6, -5, 5)).map((v) => (Number.isFinite(v) && Math.abs(v) < 1e9 ? v : 0.5));
    for (const d of ['float32', 'float64', 'int32', 'bool'] as const) {
      bothClose(`fill ${d}`, [], [[65, d]], (be, _i, [o]) => be.fill(o, 2.5));
      for (const to of ['float32', 'float64', 'int32', 'bool'] as const) {
        bothClose(`cast ${d}->${to}`, [asDtype(x, d)], [[65, to]], (be, [a], [o]) => be.cast(a, o));
      }
    }
  });

  for (const op of Object.keys(UNARY_OPS) as UnaryOp[]) {
    it(`unary ${op} (float32, with NaN/Inf/0/-0)`, () => {
      const [p0, p1] = op === 'clamp' || op === 'insideMask' ? [-0.5, 0.75] : op === 'powScalar' ? [2.5, 0] : [1.5, -0.25];
      for (const n of SIZES) {
        const x = withSpecials(uniform(n, n, -4, 4));
        // The SIMD bodies are within a few ulp (exp's polynomial included): tighter than the default.
        bothClose(`${op} n=${n}`, [x], [[n, 'float32']], (be, [a], [o]) => be.unary(op, a, o, p0, p1), { atol: 1e-7, rtol: 1e-6 });
      }
    });
  }

  it('unary int32 ops exactly, in place, and int -> float and float64 through the reference', () => {
    const x = ints(257, 7, -1000, 1000);
    for (const op of Object.keys(UNARY_OPS) as UnaryOp[]) {
      if (!(UNARY_OPS[op] as UnaryOpDef).int) continue;
      bothClose(`${op} int32`, [x], [[257, 'int32']], (be, [a], [o]) => be.unary(op, a, o));
    }
    bothClose('exp int32 -> float32', [ints(65, 8, -5, 5)], [[65, 'float32']], (be, [a], [o]) => be.unary('exp', a, o));
    bothClose('tanh float64', [Float64Array.from(uniform(63, 9))], [[63, 'float64']], (be, [a], [o]) => be.unary('tanh', a, o), { atol: 1e-12, rtol: 1e-12 });
    bothClose('square in place', [uniform(65, 10)], [], (be, [a]) => be.unary('square', a, a));
  });

  /** Every broadcasting pattern the row kernels special-case, and ones they hand to the reference. */
  const BROADCASTS: [number[], number[]][] = [
    [[257], [257]],
    [[7, 65], [7, 65]],
    [[65, 63], [63]], // bias add: b repeats along rows
    [[63], [65, 63]],
    [[65, 7], [65, 1]], // column broadcast: b is one value per row
    [[65, 1], [65, 7]],
    [[3, 1, 7], [1, 5, 1]], // outer product: both broadcast
    [[2, 3, 4, 5], [3, 1, 5]],
    [[2, 1, 63], [2, 3, 1]],
    [[257], [1]],
    [[1], [7]],
    [[], [3]],
    [[], []],
    [[0, 3], [3]],
  ];

  function broadcastLayout(aShape: number[], bShape: number[]) {
    const shape = broadcastShapes('test', aShape, bShape);
    return { shape, aStrides: broadcastStrides(aShape, shape), bStrides: broadcastStrides(bShape, shape) };
  }
  const numel = (s: number[]) => s.reduce((x, y) => x * y, 1);

  for (const op of Object.keys(BINARY_OPS) as BinaryOp[]) {
    it(`binary ${op} over broadcasts (float32${(BINARY_OPS[op] as BinaryOpDef).int ? ', int32' : ''})`, () => {
      const def: BinaryOpDef = BINARY_OPS[op];
      const outDtype = (d: DType): DType => (def.compare ? 'bool' : d);
      BROADCASTS.forEach(([as, bs], t) => {
        const layout = broadcastLayout(as, bs);
        const a = withSpecials(uniform(numel(as), 11 + t, -3, 3));
        const b = uniform(numel(bs), 31 + t, -3, 3);
        if (b.length > 2) b[1] = a[1]; // equal values exercise eq/ne/le/ge
        const n = numel(layout.shape);
        bothClose(`${op} ${JSON.stringify([as, bs])}`, [a, b], [[n, outDtype('float32')]], (be, [x, y], [o]) => be.binary(op, x, y, o, layout));
        if (def.int) {
          const ai = ints(numel(as), 41 + t, -50, 50);
          const bi = ints(numel(bs), 51 + t, -50, 50);
          bothClose(`${op} int32 ${JSON.stringify([as, bs])}`, [ai, bi], [[n, outDtype('int32')]], (be, [x, y], [o]) => be.binary(op, x, y, o, layout));
        }
      });
      // A transposed operand (inner stride neither 0 nor 1) takes the reference loop.
      const layout = { shape: [7, 65], aStrides: [1, 7], bStrides: [65, 1] };
      bothClose(`${op} transposed`, [uniform(455, 61), uniform(455, 62)], [[455, outDtype('float32')]], (be, [x, y], [o]) => be.binary(op, x, y, o, layout));
    });
  }

  it('where over broadcasts (float32, int32 and float64)', () => {
    const cases: [number[], number[], number[]][] = [
      [[257], [257], [257]],
      [[65, 63], [65, 63], []], // relu's backward: where(x > 0, g, 0)
      [[7, 1], [7, 65], [65]],
      [[3], [1], [3]],
      [[2, 3, 5], [3, 1], [2, 1, 5]],
      [[1], [7], [7]],
      [[], [], []],
    ];
    cases.forEach(([cs, as, bs], t) => {
      const shape = broadcastShapes('where', broadcastShapes('where', cs, as), bs);
      const layout = { shape, condStrides: broadcastStrides(cs, shape), aStrides: broadcastStrides(as, shape), bStrides: broadcastStrides(bs, shape) };
      const cond = asDtype(ints(numel(cs), 70 + t, -1, 2), 'bool');
      const n = numel(shape);
      for (const d of ['float32', 'int32', 'float64'] as const) {
        const a = asDtype(withSpecials(uniform(numel(as), 80 + t, -9, 9)).map((v) => (d === 'int32' && !Number.isFinite(v) ? 3 : v)), d);
        const b = asDtype(uniform(numel(bs), 90 + t, -9, 9), d);
        bothClose(`where ${d} ${JSON.stringify([cs, as, bs])}`, [cond, a, b], [[n, d]], (be, [c, x, y], [o]) => be.where(c, x, y, o, layout));
      }
    });
  });

  it('axpy in place, also into a view', () => {
    for (const n of SIZES) {
      bothClose(`axpy n=${n}`, [uniform(n, n), uniform(n, n + 1)], [], (be, [d, s]) => be.axpy(d, s, -0.37));
    }
    const want = uniform(300, 15);
    uniform(65, 16).forEach((v, i) => (want[65 + i] += 2 * v));
    const [got] = runOn(wasm, [uniform(300, 15), uniform(65, 16)], [], (be, [d, s]) => be.axpy(be.view(d, 65, 65), s, 2));
    expectClose(got, want, 'axpy view');
  });

  it('stridedCopy: transpose, permute, slice, expand, offset destination, every dtype', () => {
    const cases = [
      { shape: [65, 7], srcStrides: [1, 65], srcOffset: 0, dstStrides: [7, 1], dstOffset: 0, src: 455, dst: 455 },
      { shape: [3, 5, 7], srcStrides: [1, 21, 3], srcOffset: 0, dstStrides: [35, 7, 1], dstOffset: 0, src: 105, dst: 105 },
      { shape: [4, 63], srcStrides: [65, 1], srcOffset: 2, dstStrides: [63, 1], dstOffset: 0, src: 262, dst: 252 },
      { shape: [5, 257], srcStrides: [0, 1], srcOffset: 0, dstStrides: [257, 1], dstOffset: 0, src: 257, dst: 1285 },
      { shape: [3, 40], srcStrides: [40, 1], srcOffset: 0, dstStrides: [65, 1], dstOffset: 25, src: 120, dst: 195 },
      { shape: [2, 1, 3], srcStrides: [3, 0, 1], srcOffset: 0, dstStrides: [3, 3, 1], dstOffset: 0, src: 6, dst: 6 },
      { shape: [], srcStrides: [], srcOffset: 4, dstStrides: [], dstOffset: 1, src: 5, dst: 2 },
    ];
    for (const d of ['float32', 'float64', 'int32', 'bool'] as const) {
      for (const { src, dst, ...layout } of cases) {
        const x = asDtype(ints(src, src, -9, 9), d);
        const init = asDtype(ints(dst, dst + 1, -9, 9), d);
        // The destination starts with values of its own: those outside the copied positions must survive.
        bothClose(`stridedCopy ${d} ${JSON.stringify(layout)}`, [x, init], [], (be, [a, o]) => be.stridedCopy(a, o, layout));
      }
    }
  });
});

describe('wasm backend: reductions, softmax, cross-entropy', () => {
  const REDUCE_LAYOUTS = [
    { outer: 1, size: 257, inner: 1 },
    { outer: 65, size: 63, inner: 1 },
    { outer: 3, size: 7, inner: 65 },
    { outer: 7, size: 1, inner: 3 },
    { outer: 1, size: 65, inner: 257 },
    { outer: 2, size: 0, inner: 3 },
    { outer: 5, size: 0, inner: 1 },
  ];
  for (const op of ['sum', 'max', 'min'] as const) {
    it(`reduce ${op} over [outer, size, inner], with NaN and Inf`, () => {
      for (const l of REDUCE_LAYOUTS) {
        const n = l.outer * l.size * l.inner;
        const x = uniform(n, n + 3, -2, 2);
        bothClose(`${op} ${JSON.stringify(l)}`, [x], [[l.outer * l.inner, 'float32']], (be, [a], [o]) => be.reduce(op, a, o, l), { scale: new Array(l.outer * l.inner).fill(Math.max(1, l.size)) });
        if (n > 30) {
          bothClose(`${op} specials ${JSON.stringify(l)}`, [withSpecials(x)], [[l.outer * l.inner, 'float32']], (be, [a], [o]) => be.reduce(op, a, o, l));
        }
      }
    });
  }

  it('sums a long row as accurately as the reference', () => {
    const x = uniform(300_001, 17, 0, 1);
    bothClose('long sum', [x], [[1, 'float32']], (be, [a], [o]) => be.reduce('sum', a, o, { outer: 1, size: x.length, inner: 1 }), { atol: 0, rtol: 1e-6 });
    bothClose('long column sum', [x.subarray(0, 300_000)], [[3, 'float32']], (be, [a], [o]) => be.reduce('sum', a, o, { outer: 1, size: 100_000, inner: 3 }), { atol: 0, rtol: 1e-6 });
  });

  it('argmax / argmin exactly, ties and NaN included', () => {
    for (const l of REDUCE_LAYOUTS.filter((l) => l.size > 0)) {
      const n = l.outer * l.size * l.inner;
      const x = asDtype(ints(n, n, -3, 3), 'float32') as Float32Array;
      if (n > 10) x[10] = NaN;
      for (const op of ['argmax', 'argmin'] as const) {
        bothClose(`${op} ${JSON.stringify(l)}`, [x], [[l.outer * l.inner, 'int32']], (be, [a], [o]) => be.argReduce(op, a, o, l));
      }
    }
  });

  /** Rows with -inf entries, all -inf, +inf, NaN, and large magnitudes. */
  function logitRows(rows: number, cols: number, seed: number): Float32Array {
    const x = uniform(rows * cols, seed, -8, 8);
    const special = [
      () => x.fill(-Infinity, 0, Math.min(cols, 2)),
      () => x.fill(-Infinity, cols, 2 * cols),
      () => (x[2 * cols + cols - 1] = Infinity),
      () => (x[3 * cols] = NaN),
      () => x.subarray(4 * cols, 5 * cols).forEach((v, j) => (x[4 * cols + j] = v * 1e4)),
    ];
    special.forEach((f, r) => r < rows && f());
    return x;
  }

  it('softmax and log-softmax per row', () => {
    for (const [rows, cols] of [[1, 1], [3, 7], [6, 10], [65, 257], [7, 63]]) {
      const x = logitRows(rows, cols, rows * cols);
      for (const log of [false, true]) {
        bothClose(`softmax log=${log} ${rows}x${cols}`, [x], [[rows * cols, 'float32']], (be, [a], [o]) => be.softmax(a, o, { rows, cols, log }), { atol: 1e-6, rtol: 1e-4 });
        bothClose(`softmax in place log=${log} ${rows}x${cols}`, [x], [], (be, [a]) => be.softmax(a, a, { rows, cols, log }), { atol: 1e-6, rtol: 1e-4 });
      }
    }
  });

  it('cross-entropy forward and backward, with label smoothing and invalid labels', () => {
    for (const [rows, cols] of [[1, 1], [7, 3], [65, 10], [6, 257]]) {
      const x = logitRows(rows, cols, rows + cols).map((v) => (Number.isNaN(v) ? 0 : v));
      const y = ints(rows, rows, 0, cols);
      if (rows > 5) {
        y[5] = -1;
        y[rows - 1] = cols;
      }
      const g = uniform(rows, cols, 0.5, 2);
      for (const labelSmoothing of [0, 0.1]) {
        const l = { rows, cols, labelSmoothing, ignoreIndex: -100 };
        bothClose(`CE ${rows}x${cols} s=${labelSmoothing}`, [x, y], [[rows, 'float32']], (be, [a, t], [o]) => be.crossEntropy(a, t, o, l), { scale: new Array(rows).fill(20) });
        bothClose(`CE backward ${rows}x${cols} s=${labelSmoothing}`, [x, y, g], [[rows * cols, 'float32']], (be, [a, t, gr], [o]) => be.crossEntropyBackward(a, t, gr, o, l), { atol: 1e-6 });
      }
    }
  });
});

describe('wasm backend: matmul', () => {
  const SHAPES: [number, number, number][] = [
    [1, 1, 1],
    [1, 65, 63],
    [3, 7, 257],
    [63, 65, 7],
    [257, 3, 65],
    [65, 257, 63],
    [7, 1, 3],
    [1, 9, 257], // one output row or column: matrix-vector products
    [257, 1, 65],
    [130, 260, 300], // several k blocks and row blocks
  ];

  /** |A| @ |B|: the magnitude each output element's rounding error is relative to. */
  function magnitude(A: Float32Array, B: Float32Array, l: MatmulLayout): TypedArray {
    return runOn(cpu, [A.map(Math.abs), B.map(Math.abs)], [[l.batch * l.m * l.n, 'float32']], (be, [a, b], [o]) => be.matmul(a, b, o, l))[0];
  }

  function checkMatmul(l: MatmulLayout, be: Backend, seed: number, specials = false): void {
    const aLen = l.aBatchStride * (l.batch - 1) + l.m * l.k;
    const bLen = l.bBatchStride * (l.batch - 1) + l.k * l.n;
    const A = uniform(aLen, seed);
    const B = uniform(bLen, seed + 1);
    if (specials && aLen > 8 && bLen > 8) {
      A[3] = NaN;
      B[5] = Infinity;
      A[7] = 0;
    }
    const what = `matmul ${JSON.stringify(l)}`;
    bothClose(what, [A, B], [[l.batch * l.m * l.n, 'float32']], (b, [a, bb], [o]) => b.matmul(a, bb, o, l), { atol: 1e-5, rtol: 0, scale: magnitude(A, B, l) }, be);
  }

  it('every transpose combination on awkward shapes', () => {
    let seed = 100;
    for (const [m, n, k] of SHAPES) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          checkMatmul({ batch: 1, m, n, k, transA, transB, aBatchStride: 0, bBatchStride: 0 }, wasm, seed++);
        }
      }
    }
  });

  it('batches, with batch stride 0 broadcasting either operand', () => {
    for (const [m, n, k] of [[7, 65, 63], [1, 65, 63], [63, 1, 7]]) {
      for (const [aBatchStride, bBatchStride] of [[m * k, k * n], [0, k * n], [m * k, 0]]) {
        for (const transB of [false, true]) checkMatmul({ batch: 3, m, n, k, transA: false, transB, aBatchStride, bBatchStride }, wasm, 200 + aBatchStride);
      }
    }
  });

  it('NaN and Inf propagate as in the reference; k = 0 gives zeros; float64 runs the reference', () => {
    checkMatmul({ batch: 1, m: 9, n: 11, k: 13, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 }, wasm, 300, true);
    bothClose('k=0', [new Float32Array(0), new Float32Array(0)], [[12, 'float32']], (be, [a, b], [o]) => {
      be.fill(o, 5);
      be.matmul(a, b, o, { batch: 1, m: 3, n: 4, k: 0, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 });
    });
    const l = { batch: 1, m: 5, n: 7, k: 3, transA: true, transB: false, aBatchStride: 0, bBatchStride: 0 };
    bothClose('float64', [Float64Array.from(uniform(15, 1)), Float64Array.from(uniform(21, 2))], [[35, 'float64']], (be, [a, b], [o]) => be.matmul(a, b, o, l), { atol: 1e-14, rtol: 1e-14 });
  });

  it('two threads give the same bits as one, split by rows, columns or batch', () => {
    const cases: MatmulLayout[] = [
      { batch: 1, m: 257, n: 63, k: 65, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 },
      { batch: 1, m: 7, n: 257, k: 300, transA: true, transB: true, aBatchStride: 0, bBatchStride: 0 },
      { batch: 1, m: 128, n: 256, k: 784, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 },
      { batch: 1, m: 784, n: 256, k: 128, transA: true, transB: false, aBatchStride: 0, bBatchStride: 0 },
      { batch: 1, m: 128, n: 784, k: 256, transA: false, transB: true, aBatchStride: 0, bBatchStride: 0 },
      { batch: 5, m: 33, n: 17, k: 9, transA: false, transB: true, aBatchStride: 33 * 9, bBatchStride: 0 },
      { batch: 1, m: 1, n: 3, k: 2, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 },
    ];
    expect(wasm2.activeThreads).toBe(2);
    cases.forEach((l, t) => {
      const A = uniform(l.aBatchStride * (l.batch - 1) + l.m * l.k, 400 + t);
      const B = uniform(l.bBatchStride * (l.batch - 1) + l.k * l.n, 500 + t);
      const fn = (be: Backend, [a, b]: Storage[], [o]: Storage[]) => be.matmul(a, b, o, l);
      const one = runOn(wasm, [A, B], [[l.batch * l.m * l.n, 'float32']], fn)[0];
      const two = runOn(wasm2, [A, B], [[l.batch * l.m * l.n, 'float32']], fn)[0];
      expect(two, `threaded ${JSON.stringify(l)}`).toEqual(one);
      checkMatmul(l, wasm2, 600 + t);
    });
  });
});

describe('wasm backend: windows, indexing, randomness', () => {
  function window(n: number, c: number, h: number, w: number, kh: number, kw: number, s: [number, number], p: [number, number], d: [number, number]): Window2d {
    const oh = Math.floor((h + 2 * p[0] - d[0] * (kh - 1) - 1) / s[0]) + 1;
    const ow = Math.floor((w + 2 * p[1] - d[1] * (kw - 1) - 1) / s[1]) + 1;
    return { n, c, h, w, kh, kw, oh, ow, sh: s[0], sw: s[1], ph: p[0], pw: p[1], dh: d[0], dw: d[1] };
  }
  const WINDOWS: Window2d[] = [
    window(1, 1, 1, 1, 1, 1, [1, 1], [0, 0], [1, 1]),
    window(2, 3, 7, 9, 3, 3, [1, 1], [1, 1], [1, 1]),
    window(1, 2, 8, 7, 3, 2, [2, 3], [1, 0], [1, 1]),
    window(2, 1, 9, 11, 3, 3, [1, 2], [2, 3], [2, 2]),
    window(1, 3, 28, 28, 5, 5, [1, 1], [2, 2], [1, 1]),
    window(1, 1, 5, 5, 2, 2, [3, 3], [1, 1], [1, 1]),
  ];

  it('im2col and col2im for strides, padding and dilation', () => {
    WINDOWS.forEach((g, t) => {
      const xLen = g.n * g.c * g.h * g.w;
      const colLen = g.n * g.c * g.kh * g.kw * g.oh * g.ow;
      bothClose(`im2col ${JSON.stringify(g)}`, [uniform(xLen, 700 + t)], [[colLen, 'float32']], (be, [x], [o]) => be.im2col(x, o, g));
      bothClose(`col2im ${JSON.stringify(g)}`, [uniform(colLen, 800 + t)], [[xLen, 'float32']], (be, [x], [o]) => {
        be.fill(o, 7);
        be.col2im(x, o, g);
      });
    });
  });

  it('max and average pooling with padding, and their gradients', () => {
    WINDOWS.forEach((g, t) => {
      const xLen = g.n * g.c * g.h * g.w;
      const oLen = g.n * g.c * g.oh * g.ow;
      const x = withSpecials(uniform(xLen, 900 + t)).map((v) => (Number.isNaN(v) ? 0.5 : v));
      bothClose(`maxPool ${JSON.stringify(g)}`, [x], [[oLen, 'float32'], [oLen, 'int32']], (be, [a], [o, arg]) => be.maxPool2d(a, o, arg, g));
      const arg = runOn(cpu, [x], [[oLen, 'float32'], [oLen, 'int32']], (be, [a], [o, ar]) => be.maxPool2d(a, o, ar, g))[1];
      bothClose(`maxPool backward`, [uniform(oLen, 1000 + t), arg], [[xLen, 'float32']], (be, [gr, ar], [o]) => be.maxPool2dBackward(gr, ar, o, g));
      bothClose(`avgPool`, [x.map((v) => (Number.isFinite(v) ? v : 1))], [[oLen, 'float32']], (be, [a], [o]) => be.avgPool2d(a, o, { ...g, countIncludePad: true, divisorOverride: 0 }));
      bothClose(`avgPool backward`, [uniform(oLen, 1100 + t)], [[xLen, 'float32']], (be, [gr], [o]) => be.avgPool2dBackward(gr, o, { ...g, countIncludePad: true, divisorOverride: 0 }));
    });
  });

  it('gather and scatterAdd, per position and shared, with out-of-range indices', () => {
    for (const perPosition of [true, false]) {
      const l = { outer: 3, inner: 5, xDim: 7, idxDim: 4, perPosition };
      const idx = ints(perPosition ? 3 * 4 * 5 : 4, 1200, -1, 8);
      bothClose(`gather ${perPosition}`, [uniform(3 * 7 * 5, 1201), idx], [[3 * 4 * 5, 'float32']], (be, [x, i], [o]) => be.gather(x, i, o, l));
      bothClose(`gather int ${perPosition}`, [ints(3 * 7 * 5, 1202, -9, 9), idx], [[3 * 4 * 5, 'int32']], (be, [x, i], [o]) => be.gather(x, i, o, l));
      bothClose(`scatterAdd ${perPosition}`, [uniform(3 * 4 * 5, 1203), idx], [[3 * 7 * 5, 'float32']], (be, [x, i], [o]) => be.scatterAdd(x, i, o, l));
    }
  });

  it('random matches the reference bit for bit', () => {
    const dists = [
      { kind: 'uniform', low: -2, high: 3 },
      { kind: 'normal', mean: 1, std: 2 },
      { kind: 'int', low: -5, high: 17 },
      { kind: 'bernoulliKeep', p: 0.3 },
    ] as const;
    for (const dist of dists) {
      for (const d of dist.kind === 'int' ? (['int32', 'float32'] as const) : (['float32', 'float64'] as const)) {
        const { got, want } = both([], [[257, d]], (be, _i, [o]) => be.random(o, 123456789, 987654321, dist));
        expectExact(got[0], want[0], `random ${dist.kind} ${d}`);
      }
    }
  });

  it('reports itself', () => {
    expect(wasm.name).toBe('wasm');
    expect(wasm.info().adapter).toMatch(/WebAssembly SIMD/);
    expect(wasm2.info().details?.threads).toBe(2);
    expect(wasm.supportsDtype('float64')).toBe(true);
  });
});

describe('wasm backend: fused optimizer kernels (arena kernels in f32x4) and random draws', () => {
  const NUMELS = [1, 3, 63, 65, 257];
  const ROWLEN: Record<number, number> = { 1: 1, 3: 3, 63: 21, 65: 13, 257: 257 };
  /** Parameters of the awkward sizes, alternating weight / vector and group 0 / 1; the third inactive. */
  function infos(): ArenaParamInfo[] {
    let off = 0;
    let rows = 0;
    return [...NUMELS, 65, 1].map((numel, k) => {
      const weight = k % 2 === 0;
      const rowLen = weight ? ROWLEN[numel] : numel;
      const info = {
        offset: off,
        numel,
        group: k % 2,
        flags: (weight ? FLAG_WEIGHT | FLAG_DECAY : FLAG_VECTOR) | (k === 2 ? 0 : FLAG_ACTIVE),
        rowLen,
        rowBase: rows,
      };
      off += Math.ceil(numel / BLOCK) * BLOCK;
      rows += numel / rowLen;
      return info;
    });
  }
  const PARAMS = infos();
  const NUMEL = PARAMS.reduce((a, p) => Math.max(a, p.offset + Math.ceil(p.numel / BLOCK) * BLOCK), 0);
  const ROWS = PARAMS.reduce((a, p) => a + p.numel / p.rowLen, 0);

  /** Arena-shaped data: values in the parameters, zero padding; `special` puts NaN/Inf in. */
  function arenaData(seed: number, lo = -1, hi = 1, special?: number): Float32Array {
    const x = new Float32Array(NUMEL);
    const r = rng(seed);
    for (const p of PARAMS) for (let j = 0; j < p.numel; j++) x[p.offset + j] = lo + (hi - lo) * r();
    if (special !== undefined) x[PARAMS[4].offset + 17] = special;
    return x;
  }

  interface Arrays {
    P: Float32Array;
    D: Float32Array;
    A: Float32Array;
    M: Float32Array;
    V: Float32Array;
    S: Float32Array;
    /** Per-parameter step counts (updates taken so far). */
    T: Float32Array;
  }
  function arrays(seed: number, special?: number): Arrays {
    const S = new Float32Array(S_SLOTS);
    S[0] = 2.5;
    S[S_STEPS] = 3;
    return {
      P: arenaData(seed),
      D: arenaData(seed + 1, -1, 1, special),
      A: arenaData(seed + 2),
      M: arenaData(seed + 3),
      V: arenaData(seed + 4, 0, 1),
      S,
      T: Float32Array.from(PARAMS, (_, k) => 2 + (k % 2)),
    };
  }

  type St = Record<keyof Arrays | 'save' | 'rowNorms' | 'noise', Storage>;
  /** Runs fn with the fused kernels of `be` over uploaded copies of the arrays; returns them all afterwards. */
  function runFused(be: Backend, a: Arrays, fn: (k: FusedKernels, L: ArenaLayout, s: St) => void): Record<string, TypedArray> {
    const k = fusedKernelsFor(be);
    expect(k).not.toBeNull();
    const blockParamHost = new Int32Array(NUMEL / BLOCK);
    const L: ArenaLayout = {
      dtype: 'float32',
      numel: NUMEL,
      blocks: NUMEL / BLOCK,
      groups: 2,
      params: PARAMS,
      rows: ROWS,
      blockParam: be.upload(blockParamHost, 'int32'),
      paramTable: be.upload(new Int32Array(8 * PARAMS.length), 'int32'),
      blockParamHost,
    };
    const s = {
      ...Object.fromEntries(Object.entries(a).map(([n, x]) => [n, be.upload(x, 'float32')])),
      save: be.upload(new Float32Array(NUMEL), 'float32'),
      rowNorms: be.upload(new Float32Array(ROWS), 'float32'),
      noise: be.upload(new Float32Array(NUMEL).fill(NaN), 'float32'),
    } as St;
    try {
      fn(k!, L, s);
      return Object.fromEntries(Object.entries(s).map(([n, x]) => [n, be.readSync!(x)]));
    } finally {
      for (const x of [...Object.values(s), L.blockParam, L.paramTable]) be.release(x);
    }
  }
  /**
   * Every array bit for bit the same on wasm (f32x4) as on the CPU (the float32 reference), the
   * slots of S (norms, dots, flags, scalar programs) included: the reductions share one order.
   */
  function parity(what: string, a: Arrays, fn: (k: FusedKernels, L: ArenaLayout, s: St) => void): Record<string, TypedArray> {
    const got = runFused(wasm, a, fn);
    const want = runFused(cpu, a, fn);
    for (const n of Object.keys(want)) expectExact(got[n], want[n], `${what}: ${n}`);
    return got;
  }
  const adaptive = (s: St) => ({ p: s.P, groups: [{ on: true, eta: 0.01, bias: false }, { on: true, eta: 0.02, bias: true }] });

  it('uses the arena kernels on wasm and cpu', () => {
    expect(fusedKernelsFor(wasm)?.constructor.name).toBe('ArenaFusedKernels');
    expect(fusedKernelsFor(cpu)?.constructor.name).toBe('ArenaFusedKernels');
  });

  it('norm (float64-summed squares), plain and ASAM-weighted, with the non-finite gate, and dot', () => {
    for (const special of [undefined, NaN, Infinity]) {
      const got = parity(`norm ${special}`, arrays(10, special), (k, L, s) => {
        k.norm(L, s.D, s.S, 4, { gate: 'set' });
        k.norm(L, s.D, s.S, 5, { adaptive: adaptive(s), gate: 'or', then: [{ dst: 7, e: ['sqrt', { s: 5 }] }] });
        k.dot(L, s.D, s.P, s.S, 6, [{ dst: 8, e: ['*', { s: 6 }, 2] }]);
      });
      expect(got.S[S_FLAG]).toBe(special === undefined ? 0 : 1);
      if (special === undefined) expect(got.S[4]).toBeGreaterThan(0);
    }
  });

  it('perturb (delta and backup, plain and adaptive, gated) and restore', () => {
    for (const mode of ['delta', 'backup'] as const) {
      for (const ad of [false, true]) {
        for (const flag of [0, 1]) {
          const a = arrays(20);
          a.S[S_FLAG] = flag;
          const got = parity(`perturb ${mode} ${ad} flag ${flag}`, a, (k, L, s) => {
            k.perturb(L, s.P, s.D, s.S, { coef: [0.05, 0.1], normSlot: 0, eps: 1e-12, adaptive: ad ? adaptive(s) : undefined, mode, aux: s.A, save: s.save, gated: true });
          });
          if (flag) expectExact(got.P, a.P, 'a skipped perturb leaves p');
          else expect(Array.from(got.P)).not.toEqual(Array.from(a.P));
          const back = parity(`perturb + restore ${mode} ${ad}`, a, (k, L, s) => {
            k.perturb(L, s.P, s.D, s.S, { coef: [0.05, 0.1], normSlot: null, eps: 0, adaptive: ad ? adaptive(s) : undefined, mode, aux: s.A, gated: false });
            k.restore(L, s.P, s.A, mode);
          });
          if (mode === 'backup') expectExact(back.P, a.P, 'restore from the backup');
        }
      }
    }
  });

  it('restore + SGD in every variant, and the NaN skip', () => {
    for (const momentum of [0, 0.9]) {
      for (const nesterov of momentum ? [false, true] : [false]) {
        for (const weightDecay of [0, 5e-4]) {
          for (const step of [1, 3]) {
            for (const special of [undefined, NaN]) {
              const a = arrays(30, special);
              a.T.fill(step - 1);
              const groups = [0.1, 0.03].map((lr) => ({ lr, momentum, dampening: 0.1, nesterov, weightDecay }));
              const what = `sgd m=${momentum} n=${nesterov} wd=${weightDecay} step=${step} ${special}`;
              const got = parity(what, a, (k, L, s) => {
                k.norm(L, s.D, s.S, 4, { gate: 'set' });
                k.sgd(L, s.P, s.D, s.M, s.S, groups, { restore: { aux: s.A, mode: 'delta' }, gated: step === 3, steps: s.T });
              });
              if (special !== undefined && step === 3) expectExact(got.M, a.M, `${what}: state untouched`);
            }
          }
        }
      }
    }
  });

  it('restore + Adam / AdamW, and the NaN skip', () => {
    for (const decoupled of [false, true]) {
      for (const weightDecay of [0, 0.01]) {
        for (const special of [undefined, Infinity]) {
          const a = arrays(40, special);
          const groups = [1e-3, 3e-4].map((lr) => ({ lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay, decoupled }));
          const what = `adam decoupled=${decoupled} wd=${weightDecay} ${special}`;
          const got = parity(what, a, (k, L, s) => {
            k.norm(L, s.D, s.S, 4, { gate: 'set' });
            k.adam(L, s.P, s.D, s.M, s.V, s.S, groups, { restore: { aux: s.A, mode: 'backup' }, gated: true, steps: s.T });
            k.adam(L, s.P, s.D, s.M, s.V, s.S, groups, { gated: false, steps: s.T });
          });
          expect(Array.from(got.M)).not.toEqual(Array.from(a.M));
        }
      }
    }
  });

  it('lincomb with 0-3 terms, with and without self, slot coefficients', () => {
    for (const self of [{ c: 0 }, { c: 0.9 }, { c: -0.5, slot: 0 }]) {
      for (let t = 0; t <= 4; t++) {
        const a = arrays(60);
        a.D[PARAMS[1].offset] = -0;
        parity(`lincomb self ${JSON.stringify(self)} terms ${t}`, a, (k, L, s) => {
          const xs = [s.D, s.M, s.V, s.A];
          k.lincomb(L, s.noise, { c: 0 }, [{ x: s.P, c: 1 }], s.S);
          k.lincomb(L, s.noise, self, xs.slice(0, t).map((x, j) => ({ x, c: 0.1 * (j + 1) - 0.25, slot: j === 1 ? 0 : undefined })), s.S);
        });
      }
    }
  });

  it('Gaussian noise, plain and filter-wise', () => {
    for (const filterwise of [false, true]) {
      parity(`noise ${filterwise}`, arrays(50), (k, L, s) => {
        k.noise(L, s.noise, { key0: 0xdeadbeef, key1: 12345, scale: [1, 0.5], filterwise: filterwise ? { p: s.P, rowNorms: s.rowNorms } : null });
      });
    }
  });

  it('random draws of awkward lengths match the reference bit for bit', () => {
    const dists = [
      { kind: 'uniform', low: -0.1, high: 0.7 },
      { kind: 'normal', mean: -0.3, std: 1.7 },
      { kind: 'normal', mean: 0, std: 1 },
      { kind: 'bernoulliKeep', p: 0.1 },
    ] as const;
    for (const dist of dists) {
      for (const n of [...NUMELS, 1000]) {
        for (const [k0, k1] of [[1, 2], [0xffffffff, 0x80000000]]) {
          const { got, want } = both([], [[n, 'float32']], (be, _i, [o]) => be.random(o, k0, k1, dist));
          expectExact(got[0], want[0], `random ${JSON.stringify(dist)} n=${n} keys=${k0},${k1}`);
        }
      }
    }
  });
});
