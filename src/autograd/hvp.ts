/** Exact Hessian-vector products by double backward. */
import { fmt, shapesEqual } from '../tensor/shape.js';
import { Tensor } from '../tensor/tensor.js';
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
  // Fresh storage is zeroed; it lives on the parameter's own backend.
  const zero = (i: number) => Tensor.empty(params[i].shape.slice(), params[i].dtype, params[i].backend);
  // A loss that does not depend on the parameters through the graph has a zero Hessian.
  if (!loss.requiresGrad) return params.map((_, i) => zero(i));
  const gs = grad(loss, params, { createGraph: true, allowUnused: true });
  // A gradient recorded without a graph back to the parameters (f linear in them, or piecewise
  // linear as relu) is constant where it was taken: its terms add nothing to H·v, so they are
  // left out, and with none left H·v is zero (torch.autograd.functional.hvp).
  let dot: Tensor | null = null;
  gs.forEach((g, i) => {
    if (!g?.requiresGrad) return;
    const term = sum(mul(g, v[i]));
    dot = dot ? dot.add(term) : term;
  });
  if (!dot) return params.map((_, i) => zero(i));
  const hv = grad(dot, params, { allowUnused: true });
  return hv.map((h, i) => h ?? zero(i));
}
