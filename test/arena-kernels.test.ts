/**
 * Arena kernels (src/kernels/arena): one definition, rendered as the TypeScript reference (float64
 * and float32), wasm f32x4, WGSL and the per-tensor baseline. Checks: definition-time errors; the
 * float32 reference equal to wasm bit for bit on awkward sizes; the float64 reference equal to a
 * hand-written formula; reductions (order, overflow, non-finite values); WebGPU within a few ulps;
 * WGSL texts of different definitions never equal; and examples/lion.mjs against PyTorch.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend, Storage } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { FLAG_DECAY, S_SLOTS } from '../src/kernels/fused.js';
import {
  defineArenaKernel,
  defineOptimizer,
  interpretRange,
  referenceKernel,
  runArenaKernel,
  runPerTensor,
  type ArenaKernel,
  type ArenaKernelSpec,
  type GroupHyper,
} from '../src/kernels/arena/index.js';
import * as arenaApi from '../src/kernels/arena/index.js';
// The renderer itself (the public renderWgsl loads it on demand and is async).
import { renderWgsl } from '../src/kernels/arena/wgsl.js';
import { FlatArena } from '../src/optim/arena.js';
import { Tensor } from '../src/tensor/tensor.js';
import { acquireWebGPU, rng } from './helpers/webgpu.js';
import defineLion from '../examples/lion.mjs';

// ------------------------------------------------------------------------------ definitions

const ADAM: ArenaKernelSpec = {
  name: 'adamw-test',
  vectors: { p: 'readwrite', g: 'read', m: 'readwrite', v: 'readwrite' },
  hyper: { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: 0.01 },
  countSteps: true,
  body: ({ p, g, m, v }, h, _s, k) => {
    const wd = k.where(k.flag(FLAG_DECAY), h.wd, 0);
    const m1 = k.add(k.mul(h.beta1, m), k.mul(k.sub(1, h.beta1), g));
    const v1 = k.add(k.mul(h.beta2, v), k.mul(k.sub(1, h.beta2), k.mul(g, g)));
    const step = k.neg(k.div(h.lr, k.sub(1, k.pow(h.beta1, k.step()))));
    const invBc2 = k.div(1, k.sqrt(k.sub(1, k.pow(h.beta2, k.step()))));
    const denom = k.add(k.mul(invBc2, k.sqrt(v1)), h.eps);
    const decayed = k.mul(p, k.sub(1, k.mul(h.lr, wd)));
    return { p: k.add(decayed, k.mul(step, k.div(m1, denom))), m: m1, v: v1 };
  },
};

/** Every elementwise operation of the language, and a guard on a slot (SAM's gate). */
const ALL_OPS: ArenaKernelSpec = {
  name: 'all-ops',
  vectors: { p: 'readwrite', g: 'read', out: 'write' },
  hyper: { a: 0.5, b: -0.25 },
  slots: { flag: 1, scale: 7 },
  guard: (_h, s, k) => k.eq(s.flag, 0),
  body: ({ p, g }, h, s, k) => {
    const x = k.add(k.mul(p, h.a), k.div(g, k.add(k.abs(p), 0.1)));
    const y = k.max(k.min(x, k.sqrt(k.abs(g))), k.neg(k.sign(p)));
    const c = k.or(k.and(k.gt(x, y), k.not(k.le(g, h.b))), k.and(k.ge(p, 0), k.lt(g, 0)));
    const z = k.where(k.or(k.nonfinite(k.div(p, g)), k.eq(p, g)), 7, k.where(c, x, k.sub(y, s.scale)));
    return { p: k.mul(z, s.scale), out: k.sub(x, k.mul(y, z)) };
  },
};

const REDUCE: ArenaKernelSpec = {
  name: 'reductions',
  vectors: { p: 'read', g: 'read' },
  slots: { sum: 0, sq: 2, dot: 4, mx: 5, bad: 6, norm: 7, wnorm: 8 },
  reduce: ({ p, g }, _h, _s, k) => ({
    sum: k.sum(g),
    sq: k.sumSquares(g),
    dot: k.dot(p, g),
    mx: k.maxAbs(g),
    bad: k.anyNonFinite(g),
    norm: k.norm(g),
    // ASAM's weighted norm ||(|p| + eta) g|| on weights only.
    wnorm: k.norm(k.mul(k.where(k.flag(1), k.add(k.abs(p), 0.01), 1), g)),
  }),
};

/** A SAM perturbation with its gradient norm in the same pass (body + reductions). */
const PERTURB: ArenaKernelSpec = {
  name: 'perturb-and-norm',
  vectors: { p: 'readwrite', g: 'read', aux: 'write' },
  hyper: { rho: 0.05 },
  slots: { norm: 0, gnew: 9 },
  body: ({ p, g }, h, s, k) => {
    const e = k.mul(g, k.div(h.rho, k.add(s.norm, 1e-12)));
    return { aux: p, p: k.add(p, e) };
  },
  reduce: ({ p, g }, _h, _s, k) => ({ gnew: k.norm(k.add(p, g)) }),
};

/**
 * A SAM variant the library does not ship, Friendly-SAM (Li et al. 2024): the perturbation follows
 * g - lambda m, with m an EMA of the gradients. Step 1 updates m and reduces ||g - lambda m|| in
 * the same pass (the reduction reads the new m as an expression); step 2 perturbs p by
 * rho (g - lambda m) / (||.|| + eps) and keeps the backup.
 */
const FSAM_DIR: ArenaKernelSpec = {
  name: 'fsam-direction',
  vectors: { g: 'read', m: 'readwrite' },
  hyper: { sigma: 0.6, lambda: 0.6 },
  slots: { norm: 0 },
  body: ({ g, m }, h, _s, k) => ({ m: k.add(k.mul(h.sigma, m), k.mul(k.sub(1, h.sigma), g)) }),
  reduce: ({ g, m }, h, _s, k) => ({ norm: k.norm(k.sub(g, k.mul(h.lambda, k.add(k.mul(h.sigma, m), k.mul(k.sub(1, h.sigma), g))))) }),
};
const FSAM_PERTURB: ArenaKernelSpec = {
  name: 'fsam-perturb',
  vectors: { p: 'readwrite', g: 'read', m: 'read', aux: 'write' },
  hyper: { rho: 0.05, lambda: 0.6 },
  slots: { norm: 0, flag: 1 },
  guard: (_h, s, k) => k.eq(s.flag, 0),
  body: ({ p, g, m }, h, s, k) => ({ aux: p, p: k.add(p, k.mul(k.sub(g, k.mul(h.lambda, m)), k.div(h.rho, k.add(s.norm, 1e-12)))) }),
};

// ------------------------------------------------------------------------------------ setup

let cpu: CpuBackend;
let wasm: WasmBackend;
beforeAll(async () => {
  cpu = new CpuBackend();
  wasm = await createWasmBackend({ threads: 1 });
});
afterAll(() => wasm?.dispose());

/** Shapes with awkward sizes: 1, 3, 63 (a weight), 65 (a weight), 257. */
const SHAPES = [[1], [3], [7, 9], [5, 13], [257]];

interface Case {
  shapes: number[][];
  groupOf: number[];
  /** Parameters without a gradient (inactive). */
  inactive: number[];
  /** Initial values of every vector, arena layout (padding zero). */
  init: Record<string, Float32Array | Float64Array>;
  S: number[];
  steps: number[];
}

function makeCase(kernel: ArenaKernel, seed: number, dtype: 'float32' | 'float64', special?: (name: string, data: Float64Array) => void, shapes: number[][] = SHAPES): Case {
  const r = rng(seed);
  const SHAPES = shapes;
  const groupOf = SHAPES.map((_, i) => i % 2);
  const offsets: number[] = [];
  let off = 0;
  for (const s of SHAPES) {
    offsets.push(off);
    off += Math.ceil(s.reduce((a, b) => a * b, 1) / 64) * 64;
  }
  const init: Case['init'] = {};
  for (const v of [...kernel.vectors.map((x) => x.name)]) {
    const data = new Float64Array(off);
    SHAPES.forEach((s, k) => {
      const n = s.reduce((a, b) => a * b, 1);
      for (let i = 0; i < n; i++) data[offsets[k] + i] = v === 'v' ? r() : 2 * r() - 1;
    });
    special?.(v, data);
    init[v] = dtype === 'float32' ? Float32Array.from(data) : data;
  }
  const S = Array.from({ length: S_SLOTS }, () => 0);
  S[7] = 1.5;
  S[0] = 0.75;
  return { shapes: SHAPES, groupOf, inactive: [3], init, S, steps: SHAPES.map((_, k) => k) };
}

interface Built {
  arena: FlatArena;
  S: Storage;
  read(): Promise<Record<string, Float32Array | Float64Array>>;
}

function build(b: Backend, kernel: ArenaKernel, c: Case, dtype: 'float32' | 'float64'): Built {
  const params = c.shapes.map((s, k) => {
    const n = s.reduce((a, x) => a * x, 1);
    const t = Tensor.fromStorage(b.upload(dtype === 'float32' ? new Float32Array(n) : new Float64Array(n), dtype), s.slice(), b);
    if (!c.inactive.includes(k)) t.requiresGrad_();
    return t;
  });
  const arena = new FlatArena(params, c.groupOf, 2);
  arena.syncGrads();
  for (const v of kernel.vectors) b.write(arena.vec(v.name), c.init[v.name]);
  const S = b.upload(dtype === 'float32' ? Float32Array.from(c.S) : Float64Array.from(c.S), dtype);
  b.write(arena.stepCounts, dtype === 'float32' ? Float32Array.from(c.steps) : Float64Array.from(c.steps));
  return {
    arena,
    S,
    read: async () => {
      const out: Record<string, Float32Array | Float64Array> = {};
      for (const v of kernel.vectors) out[v.name] = (await b.read(arena.vec(v.name))) as Float32Array;
      out.S = (await b.read(S)) as Float32Array;
      out.steps = (await b.read(arena.stepCounts)) as Float32Array;
      return out;
    },
  };
}

const HYPER: GroupHyper = [{}, { lr: 2e-3, beta1: 0.8, a: -1.5, rho: 0.1 }];

function run(b: Backend, kernel: ArenaKernel, built: Built, path?: 'auto' | 'reference' | 'interpret'): void {
  const a = built.arena;
  const vectors = Object.fromEntries(kernel.vectors.map((v) => [v.name, a.vec(v.name)]));
  runArenaKernel(kernel, b, { layout: a.layout, vectors, S: built.S, steps: a.stepCounts, hyper: HYPER }, { path });
}

/** Bit-for-bit equality (any NaN equals any NaN), naming the first difference. */
function expectBits(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  expect(actual.length, `${what}: length`).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(a) && Number.isNaN(e)) continue;
    if (!Object.is(a, e)) expect.fail(`${what}[${i}]: got ${a}, expected ${e}`);
  }
}

/**
 * |a - e| within `ulps` float32 ulps of max(|e|, floor), NaN matching NaN and infinities exactly.
 * `floor` is the scale of the operands a value came from: a momentum near zero is the difference
 * of terms of order one, so its error is measured in their ulps, not its own.
 */
function expectUlps(actual: ArrayLike<number>, expected: ArrayLike<number>, ulps: number, what: string, floor = 1e-6): void {
  expect(actual.length, `${what}: length`).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(e) || !Number.isFinite(e)) {
      if (!Object.is(a, e) && !(Number.isNaN(a) && Number.isNaN(e))) expect.fail(`${what}[${i}]: got ${a}, expected ${e}`);
      continue;
    }
    const ulp = Math.max(Math.abs(e) * 2 ** -23, floor * 2 ** -23);
    if (!(Math.abs(a - e) <= ulps * ulp)) expect.fail(`${what}[${i}]: got ${a}, expected ${e} (${((a - e) / ulp).toFixed(1)} ulps)`);
  }
}

// ---------------------------------------------------------------------------------- tests

describe('arena kernels: definitions are checked when defined', () => {
  const base = { name: 'bad', vectors: { p: 'readwrite', g: 'read' } } as const;
  const cases: [string, ArenaKernelSpec, RegExp][] = [
    ['undeclared vector', { ...base, body: (v, _h, _s, k) => ({ p: k.add(v.p, v.q) }) }, /arena kernel "bad": body: undeclared vector 'q'/],
    ['undeclared hyper', { ...base, body: (v, h, _s, k) => ({ p: k.mul(v.p, h.lr) }) }, /"bad": body: undeclared hyper-parameter 'lr'/],
    ['undeclared slot', { ...base, body: (v, _h, s, k) => ({ p: k.mul(v.p, s.norm) }) }, /"bad": body: undeclared scalar slot 'norm'/],
    ['type mismatch', { ...base, body: (v, _h, _s, k) => ({ p: k.add(v.p, k.gt(v.g, 0) as never) }) }, /"bad": body: add: second operand: type mismatch: expected a float, got a boolean/],
    ['non-boolean condition', { ...base, body: (v, _h, _s, k) => ({ p: k.where(v.g, 1, 2) }) }, /"bad": body: where: condition: type mismatch: expected a boolean, got a float \(g\)/],
    ['boolean written', { ...base, body: (v, _h, _s, k) => ({ p: k.gt(v.g, 0) }) }, /"bad": body, write to 'p': type mismatch/],
    ['reduction as a value', { ...base, body: (v, _h, _s, k) => ({ p: k.mul(v.p, k.norm(v.g) as never) }) }, /"bad": body: mul: second operand: a reduction \(norm of g\) used as an elementwise value/],
    ['reduction written', { ...base, body: (v, _h, _s, k) => ({ p: k.norm(v.g) as never }) }, /"bad": body, write to 'p': a reduction \(norm of g\) used as an elementwise value/],
    ['write to a read-only input', { ...base, body: (v, _h, _s, k) => ({ p: v.p, g: k.mul(v.g, 2) }) }, /"bad": body, write to 'g': write to read-only input 'g'/],
    ['write-only read', { name: 'bad', vectors: { p: 'readwrite', aux: 'write' }, body: (v, _h, _s, k) => ({ p: v.p, aux: k.add(v.aux, 1) }) }, /"bad": body: reads vector 'aux', which is declared 'write'/],
    ['writable never written', { ...base, vectors: { ...base.vectors, m: 'readwrite' }, body: (v) => ({ p: v.p }) }, /"bad": body: vector 'm' is declared 'readwrite' but never written/],
    ['pow of a vector', { ...base, body: (v, _h, _s, k) => ({ p: k.pow(v.p, 2) }) }, /"bad": body: pow: takes uniform operands/],
    ['expression for a slot', { ...base, vectors: { p: 'read', g: 'read' }, slots: { n: 0 }, reduce: (v, _h, _s, k) => ({ n: k.mul(v.g, v.g) as never }) }, /"bad": reduce, slot 'n': expected a reduction .*got an elementwise expression \(mul\(g, g\)\)/],
    ['undeclared reduction slot', { ...base, vectors: { p: 'read', g: 'read' }, reduce: (v, _h, _s, k) => ({ n: k.norm(v.g) }) }, /"bad": reduce, slot 'n': writes undeclared scalar slot 'n'/],
    ['reduction of a uniform value', { ...base, vectors: { p: 'read', g: 'read' }, slots: { n: 0 }, reduce: (_v, _h, _s, k) => ({ n: k.sum(3) }) }, /"bad": reduce: sum: reduces a uniform value/],
    ['guard reading the step', { ...base, guard: (_h, _s, k) => k.gt(k.step(), 1), body: (v) => ({ p: v.p }) }, /"bad": guard: must not read the step count/],
    ['bad access', { name: 'bad', vectors: { p: 'rw' as never }, body: (v) => ({ p: v.p }) }, /"bad": vectors: 'p' has access "rw"/],
  ];
  for (const [what, spec, re] of cases) {
    it(`rejects: ${what}`, () => {
      expect(() => defineArenaKernel(spec)).toThrow(re);
    });
  }
  it('rejects a guard that is not uniform', () => {
    // The guard gets no vectors; a vector node smuggled in from another definition is caught too.
    let leaked: unknown;
    defineArenaKernel({ name: 'leak', vectors: { p: 'readwrite' }, body: (v) => ((leaked = v.p), { p: v.p }) });
    expect(() => defineArenaKernel({ ...base, guard: (_h, _s, k) => k.gt(leaked as never, 0), body: (v) => ({ p: v.p }) })).toThrow(/"bad": guard: must be uniform .* reads an arena vector/);
  });
  it('defineOptimizer requires p readwrite and g read', () => {
    expect(() => defineOptimizer({ name: 'opt', vectors: { p: 'readwrite', g: 'readwrite' }, body: (v) => ({ p: v.p, g: v.g }) })).toThrow(/arena optimizer "opt": vectors: 'g'/);
  });
});

describe('arena kernels: float32 reference == wasm f32x4, bit for bit', () => {
  const kernels = [ADAM, ALL_OPS, REDUCE, PERTURB, FSAM_DIR, FSAM_PERTURB].map(defineArenaKernel);
  // Clean data, and a NaN and an Inf in the gradient of one active parameter and a 1e30 in another.
  const specials = {
    clean: undefined,
    'NaN, Inf, 1e30': (name: string, d: Float64Array) => {
      if (name === 'g') {
        d[64 + 1] = NaN;
        d[64 + 2] = Infinity;
        d[128 + 5] = 1e30;
      }
    },
  };
  for (const kernel of kernels) for (const [data, special] of Object.entries(specials)) {
    it(`${kernel.name} (${data}): cpu reference, generated and interpreted, equal wasm over sizes 1, 3, 63, 65, 257`, async () => {
      // Two runs in a row: the second starts from the first's state (steps, momenta).
      const c = makeCase(kernel, 11, 'float32', special);
      const ref = build(cpu, kernel, c, 'float32');
      const interp = build(cpu, kernel, c, 'float32');
      const simd = build(wasm, kernel, c, 'float32');
      for (let t = 0; t < 2; t++) {
        run(cpu, kernel, ref);
        run(cpu, kernel, interp, 'interpret');
        run(wasm, kernel, simd);
      }
      const [r, i, w] = await Promise.all([ref.read(), interp.read(), simd.read()]);
      for (const name of Object.keys(r)) {
        expectBits(i[name], r[name], `${kernel.name} interpreted ${name}`);
        expectBits(w[name], r[name], `${kernel.name} wasm ${name}`);
      }
      // The kernel did something: a written vector or a slot changed.
      const written = kernel.writes.map((w) => kernel.vectors[w.vector].name);
      const changed = written.length > 0 ? written.some((v) => r[v].some((x, j) => !Object.is(x, c.init[v][j]))) : r.S.some((x, j) => x !== Math.fround(c.S[j]));
      expect(changed).toBe(true);
      // On clean data every slot a reduction writes is finite (so the comparison above saw numbers, not NaNs).
      if (!special) for (const red of kernel.reductions) expect(Number.isFinite(r.S[red.slot]), `slot ${red.slotName}`).toBe(true);
    });
  }

  it('the per-tensor baseline equals the arena pass bit for bit (cpu and wasm)', async () => {
    for (const b of [cpu, wasm] as Backend[]) {
      for (const spec of [ADAM, REDUCE]) {
        const kernel = defineArenaKernel(spec);
        const c = makeCase(kernel, 5, 'float32');
        const arena = build(b, kernel, c, 'float32');
        run(b, kernel, arena);
        const expected = await arena.read();
        // The same data as lone tensors.
        const offsets = arena.arena.layout.params.map((p) => p.offset);
        const params = c.shapes.map((s, k) => {
          const n = s.reduce((a, x) => a * x, 1);
          const vectors = Object.fromEntries(kernel.vectors.map((v) => [v.name, b.upload(Float32Array.from(c.init[v.name].subarray(offsets[k], offsets[k] + n)), 'float32')]));
          return { vectors, numel: n, group: c.groupOf[k], flags: arena.arena.layout.params[k].flags };
        });
        const S = b.upload(Float32Array.from(c.S), 'float32');
        const steps = b.upload(Float32Array.from(c.steps), 'float32');
        runPerTensor(kernel, b, { dtype: 'float32', params, S, steps, hyper: HYPER });
        for (const v of kernel.vectors) {
          for (let k = 0; k < params.length; k++) {
            const got = await b.read(params[k].vectors[v.name]);
            expectBits(got, expected[v.name].subarray(offsets[k], offsets[k] + params[k].numel), `${b.name} per-tensor ${kernel.name} ${v.name}[param ${k}]`);
          }
        }
        expectBits(await b.read(S), expected.S, `${b.name} per-tensor ${kernel.name} S`);
        expectBits(await b.read(steps), expected.steps, `${b.name} per-tensor ${kernel.name} steps`);
      }
    }
  });

  it('the generated reference and the interpreter are the same code path semantics (float64)', () => {
    const kernel = defineArenaKernel(ALL_OPS);
    const n = 130;
    const r = rng(3);
    const mk = () => Float64Array.from({ length: n }, () => 2 * r() - 1);
    const V1 = [mk(), mk(), new Float64Array(n)];
    const V2 = V1.map((a) => a.slice());
    const C = Float64Array.from(kernel.coefs.map((c, j) => (c.ty === 'b' ? j % 2 : 0.3 * (j + 1))));
    referenceKernel(kernel, 'float64')(V1, 0, n, C, [], 0, true);
    interpretRange(kernel, 'float64', V2, 0, n, C, [], 0, true);
    V1.forEach((a, i) => expectBits(V2[i], a, `vector ${i}`));
  });
});

describe('arena kernels: float64 reference against hand-written formulas', () => {
  it('AdamW: two steps equal the textbook update computed by hand in float64', async () => {
    const kernel = defineArenaKernel(ADAM);
    const c = makeCase(kernel, 21, 'float64');
    const built = build(cpu, kernel, c, 'float64');
    run(cpu, kernel, built);
    run(cpu, kernel, built);
    const got = await built.read();
    const p = Float64Array.from(c.init.p);
    const m = Float64Array.from(c.init.m);
    const v = Float64Array.from(c.init.v);
    const g = c.init.g;
    built.arena.layout.params.forEach((info, k) => {
      if (c.inactive.includes(k)) return;
      const H = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: 0.01, ...HYPER[info.group] };
      for (let t = c.steps[k] + 1; t <= c.steps[k] + 2; t++) {
        for (let i = info.offset; i < info.offset + info.numel; i++) {
          m[i] = H.beta1 * m[i] + (1 - H.beta1) * g[i];
          v[i] = H.beta2 * v[i] + (1 - H.beta2) * (g[i] * g[i]);
          const denom = (1 / Math.sqrt(1 - H.beta2 ** t)) * Math.sqrt(v[i]) + H.eps;
          p[i] = p[i] * (1 - H.lr * H.wd) + -(H.lr / (1 - H.beta1 ** t)) * (m[i] / denom);
        }
      }
    });
    expectBits(got.p, p, 'p');
    expectBits(got.m, m, 'm');
    expectBits(got.v, v, 'v');
    expectBits(got.steps, c.steps.map((s, k) => (c.inactive.includes(k) ? s : s + 2)), 'steps');
  });

  it('Friendly-SAM: direction norm and perturbation equal the formula computed by hand in float64', async () => {
    const dir = defineArenaKernel(FSAM_DIR);
    const perturb = defineArenaKernel(FSAM_PERTURB);
    const c = makeCase(perturb, 31, 'float64');
    const built = build(cpu, perturb, c, 'float64');
    const a = built.arena;
    const H = (g: number) => ({ sigma: 0.6, lambda: 0.6, rho: 0.05, ...HYPER[g] });
    runArenaKernel(dir, cpu, { layout: a.layout, vectors: { g: a.vec('g'), m: a.vec('m') }, S: built.S, hyper: HYPER });
    runArenaKernel(perturb, cpu, { layout: a.layout, vectors: { p: a.vec('p'), g: a.vec('g'), m: a.vec('m'), aux: a.vec('aux') }, S: built.S, hyper: HYPER });
    const got = await built.read();
    const m = Float64Array.from(c.init.m);
    let sq = 0;
    a.layout.params.forEach((info, k) => {
      if (c.inactive.includes(k)) return;
      const h = H(info.group);
      for (let i = info.offset; i < info.offset + info.numel; i++) {
        m[i] = h.sigma * c.init.m[i] + (1 - h.sigma) * c.init.g[i];
        sq += (c.init.g[i] - h.lambda * m[i]) ** 2;
      }
    });
    const norm = Math.sqrt(sq);
    expect(Math.abs(got.S[0] / norm - 1)).toBeLessThan(1e-14);
    const p = Float64Array.from(c.init.p);
    a.layout.params.forEach((info, k) => {
      if (c.inactive.includes(k)) return;
      const h = H(info.group);
      for (let i = info.offset; i < info.offset + info.numel; i++) p[i] = c.init.p[i] + (c.init.g[i] - h.lambda * m[i]) * (h.rho / (got.S[0] + 1e-12));
    });
    expectBits(got.m, m, 'm');
    expectBits(got.p, p, 'p');
    expectBits(got.aux.filter((_, i) => a.layout.params.some((info, k) => !c.inactive.includes(k) && i >= info.offset && i < info.offset + info.numel)), c.init.p.filter((_, i) => a.layout.params.some((info, k) => !c.inactive.includes(k) && i >= info.offset && i < info.offset + info.numel)), 'aux (backup)');
  });

  it('reductions: sums, dot, max |x|, the non-finite flag and the norms over active parameters', async () => {
    const kernel = defineArenaKernel(REDUCE);
    const c = makeCase(kernel, 8, 'float64');
    const built = build(cpu, kernel, c, 'float64');
    run(cpu, kernel, built);
    const S = (await built.read()).S;
    let sum = 0, sq = 0, dot = 0, mx = 0, wsq = 0;
    built.arena.layout.params.forEach((info, k) => {
      if (c.inactive.includes(k)) return;
      for (let i = info.offset; i < info.offset + info.numel; i++) {
        const g = c.init.g[i];
        sum += g;
        sq += g * g;
        dot += c.init.p[i] * g;
        mx = Math.max(mx, Math.abs(g));
        const w = (info.flags & 1 ? Math.abs(c.init.p[i]) + 0.01 : 1) * g;
        wsq += w * w;
      }
    });
    const close = (a: number, e: number) => expect(Math.abs(a - e)).toBeLessThanOrEqual(1e-13 * Math.max(1, Math.abs(e)));
    close(S[0], sum);
    close(S[2], sq);
    close(S[4], dot);
    expect(S[5]).toBe(mx);
    expect(S[6]).toBe(0);
    close(S[7], Math.sqrt(sq));
    close(S[8], Math.sqrt(wsq));
  });

  it('norm is overflow- and underflow-free in float32; non-finite values are flagged directly', async () => {
    const kernel = defineArenaKernel(REDUCE);
    for (const b of [cpu, wasm] as Backend[]) {
      for (const [scale, expectBad] of [[1e30, 0], [1e-30, 0]] as const) {
        const c = makeCase(kernel, 9, 'float32', (name, d) => {
          if (name === 'g') for (let i = 0; i < d.length; i++) d[i] *= scale;
        });
        const built = build(b, kernel, c, 'float32');
        run(b, kernel, built);
        const S = (await built.read()).S;
        let sq = 0;
        built.arena.layout.params.forEach((info, k) => {
          if (c.inactive.includes(k)) return;
          for (let i = info.offset; i < info.offset + info.numel; i++) sq += (c.init.g[i] / scale) ** 2;
        });
        expect(Number.isFinite(S[7]), `${b.name} norm at scale ${scale}`).toBe(true);
        expect(Math.abs(S[7] / (scale * Math.sqrt(sq)) - 1)).toBeLessThan(1e-5);
        expect(S[6]).toBe(expectBad);
        // The plain float32 sum of squares overflows (or underflows) where the norm does not.
        expect(scale === 1e30 ? S[2] === Infinity : S[2] === 0).toBe(true);
      }
      for (const [bad, norm] of [[NaN, NaN], [Infinity, Infinity]] as const) {
        const c = makeCase(kernel, 10, 'float32', (name, d) => {
          if (name === 'g') d[64 + 2] = bad;
          // Garbage in the inactive parameter (3) is never looked at.
          if (name === 'g') d[192 + 1] = NaN;
        });
        const built = build(b, kernel, c, 'float32');
        run(b, kernel, built);
        const S = (await built.read()).S;
        expect(S[6], `${b.name}: flag for ${bad}`).toBe(1);
        expect(Object.is(S[7], norm) || (Number.isNaN(norm) && Number.isNaN(S[7])), `${b.name}: norm with ${bad} is ${S[7]}`).toBe(true);
      }
      const c = makeCase(kernel, 10, 'float32', (name, d) => {
        if (name === 'g') d[192 + 1] = NaN;
      });
      const built = build(b, kernel, c, 'float32');
      run(b, kernel, built);
      expect((await built.read()).S[6], `${b.name}: a NaN in an inactive parameter`).toBe(0);
    }
  });
});

describe('arena kernels: WGSL', () => {
  it('different definitions never render the same shader (the pipeline key)', () => {
    const half = defineArenaKernel({ name: 'scale', vectors: { p: 'readwrite' }, body: (v, _h, _s, k) => ({ p: k.mul(v.p, 0.5) }) });
    const quarter = defineArenaKernel({ name: 'scale', vectors: { p: 'readwrite' }, body: (v, _h, _s, k) => ({ p: k.mul(v.p, 0.25) }) });
    const texts = [ADAM, ALL_OPS, REDUCE, PERTURB, FSAM_DIR, FSAM_PERTURB].map((s) => renderWgsl(defineArenaKernel(s), 2));
    texts.push(renderWgsl(half, 1), renderWgsl(quarter, 1));
    expect(new Set(texts).size).toBe(texts.length);
    expect(half.signature).not.toBe(quarter.signature);
    // The same definition renders the same text (so the cache hits).
    expect(renderWgsl(defineArenaKernel(ADAM), 2)).toBe(texts[0]);
  });

  it('reductions over an arena of thousands of blocks: wasm bit for bit, webgpu within a few ulps (the tree pass)', async () => {
    const kernel = defineArenaKernel(REDUCE);
    const shapes = [[300, 400], [7], [1000, 3], [65]];
    const c = makeCase(kernel, 17, 'float32', undefined, shapes);
    c.inactive = [];
    const ref = build(cpu, kernel, c, 'float32');
    const simd = build(wasm, kernel, c, 'float32');
    expect(ref.arena.layout.blocks).toBeGreaterThan(1024);
    run(cpu, kernel, ref);
    run(wasm, kernel, simd);
    const r = (await ref.read()).S;
    expectBits((await simd.read()).S, r, 'wasm S');
    const { backend: gpu } = await acquireWebGPU();
    if (!gpu) return;
    const dev = build(gpu, kernel, c, 'float32');
    run(gpu, kernel, dev);
    const g = (await dev.read()).S;
    // Sums of 10^5 terms of either sign cancel: measured against the sum of magnitudes' scale (100).
    expectUlps(g, r, 8, 'webgpu S', 100);
  }, 120_000);

  it('webgpu agrees with the float32 reference within a few ulps', async () => {
    const { backend: gpu, reason } = await acquireWebGPU();
    if (!gpu) {
      console.warn(`skipped: no WebGPU adapter (${reason})`);
      return;
    }
    for (const spec of [ADAM, ALL_OPS, REDUCE, PERTURB, FSAM_DIR, FSAM_PERTURB]) {
      const kernel = defineArenaKernel(spec);
      const c = makeCase(kernel, 13, 'float32', (name, d) => {
        if (name === 'g' && spec === REDUCE) d[64 + 2] = Infinity;
      });
      const ref = build(cpu, kernel, c, 'float32');
      const dev = build(gpu, kernel, c, 'float32');
      for (let t = 0; t < 2; t++) {
        run(cpu, kernel, ref);
        run(gpu, kernel, dev);
      }
      const [r, g] = await Promise.all([ref.read(), dev.read()]);
      // Values are of order one. Coefficients that read the step count (Adam's 1 - beta^t) or S are
      // computed on the device in float32, where 1 - 0.999^t cancels: an error of a few ulps of the
      // update, measured against the scale of the operands (0.1) rather than a small result.
      for (const name of Object.keys(r)) expectUlps(g[name], r[name], 8, `${kernel.name} webgpu ${name}`, 0.1);
    }
  }, 120_000);
});

// -------------------------------------------------------------------------------- Lion example

interface LionFixture {
  shapes: number[][];
  group_of: number[];
  groups: { lr: number; beta1: number; beta2: number; weight_decay: number }[];
  init: number[][];
  steps: { grads: (number[] | null)[]; params: number[][]; exp_avg: number[][] }[];
}

describe('examples/lion.mjs against PyTorch (test/fixtures/optim/lion.json)', () => {
  const fx = JSON.parse(readFileSync(new URL('./fixtures/optim/lion.json', import.meta.url), 'utf8')) as LionFixture;
  const Lion = defineLion(arenaApi);

  async function trajectory(b: Backend, fused: boolean): Promise<void> {
    const params = fx.shapes.map((s, k) => Tensor.fromStorage(b.upload(Float32Array.from(fx.init[k]), 'float32'), s.slice(), b).requiresGrad_());
    const groups = fx.groups.map((g, gi) => ({ params: params.filter((_, k) => fx.group_of[k] === gi), ...g }));
    const opt = Lion.create(groups, { fused });
    try {
      for (const [t, st] of fx.steps.entries()) {
        opt.zeroGrad(true);
        params.forEach((p, k) => {
          const g = st.grads[k];
          if (g) p.grad = Tensor.fromStorage(b.upload(Float32Array.from(g), 'float32'), p.shape.slice(), b);
        });
        opt.step();
        const m = opt.stateTensors('exp_avg');
        for (let k = 0; k < params.length; k++) {
          // torch's add(x, alpha) may run as a fused multiply-add; flatgrad rounds each operation.
          expectUlps(await params[k].data(), st.params[k], 4, `${b.name} ${fused ? 'fused' : 'per-tensor'} step ${t} param ${k}`, 0.05);
          expectUlps(await m[k].data(), st.exp_avg[k], 4, `${b.name} ${fused ? 'fused' : 'per-tensor'} step ${t} exp_avg ${k}`, 0.05);
        }
      }
    } finally {
      opt.dispose();
    }
  }

  it('fused and per tensor on cpu', async () => {
    await trajectory(cpu, true);
    await trajectory(cpu, false);
  });
  it('fused and per tensor on wasm', async () => {
    await trajectory(wasm, true);
    await trajectory(wasm, false);
  });
  it('fused on webgpu', async () => {
    const { backend: gpu, reason } = await acquireWebGPU();
    if (!gpu) {
      console.warn(`skipped: no WebGPU adapter (${reason})`);
      return;
    }
    await trajectory(gpu, true);
  }, 120_000);
});
