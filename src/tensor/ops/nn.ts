/** Neural-network front-ends: cross-entropy, convolution, pooling, indexing, dropout, layer norm. */
import type { GatherLayout, Window2d } from '../../kernels/backend.js';
import { generator } from '../random.js';
import { isGradEnabled, record } from '../graph.js';
import { fmt, normAxis, numel } from '../shape.js';
import { Tensor } from '../tensor.js';
import { add, mul, requireFloat, rsqrt, sameBackend, sub, cast } from './elementwise.js';
import { mean } from './reduce.js';
import { concat, narrow, reshape, unsqueeze } from './shape.js';
import { linear, matmul } from './linalg.js';

/** The host copy of an int tensor when one is at hand (host backends, or data uploaded from the host). */
function hostInts(t: Tensor): ArrayLike<number> | null {
  if (t.hostData) return t.hostData;
  return t.backend.readSync ? t.backend.readSync(t.storage) : null;
}

function checkIndexRange(op: string, what: string, t: Tensor, limit: number): void {
  const v = hostInts(t);
  if (!v) return; // on an asynchronous device the kernel writes NaN instead
  for (let i = 0; i < v.length; i++) {
    if (!(v[i] >= 0 && v[i] < limit)) throw new RangeError(`${op}: ${what} ${v[i]} at position ${i} is out of range [0, ${limit})`);
  }
}

export interface CrossEntropyOptions {
  labelSmoothing?: number;
  reduction?: 'mean' | 'sum' | 'none';
}

/**
 * Softmax cross-entropy of logits [N, C] against int32 labels [N], as one fused op:
 * (1-s)(-log p[y]) + (s/C) sum_k(-log p[k]) per row, then the reduction.
 */
export function crossEntropy(logits: Tensor, labels: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  const s = opts.labelSmoothing ?? 0;
  const reduction = opts.reduction ?? 'mean';
  requireFloat('crossEntropy', logits, 'logits');
  if (logits.ndim !== 2) throw new RangeError(`crossEntropy: logits must be [N, C], got ${fmt(logits.shape)}`);
  if (labels.dtype !== 'int32') throw new TypeError(`crossEntropy: labels must be int32 class indices, got ${labels.dtype}`);
  if (labels.ndim !== 1 || labels.shape[0] !== logits.shape[0]) {
    throw new RangeError(`crossEntropy: labels ${fmt(labels.shape)} do not match logits ${fmt(logits.shape)} (expected [${logits.shape[0]}])`);
  }
  if (!(s >= 0 && s <= 1)) throw new RangeError(`crossEntropy: labelSmoothing must be in [0, 1], got ${s}`);
  if (!['mean', 'sum', 'none'].includes(reduction)) throw new RangeError(`crossEntropy: reduction must be 'mean', 'sum' or 'none', got ${JSON.stringify(reduction)}`);
  sameBackend('crossEntropy', logits, labels);
  const [rows, cols] = logits.shape;
  checkIndexRange('crossEntropy', 'label', labels, cols);
  const perRow = Tensor.empty([rows], logits.dtype, logits.backend);
  if (rows > 0) logits.backend.crossEntropy(logits.storage, labels.storage, perRow.storage, { rows, cols, labelSmoothing: s });
  record('crossEntropy', perRow, [logits], { labelSmoothing: s }, [labels]);
  if (reduction === 'none') return perRow;
  const total = perRow.sum();
  return reduction === 'sum' ? total : mul(total, 1 / rows);
}

/** The gradient of per-row cross-entropy: fused kernel, or tensor ops when building a graph for double backward. */
export function crossEntropyGrad(logits: Tensor, labels: Tensor, gradRows: Tensor, labelSmoothing: number): Tensor {
  const [rows, cols] = logits.shape;
  if (isGradEnabled()) {
    const target = add(mul(cast(oneHot(labels, cols), logits.dtype), 1 - labelSmoothing), labelSmoothing / cols);
    return mul(sub(logits.softmax(1), target), unsqueeze(gradRows, 1));
  }
  const out = Tensor.empty([rows, cols], logits.dtype, logits.backend);
  if (rows > 0) logits.backend.crossEntropyBackward(logits.storage, labels.storage, gradRows.storage, out.storage, { rows, cols, labelSmoothing });
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

function gatherLayout(op: string, x: Tensor, dim: number, index: Tensor, perPosition: boolean): { ax: number; layout: GatherLayout; outShape: number[] } {
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

type Pair = number | [number, number];
const pair = (v: Pair, what: string, op: string, min: number): [number, number] => {
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
  padding?: Pair;
  dilation?: Pair;
  groups?: number;
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
  const padding = pair(opts.padding ?? 0, 'padding', 'conv2d', 0);
  const dilation = pair(opts.dilation ?? 1, 'dilation', 'conv2d', 1);
  const convGroup = (xg: Tensor, wg: Tensor): Tensor => {
    const g = windowOf('conv2d', xg, [kh, kw], stride, padding, dilation);
    const cols = im2col(xg, g);
    const y = matmul(reshape(wg, [wg.shape[0], cg * kh * kw]), cols); // [N, O, L]
    return reshape(y, [g.n, wg.shape[0], g.oh, g.ow]);
  };
  let y: Tensor;
  if (groups === 1) y = convGroup(x, weight);
  else {
    const og = o / groups;
    const parts: Tensor[] = [];
    for (let i = 0; i < groups; i++) parts.push(convGroup(narrow(x, 1, i * cg, cg), narrow(weight, 0, i * og, og)));
    y = concat(parts, 1);
  }
  return bias ? add(y, reshape(bias, [1, o, 1, 1])) : y;
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

export function avgPool2d(x: Tensor, kernelSize: Pair, opts: Omit<Pool2dOptions, 'dilation'> = {}): Tensor {
  requireFloat('avgPool2d', x);
  const k = pair(kernelSize, 'kernelSize', 'avgPool2d', 1);
  const padding = pair(opts.padding ?? 0, 'padding', 'avgPool2d', 0);
  if (padding[0] * 2 > k[0] || padding[1] * 2 > k[1]) throw new RangeError(`avgPool2d: padding ${padding.join(',')} must be at most half the kernel ${k.join('x')}`);
  return avgPool2dWindow(x, windowOf('avgPool2d', x, k, pair(opts.stride ?? k, 'stride', 'avgPool2d', 1), padding, [1, 1], opts.ceilMode));
}

/** Average pooling over a window geometry already checked (also the adjoint of avgPool2dBackward). */
export function avgPool2dWindow(x: Tensor, g: Window2d): Tensor {
  const out = Tensor.empty([g.n, g.c, g.oh, g.ow], x.dtype, x.backend);
  if (out.size > 0) x.backend.avgPool2d(x.storage, out.storage, g);
  return record('avgPool2d', out, [x], { g });
}

export function avgPool2dBackward(grad: Tensor, g: Window2d): Tensor {
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
