/**
 * Every unary op of the op table runs as a SIMD kernel on wasm for float32 (the transcendental ones
 * in float32, or computed in f64x2 and rounded once), not as a JS closure per element. Their accuracy over the
 * whole float32 range is held by test/unary-sweep.test.ts, whose inputs come in whole vectors;
 * here the lengths 1-3 and 5-7 take the kernels' tail path (the last window of four, storing only
 * the tail's lanes) and must give the whole-vector results bit for bit without touching the
 * elements after the output. Also: sin and cos past the SIMD range (finished by the closure, also
 * in place), pow's special cases for each kind of exponent, and the bool-valued and int32 kernels.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UNARY_OPS, type UnaryOp, type UnaryOpDef } from '../src/kernels/optable.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { SIMD_UNARY_BOOL_F32, SIMD_UNARY_BOOL_I32, SIMD_UNARY_F32, SIMD_UNARY_I32, SIMD_UNARY_LIMIT } from '../src/kernels/wasm/module.js';

const TRANSCENDENTAL: readonly UnaryOp[] = ['exp', 'sigmoid', 'expm1', 'log', 'log1p', 'tanh', 'silu', 'softplus', 'elu', 'geluTanh', 'erf', 'geluErf', 'sin', 'cos', 'powScalar', 'sign'];
const SAMPLE = [-0, 1e-30, -2.5, 0.3, 7, NaN, -Infinity, 1e-40, 0.75, -0.001, 50, -90, Infinity, 2.0000002, 3e6, -1.5, 1, -1];
const P0: Partial<Record<UnaryOp, number>> = { elu: 1.5, powScalar: 2.5 };
const f32 = Math.fround;
/** The op's float64 closure (the CPU oracle). */
const closure = (op: UnaryOp) => (UNARY_OPS[op] as UnaryOpDef).cpu;

let wasm: WasmBackend;
beforeAll(async () => {
  wasm = await createWasmBackend({ threads: 1 });
});
afterAll(() => wasm?.dispose());

describe('wasm SIMD bodies of the transcendental unary ops', () => {
  it('every op of the table has a float32 SIMD body (bool-valued ones a bool-writing one)', () => {
    for (const [op, def] of Object.entries(UNARY_OPS)) {
      const list: readonly string[] = 'bool' in def && def.bool ? SIMD_UNARY_BOOL_F32 : SIMD_UNARY_F32;
      expect(list, op).toContain(op);
    }
  });

  for (const op of TRANSCENDENTAL) {
    it(`${op}: tails of 1-7 elements give the whole-vector results, bit for bit`, () => {
      const p0 = P0[op] ?? 0;
      // Each value's result from a whole vector of four copies of it (no tail).
      const whole = (v: number) => run(op, [v, v, v, v], 'float32', 'float32', p0)[0];
      for (let n = 1; n <= 7; n++) {
        for (let start = 0; start + n <= SAMPLE.length; start += 3) {
          const input = Float32Array.from(SAMPLE.slice(start, start + n));
          const x = wasm.upload(input, 'float32');
          // One storage longer than the output, its last element a sentinel the tail store must not touch.
          const outer = wasm.upload(new Float32Array(n + 1).fill(123), 'float32');
          const out = wasm.view(outer, 0, n);
          wasm.unary(op, x, out, p0, 0);
          const got = Array.from(wasm.readSync(outer) as Float32Array);
          const want = [...Array.from(input, whole), 123];
          expect(got, `${op} over [${Array.from(input).join(', ')}]`).toEqual(want);
          wasm.release(x);
          wasm.release(outer);
        }
      }
    });
  }
});

/** Runs op on wasm over `input` (dtype as given) and returns the output values. */
function run(op: UnaryOp, input: ArrayLike<number>, dtype: 'float32' | 'int32', outDtype: 'float32' | 'int32' | 'bool', p0 = 0): number[] {
  const x = wasm.upload(dtype === 'float32' ? Float32Array.from(input) : Int32Array.from(input), dtype);
  const out = wasm.alloc(input.length, outDtype);
  wasm.unary(op, x, out, p0, 0);
  const got = Array.from(wasm.readSync(out) as ArrayLike<number>);
  wasm.release(x);
  wasm.release(out);
  return got;
}

describe('wasm SIMD unary kernels: ranges, special cases, bools and int32', () => {
  it('sin and cos past the SIMD range come from the closure, also when out is x', () => {
    const limit = SIMD_UNARY_LIMIT.sin!;
    // Mixed in-range and beyond-range values (both signs, the float32 maximum, Inf, NaN), odd length.
    const input = Float32Array.from([0.5, limit * 1.5, -3, -(limit * 4 + 7), 3.4028234663852886e38, limit, Infinity, NaN, -1e30]);
    const beyond = (v: number) => Math.abs(v) > limit && Math.abs(v) < Infinity;
    for (const op of ['sin', 'cos'] as const) {
      // Beyond the limit the closure's value; within it the kernel's own (run on those alone).
      const inside = run(op, Array.from(input).filter((v) => !beyond(v)), 'float32', 'float32');
      const want = Array.from(input, (v) => (beyond(v) ? f32(closure(op)(v, 0, 0)) : inside.shift()));
      expect(run(op, input, 'float32', 'float32'), op).toEqual(want);
      const x = wasm.upload(input, 'float32');
      wasm.unary(op, x, x);
      expect(Array.from(wasm.readSync(x) as Float32Array), `${op} in place`).toEqual(want);
      wasm.release(x);
    }
  });

  it('sin and cos next to their zeros (x nearest k pi/2) stay within 2 ulps', () => {
    // A float32 reduction by pi/2 leaves hundreds of ulps there; the kernels reduce in float64.
    const input: number[] = [];
    for (let k = 1; k <= 4000; k += 3) for (const s of [1, -1]) input.push(f32((s * k * Math.PI) / 2), f32((s * k * 5000 * Math.PI) / 2));
    const ord = (v: number) => {
      const b = new Int32Array(new Float32Array([v]).buffer)[0];
      return b >= 0 ? b : -(b & 0x7fffffff);
    };
    for (const op of ['sin', 'cos'] as const) {
      const got = run(op, input, 'float32', 'float32');
      const bad = input.filter((v, i) => Math.abs(ord(got[i]) - ord(f32(closure(op)(v, 0, 0)))) > 2);
      expect(bad, op).toEqual([]);
    }
  });

  it('powScalar follows C pow for every kind of exponent and base', () => {
    const bases = [0, -0, 1, -1, 2, -2, 0.5, -0.5, 3, -3, 1e-40, -1e-40, 1e30, -1e30, Infinity, -Infinity, NaN, f32(1 + 2 ** -8), 7.25];
    const exps = [0, -0, 1, -1, 2, 3, -2, -3, 4, -4, 5, 0.5, -0.5, 2.5, -1.5, 1 / 3, 100, -100, 1e10, -1e10, 16777216, Infinity, -Infinity, NaN];
    for (const p of exps) {
      const p0 = f32(p);
      const want = bases.map((v) => f32(closure('powScalar')(f32(v), p0, 0)));
      expect(run('powScalar', bases, 'float32', 'float32', p0), `x ** ${p0}`).toEqual(want);
    }
  });

  it('the bool-valued ops write one byte per element, tails included', () => {
    const values = [0, -0, 1, NaN, Infinity, -Infinity, 1e-40, -3];
    for (const op of SIMD_UNARY_BOOL_F32) {
      for (let n = 1; n <= values.length; n++) {
        const input = values.slice(0, n);
        expect(run(op, input, 'float32', 'bool'), `${op} over ${n}`).toEqual(input.map((v) => closure(op)(f32(v), 0, 0)));
      }
    }
    for (const op of SIMD_UNARY_BOOL_I32) {
      const input = [0, 5, -7, 0, 2147483647, -2147483648, 0];
      expect(run(op, input, 'int32', 'bool'), `${op} on int32`).toEqual(input.map((v) => closure(op)(v, 0, 0)));
    }
  });

  it('int32 sign is -1, 0 or 1', () => {
    expect(SIMD_UNARY_I32 as readonly string[]).toContain('sign');
    const input = [0, 5, -7, 2147483647, -2147483648, 1, -1];
    expect(run('sign', input, 'int32', 'int32')).toEqual([0, 1, -1, 1, -1, 1, -1]);
  });
});
