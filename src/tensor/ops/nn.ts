/** Neural-network front-ends: cross-entropy, indexing, dropout (convolution and pooling: window.ts; layer and batch norm: normalization.ts). */
import type { GatherLayout } from '../../kernels/backend.js';
import { generator } from '../random.js';
import { captureHooks } from '../../compile/hooks.js';
import { isGradEnabled, record } from '../graph.js';
import { fmt, normAxis, numel } from '../shape.js';
import type { DType } from '../dtype.js';
import { Tensor } from '../tensor.js';
import { add, div, mul, neg, requireFloat, sameBackend, sub, cast, where } from './elementwise.js';
import { logSoftmax, mean, sum } from './reduce.js';
import { permute, reshape, unsqueeze } from './shape.js';
import { linear } from './linalg.js';

/** The host copy of an int tensor when one is at hand (host backends, or data uploaded from the host). */
function hostInts(t: Tensor): ArrayLike<number> | null {
  if (t.hostData) return t.hostData;
  return t.backend.readSync ? t.backend.readSync(t.storage) : null;
}

/** Throws naming the first index outside [0, limit); `ignore` (a loss's ignoreIndex) is allowed too. */
export function checkIndexRange(op: string, what: string, t: Tensor, limit: number, ignore?: number): void {
  // A captured step (src/compile) reruns this check on each replay's new labels.
  captureHooks.hostCheck?.(t.storage, (x) => checkIndexRange(op, what, x as Tensor, limit, ignore));
  const v = hostInts(t);
  if (!v) return; // on an asynchronous device the kernel writes NaN instead
  for (let i = 0; i < v.length; i++) {
    if (!(v[i] >= 0 && v[i] < limit) && v[i] !== ignore) {
      const also = ignore === undefined ? '' : ` (and is not the ignoreIndex ${ignore})`;
      throw new RangeError(`${op}: ${what} ${v[i]} at position ${i} is out of range [0, ${limit})${also}`);
    }
  }
}

export interface CrossEntropyOptions {
  labelSmoothing?: number;
  reduction?: 'mean' | 'sum' | 'none';
  /** Class weights [C]: a row's loss is scaled by its label's weight (not differentiated, as in PyTorch). */
  weight?: Tensor | null;
  /** Rows labelled with this index give 0 and do not count in the mean (default -100, as PyTorch). */
  ignoreIndex?: number;
}

/**
 * Checks a classification input [N, C, d1, ...] (or [C]) against int32 labels [N, d1, ...] (or [])
 * and returns them as rows: x [M, C] with the class dim last, labels [M], and the per-element shape.
 */
export function classRows(op: string, x: Tensor, labels: Tensor, what: string): { rows: Tensor; labels: Tensor; shape: number[] } {
  requireFloat(op, x, what);
  if (labels.dtype !== 'int32') throw new TypeError(`${op}: labels must be int32 class indices, got ${labels.dtype}`);
  if (x.ndim === 0) throw new RangeError(`${op}: ${what} must be [N, C] (or [C], [N, C, d1, ...]), got ${fmt(x.shape)}`);
  const expected = x.ndim === 1 ? [] : [x.shape[0], ...x.shape.slice(2)];
  if (labels.ndim !== expected.length || labels.shape.some((d, i) => d !== expected[i])) {
    throw new RangeError(`${op}: labels ${fmt(labels.shape)} do not match ${what} ${fmt(x.shape)} (expected ${fmt(expected)})`);
  }
  sameBackend(op, x, labels);
  const cols = x.ndim === 1 ? x.shape[0] : x.shape[1];
  // Classes last: [N, C, d1, ...] -> [N, d1, ..., C] -> [M, C].
  const classLast = x.ndim > 2 ? permute(x, [0, ...x.shape.slice(2).map((_, i) => i + 2), 1]) : x;
  return { rows: reshape(classLast, [labels.size, cols]), labels: reshape(labels, [labels.size]), shape: expected };
}

/** Class weights [C], checked against the class count, in the input's dtype and cut from the graph. */
export function classWeight(op: string, weight: Tensor | null | undefined, classes: number, like: Tensor): Tensor | null {
  if (!weight) return null;
  requireFloat(op, weight, 'weight');
  if (weight.ndim !== 1 || weight.shape[0] !== classes) throw new RangeError(`${op}: weight ${fmt(weight.shape)} must be [${classes}], one per class`);
  sameBackend(op, like, weight);
  return cast(weight.detach(), like.dtype);
}

/**
 * Per-row weighted negative log-likelihood of log-probabilities [M, C] with label smoothing s, as
 * PyTorch's nll_loss and cross_entropy compute it: w[y](1-s)(-logp[y]) + (s/C) sum_k w[k](-logp[k]),
 * 0 for rows labelled ignoreIndex. `weightSum` (the sum of w[y] over the rows not ignored) is
 * the divisor of the mean.
 */
export function weightedNllRows(logp: Tensor, labels: Tensor, weight: Tensor | null, ignoreIndex: number, labelSmoothing: number): { rows: Tensor; weightSum: Tensor } {
  const [m, classes] = logp.shape;
  const keep = labels.ne(ignoreIndex);
  // Ignored rows read class 0 and are masked out by `where` (not by a 0 weight, which a -inf would turn into NaN).
  const safe = where(keep, labels, 0);
  const picked = reshape(gather(logp, 1, unsqueeze(safe, 1)), [m]);
  const labelWeight = weight ? indexSelect(weight, 0, safe) : null;
  let rows = where(keep, neg(labelWeight ? mul(picked, labelWeight) : picked), 0);
  if (labelSmoothing > 0) {
    const all = neg(sum(weight ? mul(logp, reshape(weight, [1, classes])) : logp, 1));
    rows = add(mul(rows, 1 - labelSmoothing), mul(where(keep, all, 0), labelSmoothing / classes));
  }
  const weightSum = sum(labelWeight ? where(keep, labelWeight, 0) : cast(keep, logp.dtype));
  return { rows, weightSum };
}

/**
 * The number of labels not equal to ignoreIndex, as a scalar tensor of `dtype`: the divisor of
 * cross-entropy's mean. Always counted on the device, even when the labels have a host copy: one
 * way for every label origin gives the same bits (a float sum of 0/1 is exact below 2^24), needs
 * no readback, and stays right when a captured step (src/compile) is replayed on new labels, where
 * a count made on the host at trace time would be replayed as a stale constant.
 */
function keptLabelCount(labels: Tensor, ignoreIndex: number, dtype: DType): Tensor {
  return sum(cast(labels.ne(ignoreIndex), dtype));
}

/**
 * Softmax cross-entropy of logits [N, C] (or [C], or [N, C, d1, ...]) against int32 labels [N]
 * (or [], [N, d1, ...]): (1-s)(-log p[y]) + (s/C) sum_k(-log p[k]) per row, 0 for a row labelled
 * ignoreIndex (both terms, as PyTorch 1.13), then the reduction: 'mean' divides by the number of
 * rows not ignored (NaN when all are). Without class weights it is one fused kernel (forward and
 * backward) whatever the labels' origin, so labels uploaded from the host and labels computed on
 * the device give the same bits. With class weights it is logSoftmax and a gather
 * (weightedNllRows), and 'mean' divides by the sum of the weights of the rows not ignored.
 */
export function crossEntropy(logits: Tensor, labels: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  const s = opts.labelSmoothing ?? 0;
  const reduction = opts.reduction ?? 'mean';
  const ignoreIndex = opts.ignoreIndex ?? -100;
  if (!(s >= 0 && s <= 1)) throw new RangeError(`crossEntropy: labelSmoothing must be in [0, 1], got ${s}`);
  if (!['mean', 'sum', 'none'].includes(reduction)) throw new RangeError(`crossEntropy: reduction must be 'mean', 'sum' or 'none', got ${JSON.stringify(reduction)}`);
  if (!Number.isInteger(ignoreIndex)) throw new RangeError(`crossEntropy: ignoreIndex must be an integer, got ${ignoreIndex}`);
  const { rows: x, labels: y, shape } = classRows('crossEntropy', logits, labels, 'logits');
  const [rows, cols] = x.shape;
  const weight = classWeight('crossEntropy', opts.weight, cols, x);
  // The caller's labels (not the reshaped view) carry the host copy.
  checkIndexRange('crossEntropy', 'label', labels, cols, ignoreIndex);
  if (weight) {
    const { rows: perRow, weightSum } = weightedNllRows(logSoftmax(x, 1), y, weight, ignoreIndex, s);
    if (reduction === 'none') return reshape(perRow, shape);
    const total = perRow.sum();
    return reduction === 'sum' ? total : div(total, weightSum);
  }
  const perRow = Tensor.empty([rows], x.dtype, x.backend);
  if (rows > 0) x.backend.crossEntropy(x.storage, y.storage, perRow.storage, { rows, cols, labelSmoothing: s, ignoreIndex });
  record('crossEntropy', perRow, [x], { labelSmoothing: s, ignoreIndex }, [y]);
  if (reduction === 'none') return reshape(perRow, shape);
  const total = perRow.sum();
  return reduction === 'sum' ? total : div(total, keptLabelCount(labels, ignoreIndex, x.dtype));
}

/**
 * The gradient of per-row cross-entropy (rows labelled ignoreIndex get 0): fused kernel, or tensor
 * ops when building a graph for double backward.
 */
export function crossEntropyGrad(logits: Tensor, labels: Tensor, gradRows: Tensor, labelSmoothing: number, ignoreIndex: number): Tensor {
  const [rows, cols] = logits.shape;
  if (isGradEnabled()) {
    const keep = labels.ne(ignoreIndex);
    // Ignored rows take class 0 for the one-hot, then `where` (not a 0 factor, which an inf logit turns into NaN) zeroes them.
    const target = add(mul(cast(oneHot(where(keep, labels, 0), cols), logits.dtype), 1 - labelSmoothing), labelSmoothing / cols);
    return where(unsqueeze(keep, 1), mul(sub(logits.softmax(1), target), unsqueeze(gradRows, 1)), 0);
  }
  const out = Tensor.empty([rows, cols], logits.dtype, logits.backend);
  if (rows > 0) logits.backend.crossEntropyBackward(logits.storage, labels.storage, gradRows.storage, out.storage, { rows, cols, labelSmoothing, ignoreIndex });
  return out;
}

/** One-hot encoding of int32 indices: shape [...labels.shape, numClasses], dtype int32. */
export function oneHot(labels: Tensor, numClasses: number): Tensor {
  if (labels.dtype !== 'int32') throw new TypeError(`oneHot: indices must be int32, got ${labels.dtype}`);
  if (!Number.isInteger(numClasses) || numClasses <= 0) throw new RangeError(`oneHot: numClasses must be a positive integer, got ${numClasses}`);
  checkIndexRange('oneHot', 'index', labels, numClasses);
  const classes = Tensor.fromStorage(labels.backend.upload(Int32Array.from({ length: numClasses }, (_, i) => i), 'int32'), [numClasses], labels.backend);
  return cast(unsqueeze(labels, -1).eq(classes), 'int32');
}

/** Checks an index against x for gather-like ops (dtype, shape, range) and returns the kernel layout. */
export function gatherLayout(op: string, x: Tensor, dim: number, index: Tensor, perPosition: boolean): { ax: number; layout: GatherLayout; outShape: number[] } {
  if (index.dtype !== 'int32') throw new TypeError(`${op}: index must be int32, got ${index.dtype}`);
  const ax = normAxis(op, dim, x.ndim);
  if (perPosition) {
    if (index.ndim !== x.ndim || index.shape.some((d, i) => i !== ax && d !== x.shape[i])) {
      throw new RangeError(`${op}: index ${fmt(index.shape)} must match input ${fmt(x.shape)} in every dim but ${ax}`);
    }
  } else if (index.ndim !== 1) {
    throw new RangeError(`${op}: index must be 1-D, got ${fmt(index.shape)}`);
  }
  checkIndexRange(op, 'index', index, x.shape[ax]);
  const idxDim = perPosition ? index.shape[ax] : index.shape[0];
  const outShape = x.shape.slice();
  outShape[ax] = idxDim;
  return {
    ax,
    outShape,
    layout: { outer: numel(x.shape.slice(0, ax)), inner: numel(x.shape.slice(ax + 1)), xDim: x.shape[ax], idxDim, perPosition },
  };
}

function gatherWith(op: 'gather' | 'indexSelect', x: Tensor, dim: number, index: Tensor): Tensor {
  sameBackend(op, x, index);
  const { ax, layout, outShape } = gatherLayout(op, x, dim, index, op === 'gather');
  const out = Tensor.empty(outShape, x.dtype, x.backend);
  if (out.size > 0) x.backend.gather(x.storage, index.storage, out.storage, layout);
  return record(op, out, [x], { dim: ax, inShape: x.shape.slice() }, [index]);
}

/** torch.gather (index has the input's shape except along dim). */
export function gather(x: Tensor, dim: number, index: Tensor): Tensor {
  return gatherWith('gather', x, dim, index);
}

/** torch.index_select with a 1-D index. */
export function indexSelect(x: Tensor, dim: number, index: Tensor): Tensor {
  return gatherWith('indexSelect', x, dim, index);
}

/**
 * torch.nn.functional.embedding: rows of weight [V, D] picked by int32 indices of any shape, giving
 * [...indices.shape, D]. The row `paddingIdx` (negative counts from the end) is read like any
 * other but gets no gradient.
 */
export function embedding(indices: Tensor, weight: Tensor, paddingIdx: number | null = null): Tensor {
  requireFloat('embedding', weight, 'weight');
  if (weight.ndim !== 2) throw new RangeError(`embedding: weight must be [numEmbeddings, embeddingDim], got ${fmt(weight.shape)}`);
  if (indices.dtype !== 'int32') throw new TypeError(`embedding: indices must be int32, got ${indices.dtype} ${fmt(indices.shape)}`);
  sameBackend('embedding', indices, weight);
  const [rowsIn, dim] = weight.shape;
  let pad: number | null = null;
  if (paddingIdx !== null) {
    if (!Number.isInteger(paddingIdx) || paddingIdx < -rowsIn || paddingIdx >= rowsIn) {
      throw new RangeError(`embedding: paddingIdx ${paddingIdx} must be an integer in [-${rowsIn}, ${rowsIn}) for weight ${fmt(weight.shape)}`);
    }
    pad = paddingIdx < 0 ? paddingIdx + rowsIn : paddingIdx;
  }
  checkIndexRange('embedding', 'index', indices, rowsIn);
  const flat = reshape(indices, [indices.size]);
  let picked = indexSelect(weight, 0, flat);
  // The padding rows keep their value but take it from a detached copy, so no gradient reaches them.
  if (pad !== null && picked.requiresGrad) picked = where(unsqueeze(flat.ne(pad), 1), picked, picked.detach());
  return reshape(picked, [...indices.shape, dim]);
}

/** The adjoint of gather/indexSelect: sums src into a zero tensor of `shape` at the indexed positions. */
export function scatterAdd(src: Tensor, dim: number, index: Tensor, shape: number[], perPosition: boolean): Tensor {
  const ax = normAxis('scatterAdd', dim, shape.length);
  const layout: GatherLayout = {
    outer: numel(shape.slice(0, ax)),
    inner: numel(shape.slice(ax + 1)),
    xDim: shape[ax],
    idxDim: src.shape[ax],
    perPosition,
  };
  const out = Tensor.empty(shape.slice(), src.dtype, src.backend);
  if (out.size > 0) src.backend.scatterAdd(src.storage, index.storage, out.storage, layout);
  return record('scatterAdd', out, [src], { dim: ax, perPosition }, [index]);
}

// ---- regularization and normalization ----

/** Inverted dropout with a keep mask from the seeded generator; identity when not training. */
export function dropout(x: Tensor, p = 0.5, training = true): Tensor {
  if (!(p >= 0 && p <= 1)) throw new RangeError(`dropout: p must be in [0, 1], got ${p}`);
  requireFloat('dropout', x);
  if (!training || p === 0) return x;
  const mask = Tensor.empty(x.shape.slice(), x.dtype, x.backend);
  if (p < 1) {
    const [k0, k1] = generator.nextKey();
    x.backend.random(mask.storage, k0, k1, { kind: 'bernoulliKeep', p });
  }
  return mul(x, p < 1 ? mul(mask, 1 / (1 - p)) : mask);
}

export { linear };
