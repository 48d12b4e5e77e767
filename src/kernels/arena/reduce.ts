/**
 * The fixed summation order of arena reductions, shared by every renderer so that the float32
 * reference and the wasm kernels agree bit for bit (and WebGPU within a few ulps):
 *
 * 1. Per 64-element block (a block lies inside one parameter), sixteen accumulators A[m][L]
 *    (four quads of four lanes): A[m][L] takes the elements 16q + 4m + L of the block in
 *    increasing q, starting from +0; elements past the parameter's end, and blocks of inactive
 *    parameters or padding, add nothing. The block's partial is, with
 *    V[L] = (A[0][L] + A[1][L]) + (A[2][L] + A[3][L]), (V[0] + V[1]) + (V[2] + V[3]) (the max
 *    of all sixteen for max |x|, or for the non-finite flag). Four independent quads keep a SIMD
 *    loop from waiting on one accumulator's additions (each chain is four long per block).
 * 2. The block partials in a fixed pairwise tree: for w = 1, 2, 4, ...: P[i] = P[i] (+) P[i + w]
 *    for every i that is a multiple of 2w; the result is P[0].
 *
 * `norm` is overflow-free and divides nothing: every scale is a power of two, applied by a
 * multiplication (exact while the product is a normal number). A block's partial is (m, s): m its
 * largest |x| (for most blocks, a power of two standing for it: NORM_DIRECT below), s = the sum
 * of (x f)^2 in the lane order above (for most blocks, the sum of x^2 times f^2) with f = 2^(B - e),
 * where e is m's biased exponent (normExponent: clamped to [1, 2B - 1], so that f and 2^(e - B)
 * are normal numbers) and B the dtype's exponent bias (127 for float32, 1023 for float64); s = 0
 * when m is 0, Inf or NaN. Two partials combine as m = max(m1, m2) and, e being m's exponent,
 * s = s1 F(e1 - e) + s2 F(e2 - e) with F(d) = 2^(2d), flushed to 0 below the smallest normal
 * 2^(1 - B) (a term that far below the largest is under s's last bit); the side holding the maximum
 * has F = 1, so its s is taken as is. The norm is sqrt(s) 2^(e - B) (m itself when m is 0, Inf or
 * NaN: a NaN anywhere gives NaN, an infinity Inf).
 */
import type { ReductionKind } from './expr.js';

/** Partial arrays per reduction: norm keeps two (m and s). */
export function partialsOf(kind: ReductionKind): number {
  return kind === 'norm' ? 2 : 1;
}

/** Where each reduction's partials start in a block's partials, and how many there are in all. */
export function partialOffsets(reductions: readonly { reduction: ReductionKind }[]): { base: number[]; total: number } {
  const base: number[] = [];
  let total = 0;
  for (const r of reductions) {
    base.push(total);
    total += partialsOf(r.reduction);
  }
  return { base, total };
}

/**
 * How a block's reductions are split over passes (indexes into the kernel's reductions): a kernel
 * that writes nothing takes them all in one pass (`early`); one that writes takes its norms
 * first, before any element of the block is written (a norm block outside the direct range reads
 * the block again, and must see the old values), and the others with the writes (`late`).
 */
export function reductionPasses(kernel: { readonly reductions: readonly { reduction: ReductionKind }[]; readonly writes: readonly unknown[] }): { early: number[]; late: number[] } {
  const idx = kernel.reductions.map((_, i) => i);
  if (kernel.writes.length === 0) return { early: idx, late: [] };
  return { early: idx.filter((i) => kernel.reductions[i].reduction === 'norm'), late: idx.filter((i) => kernel.reductions[i].reduction !== 'norm') };
}

/** m is positive and finite: the scaled sum is meaningful. */
export const scalable = (m: number): boolean => m > 0 && m < Infinity;

export type Precision = 'float32' | 'float64';

/** The exponent bias B of a dtype. */
export const exponentBias = (precision: Precision): number => (precision === 'float32' ? 127 : 1023);

const f32v = new Float32Array(1);
const f32b = new Uint32Array(f32v.buffer);
const f64v = new Float64Array(1);
const f64b = new Uint32Array(f64v.buffer);

/**
 * The biased exponent of m (positive and finite) in the dtype, clamped to [1, 2B - 1]: read from
 * the bits, as the wasm and WGSL renderers read it (float32: bits >> 23, clamped to [1, 253]).
 */
export function normExponent(m: number, precision: Precision): number {
  if (precision === 'float32') {
    f32v[0] = m;
    return Math.min(Math.max(f32b[0] >>> 23, 1), 253);
  }
  f64v[0] = m;
  return Math.min(Math.max((f64b[1] >>> 20) & 0x7ff, 1), 2045);
}

/** 2^k exactly, for k in [-1022, 1023] (from the bits). */
export function pow2(k: number): number {
  f64b[0] = 0;
  f64b[1] = (k + 1023) << 20;
  return f64v[0];
}

/**
 * The direct rule of norm blocks: a block first sums x^2 (in the lane order above) in one pass,
 * nothing else. Where that sum t is a normal number with exponent t_e in [-NORM_DIRECT,
 * NORM_DIRECT] (no square overflowed, and one below 2^-126, which underflows, is under 2^-66 of t,
 * under t's last bit), the block's partial is m = 2^h, s = t 2^(-2h) with h = floor(t_e / 2)
 * (s in [1, 4)): m stands for the block's scale, the tree and the final value read m only through
 * its exponent (normExponent) and whether it is 0, finite or NaN. Any other block (t zero,
 * subnormal, huge, Inf or NaN: a zero block, tiny or huge values, a NaN or an infinity) takes the
 * largest |x| as m in a second pass and the sum of (x f)^2 in a third.
 */
export const NORM_DIRECT = 60;

/** The biased exponent field of x's bits, sign included (a negative x, or -NaN, reads past the top). */
export function rawExponent(x: number, precision: Precision): number {
  if (precision === 'float32') {
    f32v[0] = x;
    return f32b[0] >>> 23;
  }
  f64v[0] = x;
  return f64b[1] >>> 20;
}

/** h of the direct rule (NORM_DIRECT) for a block's sum of squares t, or null for the other blocks. */
export function normDirect(t: number, precision: Precision): number | null {
  const d = rawExponent(t, precision) - exponentBias(precision);
  return d >= -NORM_DIRECT && d <= NORM_DIRECT ? d >> 1 : null;
}

/** F(d) = 2^(2d) for the tree's exponent difference d <= 0, 0 below the smallest normal 2^(1 - B). */
export function normFactor(d: number, precision: Precision): number {
  return 2 * d < 1 - exponentBias(precision) ? 0 : pow2(2 * d);
}

/** NaN-propagating max (Math.max, and wasm's f32x4.max / f32.max). */
const nmax = Math.max;

/**
 * Combines block partials `parts` (one array, or [m, s] for norm) of `blocks` entries in the fixed
 * tree, in place, and returns the final value, every operation rounded to `precision`.
 */
export function combinePartials(kind: ReductionKind, parts: readonly Float64Array[] | readonly Float32Array[], blocks: number, precision: Precision): number {
  const r = precision === 'float32' ? Math.fround : (x: number) => x;
  const P = parts[0];
  // One loop per kind (the kind tested once, not per pair): this tree runs on the host after
  // every reducing pass, over one partial per 64 elements.
  if (kind === 'sum') {
    for (let w = 1; w < blocks; w *= 2) for (let i = 0; i + w < blocks; i += 2 * w) P[i] = r(P[i] + P[i + w]);
    return reductionValue(kind, P[0], 0, precision);
  }
  if (kind === 'maxabs' || kind === 'nonfinite') {
    for (let w = 1; w < blocks; w *= 2) for (let i = 0; i + w < blocks; i += 2 * w) P[i] = nmax(P[i], P[i + w]);
    return reductionValue(kind, P[0], 0, precision);
  }
  const S = parts[1];
  for (let w = 1; w < blocks; w *= 2) {
    for (let i = 0; i + w < blocks; i += 2 * w) {
      const m1 = P[i];
      const m2 = P[i + w];
      const m = nmax(m1, m2);
      if (!scalable(m)) {
        P[i] = m;
        S[i] = 0;
      } else {
        // m1 and m2 are finite and not negative here; a zero one has s = 0 (any exponent does).
        const e = normExponent(m, precision);
        const e1 = normExponent(m1, precision);
        const e2 = normExponent(m2, precision);
        const s1 = e1 === e ? S[i] : r(S[i] * normFactor(e1 - e, precision));
        const s2 = e2 === e ? S[i + w] : r(S[i + w] * normFactor(e2 - e, precision));
        P[i] = m;
        S[i] = r(s1 + s2);
      }
    }
  }
  return reductionValue(kind, P[0], S[0], precision);
}

/**
 * The reduction's value from the root of its tree (p0, and s0 for norm): the norm is
 * sqrt(s) 2^(e - B) (m itself when m is 0, Inf or NaN); the others are the root. Shared by the host tree above and
 * the wasm tree (wasm.ts renderWasmTree), which combines in wasm memory and leaves the root there.
 */
export function reductionValue(kind: ReductionKind, p0: number, s0: number, precision: Precision): number {
  if (kind !== 'norm' || !scalable(p0)) return p0;
  const r = precision === 'float32' ? Math.fround : (x: number) => x;
  return r(r(Math.sqrt(s0)) * pow2(normExponent(p0, precision) - exponentBias(precision)));
}
