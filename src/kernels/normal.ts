/**
 * The standard normal draw of the counter-based generator (src/kernels/rng.ts) on the CPU paths:
 * the cpu backend's `random`, the arena reference (src/kernels/arena/reference.ts), and, emitted
 * as the same operations in f64x2 lanes, the wasm backend's `random` and the arena wasm kernels
 * (src/kernels/wasm/rngsimd.ts). WebGPU draws the same Box-Muller in float32 (rng.ts WGSL_RNG
 * fg_normal), within a few ulps.
 *
 * A module of its own rather than part of rng.ts: a WebGPU program loads rng.ts (its WGSL and the
 * generator) and never these series, which a bundler can then leave in the CPU backends' chunks.
 */
import { hashBits } from './rng.js';

/**
 * Standard normal by Box-Muller, sqrt(-2 log u1) cos(2 pi u2), from the bits of elements 2i and
 * 2i+1: u1 = (bits >>> 8) + 1 over 2^24 in (0, 1], u2 = (bits >>> 8) over 2^24 in [0, 1).
 *
 * The log and the cosine are our own float64 series (logUnit, cosTurn), not Math.log / Math.cos,
 * whose last bits differ between engines and which WebAssembly does not have: every CPU path
 * (this function for the cpu backend and the arena reference, and the wasm SIMD kernels of
 * src/kernels/wasm/rngsimd.ts, which emit the same IEEE operations in the same order, with no
 * fused multiply-add) computes the same float64 value, so the float32 draws agree bit for bit.
 * Both series are within about 2e-16 of the true function (test/normal-simd.test.ts sweeps all
 * 2^24 inputs of each against Math's).
 */
export function normalAt(key0: number, key1: number, i: number): number {
  const a = (hashBits(key0, key1, 2 * i) >>> 8) + 1;
  const b = hashBits(key0, key1, 2 * i + 1) >>> 8;
  return boxMuller(a, b);
}

/** sqrt(-2 log u1) cos(2 pi u2) for u1 = a 2^-24 (a an integer in [1, 2^24]) and u2 = b 2^-24 (b in [0, 2^24)). */
export function boxMuller(a: number, b: number): number {
  return Math.sqrt(-2 * logUnit(a)) * cosTurn(b);
}

/** ln 2 split as in fdlibm: LN2_HI has 32 significant bits, so k LN2_HI is exact for |k| < 2^21. */
export const LN2_HI = 6.93147180369123816490e-1;
export const LN2_LO = 1.90821492927058770002e-10;
/**
 * log(1 + f) = 2 atanh(z), z = f / (2 + f), is f - z (f - z^2 P(z^2)) with P the series
 * 2/3 + 2/5 z^2 + ... + 2/21 z^18 (truncation below 1e-18 relative for |z| <= 0.1716).
 */
export const LOG_SERIES: readonly number[] = [2 / 3, 2 / 5, 2 / 7, 2 / 9, 2 / 11, 2 / 13, 2 / 15, 2 / 17, 2 / 19, 2 / 21];
/**
 * sin t = t + t^3 Q(t^2), Q = -1/3! + t^2/5! - ... + t^18/21! (truncation below 2e-18 for
 * |t| <= pi/2): the coefficients (-1)^k / (2k + 1)!, k = 1..10, written out (a call at import
 * time, which a bundler could not drop, would compute them).
 */
export const SIN_SERIES: readonly number[] = [
  -1 / 6, 1 / 120, -1 / 5040, 1 / 362880, -1 / 39916800, 1 / 6227020800, -1 / 1307674368000, 1 / 355687428096000,
  -1 / 121645100408832000, 1 / 51090942171709440000,
];

/** Horner's rule, highest coefficient last: c[0] + x (c[1] + x (... + x c[n-1])). */
function horner(c: readonly number[], x: number): number {
  let p = c[c.length - 1];
  for (let k = c.length - 2; k >= 0; k--) p = p * x + c[k];
  return p;
}

/**
 * log(a 2^-24) for an integer a in [1, 2^24]: a 2^-24 = 2^k m with m in [sqrt(1/2), sqrt(2)),
 * then k ln 2 + log m, the small parts added first (fdlibm's order).
 */
export function logUnit(a: number): number {
  let e = 31 - Math.clz32(a);
  let m = a / (1 << e);
  if (m > Math.SQRT2) {
    m *= 0.5;
    e += 1;
  }
  const k = e - 24;
  const f = m - 1;
  const z = f / (m + 1);
  const z2 = z * z;
  return k * LN2_HI + (f - (z * (f - z2 * horner(LOG_SERIES, z2)) - k * LN2_LO));
}

/**
 * cos(2 pi b 2^-24) for an integer b in [0, 2^24): with y = the distance of u = b 2^-24 to the
 * nearest integer (in [0, 1/2], exact), cos(2 pi u) = cos(2 pi y) = -sin(2 pi (y - 1/4)), an
 * argument in [-pi/2, pi/2] whose only rounding is the product by 2 pi.
 */
export function cosTurn(b: number): number {
  const u = b * 5.9604644775390625e-8;
  const t = (Math.min(u, 1 - u) - 0.25) * (2 * Math.PI);
  const t2 = t * t;
  return -(t + t * t2 * horner(SIN_SERIES, t2));
}
