/** Exact Hessian-vector products by double backward. */
import { fmt, shapesEqual } from '../tensor/shape.js';
import type { Tensor } from '../tensor/tensor.js';
import { mul } from '../tensor/ops/elementwise.js';
import { sum } from '../tensor/ops/reduce.js';
import { grad } from './engine.js';

/**
 * H·v where H is the Hessian of the scalar f(...params) with respect to params, and v a list
 * shaped like params. Two backward passes: g = grad(f, createGraph), then grad(g·v).
 */
export function hvp(f: (...params: Tensor[]) => Tensor, params: Tensor[], v: Tensor[]): Tensor[] {
  if (v.length !== params.length) throw new RangeError(`hvp: ${v.length} vectors for ${params.length} parameters`);
  params.forEach((p, i) => {
    if (!p.requiresGrad) throw new Error(`hvp: parameter ${i} ${fmt(p.shape)} does not require grad`);
    if (!shapesEqual(p.shape, v[i].shape)) throw new RangeError(`hvp: vector ${i} has shape ${fmt(v[i].shape)} but parameter ${i} has ${fmt(p.shape)}`);
  });
  const loss = f(...params);
  if (loss.size !== 1) throw new RangeError(`hvp: f must return a scalar, got shape ${fmt(loss.shape)}`);
  const gs = grad(loss, params, { createGraph: true, allowUnused: true });
  let dot: Tensor | null = null;
  gs.forEach((g, i) => {
    if (!g) return;
    const term = sum(mul(g, v[i]));
    dot = dot ? dot.add(term) : term;
  });
  if (!dot) return params.map((p) => mul(p.detach(), 0));
  const hv = grad(dot, params, { allowUnused: true });
  return hv.map((h, i) => h ?? mul(params[i].detach(), 0));
}
