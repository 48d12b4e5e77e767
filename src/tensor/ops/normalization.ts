/**
 * Normalizations and the similarity built on norms, as torch.nn.functional computes them:
 * layerNorm and batch norm (train and eval) on their fused kernels, with their gradient rules;
 * groupNorm, normalize (Lp-normalize along a dim) and cosineSimilarity in tensor ops.
 */
import type { BatchNormLayout, LayerNormLayout } from '../../kernels/backend.js';
import { captureHooks } from '../../compile/hooks.js';
import { isGradEnabled, noGrad, record, vjpRegistry, type Vjp } from '../graph.js';
import { broadcastShapes, fmt, normAxis, numel } from '../shape.js';
import { Tensor } from '../tensor.js';
import { abs, add, clamp, div, mul, pow, requireFloat, rsqrt, sameBackend, sqrt, square, sub, where } from './elementwise.js';
import { max, mean, sum } from './reduce.js';
import { expand, narrow, reshape } from './shape.js';

/**
 * Group normalization of x [N, C, *] (torch.nn.functional.group_norm): the C channels split into
 * numGroups groups, each normalized over its channels and all positions (biased variance), then
 * scaled by weight [C] and shifted by bias [C].
 */
export function groupNorm(x: Tensor, numGroups: number, weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5): Tensor {
  requireFloat('groupNorm', x);
  if (x.ndim < 2) throw new RangeError(`groupNorm: input must be [N, C, *] (rank >= 2), got ${fmt(x.shape)}`);
  const [n, c] = x.shape;
  if (!Number.isInteger(numGroups) || numGroups < 1 || c % numGroups !== 0) {
    throw new RangeError(`groupNorm: numGroups ${numGroups} must be a positive integer dividing the ${c} channels of ${fmt(x.shape)}`);
  }
  for (const [what, t] of [['weight', weight], ['bias', bias]] as const) {
    if (!t) continue;
    requireFloat('groupNorm', t, what);
    sameBackend('groupNorm', x, t);
    if (t.ndim !== 1 || t.shape[0] !== c) throw new RangeError(`groupNorm: ${what} ${fmt(t.shape)} must be [${c}], one per channel`);
  }
  const grouped = reshape(x, [n, numGroups, x.size / Math.max(n * numGroups, 1)]);
  const dev = sub(grouped, mean(grouped, 2, true));
  const v = mean(square(dev), 2, true);
  let y = reshape(mul(dev, rsqrt(add(v, eps))), x.shape);
  const perChannel = x.shape.map((d, i) => (i === 1 ? d : 1));
  if (weight) y = mul(y, reshape(weight, perChannel));
  if (bias) y = add(y, reshape(bias, perChannel));
  return y;
}

/**
 * The Lp norm along `dim` (keepdim), p > 0 or Infinity. Its gradient at a zero vector is 0, as
 * PyTorch's norm backward has it, instead of the 0 * inf = NaN of differentiating sqrt at 0.
 */
function vectorNorm(x: Tensor, p: number, dim: number): Tensor {
  if (p === Infinity) return max(abs(x), dim, true);
  const total = sum(p === 2 ? square(x) : pow(abs(x), p), dim, true);
  const zero = total.eq(0);
  const safe = where(zero, 1, total);
  return where(zero, 0, p === 2 ? sqrt(safe) : pow(safe, 1 / p));
}

/** x / max(||x||_p, eps) along dim (torch.nn.functional.normalize). */
export function normalize(x: Tensor, opts: { p?: number; dim?: number; eps?: number } = {}): Tensor {
  const p = opts.p ?? 2;
  const eps = opts.eps ?? 1e-12;
  requireFloat('normalize', x);
  if (!(p > 0)) throw new RangeError(`normalize: p must be > 0 (or Infinity), got ${p}`);
  if (x.ndim === 0) throw new RangeError(`normalize: input must have at least one dim, got ${fmt(x.shape)}`);
  const dim = normAxis('normalize', opts.dim ?? 1, x.ndim);
  return div(x, clamp(vectorNorm(x, p, dim), eps));
}

/**
 * max(||x||, eps) along dim with PyTorch 1.13's cosine_similarity gradient: it clamps the norm in
 * place without recording, so the gradient still flows as if through the norm, as x / N with N
 * the clamped value, and so do the second derivatives (the norm's backward reads N back).
 * Here: sqrt(s + lift), s = sum(x^2), where the constant lift = max(s, eps^2) - s raises s to
 * eps^2 below it (and is 0 above): the value is N and sqrt's own rules give x / N to all orders.
 */
function clampedNormAsTorch(x: Tensor, dim: number, eps: number): Tensor {
  const squares = sum(square(x), dim, true);
  const lift = noGrad(() => sub(clamp(squares, eps * eps), squares));
  return sqrt(add(squares, lift));
}

/**
 * Cosine similarity along dim of two broadcastable tensors (torch.nn.functional.cosine_similarity,
 * PyTorch 1.13): sum((x1 / max(||x1||, eps)) * (x2 / max(||x2||, eps))).
 */
export function cosineSimilarity(x1: Tensor, x2: Tensor, opts: { dim?: number; eps?: number } = {}): Tensor {
  const eps = opts.eps ?? 1e-8;
  requireFloat('cosineSimilarity', x1, 'x1');
  requireFloat('cosineSimilarity', x2, 'x2');
  sameBackend('cosineSimilarity', x1, x2);
  const shape = broadcastShapes('cosineSimilarity', x1.shape, x2.shape);
  if (shape.length === 0) throw new RangeError(`cosineSimilarity: inputs must have at least one dim, got ${fmt(x1.shape)} and ${fmt(x2.shape)}`);
  const a = expand(x1, shape);
  const b = expand(x2, shape);
  const dim = normAxis('cosineSimilarity', opts.dim ?? 1, shape.length);
  return sum(mul(div(a, clampedNormAsTorch(a, dim, eps)), div(b, clampedNormAsTorch(b, dim, eps))), dim);
}

/**
 * Layer normalization over the trailing `normalizedShape` dims, as PyTorch: biased variance, eps
 * inside the square root, weight and bias (either optional) of shape normalizedShape. One fused
 * kernel (backend.layerNorm) that also keeps each row's mean and 1/std for the backward pass; a
 * row holding NaN or an infinity is NaN throughout.
 */
export function layerNorm(x: Tensor, normalizedShape: number[], weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5): Tensor {
  requireFloat('layerNorm', x);
  const k = normalizedShape.length;
  if (k === 0 || k > x.ndim || normalizedShape.some((d, i) => d !== x.shape[x.ndim - k + i])) {
    throw new RangeError(`layerNorm: normalizedShape ${fmt(normalizedShape)} must match the trailing dims of ${fmt(x.shape)}`);
  }
  if (!(eps >= 0)) throw new RangeError(`layerNorm: eps must be >= 0, got ${eps}`);
  for (const [what, t] of [['weight', weight], ['bias', bias]] as const) {
    if (!t) continue;
    if (t.dtype !== x.dtype) throw new TypeError(`layerNorm: ${what} is ${t.dtype} but the input is ${x.dtype}`);
    if (t.ndim !== k || t.shape.some((d, i) => d !== normalizedShape[i])) {
      throw new RangeError(`layerNorm: ${what} ${fmt(t.shape)} must have the normalized shape ${fmt(normalizedShape)}`);
    }
    sameBackend('layerNorm', x, t);
  }
  const cols = numel(normalizedShape);
  const rowShape = x.shape.slice(0, x.ndim - k);
  const layout = { rows: numel(rowShape), cols, eps };
  const out = Tensor.uninit(x.shape.slice(), x.dtype, x.backend);
  // Each row's mean as the pair (hi, lo) of the Backend contract.
  const mu = Tensor.empty([...rowShape, 2], x.dtype, x.backend);
  const rstd = Tensor.empty(rowShape, x.dtype, x.backend);
  if (out.size > 0) x.backend.layerNorm(x.storage, weight?.storage ?? null, bias?.storage ?? null, out.storage, mu.storage, rstd.storage, layout);
  const inputs = [x, ...(weight ? [weight] : []), ...(bias ? [bias] : [])];
  return record('layerNorm', out, inputs, { layout, normalizedShape: normalizedShape.slice(), hasWeight: !!weight, hasBias: !!bias }, [mu, rstd]);
}

/**
 * The gradients of layerNorm for [x, weight, bias] (null where `wanted` says no) from the upstream
 * `grad`; weight and bias have the shape `paramShape`. Without graph recording it is one fused
 * kernel over the saved mean and rstd; when recording (double backward) it is the same formula in
 * tensor ops, with the statistics recomputed from x so that their dependence on x is
 * differentiated too.
 */
export function layerNormGrad(
  grad: Tensor,
  x: Tensor,
  weight: Tensor | null,
  saved: { mean: Tensor; rstd: Tensor },
  layout: LayerNormLayout,
  paramShape: number[],
  wanted: { x: boolean; weight: boolean; bias: boolean },
): [Tensor | null, Tensor | null, Tensor | null] {
  const { rows, cols } = layout;
  if (isGradEnabled()) {
    // Shifted by each row's first element (a constant: layerNorm does not change under a shift),
    // so that a row far from 0 keeps the low bits of its deviations in float32, as the kernels do.
    const x2 = reshape(x, [rows, cols]);
    const shifted = cols > 0 ? sub(x2, narrow(x2.detach(), 1, 0, 1)) : x2;
    const g2 = reshape(grad, [rows, cols]);
    const dev = sub(shifted, mean(shifted, [1], true));
    const rs = rsqrt(add(mean(dev.square(), [1], true), layout.eps));
    const xhat = mul(dev, rs);
    const gw = weight ? mul(g2, reshape(weight, [cols])) : g2;
    const dx = wanted.x ? reshape(mul(rs, sub(sub(gw, mean(gw, [1], true)), mul(xhat, mean(mul(gw, xhat), [1], true)))), x.shape) : null;
    const dw = wanted.weight ? reshape(sum(mul(g2, xhat), [0]), paramShape) : null;
    const db = wanted.bias ? reshape(sum(g2, [0]), paramShape) : null;
    return [dx, dw, db];
  }
  const dx = wanted.x ? Tensor.uninit(x.shape.slice(), x.dtype, x.backend) : null;
  const dw = wanted.weight ? Tensor.uninit(paramShape.slice(), x.dtype, x.backend) : null;
  const db = wanted.bias ? Tensor.uninit(paramShape.slice(), x.dtype, x.backend) : null;
  // cols = 0: every output is empty.
  if (cols > 0 && (dx || dw || db)) {
    x.backend.layerNormBackward(grad.storage, x.storage, saved.mean.storage, saved.rstd.storage, weight?.storage ?? null, dx?.storage ?? null, dw?.storage ?? null, db?.storage ?? null, layout);
  }
  return [dx, dw, db];
}

/** The [n, c, hw] layout of a batch norm input [N, C, ...], after checking its parameters (each [C] or null). */
function batchNormLayout(op: string, x: Tensor, eps: number, params: [string, Tensor | null | undefined][]): BatchNormLayout {
  requireFloat(op, x);
  if (x.ndim < 2) throw new RangeError(`${op}: expected an input [N, C, ...], got ${fmt(x.shape)}`);
  if (!(eps >= 0)) throw new RangeError(`${op}: eps must be >= 0, got ${eps}`);
  const [n, c] = x.shape;
  for (const [what, t] of params) {
    if (!t) continue;
    if (t.dtype !== x.dtype) throw new TypeError(`${op}: ${what} is ${t.dtype} but the input is ${x.dtype}`);
    if (t.ndim !== 1 || t.shape[0] !== c) throw new RangeError(`${op}: ${what} ${fmt(t.shape)} must be [${c}] for the input ${fmt(x.shape)}`);
    sameBackend(op, x, t);
  }
  return { n, c, hw: numel(x.shape.slice(2)), eps };
}

/**
 * Training-mode batch normalization of x [N, C, ...] over every dim but the channel dim 1, as
 * PyTorch: biased variance, eps inside the square root, weight and bias [C] (either optional).
 * One fused kernel (backend.batchNorm) that also keeps each channel's mean and 1/std for the
 * backward pass. Returns the output and the batch statistics [C] (biased variance, and the mean
 * on demand: extracting it from the saved pairs is one more small op, which only a caller that
 * keeps running averages pays; neither is differentiable). A channel holding NaN or an infinity
 * is NaN throughout. As PyTorch, one value per channel is an error when `training` (false: batch
 * statistics outside training, as a layer without running statistics uses in eval mode); an
 * empty batch gives an empty output and NaN statistics.
 */
export function batchNormTrain(x: Tensor, weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5, training = true): { y: Tensor; mean: () => Tensor; variance: Tensor; pairs: Tensor } {
  const layout = batchNormLayout('batchNorm', x, eps, [['weight', weight], ['bias', bias]]);
  const { n, c, hw } = layout;
  if (training && n * hw === 1) throw new RangeError(`batchNorm: expected more than 1 value per channel when training, got input ${fmt(x.shape)}`);
  const out = Tensor.uninit(x.shape.slice(), x.dtype, x.backend);
  // Each channel's mean as the pair (hi, lo) of the Backend contract.
  const mu = Tensor.empty([c, 2], x.dtype, x.backend);
  const variance = Tensor.empty([c], x.dtype, x.backend);
  const rstd = Tensor.empty([c], x.dtype, x.backend);
  if (n * hw > 0) x.backend.batchNorm(x.storage, weight?.storage ?? null, bias?.storage ?? null, out.storage, mu.storage, variance.storage, rstd.storage, layout);
  else {
    x.backend.fill(variance.storage, NaN);
    x.backend.fill(mu.storage, NaN);
  }
  const inputs = [x, ...(weight ? [weight] : []), ...(bias ? [bias] : [])];
  const y = record('batchNorm', out, inputs, { layout, hasWeight: !!weight, hasBias: !!bias }, [mu, rstd]);
  return { y, mean: () => reshape(narrow(mu, 1, 0, 1), [c]), variance, pairs: mu };
}

/**
 * The running statistics after a training batch norm over m values per channel (torch.nn's
 * update): running * (1 - momentum) + batch * momentum, with the variance made unbiased, and the
 * batch count (num_batches_tracked, when kept) plus one. One call for all
 * (backend.batchNormRunning) from batchNormTrain's statistics; new tensors.
 */
export function batchNormRunning(
  runningMean: Tensor,
  runningVar: Tensor,
  count: Tensor | null,
  stats: { pairs: Tensor; variance: Tensor },
  m: number,
  momentum: number,
): [Tensor, Tensor, Tensor | null] {
  const c = runningMean.size;
  const l = { c, keep: 1 - momentum, take: momentum, takeVar: (momentum * m) / (m - 1) };
  // While a step is traced, the ops the kernel stands for (the same bits): the fusion pass folds
  // them into the plan's programs, in fewer calls than one kernel per layer.
  if (captureHooks.hostState) {
    const mean = reshape(narrow(stats.pairs, 1, 0, 1), [c]);
    return [add(mul(runningMean, l.keep), mul(mean, l.take)), add(mul(runningVar, l.keep), mul(stats.variance, l.takeVar)), count && add(count, 1)];
  }
  const [om, ov, oc] = [runningMean, runningVar, count].map((t) => t && Tensor.uninit(t.shape.slice(), t.dtype, t.backend));
  runningMean.backend.batchNormRunning(runningMean.storage, runningVar.storage, stats.pairs.storage, stats.variance.storage, count?.storage ?? null, om!.storage, ov!.storage, oc?.storage ?? null, l);
  return [om!, ov!, oc];
}

/**
 * Eval-mode batch normalization with the given statistics [C], one fused affine pass
 * (backend.batchNormEval): (x - runningMean) / sqrt(runningVar + eps) * weight + bias. The
 * statistics are constants here (the running buffers): no gradient reaches them.
 */
export function batchNormEval(x: Tensor, runningMean: Tensor, runningVar: Tensor, weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5): Tensor {
  const stats: [string, Tensor][] = [['runningMean', runningMean], ['runningVar', runningVar]];
  const layout = batchNormLayout('batchNormEval', x, eps, [...stats, ['weight', weight], ['bias', bias]]);
  const out = Tensor.uninit(x.shape.slice(), x.dtype, x.backend);
  if (out.size > 0) {
    x.backend.batchNormEval(x.storage, runningMean.storage, runningVar.storage, weight?.storage ?? null, bias?.storage ?? null, out.storage, layout);
  }
  const inputs = [x, ...(weight ? [weight] : []), ...(bias ? [bias] : [])];
  return record('batchNormEval', out, inputs, { layout, hasWeight: !!weight, hasBias: !!bias }, [runningMean.detach(), runningVar.detach()]);
}

/**
 * The gradients of batchNormTrain for [x, weight, bias] (null where `wanted` says no). Without
 * graph recording it is one fused kernel over the saved mean and rstd; when recording (double
 * backward) it is the same formula in tensor ops, with the statistics recomputed from x so that
 * their dependence on x is differentiated too.
 */
export function batchNormGrad(
  grad: Tensor,
  x: Tensor,
  weight: Tensor | null,
  saved: { mean: Tensor; rstd: Tensor },
  layout: BatchNormLayout,
  wanted: { x: boolean; weight: boolean; bias: boolean },
): [Tensor | null, Tensor | null, Tensor | null] {
  const { n, c, hw } = layout;
  if (isGradEnabled()) {
    // Shifted by each channel's first element (a constant: the output does not change under a
    // shift), so that a channel far from 0 keeps the low bits of its deviations, as the kernels do.
    const x3 = reshape(x, [n, c, hw]);
    const shifted = sub(x3, narrow(narrow(x3.detach(), 0, 0, 1), 2, 0, 1));
    const g3 = reshape(grad, [n, c, hw]);
    const dev = sub(shifted, mean(shifted, [0, 2], true));
    const rs = rsqrt(add(mean(dev.square(), [0, 2], true), layout.eps));
    const xhat = mul(dev, rs);
    const k = weight ? mul(rs, reshape(weight, [1, c, 1])) : rs;
    const dx = wanted.x ? reshape(mul(k, sub(sub(g3, mean(g3, [0, 2], true)), mul(xhat, mean(mul(g3, xhat), [0, 2], true)))), x.shape) : null;
    const dw = wanted.weight ? sum(mul(g3, xhat), [0, 2]) : null;
    const db = wanted.bias ? sum(g3, [0, 2]) : null;
    return [dx, dw, db];
  }
  const dx = wanted.x ? Tensor.uninit(x.shape.slice(), x.dtype, x.backend) : null;
  const dw = wanted.weight ? Tensor.uninit([c], x.dtype, x.backend) : null;
  const db = wanted.bias ? Tensor.uninit([c], x.dtype, x.backend) : null;
  if (n * hw > 0 && (dx || dw || db)) {
    x.backend.batchNormBackward(grad.storage, x.storage, saved.mean.storage, saved.rstd.storage, weight?.storage ?? null, dx?.storage ?? null, dw?.storage ?? null, db?.storage ?? null, layout);
  } else {
    // An empty batch: no values, so the parameter gradients are 0 (dx is empty).
    if (dw) x.backend.fill(dw.storage, 0);
    if (db) x.backend.fill(db.storage, 0);
  }
  return [dx, dw, db];
}

/** The gradients of batchNormEval for [x, weight, bias]: an affine map per channel, in tensor ops. */
export function batchNormEvalGrad(
  grad: Tensor,
  x: Tensor,
  weight: Tensor | null,
  saved: { runningMean: Tensor; runningVar: Tensor },
  layout: BatchNormLayout,
  wanted: { x: boolean; weight: boolean; bias: boolean },
): [Tensor | null, Tensor | null, Tensor | null] {
  const { n, c, hw } = layout;
  const g3 = reshape(grad, [n, c, hw]);
  const rs = reshape(rsqrt(add(saved.runningVar, layout.eps)), [1, c, 1]);
  const dx = wanted.x ? reshape(mul(g3, weight ? mul(rs, reshape(weight, [1, c, 1])) : rs), x.shape) : null;
  const dw = wanted.weight ? sum(mul(g3, mul(sub(reshape(x, [n, c, hw]), reshape(saved.runningMean, [1, c, 1])), rs)), [0, 2]) : null;
  const db = wanted.bias ? sum(g3, [0, 2]) : null;
  return [dx, dw, db];
}

// The gradient rules of the fused layer and batch norms register here, with the ops, rather than in
// src/autograd/vjps.ts: a program that never normalizes does not ship them (bench/size.bench.ts).
type NormGrad = (g: Tensor, x: Tensor, weight: Tensor | null, saved: Tensor[], attrs: Record<string, unknown>, wanted: { x: boolean; weight: boolean; bias: boolean }) => (Tensor | null)[];
/** A rule over inputs [x, weight?, bias?] (attrs hasWeight / hasBias), one gradient per input present. */
const normRule = (grads: NormGrad): Vjp => (g, { inputs, saved, attrs }) => {
  const [x, ...params] = inputs;
  const weight = attrs.hasWeight ? params[0] : null;
  const bias = attrs.hasBias ? params[params.length - 1] : null;
  const [dx, dw, db] = grads(g, x, weight, saved, attrs, { x: x.requiresGrad, weight: !!weight?.requiresGrad, bias: !!bias?.requiresGrad });
  return [dx, ...(weight ? [dw] : []), ...(bias ? [db] : [])];
};
vjpRegistry.set('layerNorm', normRule((g, x, w, [mean, rstd], attrs, wanted) =>
  layerNormGrad(g, x, w, { mean, rstd }, attrs.layout as LayerNormLayout, attrs.normalizedShape as number[], wanted)));
vjpRegistry.set('batchNorm', normRule((g, x, w, [mean, rstd], attrs, wanted) =>
  batchNormGrad(g, x, w, { mean, rstd }, attrs.layout as BatchNormLayout, wanted)));
vjpRegistry.set('batchNormEval', normRule((g, x, w, [runningMean, runningVar], attrs, wanted) =>
  batchNormEvalGrad(g, x, w, { runningMean, runningVar }, attrs.layout as BatchNormLayout, wanted)));
