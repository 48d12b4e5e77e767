/**
 * Attention on wasm split over threads by batch (index.ts attention / attentionBackward): every
 * batch's heads are computed by the same kernels from the same addresses moved on, so two and
 * three threads give one thread's bits, for the probabilities, the output and the three
 * gradients, packed (the ViT's one projection) or not. A row whose scores are not all finite is
 * flagged by attn_scores, a flag the threads do not hand back: the split call finds the row by
 * its non-finite probabilities and runs again whole (the softmax kernel's rules: NaN rows).
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { AttentionLayout, Storage } from '../src/kernels/backend.js';
import type { WasmBackend } from '../src/kernels/wasm/index.js';
import { splitBackends } from './helpers/thread-splits.js';
import { randomF32 } from './helpers/webgpu.js';

const { one, many, splits, dispose } = await splitBackends();
afterAll(dispose);

/** [n, heads, l, s, d, packed] */
const SHAPES: [number, number, number, number, number, boolean][] = [
  [5, 4, 17, 17, 8, true], // the ViT's blocks
  [3, 2, 5, 7, 5, false],
  [4, 3, 6, 9, 12, false],
  [2, 1, 3, 3, 2, true],
];

function layoutOf([n, heads, l, s, d, packed]: (typeof SHAPES)[number]): AttentionLayout {
  const e = heads * d;
  const row = packed ? 3 * e : e;
  return { n, heads, l, s, d, scale: 0.41, q: { offset: 0, row }, k: { offset: packed ? e : 0, row }, v: { offset: packed ? 2 * e : 0, row } };
}

/** Forward and backward on `b`: [out, probs, dq, dk, dv] (dq = dk = dv: one packed gradient). */
function run(b: WasmBackend, shape: (typeof SHAPES)[number], inputs: Float32Array[], grad: Float32Array): number[][] {
  const [n, heads, l, s, d, packed] = shape;
  const g = layoutOf(shape);
  const ins = inputs.map((x) => b.upload(x, 'float32'));
  const [q, k, v] = packed ? [ins[0], ins[0], ins[0]] : ins;
  const out = b.alloc(n * l * heads * d, 'float32');
  const probs = b.alloc(n * heads * l * s, 'float32');
  b.attention!(q, k, v, out, probs, g);
  const gs = b.upload(grad, 'float32');
  const grads: Storage[] = packed ? [b.alloc(inputs[0].length, 'float32')] : inputs.map((x) => b.alloc(x.length, 'float32'));
  const [dq, dk, dv] = packed ? [grads[0], grads[0], grads[0]] : grads;
  b.attentionBackward!(gs, q, k, v, probs, dq, dk, dv, g);
  const result = [out, probs, ...grads].map((st) => Array.from(b.readSync(st)));
  [...ins, out, probs, gs, ...grads].forEach((st) => b.release(st));
  return result;
}

describe('attention split by batch over threads', () => {
  for (const shape of SHAPES) {
    const [n, heads, l, s, d, packed] = shape;
    const e = heads * d;
    const inputs = packed ? [randomF32(n * l * 3 * e, 1, -2, 2)] : [randomF32(n * l * e, 1, -2, 2), randomF32(n * s * e, 2, -2, 2), randomF32(n * s * e, 3, -2, 2)];
    const grad = randomF32(n * l * e, 4, -1, 1);
    it(`n ${n}, heads ${heads}, l ${l}, s ${s}, d ${d}${packed ? ', packed' : ''}: one thread's bits on 2 and 3`, () => {
      const expected = run(one, shape, inputs, grad);
      many.forEach((b, i) => {
        const before = splits[i]();
        expect(run(b, shape, inputs, grad)).toEqual(expected);
        // Forward and backward each split (once per call).
        expect(splits[i]() - before, `${i + 2} threads`).toBe(2);
      });
    });
  }

  it('a row with an infinite score (second batch) runs again whole: NaN where one thread has it', () => {
    const shape: (typeof SHAPES)[number] = [3, 2, 4, 4, 4, false];
    const [n, heads, l, , d] = shape;
    const e = heads * d;
    const q = randomF32(n * l * e, 7, -1, 1);
    q[1 * l * e + 2 * e + 3] = Infinity; // batch 1, row 2, head 0
    const inputs = [q, randomF32(n * l * e, 8, -1, 1), randomF32(n * l * e, 9, -1, 1)];
    const grad = randomF32(n * l * e, 10, -1, 1);
    const expected = run(one, shape, inputs, grad);
    expect(expected[1].some((p) => Number.isNaN(p)), 'the reference has a NaN row').toBe(true);
    for (const b of many) expect(run(b, shape, inputs, grad)).toEqual(expected);
  });
});
