/** Scalar math shared by the CPU closures of the op table (float64 accuracy). */

/** erf to about 1e-15: Taylor series near zero, a continued fraction for erfc in the tails. */
export function erf(x: number): number {
  // NaN, and erf(±0) = ±0 as in C and PyTorch (the series below would give +0 for -0).
  if (Number.isNaN(x) || x === 0) return x;
  const ax = Math.abs(x);
  // The alternating series cancels more the larger x is (3e-14 relative at 3, 2e-15 at 2.5) while
  // the continued fraction below is exact to rounding from 1.75 on: switch at 2.
  if (ax < 2) {
    // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
    let term = ax;
    let sum = ax;
    const x2 = ax * ax;
    for (let n = 1; n < 200; n++) {
      term *= -x2 / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    const r = (2 / Math.sqrt(Math.PI)) * sum;
    return x < 0 ? -r : r;
  }
  if (ax > 6) return x < 0 ? -1 : 1;
  const erfc = erfcContinuedFraction(ax, 60);
  return x < 0 ? erfc - 1 : 1 - erfc;
}

/**
 * erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + 2/(x + ...))))), evaluated
 * bottom-up with `terms` terms: 60 give float64's rounding from x = 2.5 on, x = 0.5 needs ~1000.
 */
function erfcContinuedFraction(x: number, terms: number): number {
  let f = x;
  for (let k = terms; k >= 1; k--) f = x + k / 2 / f;
  return expNegSquare(x) / Math.sqrt(Math.PI) / f;
}

/**
 * exp(-x^2) without the rounding of x^2 (which exp would scale into x^2 ulps of the result):
 * x = hi + lo with hi float32, so hi^2 is exact and exp(-x^2) = exp(-hi^2) exp(-lo (x + hi)).
 */
function expNegSquare(x: number): number {
  const hi = Math.fround(x);
  const head = Math.exp(-hi * hi);
  // 0 once x^2 > 745 (past the last subnormal), where the second factor could overflow to 0 * inf.
  return head === 0 ? 0 : head * Math.exp(-(x - hi) * (x + hi));
}

/**
 * Between 0.5 and 3, where 1 - erf(x) cancels (34 ulps at 1.62) and the continued fraction is
 * slow, erfc is a Taylor series about the nearest node x0 = 0.5 + k/8 (|h| <= 1/16):
 * erfc(x0 + h) = erfc(x0) + 2/sqrt(pi) e^(-x0^2) sum_n>=1 (-h)^n / n! H_(n-1)(x0), with the
 * Hermite polynomials H_n(x) = 2x H_(n-1) - 2(n-1) H_(n-2). Node values come from the
 * continued fraction with enough terms, once. Within 3 ulps (checked against mpmath).
 */
const ERFC_TAYLOR = { from: 0.5, to: 3, step: 0.125 };
const ERFC_NODES = Array.from({ length: (ERFC_TAYLOR.to - ERFC_TAYLOR.from) / ERFC_TAYLOR.step + 1 }, (_, i) => {
  const x0 = ERFC_TAYLOR.from + i * ERFC_TAYLOR.step;
  return { x0, erfc: erfcContinuedFraction(x0, 5000), slope: (2 / Math.sqrt(Math.PI)) * Math.exp(-x0 * x0) };
});

function erfcTaylor(x: number): number {
  const { x0, erfc: e0, slope } = ERFC_NODES[Math.round((x - ERFC_TAYLOR.from) / ERFC_TAYLOR.step)];
  const h = x - x0;
  let coef = 1; // (-h)^n / n!
  let hermite = 1; // H_(n-1)(x0)
  let hermitePrev = 0; // H_(n-2)(x0)
  let sum = 0;
  for (let n = 1; n < 40; n++) {
    coef *= -h / n;
    if (n >= 2) [hermite, hermitePrev] = [2 * x0 * hermite - 2 * (n - 2) * hermitePrev, hermite];
    const term = coef * hermite;
    sum += term;
    if (Math.abs(term) < 1e-18 * (e0 / slope)) break;
  }
  return e0 + slope * sum;
}

/**
 * erfc to a few ulps relative, also in the right tail where 1 - erf(x) cancels: 1 - erf(x) below
 * 0.5 (erfc > 0.47 there, no cancellation), a Taylor series to 3, the continued fraction from 3
 * (down to the last subnormal of float64).
 */
export function erfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x < ERFC_TAYLOR.from) return 1 - erf(x);
  if (x < ERFC_TAYLOR.to) return erfcTaylor(x);
  return erfcContinuedFraction(x, 60);
}

export function sigmoid(x: number): number {
  return x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x));
}

export function softplus(x: number): number {
  return Math.max(x, 0) + Math.log1p(Math.exp(-Math.abs(x)));
}

export const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

/** 0.5 x (1 + tanh(u)) written as x sigmoid(2u), which does not cancel for x far below 0. */
export function geluTanh(x: number): number {
  if (x === Infinity) return x;
  return x * sigmoid(2 * SQRT_2_OVER_PI * (x + 0.044715 * x * x * x));
}

/** x Phi(x) = x/2 erfc(-x/sqrt 2), which does not cancel for x far below 0 (1 + erf would). */
export function geluErf(x: number): number {
  if (x === Infinity) return x;
  return 0.5 * x * erfc(-x / Math.SQRT2);
}

/** x sigmoid(x); silu(-inf) = -inf * 0 = NaN, as PyTorch computes it. */
export function silu(x: number): number {
  return x * sigmoid(x);
}

/** sign with PyTorch's sign(NaN) = 0 (and sign(±0) = 0). */
export function sign(x: number): number {
  return x > 0 ? 1 : x < 0 ? -1 : 0;
}

/** Round half to even (torch.round, WGSL round, wasm nearest); keeps the sign of zero. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x); // half up
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * int32 a ** b as PyTorch's integer pow: wraps like int32 (exponentiation by squaring with
 * Math.imul) and, for b < 0, is 1 / a truncated: 1 for a = 1, ±1 for a = -1 by b's parity, else 0.
 */
export function powInt(a: number, b: number): number {
  if (b < 0) return a === 1 ? 1 : a === -1 ? (b & 1 ? -1 : 1) : 0;
  let r = 1;
  for (let base = a, e = b; e > 0; e >>>= 1, base = Math.imul(base, base)) if (e & 1) r = Math.imul(r, base);
  return r;
}

/**
 * a ** b with C's (and PyTorch's) rules where JavaScript's differ: pow(1, NaN) = 1 and
 * pow(-1, ±Infinity) = 1 (Math.pow gives NaN for both).
 */
export function powC(a: number, b: number): number {
  if (a === 1 || b === 0) return 1;
  if (a === -1 && (b === Infinity || b === -Infinity)) return 1;
  return Math.pow(a, b);
}
