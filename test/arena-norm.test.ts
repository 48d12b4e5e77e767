/**
 * The arena norm's power-of-two scaling (src/kernels/arena/reduce.ts): a block whose sum of
 * squares lies in the direct range takes it in one pass; the others find their maximum and sum
 * (x f)^2 in two more; the tree combines partials by exponent differences. Checked here over blocks whose
 * magnitudes span float32's whole range (subnormals, the direct range's edges, 1e38), across
 * thousands of blocks (the wasm tree against the host tree), for a kernel that also writes the
 * vector it takes the norm of (the norm sees the old values), and on WebGPU within tolerance.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { defineArenaKernel, type ArenaKernel } from '../src/kernels/arena/index.js';
import { combinePartials, NORM_DIRECT, normDirect } from '../src/kernels/arena/reduce.js';
import { renderWasmTree } from '../src/kernels/arena/wasm.js';
import { expectBits, runArena } from './helpers/arena-run.js';
import { acquireWebGPU, rng } from './helpers/webgpu.js';

let cpu: Backend;
let wasm: Backend;
beforeAll(async () => {
  cpu = new CpuBackend();
  wasm = await createWasmBackend({ threads: 1 });
});

const NORM = defineArenaKernel({ name: 'norm-test', vectors: { x: 'read' }, slots: { n: 0, ss: 1 }, reduce: ({ x }, _h, _s, k) => ({ n: k.norm(x), ss: k.sumSquares(x) }) });
/** Writes x in place and takes the norm of its old values (norms run before a block is written). */
const NORM_AND_WRITE = defineArenaKernel({
  name: 'norm-write-test',
  vectors: { x: 'readwrite' },
  slots: { n: 0, mx: 1 },
  body: ({ x }, _h, _s, k) => ({ x: k.mul(x, 0.5) }),
  reduce: ({ x }, _h, _s, k) => ({ n: k.norm(x), mx: k.maxAbs(x) }),
});

/** Block b's scale: 2^E with E sweeping float32's exponents, zeros, subnormal-only and 1e38 blocks. */
function blockScale(b: number): number {
  const sweep = [0, -20, 20, -39, -40, -41, 39, 40, 41, -60, 60, -100, 100, -126, 120, -140, -149];
  const e = sweep[b % sweep.length];
  return b % 23 === 22 ? 0 : 2 ** e;
}

/** Values of `n` elements: per 64-element block a random spread times the block's scale (float32). */
function values(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, (_, i) => {
    const s = blockScale(i >> 6);
    // Within a block, magnitudes over several binades (some squares underflow in the direct sum).
    return Math.fround((r() * 2 - 1) * s * 2 ** -Math.floor(r() * 30));
  });
}

const runOn = async (b: Backend, kernel: ArenaKernel, sizes: readonly number[], x: Float32Array, path?: 'auto' | 'reference' | 'interpret') => {
  const r = await runArena(b, kernel, sizes, { x }, { path });
  return { S: r.S, x: r.vectors.x };
};

/** The norm in float64 over the float32 values (what the float32 result approximates). */
function exactNorm(x: Float32Array): number {
  const m = x.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
  if (m === 0) return 0;
  let s = 0;
  for (const v of x) s += (v / m) ** 2;
  return m * Math.sqrt(s);
}

// Parameters of awkward sizes (tails inside blocks), about 4200 blocks in all.
const SIZES = [1, 63, 65, 257, 70_000, 3, 200_001];
const TOTAL = SIZES.reduce((a, n) => a + n, 0);

describe('arena norm: power-of-two scaling', () => {
  it('the direct rule: h = floor(exponent / 2) for sums of squares within 2^+-60, null for the others; the data has both', () => {
    expect(normDirect(1, 'float32')).toBe(0);
    expect(normDirect(3, 'float32')).toBe(0);
    expect(normDirect(0.75, 'float32')).toBe(-1);
    expect(normDirect(2 ** NORM_DIRECT * 1.5, 'float32')).toBe(NORM_DIRECT / 2);
    expect(normDirect(2 ** (NORM_DIRECT + 1), 'float32')).toBe(null);
    expect(normDirect(2 ** -NORM_DIRECT, 'float32')).toBe(-NORM_DIRECT / 2);
    expect(normDirect(2 ** (-NORM_DIRECT - 1) * 1.5, 'float32')).toBe(null);
    for (const t of [0, 1e-45, Infinity, NaN, -1]) expect(normDirect(t, 'float32'), String(t)).toBe(null);
    expect(normDirect(2 ** 100, 'float64')).toBe(null);
    expect(normDirect(2 ** -7, 'float64')).toBe(-4);
    // Blocks of the test data on both sides of the rule.
    const x = values(64 * 40, 1);
    const kinds = Array.from({ length: 40 }, (_, b) => normDirect(Math.fround(x.subarray(64 * b, 64 * b + 64).reduce((a, v) => a + v * v, 0)), 'float32') !== null);
    expect(kinds.some((d) => d)).toBe(true);
    expect(kinds.some((d) => !d)).toBe(true);
  });

  it('wasm f32x4 (with its wasm tree) equals the float32 reference, generated and interpreted, bit for bit', async () => {
    for (const seed of [1, 2]) {
      const x = values(TOTAL, seed);
      const ref = await runOn(cpu, NORM, SIZES, x);
      const interp = await runOn(cpu, NORM, SIZES, x, 'interpret');
      const simd = await runOn(wasm, NORM, SIZES, x);
      const refOnWasm = await runOn(wasm, NORM, SIZES, x, 'reference');
      expectBits(interp.S, ref.S, 'interpreted S');
      expectBits(simd.S, ref.S, 'wasm S');
      expectBits(refOnWasm.S, ref.S, 'reference on wasm memory S');
      // Accurate: within a few float32 ulps of the float64 norm of the same values.
      expect(Math.abs(ref.S[0] / exactNorm(x) - 1)).toBeLessThan(1e-6);
    }
  });

  it('a kernel that writes x in place takes the norm of the old values, on cpu and wasm alike', async () => {
    const x = values(TOTAL, 3);
    const ref = await runOn(cpu, NORM_AND_WRITE, SIZES, x);
    const simd = await runOn(wasm, NORM_AND_WRITE, SIZES, x);
    expectBits(simd.S, ref.S, 'wasm S');
    expectBits(simd.x, ref.x, 'wasm x');
    expect(Math.abs(ref.S[0] / exactNorm(x) - 1)).toBeLessThan(1e-6);
    expect(ref.S[1]).toBe(x.reduce((a, v) => Math.max(a, Math.abs(v)), 0));
  });

  it('the wasm tree equals the host tree on partials of every kind (zeros, NaN, Inf, exponents 2^-149..2^127)', () => {
    const r = rng(7);
    const memory = new WebAssembly.Memory({ initial: 16 });
    const tree = new WebAssembly.Instance(new WebAssembly.Module(renderWasmTree(false) as Uint8Array<ArrayBuffer>), { env: { memory } }).exports as unknown as {
      sum(P: number, n: number): void;
      max(P: number, n: number): void;
      norm(P: number, S: number, n: number): void;
    };
    for (const n of [1, 2, 3, 7, 64, 1000, 4099]) {
      for (const special of [null, NaN, Infinity]) {
        const m = Float32Array.from({ length: n }, (_, i) => (i % 9 === 4 ? 0 : Math.fround(2 ** (Math.floor(r() * 276) - 149) * (1 + r()))));
        const s = Float32Array.from(m, (v) => (v === 0 ? 0 : Math.fround(1 + r() * 200)));
        if (special !== null) m[Math.floor(n / 2)] = special;
        const mem = new Float32Array(memory.buffer);
        mem.set(m, 0);
        mem.set(s, n);
        tree.norm(0, 4 * n, n);
        const host = [Float32Array.from(m), Float32Array.from(s)];
        combinePartials('norm', host, n, 'float32');
        expectBits([mem[0], mem[n]], [host[0][0], host[1][0]], `norm tree, ${n} blocks, special ${special}`);
        // sum and max over the same numbers.
        mem.set(s, 0);
        tree.sum(0, n);
        const hs = Float32Array.from(s);
        combinePartials('sum', [hs], n, 'float32');
        expectBits([mem[0]], [hs[0]], `sum tree, ${n} blocks`);
        mem.set(m, 0);
        tree.max(0, n);
        const hm = Float32Array.from(m);
        combinePartials('maxabs', [hm], n, 'float32');
        expectBits([mem[0]], [hm[0]], `max tree, ${n} blocks, special ${special}`);
      }
    }
  });

  it('webgpu agrees with the float32 reference within a few ulps', async () => {
    const { backend: gpu, reason } = await acquireWebGPU();
    if (!gpu) {
      console.warn(`skipped: no WebGPU adapter (${reason})`);
      return;
    }
    const x = values(TOTAL, 4);
    const ref = await runOn(cpu, NORM, SIZES, x);
    const dev = await runOn(gpu, NORM, SIZES, x);
    expect(Math.abs(dev.S[0] / ref.S[0] - 1), `webgpu norm ${dev.S[0]}, reference ${ref.S[0]}`).toBeLessThan(1e-5);
    const refW = await runOn(cpu, NORM_AND_WRITE, SIZES, x);
    const devW = await runOn(gpu, NORM_AND_WRITE, SIZES, x);
    expect(Math.abs(devW.S[0] / refW.S[0] - 1)).toBeLessThan(1e-5);
    expect(devW.S[1]).toBe(refW.S[1]);
    // A halving is exact, except that a GPU may flush subnormal results to zero.
    const flushed = Float32Array.from(refW.x, (v) => (Math.abs(v) < 2 ** -126 ? 0 : v));
    expectBits(Float32Array.from(devW.x, (v) => (Math.abs(v) < 2 ** -126 ? 0 : v)), flushed, 'webgpu x');
  }, 120_000);
});
