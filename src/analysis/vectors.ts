/**
 * A list of tensors shaped like a model's parameters, treated as one vector: the arithmetic the
 * analysis tools need, and in-place moves of the parameters themselves (w <- w0 + a d) that
 * leave no graph behind and allocate nothing.
 */
import { grad } from '../autograd/engine.js';
import { zerosLike } from '../tensor/creation.js';
import { noGrad } from '../tensor/graph.js';
import { randn } from '../tensor/random.js';
import { Tensor, tidy } from '../tensor/tensor.js';

/** A scalar loss of the parameters. It may ignore its arguments and read the same tensors from a model. */
export type LossFn = (...params: Tensor[]) => Tensor;

export async function readScalar(t: Tensor): Promise<number> {
  try {
    return await t.item();
  } finally {
    t.dispose();
  }
}

export function dot(a: Tensor[], b: Tensor[]): Promise<number> {
  return readScalar(
    tidy(() => a.reduce<Tensor | null>((acc, x, i) => {
      const term = x.mul(b[i]).sum();
      return acc ? acc.add(term) : term;
    }, null)!),
  );
}

export async function norm(v: Tensor[]): Promise<number> {
  return Math.sqrt(await dot(v, v));
}

/** A new vector: v * s. */
export function scaled(v: Tensor[], s: number): Tensor[] {
  return tidy(() => v.map((x) => x.mul(s)));
}

/** A new vector: a + s * b. */
export function addScaled(a: Tensor[], b: Tensor[], s: number): Tensor[] {
  return tidy(() => a.map((x, i) => x.add(b[i].mul(s))));
}

/** Copies of the parameters' current values, to move them and come back exactly. */
export function snapshot(params: Tensor[]): Tensor[] {
  return noGrad(() => tidy(() => params.map((p) => p.detach().clone())));
}

/** Sets each parameter's storage to origin + sum of alpha * direction over `terms` (no graph, no allocation). */
export function moveTo(params: Tensor[], origin: Tensor[], ...terms: [direction: Tensor[], alpha: number][]): void {
  params.forEach((p, i) => {
    const n = p.size;
    p.backend.stridedCopy(origin[i].storage, p.storage, { shape: [n], srcStrides: [1], srcOffset: 0, dstStrides: [1], dstOffset: 0 });
    for (const [direction, alpha] of terms) if (alpha !== 0) p.backend.axpy(p.storage, direction[i].storage, alpha);
  });
}

/** The loss at the parameters' current values, without a graph. */
export function lossValue(loss: LossFn, params: Tensor[]): Promise<number> {
  return readScalar(noGrad(() => tidy(() => loss(...params).detach())));
}

/** The loss and its gradient (zeros for parameters the loss does not use) at the current values. */
export async function lossAndGrad(loss: LossFn, params: Tensor[]): Promise<{ value: number; grads: Tensor[] }> {
  const [l, ...grads] = tidy(() => {
    const out = loss(...params);
    const gs = grad(out, params, { allowUnused: true });
    return [out.detach(), ...gs.map((g, i) => (g ? g.detach() : zerosLike(params[i])))];
  });
  return { value: await readScalar(l), grads };
}

/** A standard normal vector shaped like params, from the seeded global generator. */
export function gaussianLike(params: Tensor[]): Tensor[] {
  return noGrad(() => tidy(() => params.map((p) => randn(p.shape.slice(), { dtype: p.dtype }))));
}
