/**
 * The wasm binary kernels' fast paths against the CPU reference, bit for bit (a NaN for a NaN):
 * the row kernels' pointer-moving main loop (four vectors a turn, then one, then a tail of 1-3)
 * at 0, 1, 3, 4, 5, 17 and longer rows; short rows run as written-out periodic rows (a bias over
 * [R, 10], a per-channel bias over 7x7 maps: index.ts binaryPeriodic), with a remainder row and
 * with the repeating operand first or second; maximum / minimum as pmax / pmin with the NaN lanes
 * set (maximum(0, -0) is -0, as a > b ? a : b gives); the logical ops as SIMD kernels; every op
 * of the op table over float32 (and int32 where it has an integer form), with NaN, Inf and
 * signed zeros in both operands; and the same calls split over two threads.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { SIMD_BINARY_F32, SIMD_COMPARE } from '../src/kernels/wasm/module.js';
import { BINARY_OPS, type BinaryOp, type BinaryOpDef } from '../src/kernels/optable.js';
import type { DType } from '../src/tensor/dtype.js';
import { broadcastShapes, broadcastStrides } from '../src/tensor/shape.js';
import { rng } from './helpers/random.js';

const OPS = Object.keys(BINARY_OPS) as BinaryOp[];
const numel = (s: number[]) => s.reduce((x, y) => x * y, 1);

/** [a's shape, b's shape]: edge lengths, row and channel biases, scalars, both orders. */
const CASES: [number[], number[]][] = [
  ...[0, 1, 3, 4, 5, 17, 33, 70].map((n): [number[], number[]] => [[n], [n]]),
  [[17], [1]],
  [[1], [17]],
  [[5, 3], [1, 3]], // short rows, too few elements for the periodic rows
  [[7, 5], [7, 1]],
  [[128, 10], [1, 10]], // too few elements for periodic rows (index.ts PERIODIC_MIN)
  [[1700, 10], [1, 10]], // periodic: period 10, 65 rows of 260 and a remainder row of 100
  [[1, 10], [1700, 10]], // the repeating operand first
  [[1000, 17], [17]], // period 17: 62 rows of 272 and a remainder of 136
  [[5500, 3], [1, 3]], // period 3: rows of 264 and a remainder of 132
  [[3281, 5], [1, 5]], // period 5: rows of 260 and a remainder of 25 (vectors and a tail)
  [[1639, 10], [10]], // a remainder of 10
  [[21, 16, 7, 7], [1, 16, 1, 1]], // per-channel bias over 7x7 maps: period 784
  [[3, 16, 7, 7], [1, 16, 1, 1]], // too few elements for periodic rows
  [[280, 4, 3, 5], [1, 4, 1, 5]], // period 60 with a stride-0 dim inside it: rows of 300
  [[330, 3, 1, 17], [1, 3, 1, 17]], // period 51: rows of 408 and a remainder of 102
  [[20, 256], [1, 256]], // rows already long: the plain row kernel
  [[2, 100, 90], [1, 1, 90]], // period 90 over collapsed dims: rows of 360
  [[2, 5, 200], [2, 1, 200]], // b repeats inside each block only: not periodic over the whole
  [[2, 256, 7, 7], [1, 256, 1, 1]], // short rows, but a period (12544) past the longest written row
  [[30, 2000], [1, 2000]],
  [[4099], [1]],
  [[33, 31], [33, 1]],
];

/** Float32 values with NaN, +-Inf, +-0 and equal pairs among them. */
function values(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const specials = [NaN, Infinity, -Infinity, 0, -0, 1, -1, 2];
  return Float32Array.from({ length: n }, () => (r() < 0.15 ? specials[Math.floor(r() * specials.length)] : Math.round((r() * 8 - 4) * 4) / 4));
}
function ints(n: number, seed: number): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: n }, () => (r() < 0.1 ? 0 : Math.floor(r() * 21) - 10));
}

function run(be: CpuBackend | WasmBackend, op: BinaryOp, dtype: DType, as: number[], bs: number[], av: Float32Array | Int32Array, bv: Float32Array | Int32Array): number[] {
  const shape = broadcastShapes('test', as, bs);
  const layout = { shape, aStrides: broadcastStrides(as, shape), bStrides: broadcastStrides(bs, shape) };
  const [a, b] = [be.upload(av, dtype), be.upload(bv, dtype)];
  const o = be.alloc(numel(shape), (BINARY_OPS[op] as BinaryOpDef).compare ? 'bool' : dtype);
  be.binary(op, a, b, o, layout);
  const got = Array.from(be.readSync(o) as ArrayLike<number>);
  [a, b, o].forEach((s) => be.release(s));
  return got;
}

/** Index of the first element that differs (Object.is; any NaN matches any NaN), or -1. */
function firstDifference(got: number[], want: number[]): number {
  if (got.length !== want.length) return 0;
  return want.findIndex((w, i) => !Object.is(got[i], w) && !(Number.isNaN(got[i]) && Number.isNaN(w)));
}

function expectSame(be: WasmBackend, cpu: CpuBackend, op: BinaryOp, dtype: DType, as: number[], bs: number[], seed: number): void {
  const make = (s: number[], k: number) => (dtype === 'int32' ? ints(numel(s), seed + k) : values(numel(s), seed + k));
  const [av, bv] = [make(as, 0), make(bs, 1)];
  const got = run(be, op, dtype, as, bs, av, bv);
  const want = run(cpu, op, dtype, as, bs, av, bv);
  const at = firstDifference(got, want);
  expect(at, `${op} ${dtype} ${JSON.stringify([as, bs])}: element ${at}: got ${got[at]}, want ${want[at]}`).toBe(-1);
}

let one: WasmBackend;
let two: WasmBackend;
const cpu = new CpuBackend();
beforeAll(async () => {
  one = await createWasmBackend({ threads: 1 });
  // minThreadedWork 1: every call the cost model may split is split.
  two = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
});
afterAll(() => [one, two].forEach((b) => b?.dispose()));

describe('wasm binary kernels: bits of the reference', () => {
  it('the logical ops have SIMD kernels, as the comparisons and the arithmetic do', () => {
    for (const op of ['logicalAnd', 'logicalOr', 'logicalXor', 'eq', 'ge']) expect(SIMD_COMPARE as readonly string[]).toContain(op);
    for (const op of ['add', 'sub', 'mul', 'div', 'maximum', 'minimum']) expect(SIMD_BINARY_F32 as readonly string[]).toContain(op);
  });

  for (const op of OPS) {
    it(`${op}: float32${(BINARY_OPS[op] as BinaryOpDef).int ? ' and int32' : ''}, every case, one and two threads`, () => {
      CASES.forEach(([as, bs], t) => {
        for (const be of [one, two]) {
          expectSame(be, cpu, op, 'float32', as, bs, 100 * t);
          if ((BINARY_OPS[op] as BinaryOpDef).int) expectSame(be, cpu, op, 'int32', as, bs, 100 * t + 50);
        }
      });
    });
  }

  it('maximum and minimum on signed zeros and NaN in either operand, lane by lane', () => {
    const a = Float32Array.of(0, -0, 0, -0, NaN, 1, NaN, -Infinity, Infinity, 3, 0, -0);
    const b = Float32Array.of(-0, 0, 0, -0, 1, NaN, NaN, Infinity, -Infinity, 3, 5, -5);
    for (const op of ['maximum', 'minimum'] as const) {
      const got = run(one, op, 'float32', [12], [12], a, b);
      const want = run(cpu, op, 'float32', [12], [12], a, b);
      expect(firstDifference(got, want), `${op}: ${got} against ${want}`).toBe(-1);
    }
    // The reference's ties give b: maximum(0, -0) is -0, maximum(-0, 0) is 0.
    expect(Object.is(run(one, 'maximum', 'float32', [1], [1], Float32Array.of(0), Float32Array.of(-0))[0], -0)).toBe(true);
    expect(Object.is(run(one, 'minimum', 'float32', [1], [1], Float32Array.of(-0), Float32Array.of(0))[0], 0)).toBe(true);
  });

  it('logical ops: NaN and -0 are nonzero and zero, as in the reference', () => {
    const a = Float32Array.of(NaN, -0, 0, 2, NaN, -0, 1e-45, -Infinity);
    const b = Float32Array.of(1, 1, NaN, 0, -0, -0, 1, 0);
    const want: Record<string, number[]> = {
      logicalAnd: [1, 0, 0, 0, 0, 0, 1, 0],
      logicalOr: [1, 1, 1, 1, 1, 0, 1, 1],
      logicalXor: [0, 1, 1, 1, 1, 0, 0, 1],
    };
    for (const [op, w] of Object.entries(want)) {
      expect(run(one, op as BinaryOp, 'float32', [8], [8], a, b), op).toEqual(w);
      expect(run(cpu, op as BinaryOp, 'float32', [8], [8], a, b), `${op} (reference)`).toEqual(w);
    }
  });

  it('in place: the contiguous operand is the output, against a periodic one', () => {
    // a = a + b: each vector of a is read before it is written over.
    const as = [1700, 10];
    const shape = as;
    const layout = { shape, aStrides: broadcastStrides(as, shape), bStrides: broadcastStrides([1, 10], shape) };
    const av = values(17000, 7).map((v) => (Number.isNaN(v) ? 1 : v));
    const bv = values(10, 8);
    const results = [one, cpu].map((be) => {
      const a = be.upload(av, 'float32');
      const b = be.upload(bv, 'float32');
      be.binary('add', a, b, a, layout);
      const r = Array.from(be.readSync(a) as Float32Array);
      [a, b].forEach((s) => be.release(s));
      return r;
    });
    expect(firstDifference(results[0], results[1])).toBe(-1);
  });
});
