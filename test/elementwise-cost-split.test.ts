/**
 * Compute-bound elementwise ops split over threads by their cost (module.ts ELEMENTWISE_COST):
 * a GELU over 35 K floats (the ViT's MLP) is 280 KB, under the 2 MB floor below which a copy-like
 * call stays on the core whose cache holds it, but its time is copy's for 45 MB. The backend's own
 * unary and binary calls and the fused programs of a captured step weigh their ops so; the
 * cheap ops keep the floor. The cost model here is a fixed one (20 GFLOP/s, 5 us per split), so the
 * decisions do not depend on the machine's load; the bits are one thread's either way.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Storage } from '../src/kernels/backend.js';
import type { BinaryOp, UnaryOp } from '../src/kernels/optable.js';
import type { FusedExpr, FusedProgram } from '../src/kernels/fusedmap.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { SplitCost } from '../src/kernels/wasm/threads.js';
import { countSplits } from './helpers/thread-splits.js';
import { randomF32 } from './helpers/webgpu.js';

const one = await createWasmBackend({ threads: 1 });
const two = await createWasmBackend({ threads: 2 });
const internals = two as unknown as { splitCost: SplitCost | null; elementFlops: number };
const cost = new SplitCost(2, 1 / 20_000, 5, 5, 1e9);
cost.observeSplit = () => {}; // no back-off: the machine's load must not decide
internals.splitCost = cost;
internals.elementFlops = 8;
const splits = countSplits(two);
afterAll(() => [one, two].forEach((b) => b.dispose()));

const n = 32 * 17 * 64;
const x = randomF32(n, 5, -4, 4);
const y = randomF32(n, 6, 0.5, 2);

/** Runs `call` on both backends over uploaded x (and y); returns both outputs and the splits on two threads. */
function both(call: (b: WasmBackend, xs: Storage, ys: Storage, out: Storage) => void): { split: number; a: number[]; b: number[] } {
  const run = (b: WasmBackend) => {
    const [xs, ys, out] = [b.upload(x, 'float32'), b.upload(y, 'float32'), b.alloc(n, 'float32')];
    call(b, xs, ys, out);
    const r = Array.from(b.readSync(out));
    [xs, ys, out].forEach((s) => b.release(s));
    return r;
  };
  const before = splits();
  const b = run(two);
  return { split: splits() - before, a: run(one), b };
}

describe('elementwise calls split by their cost', () => {
  it.each([
    ['geluErf', 1],
    ['erf', 1],
    ['tanh', 1],
    ['neg', 0],
    ['relu', 0],
  ] as [UnaryOp, number][])('unary %s over %i floats', (op, expected) => {
    const r = both((b, xs, _ys, out) => b.unary(op, xs, out));
    expect(r.split, `${op} split`).toBe(expected);
    expect(r.b).toEqual(r.a);
  });

  // Float parameters travel to the workers too (as float64 records): x ** 2.5 takes pow's
  // general form; x ** 3 is three products (cheap: stays on one thread at this size); elu is a
  // transcendental; affine costs what copy does.
  it.each([
    ['powScalar', 2.5, 0, 1],
    ['powScalar', -1.5, 0, 1],
    ['powScalar', 3, 0, 0],
    ['elu', 0.7, 0, 1],
    ['affine', 1.5, -0.25, 0],
  ] as [UnaryOp, number, number, number][])('unary %s(x, %d, %d)', (op, p0, p1, expected) => {
    const r = both((b, xs, _ys, out) => b.unary(op, xs, out, p0, p1));
    expect(r.split, `${op} split`).toBe(expected);
    expect(r.b).toEqual(r.a);
  });

  it('a cheap op with float parameters splits past the 2 MB floor (affine over 4.8 MB)', () => {
    const big = 600_000;
    const xb = randomF32(big, 9, -3, 3);
    const run = (b: WasmBackend) => {
      const [xs, out] = [b.upload(xb, 'float32'), b.alloc(big, 'float32')];
      b.unary('affine', xs, out, 1.1, 0.3);
      const r = b.readSync(out);
      [xs, out].forEach((s) => b.release(s));
      return r;
    };
    const before = splits();
    const got = run(two);
    expect(splits() - before).toBe(1);
    expect(got).toEqual(run(one));
  });

  it.each([
    ['pow', 1],
    ['add', 0],
    ['mul', 0],
  ] as [BinaryOp, number][])('binary %s over %i floats', (op, expected) => {
    const l = { shape: [n], aStrides: [1], bStrides: [1] };
    const r = both((b, xs, ys, out) => b.binary(op, ys, xs, out, l));
    expect(r.split, `${op} split`).toBe(expected);
    expect(r.b).toEqual(r.a);
  });

  const program = (expr: FusedExpr): FusedProgram => ({
    shape: [n],
    inputs: ['float32', 'float32', 'float32'],
    loads: [
      { input: 0, offset: 0, strides: [1] },
      { input: 1, offset: 0, strides: [1] },
    ],
    outputs: [{ offset: 0, strides: [1], expr, dtype: 'float32' }],
  });
  const load = (i: number): FusedExpr => ({ k: 'load', load: i });
  const sum: FusedExpr = { k: 'binary', op: 'add', a: load(0), b: load(1), in: 'float32', out: 'float32' };
  it.each([
    ['gelu(x + b)', { k: 'unary', op: 'geluErf', x: sum, p0: 0, p1: 0, in: 'float32', out: 'float32' } as FusedExpr, 1],
    ['relu(x + b)', { k: 'unary', op: 'relu', x: sum, p0: 0, p1: 0, in: 'float32', out: 'float32' } as FusedExpr, 0],
  ] as [string, FusedExpr, number][])('fused program %s', (_name, expr, expected) => {
    const r = both((b, xs, ys, out) => b.fusedMap!().build(program(expr))(xs, ys, out));
    expect(r.split).toBe(expected);
    expect(r.b).toEqual(r.a);
  });
});
