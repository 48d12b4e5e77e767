/** torch.nn.functional: losses, plus the stateless ops under their functional names. */
import { fmt, shapesEqual } from '../tensor/shape.js';
import type { Tensor } from '../tensor/tensor.js';
import { sub } from '../tensor/ops/elementwise.js';
import { mean, sum } from '../tensor/ops/reduce.js';
import { crossEntropy as ce, type CrossEntropyOptions } from '../tensor/ops/nn.js';

export type Reduction = 'mean' | 'sum' | 'none';

/**
 * Softmax cross-entropy of logits [N, C] (or [C], [N, C, d1, ...]) against int32 class indices,
 * with label smoothing s: (1-s)(-log p[y]) + (s/C) sum_k(-log p[k]) per row, class weights and
 * ignoreIndex as PyTorch, then the reduction (default mean).
 */
export function crossEntropy(logits: Tensor, labels: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  return ce(logits, labels, opts);
}

/** Mean squared error (torch.nn.functional.mse_loss). */
export function mseLoss(input: Tensor, target: Tensor, opts: { reduction?: Reduction } = {}): Tensor {
  if (!shapesEqual(input.shape, target.shape)) throw new RangeError(`mseLoss: input ${fmt(input.shape)} and target ${fmt(target.shape)} differ in shape`);
  const d = sub(input, target);
  const sq = d.square();
  const r = opts.reduction ?? 'mean';
  if (r === 'none') return sq;
  if (r === 'sum') return sum(sq);
  if (r !== 'mean') throw new RangeError(`mseLoss: reduction must be 'mean', 'sum' or 'none', got ${JSON.stringify(r)}`);
  return mean(sq);
}

export {
  linear,
} from '../tensor/ops/linalg.js';
export { relu, gelu, tanh, sigmoid, softplus } from '../tensor/ops/elementwise.js';
export { softmax, logSoftmax } from '../tensor/ops/reduce.js';
export { dropout, oneHot, embedding } from '../tensor/ops/nn.js';
export { layerNorm } from '../tensor/ops/normalization.js';
export { conv2d, maxPool2d, avgPool2d, adaptiveAvgPool2d } from '../tensor/ops/window.js';
export { conv1d, convTranspose2d, type Conv1dOptions, type ConvTranspose2dOptions } from '../tensor/ops/conv.js';
export { interpolate, type InterpolateOptions } from '../tensor/ops/interpolate.js';
export { groupNorm, normalize, cosineSimilarity } from '../tensor/ops/normalization.js';
export {
  nllLoss, binaryCrossEntropy, binaryCrossEntropyWithLogits, l1Loss, smoothL1Loss, huberLoss, klDiv,
  type NllLossOptions, type BinaryCrossEntropyOptions, type BinaryCrossEntropyWithLogitsOptions, type KlDivOptions,
} from '../tensor/ops/losses.js';
export type { CrossEntropyOptions };
