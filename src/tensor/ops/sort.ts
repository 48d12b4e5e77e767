/**
 * Sorting and selection: sort, argsort, topk, and max/min along a dim with their indices. One
 * kernel (backend.argsort: stable, NaN largest) gives the permutation; the values are a gather
 * through it, so every gradient here is gather's (the value goes back to the index it came from).
 */
import { noGrad } from '../graph.js';
import { fmt, normAxis } from '../shape.js';
import { Tensor } from '../tensor.js';
import { gather } from './nn.js';
import { argmax, argmin, dimLayout } from './reduce.js';
import { narrow, reshape, squeeze } from './shape.js';

export interface ValuesIndices {
  values: Tensor;
  /** int32 positions along the dim. */
  indices: Tensor;
}

/**
 * The positions that sort x along `dim` (torch.argsort). The sort is always stable: equal values
 * keep their order, lowest index first, which is also a valid answer for torch's unstable sort.
 * NaN sorts as larger than every number.
 */
export function argsort(x: Tensor, dim = -1, descending = false): Tensor {
  const { layout } = dimLayout('argsort', x, dim);
  const out = Tensor.empty(x.shape.slice(), 'int32', x.backend);
  if (out.size > 0) x.backend.argsort(x.storage, out.storage, { ...layout, descending });
  return out;
}

/** Values and indices along `dim` in order (torch.sort). Always stable; see argsort. */
export function sort(x: Tensor, dim = -1, descending = false): ValuesIndices {
  const indices = argsort(x, dim, descending);
  return { values: gatherAlong(x, dim, indices), indices };
}

/** gather along dim, where a 0-d tensor is seen as one element. */
function gatherAlong(x: Tensor, dim: number, indices: Tensor): Tensor {
  if (x.ndim > 0) return gather(x, dim, indices);
  return reshape(gather(reshape(x, [1]), 0, reshape(indices, [1])), []);
}

/**
 * The k largest (or smallest) elements along `dim` and their positions (torch.topk), in sorted
 * order whatever `sorted` says (sorted is one valid order of an unsorted result). Ties go to the
 * lowest index; NaN counts as the largest value.
 */
export function topk(x: Tensor, k: number, dim = -1, largest = true, _sorted = true): ValuesIndices {
  const { ax, layout } = dimLayout('topk', x, dim);
  if (!Number.isInteger(k) || k < 0 || k > layout.size) {
    throw new RangeError(`topk: k ${k} is out of range [0, ${layout.size}] for dim ${dim} of ${fmt(x.shape)}`);
  }
  if (x.ndim === 0) {
    // As torch: a 0-d input gives 0-d results for k = 1, and empty [0] ones for k = 0.
    const r = topk(reshape(x, [1]), k, 0, largest);
    return k === 1 ? { values: reshape(r.values, []), indices: reshape(r.indices, []) } : r;
  }
  const order = argsort(x, ax, largest);
  const indices = noGrad(() => narrow(order, ax, 0, k));
  if (indices !== order) order.dispose();
  return { values: gather(x, ax, indices), indices };
}

function extremeWithIndices(op: 'maxWithIndices' | 'minWithIndices', x: Tensor, dim: number, keepdim: boolean): ValuesIndices {
  const ax = normAxis(op, dim, x.ndim);
  if (x.ndim > 0 && x.shape[ax] === 0) throw new RangeError(`${op}: dim ${dim} of ${fmt(x.shape)} is empty`);
  if (x.ndim === 0) {
    const r = extremeWithIndices(op, reshape(x, [1]), 0, false);
    return { values: r.values, indices: r.indices };
  }
  const arg = op === 'maxWithIndices' ? argmax : argmin;
  const kept = arg(x, ax, true);
  const values = gather(x, ax, kept);
  return keepdim ? { values, indices: kept } : { values: squeeze(values, ax), indices: squeeze(kept, ax) };
}

/**
 * torch.max(x, dim, keepdim): the largest value along `dim` and its index (the first one on ties;
 * a NaN wins and is reported). The gradient goes to that index only, as torch's does; the
 * reduction `max(x, dims)` returns values alone and splits the gradient over ties (torch.amax).
 */
export function maxWithIndices(x: Tensor, dim: number, keepdim = false): ValuesIndices {
  return extremeWithIndices('maxWithIndices', x, dim, keepdim);
}

/** torch.min(x, dim, keepdim): see maxWithIndices. */
export function minWithIndices(x: Tensor, dim: number, keepdim = false): ValuesIndices {
  return extremeWithIndices('minWithIndices', x, dim, keepdim);
}
