/**
 * Runs one arena kernel over an arena of float32 parameters of given sizes on a backend (the
 * arena tests of norms and noise): vectors filled from flat arrays (the parameters' elements one
 * after the other, without the arena's padding), the slots and vectors read back the same way.
 */
import { expect } from 'vitest';
import type { Backend } from '../../src/kernels/backend.js';
import { S_SLOTS } from '../../src/kernels/fused.js';
import { runArenaKernel, runPerTensor, type ArenaKernel, type GroupHyper } from '../../src/kernels/arena/index.js';
import { FlatArena } from '../../src/optim/arena.js';
import { Tensor } from '../../src/tensor/tensor.js';

export interface ArenaRun {
  S: Float32Array;
  /** Each vector's elements, parameter after parameter (padding left out). */
  vectors: Record<string, Float32Array>;
}

export interface ArenaRunOptions {
  path?: 'auto' | 'reference' | 'interpret';
  hyper?: GroupHyper;
  /** Indexes of parameters without a gradient (inactive). */
  inactive?: readonly number[];
  /** Run the per-tensor baseline (each tensor's normal draws at its arena offset) instead of the arena pass. */
  perTensor?: boolean;
}

export async function runArena(b: Backend, kernel: ArenaKernel, sizes: readonly number[], init: Readonly<Record<string, Float32Array>>, opts: ArenaRunOptions = {}): Promise<ArenaRun> {
  const params = sizes.map((n, k) => {
    const t = Tensor.fromStorage(b.upload(new Float32Array(n), 'float32'), [n], b);
    return opts.inactive?.includes(k) ? t : t.requiresGrad_();
  });
  const arena = new FlatArena(params, params.map(() => 0), 1);
  arena.syncGrads();
  const L = arena.layout;
  const S = b.upload(new Float32Array(S_SLOTS), 'float32');
  const names = kernel.vectors.map((v) => v.name);
  const result: ArenaRun = { S: new Float32Array(0), vectors: {} };
  if (opts.perTensor) {
    let o = 0;
    const perTensor = L.params.map((info) => {
      const vectors = Object.fromEntries(names.map((v) => [v, b.upload(Float32Array.from((init[v] ?? new Float32Array(o + info.numel)).subarray(o, o + info.numel)), 'float32')]));
      o += info.numel;
      return { vectors, numel: info.numel, group: info.group, flags: info.flags, index: info.offset };
    });
    runPerTensor(kernel, b, { dtype: 'float32', params: perTensor, S, hyper: opts.hyper }, { path: opts.path });
    for (const v of names) {
      const parts = await Promise.all(perTensor.map((p) => b.read(p.vectors[v])));
      result.vectors[v] = Float32Array.from(parts.flatMap((x) => Array.from(x as Float32Array)));
      perTensor.forEach((p) => b.release(p.vectors[v]));
    }
  } else {
    for (const v of names) {
      const full = new Float32Array(L.numel);
      let o = 0;
      for (const info of L.params) {
        if (init[v]) full.set(init[v].subarray(o, o + info.numel), info.offset);
        o += info.numel;
      }
      b.write(arena.vec(v), full);
    }
    runArenaKernel(kernel, b, { layout: L, vectors: Object.fromEntries(names.map((v) => [v, arena.vec(v)])), S, steps: arena.stepCounts, hyper: opts.hyper }, { path: opts.path });
    for (const v of names) {
      const full = (await b.read(arena.vec(v))) as Float32Array;
      result.vectors[v] = Float32Array.from(L.params.flatMap((info) => Array.from(full.subarray(info.offset, info.offset + info.numel))));
    }
  }
  result.S = (await b.read(S)) as Float32Array;
  b.release(S);
  arena.dispose();
  return result;
}

/** Bit-for-bit equality (any NaN equals any NaN), naming the first difference. */
export function expectBits(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  expect(actual.length, what).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    if (Number.isNaN(actual[i]) && Number.isNaN(expected[i])) continue;
    if (!Object.is(actual[i], expected[i])) expect.fail(`${what}[${i}]: got ${actual[i]}, expected ${expected[i]}`);
  }
}
