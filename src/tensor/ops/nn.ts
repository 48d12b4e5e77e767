/** Neural-network front-ends: cross-entropy, convolution, pooling, indexing, dropout, layer norm. */
import type { AvgPool2dLayout, Conv2dLayout, GatherLayout, Window2d } from '../../kernels/backend.js';
import { generator } from '../random.js';
import { promoteTypes } from '../dtype.js';
import { captureHooks } from '../../compile/hooks.js';
import { isGradEnabled, record } from '../graph.js';
import { fmt, normAxis, numel } from '../shape.js';
import type { DType } from '../dtype.js';
import { Tensor } from '../tensor.js';
import { add, div, mul, neg, requireFloat, rsqrt, sameBackend, sub, cast, where } from './elementwise.js';
import { logSoftmax, mean, sum } from './reduce.js';
import { pad, permute, reshape, unsqueeze } from './shape.js';
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

// ---- windows: convolution and pooling ----

export type Pair = number | [number, number];
/** A number or pair as [h, w], checked to be integers >= min. */
export const pair = (v: Pair, what: string, op: string, min: number): [number, number] => {
  const p: [number, number] = typeof v === 'number' ? [v, v] : [v[0], v[1]];
  if (!p.every((x) => Number.isInteger(x) && x >= min)) throw new RangeError(`${op}: ${what} must be integers >= ${min}, got ${JSON.stringify(v)}`);
  return p;
};

function windowOf(op: string, x: Tensor, k: [number, number], stride: [number, number], padding: [number, number], dilation: [number, number], ceilMode = false): Window2d {
  if (x.ndim !== 4) throw new RangeError(`${op}: input must be NCHW (rank 4), got ${fmt(x.shape)}`);
  const [n, c, h, w] = x.shape;
  const span = (size: number, kk: number, s: number, p: number, d: number) => {
    const eff = d * (kk - 1) + 1;
    const raw = (size + 2 * p - eff) / s;
    let o = (ceilMode ? Math.ceil(raw) : Math.floor(raw)) + 1;
    // PyTorch: with ceil mode the last window must start inside the input or left padding.
    if (ceilMode && (o - 1) * s >= size + p) o--;
    return o;
  };
  const oh = span(h, k[0], stride[0], padding[0], dilation[0]);
  const ow = span(w, k[1], stride[1], padding[1], dilation[1]);
  if (oh <= 0 || ow <= 0) {
    throw new RangeError(`${op}: input ${fmt(x.shape)} is too small for kernel ${k.join('x')} with padding ${padding.join(',')} and dilation ${dilation.join(',')}`);
  }
  return { n, c, h, w, kh: k[0], kw: k[1], oh, ow, sh: stride[0], sw: stride[1], ph: padding[0], pw: padding[1], dh: dilation[0], dw: dilation[1] };
}

/** Unfolds NCHW windows into columns [n, c*kh*kw, oh*ow]; its adjoint is col2im. */
export function im2col(x: Tensor, g: Window2d): Tensor {
  const out = Tensor.empty([g.n, g.c * g.kh * g.kw, g.oh * g.ow], x.dtype, x.backend);
  if (out.size > 0) x.backend.im2col(x.storage, out.storage, g);
  return record('im2col', out, [x], { g });
}

export function col2im(cols: Tensor, g: Window2d): Tensor {
  const out = Tensor.empty([g.n, g.c, g.h, g.w], cols.dtype, cols.backend);
  if (out.size > 0) cols.backend.col2im(cols.storage, out.storage, g);
  return record('col2im', out, [cols], { g });
}

export interface Conv2dOptions {
  stride?: Pair;
  /** Zero padding per side, or 'same' (output size = input size; stride 1 only) or 'valid' (none), as PyTorch. */
  padding?: Pair | 'same' | 'valid';
  dilation?: Pair;
  groups?: number;
}

/**
 * Resolves PyTorch's string paddings: 'valid' is none; 'same' pads dilation*(k-1) in total per
 * spatial dim, half before, and when that total is odd the extra unit goes after (bottom/right),
 * by padding the input itself, as PyTorch does.
 */
function paddingMode(op: string, mode: string, x: Tensor, kernel: [number, number], stride: [number, number], dilation: [number, number]): { x: Tensor; padding: [number, number] } {
  if (mode === 'valid') return { x, padding: [0, 0] };
  if (mode !== 'same') throw new RangeError(`${op}: padding must be a number, a pair, 'same' or 'valid', got ${JSON.stringify(mode)}`);
  if (stride[0] !== 1 || stride[1] !== 1) throw new RangeError(`${op}: padding='same' needs stride 1 (as PyTorch), got stride ${stride.join(',')}`);
  const total = [dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)];
  const before: [number, number] = [Math.floor(total[0] / 2), Math.floor(total[1] / 2)];
  const extraH = total[0] - 2 * before[0];
  const extraW = total[1] - 2 * before[1];
  return { x: extraH || extraW ? pad(x, [0, extraW, 0, extraH]) : x, padding: before };
}

/** 2-D convolution (cross-correlation, as PyTorch) of x [N, C, H, W] with weight [O, C/groups, kh, kw]. */
export function conv2d(x: Tensor, weight: Tensor, bias?: Tensor | null, opts: Conv2dOptions = {}): Tensor {
  requireFloat('conv2d', x);
  requireFloat('conv2d', weight, 'weight');
  const groups = opts.groups ?? 1;
  if (weight.ndim !== 4) throw new RangeError(`conv2d: weight must be [out, in/groups, kh, kw], got ${fmt(weight.shape)}`);
  if (x.ndim !== 4) throw new RangeError(`conv2d: input must be NCHW (rank 4), got ${fmt(x.shape)}`);
  const [o, cg, kh, kw] = weight.shape;
  if (!Number.isInteger(groups) || groups < 1 || x.shape[1] % groups !== 0 || o % groups !== 0) {
    throw new RangeError(`conv2d: groups ${groups} must divide the input channels ${x.shape[1]} and the output channels ${o}`);
  }
  if (x.shape[1] / groups !== cg) {
    throw new RangeError(`conv2d: input ${fmt(x.shape)} has ${x.shape[1]} channels but weight ${fmt(weight.shape)} expects ${cg * groups} (groups ${groups})`);
  }
  if (bias && (bias.ndim !== 1 || bias.shape[0] !== o)) throw new RangeError(`conv2d: bias ${fmt(bias.shape)} does not match ${o} output channels`);
  const stride = pair(opts.stride ?? 1, 'stride', 'conv2d', 1);
  const dilation = pair(opts.dilation ?? 1, 'dilation', 'conv2d', 1);
  let padding: [number, number];
  if (typeof opts.padding === 'string') ({ x, padding } = paddingMode('conv2d', opts.padding, x, [kh, kw], stride, dilation));
  else padding = pair(opts.padding ?? 0, 'padding', 'conv2d', 0);
  sameBackend('conv2d', x, weight);
  // Mixed float dtypes promote, as in matmul (and PyTorch's type promotion).
  if (x.dtype !== weight.dtype) {
    const d = promoteTypes(x.dtype, weight.dtype);
    x = cast(x, d);
    weight = cast(weight, d);
  }
  const l: Conv2dLayout = { ...windowOf('conv2d', x, [kh, kw], stride, padding, dilation), outChannels: o, groups };
  const y = conv2dWithLayout(x, weight, l);
  return bias ? add(y, reshape(bias, [1, o, 1, 1])) : y;
}

/** Runs one of the three convolution kernels into a new tensor and records it (they are each other's vjps). */
function convKernel(op: 'conv2d' | 'conv2dBackwardInput' | 'conv2dBackwardWeight', shape: number[], a: Tensor, b: Tensor, l: Conv2dLayout): Tensor {
  const out = Tensor.empty(shape, a.dtype, a.backend);
  if (out.size > 0) {
    const be = a.backend;
    if (op === 'conv2d') be.conv2d(a.storage, b.storage, out.storage, l);
    else if (op === 'conv2dBackwardInput') be.conv2dBackwardInput(a.storage, b.storage, out.storage, l);
    else be.conv2dBackwardWeight(a.storage, b.storage, out.storage, l);
  }
  return record(op, out, [a, b], { l });
}

/** conv2d over a layout already checked (no bias): the adjoint of both of its gradients. */
export function conv2dWithLayout(x: Tensor, weight: Tensor, l: Conv2dLayout): Tensor {
  return convKernel('conv2d', [l.n, l.outChannels, l.oh, l.ow], x, weight, l);
}

/** The gradient of conv2d with respect to its input x [n, c, h, w], from grad [n, O, oh, ow] and weight. */
export function conv2dBackwardInput(grad: Tensor, weight: Tensor, l: Conv2dLayout): Tensor {
  return convKernel('conv2dBackwardInput', [l.n, l.c, l.h, l.w], grad, weight, l);
}

/** The gradient of conv2d with respect to its weight [O, c/groups, kh, kw], from x and grad. */
export function conv2dBackwardWeight(x: Tensor, grad: Tensor, l: Conv2dLayout): Tensor {
  return convKernel('conv2dBackwardWeight', [l.outChannels, l.c / l.groups, l.kh, l.kw], x, grad, l);
}

export interface Pool2dOptions {
  stride?: Pair | null;
  padding?: Pair;
  dilation?: Pair;
  ceilMode?: boolean;
}

export function maxPool2d(x: Tensor, kernelSize: Pair, opts: Pool2dOptions = {}): Tensor {
  requireFloat('maxPool2d', x);
  const k = pair(kernelSize, 'kernelSize', 'maxPool2d', 1);
  const padding = pair(opts.padding ?? 0, 'padding', 'maxPool2d', 0);
  if (padding[0] * 2 > k[0] || padding[1] * 2 > k[1]) throw new RangeError(`maxPool2d: padding ${padding.join(',')} must be at most half the kernel ${k.join('x')}`);
  const g = windowOf('maxPool2d', x, k, pair(opts.stride ?? k, 'stride', 'maxPool2d', 1), padding, pair(opts.dilation ?? 1, 'dilation', 'maxPool2d', 1), opts.ceilMode);
  const out = Tensor.empty([g.n, g.c, g.oh, g.ow], x.dtype, x.backend);
  const arg = Tensor.empty([g.n, g.c, g.oh, g.ow], 'int32', x.backend);
  if (out.size > 0) x.backend.maxPool2d(x.storage, out.storage, arg.storage, g);
  return record('maxPool2d', out, [x], { g }, [arg]);
}

/** Routes each window's gradient to its argmax; recorded so that double backward works. */
export function maxPool2dBackward(grad: Tensor, arg: Tensor, g: Window2d): Tensor {
  const out = Tensor.empty([g.n, g.c, g.h, g.w], grad.dtype, grad.backend);
  if (out.size > 0) grad.backend.maxPool2dBackward(grad.storage, arg.storage, out.storage, g);
  return record('maxPool2dBackward', out, [grad], { g }, [arg]);
}

export interface AvgPool2dOptions extends Omit<Pool2dOptions, 'dilation'> {
  /** Padding cells count in each window's divisor (default true, as PyTorch's count_include_pad). */
  countIncludePad?: boolean;
  /** Divide every window's sum by this nonzero integer instead (PyTorch's divisor_override). */
  divisorOverride?: number | null;
}

/**
 * torch.nn.functional.avg_pool2d. A window that ceil mode lets overhang the padded input is cut
 * there; its divisor then counts the cut window's cells, padding included (countIncludePad) or
 * only those inside the input, unless divisorOverride replaces it.
 */
export function avgPool2d(x: Tensor, kernelSize: Pair, opts: AvgPool2dOptions = {}): Tensor {
  requireFloat('avgPool2d', x);
  const k = pair(kernelSize, 'kernelSize', 'avgPool2d', 1);
  const padding = pair(opts.padding ?? 0, 'padding', 'avgPool2d', 0);
  if (padding[0] * 2 > k[0] || padding[1] * 2 > k[1]) throw new RangeError(`avgPool2d: padding ${padding.join(',')} must be at most half the kernel ${k.join('x')}`);
  const divisorOverride = opts.divisorOverride ?? 0;
  if (!Number.isInteger(divisorOverride) || (opts.divisorOverride != null && divisorOverride === 0)) {
    throw new RangeError(`avgPool2d: divisorOverride must be a nonzero integer, got ${opts.divisorOverride}`);
  }
  const g = windowOf('avgPool2d', x, k, pair(opts.stride ?? k, 'stride', 'avgPool2d', 1), padding, [1, 1], opts.ceilMode);
  return avgPool2dWindow(x, { ...g, countIncludePad: opts.countIncludePad ?? true, divisorOverride });
}

/** Average pooling over a window geometry already checked (also the adjoint of avgPool2dBackward). */
export function avgPool2dWindow(x: Tensor, g: AvgPool2dLayout): Tensor {
  const out = Tensor.empty([g.n, g.c, g.oh, g.ow], x.dtype, x.backend);
  if (out.size > 0) x.backend.avgPool2d(x.storage, out.storage, g);
  return record('avgPool2d', out, [x], { g });
}

export function avgPool2dBackward(grad: Tensor, g: AvgPool2dLayout): Tensor {
  const out = Tensor.empty([g.n, g.c, g.h, g.w], grad.dtype, grad.backend);
  if (out.size > 0) grad.backend.avgPool2dBackward(grad.storage, out.storage, g);
  return record('avgPool2dBackward', out, [grad], { g });
}

/** Mean over H and W to an output of 1x1 (or a size that divides the input evenly). */
export function adaptiveAvgPool2d(x: Tensor, outputSize: Pair): Tensor {
  const [oh, ow] = pair(outputSize, 'outputSize', 'adaptiveAvgPool2d', 1);
  if (x.ndim !== 4) throw new RangeError(`adaptiveAvgPool2d: input must be NCHW (rank 4), got ${fmt(x.shape)}`);
  const [, , h, w] = x.shape;
  if (oh === 1 && ow === 1) return mean(x, [2, 3], true);
  if (h % oh !== 0 || w % ow !== 0) throw new RangeError(`adaptiveAvgPool2d: output ${oh}x${ow} must divide the input ${h}x${w}`);
  return avgPool2d(x, [h / oh, w / ow]);
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

/** Layer normalization over the trailing `normalizedShape` dims (biased variance, as PyTorch). */
export function layerNorm(x: Tensor, normalizedShape: number[], weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5): Tensor {
  requireFloat('layerNorm', x);
  const k = normalizedShape.length;
  if (k === 0 || k > x.ndim || normalizedShape.some((d, i) => d !== x.shape[x.ndim - k + i])) {
    throw new RangeError(`layerNorm: normalizedShape ${fmt(normalizedShape)} must match the trailing dims of ${fmt(x.shape)}`);
  }
  const axes = Array.from({ length: k }, (_, i) => x.ndim - k + i);
  const mu = mean(x, axes, true);
  const dev = sub(x, mu);
  const v = mean(dev.square(), axes, true);
  let y = mul(dev, rsqrt(add(v, eps)));
  if (weight) y = mul(y, weight);
  if (bias) y = add(y, bias);
  return y;
}

export { linear };
