import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';

describe('smoke', () => {
  it('computes and differentiates', () => {
    const a = fg.tensor([[1, 2], [3, 4]], { requiresGrad: true });
    const b = fg.tensor([1, -1]);
    const y = a.matmul(b.reshape(2, 1)).relu().sum();
    y.backward();
    expect(y.itemSync()).toBe(0);
    expect(Array.from(a.grad!.dataSync())).toEqual([0, 0, 0, 0]);
    const z = a.mul(a).sum();
    a.grad = null;
    z.backward();
    expect(Array.from(a.grad!.dataSync())).toEqual([2, 4, 6, 8]);
  });
});
