/**
 * rho-sharpness (Foret et al. 2021, eq. 1; Keskar et al. 2017): max over ||e|| <= rho of
 * L(w + e) - L(w), estimated by projected gradient ascent on e.
 */
import { dispose, type Tensor } from '../tensor/tensor.js';
import { addScaled, gaussianLike, lossAndGrad, lossValue, moveTo, norm, scaled, snapshot, type LossFn } from './vectors.js';

export interface RhoSharpnessOptions {
  /** Ascent steps after the first (SAM's) perturbation rho * g / ||g||; 0 gives SAM's one-step estimate. */
  steps?: number;
  /** Length of each ascent step as a fraction of rho (steps follow the normalized gradient). */
  lr?: number;
}

export interface RhoSharpnessResult {
  /** max L(w + e) - L(w) over the perturbations tried (a lower bound on the true maximum). */
  sharpness: number;
  loss: number;
  perturbedLoss: number;
  /** ||e|| of the best perturbation (rho unless the ascent stopped inside the ball). */
  perturbationNorm: number;
  /** Loss evaluations at perturbed points. */
  evaluations: number;
}

function checkRho(rho: number): void {
  if (!(Number.isFinite(rho) && rho >= 0)) throw new RangeError(`rhoSharpness: rho must be a non-negative finite number, got ${rho}`);
}

/**
 * Starts from e = rho * g / ||g|| (a seeded random direction where g = 0, since the gradient then
 * says nothing about which way is up), then repeats e <- P(e + lr * rho * g_e / ||g_e||), P the
 * projection onto the ball, keeping the best value. The parameters are restored exactly.
 */
export async function rhoSharpness(loss: LossFn, params: Tensor[], rho: number, opts: RhoSharpnessOptions = {}): Promise<RhoSharpnessResult> {
  checkRho(rho);
  const steps = opts.steps ?? 10;
  const lr = opts.lr ?? 1;
  if (!(Number.isInteger(steps) && steps >= 0)) throw new RangeError(`rhoSharpness: steps must be a non-negative integer, got ${steps}`);
  if (!(Number.isFinite(lr) && lr > 0)) throw new RangeError(`rhoSharpness: lr must be a positive number, got ${lr}`);

  const origin = snapshot(params);
  let e: Tensor[] = [];
  try {
    const base = await lossAndGrad(loss, params);
    if (rho === 0) {
      dispose(base.grads);
      return { sharpness: 0, loss: base.value, perturbedLoss: base.value, perturbationNorm: 0, evaluations: 0 };
    }
    let ascent = base.grads;
    let ascentNorm = await norm(ascent);
    if (!(ascentNorm > 0)) {
      dispose(ascent);
      ascent = gaussianLike(params);
      ascentNorm = await norm(ascent);
    }
    e = scaled(ascent, rho / ascentNorm);
    dispose(ascent);
    let best = { value: -Infinity, norm: 0 };
    let evaluations = 0;
    for (let t = 0; t <= steps; t++) {
      moveTo(params, origin, [e, 1]);
      const climbing = t < steps;
      const at = climbing ? await lossAndGrad(loss, params) : { value: await lossValue(loss, params), grads: [] };
      evaluations++;
      if (at.value > best.value) best = { value: at.value, norm: await norm(e) };
      if (!climbing) break;
      const gNorm = await norm(at.grads);
      if (!(gNorm > 0)) {
        // A stationary point of the perturbed loss: there is nothing left to climb.
        dispose(at.grads);
        break;
      }
      const stepped = addScaled(e, at.grads, (lr * rho) / gNorm);
      dispose([e, at.grads]);
      const stepNorm = await norm(stepped);
      e = stepNorm > rho ? scaled(stepped, rho / stepNorm) : stepped;
      if (e !== stepped) dispose(stepped);
    }
    return { sharpness: best.value - base.value, loss: base.value, perturbedLoss: best.value, perturbationNorm: best.norm, evaluations };
  } finally {
    moveTo(params, origin);
    dispose([origin, e]);
  }
}
