/**
 * The elementwise op table: every pointwise op is named here once, with its CPU closure and
 * its WGSL expression side by side, so the backends cannot drift apart. Derivatives are tensor
 * programs and live with the autograd rules (src/autograd/vjps.ts), keyed by the same names.
 *
 * WGSL conventions: the operands are `x` (unary) or `a`, `b` (binary), of type `T` (f32, i32 or a
 * vec4 of either), and the unary parameters are `p0`, `p1` (f32). Constants are written `T(...)`
 * so that one expression serves scalar and vec4 code. Tests that look at x's sign or zeroness use the bits (fg_signbit, fg_nz, fg_is_tiny), because
 * arithmetic and comparisons may see a subnormal as 0. The `fg_*` functions come from the WebGPU
 * backend's prelude (src/kernels/webgpu/wgsl.ts, wgsl-math.ts): exp, log, tanh, erf, ... accurate to a few float32
 * ulps with subnormals, ±0, ±Inf and NaN handled, NaN-propagating max/min and NaN tests, because
 * WGSL's builtins promise less than the CPU oracle. The CPU closures compute in float64, so a
 * float32 result is the correctly rounded value up to float64's own error; where PyTorch and
 * JavaScript disagree (pow(1, NaN), sign(NaN)) the closures follow PyTorch.
 */
import { erf, geluErf, geluTanh, powC, powInt, roundHalfEven, sigmoid, sign, silu, softplus } from './mathfns.js';

export interface UnaryOpDef {
  cpu: (x: number, p0: number, p1: number) => number;
  wgsl: string;
  /** The expression is valid for int32 operands too. */
  int?: boolean;
  /** The WGSL expression is a bool (or vec4<bool>) and the output dtype is bool. */
  bool?: boolean;
  /** The int32 closure where float64 arithmetic would not wrap like int32 (products). */
  cpuInt?: (x: number) => number;
}

export interface BinaryOpDef {
  cpu: (a: number, b: number) => number;
  wgsl: string;
  int?: boolean;
  /** The int32 closure where float64 arithmetic would not wrap like int32 (products). */
  cpuInt?: (a: number, b: number) => number;
  /** Produces bool whatever the operand dtype. */
  compare?: boolean;
}

export const UNARY_OPS = {
  neg: { cpu: (x) => -x, wgsl: 'fg_neg(x)', int: true },
  abs: { cpu: (x) => Math.abs(x), wgsl: 'abs(x)', int: true },
  /** sign(NaN) = 0, as in PyTorch. */
  sign: { cpu: sign, wgsl: 'select(select(T(1.0), T(-1.0), fg_signbit(x)), T(0.0), !fg_nz(x) | fg_isnan_t(x))', int: true },
  exp: { cpu: (x) => Math.exp(x), wgsl: 'fg_exp(x)' },
  expm1: { cpu: (x) => Math.expm1(x), wgsl: 'fg_expm1(x)' },
  log: { cpu: (x) => Math.log(x), wgsl: 'fg_log(x)' },
  log1p: { cpu: (x) => Math.log1p(x), wgsl: 'fg_log1p(x)' },
  sqrt: { cpu: (x) => Math.sqrt(x), wgsl: 'fg_sqrt(x)' },
  rsqrt: { cpu: (x) => 1 / Math.sqrt(x), wgsl: 'fg_rsqrt(x)' },
  square: { cpu: (x) => x * x, cpuInt: (x) => Math.imul(x, x), wgsl: 'x * x', int: true },
  reciprocal: { cpu: (x) => 1 / x, wgsl: 'fg_recip(x)' },
  relu: { cpu: (x) => (x > 0 ? x : x === 0 || x < 0 ? 0 : x), wgsl: 'select(x, T(0.0), fg_signbit(x) & !fg_isnan_t(x))', int: true },
  /** x for x > 0, p0 x otherwise (p0 = negative slope). */
  leakyRelu: { cpu: (x, p0) => (x > 0 ? x : p0 * x), wgsl: 'select(T(p0) * x, x, !fg_signbit(x))' },
  /** x for x > 0, p0 (e^x - 1) otherwise (p0 = alpha). */
  elu: { cpu: (x, p0) => (x > 0 ? x : p0 * Math.expm1(x)), wgsl: 'select(T(p0) * fg_expm1(x), x, !fg_signbit(x))' },
  silu: { cpu: silu, wgsl: 'fg_silu(x)' },
  tanh: { cpu: (x) => Math.tanh(x), wgsl: 'fg_tanh(x)' },
  sigmoid: { cpu: sigmoid, wgsl: 'fg_sigmoid(x)' },
  softplus: { cpu: softplus, wgsl: 'fg_softplus(x)' },
  geluTanh: { cpu: geluTanh, wgsl: 'fg_gelu_tanh(x)' },
  geluErf: { cpu: geluErf, wgsl: 'fg_gelu_erf(x)' },
  erf: { cpu: erf, wgsl: 'fg_erf(x)' },
  sin: { cpu: (x) => Math.sin(x), wgsl: 'select(fg_trig_full(x, T(0.0)), x, fg_is_tiny(x))' },
  cos: { cpu: (x) => Math.cos(x), wgsl: 'fg_trig_full(x, T(1.0))' },
  floor: { cpu: (x) => Math.floor(x), wgsl: 'select(floor(x), T(-1.0), fg_signbit(x) & fg_nz(x) & fg_is_tiny(x))' },
  ceil: { cpu: (x) => Math.ceil(x), wgsl: 'select(ceil(x), T(1.0), !fg_signbit(x) & fg_nz(x) & fg_is_tiny(x))' },
  /** Half to even, as torch.round. */
  round: { cpu: roundHalfEven, wgsl: 'round(x)' },
  isnan: { cpu: (x) => (x !== x ? 1 : 0), wgsl: 'fg_isnan_t(x)', bool: true },
  isinf: { cpu: (x) => (x === Infinity || x === -Infinity ? 1 : 0), wgsl: '(bitcast<TU>(x) & TU(0x7fffffffu)) == TU(0x7f800000u)', bool: true },
  isfinite: { cpu: (x) => (Number.isFinite(x) ? 1 : 0), wgsl: '(bitcast<TU>(x) & TU(0x7fffffffu)) < TU(0x7f800000u)', bool: true },
  /** True where x is zero; NaN counts as nonzero (true), as in PyTorch. */
  logicalNot: { cpu: (x) => (x === 0 ? 1 : 0), wgsl: '!fg_nz(x)', int: true, bool: true },
  /** p0 * x + p1: tensor-scalar arithmetic without uploading the scalar. */
  affine: { cpu: (x, p0, p1) => p0 * x + p1, wgsl: 'T(p0) * x + T(p1)' },
  /** x ** p0 for a scalar exponent. */
  powScalar: { cpu: (x, p0) => powC(x, p0), wgsl: 'fg_pow(x, T(p0))' },
  clamp: { cpu: (x, p0, p1) => (x < p0 ? p0 : x > p1 ? p1 : x), wgsl: 'select(clamp(x, T(p0), T(p1)), x, fg_isnan_t(x))' },
  /** 1 where p0 <= x <= p1 (the clamp derivative mask, inclusive as in PyTorch), else 0. */
  insideMask: { cpu: (x, p0, p1) => (x >= p0 && x <= p1 ? 1 : 0), wgsl: 'select(T(0.0), T(1.0), (x >= T(p0)) & (x <= T(p1)))' },
} satisfies Record<string, UnaryOpDef>;

export const BINARY_OPS = {
  add: { cpu: (a, b) => a + b, wgsl: 'a + b', int: true },
  sub: { cpu: (a, b) => a - b, wgsl: 'a - b', int: true },
  mul: { cpu: (a, b) => a * b, cpuInt: (a, b) => Math.imul(a, b), wgsl: 'a * b', int: true },
  div: { cpu: (a, b) => a / b, wgsl: 'a / b' },
  /** int32 ** int32 stays int32 as in PyTorch (fg_pow has an integer form in the i32 prelude). */
  pow: { cpu: powC, cpuInt: powInt, wgsl: 'fg_pow(a, b)', int: true },
  maximum: { cpu: (a, b) => (a !== a || b !== b ? NaN : a > b ? a : b), wgsl: 'fg_max(a, b)', int: true },
  minimum: { cpu: (a, b) => (a !== a || b !== b ? NaN : a < b ? a : b), wgsl: 'fg_min(a, b)', int: true },
  eq: { cpu: (a, b) => (a === b ? 1 : 0), wgsl: 'a == b', int: true, compare: true },
  ne: { cpu: (a, b) => (a !== b ? 1 : 0), wgsl: '(a != b) | fg_isnan_t(a) | fg_isnan_t(b)', int: true, compare: true },
  lt: { cpu: (a, b) => (a < b ? 1 : 0), wgsl: 'a < b', int: true, compare: true },
  le: { cpu: (a, b) => (a <= b ? 1 : 0), wgsl: 'a <= b', int: true, compare: true },
  gt: { cpu: (a, b) => (a > b ? 1 : 0), wgsl: 'a > b', int: true, compare: true },
  ge: { cpu: (a, b) => (a >= b ? 1 : 0), wgsl: 'a >= b', int: true, compare: true },
  /** Logical ops treat nonzero (NaN included) as true, as in PyTorch. */
  logicalAnd: { cpu: (a, b) => (a !== 0 && b !== 0 ? 1 : 0), wgsl: 'fg_nz(a) & fg_nz(b)', int: true, compare: true },
  logicalOr: { cpu: (a, b) => (a !== 0 || b !== 0 ? 1 : 0), wgsl: 'fg_nz(a) | fg_nz(b)', int: true, compare: true },
  logicalXor: { cpu: (a, b) => ((a !== 0) !== (b !== 0) ? 1 : 0), wgsl: 'fg_nz(a) != fg_nz(b)', int: true, compare: true },
} satisfies Record<string, BinaryOpDef>;

export type UnaryOp = keyof typeof UNARY_OPS;
export type BinaryOp = keyof typeof BINARY_OPS;
