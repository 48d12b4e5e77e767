/**
 * The wasm attention's scores, bit for bit (src/kernels/wasm/attention.ts attn_scores): scale *
 * (q . k) with the dot summed in float32 in feature order and the scale applied to the rounded
 * sum (as the composition's mul after its matmul), the scale multiplied in on the way to the store.
 * Seen through the kernel's fall-back: a non-finite score anywhere makes it store the raw scaled
 * scores and run the softmax kernel over every row, so each row of probabilities must equal the
 * softmax kernel over scores computed here with Math.fround.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AttentionLayout, Backend } from '../src/kernels/backend.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { rng } from './helpers/random.js';

/** [n, heads, l, s, d, packed] (packed: one [n, l, 3 * heads * d] projection, s = l). */
const SHAPES: [number, number, number, number, number, boolean][] = [
  [3, 4, 17, 17, 8, true], // the ViT's blocks
  [2, 3, 5, 7, 5, false],
  [1, 2, 9, 6, 3, false],
  [2, 1, 6, 6, 16, true],
];

describe('wasm attention scores: float32 dot in feature order, then the scale', () => {
  let b: Backend;
  beforeAll(async () => { b = await createWasmBackend({ threads: 1 }); });
  afterAll(() => (b as { dispose?: () => void }).dispose?.());

  for (const [n, heads, l, s, d, packed] of SHAPES) {
    it(`n ${n}, heads ${heads}, l ${l}, s ${s}, d ${d}${packed ? ', packed' : ''}`, () => {
      const e = heads * d;
      const row = packed ? 3 * e : e;
      const r = rng(7 + d);
      const data = (rows: number) => Float32Array.from({ length: n * rows * row }, () => 3 * (r() * 2 - 1));
      const qd = data(l);
      const kd = packed ? qd : data(s);
      const vd = packed ? qd : data(s);
      // One infinite feature (batch 0, query row 0, head 0): that row's scores are not finite.
      qd[1] = Infinity;
      const layout: AttentionLayout = { n, heads, l, s, d, scale: 1 / Math.sqrt(d), q: { offset: 0, row }, k: { offset: packed ? e : 0, row }, v: { offset: packed ? 2 * e : 0, row } };
      const store = (x: Float32Array) => { const t = b.alloc(x.length, 'float32'); b.write(t, x); return t; };
      const [q, k, v] = [store(qd), packed ? null : store(kd), packed ? null : store(vd)];
      const out = b.alloc(n * l * e, 'float32');
      const probs = b.alloc(n * heads * l * s, 'float32');
      b.attention!(q, k ?? q, v ?? q, out, probs, layout);

      const scale = Math.fround(layout.scale);
      const scores = new Float32Array(n * heads * l * s);
      for (let bi = 0; bi < n; bi++) for (let h = 0; h < heads; h++) for (let i = 0; i < l; i++) for (let j = 0; j < s; j++) {
        let acc = 0;
        for (let c = 0; c < d; c++) acc = Math.fround(acc + Math.fround(qd[(bi * l + i) * row + h * d + c] * kd[(bi * s + j) * row + layout.k.offset + h * d + c]));
        scores[((bi * heads + h) * l + i) * s + j] = Math.fround(acc * scale);
      }
      const want = b.alloc(scores.length, 'float32');
      b.write(want, scores);
      b.softmax(want, want, { rows: n * heads * l, cols: s, log: false });
      const [got, exp] = [b.readSync!(probs) as Float32Array, b.readSync!(want) as Float32Array];
      expect(got.length).toBe(exp.length);
      let differ = 0;
      for (let x = 0; x < got.length; x++) if (!Object.is(got[x], exp[x])) differ++;
      expect(differ, 'probabilities that differ from softmax(fround(scale) * fround dot)').toBe(0);
      // The infinite feature reached the scores (the fall-back ran): its row is NaN.
      expect(Number.isNaN(got[0])).toBe(true);
      for (const t of [q, k, v, out, probs, want]) if (t) b.release(t);
    });
  }
});
