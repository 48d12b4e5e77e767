/** Scalar math shared by the CPU closures of the op table (float64 accuracy). */

/** erf to about 1e-15: Taylor series near zero, a continued fraction for erfc in the tails. */
export function erf(x: number): number {
  if (Number.isNaN(x)) return NaN;
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
  // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + 2/(x + ...))))), evaluated bottom-up.
  let f = ax;
  for (let k = 60; k >= 1; k--) f = ax + k / 2 / f;
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return x < 0 ? erfc - 1 : 1 - erfc;
}

/**
 * erfc to about 1e-15 relative, also in the right tail where 1 - erf(x) cancels: the continued
 * fraction for x >= 3 (down to the last subnormal of float64), 1 - erf(x) below.
 */
export function erfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x < 3) return 1 - erf(x);
  let f = x;
  for (let k = 60; k >= 1; k--) f = x + k / 2 / f;
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
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
 * a ** b with C's (and PyTorch's) rules where JavaScript's differ: pow(1, NaN) = 1 and
 * pow(-1, ±Infinity) = 1 (Math.pow gives NaN for both).
 */
export function powC(a: number, b: number): number {
  if (a === 1 || b === 0) return 1;
  if (a === -1 && (b === Infinity || b === -Infinity)) return 1;
  return Math.pow(a, b);
}
