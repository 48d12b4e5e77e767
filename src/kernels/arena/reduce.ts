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
 * `norm` is overflow-free: a block's partial is (m, s), m = its largest |x| and s = the sum of
 * (x / m)^2 in the lane order above (s = 0 when m is 0, Inf or NaN); two partials combine as
 * m = max(m1, m2), s = s1 (m1/m)^2 + s2 (m2/m)^2; the norm is m sqrt(s) (m itself when m is 0,
 * Inf or NaN: a NaN anywhere gives NaN, an infinity Inf).
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

/** m is positive and finite: the scaled sum is meaningful. */
export const scalable = (m: number): boolean => m > 0 && m < Infinity;

/** NaN-propagating max (Math.max, and wasm's f32x4.max / f32.max). */
const nmax = Math.max;

/**
 * Combines block partials `parts` (one array, or [m, s] for norm) of `blocks` entries in the fixed
 * tree, in place, and returns the final value. `r` rounds to the arena's dtype.
 */
export function combinePartials(kind: ReductionKind, parts: readonly Float64Array[] | readonly Float32Array[], blocks: number, r: (x: number) => number): number {
  const P = parts[0];
  // One loop per kind (the kind tested once, not per pair): this tree runs on the host after
  // every reducing pass, over one partial per 64 elements.
  if (kind === 'sum') {
    for (let w = 1; w < blocks; w *= 2) for (let i = 0; i + w < blocks; i += 2 * w) P[i] = r(P[i] + P[i + w]);
    return P[0];
  }
  if (kind === 'maxabs' || kind === 'nonfinite') {
    for (let w = 1; w < blocks; w *= 2) for (let i = 0; i + w < blocks; i += 2 * w) P[i] = nmax(P[i], P[i + w]);
    return P[0];
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
        // The side that holds the maximum has ratio 1 (r(s * 1) = r(s)): it needs no division.
        const r1 = m1 === m ? 1 : r(m1 / m);
        const r2 = m2 === m ? 1 : r(m2 / m);
        const s1 = r1 === 1 ? r(S[i]) : r(S[i] * r(r1 * r1));
        const s2 = r2 === 1 ? r(S[i + w]) : r(S[i + w] * r(r2 * r2));
        P[i] = m;
        S[i] = r(s1 + s2);
      }
    }
  }
  const m = P[0];
  return scalable(m) ? r(m * r(Math.sqrt(S[0]))) : m;
}
