/**
 * Vector-Jacobian products, one per recorded op, written in tensor ops so that they are
 * differentiable themselves (double backward for Hessian-vector products).
 */
import type { Window2d } from '../kernels/backend.js';
import { vjpRegistry, type Node, type Vjp } from '../tensor/graph.js';
import type { Tensor } from '../tensor/tensor.js';
import { add, cast, cos, div, eq, exp, gt, mul, neg, sigmoid, sin, square, sub, unaryOp, where, pow } from '../tensor/ops/elementwise.js';
import { expandFrom, sum, sumTo } from '../tensor/ops/reduce.js';
import { narrow, permute, reshape, slice, sliceScatter } from '../tensor/ops/shape.js';
import { mm } from '../tensor/ops/linalg.js';
import {
  avgPool2dWindow,
  avgPool2dBackward,
  col2im,
  crossEntropyGrad,
  gather,
  im2col,
  indexSelect,
  maxPool2dBackward,
  scatterAdd,
} from '../tensor/ops/nn.js';
import type { DType } from '../tensor/dtype.js';

const attr = <T>(n: Node, k: string) => n.attrs[k] as T;
const def = (op: string, f: Vjp) => vjpRegistry.set(op, f);
const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

// ---- binary ----
def('add', (g, n) => [sumTo(g, n.inputs[0].shape), sumTo(g, n.inputs[1].shape)]);
def('sub', (g, n) => [sumTo(g, n.inputs[0].shape), sumTo(neg(g), n.inputs[1].shape)]);
def('mul', (g, { inputs: [a, b] }) => [a.requiresGrad ? sumTo(mul(g, b), a.shape) : null, b.requiresGrad ? sumTo(mul(g, a), b.shape) : null]);
def('div', (g, { inputs: [a, b] }) => [
  a.requiresGrad ? sumTo(div(g, b), a.shape) : null,
  b.requiresGrad ? sumTo(neg(div(mul(g, a), square(b))), b.shape) : null,
]);
def('pow', (g, { inputs: [a, b] }, out) => [
  a.requiresGrad ? sumTo(mul(g, mul(b, pow(a, sub(b, 1)))), a.shape) : null,
  b.requiresGrad ? sumTo(mul(g, mul(out, unaryOp('log', a))), b.shape) : null,
]);
/** max/min: the gradient goes to the winner, split evenly on ties (as PyTorch). */
const extremum = (first: (a: Tensor, b: Tensor) => Tensor): Vjp => (g, { inputs: [a, b] }) => {
  const ta = cast(first(a, b), g.dtype);
  const tie = mul(cast(eq(a, b), g.dtype), 0.5);
  const wa = add(ta, tie);
  const wb = sub(1, wa);
  return [sumTo(mul(g, wa), a.shape), sumTo(mul(g, wb), b.shape)];
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
unary('relu', (g, x) => where(gt(x, 0), g, 0));
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
  return mul(g, mul(pow(x, p - 1), p));
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
def('mm', (g, { inputs: [a, b], attrs }) => {
  const tA = attrs.transA as boolean;
  const tB = attrs.transB as boolean;
  // C = op(A) op(B): each gradient is one more product with other transpose flags.
  const ga = !a.requiresGrad ? null : !tA ? mm(g, b, false, !tB) : mm(b, g, tB, true);
  const gb = !b.requiresGrad ? null : !tB ? mm(a, g, !tA, false) : mm(g, a, true, tA);
  return [ga && sumTo(ga, a.shape), gb && sumTo(gb, b.shape)];
});

// ---- nn ----
def('crossEntropy', (g, { inputs: [logits], saved: [labels], attrs }) => [crossEntropyGrad(logits, labels, g, attrs.labelSmoothing as number)]);
def('gather', (g, { saved: [index], attrs }) => [scatterAdd(g, attrs.dim as number, index, attrs.inShape as number[], true)]);
def('indexSelect', (g, { saved: [index], attrs }) => [scatterAdd(g, attrs.dim as number, index, attrs.inShape as number[], false)]);
def('scatterAdd', (g, { saved: [index], attrs }) => [attrs.perPosition ? gather(g, attrs.dim as number, index) : indexSelect(g, attrs.dim as number, index)]);
def('im2col', (g, n) => [col2im(g, attr<Window2d>(n, 'g'))]);
def('col2im', (g, n) => [im2col(g, attr<Window2d>(n, 'g'))]);
def('maxPool2d', (g, n) => [maxPool2dBackward(g, n.saved[0], attr<Window2d>(n, 'g'))]);
def('maxPool2dBackward', (g, n) => {
  // The forward routed each window's gradient to its argmax; the adjoint reads it back from there.
  const w = attr<Window2d>(n, 'g');
  const planes = w.n * w.c;
  const picked = gather(reshape(g, [planes, w.h * w.w]), 1, reshape(n.saved[0], [planes, w.oh * w.ow]));
  return [reshape(picked, [w.n, w.c, w.oh, w.ow])];
});
def('avgPool2d', (g, n) => [avgPool2dBackward(g, attr<Window2d>(n, 'g'))]);
def('avgPool2dBackward', (g, n) => [avgPool2dWindow(g, attr<Window2d>(n, 'g'))]);
