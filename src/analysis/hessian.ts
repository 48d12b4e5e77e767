/**
 * Hessian spectrum tools on exact Hessian-vector products (double backward): the top-k
 * eigenvalues by power iteration with deflation, and Hutchinson's trace estimate.
 */
import { hvp } from '../autograd/hvp.js';
import { noGrad } from '../tensor/graph.js';
import { randint } from '../tensor/random.js';
import { Tensor, tidy, dispose } from '../tensor/tensor.js';
import { addScaled, dot, gaussianLike, norm, scaled, type LossFn } from './vectors.js';

export interface PowerIterationOptions {
  /** How many eigenvalues (largest first, by deflation). */
  k?: number;
  maxIter?: number;
  /**
   * Stop when |lambda_t - lambda_{t-1}| <= tol |lambda_t| and ||H v - lambda v|| <= sqrt(tol) |lambda|.
   * The change alone can stall long before convergence when two eigenvalues are close; the
   * residual bounds the error, and the Rayleigh quotient's error is of the order of its square.
   */
  tol?: number;
}

export interface EigenResult {
  eigenvalues: number[];
  /** Unit eigenvectors, one list of tensors (shaped like params) per eigenvalue. */
  eigenvectors: Tensor[][];
  iterations: number[];
  /** ||H v - lambda v|| / |lambda| at the last iteration: small means converged. */
  residuals: number[];
}

/** v - sum_j (v . u_j) u_j, one deflation pass. */
async function deflate(v: Tensor[], basis: Tensor[][]): Promise<Tensor[]> {
  let cur = v;
  for (const u of basis) {
    const c = await dot(cur, u);
    const next = addScaled(cur, u, -c);
    if (cur !== v) dispose(cur);
    cur = next;
  }
  return cur === v ? tidy(() => v.map((x) => x.clone())) : cur;
}

async function normalize(v: Tensor[]): Promise<[Tensor[], number]> {
  const n = await norm(v);
  if (!(n > 0)) throw new Error('power iteration: the vector vanished (the Hessian maps it to zero)');
  return [scaled(v, 1 / n), n];
}

/**
 * Largest-magnitude eigenvalues of the Hessian of loss(...params) at params (power iteration;
 * deflation against the eigenvectors already found). Vectors start from the seeded generator.
 */
export async function hessianEigenvalues(loss: LossFn, params: Tensor[], opts: PowerIterationOptions = {}): Promise<EigenResult> {
  const k = opts.k ?? 1;
  const maxIter = opts.maxIter ?? 1000;
  const tol = opts.tol ?? 1e-10;
  const size = params.reduce((a, p) => a + p.size, 0);
  if (!(Number.isInteger(k) && k >= 1 && k <= size)) {
    throw new RangeError(`hessianEigenvalues: k must be an integer from 1 to the parameter count (${size}), got ${k}`);
  }
  const result: EigenResult = { eigenvalues: [], eigenvectors: [], iterations: [], residuals: [] };
  for (let e = 0; e < k; e++) {
    // Start orthogonal to the eigenvectors found, so that an eigenvalue-0 answer (H v = 0 at
    // once) still comes with a vector of the remaining space.
    const draw = gaussianLike(params);
    const start = await deflate(draw, result.eigenvectors);
    dispose(draw);
    let [v] = await normalize(start);
    dispose(start);
    let lambda = NaN;
    let residual = Infinity;
    let it = 0;
    for (; it < maxIter; it++) {
      const hv = tidy(() => hvp(loss, params, v).map((t) => t.detach()));
      const defl = await deflate(hv, result.eigenvectors);
      dispose(hv);
      if ((await norm(defl)) === 0) {
        // H v = 0 exactly (a zero Hessian, or nothing left after deflation): v is an eigenvector
        // with eigenvalue 0, as torch.linalg.eigvalsh would report, not a failed iteration.
        dispose(defl);
        lambda = 0;
        residual = 0;
        break;
      }
      const next = await dot(v, defl);
      const r = addScaled(defl, v, -next);
      residual = (await norm(r)) / Math.abs(next);
      dispose(r);
      const [nv] = await normalize(defl);
      dispose(defl);
      dispose(v);
      v = nv;
      const done = Math.abs(next - lambda) <= tol * Math.abs(next) && residual <= Math.sqrt(tol);
      lambda = next;
      if (done) break;
    }
    result.eigenvalues.push(lambda);
    result.eigenvectors.push(v.map((t) => t.keep()));
    result.iterations.push(Math.min(it + 1, maxIter));
    result.residuals.push(residual);
  }
  return result;
}

/** Hutchinson's estimate of tr(H): the mean of v^T H v over Rademacher vectors v. */
export async function hessianTrace(loss: LossFn, params: Tensor[], samples = 100): Promise<{ mean: number; std: number }> {
  const vals: number[] = [];
  for (let s = 0; s < samples; s++) {
    const v = noGrad(() => tidy(() => params.map((p) => randint(0, 2, p.shape.slice()).mul(2).sub(1).to(p.dtype))));
    const hv = tidy(() => hvp(loss, params, v).map((t) => t.detach()));
    vals.push(await dot(v, hv));
    dispose(v);
    dispose(hv);
  }
  const mean = vals.reduce((a, b) => a + b, 0) / vals.length;
  const std = Math.sqrt(vals.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(vals.length - 1, 1));
  return { mean, std: std / Math.sqrt(vals.length) };
}
