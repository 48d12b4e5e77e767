/**
 * The wasm renderer's fast paths for arena kernels (issue 12: arena kernels at the memory
 * bandwidth), each of which must leave results unchanged to the last bit:
 *
 * - a `where` on a boolean coefficient (an option switch, constant over a pass) is rendered as
 *   the branch it picks, one module per combination of those booleans;
 * - max |x| (maxAbs, and the block maximum of norm) as a signed-integer maximum of magnitudes;
 * - the host tree of block partials combined in place over the wasm memory's float32 partials,
 *   with the norm tree's ratio-1 side taking no division.
 *
 * Each against the float32 TypeScript reference of the same kernel, bit for bit.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { FLAG_DECAY, S_SLOTS } from '../src/kernels/fused.js';
import { defineArenaKernel, runArenaKernel, type ArenaKernel } from '../src/kernels/arena/index.js';
import { renderWasm } from '../src/kernels/arena/wasm.js';
import { combinePartials, scalable } from '../src/kernels/arena/reduce.js';
import { FlatArena } from '../src/optim/arena.js';
import { Tensor } from '../src/tensor/tensor.js';

/** Momentum-SGD-like: switches on a flag, a hyper-parameter and a slot; and reductions of p. */
const SWITCHED: ArenaKernel = defineArenaKernel({
  name: 'switched-fast-paths',
  vectors: { p: 'readwrite', g: 'read', buf: 'readwrite' },
  hyper: { lr: 0.1, momentum: 0.9, nesterov: 0 },
  slots: { gate: 3, norm: 4, maxabs: 5, sum: 6 },
  body: ({ p, g, buf }, h, s, k) => {
    const d = k.where(k.flag(FLAG_DECAY), k.add(g, k.mul(0.01, p)), g);
    const b1 = k.where(k.gt(h.momentum, 0), k.add(k.mul(h.momentum, buf), d), d);
    const dir = k.where(k.ne(h.nesterov, 0), k.add(d, k.mul(h.momentum, b1)), b1);
    return { p: k.where(k.eq(s.gate, 0), k.sub(p, k.mul(h.lr, dir)), p), buf: b1 };
  },
  reduce: ({ p, g }, _h, _s, k) => ({ norm: k.norm(g), maxabs: k.maxAbs(p), sum: k.sum(g) }),
});

/** Weights (2-D: decayed under 'weights') and vectors (1-D: not), sizes off the 64-element blocks. */
const SHAPES = [[37, 41], [300], [5, 129], [1], [64], [3, 3, 21]];

let wasm: WasmBackend;
beforeAll(async () => {
  wasm = await createWasmBackend({ threads: 1 });
});
afterAll(() => wasm.dispose?.());

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** One pass of SWITCHED over fresh data on `path`; returns every vector and S. */
async function pass(path: 'auto' | 'reference', hyper: Record<string, number>, gate: number, special: (v: string, d: Float32Array) => void): Promise<Record<string, Float32Array>> {
  const params = SHAPES.map((s) => Tensor.fromStorage(wasm.upload(new Float32Array(s.reduce((a, x) => a * x, 1)), 'float32'), s.slice(), wasm).requiresGrad_());
  const arena = new FlatArena(params, params.map(() => 0), 1, 'weights');
  arena.syncGrads();
  const rnd = seeded(7);
  for (const v of SWITCHED.vectors) {
    const d = new Float32Array(arena.layout.numel);
    for (let i = 0; i < d.length; i++) d[i] = 2 * rnd() - 1;
    special(v.name, d);
    wasm.write(arena.vec(v.name), d);
  }
  const S0 = new Float32Array(S_SLOTS);
  S0[3] = gate;
  const S = wasm.upload(S0, 'float32');
  const vectors = Object.fromEntries(SWITCHED.vectors.map((v) => [v.name, arena.vec(v.name)]));
  runArenaKernel(SWITCHED, wasm, { layout: arena.layout, vectors, S, steps: arena.stepCounts, hyper: [hyper] }, { path });
  const out: Record<string, Float32Array> = {};
  for (const v of SWITCHED.vectors) out[v.name] = (await wasm.read(arena.vec(v.name))) as Float32Array;
  out.S = (await wasm.read(S)) as Float32Array;
  wasm.release(S);
  arena.dispose();
  for (const p of params) p.dispose();
  return out;
}

function expectBits(actual: Float32Array, expected: Float32Array, what: string): void {
  expect(actual.length, what).toBe(expected.length);
  for (let i = 0; i < actual.length; i++) {
    if (Number.isNaN(actual[i]) && Number.isNaN(expected[i])) continue;
    if (!Object.is(actual[i], expected[i])) expect.fail(`${what}[${i}]: wasm ${actual[i]}, reference ${expected[i]}`);
  }
}

describe('wasm arena kernels: fast paths give the reference bits', () => {
  const cases: [string, (v: string, d: Float32Array) => void][] = [
    ['clean', () => {}],
    // -0 (its magnitude is +0), subnormals, an infinity and a NaN in p (maxAbs), 1e30 in g (norm's scaling).
    ['-0, subnormal, Inf, NaN, 1e30', (v, d) => {
      if (v === 'p') {
        d.fill(-0, 0, 70);
        d[80] = 1e-45;
        d[81] = -3e-40;
        d[1600] = -Infinity;
        d[1700] = NaN;
      }
      if (v === 'g') d[90] = 1e30;
    }],
  ];
  for (const [label, special] of cases) {
    for (const hyper of [{}, { momentum: 0 }, { nesterov: 1 }] as Record<string, number>[]) {
      for (const gate of [0, 1]) {
        it(`${label}, hyper ${JSON.stringify(hyper)}, gate ${gate}`, async () => {
          const ref = await pass('reference', hyper, gate, special);
          const got = await pass('auto', hyper, gate, special);
          for (const k of Object.keys(ref)) expectBits(got[k], ref[k], k);
          // The reductions ran (a test that reads zeros would pass vacuously).
          expect(ref.S[4]).toBeGreaterThan(0);
          expect(ref.S[6]).not.toBe(0);
        });
      }
    }
  }

  it('a where on a fixed boolean coefficient is rendered as its branch alone', () => {
    const bools = SWITCHED.coefs.map((c) => (c.ty === 'b' ? true : null));
    expect(bools.filter((b) => b !== null).length, 'the kernel has boolean coefficients').toBeGreaterThanOrEqual(3);
    const generic = renderWasm(SWITCHED, false).length;
    const allTrue = renderWasm(SWITCHED, false, bools).length;
    const allFalse = renderWasm(SWITCHED, false, bools.map((b) => (b === null ? null : false))).length;
    // Fewer operations rendered: each untaken branch (and the select) is gone.
    expect(allTrue).toBeLessThan(generic);
    expect(allFalse).toBeLessThan(generic);
  });
});

describe('combinePartials: the norm tree', () => {
  /**
   * The tree as reduce.ts documents it, written independently: exponents from Math.log2 (exact
   * for the float32 values used here, none of them subnormal), F(d) = 2^(2d) for every term
   * (1 on the larger side, no shortcut) and 0 below 2^-126.
   */
  function documented(m: number[], s: number[]): number {
    const P = m.slice();
    const S = s.slice();
    const r = Math.fround;
    const exp = (x: number) => Math.min(Math.max(Math.floor(Math.log2(x)) + 127, 1), 253);
    const F = (d: number) => (2 * d < -126 ? 0 : 2 ** (2 * d));
    for (let w = 1; w < P.length; w *= 2) {
      for (let i = 0; i + w < P.length; i += 2 * w) {
        const M = Math.max(P[i], P[i + w]);
        if (!scalable(M)) S[i] = 0;
        else {
          const e = exp(M);
          const t1 = P[i] === 0 ? 0 : r(S[i] * F(exp(P[i]) - e));
          const t2 = P[i + w] === 0 ? 0 : r(S[i + w] * F(exp(P[i + w]) - e));
          S[i] = r(t1 + t2);
        }
        P[i] = M;
      }
    }
    return scalable(P[0]) ? r(r(Math.sqrt(S[0])) * 2 ** (exp(P[0]) - 127)) : P[0];
  }

  it('equals the documented tree on float32 and float64 partials, equal maxima included', () => {
    const rnd = seeded(11);
    for (const blocks of [1, 2, 3, 7, 64, 1000]) {
      // Repeated maxima (the factor-1 shortcut on both sides), zeros, magnitudes spread over
      // many binades, and some over 2^63 below the largest (their terms flushed to 0).
      const m = Array.from({ length: blocks }, (_, i) => Math.fround(i % 5 === 0 ? 2.5 : i % 7 === 0 ? 0 : i % 11 === 0 ? 1e-30 * rnd() : rnd() * 3 * 2 ** -(i % 40)));
      const s = m.map((x) => (x === 0 ? 0 : Math.fround(1 + rnd() * 60)));
      const want = documented(m, s);
      const f32 = combinePartials('norm', [Float32Array.from(m), Float32Array.from(s)], blocks, 'float32');
      const f64 = combinePartials('norm', [Float64Array.from(m), Float64Array.from(s)], blocks, 'float32');
      expect(Object.is(f32, want), `blocks ${blocks}: float32 partials ${f32}, documented ${want}`).toBe(true);
      expect(Object.is(f64, want), `blocks ${blocks}: float64 partials ${f64}, documented ${want}`).toBe(true);
    }
  });
});
