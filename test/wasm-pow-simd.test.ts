/**
 * Binary float32 pow on wasm as a SIMD kernel (module.ts powV: the body powScalar shares, with one
 * exponent per lane) against the CPU reference (powC: C's and PyTorch's rules, Math.pow rounded
 * once to float32). Lanes of one vector take different branches (whole exponents as products,
 * p = 0.5 as a square root, the log-exp form, the special cases), so the grids mix them in every
 * vector and also give each vector a single exponent (the per-vector fast forms). Checked: every
 * pair of a grid of special values bit for bit; exact powers (float32 ties such as 31^5 among
 * them) bit for bit; C's rules as written values; a random sweep over the whole float range in
 * float32 ulps (reported and held to MAX_ULP); every broadcast pattern of the row kernels, with
 * tails and rows of 1-9 elements, the element after the output untouched; one thread and calls
 * split over two and three threads; int32 pow still PyTorch's wrapping integer power.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { BINARY_OPS, type BinaryOpDef } from '../src/kernels/optable.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { SIMD_BINARY_F32_CALLED } from '../src/kernels/wasm/module.js';
import { broadcastShapes, broadcastStrides } from '../src/tensor/shape.js';
import { rng } from './helpers/random.js';
import { splitBackends } from './helpers/thread-splits.js';

const f32 = Math.fround;
const numel = (s: number[]) => s.reduce((x, y) => x * y, 1);
/** Largest error in float32 ulps over the random sweep (the unary powScalar's sweep finds 0). */
const MAX_ULP = 1;

let one: WasmBackend;
let split: Awaited<ReturnType<typeof splitBackends>>;
const cpu = new CpuBackend();
beforeAll(async () => {
  one = await createWasmBackend({ threads: 1 });
  split = await splitBackends();
});
afterAll(() => {
  one?.dispose();
  split?.dispose();
});

/** pow over a and b of the given shapes (broadcast) on a backend, as plain numbers. */
function pow(be: CpuBackend | WasmBackend, as: number[], bs: number[], av: ArrayLike<number>, bv: ArrayLike<number>, dtype: 'float32' | 'int32' = 'float32'): number[] {
  const shape = broadcastShapes('test', as, bs);
  const layout = { shape, aStrides: broadcastStrides(as, shape), bStrides: broadcastStrides(bs, shape) };
  const make = (v: ArrayLike<number>) => (dtype === 'float32' ? Float32Array.from(v) : Int32Array.from(v));
  const [a, b] = [be.upload(make(av), dtype), be.upload(make(bv), dtype)];
  const o = be.alloc(numel(shape), dtype);
  be.binary('pow', a, b, o, layout);
  const got = Array.from(be.readSync(o) as ArrayLike<number>);
  [a, b, o].forEach((s) => be.release(s));
  return got;
}

const same = (x: number, y: number) => Object.is(x, y) || (Number.isNaN(x) && Number.isNaN(y));

/** The first few elements where got and want differ bit for bit (any NaN matches any NaN). */
function differences(got: number[], want: number[], a: (i: number) => number, b: (i: number) => number): string[] {
  const bad: string[] = [];
  for (let i = 0; i < want.length && bad.length < 8; i++) if (!same(got[i], want[i])) bad.push(`pow(${a(i)}, ${b(i)}) = ${got[i]}, reference ${want[i]}`);
  if (got.length !== want.length) bad.push(`${got.length} results for ${want.length}`);
  return bad;
}

/** Ordered integer of a float32 (±0 both 0), so that neighbours differ by 1. */
function ordered(x: number): number {
  const i = new Int32Array(Float32Array.of(x).buffer)[0];
  return i >= 0 ? i : -(i & 0x7fffffff);
}
/** float32 ulps between a result and the reference's (Infinity where only one is NaN or they differ in infinity). */
function ulps(got: number, want: number): number {
  if (Number.isNaN(got) || Number.isNaN(want)) return Number.isNaN(got) && Number.isNaN(want) ? 0 : Infinity;
  if (!Number.isFinite(got) || !Number.isFinite(want)) return got === want ? 0 : Infinity;
  return Math.abs(ordered(got) - ordered(want));
}

const MAX = 3.4028234663852886e38;
/** Bases and exponents of every kind: zeros, ±1, ±Inf, NaN, subnormals, the extremes, whole and fractional, odd and even, ties. */
const SPECIALS = [
  0, -0, 1, -1, 2, -2, 0.5, -0.5, 3, -3, 4, -4, 5, -5, 1e-40, -1e-40, 1e-45, -1e-45, 1.1754943508222875e-38, 1e30, -1e30, MAX, -MAX,
  Infinity, -Infinity, NaN, f32(1 + 2 ** -23), f32(1 - 2 ** -24), -f32(1 + 2 ** -23), 7.25, 31, -31, 2.5, -2.5, f32(0.1), 1.5, -1.5,
  f32(1 / 3), 100, -100, 1e10, -1e10, 16777216, 16777215, -16777215, 32, -32, 33, -33, 63, 64, 0.25, -0.3, 127, 128, 149, -149, 150,
].map(f32);

describe('wasm float32 pow: a SIMD kernel with the reference bits', () => {
  it('float32 pow runs the SIMD kernel, int32 pow the reference (counted calls of the CPU fallback)', () => {
    expect(SIMD_BINARY_F32_CALLED as readonly string[]).toContain('pow');
    const fallback = (one as unknown as { cpu: { binary: (...a: unknown[]) => void } }).cpu;
    const binary0 = fallback.binary;
    let calls = 0;
    fallback.binary = (...a: unknown[]) => {
      calls++;
      binary0.apply(fallback, a);
    };
    try {
      pow(one, [5, 3], [1, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [0.5, 2, -1.5]);
      pow(one, [6], [1], [1, 2, 3, 4, 5, 6], [3]);
      expect(calls, 'float32').toBe(0);
      pow(one, [3], [3], [2, 3, 4], [3, 2, 1], 'int32');
      expect(calls, 'int32').toBe(1);
    } finally {
      fallback.binary = binary0;
    }
  });

  it('every pair of special bases and exponents, bit for bit, exponents mixed within vectors', () => {
    const n = SPECIALS.length;
    const a = Array.from({ length: n * n }, (_, i) => SPECIALS[i % n]);
    // Exponent index i / n + i: consecutive lanes carry different exponents.
    const b = Array.from({ length: n * n }, (_, i) => SPECIALS[(Math.floor(i / n) + i) % n]);
    const want = pow(cpu, [n * n], [n * n], a, b);
    expect(differences(pow(one, [n * n], [n * n], a, b), want, (i) => a[i], (i) => b[i])).toEqual([]);
  });

  it('every pair again with one exponent per row ([P, 1] against [1, X]: the per-vector fast forms)', () => {
    const n = SPECIALS.length;
    const want = pow(cpu, [1, n], [n, 1], SPECIALS, SPECIALS);
    expect(differences(pow(one, [1, n], [n, 1], SPECIALS, SPECIALS), want, (i) => SPECIALS[i % n], (i) => SPECIALS[Math.floor(i / n)])).toEqual([]);
  });

  it("C's (and PyTorch's) rules as values", () => {
    const cases: [number, number, number][] = [
      [NaN, 0, 1], [NaN, -0, 1], [Infinity, 0, 1], [1, NaN, 1], [1, Infinity, 1], [1, -Infinity, 1], [-1, Infinity, 1], [-1, -Infinity, 1],
      [-2, 0.5, NaN], [-2, 2.5, NaN], [-Infinity, 0.5, Infinity], [-0, 0.5, 0], [-0, -3, -Infinity], [0, -3, Infinity], [-0, -2, Infinity],
      [-0, 3, -0], [-0, 2, 0], [-Infinity, 3, -Infinity], [-Infinity, -3, -0], [-Infinity, 2, Infinity], [-Infinity, -2, 0],
      [0.5, Infinity, 0], [2, Infinity, Infinity], [0.5, -Infinity, Infinity], [2, -Infinity, 0], [-0.5, Infinity, 0], [-2, -Infinity, 0],
      [2, 200, Infinity], [2, -200, 0], [2, -140, 2 ** -140], [-2, -149, -(2 ** -149)], [2, -150, 0], [2, 127, 2 ** 127], [2, 128, Infinity],
      [1e-40, 0.5, f32(Math.sqrt(f32(1e-40)))], [4, 1.5, 8], [0.25, -2.5, 32], [-3, 3, -27], [NaN, 1, NaN], [2, NaN, NaN],
      [31, 5, f32(28629151)], [-31, 5, f32(-28629151)], [3, 15, 14348907], [-1.5, 5, -7.59375], [10, 38, f32(1e38)], [10, 39, Infinity],
    ];
    const got = pow(one, [cases.length], [cases.length], cases.map((c) => c[0]), cases.map((c) => c[1]));
    expect(differences(got, cases.map((c) => f32(c[2])), (i) => cases[i][0], (i) => cases[i][1])).toEqual([]);
  });

  it('exact powers (float32 ties among them) bit for bit: small odd bases, halves, powers of two, whole exponents up to 40', () => {
    const bases: number[] = [];
    for (let m = 1; m <= 63; m += 2) for (const s of [1, -1, 0.5, -0.25, 2 ** -60, 2 ** 40]) bases.push(f32(m * s));
    for (const x of [7.25, 1.5, 1.25, 1.125, 2.75, 0.75, 0.375, 3.5, 6.5, 13.5]) bases.push(x, -x, 1 / x);
    const a: number[] = [];
    const b: number[] = [];
    for (const x of bases) for (let p = -40; p <= 40; p++) a.push(x), b.push(p);
    // Float32 ties from odd bases of 13, 9 and 7 bits squared, cubed and to the fourth (a 25-bit
    // power): the log-exp form alone rounds some of them the other way.
    const r = rng(99);
    for (const [bits, p] of [[13, 2], [9, 3], [7, 4], [5, 5], [4, 7]]) {
      for (let k = 0; k < 1500; k++) a.push(f32((2 * Math.floor(r() * 2 ** (bits - 1)) + 1) * 2 ** Math.floor(r() * 20 - 10))), b.push(k % 2 ? p : -p);
    }
    // Square roots of squares (p = 0.5 mixed with the other exponents in a vector).
    for (let m = 0; m < 400; m++) a.push(f32(m * m * 2 ** ((m % 40) - 20))), b.push(m % 3 ? 0.5 : 1.5);
    const want = pow(cpu, [a.length], [b.length], a, b);
    expect(differences(pow(one, [a.length], [b.length], a, b), want, (i) => a[i], (i) => b[i])).toEqual([]);
  });

  it(`a random sweep over the whole float range: within ${MAX_ULP} ulp (reported)`, () => {
    const r = rng(20261130);
    const bits = new Uint32Array(1);
    const asFloat = new Float32Array(bits.buffer);
    const randomFloat = () => {
      bits[0] = Math.floor(r() * 2 ** 32);
      return asFloat[0];
    };
    const a: number[] = [];
    const b: number[] = [];
    for (let i = 0; i < 200000; i++) {
      const x = i % 5 === 0 ? f32((r() - 0.5) * 8) : randomFloat();
      const lx = Math.log2(Math.abs(x)) || 1;
      let p: number;
      switch (i % 6) {
        case 0: // A result anywhere from the subnormals (2^-160) past the overflow (2^140).
          p = (-160 + 300 * r()) / lx;
          break;
        case 1: // Whole, both parities, both signs (negative bases keep or flip their sign).
          p = Math.round((r() - 0.5) * 80);
          break;
        case 2: // Whole and large: products of the log-exp form only.
          p = Math.round((r() - 0.5) * 2 ** (6 + 18 * r()));
          break;
        case 3:
          p = (r() - 0.5) * 20;
          break;
        case 4:
          p = randomFloat();
          break;
        default: // Results near the overflow and underflow edges.
          p = ((r() < 0.5 ? 128 : -149) + (r() - 0.5) * 2) / lx;
      }
      a.push(f32(x));
      b.push(f32(p));
    }
    const got = pow(one, [a.length], [b.length], a, b);
    const want = pow(cpu, [a.length], [b.length], a, b);
    let worst = 0;
    let off = 0;
    let at = -1;
    want.forEach((w, i) => {
      const e = ulps(got[i], w);
      if (e > 0) off++;
      if (e > worst) [worst, at] = [e, i];
    });
    // Zeros must keep their sign (ordered() counts -0 and 0 alike).
    const signs = want.filter((w, i) => w === 0 && !Object.is(w, got[i])).length;
    console.log(`pow sweep: ${want.length} pairs, ${off} off the reference, worst ${worst} ulp${at >= 0 ? ` at pow(${a[at]}, ${b[at]})` : ''}`);
    expect(worst, `worst at pow(${a[at]}, ${b[at]}) = ${got[at]}, reference ${want[at]}`).toBeLessThanOrEqual(MAX_ULP);
    expect(signs).toBe(0);
    // Nearly every element is the reference's bits (double roundings are rare).
    expect(off).toBeLessThan(want.length * 1e-4);
  });
});

/** Bases and exponents for the layouts: mostly ordinary, specials now and then, exponents of every kind. */
function data(n: number, seed: number, exponents: boolean): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => {
    if (r() < 0.1) return SPECIALS[Math.floor(r() * SPECIALS.length)];
    if (!exponents) return f32((r() - 0.3) * 6);
    const k = r();
    return k < 0.3 ? Math.round((r() - 0.5) * 10) : k < 0.4 ? 0.5 : f32((r() - 0.5) * 6);
  });
}

/** [a's shape, b's shape]: every broadcast pattern of the row kernels, short rows and tails. */
const LAYOUTS: [number[], number[]][] = [
  ...[1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 33].map((n): [number[], number[]] => [[n], [n]]),
  [[17], [1]], // a scalar exponent
  [[1], [17]], // a scalar base
  [[5, 3], [1, 3]],
  [[7, 5], [7, 1]], // one exponent per row, rows of 5
  [[9, 1], [1, 9]], // both broadcast
  [[1700, 10], [1, 10]], // periodic rows (index.ts binaryPeriodic)
  [[1, 10], [1700, 10]],
  [[21, 16, 7, 7], [1, 16, 1, 1]], // per-channel exponent over 7x7 maps
  [[2, 5, 200], [2, 1, 200]],
  [[33, 31], [33, 1]],
  [[40, 256], [1, 256]],
];

describe('wasm float32 pow: broadcast patterns, tails and threads', () => {
  it('every broadcast pattern gives the reference bits, one thread and split over two and three', () => {
    const before = split.splits.map((s) => s());
    LAYOUTS.forEach(([as, bs], t) => {
      const [av, bv] = [data(numel(as), 10 * t, false), data(numel(bs), 10 * t + 1, true)];
      const want = pow(cpu, as, bs, av, bv);
      for (const be of [one, ...split.many]) {
        const got = pow(be, as, bs, av, bv);
        expect(differences(got, want, (i) => i, (i) => i), `${JSON.stringify(as)} ** ${JSON.stringify(bs)}`).toEqual([]);
      }
    });
    // The split backends really split (some layouts run as one row and split by columns).
    split.splits.forEach((s, k) => expect(s() - before[k], `${k + 2} threads`).toBeGreaterThan(0));
  });

  it('tails and short rows leave the element after the output untouched', () => {
    for (let rows = 1; rows <= 3; rows++) {
      for (let cols = 1; cols <= 9; cols++) {
        const n = rows * cols;
        const [av, bv] = [data(n, 7 * n + rows, false), data(cols, 3 * n, true)];
        const shape = [rows, cols];
        const layout = { shape, aStrides: [cols, 1], bStrides: [0, 1] };
        const a = one.upload(Float32Array.from(av), 'float32');
        const b = one.upload(Float32Array.from(bv), 'float32');
        const outer = one.upload(new Float32Array(n + 1).fill(123), 'float32');
        one.binary('pow', a, b, one.view(outer, 0, n), layout);
        const got = Array.from(one.readSync(outer) as Float32Array);
        const want = [...pow(cpu, shape, [1, cols], av, bv), 123];
        expect(differences(got, want, (i) => av[i], (i) => bv[i % cols]), `[${rows}, ${cols}]`).toEqual([]);
        [a, b, outer].forEach((s) => one.release(s));
      }
    }
  });

  it("int32 pow keeps PyTorch's wrapping integer power (the reference path)", () => {
    expect((BINARY_OPS.pow as BinaryOpDef).int).toBe(true);
    const a = [3, -2, 2, 1, -1, -1, 5, 0, 0, 7, -3, 2];
    const b = [40, 31, -1, -5, -3, -4, 0, 0, 3, 11, 19, 31];
    // 3^40 wraps: (3^20)^2 modulo 2^32; 2^31 and (-2)^31 are -2^31; a negative exponent truncates 1 / a^|b|.
    const want = [Math.imul(3 ** 20 | 0, 3 ** 20 | 0), -(2 ** 31), 0, 1, -1, 1, 1, 1, 0, 7 ** 11, -(3 ** 19), -(2 ** 31)];
    expect(pow(one, [12], [12], a, b, 'int32')).toEqual(want);
    expect(pow(cpu, [12], [12], a, b, 'int32')).toEqual(want);
  });
});
