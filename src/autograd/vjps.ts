/**
 * Vector-Jacobian products, one per recorded op, written in tensor ops so that they are
 * differentiable themselves (double backward for Hessian-vector products). Convolution and
 * pooling register theirs in src/tensor/ops/window.ts, layer and batch norm in
 * src/tensor/ops/normalization.ts, the fused attention in src/nn/attention.ts, so that only a
 * program using them ships them.
 */
import { isGradEnabled, vjpRegistry, type Node, type Vjp } from '../tensor/graph.js';
import { Tensor } from '../tensor/tensor.js';
import { numel } from '../tensor/shape.js';
import { add, cast, cos, div, eq, exp, ge, gt, isnan, le, logicalAnd, logicalOr, mul, neg, sigmoid, sin, square, sub, unaryOp, where, pow } from '../tensor/ops/elementwise.js';
import { cumsum, expandFrom, prod, sum, sumTo } from '../tensor/ops/reduce.js';
import { expand, flip, narrow, permute, reshape, slice, sliceScatter } from '../tensor/ops/shape.js';
import { mm } from '../tensor/ops/linalg.js';
import {
  crossEntropyGrad,
  gather,
  indexSelect,
  scatterAdd,
} from '../tensor/ops/nn.js';
import type { DType } from '../tensor/dtype.js';

const attr = <T>(n: Node, k: string) => n.attrs[k] as T;
const def = (op: string, f: Vjp) => vjpRegistry.set(op, f);
const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

// ---- binary ----
// `into` (see Vjp): a broadcast operand (a bias) has its summed gradient written there.
def('add', (g, n, _o, into) => [sumTo(g, n.inputs[0].shape, into?.[0] ?? undefined), sumTo(g, n.inputs[1].shape, into?.[1] ?? undefined)]);
def('sub', (g, n) => [sumTo(g, n.inputs[0].shape), sumTo(neg(g), n.inputs[1].shape)]);
def('mul', (g, { inputs: [a, b] }) => [a.requiresGrad ? sumTo(mul(g, b), a.shape) : null, b.requiresGrad ? sumTo(mul(g, a), b.shape) : null]);
def('div', (g, { inputs: [a, b] }) => [
  a.requiresGrad ? sumTo(div(g, b), a.shape) : null,
  b.requiresGrad ? sumTo(neg(div(mul(g, a), square(b))), b.shape) : null,
]);
/**
 * As PyTorch: d/da is 0 where b == 0 (not 0 * pow(0, -1) = NaN), and d/db is 0 where a == 0 and
 * b >= 0 (not 0 * log(0) = NaN).
 */
def('pow', (g, { inputs: [a, b] }, out) => [
  a.requiresGrad ? sumTo(where(eq(b, 0), 0, mul(g, mul(b, pow(a, sub(b, 1))))), a.shape) : null,
  b.requiresGrad ? sumTo(where(logicalAnd(eq(a, 0), ge(b, 0)), 0, mul(g, mul(out, unaryOp('log', a)))), b.shape) : null,
]);
/**
 * max/min: the gradient goes to the winner, split evenly on ties; where either side is NaN (so is
 * the output) both sides get the whole gradient, as in PyTorch.
 */
const extremum = (first: (a: Tensor, b: Tensor) => Tensor): Vjp => (g, { inputs: [a, b] }) => {
  const ta = cast(first(a, b), g.dtype);
  const tie = mul(cast(eq(a, b), g.dtype), 0.5);
  const wa = add(ta, tie);
  const wb = sub(1, wa);
  const nan = logicalOr(isnan(a), isnan(b));
  return [sumTo(where(nan, g, mul(g, wa)), a.shape), sumTo(where(nan, g, mul(g, wb)), b.shape)];
};
def('maximum', extremum(gt));
def('minimum', extremum((a, b) => gt(b, a)));
def('where', (g, { inputs: [a, b], saved: [cond] }) => [sumTo(where(cond, g, 0), a.shape), sumTo(where(cond, 0, g), b.shape)]);
def('cast', (g, n) => [cast(g, attr<DType>(n, 'dtype'))]);
def('clone', (g) => [g]);

// ---- unary ----
const unary = (op: string, f: (g: Tensor, x: Tensor, out: Tensor, n: Node) => Tensor) => def(op, (g, n, out) => [f(g, n.inputs[0], out, n)]);
unary('neg', (g) => neg(g));
unary('abs', (g, x) => mul(g, unaryOp('sign', x)));
unary('sign', (g) => mul(g, 0));
unary('exp', (g, _x, out) => mul(g, out));
unary('log', (g, x) => div(g, x));
unary('sqrt', (g, _x, out) => div(mul(g, 0.5), out));
unary('rsqrt', (g, _x, out) => mul(g, mul(pow(out, 3), -0.5)));
unary('square', (g, x) => mul(g, mul(x, 2)));
unary('reciprocal', (g, _x, out) => neg(mul(g, square(out))));
// Zero where x <= 0 and g elsewhere, NaN included (PyTorch's threshold_backward).
unary('relu', (g, x) => where(le(x, 0), 0, g));
// The slope where x > 0 is false: at 0 and at NaN too, as in PyTorch.
unary('leakyRelu', (g, x, _o, n) => where(gt(x, 0), g, mul(g, attr<number>(n, 'p0'))));
// 1 where x > 0; alpha e^x = out + alpha elsewhere, NaN at NaN (PyTorch's float64). At x = 0
// out is replaced by its constant value 0, so that the second derivative there is 0, as
// PyTorch's elu_double_backward masks it with x < 0.
unary('elu', (g, x, out, n) => where(gt(x, 0), g, mul(g, add(where(eq(x, 0), 0, out), attr<number>(n, 'p0')))));
unary('silu', (g, x) => {
  const s = sigmoid(x);
  return mul(g, mul(s, add(mul(x, sub(1, s)), 1)));
});
unary('expm1', (g, _x, out) => mul(g, add(out, 1)));
unary('log1p', (g, x) => div(g, add(x, 1)));
// Piecewise constant: zero gradient, as in PyTorch.
unary('floor', (g) => mul(g, 0));
unary('ceil', (g) => mul(g, 0));
unary('round', (g) => mul(g, 0));
unary('tanh', (g, _x, out) => mul(g, sub(1, square(out))));
unary('sigmoid', (g, _x, out) => mul(g, mul(out, sub(1, out))));
unary('softplus', (g, x) => mul(g, sigmoid(x)));
unary('geluTanh', (g, x) => {
  // d/dx 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3)
  const t = unaryOp('tanh', mul(add(x, mul(pow(x, 3), 0.044715)), SQRT_2_OVER_PI));
  const du = mul(add(mul(square(x), 3 * 0.044715), 1), SQRT_2_OVER_PI);
  return mul(g, add(mul(add(t, 1), 0.5), mul(mul(mul(x, 0.5), sub(1, square(t))), du)));
});
unary('geluErf', (g, x) => {
  // Phi(x) + x phi(x)
  const cdf = mul(add(unaryOp('erf', mul(x, Math.SQRT1_2)), 1), 0.5);
  const pdf = mul(exp(mul(square(x), -0.5)), 1 / Math.sqrt(2 * Math.PI));
  return mul(g, add(cdf, mul(x, pdf)));
});
unary('erf', (g, x) => mul(g, mul(exp(neg(square(x))), 2 / Math.sqrt(Math.PI))));
unary('sin', (g, x) => mul(g, cos(x)));
unary('cos', (g, x) => neg(mul(g, sin(x))));
unary('affine', (g, _x, _o, n) => mul(g, attr<number>(n, 'p0')));
unary('powScalar', (g, x, _o, n) => {
  const p = attr<number>(n, 'p0');
  // x^0 is constant: its gradient is 0 also at x = 0 (not 0 * 0^-1 = NaN), as in PyTorch.
  return p === 0 ? mul(g, 0) : mul(g, mul(pow(x, p - 1), p));
});
unary('clamp', (g, x, _o, n) => mul(g, unaryOp('insideMask', x, attr<number>(n, 'p0'), attr<number>(n, 'p1'))));
unary('insideMask', (g) => mul(g, 0));

// ---- reductions ----
def('sum', (g, { inputs: [x], attrs }) => [expandFrom(g, attrs.keptShape as number[], x.shape)]);
const extremeReduce: Vjp = (g, { inputs: [x], attrs }, out) => {
  const kept = attrs.keptShape as number[];
  const hit = cast(eq(x, expandFrom(out, kept, x.shape)), g.dtype);
  const axes = kept.map((d, i) => (d === 1 && x.shape[i] !== 1 ? i : -1)).filter((i) => i >= 0);
  const count = axes.length ? sum(hit, axes, true) : hit;
  return [mul(hit, expandFrom(div(reshape(g, kept), count), kept, x.shape))];
};
def('max', extremeReduce);
def('min', extremeReduce);
/**
 * d prod / d x_i is the product of the others. Dividing out by x_i fails at zeros, so: with no
 * zero in the slice it is out / x_i; with exactly one zero only that place gets a gradient, the
 * product of the nonzero others; with two or more zeros every product of others is zero. That
 * rule's own derivative is wrong at zeros (it treats the zero count as constant), so when the
 * gradient is itself being differentiated the product of the others is formed directly instead,
 * as a product over each slice with one factor replaced by 1 (n^2 memory per slice of n).
 */
def('prod', (g, { inputs: [x], attrs }, out) => {
  const kept = attrs.keptShape as number[];
  const axes = kept.map((d, i) => (d === 1 && x.shape[i] !== 1 ? i : -1)).filter((i) => i >= 0);
  if (axes.length === 0) return [reshape(g, x.shape)];
  if (isGradEnabled()) {
    const rest = x.shape.map((_, i) => i).filter((i) => !axes.includes(i));
    const order = [...rest, ...axes];
    const moved = permute(x, order);
    const rows = numel(rest.map((i) => x.shape[i]));
    const n = numel(axes.map((i) => x.shape[i]));
    const eye = Tensor.fromStorage(x.backend.upload(Uint8Array.from({ length: n * n }, (_, k) => (k % (n + 1) === 0 ? 1 : 0)), 'bool'), [n, n], x.backend);
    const others = prod(where(eye, 1, expand(reshape(moved, [rows, 1, n]), [rows, n, n])), 2);
    const inverse = order.map((_, i) => order.indexOf(i));
    return [permute(reshape(mul(others, reshape(g, [rows, 1])), moved.shape), inverse)];
  }
  const isZero = eq(x, 0);
  const zeros = expandFrom(sum(isZero, axes, true), kept, x.shape);
  const nonzero = where(isZero, 1, x);
  const gx = expandFrom(reshape(g, kept), kept, x.shape);
  const othersOfZero = mul(gx, expandFrom(prod(nonzero, axes, true), kept, x.shape));
  const othersOfNonzero = div(mul(gx, expandFrom(reshape(out, kept), kept, x.shape)), nonzero);
  return [where(isZero, where(eq(zeros, 1), othersOfZero, 0), where(eq(zeros, 0), othersOfNonzero, 0))];
});
/** The adjoint of a prefix sum is a suffix sum: flip, cumsum, flip. */
def('cumsum', (g, n) => {
  const dim = attr<number>(n, 'dim');
  return [flip(cumsum(flip(g, dim), dim), dim)];
});
def('softmax', (g, n, y) => {
  const dim = attr<number>(n, 'dim');
  return [mul(y, sub(g, sum(mul(g, y), dim, true)))];
});
def('logSoftmax', (g, n, y) => {
  const dim = attr<number>(n, 'dim');
  return [sub(g, mul(exp(y), sum(g, dim, true)))];
});

// ---- shape ----
def('reshape', (g, n) => [reshape(g, attr<number[]>(n, 'from'))]);
def('permute', (g, n) => {
  const dims = attr<number[]>(n, 'dims');
  const inv = new Array<number>(dims.length);
  dims.forEach((d, i) => (inv[d] = i));
  return [permute(g, inv)];
});
def('expand', (g, n) => [sumTo(g, attr<number[]>(n, 'from'))]);
def('flip', (g, n) => [flip(g, attr<number[]>(n, 'dims'))]);
def('slice', (g, n) => [sliceScatter(g, attr<number[]>(n, 'inShape'), attr<number>(n, 'dim'), attr<number>(n, 'start'), attr<number>(n, 'step'))]);
def('sliceScatter', (g, n) => {
  const dim = attr<number>(n, 'dim');
  const start = attr<number>(n, 'start');
  const step = attr<number>(n, 'step');
  const len = n.inputs[0].shape[dim];
  return [slice(g, dim, start, start + (len - 1) * step + 1, step)];
});
def('concat', (g, n) => {
  const dim = attr<number>(n, 'dim');
  let at = 0;
  return attr<number[]>(n, 'sizes').map((s) => {
    const part = narrow(g, dim, at, s);
    at += s;
    return part;
  });
});
def('pad', (g, n) => {
  const before = attr<number[]>(n, 'before');
  const inShape = attr<number[]>(n, 'inShape');
  let r = g;
  before.forEach((b, ax) => {
    if (r.shape[ax] !== inShape[ax]) r = narrow(r, ax, b, inShape[ax]);
  });
  return [r];
});

// ---- linear algebra ----
def('mm', (g, { inputs: [a, b], attrs }, _out, into) => {
  const tA = attrs.transA as boolean;
  const tB = attrs.transB as boolean;
  // Plain matrices of one dtype: each gradient has its input's shape and dtype (no batch dims to
  // sum, no cast), so it can be written straight into a destination that backward offers.
  const plain = a.ndim === 2 && b.ndim === 2 && a.dtype === b.dtype && g.dtype === a.dtype;
  const [oa, ob] = plain && into ? [into[0] ?? undefined, into[1] ?? undefined] : [undefined, undefined];
  // C = op(A) op(B): each gradient is one more product with other transpose flags.
  const ga = !a.requiresGrad ? null : !tA ? mm(g, b, false, !tB, oa) : mm(b, g, tB, true, oa);
  const gb = !b.requiresGrad ? null : !tB ? mm(a, g, !tA, false, ob) : mm(g, a, true, tA, ob);
  return [ga && sumTo(ga, a.shape), gb && sumTo(gb, b.shape)];
});

// ---- nn ----
def('crossEntropy', (g, { inputs: [logits], saved: [labels], attrs }) => [
  crossEntropyGrad(logits, labels, g, attrs.labelSmoothing as number, attrs.ignoreIndex as number),
]);
// PyTorch's rule, not the derivative of the forward's log clamped at -100: (x - t) / max(x(1-x), 1e-12)
// keeps the gradient finite at x = 0 and 1; the target's is log(1-x) - log(x).
def('binaryCrossEntropy', (g, { inputs: [x, t] }) => [
  x.requiresGrad ? mul(g, div(sub(x, t), unaryOp('clamp', mul(sub(1, x), x), 1e-12, Infinity))) : null,
  t.requiresGrad ? mul(g, sub(unaryOp('log', sub(1, x)), unaryOp('log', x))) : null,
]);
def('gather', (g, { saved: [index], attrs }) => [scatterAdd(g, attrs.dim as number, index, attrs.inShape as number[], true)]);
def('indexSelect', (g, { saved: [index], attrs }) => [scatterAdd(g, attrs.dim as number, index, attrs.inShape as number[], false)]);
def('scatterAdd', (g, { saved: [index], attrs }) => [attrs.perPosition ? gather(g, attrs.dim as number, index) : indexSelect(g, attrs.dim as number, index)]);
