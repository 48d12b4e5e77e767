/** Reductions over any axes, softmax and friends. */
import type { ArgReduceOp, ReduceLayout, ReduceOp } from '../../kernels/backend.js';
import { noGrad, record } from '../graph.js';
import { fmt, normAxes, normAxis, numel, shapesEqual, type Shape } from '../shape.js';
import { Tensor } from '../tensor.js';
import { abs, add, cast, exp, log, mul, requireFloat, sqrt, square, sub, where } from './elementwise.js';
import { expand, permute, reshape } from './shape.js';

interface Plan {
  /** x rearranged (if needed) so that the reduced axes form one block. */
  x: Tensor;
  layout: ReduceLayout;
  /** Output shape with keepdim, and without. */
  keptShape: number[];
  outShape: number[];
}

function plan(op: string, x: Tensor, dims: number | readonly number[] | null | undefined, keepdim: boolean): Plan {
  const axes = normAxes(op, dims, x.ndim);
  const keptShape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const outShape = keepdim ? keptShape : x.shape.filter((_, i) => !axes.includes(i));
  if (axes.length === 0) return { x, layout: { outer: x.size, size: 1, inner: 1 }, keptShape, outShape };
  const contiguousBlock = axes[axes.length - 1] - axes[0] === axes.length - 1;
  if (contiguousBlock) {
    const a0 = axes[0];
    const a1 = axes[axes.length - 1];
    return {
      x,
      layout: { outer: numel(x.shape.slice(0, a0)), size: numel(x.shape.slice(a0, a1 + 1)), inner: numel(x.shape.slice(a1 + 1)) },
      keptShape,
      outShape,
    };
  }
  // Scattered axes: move the reduced ones to the end, then reduce a [rest, reduced] matrix.
  const rest = x.shape.map((_, i) => i).filter((i) => !axes.includes(i));
  const moved = noGrad(() => permute(x, [...rest, ...axes]));
  return { x: moved, layout: { outer: numel(rest.map((i) => x.shape[i])), size: numel(axes.map((i) => x.shape[i])), inner: 1 }, keptShape, outShape };
}

function runReduce(op: ReduceOp, x: Tensor, dims: number | readonly number[] | null | undefined, keepdim: boolean): Tensor {
  if (x.dtype === 'bool') x = cast(x, 'int32');
  if ((op === 'max' || op === 'min') && x.size === 0) throw new RangeError(`${op}: cannot reduce an empty tensor ${fmt(x.shape)}`);
  const p = plan(op, x, dims, keepdim);
  const out = Tensor.empty(p.outShape, x.dtype, x.backend);
  x.backend.reduce(op, p.x.storage, out.storage, p.layout);
  if (p.x !== x) p.x.dispose();
  return record(op, out, [x], { keptShape: p.keptShape });
}

export function sum(x: Tensor, dims?: number | readonly number[] | null, keepdim = false): Tensor {
  return runReduce('sum', x, dims, keepdim);
}

export function mean(x: Tensor, dims?: number | readonly number[] | null, keepdim = false): Tensor {
  requireFloat('mean', x);
  const axes = normAxes('mean', dims, x.ndim);
  const count = numel(axes.map((a) => x.shape[a]));
  return mul(sum(x, dims, keepdim), 1 / count);
}

export function max(x: Tensor, dims?: number | readonly number[] | null, keepdim = false): Tensor {
  return runReduce('max', x, dims, keepdim);
}

export function min(x: Tensor, dims?: number | readonly number[] | null, keepdim = false): Tensor {
  return runReduce('min', x, dims, keepdim);
}

function argReduce(op: ArgReduceOp, x: Tensor, dim: number | null | undefined, keepdim: boolean): Tensor {
  if (x.size === 0) throw new RangeError(`${op}: cannot reduce an empty tensor ${fmt(x.shape)}`);
  if (dim === undefined || dim === null) {
    const flat = reshape(x, [x.size]);
    const out = Tensor.empty(keepdim ? x.shape.map(() => 1) : [], 'int32', x.backend);
    x.backend.argReduce(op, flat.storage, out.storage, { outer: 1, size: x.size, inner: 1 });
    return out;
  }
  const ax = normAxis(op, dim, x.ndim);
  const p = plan(op, x, ax, keepdim);
  const out = Tensor.empty(p.outShape, 'int32', x.backend);
  x.backend.argReduce(op, p.x.storage, out.storage, p.layout);
  return out;
}

export function argmax(x: Tensor, dim?: number | null, keepdim = false): Tensor {
  return argReduce('argmax', x, dim, keepdim);
}

export function argmin(x: Tensor, dim?: number | null, keepdim = false): Tensor {
  return argReduce('argmin', x, dim, keepdim);
}

/** Variance with Bessel's correction by default (torch.var). */
export function variance(x: Tensor, dims?: number | readonly number[] | null, opts: { correction?: number; keepdim?: boolean } = {}): Tensor {
  requireFloat('var', x);
  const correction = opts.correction ?? 1;
  const axes = normAxes('var', dims, x.ndim);
  const n = numel(axes.map((a) => x.shape[a]));
  const dev = sub(x, mean(x, axes, true));
  return mul(sum(square(dev), axes, opts.keepdim ?? false), 1 / Math.max(n - correction, 0));
}

export function logsumexp(x: Tensor, dims: number | readonly number[], keepdim = false): Tensor {
  requireFloat('logsumexp', x);
  const axes = normAxes('logsumexp', dims, x.ndim);
  // Shift by the (constant) max for stability; a row of -inf stays -inf instead of NaN.
  const m = noGrad(() => {
    const raw = max(x, axes, true);
    return where(abs(raw).lt(Infinity), raw, 0);
  });
  const r = add(log(sum(exp(sub(x, m)), axes, true)), m);
  return keepdim ? r : reshape(r, x.shape.filter((_, i) => !axes.includes(i)));
}

/** Moves `dim` last, applies the row kernel, and moves it back. */
function rowwise(op: 'softmax' | 'logSoftmax', x: Tensor, dim: number): Tensor {
  requireFloat(op, x);
  if (x.ndim === 0) x = reshape(x, [1]);
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

/** Sums a broadcast gradient back to `shape` (the vjp of broadcasting). */
export function sumTo(g: Tensor, shape: Shape): Tensor {
  if (shapesEqual(g.shape, shape)) return g;
  const off = g.ndim - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.ndim; i++) if (i < off || (shape[i - off] === 1 && g.shape[i] !== 1)) axes.push(i);
  const s = axes.length ? sum(g, axes, true) : g;
  return reshape(s, shape.slice());
}

/** Broadcasts a reduced gradient (keepdim shape) back over the input shape. */
export function expandFrom(g: Tensor, keptShape: number[], shape: number[]): Tensor {
  return expand(reshape(g, keptShape), shape);
}
