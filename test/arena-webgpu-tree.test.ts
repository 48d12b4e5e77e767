/**
 * WebGPU arena passes as rendered for a CPU-emulated adapter and for a GPU (src/kernels/arena/
 * wgsl.ts, webgpu.ts): the tree pass runs with a workgroup of WGSL_TREE_WG_CPU invocations on
 * SwiftShader and of WGSL_TREE_WG on a GPU, and the block kernel takes an unmasked path for
 * blocks that lie wholly inside their parameter. Both trees must give the same slots bit for bit
 * (the pairs of a level are independent), and the written vectors must equal the float32
 * reference's where the body is exact, over parameters that end inside a block, at a block's end,
 * and that are one element long; the arena's padding (filled with huge values here) must be
 * neither read by the reductions nor written.
 */
import { describe, expect, it } from 'vitest';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { defineArenaKernel, runArenaKernel } from '../src/kernels/arena/index.js';
import { S_SLOTS } from '../src/kernels/fused.js';
import { FlatArena } from '../src/optim/arena.js';
import { Tensor } from '../src/tensor/tensor.js';
import { WGSL_TREE_WG, WGSL_TREE_WG_CPU } from '../src/kernels/arena/wgsl.js';
import { createWebGPUBackend, type WebGPUBackend } from '../src/kernels/webgpu/index.js';
import { expectBits, runArena } from './helpers/arena-run.js';
import { acquireWebGPU, randomF32 } from './helpers/webgpu.js';

/**
 * Writes x from a slot that its own scalar program then changes (from 0 to the dot: every block
 * reads the old slot), with every reduction kind; x * 0.5 + y is exact in float32 with or without
 * a fused multiply-add.
 */
const KERNEL = defineArenaKernel({
  name: 'tree-width',
  vectors: { x: 'readwrite', y: 'read', z: 'read' },
  slots: { sc: 2, d: 3, nf: 4, mx: 5, n: 6 },
  body: ({ x, y }, _h, s, k) => ({ x: k.add(k.add(k.mul(x, 0.5), y), s.sc) }),
  reduce: ({ x, y, z }, _h, _s, k) => ({ d: k.dot(x, y), nf: k.anyNonFinite(z), mx: k.maxAbs(x), n: k.norm(x) }),
  after: (s, k) => ({ sc: k.add(k.mul(s.sc, 2), s.d) }),
});
// About 1400 blocks; parameters that end inside a block, at a block's end, one element long.
const SIZES = [5000, 64 * 300 + 3, 77, 64 * 1000, 1, 128];
const TOTAL = SIZES.reduce((a, b) => a + b, 0);

/** The tree dispatch's workgroup size while `f` runs. */
async function treeWidth(b: WebGPUBackend, f: () => Promise<unknown>): Promise<string | undefined> {
  let width: string | undefined;
  const orig = b.rt.dispatch;
  b.rt.dispatch = (call) => {
    if (call.name.endsWith('.tree')) width = /@workgroup_size\((\d+)\)/.exec(call.wgsl())?.[1];
    orig.call(b.rt, call);
  };
  try {
    await f();
  } finally {
    b.rt.dispatch = orig;
  }
  return width;
}

describe('webgpu arena passes: tree width and unmasked full blocks', () => {
  it('the CPU-emulated and the GPU tree give the same slots bit for bit; writes equal the reference', async (ctx) => {
    const { backend: emulated, reason } = await acquireWebGPU();
    if (!emulated) return ctx.skip(`no WebGPU adapter: ${reason}`);
    const gpu = await createWebGPUBackend({ cpuEmulated: false });
    try {
      const z = randomF32(TOTAL, 4);
      z[TOTAL - 7000] = Infinity;
      const init = { x: randomF32(TOTAL, 1), y: randomF32(TOTAL, 2), z };
      const runs: Awaited<ReturnType<typeof runArena>>[] = [];
      const widths: (string | undefined)[] = [];
      for (const b of [emulated, gpu]) widths.push(await treeWidth(b, async () => runs.push(await runArena(b, KERNEL, SIZES, init))));
      expect(emulated.rt.cpuEmulated, 'the test adapter must be CPU-emulated for the two widths to differ').toBe(true);
      expect(widths).toEqual([String(WGSL_TREE_WG_CPU), String(WGSL_TREE_WG)]);
      expect(widths[0], 'two different trees compared').not.toBe(widths[1]);
      expectBits(runs[0].S, runs[1].S, 'slots, tree of 4 against tree of 256');
      for (const slot of Object.values(KERNEL.slots)) expect(runs[0].S[slot], `slot ${slot}`).not.toBe(0);
      const ref = await runArena(new CpuBackend(), KERNEL, SIZES, init);
      expectBits(runs[0].vectors.x, ref.vectors.x, 'x against the float32 reference');
      expect(runs[0].S[KERNEL.slots.mx]).toBe(ref.S[KERNEL.slots.mx]);
      expect(runs[0].S[KERNEL.slots.nf]).toBe(1);
      expect(Math.abs(runs[0].S[KERNEL.slots.n] / ref.S[KERNEL.slots.n] - 1)).toBeLessThan(1e-5);
    } finally {
      gpu.destroy();
    }
  }, 120_000);
});

/** One arena pass over vectors whose padding between parameters holds `pad`; returns S and the whole vectors. */
async function runPadded(b: Backend, init: Readonly<Record<string, Float32Array>>, pad: number): Promise<{ S: Float32Array; full: Record<string, Float32Array> }> {
  const params = SIZES.map((n) => Tensor.fromStorage(b.upload(new Float32Array(n), 'float32'), [n], b).requiresGrad_());
  const arena = new FlatArena(params, params.map(() => 0), 1);
  arena.syncGrads();
  const L = arena.layout;
  for (const v of KERNEL.vectors) {
    const full = new Float32Array(L.numel).fill(pad);
    let o = 0;
    for (const info of L.params) {
      full.set(init[v.name].subarray(o, o + info.numel), info.offset);
      o += info.numel;
    }
    b.write(arena.vec(v.name), full);
  }
  const S = b.upload(new Float32Array(S_SLOTS), 'float32');
  runArenaKernel(KERNEL, b, { layout: L, vectors: Object.fromEntries(KERNEL.vectors.map((v) => [v.name, arena.vec(v.name)])), S, steps: arena.stepCounts });
  const out = { S: (await b.read(S)) as Float32Array, full: {} as Record<string, Float32Array> };
  for (const v of KERNEL.vectors) out.full[v.name] = (await b.read(arena.vec(v.name))) as Float32Array;
  b.release(S);
  arena.dispose();
  return out;
}

describe('webgpu arena passes leave the padding alone', () => {
  it('reductions skip it and writes keep it, against the reference', async (ctx) => {
    const { backend: b, reason } = await acquireWebGPU();
    if (!b) return ctx.skip(`no WebGPU adapter: ${reason}`);
    const init = { x: randomF32(TOTAL, 5), y: randomF32(TOTAL, 6), z: randomF32(TOTAL, 7) };
    const dev = await runPadded(b, init, 1e30);
    const ref = await runPadded(new CpuBackend(), init, 1e30);
    expectBits(dev.full.x, ref.full.x, 'x with its padding');
    expect(dev.S[KERNEL.slots.mx]).toBe(ref.S[KERNEL.slots.mx]);
    expect(dev.S[KERNEL.slots.mx]).toBeLessThan(2);
    expect(dev.S[KERNEL.slots.nf]).toBe(0);
    expect(Math.abs(dev.S[KERNEL.slots.d] / ref.S[KERNEL.slots.d] - 1)).toBeLessThan(1e-4);
    expect(Math.abs(dev.S[KERNEL.slots.n] / ref.S[KERNEL.slots.n] - 1)).toBeLessThan(1e-5);
  }, 120_000);
});
