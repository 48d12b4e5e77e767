/**
 * The core of the WebGPU math prelude (wgsl-math.ts): exp and log, with the bit-level helpers they
 * are built from, and the moderate-range sine and cosine (WGSL_TRIG). Softmax and cross-entropy need only these, so their kernels carry this part and
 * not the whole prelude (erf, the GELUs, pow, the trigonometry); wgsl-math.ts's MATH_FNS includes it.
 */
import type { MathFns } from './wgsl.js';
import { COS_C, EXP_P, LOG_TAIL_Q, SIN_S } from '../mathcoeffs.js';

/** WGSL lines `var v = T(c0);` then `  v = v * x + T(c);` per further coefficient (highest degree first). */
export const hornerWgsl = (v: string, x: string, coefs: readonly string[]): string =>
  [`var ${v} = T(${coefs[0]});`, ...coefs.slice(1).map((c) => `  ${v} = ${v} * ${x} + T(${c});`)].join('\n');

/** The nested WGSL form `T(c_n) + x * (T(c_n-1) + x * ... T(c_0))` of coefficients listed highest degree first. */
const nestedWgsl = (x: string, coefs: readonly string[]): string =>
  coefs.slice(1).reduce((acc, c, k) => `T(${c}) + ${x} * ${k === 0 ? acc : `(${acc})`}`, `T(${coefs[0]})`);

/**
 * sin and cos to about 1 ulp for moderate |x|, for the shader's alias `T` (f32 or vec4<f32>). WGSL
 * only promises an absolute error of 2^-11 for its builtins (SwiftShader is off by ~5e-5), well
 * short of float32 and of the CPU backend. Cody-Waite reduction by pi/2 in three parts (exact to
 * |x| = 8192, enough for the RNG's Box-Muller angles), then the Cephes sinf/cosf polynomials on
 * [-pi/4, pi/4] and the quadrant's sign and swap. The sin and cos ops use fg_trig_full of the math
 * prelude (wgsl-math.ts), which reduces larger |x| by Payne-Hanek. Also the Box-Muller angles of
 * the random kernels (rng.ts, fused.ts).
 */
export const WGSL_TRIG = /* wgsl */ `
fn fg_trig_poly(q: T, r: T, shift: T) -> T {
  let r2 = r * r;
  let s = r + r * r2 * (${nestedWgsl('r2', SIN_S)});
  let c = T(1.0) - T(0.5) * r2 + r2 * r2 * (${nestedWgsl('r2', COS_C)});
  let qs = q + shift;
  let quadrant = qs - T(4.0) * floor(qs * T(0.25));
  let v = select(s, c, (quadrant == T(1.0)) | (quadrant == T(3.0)));
  return select(v, -v, quadrant >= T(2.0));
}
fn fg_sin_quadrant(x: T, shift: T) -> T {
  let q = round(x * T(0.63661977236758134));
  let r = ((x - q * T(1.5703125)) - q * T(4.837512969970703125e-4)) - q * T(7.54978995489188216e-8);
  return fg_trig_poly(q, r, shift);
}
fn fg_sin(x: T) -> T { return fg_sin_quadrant(x, T(0.0)); }
fn fg_cos(x: T) -> T { return fg_sin_quadrant(x, T(1.0)); }
`;


export const MATH_CORE: MathFns = {
  fg_pow2: {
    deps: [],
    code: `// 2^k for integer-valued k in [-126, 127], from its exponent bits.
fn fg_pow2(k: T) -> T { return bitcast<T>(TU(k + T(127.0)) << TU(23u)); }`,
  },
  fg_ldexp: {
    deps: ['fg_pow2'],
    code: `// p * 2^n for a finite nonzero normal p and an integer-valued n: results below 2^-126 are
// assembled from bits, since the product would flush.
fn fg_ldexp(p: T, n: T) -> T {
  let bits = bitcast<TU>(p);
  let m = bitcast<T>((bits & TU(0x007fffffu)) | TU(0x3f800000u));
  let k = n + T((bits >> TU(23u)) & TU(0xffu)) - T(127.0);
  let k1 = clamp(floor(k * T(0.5)), T(-126.0), T(127.0));
  let normal = m * fg_pow2(k1) * fg_pow2(clamp(k - k1, T(-126.0), T(127.0)));
  // Below 2^-126 the bits of m * 2^k, read as an integer, are m * 2^(k + 149) (rounded to even).
  let tiny = TU(round(m * fg_pow2(clamp(k + T(149.0), T(-126.0), T(127.0)))));
  var mag = select(bitcast<TU>(normal), tiny, k < T(-126.0));
  mag = select(mag, TU(0x7f800000u), k > T(254.0));
  return bitcast<T>((bits & TU(0x80000000u)) | mag);
}`,
  },
  fg_exp_split: {
    deps: [],
    code: `// e^x = m 2^n with m in [0.7, 1.42]: Cody-Waite reduction by ln 2 (n ln2_hi is exact) and
// Cephes' expf polynomial. x is clamped to [-200, 89]: beyond, e^x is inf, and 0 even when
// fg_mul_exp multiplies it by the largest float.
struct FgExpSplit { m: T, n: T }
fn fg_exp_split(x: T) -> FgExpSplit {
  let xc = clamp(x, T(-200.0), T(89.0));
  let n = round(xc * T(1.44269504088896341));
  let r = (xc - n * T(0.693359375)) - n * T(-2.12194440e-4);
  ${hornerWgsl('p', 'r', EXP_P)}
  return FgExpSplit(p * r * r + r + T(1.0), n);
}`,
  },
  fg_exp: {
    deps: ['fg_exp_split', 'fg_ldexp', 'fg_isnan_t'],
    code: `fn fg_exp(x: T) -> T {
  let s = fg_exp_split(x);
  return select(fg_ldexp(s.m, s.n), x, fg_isnan_t(x));
}`,
  },
  fg_log_split: {
    deps: [],
    code: `// x = 2^e (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)) and f exact, for a positive finite x; a
// subnormal x is its mantissa bits B (an exact float) times 2^-149.
struct FgLogSplit { e: T, f: T }
fn fg_log_split(x: T) -> FgLogSplit {
  let bits = bitcast<TU>(x);
  let sub = bits < TU(0x00800000u);
  let bs = bitcast<TU>(select(x, T(bits), sub));
  let e = T((bs >> TU(23u)) & TU(0xffu)) - select(T(127.0), T(276.0), sub);
  let m = bitcast<T>((bs & TU(0x007fffffu)) | TU(0x3f800000u));
  let big = m > T(1.41421356);
  return FgLogSplit(select(e, e + T(1.0), big), select(m, m * T(0.5), big) - T(1.0));
}
// log(1 + f) - f = -f^2/2 + f^3 Q(f) on the range of fg_log_split's f (Q fitted).
fn fg_log_tail(f: T) -> T {
  ${hornerWgsl('q', 'f', LOG_TAIL_Q)}
  let f2 = f * f;
  return f2 * f * q - T(0.5) * f2;
}`,
  },
  fg_log: {
    deps: ['fg_log_split'],
    code: `// log(x) = e ln 2 + f + (log(1 + f) - f), with e ln 2 in two parts (e ln2_hi is exact).
fn fg_log(x: T) -> T {
  let bits = bitcast<TU>(x);
  let s = fg_log_split(x);
  var y = s.e * T(0.693359375) + (s.f + (fg_log_tail(s.f) + s.e * T(-2.12194440e-4)));
  y = select(y, T(fg_nan()), bits >= TU(0x80000000u));
  y = select(y, -T(fg_inf()), (bits & TU(0x7fffffffu)) == TU(0u));
  return select(y, x, (bits >= TU(0x7f800000u)) & (bits < TU(0x80000000u)));
}`,
  },
};
