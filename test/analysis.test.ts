import { beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import {
  evaluate, filterNormalizedDirection, hessianEigenvalues, hessianTrace, landscape1d, landscape2d, rhoSharpness,
} from '../src/analysis/index.js';

/** L(w) = 1/2 w^T A w + b^T w on the CPU backend in float64: every quantity has a closed form. */
interface Quadratic {
  A: number[][];
  b: number[];
  w: fg.Tensor;
  loss: (w: fg.Tensor) => fg.Tensor;
}

function quadratic(A: number[][], b: number[], w0: number[]): Quadratic {
  const n = b.length;
  const At = fg.tensor(A, { dtype: 'float64' });
  const bt = fg.tensor(b, { dtype: 'float64' });
  const w = fg.tensor(w0, { dtype: 'float64', requiresGrad: true });
  const loss = (x: fg.Tensor) => x.mul(At.matmul(x.reshape(n, 1)).reshape(n)).sum().mul(0.5).add(x.mul(bt).sum());
  return { A, b, w, loss };
}

const matVec = (A: number[][], v: number[]) => A.map((row) => row.reduce((s, a, j) => s + a * v[j], 0));
const dotArr = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i], 0);
const gradientAt = (q: Quadratic, w: number[]) => matVec(q.A, w).map((v, i) => v + q.b[i]);

/** A = Q diag(lambdas) Q^T with Q a Householder reflection: a symmetric matrix of known spectrum. */
function withSpectrum(lambdas: number[], u: number[]): { A: number[][]; Q: number[][] } {
  const nu = Math.sqrt(dotArr(u, u));
  const Q = u.map((ui) => u.map((uj) => -2 * (ui / nu) * (uj / nu)));
  Q.forEach((row, i) => (row[i] += 1));
  const A = Q.map((_, i) => Q.map((__, j) => lambdas.reduce((s, l, k) => s + Q[i][k] * l * Q[j][k], 0)));
  return { A, Q };
}

/**
 * max g.e + 1/2 e^T A e over ||e|| <= rho for positive definite A (the trust-region problem):
 * e = (mu I - A)^-1 g with mu > lambda_max chosen so that ||e|| = rho, found by bisection.
 */
function trustRegionMax(lambdas: number[], gEigen: number[], rho: number): number {
  const eNorm = (mu: number) => Math.sqrt(gEigen.reduce((s, g, i) => s + (g / (mu - lambdas[i])) ** 2, 0));
  const top = Math.max(...lambdas);
  let lo = top + 1e-12;
  let hi = top + Math.sqrt(dotArr(gEigen, gEigen)) / rho + 1;
  for (let it = 0; it < 200; it++) {
    const mid = (lo + hi) / 2;
    if (eNorm(mid) > rho) lo = mid;
    else hi = mid;
  }
  const mu = (lo + hi) / 2;
  return gEigen.reduce((s, g, i) => {
    const e = g / (mu - lambdas[i]);
    return s + g * e + 0.5 * lambdas[i] * e * e;
  }, 0);
}

beforeAll(async () => {
  await fg.init({ backend: 'cpu' });
  fg.manualSeed(7);
});

describe('rhoSharpness', () => {
  it('is rho ||g|| + rho^2 lambda / 2 when the gradient lies along an eigenvector', async () => {
    const q = quadratic([[4, 0, 0], [0, 1, 0], [0, 0, 0.5]], [0, 0, 0], [0.5, 0, 0]);
    // g = A w = (2, 0, 0): e = rho * e1 is the maximizer, found by the first (SAM) step already.
    const rho = 0.1;
    const r = await rhoSharpness(q.loss, [q.w], rho, { steps: 0 });
    expect(r.sharpness).toBeCloseTo(rho * 2 + (rho * rho * 4) / 2, 12);
    expect(r.perturbationNorm).toBeCloseTo(rho, 12);
    expect(r.loss).toBeCloseTo(0.5, 12);
  });

  it('matches the exact trust-region maximum of a general quadratic', async () => {
    const lambdas = [3, 1.5, 0.7, 0.2];
    const { A, Q } = withSpectrum(lambdas, [1, 2, -1, 0.5]);
    const w0 = [0.3, -0.2, 0.1, 0.4];
    const q = quadratic(A, [0.1, 0, -0.3, 0.2], w0);
    const g = gradientAt(q, w0);
    const gEigen = lambdas.map((_, k) => Q.reduce((s, row, i) => s + row[k] * g[i], 0));
    for (const rho of [0.05, 0.5, 2]) {
      const r = await rhoSharpness(q.loss, [q.w], rho, { steps: 60 });
      const exact = trustRegionMax(lambdas, gEigen, rho);
      expect(r.sharpness).toBeLessThanOrEqual(exact + 1e-12);
      expect(r.sharpness).toBeCloseTo(exact, 8);
    }
  });

  it('climbs from a random direction at a minimum: rho^2 lambda_max / 2', async () => {
    const q = quadratic([[4, 0, 0], [0, 1, 0], [0, 0, 0.5]], [0, 0, 0], [0, 0, 0]);
    const r = await rhoSharpness(q.loss, [q.w], 0.3, { steps: 80 });
    expect(r.sharpness).toBeCloseTo((0.3 * 0.3 * 4) / 2, 8);
  });

  it('leaves the parameters exactly where they were, and rho = 0 gives 0', async () => {
    const q = quadratic([[2, 1], [1, 3]], [1, -1], [0.25, -0.75]);
    await rhoSharpness(q.loss, [q.w], 0.5, { steps: 5 });
    expect(Array.from(q.w.dataSync())).toEqual([0.25, -0.75]);
    expect((await rhoSharpness(q.loss, [q.w], 0)).sharpness).toBe(0);
    await expect(rhoSharpness(q.loss, [q.w], -1)).rejects.toThrow(/rho must be a non-negative/);
  });
});

describe('landscape', () => {
  const A = [[2, 0.5, 0], [0.5, 1, 0.2], [0, 0.2, 3]];
  const b = [0.1, -0.2, 0.3];
  const w0 = [0.5, -1, 0.25];
  const exactLoss = (w: number[]) => 0.5 * dotArr(w, matVec(A, w)) + dotArr(b, w);
  const along = (terms: [number[], number][]) => w0.map((v, i) => terms.reduce((s, [d, a]) => s + a * d[i], v));

  it('is the parabola L(w) + a g.d + a^2 d^T A d / 2 along a direction', async () => {
    const q = quadratic(A, b, w0);
    const d = [1, 0.5, -2];
    const r = await landscape1d(q.loss, [q.w], { direction: [fg.tensor(d, { dtype: 'float64' })], range: [-2, 2], points: 9 });
    expect(r.alphas).toEqual([-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2]);
    const g = gradientAt(q, w0);
    r.alphas.forEach((a, i) => {
      expect(r.losses[i]).toBeCloseTo(exactLoss(w0) + a * dotArr(g, d) + 0.5 * a * a * dotArr(d, matVec(A, d)), 12);
    });
    expect(Array.from(q.w.dataSync())).toEqual(w0);
  });

  it('2-D slices: losses[j][i] is the loss at w + xs[i] d1 + ys[j] d2', async () => {
    const q = quadratic(A, b, w0);
    const d1 = [1, 0, 0];
    const d2 = [0, 1, 1];
    const r = await landscape2d(q.loss, [q.w], {
      directions: [[fg.tensor(d1, { dtype: 'float64' })], [fg.tensor(d2, { dtype: 'float64' })]],
      range: [-1, 1], yRange: [0, 2], points: 5,
    });
    expect(r.ys).toEqual([0, 0.5, 1, 1.5, 2]);
    r.ys.forEach((y, j) => r.xs.forEach((x, i) => expect(r.losses[j][i]).toBeCloseTo(exactLoss(along([[d1, x], [d2, y]])), 12)));
  });

  it('filter normalization gives each filter the norm of the weight filter, and biases no direction', async () => {
    const weight = fg.randn([4, 3, 2, 2], { dtype: 'float64' }).mul(fg.tensor([1, 2, 0.5, 3], { dtype: 'float64' }).reshape(4, 1, 1, 1));
    const bias = fg.randn([4], { dtype: 'float64' });
    const [dw, db] = filterNormalizedDirection([weight, bias]);
    const rowNorms = (t: fg.Tensor) => Array.from(t.reshape(4, 12).square().sum(1).sqrt().dataSync());
    rowNorms(dw).forEach((n, i) => expect(n).toBeCloseTo(rowNorms(weight)[i], 8));
    expect(Array.from(db.dataSync())).toEqual([0, 0, 0, 0]);
    expect(dw.shape).toEqual([4, 3, 2, 2]);
  });
});

describe('Hessian spectrum of a quadratic', () => {
  it('finds the top eigenvalues by deflation and the exact trace', async () => {
    const lambdas = [5, -3, 2, 1, 0.5];
    const { A } = withSpectrum(lambdas, [1, -1, 2, 0.5, 1]);
    const q = quadratic(A, [0, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.5]);
    const eig = await hessianEigenvalues(q.loss, [q.w], { k: 2, maxIter: 500, tol: 1e-12 });
    expect(eig.eigenvalues[0]).toBeCloseTo(5, 6);
    expect(eig.eigenvalues[1]).toBeCloseTo(-3, 6);
    fg.dispose(eig.eigenvectors);
    // Rademacher probes of a diagonal matrix give v^T D v = tr(D) exactly, sample by sample.
    const diag = quadratic([[5, 0, 0], [0, -3, 0], [0, 0, 2]], [0, 0, 0], [1, 1, 1]);
    const tr = await hessianTrace(diag.loss, [diag.w], 5);
    expect(tr.mean).toBeCloseTo(4, 12);
    expect(tr.std).toBeCloseTo(0, 12);
    const general = await hessianTrace(q.loss, [q.w], 400);
    expect(Math.abs(general.mean - 5.5)).toBeLessThan(4 * general.std + 1e-9);
  });
});

describe('Hessian spectrum at the edges', () => {
  it('reports eigenvalue 0 for a zero Hessian instead of failing', async () => {
    // A linear loss: H = 0, so H v = 0 for every v.
    const w = fg.tensor([0.5, -1, 2], { dtype: 'float64', requiresGrad: true });
    const c = fg.tensor([1, 2, 3], { dtype: 'float64' });
    const eig = await hessianEigenvalues((x) => x.mul(c).sum(), [w], { k: 2 });
    expect(eig.eigenvalues).toEqual([0, 0]);
    expect(eig.residuals).toEqual([0, 0]);
    // The two vectors are unit and orthogonal: the second was drawn orthogonal to the first.
    const [u, v] = eig.eigenvectors.map((t) => Array.from(t[0].dataSync()));
    expect(dotArr(u, u)).toBeCloseTo(1, 12);
    expect(dotArr(v, v)).toBeCloseTo(1, 12);
    expect(dotArr(u, v)).toBeCloseTo(0, 12);
    fg.dispose(eig.eigenvectors);
  });

  it('returns 0 after the rank of the Hessian is exhausted, with a vector of the null space', async () => {
    // Rank one: H = a a^T, eigenvalue |a|^2 = 9 along a, 0 on the plane orthogonal to a.
    const a = [1, 2, 2];
    const q = quadratic(a.map((x) => a.map((y) => x * y)), [0, 0, 0], [0.3, -0.1, 0.2]);
    const eig = await hessianEigenvalues(q.loss, [q.w], { k: 2, maxIter: 500, tol: 1e-12 });
    expect(eig.eigenvalues[0]).toBeCloseTo(9, 8);
    expect(eig.eigenvalues[1]).toBe(0);
    expect(dotArr(Array.from(eig.eigenvectors[1][0].dataSync()), a)).toBeCloseTo(0, 10);
    fg.dispose(eig.eigenvectors);
  });

  it('names k and the parameter count when k is out of range', async () => {
    const q = quadratic([[1, 0], [0, 2]], [0, 0], [1, 1]);
    await expect(hessianEigenvalues(q.loss, [q.w], { k: 3 })).rejects.toThrow(/k must be an integer from 1 to the parameter count \(2\), got 3/);
    await expect(hessianEigenvalues(q.loss, [q.w], { k: 0 })).rejects.toThrow(/got 0/);
  });
});

describe('evaluate', () => {
  it('reports the mean loss and accuracy over batches, in eval mode', async () => {
    // logits = x: the prediction is the argmax of the input row.
    const modes: string[] = [];
    const model = {
      training: true,
      forward: (x: fg.Tensor) => x,
      eval() { modes.push('eval'); this.training = false; },
      train(mode = true) { modes.push(`train:${mode}`); this.training = mode; },
    };
    const x = new Float32Array([2, 0, 0, 3, 1, 0]);
    const batches = [
      { x: x.subarray(0, 4), xShape: [2, 2], y: new Int32Array([0, 0]) },
      { x: x.subarray(4), xShape: [1, 2], y: new Int32Array([0]) },
    ];
    const r = await evaluate(model, batches);
    const ce = (row: number[], y: number) => Math.log(row.reduce((s, v) => s + Math.exp(v), 0)) - row[y];
    expect(r.n).toBe(3);
    expect(r.accuracy).toBeCloseTo(2 / 3, 12);
    expect(r.loss).toBeCloseTo((ce([2, 0], 0) + ce([0, 3], 0) + ce([1, 0], 0)) / 3, 5);
    expect(modes).toEqual(['eval', 'train:true']);
  });
});
