/**
 * The transcendental unary ops run as f32x4 kernels on wasm (computed in f64x2, rounded once), not
 * as a JS closure per element. Their accuracy over the whole float32 range is held by
 * test/unary-sweep.test.ts, whose inputs come in whole vectors; here the lengths 1-3 and 5-7 take
 * the kernels' tail path (the last window of four, storing only the tail's lanes) and must give
 * the CPU oracle's float32 values bit for bit without touching the elements after the output.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UNARY_OPS, type UnaryOp } from '../src/kernels/optable.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { SIMD_UNARY_F32 } from '../src/kernels/wasm/module.js';

const TRANSCENDENTAL: readonly UnaryOp[] = ['expm1', 'log', 'log1p', 'tanh', 'silu', 'softplus', 'elu', 'geluTanh'];
const SAMPLE = [-0, 1e-30, -2.5, 0.3, 7, NaN, -Infinity, 1e-40, 0.75, -0.001, 50, -90, Infinity, 2.0000002];

let wasm: WasmBackend;
beforeAll(async () => {
  wasm = await createWasmBackend({ threads: 1 });
});
afterAll(() => wasm?.dispose());

describe('wasm SIMD bodies of the transcendental unary ops', () => {
  it('every one has a SIMD body (no per-element closure)', () => {
    for (const op of TRANSCENDENTAL) expect(SIMD_UNARY_F32 as readonly string[], op).toContain(op);
  });

  for (const op of TRANSCENDENTAL) {
    it(`${op}: tails of 1-7 elements match the float64 closure rounded to float32`, () => {
      const p0 = op === 'elu' ? 1.5 : 0;
      for (let n = 1; n <= 7; n++) {
        for (let start = 0; start + n <= SAMPLE.length; start += 3) {
          const input = Float32Array.from(SAMPLE.slice(start, start + n));
          const x = wasm.upload(input, 'float32');
          // One storage longer than the output, its last element a sentinel the tail store must not touch.
          const outer = wasm.upload(new Float32Array(n + 1).fill(123), 'float32');
          const out = wasm.view(outer, 0, n);
          wasm.unary(op, x, out, p0, 0);
          const got = Array.from(wasm.readSync(outer) as Float32Array);
          const want = [...Array.from(input, (v) => Math.fround(UNARY_OPS[op].cpu(v, p0, 0))), 123];
          expect(got, `${op} over [${Array.from(input).join(', ')}]`).toEqual(want);
          wasm.release(x);
          wasm.release(outer);
        }
      }
    });
  }
});
