/** Elementwise front-ends: the op table's unary and binary ops with dtype promotion and broadcasting. */
import { BINARY_OPS, UNARY_OPS, type BinaryOp, type UnaryOp } from '../../kernels/optable.js';
import type { Backend } from '../../kernels/backend.js';
import { getDefaultDtype, isFloat, promoteTypes, typedArrayFor, type DType } from '../dtype.js';
import { record } from '../graph.js';
import { broadcastShapes, broadcastStrides, fmt } from '../shape.js';
import { Tensor } from '../tensor.js';
import { copy } from './shape.js';

/** Throws unless every tensor lives on the same backend; returns it. */
export function sameBackend(op: string, ...ts: Tensor[]): Backend {
  const b = ts[0].backend;
  for (const t of ts) {
    if (t.backend !== b) throw new Error(`${op}: tensors live on different backends (${b.name} and ${t.backend.name}); move one with toBackend()`);
  }
  return b;
}

/** A rank-0 tensor holding `value` on backend `b`. */
export function scalarTensor(value: number, dtype: DType, b: Backend): Tensor {
  const data = typedArrayFor(dtype, 1);
  data[0] = dtype === 'bool' ? (value ? 1 : 0) : value;
  return Tensor.fromStorage(b.upload(data, dtype), [], b);
}

export function cast(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return x;
  const out = Tensor.empty(x.shape.slice(), dtype, x.backend);
  x.backend.cast(x.storage, out.storage);
  return isFloat(dtype) && isFloat(x.dtype) ? record('cast', out, [x], { dtype: x.dtype }) : out;
}

/** Applies a unary op of the table; int inputs of float-only ops are promoted to the default float dtype. */
export function unaryOp(op: UnaryOp, x: Tensor, p0 = 0, p1 = 0): Tensor {
  const def = UNARY_OPS[op] as { int?: boolean; bool?: boolean };
  if (x.dtype === 'bool') x = cast(x, 'int32');
  if (!isFloat(x.dtype) && !def.int) x = cast(x, getDefaultDtype());
  // unary and binary kernels write every output element: no zero fill needed.
  const out = Tensor.uninit(x.shape.slice(), def.bool ? 'bool' : x.dtype, x.backend);
  x.backend.unary(op, x.storage, out.storage, p0, p1);
  // A bool result has no gradient.
  return def.bool ? out : record(op, out, [x], { p0, p1 });
}

function asTensor(v: Tensor | number, like: Tensor): Tensor {
  if (v instanceof Tensor) return v;
  if (typeof v !== 'number') throw new TypeError(`expected a Tensor or a number, got ${typeof v}`);
  // A non-integer scalar with an int tensor makes the result floating, as in PyTorch.
  const dtype = !isFloat(like.dtype) && !Number.isInteger(v) ? getDefaultDtype() : like.dtype === 'bool' ? 'int32' : like.dtype;
  return scalarTensor(v, dtype, like.backend);
}

export function binaryOp(op: BinaryOp, aIn: Tensor | number, bIn: Tensor | number): Tensor {
  if (!(aIn instanceof Tensor) && !(bIn instanceof Tensor)) throw new TypeError(`${op}: at least one operand must be a Tensor`);
  // tensor (op) scalar on a float tensor: one affine kernel, no scalar upload.
  if (aIn instanceof Tensor && typeof bIn === 'number' && isFloat(aIn.dtype)) {
    if (op === 'add') return unaryOp('affine', aIn, 1, bIn);
    if (op === 'sub') return unaryOp('affine', aIn, 1, -bIn);
    if (op === 'mul') return unaryOp('affine', aIn, bIn, 0);
  }
  if (bIn instanceof Tensor && typeof aIn === 'number' && isFloat(bIn.dtype)) {
    if (op === 'add') return unaryOp('affine', bIn, 1, aIn);
    if (op === 'mul') return unaryOp('affine', bIn, aIn, 0);
    if (op === 'sub') return unaryOp('affine', bIn, -1, aIn);
  }
  let a = asTensor(aIn, bIn instanceof Tensor ? bIn : (aIn as Tensor));
  let b = asTensor(bIn, a);
  const backend = sameBackend(op, a, b);
  const def = BINARY_OPS[op] as { int?: boolean; compare?: boolean };
  let dtype = promoteTypes(a.dtype, b.dtype);
  if (!isFloat(dtype) && !def.int) dtype = getDefaultDtype();
  a = cast(a, dtype);
  b = cast(b, dtype);
  const shape = broadcastShapes(op, a.shape, b.shape);
  const out = Tensor.uninit(shape, def.compare ? 'bool' : dtype, backend);
  backend.binary(op, a.storage, b.storage, out.storage, {
    shape,
    aStrides: broadcastStrides(a.shape, shape),
    bStrides: broadcastStrides(b.shape, shape),
  });
  return def.compare ? out : record(op, out, [a, b]);
}

export const add = (a: Tensor | number, b: Tensor | number) => binaryOp('add', a, b);
export const sub = (a: Tensor | number, b: Tensor | number) => binaryOp('sub', a, b);
export const mul = (a: Tensor | number, b: Tensor | number) => binaryOp('mul', a, b);
export const div = (a: Tensor | number, b: Tensor | number) => binaryOp('div', a, b);
export const maximum = (a: Tensor | number, b: Tensor | number) => binaryOp('maximum', a, b);
export const minimum = (a: Tensor | number, b: Tensor | number) => binaryOp('minimum', a, b);
export const eq = (a: Tensor | number, b: Tensor | number) => binaryOp('eq', a, b);
export const ne = (a: Tensor | number, b: Tensor | number) => binaryOp('ne', a, b);
export const lt = (a: Tensor | number, b: Tensor | number) => binaryOp('lt', a, b);
export const le = (a: Tensor | number, b: Tensor | number) => binaryOp('le', a, b);
export const gt = (a: Tensor | number, b: Tensor | number) => binaryOp('gt', a, b);
export const ge = (a: Tensor | number, b: Tensor | number) => binaryOp('ge', a, b);

/** a ** b; a scalar exponent uses the powScalar kernel (and a simpler gradient). */
export function pow(a: Tensor | number, b: Tensor | number): Tensor {
  if (a instanceof Tensor && typeof b === 'number') {
    if (b === 1) return copy(a);
    if (b === 2) return unaryOp('square', a);
    // An integer tensor to a whole power stays integer (the table's int32 pow), as in PyTorch,
    // which refuses a negative one for a scalar exponent (a tensor of them truncates instead).
    if (!isFloat(a.dtype) && Number.isInteger(b)) {
      if (b < 0) throw new RangeError(`pow: integers to negative integer powers are not allowed (${a.dtype} ${fmt(a.shape)} ** ${b})`);
      return binaryOp('pow', a, b);
    }
    return unaryOp('powScalar', a, b);
  }
  // int32 ** int32 stays int32 (the table's integer pow); bool ** bool has no integer pow in
  // PyTorch either ("pow" not implemented for 'Bool').
  const isBool = (v: Tensor | number) => v instanceof Tensor && v.dtype === 'bool';
  if (isBool(a) && isBool(b)) throw new TypeError('pow: not implemented for bool ** bool; cast to int32 or float first');
  return binaryOp('pow', a, b);
}

export const neg = (x: Tensor) => unaryOp('neg', x);
export const exp = (x: Tensor) => unaryOp('exp', x);
export const log = (x: Tensor) => unaryOp('log', x);
export const sqrt = (x: Tensor) => unaryOp('sqrt', x);
export const rsqrt = (x: Tensor) => unaryOp('rsqrt', x);
export const abs = (x: Tensor) => unaryOp('abs', x);
export const sign = (x: Tensor) => unaryOp('sign', x);
export const square = (x: Tensor) => unaryOp('square', x);
export const reciprocal = (x: Tensor) => unaryOp('reciprocal', x);
export const relu = (x: Tensor) => unaryOp('relu', x);
export const tanh = (x: Tensor) => unaryOp('tanh', x);
export const sigmoid = (x: Tensor) => unaryOp('sigmoid', x);
const SOFTPLUS_THRESHOLD = 20;
/**
 * log(1 + e^x) (the table's op, exact), and x itself above 20: PyTorch's softplus(x, beta=1,
 * threshold=20) is defined so (log1p(e^-x) < 2.1e-9 there, under a float32 ulp of x), and the
 * where gives its gradient g and second derivative 0 there. BCE with logits calls the op itself,
 * as PyTorch's formula has no threshold.
 */
export const softplus = (x: Tensor) => where(gt(x, SOFTPLUS_THRESHOLD), x, unaryOp('softplus', x));
export const sin = (x: Tensor) => unaryOp('sin', x);
export const cos = (x: Tensor) => unaryOp('cos', x);
export const erf = (x: Tensor) => unaryOp('erf', x);
export const expm1 = (x: Tensor) => unaryOp('expm1', x);
export const log1p = (x: Tensor) => unaryOp('log1p', x);
export const silu = (x: Tensor) => unaryOp('silu', x);
export const isnan = (x: Tensor) => unaryOp('isnan', x);
export const isinf = (x: Tensor) => unaryOp('isinf', x);
export const isfinite = (x: Tensor) => unaryOp('isfinite', x);
export const logicalNot = (x: Tensor) => unaryOp('logicalNot', x);
export const logicalAnd = (a: Tensor | number, b: Tensor | number) => binaryOp('logicalAnd', a, b);
export const logicalOr = (a: Tensor | number, b: Tensor | number) => binaryOp('logicalOr', a, b);
export const logicalXor = (a: Tensor | number, b: Tensor | number) => binaryOp('logicalXor', a, b);

/** floor, ceil and round (half to even, as torch.round) keep an integer tensor as it is. */
function integral(op: 'floor' | 'ceil' | 'round', x: Tensor): Tensor {
  return isFloat(x.dtype) ? unaryOp(op, x) : copy(x);
}
export const floor = (x: Tensor) => integral('floor', x);
export const ceil = (x: Tensor) => integral('ceil', x);
export const round = (x: Tensor) => integral('round', x);

/** x for x > 0, negativeSlope * x otherwise (PyTorch's default slope 0.01). */
export function leakyRelu(x: Tensor, negativeSlope = 0.01): Tensor {
  if (!Number.isFinite(negativeSlope)) throw new RangeError(`leakyRelu: negativeSlope must be finite, got ${negativeSlope}`);
  return unaryOp('leakyRelu', x, negativeSlope);
}

/** x for x > 0, alpha * (e^x - 1) otherwise. */
export function elu(x: Tensor, alpha = 1): Tensor {
  if (!Number.isFinite(alpha)) throw new RangeError(`elu: alpha must be finite, got ${alpha}`);
  return unaryOp('elu', x, alpha);
}

/** GELU, exact (erf) by default or with PyTorch's tanh approximation. */
export function gelu(x: Tensor, approximate: 'none' | 'tanh' = 'none'): Tensor {
  if (approximate !== 'none' && approximate !== 'tanh') throw new RangeError(`gelu: approximate must be 'none' or 'tanh', got ${JSON.stringify(approximate)}`);
  return unaryOp(approximate === 'tanh' ? 'geluTanh' : 'geluErf', x);
}

export function clamp(x: Tensor, min?: number | null, max?: number | null): Tensor {
  const lo = min ?? -Infinity;
  const hi = max ?? Infinity;
  if (Number.isNaN(lo) || Number.isNaN(hi)) throw new RangeError(`clamp: bounds must not be NaN (min ${min}, max ${max})`);
  if (lo > hi) throw new RangeError(`clamp: min ${lo} is greater than max ${hi}`);
  return unaryOp('clamp', x, lo, hi);
}

/** cond ? a : b with broadcasting; cond must be bool. */
export function where(cond: Tensor, aIn: Tensor | number, bIn: Tensor | number): Tensor {
  if (cond.dtype !== 'bool') throw new TypeError(`where: condition must be bool, got ${cond.dtype}`);
  const ref = aIn instanceof Tensor ? aIn : bIn instanceof Tensor ? bIn : null;
  let a = ref ? asTensor(aIn, ref) : scalarTensor(aIn as number, getDefaultDtype(), cond.backend);
  let b = asTensor(bIn, a);
  const backend = sameBackend('where', cond, a, b);
  const dtype = promoteTypes(a.dtype, b.dtype);
  a = cast(a, dtype);
  b = cast(b, dtype);
  const shape = broadcastShapes('where', broadcastShapes('where', cond.shape, a.shape), b.shape);
  // The kernel writes every element (as binary's do): no zero fill first.
  const out = Tensor.uninit(shape, dtype, backend);
  backend.where(cond.storage, a.storage, b.storage, out.storage, {
    shape,
    condStrides: broadcastStrides(cond.shape, shape),
    aStrides: broadcastStrides(a.shape, shape),
    bStrides: broadcastStrides(b.shape, shape),
  });
  return record('where', out, [a, b], {}, [cond]);
}

/** Checks that a tensor is floating, naming the op. */
export function requireFloat(op: string, t: Tensor, what = 'input'): void {
  if (!isFloat(t.dtype)) throw new TypeError(`${op}: ${what} must be float32 or float64, got ${t.dtype} ${fmt(t.shape)}`);
}
