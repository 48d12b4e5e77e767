/**
 * The float math prelude of the WebGPU kernels (see MATH_FNS), in a module of its own because it
 * is most of the WGSL text the backend carries: the kernels whose expressions call it (exp, log,
 * tanh, erf, pow, ... ; softmax and cross-entropy) load it with the WebGPU backend's MATH kernel
 * family on their first dispatch, so a program that never calls them never fetches it.
 */
import type { MathFns } from './wgsl.js';
import { hornerWgsl, MATH_CORE, WGSL_TRIG } from './wgsl-math-core.js';
import { ERF_SMALL_P, ERFC_TAIL_CENTRES, ERFC_TAIL_G, EXPM1_Q } from '../mathcoeffs.js';

/** fg_pick3(near, mid, T(a), T(b), T(c)) over the three intervals' k-th entries. */
const pick3Wgsl = (rows: readonly (readonly string[])[], k: number) => `fg_pick3(near, mid, ${rows.map((r) => `T(${r[k]})`).join(', ')})`;

/**
 * The float math prelude: exp, expm1, log, log1p, tanh, sigmoid, softplus, erf, the GELUs,
 * silu, pow, sqrt, rsqrt, reciprocal and sin/cos over the whole range, written for the shader's
 * aliases `T` (f32 or vec4<f32>), `TU` (its u32 twin) and `bool_t`; each entry names the entries
 * it calls (`deps`), and preludeFor emits what an expression needs. WGSL's builtins promise little (exp/log to 3 + 2|x| ulp or 2^-21 absolute, tanh
 * clamped by hand, SwiftShader's log(0) is -88 and its exp(NaN) is inf) and arithmetic may flush
 * subnormals to zero (SwiftShader flushes inputs and outputs). So these are built from bit
 * manipulation, exact range reductions and float32 polynomials; every result that lands below
 * 2^-126 is assembled from bits (fg_ldexp), every subnormal input is read from its bits, and
 * NaN, ±0 and ±Inf are selected explicitly (NaN and Inf as fg_nan() and fg_inf(): WGSL rejects
 * them as constants). Shader compilers may also reassociate (SwiftShader folds (1 + x) - 1 to x
 * and x * 0 to 0), so no step relies on an exact cancellation: splits are made with bit masks.
 * Accuracy against float64, checked on every float32 exponent by test/unary-sweep.test.ts: a few
 * ulps (see the tolerances there). The polynomial coefficients were fitted in float64 (least
 * squares, relative, Chebyshev nodes) and rounded to float32; the exp polynomial is Cephes'
 * expf, as in the wasm backend's expV.
 */
export const MATH_FNS: MathFns = {
  ...MATH_CORE,
  fg_is_tiny: {
    deps: [],
    code: `// Zero or subnormal: the values that arithmetic may flush.
fn fg_is_tiny(x: T) -> bool_t { return (bitcast<TU>(x) & TU(0x7fffffffu)) < TU(0x00800000u); }`,
  },
  fg_scale_small: {
    deps: ['fg_ldexp', 'fg_scale_tiny', 'fg_is_tiny'],
    code: `// c * x for |x| < 2^-60 and a constant c > 0, exact to rounding where the product is subnormal.
fn fg_scale_small(x: T, c: T) -> T {
  let scaled = fg_ldexp(c * (x * T(1.152921504606847e18)), T(-60.0));
  return select(scaled, fg_scale_tiny(x, c), fg_is_tiny(x));
}`,
  },
  fg_scale_tiny: {
    deps: ['fg_ldexp'],
    code: `// c * x for a zero or subnormal x and a constant c > 0, from x's bits (x = B 2^-149).
fn fg_scale_tiny(x: T, c: T) -> T {
  let bits = bitcast<TU>(x);
  let b = T(bits & TU(0x007fffffu));
  let r = select(fg_ldexp(b * c, T(-149.0)), T(0.0), b == T(0.0));
  return bitcast<T>(bitcast<TU>(r) | (bits & TU(0x80000000u)));
}`,
  },
  fg_mul_exp: {
    deps: ['fg_exp_split', 'fg_ldexp'],
    code: `// s e^x for a finite nonzero normal s, exact to rounding also where the product is subnormal
// (or e^x alone would underflow).
fn fg_mul_exp(s: T, x: T) -> T {
  let e = fg_exp_split(x);
  let zero = bitcast<T>(bitcast<TU>(s) & TU(0x80000000u));
  return select(fg_ldexp(s * e.m, e.n), zero, x < T(-200.0));
}`,
  },
  fg_expm1: {
    deps: ['fg_pow2', 'fg_ldexp', 'fg_isnan_t'],
    code: `// e^x - 1: x = n ln2 + r as in fg_exp, expm1(r) by a fitted polynomial, then
// 2^n expm1(r) + (2^n - 1), whose two terms are exact to rounding (no cancellation near 0).
fn fg_expm1(x: T) -> T {
  let xc = clamp(x, T(-30.0), T(89.0));
  let n = round(xc * T(1.44269504088896341));
  let r = (xc - n * T(0.693359375)) - n * T(-2.12194440e-4);
  ${hornerWgsl('q', 'r', EXPM1_Q)}
  let r2 = r * r;
  let em = r + (T(0.5) * r2 + r2 * r * q);
  let s = fg_pow2(clamp(n, T(-126.0), T(127.0)));
  let y = select(s * em + (s - T(1.0)), fg_ldexp(em + T(1.0), n), n > T(30.0));
  // |x| < 1e-20 (subnormals included, which arithmetic may flush): expm1(x) = x.
  return select(y, x, (abs(x) < T(1e-20)) | fg_isnan_t(x));
}`,
  },
  fg_log1p: {
    deps: ['fg_log'],
    code: `// log(1 + x). For |x| < 1/2: 2 atanh(s) with s = x / (2 + x) (|s| <= 1/3), by its series to
// s^17; no step relies on an exact cancellation such as (1 + x) - 1, which shader compilers may
// reassociate away (SwiftShader does). Beyond, log(1 + x) loses nothing: 1 + x is exact or |log| > 0.4.
fn fg_log1p(x: T) -> T {
  let s = x / (T(2.0) + x);
  let z = s * s;
  var p = T(1.0 / 17.0);
  p = p * z + T(1.0 / 15.0);
  p = p * z + T(1.0 / 13.0);
  p = p * z + T(1.0 / 11.0);
  p = p * z + T(1.0 / 9.0);
  p = p * z + T(1.0 / 7.0);
  p = p * z + T(1.0 / 5.0);
  p = p * z + T(1.0 / 3.0);
  let series = T(2.0) * s + T(2.0) * s * z * p;
  let y = select(fg_log(T(1.0) + x), series, abs(x) < T(0.5));
  // |x| < 1e-20 (subnormals included, which arithmetic may flush): log1p(x) = x.
  return select(y, x, abs(x) < T(1e-20));
}`,
  },
  fg_tanh: {
    deps: ['fg_expm1', 'fg_isnan_t'],
    code: `// tanh |x| = expm1(2|x|) / (expm1(2|x|) + 2), with the sign of x put back by bits.
fn fg_tanh(x: T) -> T {
  let e = fg_expm1(T(2.0) * min(abs(x), T(10.0)));
  let t = e / (e + T(2.0));
  let y = bitcast<T>(bitcast<TU>(t) | (bitcast<TU>(x) & TU(0x80000000u)));
  return select(y, x, (abs(x) < T(1e-20)) | fg_isnan_t(x));
}`,
  },
  fg_sigmoid: {
    deps: ['fg_exp', 'fg_isnan_t'],
    code: `// 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below, which is e^x itself (subnormal included)
// once 1 + e^x rounds to 1.
fn fg_sigmoid(x: T) -> T {
  let e = fg_exp(-abs(x));
  let r = T(1.0) / (T(1.0) + e);
  let neg = select(e * r, e, e < T(1e-8));
  return select(select(r, neg, x < T(0.0)), x, fg_isnan_t(x));
}`,
  },
  fg_softplus: {
    deps: ['fg_exp', 'fg_log1p', 'fg_isnan_t'],
    code: `// max(x, 0) + log1p(e^-|x|); for x < 0 that is log1p(e^x), which passes a subnormal e^x through.
fn fg_softplus(x: T) -> T {
  let l = fg_log1p(fg_exp(-abs(x)));
  return select(select(x + l, l, x < T(0.0)), x, fg_isnan_t(x));
}`,
  },
  fg_silu: {
    deps: ['fg_sigmoid', 'fg_mul_exp', 'fg_scale_small', 'fg_isnan_t'],
    code: `// x sigmoid(x); far left it is x e^x, formed without the flushed subnormal factor; near 0, x / 2.
fn fg_silu(x: T) -> T {
  var y = select(x * fg_sigmoid(x), fg_mul_exp(x, x), x < T(-17.0));
  y = select(y, fg_scale_small(x, T(0.5)), abs(x) < T(1e-30));
  // silu(-inf) = -inf * 0 = NaN, as PyTorch computes it; silu(inf) = inf.
  return select(y, select(T(fg_nan()), x, x > T(0.0)), fg_isnan_t(x) | (abs(x) == T(fg_inf())));
}`,
  },
  fg_erf_small: {
    deps: [],
    code: `// erf(x) for |x| <= 1: x P(x^2), fitted (about 2 ulp).
fn fg_erf_small(x: T) -> T {
  let z = x * x;
  ${hornerWgsl('p', 'z', ERF_SMALL_P)}
  return x * p;
}`,
  },
  fg_erfc_tail: {
    deps: ['fg_exp_split', 'fg_exp', 'fg_ldexp'],
    code: `// s erfc(k |v|) for k |v| >= 1/2, a finite nonzero s and k^2 = k2 exact (1, or 1/2 for the GELU):
// erfc(a) = e^(-a^2) g(1/a) / a with g fitted (about 2 ulp) on three intervals of u = 1/a (for
// a <= 10.1, used to 10.5). a^2 = k2 v^2 is taken from v, which is exact, not from the rounded a: v^2 = vh^2 + (v - vh)
// (v + vh) with vh keeping 12 bits, so vh^2 is exact and e^(-a^2) keeps float32 accuracy. Tails
// below 2^-126 come out of fg_ldexp.
fn fg_pick3(near: bool_t, mid: bool_t, a: T, b: T, c: T) -> T { return select(select(c, b, mid), a, near); }
fn fg_erfc_tail(v_in: T, k: T, k2: T, s: T) -> T {
  let v = min(abs(v_in), T(10.5) / k);
  let a = max(v * k, T(0.5));
  let u = T(1.0) / a;
  // Three intervals of u: [0.099, 0.5), [0.5, 1), [1, 2], each a degree-7 polynomial in u - mid.
  let near = u < T(0.5);
  let mid = u < T(1.0);
  let t = u - ${pick3Wgsl(ERFC_TAIL_CENTRES.map((c) => [c]), 0)};
  var g = ${pick3Wgsl(ERFC_TAIL_G, 0)};
${ERFC_TAIL_G[0].slice(1).map((_, k) => `  g = g * t + ${pick3Wgsl(ERFC_TAIL_G, k + 1)};`).join('\n')}
  let vh = bitcast<T>(bitcast<TU>(v) & TU(0xfffff000u));
  let e = fg_exp_split(-k2 * (vh * vh));
  let r = fg_ldexp(s * (e.m * fg_exp(-k2 * ((v - vh) * (v + vh))) * g * u), e.n);
  // erfc(10.5) = 1.4e-49: past it s erfc is 0 for any float s (erfc falls faster than s grows).
  return select(r, bitcast<T>(bitcast<TU>(s) & TU(0x80000000u)), abs(v_in) * k > T(10.5));
}`,
  },
  fg_erf: {
    deps: ['fg_erf_small', 'fg_erfc_tail', 'fg_is_tiny', 'fg_scale_tiny', 'fg_isnan_t'],
    code: `fn fg_erf(x: T) -> T {
  let sgn = select(T(1.0), T(-1.0), x < T(0.0));
  var y = select(fg_erf_small(x), sgn - fg_erfc_tail(x, T(1.0), T(1.0), sgn), abs(x) >= T(1.0));
  y = select(y, fg_scale_tiny(x, T(1.1283791670955126)), fg_is_tiny(x));
  return select(y, x, fg_isnan_t(x));
}`,
  },
  fg_gelu_erf: {
    deps: ['fg_erf_small', 'fg_erfc_tail', 'fg_scale_small', 'fg_isnan_t'],
    code: `// x Phi(x) = x/2 erfc(-x/sqrt 2): the left tail has no cancellation (1 + erf would).
fn fg_gelu_erf(x: T) -> T {
  let z = x * T(-0.7071067811865476);
  let half = T(0.5) * x;
  let tail = fg_erfc_tail(x, T(0.7071067811865476), T(0.5), half);
  // From |z| = 1/2 on, erfc(|z|) from the tail: 1 - erf(z) would cancel (erfc(1) = 0.16).
  var y = select(half * (T(1.0) - fg_erf_small(z)), select(tail, x - tail, z < T(0.0)), abs(z) >= T(0.5));
  y = select(y, fg_scale_small(x, T(0.5)), abs(x) < T(1e-30));
  let inf = abs(x) == T(fg_inf());
  // gelu(inf) = inf; gelu(-inf) = -inf * 0 = NaN, as PyTorch computes it.
  return select(y, select(T(fg_nan()), x, x > T(0.0)), inf | fg_isnan_t(x));
}`,
  },
  fg_gelu_tanh: {
    deps: ['fg_exp_split', 'fg_exp', 'fg_ldexp', 'fg_scale_small', 'fg_isnan_t'],
    code: `// 0.5 x (1 + tanh(u)) = x sigmoid(w), w = 2u = c (x + 0.044715 x^3), c = 2 sqrt(2/pi): no
// cancellation on the left. w rounded to float32 would cost |w| 2^-24 relative in e^w, so e^-|w|
// is the product of e^(c_h x_h), e^(k_h x_h^3) and e^(rest): x = x_h + x_l with x_h keeping 6 bits, c
// and k = 0.044715 c split into 6-bit heads (c_h, k_h) and tails, so both big exponents are exact
// and the rest is small. Left of -11 the result is below the smallest subnormal.
fn fg_gelu_tanh(x: T) -> T {
  let xh = bitcast<T>(bitcast<TU>(x) & TU(0xfffc0000u));
  let xl = x - xh;
  let a1 = T(1.59375) * xh;
  let a2 = T(0.0703125) * (xh * xh * xh);
  let rest = T(2.0191215444356203e-3) * x + T(1.59375) * xl + T(0.0703125) * (xl * (x * x + x * xh + xh * xh)) + T(1.0423163184896111e-3) * (x * x * x);
  let w = a1 + (a2 + rest);
  let sgn = select(T(-1.0), T(1.0), w < T(0.0));
  let e1 = fg_exp_split(sgn * a1);
  let e2 = fg_exp_split(sgn * a2);
  let m = e1.m * e2.m * fg_exp(sgn * rest);
  let n = e1.n + e2.n;
  let ew = fg_ldexp(m, n);
  // x / (1 + e^-w) for w >= 0; x e^w / (1 + e^w) below, which is x e^w itself once e^w < 1e-8.
  let pos = x / (T(1.0) + ew);
  let neg = select(x * ew / (T(1.0) + ew), fg_ldexp(x * m, n), ew < T(1e-8));
  var y = select(pos, neg, w < T(0.0));
  y = select(y, x, x > T(10.0));
  y = select(y, bitcast<T>(bitcast<TU>(x) & TU(0x80000000u)), x < T(-11.0));
  y = select(y, fg_scale_small(x, T(0.5)), abs(x) < T(1e-30));
  let inf = abs(x) == T(fg_inf());
  return select(y, select(T(fg_nan()), x, x > T(0.0)), inf | fg_isnan_t(x));
}`,
  },
  fg_pow: {
    deps: ['fg_pow_mag', 'fg_isnan_t', 'fg_neg', 'fg_nz'],
    code: `// pow with C's (and PyTorch's) rules: a negative base with a whole exponent keeps the parity's
// sign, with a fractional one gives NaN; pow(x, 0) = pow(1, y) = 1 even for NaN; (-1)^±inf = 1;
// pow(±0, y < 0) = ±inf by y's parity.
fn fg_pow(a: T, b: T) -> T {
  let whole = b == floor(b);
  let odd = whole & (abs(b) < T(16777216.0)) & (b - T(2.0) * floor(b * T(0.5)) == T(1.0));
  let inf = T(fg_inf());
  var mag = fg_pow_mag(abs(a), b);
  mag = select(mag, select(T(0.0), inf, b < T(0.0)), !fg_nz(a));
  mag = select(mag, select(inf, T(0.0), b < T(0.0)), abs(a) == inf);
  let neg = (bitcast<TU>(a) & TU(0x80000000u)) != TU(0u);
  let nan = T(fg_nan());
  var r = select(mag, fg_neg(mag), odd & neg);
  // A negative finite base (subnormal included, by its sign bit) with a fractional exponent.
  r = select(r, nan, neg & (abs(a) != T(fg_inf())) & fg_nz(a) & !whole);
  r = select(r, nan, fg_isnan_t(a) | fg_isnan_t(b));
  r = select(r, T(1.0), (abs(a) == T(1.0)) & (abs(b) == T(fg_inf())));
  return select(r, T(1.0), (b == T(0.0)) | (a == T(1.0)));
}`,
  },
  fg_sqrt: {
    deps: [],
    code: `// sqrt, with a positive subnormal x = B 2^-149 as sqrt(2B) 2^-75 (sqrt would see a flushed 0)
// and a negative subnormal NaN.
fn fg_sqrt(x: T) -> T {
  let bits = bitcast<TU>(x);
  let b = T(bits & TU(0x007fffffu));
  let y = select(sqrt(x), sqrt(T(2.0) * b) * T(2.6469779601696886e-23), (bits > TU(0u)) & (bits < TU(0x00800000u)));
  return select(y, T(fg_nan()), (bits > TU(0x80000000u)) & (bits < TU(0x80800000u)));
}`,
  },
  fg_rsqrt: {
    deps: [],
    code: `// 1 / sqrt(x) (two roundings, where inverseSqrt promises 2 ulp), subnormals as in fg_sqrt.
fn fg_rsqrt(x: T) -> T {
  let bits = bitcast<TU>(x);
  let b = T(bits & TU(0x007fffffu));
  let y = select(T(1.0) / sqrt(x), T(3.777893186295716e22) / sqrt(T(2.0) * b), (bits > TU(0u)) & (bits < TU(0x00800000u)));
  return select(y, T(fg_nan()), (bits > TU(0x80000000u)) & (bits < TU(0x80800000u)));
}`,
  },
  fg_recip: {
    deps: ['fg_ldexp'],
    code: `// 1 / x, with subnormal inputs (huge results) and huge inputs (subnormal results) scaled by bits.
fn fg_recip(x: T) -> T {
  let bits = bitcast<TU>(x);
  let mag = bits & TU(0x7fffffffu);
  let b = T(bits & TU(0x007fffffu));
  var y = select(T(1.0) / x, fg_ldexp(T(1.0) / b, T(149.0)), (mag > TU(0u)) & (mag < TU(0x00800000u)));
  y = select(y, fg_ldexp(T(1.0) / (abs(x) * T(5.421010862427522e-20)), T(-64.0)), (mag > TU(0x7e000000u)) & (mag < TU(0x7f800000u)));
  return bitcast<T>(bitcast<TU>(y) | (bits & TU(0x80000000u)));
}`,
  },
  fg_pow_mag: {
    deps: ['fg_log_split', 'fg_exp_split', 'fg_ldexp', 'fg_exp', 'fg_log'],
    code: `// |a|^b = 2^(b e) e^(b log(1 + f)) with |a| = 2^e (1 + f). Rounding b log|a| to float32 would cost
// |b log a| 2^-24 relative, so b e (the large part) is kept exact: b = bh + bl with bh keeping
// 12 bits, so bh e and bl e are exact floats whose integer parts go to the exponent and whose
// fractions join b log(1 + f) (at most |b| 0.35) in a float32 exponent. Past |b| = 2^20 only
// |a| within 2^-20 of 1 has a finite nonzero power, and e^(b log|a|) serves.
fn fg_pow_mag(a: T, b: T) -> T {
  let s = fg_log_split(a);
  let bh = bitcast<T>(bitcast<TU>(b) & TU(0xfffff000u));
  let p1 = bh * s.e;
  let p2 = (b - bh) * s.e;
  let n1 = round(p1);
  let n2 = round(p2);
  let t = ((p1 - n1) + (p2 - n2)) * T(0.6931471805599453) + b * (s.f + fg_log_tail(s.f));
  let x = fg_exp_split(t);
  let split = fg_ldexp(x.m, clamp(n1 + n2 + x.n, T(-400.0), T(400.0)));
  let huge = fg_exp(b * fg_log(a));
  return select(split, huge, abs(b) > T(1048576.0));
}`,
  },
  fg_sin: { deps: [], code: WGSL_TRIG },
  fg_cos: { deps: ['fg_sin'], code: '' },
  fg_reduce_pio2: {
    deps: [],
    code: `// |x| 2/pi = q + f with q an integer (mod 4) and |f| <= 1/2, for |x| >= 2^13 (Payne-Hanek): x = m 2^e
// with m an integer below 2^24, and m times the 96 bits of 2/pi that matter (from 2^(1-e) down:
// higher bits give multiples of 4) is formed exactly in 32-bit words; its bits 94-95 are q, the
// next 62 the fraction. Returns (q, f pi/2).
var<private> FG_TWO_OVER_PI: array<u32, 9> = array<u32, 9>(0u, 0xa2f9836eu, 0x4e441529u, 0xfc2757d1u, 0xf534ddc0u,
  0xdb629599u, 0x3c439041u, 0xfe5163abu, 0xdebbc561u);
// (high, low) words of m w for m < 2^24, from 12- and 16-bit pieces whose products fit 32 bits.
fn fg_mul_24x32(m: u32, w: u32) -> vec2<u32> {
  let mh = m >> 12u;
  let ml = m & 0xfffu;
  let wh = w >> 16u;
  let wl = w & 0xffffu;
  let t1 = mh * wh;
  let t2 = mh * wl;
  let t3 = ml * wh;
  var lo = ml * wl;
  var hi = t1 >> 4u;
  let a = t1 << 28u;
  lo += a;
  hi += select(0u, 1u, lo < a);
  let b = t2 << 12u;
  lo += b;
  hi += (t2 >> 20u) + select(0u, 1u, lo < b);
  let c = t3 << 16u;
  lo += c;
  hi += (t3 >> 16u) + select(0u, 1u, lo < c);
  return vec2<u32>(hi, lo);
}
fn fg_reduce_pio2(ax: f32) -> vec2<f32> {
  let bits = bitcast<u32>(ax);
  let m = (bits & 0x7fffffu) | 0x800000u;
  // ax = m 2^e; the window starts at bit e - 1 of 2/pi, word 0 of the table being zeros.
  let start = u32(clamp(i32((bits >> 23u) & 0xffu) - 150 + 30, 0, 134));
  let k = start >> 5u;
  let s = start & 31u;
  let t0 = FG_TWO_OVER_PI[k];
  let t1 = FG_TWO_OVER_PI[k + 1u];
  let t2 = FG_TWO_OVER_PI[k + 2u];
  let t3 = FG_TWO_OVER_PI[min(k + 3u, 8u)];
  let w0 = select((t0 << s) | (t1 >> (32u - s)), t0, s == 0u);
  let w1 = select((t1 << s) | (t2 >> (32u - s)), t1, s == 0u);
  let w2 = select((t2 << s) | (t3 >> (32u - s)), t2, s == 0u);
  let p0 = fg_mul_24x32(m, w0);
  let p1 = fg_mul_24x32(m, w1);
  let p2 = fg_mul_24x32(m, w2);
  // Words 1 and 2 of m W (word 0 is below the precision kept; word 3 is a multiple of 4).
  let word1 = p1.y + p2.x;
  let word2 = p0.y + p1.x + select(0u, 1u, word1 < p1.y);
  var q = word2 >> 30u;
  var fh = word2 & 0x3fffffffu;
  var fl = word1;
  // Round to the nearest quadrant: a fraction of 1/2 or more becomes 1 - fraction, negated.
  let up = fh >= 0x20000000u;
  q += select(0u, 1u, up);
  let nh = 0x40000000u - fh - select(0u, 1u, fl != 0u);
  fl = select(fl, 0u - fl, up);
  fh = select(fh, nh, up);
  let f = f32(fh) * 9.313225746154785e-10 + f32(fl) * 2.168404344971009e-19;
  return vec2<f32>(f32(q), select(f, -f, up) * 1.5707963267948966);
}`,
  },
  fg_trig_full: {
    deps: ['fg_reduce_pio2', 'fg_sin'],
    code: (vec4) => `// sin (shift 0) or cos (shift 1) on the whole float range: the three-part Cody-Waite reduction
// of fg_sin_quadrant to |x| = 8192, Payne-Hanek's beyond.
struct FgQuadrant { q: T, r: T }
fn fg_reduce_big(x: T) -> FgQuadrant {
${
  vec4
    ? `  let v0 = fg_reduce_pio2(abs(x.x));
  let v1 = fg_reduce_pio2(abs(x.y));
  let v2 = fg_reduce_pio2(abs(x.z));
  let v3 = fg_reduce_pio2(abs(x.w));
  let q = T(v0.x, v1.x, v2.x, v3.x);
  let r = T(v0.y, v1.y, v2.y, v3.y);`
    : `  let v = fg_reduce_pio2(abs(x));
  let q = v.x;
  let r = v.y;`
}
  let neg = x < T(0.0);
  return FgQuadrant(select(q, -q, neg), select(r, -r, neg));
}
fn fg_trig_full(x: T, shift: T) -> T {
  let q = round(x * T(0.63661977236758134));
  let r = ((x - q * T(1.5703125)) - q * T(4.837512969970703125e-4)) - q * T(7.54978995489188216e-8);
  let far = fg_reduce_big(x);
  let big = (abs(x) > T(8192.0)) & (abs(x) < T(fg_inf()));
  return fg_trig_poly(select(q, far.q, big), select(r, far.r, big), shift);
}`,
  },
};
