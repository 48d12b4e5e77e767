/**
 * The elementwise op table: every pointwise op is named here once, with its CPU closure and
 * its WGSL expression side by side, so the backends cannot drift apart. Derivatives are tensor
 * programs and live with the autograd rules (src/autograd/vjps.ts), keyed by the same names.
 *
 * WGSL conventions: the operands are `x` (unary) or `a`, `b` (binary), of type `T` (f32, i32 or a
 * vec4 of either), and the unary parameters are `p0`, `p1` (f32). Constants are written `T(...)`
 * so that one expression serves scalar and vec4 code. The `fg_*` functions come from the WebGPU
 * backend's prelude (src/kernels/webgpu/wgsl.ts): erf, sin/cos and pow accurate to float32, and
 * NaN-propagating max/min and NaN tests, because WGSL's builtins promise less than the CPU oracle.
 */
import { erf, geluErf, geluTanh, sigmoid, softplus, SQRT_2_OVER_PI } from './mathfns.js';

export interface UnaryOpDef {
  cpu: (x: number, p0: number, p1: number) => number;
  wgsl: string;
  /** The expression is valid for int32 operands too. */
  int?: boolean;
}

export interface BinaryOpDef {
  cpu: (a: number, b: number) => number;
  wgsl: string;
  int?: boolean;
  /** Produces bool whatever the operand dtype. */
  compare?: boolean;
}

export const UNARY_OPS = {
  neg: { cpu: (x) => -x, wgsl: '-x', int: true },
  abs: { cpu: (x) => Math.abs(x), wgsl: 'abs(x)', int: true },
  sign: { cpu: (x) => (x > 0 ? 1 : x < 0 ? -1 : x === 0 ? 0 : NaN), wgsl: 'sign(x)' },
  exp: { cpu: (x) => Math.exp(x), wgsl: 'exp(x)' },
  log: { cpu: (x) => Math.log(x), wgsl: 'log(x)' },
  sqrt: { cpu: (x) => Math.sqrt(x), wgsl: 'sqrt(x)' },
  rsqrt: { cpu: (x) => 1 / Math.sqrt(x), wgsl: 'inverseSqrt(x)' },
  square: { cpu: (x) => x * x, wgsl: 'x * x', int: true },
  reciprocal: { cpu: (x) => 1 / x, wgsl: 'T(1.0) / x' },
  relu: { cpu: (x) => (x > 0 ? x : x === 0 || x < 0 ? 0 : x), wgsl: 'select(x, T(0.0), x <= T(0.0))' },
  tanh: { cpu: (x) => Math.tanh(x), wgsl: 'tanh(clamp(x, T(-15.0), T(15.0)))' },
  sigmoid: { cpu: sigmoid, wgsl: 'T(1.0) / (T(1.0) + exp(-x))' },
  softplus: { cpu: softplus, wgsl: 'max(x, T(0.0)) + log(T(1.0) + exp(-abs(x)))' },
  geluTanh: {
    cpu: geluTanh,
    wgsl: `T(0.5) * x * (T(1.0) + tanh(clamp(T(${SQRT_2_OVER_PI}) * (x + T(0.044715) * x * x * x), T(-15.0), T(15.0))))`,
  },
  geluErf: { cpu: geluErf, wgsl: `T(0.5) * x * (T(1.0) + fg_erf(x * T(${Math.SQRT1_2})))` },
  erf: { cpu: erf, wgsl: 'fg_erf(x)' },
  sin: { cpu: (x) => Math.sin(x), wgsl: 'fg_sin(x)' },
  cos: { cpu: (x) => Math.cos(x), wgsl: 'fg_cos(x)' },
  /** p0 * x + p1: tensor-scalar arithmetic without uploading the scalar. */
  affine: { cpu: (x, p0, p1) => p0 * x + p1, wgsl: 'T(p0) * x + T(p1)' },
  /** x ** p0 for a scalar exponent. */
  powScalar: { cpu: (x, p0) => Math.pow(x, p0), wgsl: 'fg_pow(x, T(p0))' },
  clamp: { cpu: (x, p0, p1) => (x < p0 ? p0 : x > p1 ? p1 : x), wgsl: 'select(clamp(x, T(p0), T(p1)), x, fg_isnan_t(x))' },
  /** 1 where p0 <= x <= p1 (the clamp derivative mask, inclusive as in PyTorch), else 0. */
  insideMask: { cpu: (x, p0, p1) => (x >= p0 && x <= p1 ? 1 : 0), wgsl: 'select(T(0.0), T(1.0), (x >= T(p0)) & (x <= T(p1)))' },
} satisfies Record<string, UnaryOpDef>;

export const BINARY_OPS = {
  add: { cpu: (a, b) => a + b, wgsl: 'a + b', int: true },
  sub: { cpu: (a, b) => a - b, wgsl: 'a - b', int: true },
  mul: { cpu: (a, b) => a * b, wgsl: 'a * b', int: true },
  div: { cpu: (a, b) => a / b, wgsl: 'a / b' },
  pow: { cpu: (a, b) => Math.pow(a, b), wgsl: 'fg_pow(a, b)' },
  maximum: { cpu: (a, b) => (a !== a || b !== b ? NaN : a > b ? a : b), wgsl: 'fg_max(a, b)', int: true },
  minimum: { cpu: (a, b) => (a !== a || b !== b ? NaN : a < b ? a : b), wgsl: 'fg_min(a, b)', int: true },
  eq: { cpu: (a, b) => (a === b ? 1 : 0), wgsl: 'a == b', int: true, compare: true },
  ne: { cpu: (a, b) => (a !== b ? 1 : 0), wgsl: '(a != b) | fg_isnan_t(a) | fg_isnan_t(b)', int: true, compare: true },
  lt: { cpu: (a, b) => (a < b ? 1 : 0), wgsl: 'a < b', int: true, compare: true },
  le: { cpu: (a, b) => (a <= b ? 1 : 0), wgsl: 'a <= b', int: true, compare: true },
  gt: { cpu: (a, b) => (a > b ? 1 : 0), wgsl: 'a > b', int: true, compare: true },
  ge: { cpu: (a, b) => (a >= b ? 1 : 0), wgsl: 'a >= b', int: true, compare: true },
} satisfies Record<string, BinaryOpDef>;

export type UnaryOp = keyof typeof UNARY_OPS;
export type BinaryOp = keyof typeof BINARY_OPS;
