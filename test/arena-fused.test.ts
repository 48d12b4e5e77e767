/**
 * Phase 2 of the arena kernels (issue 12): the language features the built-in primitives need (a
 * scalar program after a pass, a counted-step condition, a per-parameter uniform draw), their
 * definition-time errors, and the built-in primitives (src/kernels/arena/fused.ts) run over an
 * arena and per tensor, on cpu and wasm, bit for bit.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { Backend, Storage } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { FLAG_ACTIVE, S_FLAG, S_SLOTS } from '../src/kernels/fused.js';
import { defineArenaKernel, runArenaKernel, runPerTensor, type ArenaKernel, type ArenaKernelSpec } from '../src/kernels/arena/index.js';
import { adamCall, lincombCall, normCall, perturbCall, sgdCall, scalarProgram, type KernelCall } from '../src/kernels/arena/fused.js';
import { runScalarProgram } from '../src/kernels/arena/run.js';
import { uniformAt } from '../src/kernels/rng.js';
import { FlatArena } from '../src/optim/arena.js';
import { Tensor } from '../src/tensor/tensor.js';

let wasm: WasmBackend;
const cpu = new CpuBackend();
beforeAll(async () => {
  wasm = await createWasmBackend({ threads: 1 });
});

describe('arena kernels: scalar programs, counted-step conditions, per-parameter draws', () => {
  it('after runs in order, each assignment seeing the earlier ones, in float64 and stored in the dtype', () => {
    const prog = defineArenaKernel({
      name: 'prog',
      vectors: {},
      slots: { a: 0, b: 1, c: 2 },
      after: (s, k) => [
        ['a', k.add(s.a, 1)],
        ['b', k.mul(s.a, 3)], // sees the new a
        ['c', k.where(k.gt(s.b, 10), k.div(1, 3), -1)],
        ['a', k.sqrt(s.b)],
      ],
    });
    for (const b of [cpu, wasm] as Backend[]) {
      for (const dtype of ['float32', 'float64'] as const) {
        const S = b.upload(dtype === 'float32' ? Float32Array.of(3, 0, 0) : Float64Array.of(3, 0, 0), dtype);
        runScalarProgram(prog, b, S);
        const got = Array.from(b.readSync!(S));
        b.release(S);
        const r = dtype === 'float32' ? Math.fround : (x: number) => x;
        expect(got, `${b.name} ${dtype}`).toEqual([r(Math.sqrt(12)), 12, r(1 / 3)]);
      }
    }
  });

  it('rejects a scalar program that reads a vector, a hyper-parameter or the step, or writes an undeclared slot', () => {
    const base: ArenaKernelSpec = { name: 'bad-after', vectors: { x: 'read' }, hyper: { h: 1 }, slots: { a: 0 }, reduce: ({ x }, _h, _s, k) => ({ a: k.sum(x) }) };
    expect(() => defineArenaKernel({ ...base, after: (s, k) => ({ a: k.add(s.a, k.step()) }) })).toThrow(/arena kernel "bad-after": after, slot 'a': a scalar program reads only scalar slots and constants, got step/);
    expect(() => defineArenaKernel({ ...base, after: () => ({ b: 1 }) })).toThrow(/after, slot 'b': writes undeclared scalar slot 'b'/);
    expect(() => defineArenaKernel({ ...base, after: (s, k) => ({ a: k.gt(s.a, 0) }) as never })).toThrow(/after, slot 'a': type mismatch: a slot holds a float, got a boolean/);
    expect(() => defineArenaKernel({ name: 'empty', vectors: {} })).toThrow(/has neither a body, reductions nor a scalar program/);
  });

  it('rejects a counted-step condition that is not uniform or reads the step', () => {
    const spec: ArenaKernelSpec = { name: 'cs', vectors: { p: 'readwrite' }, body: ({ p }) => ({ p }) };
    expect(() => defineArenaKernel({ ...spec, countSteps: (_h, _s, k) => k.gt(k.step(), 1) })).toThrow(/arena kernel "cs": countSteps: must not read the step count/);
    expect(() => defineArenaKernel({ ...spec, countSteps: (_h, _s, k) => k.c(1) })).toThrow(/countSteps: must be true or a boolean expression/);
  });

  it('paramUniform draws uniformAt(key0, key1, parameter index), and keys must be uniform', () => {
    const k0 = 0xdeadbeef;
    const k1 = 0x80000001;
    const kernel = defineArenaKernel({
      name: 'draw',
      vectors: { out: 'write' },
      hyper: { key0: 0, key1: 0 },
      body: (_v, h, _s, k) => ({ out: k.paramUniform(h.key0, h.key1) }),
    });
    for (const b of [cpu, wasm] as Backend[]) {
      const outs = [3, 70, 1].map((n) => b.alloc(n, 'float32'));
      runPerTensor(kernel, b, { dtype: 'float32', params: outs.map((s, k) => ({ vectors: { out: s }, numel: s.numel, group: 0, flags: FLAG_ACTIVE })), hyper: [{ key0: k0, key1: k1 }] });
      outs.forEach((s, k) => {
        expect(Array.from(b.readSync!(s)), `${b.name} parameter ${k}`).toEqual(new Array(s.numel).fill(uniformAt(k0, k1, k)));
        b.release(s);
      });
    }
    expect(() => defineArenaKernel({ name: 'draw-bad', vectors: { out: 'readwrite' }, body: ({ out }, _h, _s, k) => ({ out: k.paramUniform(out, 1) }) })).toThrow(/paramUniform: takes uniform keys/);
  });
});

// ------------------------------------------------------------------ built-ins, arena vs per tensor

const SHAPES = [[5, 13], [3], [257], [7, 9], [1], [64]];

/** Deterministic values of every vector for parameter k. */
function values(name: string, k: number, n: number): Float64Array {
  const seed = name.length * 7 + k * 13;
  return Float64Array.from({ length: n }, (_, i) => (name === 'v2' ? 0.01 + Math.abs(Math.sin(0.7 * i + seed)) : Math.sin(0.37 * i + seed) * (1 + k)));
}

/**
 * Runs `calls` (made over vector names) once over a FlatArena of SHAPES and once per tensor, from
 * the same data (parameter 2 without a gradient), and returns both results (every vector, S and
 * the step counts) for comparison.
 */
function both(b: Backend, dtype: 'float32' | 'float64', calls: readonly ((groups: number) => KernelCall<string>)[], names: readonly string[], S0: readonly number[]) {
  const inactive = 2;
  const flagsOf = (arena: FlatArena) => arena.layout.params.map((p) => p.flags);
  // The arena.
  const params = SHAPES.map((shape, k) => Tensor.fromStorage(b.upload(new (dtype === 'float32' ? Float32Array : Float64Array)(values('p', k, shape.reduce((a, c) => a * c, 1))), dtype), shape, b).keep());
  params.forEach((p, k) => {
    if (k !== inactive) p.grad = Tensor.fromStorage(b.upload(new (dtype === 'float32' ? Float32Array : Float64Array)(values('g', k, p.size)), dtype), p.shape.slice(), b).keep();
  });
  const arena = new FlatArena(params, params.map((_, k) => k % 2), 2, 'all');
  arena.syncGrads();
  for (const n of names) arena.viewsOf(n).forEach((t, k) => b.write(t.storage, new (dtype === 'float32' ? Float32Array : Float64Array)(values(n, k, t.size))));
  const S = b.upload(new (dtype === 'float32' ? Float32Array : Float64Array)(S_SLOTS).map((_, i) => S0[i] ?? 0), dtype);
  const steps = arena.stepCounts;
  b.write(steps, new (dtype === 'float32' ? Float32Array : Float64Array)(params.length).fill(2));
  for (const c of calls) {
    const call = c(2);
    const vectors = Object.fromEntries(Object.entries(call.vectors).map(([kn, n]) => [kn, arena.vec(n)]));
    runArenaKernel(call.kernel, b, { layout: arena.layout, vectors, S, steps, hyper: call.hyper });
  }
  const fused: Record<string, number[]> = {
    ...Object.fromEntries(['p', 'g', ...names].map((n) => [n, arena.viewsOf(n).flatMap((t) => Array.from(t.dataSync()))])),
    S: Array.from(b.readSync!(S)),
    steps: Array.from(b.readSync!(steps)),
  };
  const flags = flagsOf(arena);
  arena.dispose();
  // Per tensor, over each parameter's own storages.
  const arr = (x: ArrayLike<number>) => (dtype === 'float32' ? Float32Array.from(x) : Float64Array.from(x));
  const numelOf = (k: number) => SHAPES[k].reduce((a, c) => a * c, 1);
  // The same starting data; the parameter without a gradient has zeros in 'g', as the arena.
  const own = (n: string) => SHAPES.map((_, k) => b.upload(arr(n === 'g' && k === inactive ? new Float64Array(numelOf(k)) : values(n, k, numelOf(k))), dtype));
  const store: Record<string, Storage[]> = Object.fromEntries(['p', 'g', ...names].map((n) => [n, own(n)]));
  const S2 = b.upload(new (dtype === 'float32' ? Float32Array : Float64Array)(S_SLOTS).map((_, i) => S0[i] ?? 0), dtype);
  const steps2 = b.upload(new (dtype === 'float32' ? Float32Array : Float64Array)(SHAPES.length).fill(2), dtype);
  for (const c of calls) {
    const call = c(2);
    runPerTensor(call.kernel, b, {
      dtype,
      params: SHAPES.map((shape, k) => ({ vectors: Object.fromEntries(Object.entries(call.vectors).map(([kn, n]) => [kn, store[n][k]])), numel: shape.reduce((a, c2) => a * c2, 1), group: k % 2, flags: flags[k] })),
      S: S2,
      steps: steps2,
      hyper: call.hyper,
    });
  }
  const loop: Record<string, number[]> = {
    ...Object.fromEntries(Object.entries(store).map(([n, ss]) => [n, ss.flatMap((s) => Array.from(b.readSync!(s)))])),
    S: Array.from(b.readSync!(S2)),
    steps: Array.from(b.readSync!(steps2)),
  };
  for (const ss of Object.values(store)) for (const s of ss) b.release(s);
  b.release(S);
  b.release(S2);
  b.release(steps2);
  for (const p of params) {
    p.grad?.dispose();
    p.dispose();
  }
  return { fused, loop };
}

function expectSameBits(a: Record<string, number[]>, b: Record<string, number[]>, what: string, skip: readonly string[] = []): void {
  for (const n of Object.keys(a)) {
    if (skip.includes(n)) continue;
    const x = a[n];
    const y = b[n];
    expect(x.length, `${what}: ${n} length`).toBe(y.length);
    const bad = x.findIndex((v, i) => !Object.is(v, y[i]));
    if (bad >= 0) throw new Error(`${what}: ${n}[${bad}] = ${x[bad]} (arena) vs ${y[bad]} (per tensor)`);
  }
}

describe('built-in primitives: the arena pass and the per-tensor baseline agree bit for bit', () => {
  const ad = [{ on: true, eta: 0.01, bias: false }, { on: true, eta: 0.02, bias: true }];
  const sgdGroups = [0.1, 0.03].map((lr, g) => ({ lr, momentum: g ? 0 : 0.9, dampening: 0.1, nesterov: g === 0, weightDecay: 5e-4 }));
  const adamGroups = [1e-3, 3e-4].map((lr, g) => ({ lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, decoupled: g === 0 }));
  const cases: { name: string; names: string[]; calls: ((g: number) => KernelCall<string>)[]; S0?: number[] }[] = [
    {
      name: 'norm (ASAM, ESAM draw, or-gate, then) + perturb (adaptive, delta, save) + gated restore + SGD',
      names: ['aux', 'g0', 'momentum_buffer'],
      calls: [
        (g) => normCall('g', 'p', 0, g, { adaptive: ad, select: { key0: 7, key1: 9, beta: 0.6 }, gate: 'or', then: [{ dst: 7, e: ['*', { s: 0 }, 2] }] }),
        (g) => perturbCall('p', 'g', 'aux', 'g0', g, { coef: [0.05, 0.1], normSlot: 0, eps: 1e-12, adaptive: ad, mode: 'delta', gated: true }),
        (g) => lincombCall('g', { c: 0.5, slot: 7 }, [{ x: 'g0', c: -0.25 }], g),
        () => sgdCall('p', 'g', 'momentum_buffer', sgdGroups, { aux: 'aux', mode: 'delta' }, true),
      ],
    },
    {
      name: 'the same with the step gated off (NaN flag set): restored, not updated, not counted',
      names: ['aux', 'momentum_buffer'],
      S0: [0, 1],
      calls: [
        (g) => perturbCall('p', 'g', 'aux', null, g, { coef: [0.05, 0.1], normSlot: null, eps: 0, mode: 'backup', gated: true }),
        () => sgdCall('p', 'g', 'momentum_buffer', sgdGroups, { aux: 'aux', mode: 'backup' }, true),
      ],
    },
    {
      name: 'Adam / AdamW per group, then restore + Adam',
      names: ['exp_avg', 'exp_avg_sq', 'aux'],
      calls: [
        () => adamCall('p', 'g', 'exp_avg', 'exp_avg_sq', adamGroups, null, true),
        (g) => perturbCall('p', 'g', 'aux', null, g, { coef: [0.05, 0.1], normSlot: null, eps: 0, mode: 'backup', gated: false }),
        () => adamCall('p', 'g', 'exp_avg', 'exp_avg_sq', adamGroups, { aux: 'aux', mode: 'backup' }, false),
      ],
    },
  ];
  for (const c of cases) {
    for (const dtype of ['float32', 'float64'] as const) {
      it(`${c.name} (${dtype})`, () => {
        for (const b of [cpu, wasm] as Backend[]) {
          const { fused, loop } = both(b, dtype, c.calls, c.names, c.S0 ?? []);
          // 'g' of the parameter without a gradient is a stand-in per tensor, the arena's zeros here.
          expectSameBits(fused, loop, `${b.name} ${dtype}`, ['g']);
          if (c.S0?.[S_FLAG]) {
            // Gated off: p is back at its start, no step counted.
            expect(fused.steps).toEqual(new Array(SHAPES.length).fill(2));
            expectSameBits({ p: fused.p }, { p: SHAPES.flatMap((s, k) => Array.from((dtype === 'float32' ? Float32Array : Float64Array).from(values('p', k, s.reduce((a, x) => a * x, 1))))) }, `${b.name} ${dtype} restored`);
          } else expect(fused.steps.filter((s) => s > 2).length).toBe(SHAPES.length - 1);
        }
      });
    }
  }

  it('wasm runs the same primitives bit for bit as the float32 reference on cpu', () => {
    const c = cases[0];
    const w = both(wasm, 'float32', c.calls, c.names, []);
    const r = both(cpu, 'float32', c.calls, c.names, []);
    expectSameBits(w.fused, r.fused, 'wasm vs cpu, arena');
    expectSameBits(w.loop, r.loop, 'wasm vs cpu, per tensor', ['g']);
  });

  it('a scalar program alone is one cached definition per program', () => {
    const a: ArenaKernel = scalarProgram([{ dst: 3, e: ['+', { s: 3 }, 1] }]);
    expect(scalarProgram([{ dst: 3, e: ['+', { s: 3 }, 1] }])).toBe(a);
    expect(scalarProgram([{ dst: 3, e: ['+', { s: 3 }, 2] }])).not.toBe(a);
  });
});
