/** Reductions over any axes, prefix sums, softmax and friends. */
import type { ArgReduceOp, ReduceLayout, ReduceOp } from '../../kernels/backend.js';
import { isGradEnabled, noGrad, record } from '../graph.js';
import { fmt, normAxes, normAxis, numel, shapesEqual, type Shape } from '../shape.js';
import { Tensor } from '../tensor.js';
import { abs, add, cast, eq, exp, gt, log, mul, ne, requireFloat, sqrt, square, sub, where } from './elementwise.js';
import { expand, permute, reshape } from './shape.js';

interface Plan {
  layout: ReduceLayout;
  /** Output shape with keepdim, and without. */
  keptShape: number[];
  outShape: number[];
}

/** The [outer, size, inner] layout of a reduction over one block of adjacent axes (see chainedReduce for the rest). */
function plan(op: string, x: Tensor, dims: number | readonly number[] | null | undefined, keepdim: boolean): Plan {
  const axes = normAxes(op, dims, x.ndim);
  const keptShape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const outShape = keepdim ? keptShape : x.shape.filter((_, i) => !axes.includes(i));
  if (axes.length === 0) return { layout: { outer: x.size, size: 1, inner: 1 }, keptShape, outShape };
  const a0 = axes[0];
  const a1 = axes[axes.length - 1];
  if (a1 - a0 !== axes.length - 1) throw new Error(`${op}: internal error, plan() got the non-adjacent axes ${JSON.stringify(axes)} of ${fmt(x.shape)}`);
  return {
    layout: { outer: numel(x.shape.slice(0, a0)), size: numel(x.shape.slice(a0, a1 + 1)), inner: numel(x.shape.slice(a1 + 1)) },
    keptShape,
    outShape,
  };
}

/** The number of elements each output of a reduction over `axes` combines (1 for a 0-d tensor). */
function reducedCount(x: Tensor, axes: readonly number[]): number {
  return x.ndim === 0 ? 1 : numel(axes.map((a) => x.shape[a]));
}

/**
 * max, min, argmax and argmin have no identity element: as in PyTorch, reducing over a dim of
 * size 0 is an error, while reducing another dim of an empty tensor gives an empty result.
 */
function checkHasElements(op: string, x: Tensor, dims: number | readonly number[] | null | undefined): void {
  if (x.size !== 0) return;
  if (dims === undefined || dims === null) {
    throw new RangeError(`${op}: cannot reduce the empty tensor ${fmt(x.shape)} over all dims (${op} of no elements is undefined); pass a dim of nonzero size`);
  }
  for (const a of normAxes(op, dims, x.ndim)) {
    if (x.shape[a] === 0) throw new RangeError(`${op}: cannot reduce over dim ${a} of size 0 in ${fmt(x.shape)} (${op} of no elements is undefined)`);
  }
}

/** The reduced axes (ascending) split into maximal runs of adjacent axes: [0,2,3] -> [[0],[2,3]]. */
function adjacentRuns(axes: readonly number[]): number[][] {
  const runs: number[][] = [];
  for (const a of axes) {
    const last = runs[runs.length - 1];
    if (last && last[last.length - 1] === a - 1) last.push(a);
    else runs.push([a]);
  }
  return runs;
}

/**
 * Reduces over scattered axes (e.g. BatchNorm's [0,2,3]) as a chain of contiguous-block
 * reductions, last run first, each into a keepdim intermediate: no permuted copy of x is made,
 * and every step is the backend's ordinary [outer, size, inner] kernel. max/min pick the same
 * element as one pass in row-major order would; a sum rounds each partial sum to x's dtype once.
 */
function chainedReduce(op: ReduceOp, x: Tensor, runs: readonly number[][], out: Tensor): void {
  let cur = x;
  let shape = x.shape.slice();
  for (let r = runs.length - 1; r >= 0; r--) {
    const a0 = runs[r][0];
    const a1 = runs[r][runs[r].length - 1];
    const layout = { outer: numel(shape.slice(0, a0)), size: numel(shape.slice(a0, a1 + 1)), inner: numel(shape.slice(a1 + 1)) };
    shape = shape.map((d, i) => (i >= a0 && i <= a1 ? 1 : d));
    const next = r === 0 ? out : Tensor.empty(shape, x.dtype, x.backend);
    if (next.size > 0) x.backend.reduce(op, cur.storage, next.storage, layout);
    if (cur !== x) cur.dispose();
    cur = next;
  }
}

function runReduce(op: ReduceOp, x: Tensor, dims: number | readonly number[] | null | undefined, keepdim: boolean): Tensor {
  if (x.dtype === 'bool') x = cast(x, 'int32');
  if (op === 'max' || op === 'min') checkHasElements(op, x, dims);
  const axes = normAxes(op, dims, x.ndim);
  const runs = adjacentRuns(axes);
  if (runs.length > 1) {
    const keptShape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
    const out = Tensor.empty(keepdim ? keptShape : x.shape.filter((_, i) => !axes.includes(i)), x.dtype, x.backend);
    chainedReduce(op, x, runs, out);
    return record(op, out, [x], { keptShape });
  }
  const p = plan(op, x, axes, keepdim);
  const out = Tensor.empty(p.outShape, x.dtype, x.backend);
  if (out.size > 0) x.backend.reduce(op, x.storage, out.storage, p.layout);
  return record(op, out, [x], { keptShape: p.keptShape });
}

export function sum(x: Tensor, dims?: number | readonly number[] | null, keepdim = false): Tensor {
  return runReduce('sum', x, dims, keepdim);
}

export function mean(x: Tensor, dims?: number | readonly number[] | null, keepdim = false): Tensor {
  requireFloat('mean', x);
  const count = reducedCount(x, normAxes('mean', dims, x.ndim));
  return mul(sum(x, dims, keepdim), 1 / count);
}

export function max(x: Tensor, dims?: number | readonly number[] | null, keepdim = false): Tensor {
  return runReduce('max', x, dims, keepdim);
}

export function min(x: Tensor, dims?: number | readonly number[] | null, keepdim = false): Tensor {
  return runReduce('min', x, dims, keepdim);
}

function argReduce(op: ArgReduceOp, x: Tensor, dim: number | null | undefined, keepdim: boolean): Tensor {
  checkHasElements(op, x, dim);
  if (dim === undefined || dim === null) {
    const out = Tensor.empty(keepdim ? x.shape.map(() => 1) : [], 'int32', x.backend);
    x.backend.argReduce(op, x.storage, out.storage, { outer: 1, size: x.size, inner: 1 });
    return out;
  }
  const ax = normAxis(op, dim, x.ndim);
  const p = plan(op, x, ax, keepdim);
  const out = Tensor.empty(p.outShape, 'int32', x.backend);
  if (out.size > 0) x.backend.argReduce(op, x.storage, out.storage, p.layout);
  return out;
}

/**
 * Product over `dims` (all when omitted). torch.prod takes one dim; a list is accepted as sum
 * does. Its gradient is exact where x holds zeros (see the 'prod' rule in autograd/vjps.ts).
 */
export function prod(x: Tensor, dims?: number | readonly number[] | null, keepdim = false): Tensor {
  return runReduce('prod', x, dims, keepdim);
}

/** Whether any element along `dims` is nonzero (NaN counts as nonzero); false over an empty dim. */
export function any(x: Tensor, dims?: number | readonly number[] | null, keepdim = false): Tensor {
  return noGrad(() => gt(sum(ne(x, 0), dims, keepdim), 0));
}

/** Whether every element along `dims` is nonzero (NaN counts as nonzero); true over an empty dim. */
export function all(x: Tensor, dims?: number | readonly number[] | null, keepdim = false): Tensor {
  return noGrad(() => eq(sum(eq(x, 0), dims, keepdim), 0));
}

/** The [outer, size, inner] view of x around one dim; a 0-d tensor is one element. */
export function dimLayout(op: string, x: Tensor, dim: number): { ax: number; layout: ReduceLayout } {
  const ax = normAxis(op, dim, x.ndim);
  if (x.ndim === 0) return { ax, layout: { outer: 1, size: 1, inner: 1 } };
  return { ax, layout: { outer: numel(x.shape.slice(0, ax)), size: x.shape[ax], inner: numel(x.shape.slice(ax + 1)) } };
}

/** Inclusive prefix sums along `dim` (torch.cumsum); bool sums as int32. */
export function cumsum(x: Tensor, dim: number): Tensor {
  if (x.dtype === 'bool') x = cast(x, 'int32');
  const { ax, layout } = dimLayout('cumsum', x, dim);
  const out = Tensor.empty(x.shape.slice(), x.dtype, x.backend);
  if (out.size > 0) x.backend.cumsum(x.storage, out.storage, layout);
  return record('cumsum', out, [x], { dim: ax });
}

export function argmax(x: Tensor, dim?: number | null, keepdim = false): Tensor {
  return argReduce('argmax', x, dim, keepdim);
}

export function argmin(x: Tensor, dim?: number | null, keepdim = false): Tensor {
  return argReduce('argmin', x, dim, keepdim);
}

/** Variance with Bessel's correction by default (torch.var). */
export function variance(x: Tensor, dims?: number | readonly number[] | null, opts: { correction?: number; keepdim?: boolean } = {}): Tensor {
  return varianceFor('var', x, dims, opts);
}

/** `variance`, with errors naming `op` (var or std, whichever the caller called). */
function varianceFor(op: 'var' | 'std', x: Tensor, dims: number | readonly number[] | null | undefined, opts: { correction?: number; keepdim?: boolean }): Tensor {
  requireFloat(op, x);
  const correction = opts.correction ?? 1;
  const axes = normAxes(op, dims, x.ndim);
  const n = reducedCount(x, axes);
  const dev = sub(x, mean(x, axes, true));
  return mul(sum(square(dev), axes, opts.keepdim ?? false), 1 / Math.max(n - correction, 0));
}

/**
 * Standard deviation: the square root of `variance` (torch.std, Bessel's correction by default).
 * Where the result is 0 the gradient is 0, as PyTorch's std_backward masks it (d sqrt(v)/dv is
 * infinite there and times dev = 0 would be NaN): sqrt reads a variance of 1 in those places
 * (the double-where trick), so no NaN reaches the backward pass.
 */
export function std(x: Tensor, dims?: number | readonly number[] | null, opts: { correction?: number; keepdim?: boolean } = {}): Tensor {
  const v = varianceFor('std', x, dims, opts);
  const zero = eq(v, 0);
  return where(zero, 0, sqrt(where(zero, 1, v)));
}

export function logsumexp(x: Tensor, dims: number | readonly number[], keepdim = false): Tensor {
  requireFloat('logsumexp', x);
  const axes = normAxes('logsumexp', dims, x.ndim);
  // Shift by the (constant) max for stability; a row of -inf stays -inf instead of NaN. An empty
  // row has no max and needs no shift: its sum is 0 and its logsumexp -inf, as PyTorch.
  const m = reducedCount(x, axes) === 0 ? 0 : noGrad(() => {
    const raw = max(x, axes, true);
    return where(abs(raw).lt(Infinity), raw, 0);
  });
  const r = add(log(sum(exp(sub(x, m)), axes, true)), m);
  return keepdim ? r : reshape(r, x.shape.filter((_, i) => !axes.includes(i)));
}

/** Moves `dim` last, applies the row kernel, and moves it back. */
function rowwise(op: 'softmax' | 'logSoftmax', x: Tensor, dim: number): Tensor {
  requireFloat(op, x);
  // A 0-d tensor is one row of one element; the result keeps its shape [] (PyTorch).
  if (x.ndim === 0) {
    normAxis(op, dim, 0);
    return reshape(rowwise(op, reshape(x, [1]), 0), []);
  }
  const ax = normAxis(op, dim, x.ndim);
  const last = x.ndim - 1;
  const order = x.shape.map((_, i) => i);
  [order[ax], order[last]] = [order[last], order[ax]];
  const xm = ax === last ? x : noGrad(() => permute(x, order));
  const cols = xm.shape[last];
  const out = Tensor.empty(xm.shape.slice(), x.dtype, x.backend);
  x.backend.softmax(xm.storage, out.storage, { rows: cols === 0 ? 0 : xm.size / cols, cols, log: op === 'logSoftmax' });
  const back = ax === last ? out : noGrad(() => permute(out, order));
  if (xm !== x) xm.dispose();
  if (back !== out) out.dispose();
  return record(op, back, [x], { dim: ax });
}

export function softmax(x: Tensor, dim: number): Tensor {
  return rowwise('softmax', x, dim);
}

export function logSoftmax(x: Tensor, dim: number): Tensor {
  return rowwise('logSoftmax', x, dim);
}

/** The L2 norm of all elements. */
export function norm(x: Tensor): Tensor {
  requireFloat('norm', x);
  return sqrt(sum(square(x)));
}

/**
 * Sums a broadcast gradient back to `shape` (the vjp of broadcasting). `into` (a tensor of `shape`
 * and g's dtype, outside grad mode): a sum over one run of adjacent axes is written there and
 * `into` returned, the same kernel call as sum()'s; backward uses it to write a bias gradient
 * straight into the optimizer's flat gradient arena.
 */
export function sumTo(g: Tensor, shape: Shape, into?: Tensor): Tensor {
  if (shapesEqual(g.shape, shape)) return g;
  const off = g.ndim - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.ndim; i++) if (i < off || (shape[i - off] === 1 && g.shape[i] !== 1)) axes.push(i);
  if (into && axes.length && g.size > 0 && !isGradEnabled() && into.dtype === g.dtype && into.backend === g.backend && shapesEqual(into.shape, shape) && adjacentRuns(axes).length === 1) {
    g.backend.reduce('sum', g.storage, into.overwriteStorage(), plan('sum', g, axes, true).layout);
    return into;
  }
  const s = axes.length ? sum(g, axes, true) : g;
  return reshape(s, shape.slice());
}

/** Broadcasts a reduced gradient (keepdim shape) back over the input shape. */
export function expandFrom(g: Tensor, keptShape: number[], shape: number[]): Tensor {
  return expand(reshape(g, keptShape), shape);
}
