/** torch.nn.utils.clip_grad_norm_: scales the gradients so that their global norm is at most maxNorm. */
import { fmt } from '../tensor/shape.js';
import { Tensor, tidy } from '../tensor/tensor.js';
import { noGrad } from '../tensor/graph.js';
import { add, minimum, mul, reciprocal } from '../tensor/ops/elementwise.js';
import { sqrt } from '../tensor/ops/elementwise.js';
import { sum } from '../tensor/ops/reduce.js';
import { stack } from '../tensor/ops/shape.js';
import { S_TMP2, S_TMP3, slot } from '../kernels/fused.js';
import { copyInto } from '../nn/module.js';
import type { Optimizer } from './optimizer.js';

/**
 * Per tensor: total = ||all grads||, coef = min(1, maxNorm / (total + 1e-6)), g *= coef in place
 * (a gradient that is a view into an optimizer's arena stays one). Returns the total norm as a
 * 0-d tensor on the device (no readback). For parameters in a fused optimizer,
 * `clipGradNormFused(optimizer, maxNorm)` does the same in two kernels.
 */
export function clipGradNorm(params: Iterable<Tensor>, maxNorm: number): Tensor {
  if (!(maxNorm > 0) || !Number.isFinite(maxNorm)) throw new RangeError(`clipGradNorm: maxNorm must be a positive finite number, got ${maxNorm}`);
  const grads = [...params].map((p) => p.grad).filter((g): g is Tensor => !!g && !g.isDisposed);
  if (grads.length === 0) throw new Error('clipGradNorm: no parameter has a gradient');
  return noGrad(() => {
    const total = tidy(() => sqrt(sum(stack(grads.map((g) => sum(g.square()))))));
    tidy(() => {
      const coef = minimum(mul(reciprocal(add(total, 1e-6)), maxNorm), 1);
      for (const g of grads) {
        if (g.dtype !== total.dtype) throw new TypeError(`clipGradNorm: gradients of mixed dtypes (${g.dtype}, ${total.dtype}) ${fmt(g.shape)}`);
        copyInto(g, mul(g, coef));
      }
    });
    return total;
  });
}

/** clipGradNorm over an optimizer's gradients as two fused kernels; returns nothing (the norm stays in its scalars). */
export function clipGradNormFused(opt: Optimizer, maxNorm: number): void {
  if (!(maxNorm > 0) || !Number.isFinite(maxNorm)) throw new RangeError(`clipGradNorm: maxNorm must be a positive finite number, got ${maxNorm}`);
  const e = opt.engine;
  e.prepare();
  e.norm('g', S_TMP3, { then: [{ dst: S_TMP2, e: ['min', 1, ['/', maxNorm, ['+', slot(S_TMP3), 1e-6]]] }] });
  e.lincomb('g', { c: 1, slot: S_TMP2 }, []);
}
