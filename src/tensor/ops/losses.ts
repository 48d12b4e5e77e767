/**
 * Losses as torch.nn.functional computes them (cross-entropy itself is in nn.ts, next to its fused
 * kernel). Each is a short program of tensor ops, so it runs on every backend and its gradient
 * comes from those ops; binaryCrossEntropy alone records its own node, because PyTorch's gradient
 * is not the derivative of its clamped forward (see its vjp in src/autograd/vjps.ts).
 */
import { noGrad, record } from '../graph.js';
import { fmt, shapesEqual } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { abs, add, clamp, exp, log, mul, neg, requireFloat, sameBackend, square, sub, unaryOp, where } from './elementwise.js';
import { mean, sum } from './reduce.js';
import { reshape } from './shape.js';
import { checkIndexRange, classRows, classWeight, weightedNllRows } from './nn.js';

export type Reduction = 'mean' | 'sum' | 'none';

function reduce(op: string, loss: Tensor, reduction: Reduction): Tensor {
  if (reduction === 'none') return loss;
  if (reduction === 'sum') return sum(loss);
  if (reduction === 'mean') return mean(loss);
  throw new RangeError(`${op}: reduction must be 'mean', 'sum' or 'none', got ${JSON.stringify(reduction)}`);
}

/** Input and target of a pointwise loss: both floating, same shape, same backend. */
function pointwise(op: string, input: Tensor, target: Tensor): void {
  requireFloat(op, input);
  requireFloat(op, target, 'target');
  sameBackend(op, input, target);
  if (!shapesEqual(input.shape, target.shape)) throw new RangeError(`${op}: input ${fmt(input.shape)} and target ${fmt(target.shape)} differ in shape`);
}

/** An optional per-element weight, broadcast against the loss. */
function weighted(op: string, loss: Tensor, weight: Tensor | null | undefined, what = 'weight'): Tensor {
  if (!weight) return loss;
  requireFloat(op, weight, what);
  sameBackend(op, loss, weight);
  return mul(loss, weight);
}

export interface NllLossOptions {
  /** Class weights [C] (not differentiated, as in PyTorch). */
  weight?: Tensor | null;
  /** Targets equal to this give 0 and do not count in the mean (default -100). */
  ignoreIndex?: number;
  reduction?: Reduction;
}

/**
 * Negative log-likelihood of log-probabilities [N, C] (or [C], [N, C, d1, ...]) at int32 targets
 * [N] (or [], [N, d1, ...]): -w[y] * input[y]; 'mean' divides by the sum of w[y] over the
 * targets not ignored (torch.nn.functional.nll_loss).
 */
export function nllLoss(input: Tensor, target: Tensor, opts: NllLossOptions = {}): Tensor {
  const reduction = opts.reduction ?? 'mean';
  const ignoreIndex = opts.ignoreIndex ?? -100;
  if (!['mean', 'sum', 'none'].includes(reduction)) throw new RangeError(`nllLoss: reduction must be 'mean', 'sum' or 'none', got ${JSON.stringify(reduction)}`);
  if (!Number.isInteger(ignoreIndex)) throw new RangeError(`nllLoss: ignoreIndex must be an integer, got ${ignoreIndex}`);
  const { rows: x, labels: y, shape } = classRows('nllLoss', input, target, 'input');
  const classes = x.shape[1];
  const weight = classWeight('nllLoss', opts.weight, classes, x);
  checkIndexRange('nllLoss', 'target', target, classes, ignoreIndex);
  const { rows, weightSum } = weightedNllRows(x, y, weight, ignoreIndex, 0);
  if (reduction === 'none') return reshape(rows, shape);
  const total = sum(rows);
  return reduction === 'sum' ? total : total.div(weightSum);
}

export interface BinaryCrossEntropyOptions {
  /** Broadcast against the input: each element's loss is scaled by it. */
  weight?: Tensor | null;
  reduction?: Reduction;
}

/**
 * Binary cross-entropy of probabilities in [0, 1]: -w (t log x + (1-t) log(1-x)), each log
 * clamped at -100 as PyTorch does, so that x = 0 or 1 gives a finite loss.
 */
export function binaryCrossEntropy(input: Tensor, target: Tensor, opts: BinaryCrossEntropyOptions = {}): Tensor {
  const op = 'binaryCrossEntropy';
  pointwise(op, input, target);
  const values = input.backend.readSync ? input.backend.readSync(input.storage) : null;
  if (values) {
    for (let i = 0; i < values.length; i++) {
      if (!(values[i] >= 0 && values[i] <= 1)) throw new RangeError(`${op}: input ${values[i]} at position ${i} is outside [0, 1] (it must be a probability)`);
    }
  }
  const loss = noGrad(() => neg(add(mul(target, clamp(log(input), -100)), mul(sub(1, target), clamp(log(sub(1, input)), -100)))));
  record('binaryCrossEntropy', loss, [input, target]);
  return reduce(op, weighted(op, loss, opts.weight), opts.reduction ?? 'mean');
}

export interface BinaryCrossEntropyWithLogitsOptions extends BinaryCrossEntropyOptions {
  /** Weight of the positive term, broadcast against the input (one per class in the last dim). */
  posWeight?: Tensor | null;
}

/**
 * Binary cross-entropy of sigmoid(x) computed from the logits x, stably:
 * (1-t) x + (1 + (posWeight-1) t) softplus(-x), times the weight (PyTorch's formula).
 */
export function binaryCrossEntropyWithLogits(input: Tensor, target: Tensor, opts: BinaryCrossEntropyWithLogitsOptions = {}): Tensor {
  const op = 'binaryCrossEntropyWithLogits';
  pointwise(op, input, target);
  // The exact softplus op, without fg.softplus's threshold: PyTorch's BCE-with-logits has none.
  const spNeg = unaryOp('softplus', neg(input), Infinity);
  let positive = spNeg;
  if (opts.posWeight) {
    requireFloat(op, opts.posWeight, 'posWeight');
    sameBackend(op, input, opts.posWeight);
    positive = mul(add(mul(sub(opts.posWeight, 1), target), 1), spNeg);
  }
  const loss = add(mul(sub(1, target), input), positive);
  return reduce(op, weighted(op, loss, opts.weight), opts.reduction ?? 'mean');
}

/** Mean absolute error (torch.nn.functional.l1_loss). */
export function l1Loss(input: Tensor, target: Tensor, opts: { reduction?: Reduction } = {}): Tensor {
  pointwise('l1Loss', input, target);
  return reduce('l1Loss', abs(sub(input, target)), opts.reduction ?? 'mean');
}

/** 0.5 d²/beta where |d| < beta, else |d| - 0.5 beta; beta = 0 is l1Loss (torch smooth_l1_loss). */
export function smoothL1Loss(input: Tensor, target: Tensor, opts: { reduction?: Reduction; beta?: number } = {}): Tensor {
  const beta = opts.beta ?? 1;
  if (!(beta >= 0)) throw new RangeError(`smoothL1Loss: beta must be >= 0, got ${beta}`);
  pointwise('smoothL1Loss', input, target);
  const d = sub(input, target);
  const a = abs(d);
  const loss = beta === 0 ? a : where(a.lt(beta), mul(square(d), 0.5 / beta), sub(a, 0.5 * beta));
  return reduce('smoothL1Loss', loss, opts.reduction ?? 'mean');
}

/** 0.5 d² where |d| < delta, else delta (|d| - 0.5 delta) (torch huber_loss). */
export function huberLoss(input: Tensor, target: Tensor, opts: { reduction?: Reduction; delta?: number } = {}): Tensor {
  const delta = opts.delta ?? 1;
  if (!(delta > 0)) throw new RangeError(`huberLoss: delta must be > 0, got ${delta}`);
  pointwise('huberLoss', input, target);
  const d = sub(input, target);
  const a = abs(d);
  const loss = where(a.lt(delta), mul(square(d), 0.5), mul(sub(a, 0.5 * delta), delta));
  return reduce('huberLoss', loss, opts.reduction ?? 'mean');
}

export interface KlDivOptions {
  /** 'batchmean' divides the sum by the batch size (dim 0): the true KL divergence per sample. */
  reduction?: Reduction | 'batchmean';
  /** The target is given as log-probabilities. */
  logTarget?: boolean;
}

/**
 * Kullback-Leibler divergence with the input as log-probabilities (torch kl_div):
 * t (log t - x) pointwise, 0 where t = 0; with logTarget, exp(t) (t - x).
 */
export function klDiv(input: Tensor, target: Tensor, opts: KlDivOptions = {}): Tensor {
  const op = 'klDiv';
  pointwise(op, input, target);
  let loss: Tensor;
  if (opts.logTarget) loss = mul(exp(target), sub(target, input));
  else {
    // xlogy(t, t): 0 where t = 0. Its derivative there, log t + 1, is -inf from the right; the
    // gradient is NaN, as PyTorch's (the unselected t log t passes 0 * log 0 back), not a finite lie.
    const tLogT = where(target.eq(0), 0, mul(target, log(target)));
    loss = sub(tLogT, mul(target, input));
  }
  const reduction = opts.reduction ?? 'mean';
  if (reduction === 'batchmean') return input.ndim === 0 ? sum(loss) : mul(sum(loss), 1 / input.shape[0]);
  return reduce(op, loss, reduction);
}
