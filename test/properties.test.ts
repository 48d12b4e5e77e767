/** Property-based checks (fast-check) of broadcasting and shape errors against a direct model. */
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';

beforeAll(async () => {
  await fg.init({ backend: 'cpu' });
});

const dim = fc.integer({ min: 1, max: 4 });
const shape = fc.array(dim, { minLength: 0, maxLength: 4 });

/** NumPy's rule, written independently of src/tensor/shape.ts. */
function numpyBroadcast(a: number[], b: number[]): number[] | null {
  const out: number[] = [];
  for (let i = 1; i <= Math.max(a.length, b.length); i++) {
    const x = a[a.length - i] ?? 1;
    const y = b[b.length - i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) return null;
    out.unshift(Math.max(x, y));
  }
  return out;
}

const fill = (s: number[], seed: number) => {
  const n = s.reduce((p, d) => p * d, 1);
  return fg.tensor(Float64Array.from({ length: n }, (_, i) => ((i * 7 + seed) % 11) - 5), { shape: s, dtype: 'float64' });
};

describe('broadcasting properties', () => {
  it('add broadcasts exactly when NumPy does, to NumPy\'s shape, with the right values', () => {
    fc.assert(
      fc.property(shape, shape, (sa, sb) => {
        const expected = numpyBroadcast(sa, sb);
        const a = fill(sa, 1);
        const b = fill(sb, 2);
        if (!expected) {
          expect(() => a.add(b)).toThrow(/cannot be broadcast/);
          return;
        }
        const c = a.add(b);
        expect(c.shape).toEqual(expected);
        // Check every element against index arithmetic.
        const A = a.dataSync();
        const B = b.dataSync();
        const C = c.dataSync();
        const idxOf = (flat: number, s: number[], full: number[]) => {
          let off = 0;
          let stride = 1;
          let rem = flat;
          const coords: number[] = [];
          for (let i = full.length - 1; i >= 0; i--) {
            coords[i] = rem % full[i];
            rem = Math.floor(rem / full[i]);
          }
          for (let i = s.length - 1; i >= 0; i--) {
            const c0 = coords[full.length - s.length + i];
            off += (s[i] === 1 ? 0 : c0) * stride;
            stride *= s[i];
          }
          return off;
        };
        for (let i = 0; i < C.length; i++) expect(C[i]).toBe(A[idxOf(i, sa, expected)] + B[idxOf(i, sb, expected)]);
      }),
      { numRuns: 150 },
    );
  });

  it('gradients of broadcast ops have the operand shapes and count the broadcast copies', () => {
    fc.assert(
      fc.property(shape, shape, (sa, sb) => {
        if (!numpyBroadcast(sa, sb)) return;
        const a = fill(sa, 3).requiresGrad_();
        const b = fill(sb, 4).requiresGrad_();
        const out = a.mul(b);
        out.sum().backward();
        expect(a.grad!.shape).toEqual(sa);
        expect(b.grad!.shape).toEqual(sb);
        // d/da sum(a*b) = sum of b over the positions a is broadcast to.
        const expectA = fill(sb, 4).broadcastTo(out.shape).sum(
          out.shape.map((_, i) => i).filter((i) => i < out.ndim - sa.length || sa[i - (out.ndim - sa.length)] === 1),
          true,
        );
        expect(Array.from(a.grad!.dataSync())).toEqual(Array.from(expectA.dataSync()));
      }),
      { numRuns: 150 },
    );
  });

  it('reshape accepts exactly the shapes with the same element count', () => {
    fc.assert(
      fc.property(shape, shape, (s, t) => {
        const x = fill(s, 0);
        const same = s.reduce((p, d) => p * d, 1) === t.reduce((p, d) => p * d, 1);
        if (same) expect(x.reshape(t).shape).toEqual(t);
        else expect(() => x.reshape(t)).toThrow(/reshape: shape/);
      }),
    );
  });

  it('matmul shape errors name both shapes', () => {
    fc.assert(
      fc.property(dim, dim, dim, dim, (m, k1, k2, n) => {
        const a = fill([m, k1], 0);
        const b = fill([k2, n], 0);
        if (k1 === k2) expect(fg.matmul(a, b).shape).toEqual([m, n]);
        else expect(() => fg.matmul(a, b)).toThrow(`matmul: [${m},${k1}] @ [${k2},${n}]: inner dims ${k1} and ${k2} differ`);
      }),
    );
  });
});
