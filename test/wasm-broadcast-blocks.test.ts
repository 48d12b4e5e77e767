/**
 * The wasm row kernels take a broadcast's last three collapsed dims in one call ([blocks, rows,
 * cols], e.g. a per-channel bias over NCHW: blocks N, rows C, cols H*W) and loop over any dims
 * beyond in JS. Binary ops (float32, int32, comparisons writing bools) and where over shapes that
 * collapse to 3, 4 and 5 dims, with every operand pattern, must equal the CPU reference exactly
 * (one IEEE operation per element on both).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import type { Backend } from '../src/kernels/backend.js';
import type { BinaryOp } from '../src/kernels/optable.js';
import type { DType } from '../src/tensor/dtype.js';
import { broadcastShapes, broadcastStrides } from '../src/tensor/shape.js';
import { rng } from './helpers/random.js';

const CASES: [number[], number[]][] = [
  [[5, 3, 7, 9], [1, 3, 1, 1]], // per-channel bias over NCHW: [5, 3, 63], b one value per row
  [[1, 3, 1, 1], [5, 3, 7, 9]], // the same with the broadcast operand first
  [[5, 3, 7, 9], [5, 3, 1, 1]], // per-(sample, channel) scale: [15, 63]
  [[2, 3, 4, 5], [2, 1, 4, 1]], // alternating: four collapsed dims (one JS-side outer dim)
  [[2, 3, 2, 3, 5], [1, 3, 1, 3, 1]], // five collapsed dims
  [[4, 6, 5], [4, 1, 5]], // a row repeated in each block
  [[3, 4, 1, 6], [1, 4, 5, 1]], // both operands broadcast
];
const numel = (s: number[]) => s.reduce((x, y) => x * y, 1);
const values = (n: number, seed: number, int: boolean) => {
  const r = rng(seed);
  return int ? Int32Array.from({ length: n }, () => Math.floor(r() * 21) - 10) : Float32Array.from({ length: n }, () => Math.round((r() * 6 - 3) * 8) / 8);
};

let wasm: WasmBackend;
const cpu = new CpuBackend();
beforeAll(async () => {
  wasm = await createWasmBackend({ threads: 1 });
});
afterAll(() => wasm?.dispose());

/** Runs f on a backend over uploaded inputs and returns the output's values. */
async function on(be: Backend, inputs: [Float32Array | Int32Array | Uint8Array, DType][], outN: number, outDtype: DType, f: (s: ReturnType<Backend['upload']>[], o: ReturnType<Backend['alloc']>) => void): Promise<number[]> {
  const s = inputs.map(([v, d]) => be.upload(v, d));
  const o = be.alloc(outN, outDtype);
  f(s, o);
  const got = Array.from((await be.read(o)) as ArrayLike<number>);
  s.forEach((x) => be.release(x));
  be.release(o);
  return got;
}

describe('wasm row kernels over blocks of rows', () => {
  const ops: [BinaryOp, DType, DType][] = [['add', 'float32', 'float32'], ['mul', 'float32', 'float32'], ['sub', 'int32', 'int32'], ['lt', 'float32', 'bool'], ['eq', 'int32', 'bool']];
  for (const [op, dtype, outDtype] of ops) {
    it(`binary ${op} (${dtype}) equals the reference`, async () => {
      for (const [t, [as, bs]] of CASES.entries()) {
        const shape = broadcastShapes('test', as, bs);
        const layout = { shape, aStrides: broadcastStrides(as, shape), bStrides: broadcastStrides(bs, shape) };
        const inputs: [Int32Array | Float32Array, DType][] = [[values(numel(as), 1 + t, dtype === 'int32'), dtype], [values(numel(bs), 11 + t, dtype === 'int32'), dtype]];
        const run = (be: Backend) => on(be, inputs, numel(shape), outDtype, ([a, b], o) => be.binary(op, a, b, o, layout));
        expect(await run(wasm), `${op} ${JSON.stringify([as, bs])}`).toEqual(await run(cpu));
      }
    });
  }

  it('where equals the reference', async () => {
    for (const [t, [as, bs]] of CASES.entries()) {
      const cs = as.map((d, i) => (i % 2 ? d : 1));
      const shape = broadcastShapes('where', broadcastShapes('where', cs, as), bs);
      const layout = { shape, condStrides: broadcastStrides(cs, shape), aStrides: broadcastStrides(as, shape), bStrides: broadcastStrides(bs, shape) };
      const cond = Uint8Array.from(values(numel(cs), 21 + t, true), (v) => (v > 0 ? 1 : 0));
      const inputs: [Uint8Array | Float32Array | Int32Array, DType][] = [[cond, 'bool'], [values(numel(as), 31 + t, false), 'float32'], [values(numel(bs), 41 + t, false), 'float32']];
      const run = (be: Backend) => on(be, inputs, numel(shape), 'float32', ([c, a, b], o) => be.where(c, a, b, o, layout));
      expect(await run(wasm), `where ${JSON.stringify([cs, as, bs])}`).toEqual(await run(cpu));
    }
  });
});
