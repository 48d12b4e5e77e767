/**
 * Normalizations and the similarity built on norms: groupNorm, normalize (Lp-normalize along a
 * dim) and cosineSimilarity, as torch.nn.functional computes them, in tensor ops.
 */
import { noGrad } from '../graph.js';
import { broadcastShapes, fmt, normAxis } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { abs, add, clamp, div, mul, pow, requireFloat, rsqrt, sameBackend, sqrt, square, sub, where } from './elementwise.js';
import { max, mean, sum } from './reduce.js';
import { expand, reshape } from './shape.js';

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
