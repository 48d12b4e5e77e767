/**
 * Captured steps on WebGPU whose kernels bind several ranges of one GPU buffer (issue 14): WebGPU
 * forbids overlapping bindings where one is writable, and read-only with writable use of one
 * buffer in a dispatch, but allows several writable bindings of disjoint ranges. So the fusion
 * pass (src/compile/fuse.ts) lets a fused kernel read and write disjoint views of one arena (the
 * fused families bind every range of such a buffer read_write, fused-common.ts shareBuffers) and
 * forwards a gradient copy into a kernel that writes another view of the same arena (dweight and
 * dbias of batchNormBackward and layerNormBackward). Checked here: disjoint views run without
 * validation errors and match the reference kernel, overlapping writable views are refused, and
 * whole captured CNN (BatchNorm) and ViT steps, SGD and SAM, equal eager within float32 tolerance
 * with the calls per replay asserted.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { FusedExpr, FusedProgram } from '../src/kernels/fusedmap.js';
import type { WebGPUBackend } from '../src/kernels/webgpu/index.js';
import type { GPUStorage } from '../src/kernels/webgpu/runtime.js';
import { runFusedMap } from '../src/kernels/webgpu/fusedmap.js';
import { layerNormBackward } from '../src/kernels/webgpu/layernorm.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import type { BlockSum, Storage } from '../src/kernels/backend.js';
import { shareBuffers } from '../src/kernels/webgpu/fused-common.js';
import { acquireWebGPU, expectClose } from './helpers/webgpu.js';
import { withBackend } from './helpers/backend-scope.js';
import { rng } from './helpers/random.js';
import { runSteps, trainingStep } from './helpers/train-steps.js';

const L = (load: number): FusedExpr => ({ k: 'load', load });
const bin = (op: string, a: FusedExpr, b: FusedExpr, dtype: 'float32' | 'int32' = 'float32'): FusedExpr => ({ k: 'binary', op: op as never, a, b, in: dtype, out: dtype });

/** out = a * 2 + b over n elements: inputs a, b, then the output. */
const program = (n: number): FusedProgram => ({
  shape: [n], inputs: ['float32', 'float32', 'float32'],
  loads: [{ input: 0, offset: 0, strides: [1] }, { input: 1, offset: 0, strides: [1] }],
  outputs: [{ offset: 0, strides: [1], dtype: 'float32', expr: bin('add', bin('mul', L(0), { k: 'const', value: 2, dtype: 'float32' }), L(1)) }],
});

describe('WebGPU kernels over views of one buffer', () => {
  let gpu: WebGPUBackend | null = null;
  beforeAll(async () => {
    gpu = (await acquireWebGPU()).backend;
  });

  it('binds every range of a buffer that a kernel writes read_write, others as they were', async (ctx) => {
    if (!gpu) return ctx.skip();
    const arena = gpu.alloc(256, 'float32');
    const other = gpu.alloc(64, 'float32') as unknown as GPUStorage;
    const [v0, v1] = [gpu.view(arena, 0, 64), gpu.view(arena, 128, 64)] as unknown as GPUStorage[];
    const got = shareBuffers([{ name: 'a', s: v0, access: 'read' }, { name: 'b', s: other, access: 'read' }, { name: 'o', s: v1, access: 'write' }]);
    expect(got.map((b) => b.access)).toEqual(['read_write', 'read', 'write']);
    gpu.release(other as never);
    gpu.release(arena);
  });

  it('a fused kernel reads and writes disjoint views of one buffer without validation errors', async (ctx) => {
    if (!gpu) return ctx.skip();
    const n = 60;
    const r = rng(5);
    // Views at 256-byte offsets (64 floats), as the parameter and gradient arenas place them.
    const init = Float32Array.from({ length: 256 }, () => r() * 2 - 1);
    const arena = gpu.upload(init.slice(), 'float32');
    const [a, b, out] = [0, 64, 128].map((o) => gpu!.view(arena, o, n)) as unknown as GPUStorage[];
    runFusedMap(gpu.rt, program(n), [a, b, out]);
    // read() syncs: a validation error recorded by the runtime would throw here.
    const all = await gpu.read(arena);
    const want = init.slice();
    for (let i = 0; i < n; i++) want[128 + i] = Math.fround(Math.fround(init[i] * 2) + init[64 + i]);
    expectClose(all as Float32Array, want, { atol: 1e-6, rtol: 1e-6 }, 'arena');
    gpu.release(arena);
  });

  it('overlapping writable views of one buffer are refused, with the kernel and bindings named', async (ctx) => {
    if (!gpu) return ctx.skip();
    const arena = gpu.upload(new Float32Array(256), 'float32');
    // Two outputs over the same first 32 elements: WebGPU's writable aliasing rule.
    const [o1, o2] = [gpu.view(arena, 0, 64), gpu.view(arena, 0, 32)] as unknown as GPUStorage[];
    const c = gpu.upload(new Float32Array(64).fill(1), 'float32') as unknown as GPUStorage;
    const two: FusedProgram = {
      shape: [32], inputs: ['float32', 'float32', 'float32'],
      loads: [{ input: 0, offset: 0, strides: [1] }],
      outputs: [{ offset: 0, strides: [1], dtype: 'float32', expr: L(0) }, { offset: 0, strides: [1], dtype: 'float32', expr: L(0) }],
    };
    // Refused by the runtime before Dawn sees it (Dawn's own error, "writable storage buffer
    // binding aliasing", would arrive later and name no flatgrad kernel).
    expect(() => runFusedMap(gpu!.rt, two, [c, o1, o2])).toThrow(/written bindings \w+ and \w+ overlap/);
    // The runtime goes on after refusing it.
    expect((await gpu.read(c as never)).length).toBe(64);
    gpu.release(c as never);
    gpu.release(arena);
  });

  it('a read overlapping a written view stays read-only (the runtime copies it)', async (ctx) => {
    if (!gpu) return ctx.skip();
    const arena = gpu.alloc(256, 'float32');
    const [a, b] = [gpu.view(arena, 0, 64), gpu.view(arena, 0, 32)] as unknown as GPUStorage[];
    const got = shareBuffers([{ name: 'a', s: a, access: 'read' }, { name: 'b', s: b, access: 'write' }]);
    expect(got.map((x) => x.access)).toEqual(['read', 'write']);
    gpu.release(arena);
  });
});

describe('WebGPU fused kernels with int32 operations (a BatchNorm counter, a label mask)', () => {
  let gpu: WebGPUBackend | null = null;
  const cpu = new CpuBackend();
  beforeAll(async () => {
    gpu = (await acquireWebGPU()).backend;
  });
  const ci = (value: number): FusedExpr => ({ k: 'const', value, dtype: 'int32' });
  // Vec4 (16) and scalar (5) walks; the second input is a splat (one element, broadcast).
  for (const n of [16, 5]) {
    it(`counter + 1, (label != -100) as f32 and x * (label == splat) over ${n}`, async (ctx) => {
      if (!gpu) return ctx.skip();
      const p: FusedProgram = {
        shape: [n], inputs: ['int32', 'int32', 'float32', 'int32', 'float32', 'float32'],
        loads: [{ input: 0, offset: 0, strides: [1] }, { input: 1, offset: 0, strides: [0] }, { input: 2, offset: 0, strides: [1] }],
        outputs: [
          { offset: 0, strides: [1], dtype: 'int32', expr: bin('add', L(0), ci(1), 'int32') },
          { offset: 0, strides: [1], dtype: 'float32', expr: { k: 'cast', in: 'bool', out: 'float32', x: { k: 'binary', op: 'ne', a: L(0), b: ci(-100), in: 'int32', out: 'bool' } } },
          { offset: 0, strides: [1], dtype: 'float32', expr: { k: 'where', cond: { k: 'binary', op: 'eq', a: L(0), b: L(1), in: 'int32', out: 'bool' }, a: L(2), b: { k: 'const', value: 0, dtype: 'float32' }, out: 'float32' } },
        ],
      };
      const r = rng(n);
      const labels = Int32Array.from({ length: n }, (_, i) => (i % 3 === 0 ? -100 : i % 4 === 1 ? 2147483647 : Math.floor(r() * 5)));
      const init = [labels, Int32Array.of(2), Float32Array.from({ length: n }, () => r() * 2 - 1), new Int32Array(n), new Float32Array(n), new Float32Array(n)];
      const cs = init.map((d, k) => cpu.upload(d.slice(), p.inputs[k]));
      cpu.fusedMap().build(p)(...cs);
      const gs = init.map((d, k) => gpu!.upload(d.slice(), p.inputs[k]) as unknown as GPUStorage);
      runFusedMap(gpu.rt, p, gs);
      for (let k = 3; k < 6; k++) expect(Array.from(await gpu.read(gs[k] as never)), `output ${k - 3}`).toEqual(Array.from(cpu.readSync!(cs[k])));
      for (const g of gs) gpu.release(g as never);
    });
  }
});

describe('WebGPU layerNormBackward with the residual add and block sums folded in, against the cpu reference', () => {
  let gpu: WebGPUBackend | null = null;
  const cpu = new CpuBackend();
  beforeAll(async () => {
    gpu = (await acquireWebGPU()).backend;
  });
  for (const [rows, cols] of [[12, 32], [6, 5], [9, 96]] as [number, number][]) {
    for (const addFirst of [true, false, null]) {
      it(`rows ${rows}, cols ${cols}, residual ${addFirst === null ? 'none' : addFirst ? 'first' : 'second'}`, async (ctx) => {
        if (!gpu) return ctx.skip();
        const r = rng(rows * 31 + cols);
        const n = rows * cols;
        const make = (len: number, f: () => number) => Float32Array.from({ length: len }, f);
        const data = { grad: make(n, () => r() * 2 - 1), x: make(n, () => r() * 6 - 3), w: make(cols, () => r() + 0.5), res: make(n, () => r() * 4 - 2) };
        // Block sums: over all rows (a bias gradient), over 3 blocks of rows, of every other row from row 1.
        const blocks: BlockSum[] = [
          { offset: 0, period: cols, width: cols, count: rows },
          { offset: 0, period: n / 3, width: n / 3, count: 3 },
          { offset: cols, period: 2 * cols, width: cols, count: Math.floor((rows - 1) / 2) },
        ];
        const layout = { rows, cols, eps: 1e-5, addFirst: !!addFirst, sums: blocks };
        // Reference: the cpu backend's fused method.
        const cu = (d: Float32Array) => cpu.upload(d.slice(), 'float32');
        const [cg, cx, cw, cr] = [cu(data.grad), cu(data.x), cu(data.w), cu(data.res)];
        const [cm, cs] = [cpu.alloc(2 * rows, 'float32'), cpu.alloc(rows, 'float32')];
        cpu.layerNorm(cx, cw, null, cpu.alloc(n, 'float32'), cm, cs, layout);
        const cdx = cpu.alloc(n, 'float32');
        const [cdw, cdb] = [cpu.alloc(cols, 'float32'), cpu.alloc(cols, 'float32')];
        const csums = blocks.map((b) => cpu.alloc(b.width, 'float32'));
        cpu.layerNormBackwardFused(cg, cx, cm, cs, cw, addFirst === null ? null : cr, cdx, cdw, cdb, csums, layout);
        // WebGPU: dweight, dbias and the sums as disjoint views of one gradient arena (256-byte offsets).
        const gu = (d: Float32Array) => gpu!.upload(d.slice(), 'float32') as unknown as GPUStorage;
        const [gg, gx, gw, gr] = [gu(data.grad), gu(data.x), gu(data.w), gu(data.res)];
        const [gm, gs] = [gpu.alloc(2 * rows, 'float32'), gpu.alloc(rows, 'float32')] as unknown as GPUStorage[];
        gpu.layerNorm(gx as never, gw as never, null, gpu.alloc(n, 'float32'), gm as never, gs as never, layout);
        const widths = [cols, cols, ...blocks.map((b) => b.width)];
        const offsets = widths.map((_, k) => widths.slice(0, k).reduce((a, w) => a + Math.ceil(w / 64) * 64, 0));
        const arena = gpu.alloc(offsets[offsets.length - 1] + Math.ceil(widths[widths.length - 1] / 64) * 64, 'float32');
        const [gdw, gdb, ...gsums] = widths.map((w, k) => gpu!.view(arena, offsets[k], w)) as unknown as GPUStorage[];
        const gdx = gpu.alloc(n, 'float32') as unknown as GPUStorage;
        layerNormBackward(gpu.rt, gg, gx, gm, gs, gw, gdx, gdw, gdb, layout, { res: addFirst === null ? null : gr, resFirst: !!addFirst, sums: gsums.map((s, k) => ({ s, b: blocks[k] })) });
        const pairs: [Storage, GPUStorage, string][] = [[cdx, gdx, 'dx'], [cdw, gdw, 'dweight'], [cdb, gdb, 'dbias'], ...csums.map((c, k): [Storage, GPUStorage, string] => [c, gsums[k], `sum ${JSON.stringify(blocks[k])}`])];
        for (const [c, g, what] of pairs) expectClose(await gpu.read(g as never) as Float32Array, cpu.readSync!(c) as Float32Array, { atol: 1e-4, rtol: 1e-4 }, what);
      });
    }
  }
});

/** A model's steps (test/helpers/train-steps.ts), eager or captured, from seed 3: losses, final state and the plan's calls. */
async function run(kind: 'cnn' | 'vit' | 'mlp', opt: 'SGD' | 'SAM', captured: boolean): Promise<{ losses: number[]; state: Float32Array[]; calls: number }> {
  fg.manualSeed(3);
  const model = kind === 'mlp' ? fg.nn.models.mlp([64, 32, 32, 10])
    : kind === 'cnn' ? fg.nn.models.resnetSmall({ inChannels: 1, numClasses: 10, widths: [8, 16] })
    : fg.nn.models.vit({ imageSize: 28, patchSize: 7, dim: 32, depth: 2, heads: 4, numClasses: 10 });
  model.train();
  const shape = kind === 'mlp' ? [16, 64] : [16, 1, 28, 28];
  const got = await runSteps(model, trainingStep(model as never, opt), { shape, steps: 3, seed: 40, compile: captured ? {} : null });
  return { losses: got.losses, state: got.state.map(([, v]) => v), calls: got.stats?.plan?.calls ?? 0 };
}

/**
 * Calls per captured replay on a CPU-emulated adapter (batch 16), against eager's 152 (CNN) and
 * 134 (ViT) per SGD step; before shared arenas, int32 fusion and the layerNormBackward folds the
 * plans had 84 (CNN SGD), 84 (ViT SGD) and 22 (MLP SGD).
 */
const CALLS: Record<string, number> = { 'cnn SGD': 59, 'cnn SAM': 113, 'vit SGD': 66, 'vit SAM': 132, 'mlp SGD': 20, 'mlp SAM': 40 };

describe('captured CNN, ViT and MLP steps on WebGPU with shared arenas equal eager', () => {
  let gpu: WebGPUBackend | null = null;
  beforeAll(async () => {
    gpu = (await acquireWebGPU()).backend;
  });
  for (const kind of ['cnn', 'vit', 'mlp'] as const) {
    for (const opt of ['SGD', 'SAM'] as const) {
      it(`${kind}, ${opt}`, async (ctx) => {
        if (!gpu) return ctx.skip();
        const [eager, captured] = await withBackend(gpu, async () => [await run(kind, opt, false), await run(kind, opt, true)]);
        expectClose(Float32Array.from(captured.losses), Float32Array.from(eager.losses), { rtol: 1e-4, atol: 1e-5 }, 'losses');
        eager.state.forEach((v, i) => expectClose(captured.state[i], v, { rtol: 1e-3, atol: 1e-4 }, `state ${i}`));
        const want = CALLS[`${kind} ${opt}`];
        if (gpu.rt.cpuEmulated && want !== undefined) expect(captured.calls).toBe(want);
        else expect(captured.calls).toBeGreaterThan(0);
      });
    }
  }
});
