/**
 * BatchNorm2d's gradients with respect to its input, weight and bias, and its double backward
 * (the sharpness tools take Hessian-vector products through it), against float64 central
 * differences on the CPU backend; train mode (batch statistics) and eval mode (running ones).
 * The layer folds its weight into 1/std on the [C] statistics, so weight and bias are checked
 * as inputs of the function, not as constants.
 */
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';

const input = (shape: number[]) => fg.randn(shape, { dtype: 'float64' }).detach().requiresGrad_();

/** y = BatchNorm2d(x) with the given weight and bias tensors in place of the layer's parameters. */
function withParams(bn: fg.nn.BatchNorm2d) {
  return (x: fg.Tensor, w: fg.Tensor, b: fg.Tensor) => {
    Object.assign(bn, { weight: w, bias: b });
    return bn.forward(x);
  };
}

describe('BatchNorm2d gradients (float64, cpu)', () => {
  it('train mode: input, weight and bias, and the double backward', () => {
    const bn = new fg.nn.BatchNorm2d(3, { dtype: 'float64', trackRunningStats: false });
    const fn = withParams(bn);
    const xs = [input([4, 3, 2, 3]), input([3]), input([3])];
    expect(fg.gradcheck(fn, xs)).toBe(true);
    expect(fg.gradgradcheck(fn, xs, { atol: 1e-4, rtol: 1e-3 })).toBe(true);
  });

  it('eval mode (running statistics): input, weight and bias', () => {
    const bn = new fg.nn.BatchNorm2d(2, { dtype: 'float64' });
    fg.noGrad(() => bn.forward(fg.randn([5, 2, 3, 3], { dtype: 'float64' }).mul(2).add(1)));
    bn.eval();
    const fn = withParams(bn);
    expect(fg.gradcheck(fn, [input([3, 2, 2, 2]), input([2]), input([2])])).toBe(true);
  });

  it('without affine parameters the output is (x - mean) / std per channel', () => {
    const bn = new fg.nn.BatchNorm2d(2, { dtype: 'float64', affine: false, trackRunningStats: false });
    const x = fg.randn([3, 2, 2, 2], { dtype: 'float64' });
    const y = bn.forward(x).arraySync() as number[][][][];
    const xv = x.arraySync() as number[][][][];
    for (let c = 0; c < 2; c++) {
      const vals = xv.flatMap((img) => img[c].flat());
      const mu = vals.reduce((s, v) => s + v, 0) / vals.length;
      const sd = Math.sqrt(vals.reduce((s, v) => s + (v - mu) ** 2, 0) / vals.length + 1e-5);
      xv.forEach((img, n) => img[c].flat().forEach((v, i) => expect(y[n][c].flat()[i]).toBeCloseTo((v - mu) / sd, 12)));
    }
  });
});
