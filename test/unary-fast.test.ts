/**
 * What test/unary-sweep.test.ts and test/wasm-unary-simd.test.ts do not pin down about the faster
 * wasm bodies (src/kernels/wasm/module.ts):
 * - exp (and sigmoid, softplus, erf on it) and silu, log, log1p, expm1, geluErf branch per vector between
 *   a fast form (every lane ordinary) and the full one; a value must give the same bits on either
 *   path, so that a result never depends on its neighbours in memory;
 * - the edges of each new form: exp's fast range (|x| <= 87) next to overflow and the subnormal
 *   results, erf's polynomial tail from |x| = 1 to where it rounds to ±1, log1p's rounding term
 *   (u = 1 + x below and from 2, x next to -1, huge x), softplus' series down to subnormal e^x,
 *   powScalar's forms for p = 0.5 and whole |p| <= 4 (bit for bit the closure, C's special cases);
 * - the float32 loop, two vectors a turn, and the bool-writing loop, sixteen elements a turn, for every length (tails and the bytes after the
 *   output), for the unary bool ops and the compare kernels that share it, and isinf / isfinite on
 *   bit patterns (NaNs with the sign bit, the float32 maximum).
 * Values are checked against the float64 closures of the op table (the CPU oracle) in float32 ulps.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BINARY_OPS, UNARY_OPS, type BinaryOp, type UnaryOp } from '../src/kernels/optable.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { SIMD_UNARY_BOOL_F32 } from '../src/kernels/wasm/module.js';
import { rng } from './helpers/webgpu.js';

const f32 = Math.fround;
const closure = (op: UnaryOp) => UNARY_OPS[op].cpu;

let wasm: WasmBackend;
beforeAll(async () => {
  wasm = await createWasmBackend({ threads: 1 });
});
afterAll(() => wasm?.dispose());

/** The float32 results of op on wasm over `input`. */
function run(op: UnaryOp, input: ArrayLike<number>, p0 = 0): Float32Array {
  const x = wasm.upload(Float32Array.from(input), 'float32');
  const out = wasm.alloc(input.length, 'float32');
  wasm.unary(op, x, out, p0, 0);
  const got = Float32Array.from(wasm.readSync(out) as Float32Array);
  wasm.release(x);
  wasm.release(out);
  return got;
}

/** Ordered integer of a float32 (±0 both 0), so that neighbours differ by 1. */
function ordered(v: number): number {
  const i = new Int32Array(new Float32Array([v]).buffer)[0];
  return i >= 0 ? i : -(i & 0x7fffffff);
}

/** Error in float32 ulps against the closure's value rounded to float32 (Infinity for a NaN mismatch). */
function ulps(got: number, want: number): number {
  if (Number.isNaN(want) || Number.isNaN(got)) return Number.isNaN(want) && Number.isNaN(got) ? 0 : Infinity;
  return Math.abs(ordered(got) - ordered(f32(want)));
}

/** The inputs whose wasm result is more than `tol` ulps from the closure, with their errors. */
function beyond(op: UnaryOp, input: ArrayLike<number>, tol: number, p0 = 0): string[] {
  const got = run(op, input, p0);
  const bad: string[] = [];
  for (let i = 0; i < input.length; i++) {
    const want = closure(op)(f32(input[i]), p0, 0);
    const e = ulps(got[i], want);
    if (e > tol) bad.push(`${op}(${input[i]}) = ${got[i]}, float64 ${want} (${e} ulp)`);
  }
  return bad.slice(0, 8);
}

/** n floats around c: c plus k float32 ulps for |k| <= n. */
function around(c: number, n = 64): number[] {
  const bits = new Int32Array(1);
  const asFloat = new Float32Array(bits.buffer);
  asFloat[0] = c;
  const b0 = bits[0];
  const out: number[] = [];
  for (let k = -n; k <= n; k++) {
    bits[0] = b0 + k;
    out.push(asFloat[0]);
  }
  return out;
}

/** Each op with a per-vector fast path: where its ordinary values lie, and lanes that force the full form. */
const PATHS: Partial<Record<UnaryOp, { ordinary: [number, number]; special: number[] }>> = {
  exp: { ordinary: [-86, 86], special: [NaN, 88.5, -100, Infinity, -Infinity] },
  sigmoid: { ordinary: [-86, 86], special: [NaN, 90, -95, Infinity, -Infinity] },
  softplus: { ordinary: [-86, 86], special: [NaN, 90, -100, Infinity, -Infinity] },
  erf: { ordinary: [-5, 5], special: [NaN, Infinity, -Infinity] },
  silu: { ordinary: [-16, 80], special: [NaN, -20, 100, -Infinity, Infinity] },
  log: { ordinary: [1e-3, 1e3], special: [0, -1, 1e-40, Infinity, NaN] },
  log1p: { ordinary: [-0.9, 1e3], special: [-1, -2, Infinity, NaN, -1e-40] },
  expm1: { ordinary: [-19, 19], special: [NaN, 1e-30, 25, -40, Infinity] },
  geluErf: { ordinary: [-1.76, 1.76], special: [NaN, 1.8, -3, -6, Infinity] },
};

describe('wasm unary bodies with a fast form per vector', () => {
  for (const [op, { ordinary: [lo, hi], special }] of Object.entries(PATHS) as [UnaryOp, { ordinary: [number, number]; special: number[] }][]) {
    it(`${op}: a value gives the same bits in an ordinary vector and next to a special lane`, () => {
      const r = rng(13);
      const values = Array.from({ length: 3 * 400 }, () => f32(lo + (hi - lo) * r()));
      const alone = new Uint32Array(run(op, values).buffer);
      // Every fourth lane special: each vector of three values takes the full form.
      const mixed: number[] = [];
      for (let i = 0; i < values.length; i += 3) mixed.push(special[(i / 3) % special.length], values[i], values[i + 1], values[i + 2]);
      const got = run(op, mixed);
      const gotBits = new Uint32Array(got.buffer);
      const differ: string[] = [];
      for (let i = 0; i < values.length; i++) {
        const k = 4 * Math.floor(i / 3) + 1 + (i % 3);
        if (gotBits[k] !== alone[i]) differ.push(`${op}(${values[i]}): ${got[k]} next to a special lane, ${new Float32Array(alone.buffer)[i]} alone`);
      }
      expect(differ.slice(0, 5)).toEqual([]);
      // The special lanes themselves: the closure's value (NaN for NaN).
      const specialBad = special.filter((s, j) => ulps(got[4 * j], closure(op)(f32(s), 0, 0)) > 3);
      expect(specialBad, `${op} of the special lanes`).toEqual([]);
    });
  }
});

describe('the edges of the new forms', () => {
  it('exp, sigmoid and softplus next to |x| = 87 (the fast range), overflow and the subnormal results', () => {
    const xs = [87, -87, 88.72283935546875, -87.33654022216797, -103.97207641601562, -88, -100, -20].flatMap((c) => around(c));
    expect(beyond('exp', xs, 1)).toEqual([]);
    expect(beyond('sigmoid', xs, 2)).toEqual([]);
    expect(beyond('softplus', xs, 2)).toEqual([]);
    expect(Array.from(run('exp', [-Infinity, Infinity, 89, -104, -150]))).toEqual([0, Infinity, Infinity, f32(Math.exp(-104)), 0]);
  });

  it('softplus: log1p(e^-|x|) by its series alone, from e = 1 down to subnormal e', () => {
    const xs: number[] = [];
    for (let i = 0; i <= 20000; i++) xs.push(f32(-110 + (130 * i) / 20000));
    xs.push(...around(0, 200), -0, 1e-40, -1e-40);
    expect(beyond('softplus', xs, 2)).toEqual([]);
    const got = run('softplus', [-0, NaN, Infinity, -Infinity, -200]);
    expect(Array.from(got)).toEqual([f32(Math.LN2), NaN, Infinity, 0, 0]);
  });

  it('erf: within 1 ulp from |x| = 1 to where it rounds to ±1; ±0, ±Inf and NaN exact', () => {
    const xs: number[] = [];
    for (let i = 0; i <= 100000; i++) xs.push(f32(1 + (3.5 * i) / 100000));
    // From 1 up only: below, the polynomial x P(x^2) (unchanged, the sweep's 2 ulps).
    xs.push(...around(1, 500).filter((v) => v >= 1), ...around(3.8325, 500), ...around(4, 100));
    expect(beyond('erf', xs, 1)).toEqual([]);
    expect(beyond('erf', xs.map((v) => -v), 1)).toEqual([]);
    const got = run('erf', [0, -0, Infinity, -Infinity, NaN, 3.4028234663852886e38, -3.4028234663852886e38, 4.5, -4.5, 1e-40]);
    expect(Object.is(got[0], 0) && Object.is(got[1], -0)).toBe(true);
    expect(Array.from(got.subarray(2))).toEqual([1, -1, NaN, 1, -1, 1, -1, f32(closure('erf')(f32(1e-40), 0, 0))]);
  });

  it('log1p: the rounding term of 1 + x below and from u = 2, x next to -1, huge x; the special values', () => {
    const xs = [
      ...around(1, 300), ...around(-0.5, 300), ...around(-1 + 2 ** -24, 20), ...around(2 ** 24, 100), ...around(2 ** 23, 100),
      ...around(1e-8, 100), ...around(-1e-8, 100), ...around(3.4028234663852886e38, 10), ...around(1e-20, 10),
    ].filter((v) => v > -1);
    const r = rng(7);
    for (let i = 0; i < 20000; i++) xs.push(f32(2 ** (60 * r() - 30) * (r() < 0.5 ? -0.999 : 1)));
    expect(beyond('log1p', xs, 1)).toEqual([]);
    const got = run('log1p', [-1, -2, -Infinity, Infinity, NaN, -0, 1e-40, -1e-40, f32(-1 + 2 ** -24)]);
    expect(Array.from(got.subarray(0, 5))).toEqual([-Infinity, NaN, NaN, Infinity, NaN]);
    expect(Object.is(got[5], -0)).toBe(true);
    expect(Array.from(got.subarray(6))).toEqual([f32(1e-40), f32(-1e-40), f32(-24 * Math.LN2)]);
  });
});

describe('powScalar: the whole-exponent and square-root forms', () => {
  /** Random float32 bit patterns (every exponent, both signs, subnormals) and the specials. */
  function bases(): Float32Array {
    const r = rng(21);
    const bits = Uint32Array.from({ length: 40000 }, () => Math.floor(r() * 2 ** 32));
    const out = new Float32Array(bits.buffer);
    out.set([0, -0, 1, -1, Infinity, -Infinity, NaN, 1e-45, -1e-45, 3.4028234663852886e38, -3.4028234663852886e38, 2, -2, 0.5, -8]);
    return out;
  }

  it('bit for bit the float64 closure for p in {0.5, ±1, ±2, ±3, ±4} (and the general form beside them)', () => {
    const xs = bases();
    for (const p of [0.5, 1, -1, 2, -2, 3, -3, 4, -4, 4.5, -0.5, 1.0000001]) {
      const got = run('powScalar', xs, f32(p));
      const bad: string[] = [];
      for (let i = 0; i < xs.length && bad.length < 5; i++) {
        const want = f32(closure('powScalar')(xs[i], f32(p), 0));
        if (!Object.is(got[i], want) && !(Number.isNaN(want) && Number.isNaN(got[i]))) bad.push(`${xs[i]} ** ${p} = ${got[i]}, closure ${want}`);
      }
      expect(bad, `p = ${p}`).toEqual([]);
    }
  });

  it("C's (and PyTorch's) special cases on the fast forms", () => {
    const xs = [0, -0, Infinity, -Infinity, NaN, 1, -1, -2, 4];
    const cases: [number, number[]][] = [
      [0.5, [0, 0, Infinity, Infinity, NaN, 1, NaN, NaN, 2]],
      [-1, [Infinity, -Infinity, 0, -0, NaN, 1, -1, -0.5, 0.25]],
      [-2, [Infinity, Infinity, 0, 0, NaN, 1, 1, 0.25, 0.0625]],
      [3, [0, -0, Infinity, -Infinity, NaN, 1, -1, -8, 64]],
      [-3, [Infinity, -Infinity, 0, -0, NaN, 1, -1, -0.125, 0.015625]],
    ];
    for (const [p, want] of cases) {
      const got = Array.from(run('powScalar', xs, p));
      // toEqual tells -0 from 0 and matches NaN with NaN.
      expect(got, `x ** ${p}`).toEqual(want);
    }
  });
});

describe('the float32 loop, two vectors a turn', () => {
  it('every length from 1 to 40 gives each element its own result, the element after the output untouched', () => {
    const r = rng(5);
    const values = Array.from({ length: 40 }, () => f32((r() - 0.5) * 12));
    for (const op of ['tanh', 'sin', 'relu', 'softplus', 'exp'] as UnaryOp[]) {
      // Each value's result from a vector of four copies of it.
      const own = values.map((v) => run(op, [v, v, v, v])[0]);
      for (let n = 1; n <= 40; n++) {
        const x = wasm.upload(Float32Array.from(values.slice(0, n)), 'float32');
        const outer = wasm.upload(new Float32Array(n + 1).fill(123), 'float32');
        wasm.unary(op, x, wasm.view(outer, 0, n), 0, 0);
        expect(Array.from(wasm.readSync(outer) as Float32Array), `${op} over ${n}`).toEqual([...own.slice(0, n), 123]);
        wasm.release(x);
        wasm.release(outer);
      }
    }
  });
});

describe('the bool-writing loop, sixteen elements a turn', () => {
  const VALUES = [0, -0, 1, NaN, Infinity, -Infinity, 1e-40, -3, 3.4028234663852886e38, -2.5];

  it('unary bool ops: every length from 1 to 40, the bytes after the output untouched', () => {
    for (const op of SIMD_UNARY_BOOL_F32) {
      for (let n = 1; n <= 40; n++) {
        const input = Float32Array.from({ length: n }, (_, i) => VALUES[(i * 7) % VALUES.length]);
        const x = wasm.upload(input, 'float32');
        const outer = wasm.upload(new Uint8Array(n + 5).fill(9), 'bool');
        wasm.unary(op, x, wasm.view(outer, 0, n), 0, 0);
        const want = [...Array.from(input, (v) => closure(op)(v, 0, 0)), 9, 9, 9, 9, 9];
        expect(Array.from(wasm.readSync(outer) as Uint8Array), `${op} over ${n}`).toEqual(want);
        wasm.release(x);
        wasm.release(outer);
      }
    }
  });

  it('isinf and isfinite on bit patterns: NaNs with the sign bit, the largest finite, the smallest subnormal', () => {
    const bits = Uint32Array.from([0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7f7fffff, 0xff7fffff, 1, 0x80000001, 0, 0x80000000, 0x3f800000, 0x00800000]);
    const input = new Float32Array(bits.buffer);
    const x = wasm.upload(input, 'float32');
    for (const op of ['isinf', 'isfinite', 'isnan'] as const) {
      const out = wasm.alloc(input.length, 'bool');
      wasm.unary(op, x, out, 0, 0);
      expect(Array.from(wasm.readSync(out) as Uint8Array), op).toEqual(Array.from(input, (v) => closure(op)(v, 0, 0)));
      wasm.release(out);
    }
    wasm.release(x);
  });

  it('compare kernels (bool out) over rows of every length, broadcast along rows and columns', () => {
    const contiguous = (shape: number[]) => shape.map((_, i) => shape.slice(i + 1).reduce((p, q) => p * q, 1));
    for (const op of ['lt', 'eq', 'ge'] as BinaryOp[]) {
      for (let cols = 1; cols <= 37; cols += 3) {
        for (const bShape of [[1, cols], [3, 1], [3, cols]]) {
          const shape = [3, cols];
          const n = 3 * cols;
          const nb = bShape[0] * bShape[1];
          const av = Float32Array.from({ length: n }, (_, i) => VALUES[(i * 3) % VALUES.length]);
          const bv = Float32Array.from({ length: nb }, (_, i) => VALUES[(i * 5 + 1) % VALUES.length]);
          const a = wasm.upload(av, 'float32');
          const b = wasm.upload(bv, 'float32');
          const outer = wasm.upload(new Uint8Array(n + 3).fill(9), 'bool');
          const bStrides = contiguous(bShape).map((s, i) => (bShape[i] === 1 ? 0 : s));
          wasm.binary(op, a, b, wasm.view(outer, 0, n), { shape, aStrides: contiguous(shape), bStrides });
          const want: number[] = [];
          for (let i = 0; i < 3; i++) for (let j = 0; j < cols; j++) want.push(BINARY_OPS[op].cpu(av[i * cols + j], bv[i * bStrides[0] + j * bStrides[1]]));
          expect(Array.from(wasm.readSync(outer) as Uint8Array), `${op} [3, ${cols}] with b [${bShape}]`).toEqual([...want, 9, 9, 9]);
          [a, b, outer].forEach((s) => wasm.release(s));
        }
      }
    }
  });
});
