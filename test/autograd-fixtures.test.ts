/**
 * The foundation against PyTorch: each reference MLP, loaded with the fixture's weights,
 * reproduces the initial loss, the gradient norm and (with the .hvp.json oracle) the Hessian's
 * top eigenvalue by power iteration on exact Hessian-vector products.
 */
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { hessianEigenvalues } from '../src/analysis/hessian.js';
import { batches, caseLoss, caseNames, caseParams, close, loadCase, TOL } from './helpers/sam-fixture.js';

const names = caseNames();

describe.each(names)('fixture %s', (name) => {
  const { spec, result, hvp } = loadCase(name);
  for (const dtype of ['float64', 'float32'] as const) {
    it(`${dtype}: initial loss and gradient norm match PyTorch`, () => {
      const params = caseParams(spec, dtype);
      const loss = caseLoss(spec, batches(spec)[0], dtype)(...params);
      const ref = result.float64;
      expect(close(loss.itemSync(), ref.initial_loss, TOL[dtype].loss), `loss ${loss.itemSync()} vs ${ref.initial_loss}`).toBe(true);
      loss.backward();
      const sq = params.reduce((a, p) => a + Array.from(p.grad!.dataSync()).reduce((s, v) => s + v * v, 0), 0);
      const norm = Math.sqrt(sq);
      expect(close(norm, ref.steps[0].raw_grad_norm, TOL[dtype].loss), `grad norm ${norm} vs ${ref.steps[0].raw_grad_norm}`).toBe(true);
      fg.dispose(params);
    });
  }
  if (hvp) {
    it('float64: power iteration on hvp reproduces the Hessian top eigenvalue', async () => {
      fg.manualSeed(0);
      const params = caseParams(spec, 'float64');
      const point = hvp.points[0];
      const f = caseLoss(spec, batches(spec)[hvp.batch_index ?? 0], 'float64');
      const { eigenvalues } = await hessianEigenvalues(f, params, { k: 1, tol: 1e-13, maxIter: 2000 });
      expect(Math.abs(eigenvalues[0] - point.exact.lambda_max)).toBeLessThan(1e-8 * Math.abs(point.exact.lambda_max));
    });
    it('float64: hvp matches a central difference of gradients', () => {
      fg.manualSeed(1);
      const params = caseParams(spec, 'float64');
      const f = caseLoss(spec, batches(spec)[0], 'float64');
      const v = params.map((p) => fg.randn(p.shape, { dtype: 'float64' }));
      const hv = fg.hvp(f, params, v).map((t) => Array.from(t.dataSync()));
      const gradAt = (sign: number, h: number) => {
        const shifted = params.map((p, i) => p.detach().add(v[i].mul(sign * h)).requiresGrad_());
        return fg.grad(f(...shifted), shifted).map((g) => Array.from(g!.dataSync()));
      };
      const h = 1e-5;
      const gp = gradAt(1, h);
      const gm = gradAt(-1, h);
      hv.forEach((row, i) => row.forEach((val, j) => expect(val).toBeCloseTo((gp[i][j] - gm[i][j]) / (2 * h), 6)));
    });
  }
});
