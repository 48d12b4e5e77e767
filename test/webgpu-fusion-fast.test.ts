/**
 * The WebGPU fused elementwise kernel's walks (src/kernels/webgpu/fusedmap.ts): vec4 programs
 * (innermost dim in fours, every access contiguous from a 4-aligned start or a splat), scalar ones
 * (odd lengths, strided inner dims), 1-D programs addressed without division and rank >= 2 ones
 * stepped along rows; each against the reference kernel (src/kernels/cpu/fusedmap.ts) within
 * float32 tolerance, under the adapter's own spread and under the GPU form and odd spreads (several
 * units per thread that wrap across rows and stop mid-run), so that the walks a real GPU takes
 * run here too. Broadcasts, partial outputs (a piece of a concat keeps the rest), outputs updated
 * in place, bools, constants and the math prelude in vec4 form. Then whole captured steps (MLP,
 * SGD with momentum and SAM) against eager on WebGPU.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { FusedExpr, FusedProgram } from '../src/kernels/fusedmap.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import type { DType, TypedArray } from '../src/tensor/dtype.js';
import type { WebGPUBackend } from '../src/kernels/webgpu/index.js';
import type { GPUStorage } from '../src/kernels/webgpu/runtime.js';
import { fusedMapWalk, fusedSpread, runFusedMap, runMatmulEpilogue, type FusedSpread } from '../src/kernels/webgpu/fusedmap.js';
import type { MatmulLayout } from '../src/kernels/backend.js';
import { fusedMapKernels } from '../src/compile/fuse.js';
import { acquireWebGPU, expectClose } from './helpers/webgpu.js';
import { withBackend } from './helpers/backend-scope.js';
import { rng } from './helpers/random.js';

const L = (load: number): FusedExpr => ({ k: 'load', load });
const un = (op: string, x: FusedExpr, p0 = 0, p1 = 0, out: DType = 'float32'): FusedExpr => ({ k: 'unary', op: op as never, x, p0, p1, in: 'float32', out });
const bin = (op: string, a: FusedExpr, b: FusedExpr, out: DType = 'float32'): FusedExpr => ({ k: 'binary', op: op as never, a, b, in: 'float32', out });
const c32 = (value: number): FusedExpr => ({ k: 'const', value, dtype: 'float32' });
const contiguous = (shape: number[]) => shape.map((_, d) => shape.slice(d + 1).reduce((a, c) => a * c, 1));

interface Case {
  name: string;
  program: FusedProgram;
  /** Element count of each storage (inputs, then outputs). */
  numels: number[];
  /** The walk the program must get: it is the point of the case. */
  vec4: boolean;
  tol?: { atol: number; rtol: number };
}

function data(n: number, dtype: DType, seed: number): TypedArray {
  const r = rng(seed);
  if (dtype === 'bool') return Uint8Array.from({ length: n }, () => (r() < 0.5 ? 1 : 0));
  return Float32Array.from({ length: n }, () => r() * 4 - 2);
}

const cases: Case[] = [];
{
  // 1-D SGD-with-decay chain: p - lr (g + wd p), vec4 (multiple of 4) and scalar (odd).
  const sgd = (n: number, vec4: boolean): Case => ({
    name: `1-D update chain over ${n}`,
    vec4,
    numels: [n, n, n],
    program: {
      shape: [n], inputs: ['float32', 'float32', 'float32'],
      loads: [{ input: 0, offset: 0, strides: [1] }, { input: 1, offset: 0, strides: [1] }],
      outputs: [{ offset: 0, strides: [1], dtype: 'float32', expr: bin('sub', L(0), un('affine', bin('add', L(1), un('affine', L(0), 1e-3)), 0.01)) }],
    },
  });
  cases.push(sgd(4096 + 64, true), sgd(1001, false), sgd(3, false));
  // Bias + relu over rows: a row broadcast (strides [0, 1]), vec4 and scalar; odd row counts.
  const bias = (rows: number, cols: number, vec4: boolean): Case => ({
    name: `bias + relu over [${rows}, ${cols}]`,
    vec4,
    numels: [rows * cols, cols, rows * cols],
    program: {
      shape: [rows, cols], inputs: ['float32', 'float32', 'float32'],
      loads: [{ input: 0, offset: 0, strides: [cols, 1] }, { input: 1, offset: 0, strides: [0, 1] }],
      outputs: [{ offset: 0, strides: [cols, 1], dtype: 'float32', expr: un('relu', bin('add', L(0), L(1))) }],
    },
  });
  cases.push(bias(37, 64, true), bias(33, 10, false), bias(5, 4, true), bias(300, 3, false));
  // A column broadcast (one value per row, strides [1, 0]): a splat in the vec4 walk; two outputs.
  cases.push({
    name: 'row value broadcast along rows, two outputs [19, 12]',
    vec4: true,
    numels: [19 * 12, 19, 19 * 12, 19 * 12],
    program: {
      shape: [19, 12], inputs: ['float32', 'float32', 'float32', 'float32'],
      loads: [{ input: 0, offset: 0, strides: [12, 1] }, { input: 1, offset: 0, strides: [1, 0] }],
      outputs: [
        { offset: 0, strides: [12, 1], dtype: 'float32', expr: bin('mul', un('exp', bin('sub', L(0), L(1))), c32(0.5)) },
        { offset: 0, strides: [12, 1], dtype: 'float32', expr: un('tanh', bin('div', L(0), bin('add', un('abs', L(1)), c32(1)))) },
      ],
    },
    tol: { atol: 1e-5, rtol: 1e-5 },
  });
  // Rank 3, a transposed read (inner stride 5): scalar walk, bases recomputed from the row on each wrap.
  cases.push({
    name: 'rank 3 with a transposed read [3, 5, 8]',
    vec4: false,
    numels: [120, 120, 120],
    program: {
      shape: [3, 5, 8], inputs: ['float32', 'float32', 'float32'],
      loads: [{ input: 0, offset: 0, strides: [40, 1, 5] }, { input: 1, offset: 0, strides: [40, 8, 1] }],
      outputs: [{ offset: 0, strides: [40, 8, 1], dtype: 'float32', expr: bin('maximum', L(0), un('neg', L(1))) }],
    },
  });
  // Rank 3 vec4: a read broadcast over the outer dim at a 4-aligned offset, a splat of the middle index.
  cases.push({
    name: 'rank 3 vec4 with broadcasts [3, 7, 8]',
    vec4: true,
    numels: [168, 4 + 56, 7, 168],
    program: {
      shape: [3, 7, 8], inputs: ['float32', 'float32', 'float32', 'float32'],
      loads: [{ input: 0, offset: 0, strides: [56, 8, 1] }, { input: 1, offset: 4, strides: [0, 8, 1] }, { input: 2, offset: 0, strides: [0, 1, 0] }],
      outputs: [{ offset: 0, strides: [56, 8, 1], dtype: 'float32', expr: bin('add', bin('mul', L(0), L(1)), L(2)) }],
    },
  });
  // Partial outputs: pieces of a concat, the rest of the destination kept (vec4 at offset 8; scalar at offset 3).
  cases.push({
    name: 'partial output: a vec4 piece of a concat [6, 8] into [6, 20] at column 8',
    vec4: true,
    numels: [48, 120],
    program: {
      shape: [6, 8], inputs: ['float32', 'float32'],
      loads: [{ input: 0, offset: 0, strides: [8, 1] }],
      outputs: [{ offset: 8, strides: [20, 1], dtype: 'float32', expr: un('sigmoid', L(0)) }],
    },
  });
  cases.push({
    name: 'partial output: a scalar piece [6, 5] into [6, 11] at column 3',
    vec4: false,
    numels: [30, 66],
    program: {
      shape: [6, 5], inputs: ['float32', 'float32'],
      loads: [{ input: 0, offset: 0, strides: [5, 1] }],
      outputs: [{ offset: 3, strides: [11, 1], dtype: 'float32', expr: un('square', L(0)) }],
    },
  });
  // State updated in place (BatchNorm's running statistics): the output is also loaded.
  cases.push({
    name: 'in place: m = 0.9 m + 0.1 x over 36',
    vec4: true,
    numels: [36, 36],
    program: {
      shape: [36], inputs: ['float32', 'float32'],
      loads: [{ input: 1, offset: 0, strides: [1] }, { input: 0, offset: 0, strides: [1] }],
      outputs: [{ offset: 0, strides: [1], dtype: 'float32', expr: bin('add', un('affine', L(0), 0.9), un('affine', L(1), 0.1)) }],
    },
  });
  // Bools: a comparison stored, a where on a loaded mask, a cast back; non-finite constants.
  const boolCase = (n: number, vec4: boolean): Case => ({
    name: `bools and constants over ${n}`,
    vec4,
    numels: [n, n, n, n],
    program: {
      shape: [n], inputs: ['float32', 'bool', 'bool', 'float32'],
      loads: [{ input: 0, offset: 0, strides: [1] }, { input: 1, offset: 0, strides: [1] }],
      outputs: [
        { offset: 0, strides: [1], dtype: 'bool', expr: bin('le', L(0), c32(0), 'bool') },
        {
          offset: 0, strides: [1], dtype: 'float32',
          expr: bin('add', { k: 'where', cond: L(1), a: L(0), b: c32(Infinity), out: 'float32' }, { k: 'cast', x: bin('gt', L(0), c32(0.5), 'bool'), in: 'bool', out: 'float32' }),
        },
      ],
    },
  });
  cases.push(boolCase(64, true), boolCase(67, false));
  // A vec4 read of a storage whose length is not a multiple of 4 (bound padded to 16 bytes).
  cases.push({
    name: 'vec4 walk over the first 8 of 10 elements',
    vec4: true,
    numels: [10, 8],
    program: {
      shape: [8], inputs: ['float32', 'float32'],
      loads: [{ input: 0, offset: 0, strides: [1] }],
      outputs: [{ offset: 0, strides: [1], dtype: 'float32', expr: un('geluErf', L(0)) }],
    },
  });
}

/** Spreads each program also runs under: the GPU form, and odd ones that wrap and stop mid-run. */
const SPREADS: [string, (rank: number) => FusedSpread | undefined][] = [
  ['adapter', () => undefined],
  ['GPU form', (rank) => fusedSpread(false, rank)],
  ['32 x 3 runs', () => ({ wg: 32, units: 3, interleave: false })],
  ['16 x 5 round-robin', () => ({ wg: 16, units: 5, interleave: true })],
];

describe('WebGPU fused elementwise walks against the reference kernel', () => {
  let gpu: WebGPUBackend | null = null;
  const cpu = new CpuBackend();
  beforeAll(async () => {
    gpu = (await acquireWebGPU()).backend;
  });
  for (const c of cases) {
    it(c.name, async (ctx) => {
      if (!gpu) return ctx.skip();
      const p = c.program;
      expect(fusedMapWalk(p).vec4, 'walk').toBe(c.vec4);
      const nIn = p.inputs.length - p.outputs.length;
      const init = c.numels.map((n, k) => data(n, p.inputs[k], 100 + k));
      // Reference: the cpu kernel on copies of the same storages.
      const cs = init.map((d, k) => cpu.upload(d.slice(), p.inputs[k]));
      cpu.fusedMap().build(p)(...cs);
      const want = await Promise.all(cs.map((s) => cpu.read(s)));
      for (const [label, spreadOf] of SPREADS) {
        const gs = init.map((d, k) => gpu!.upload(d.slice(), p.inputs[k]) as unknown as GPUStorage);
        // A program of its own per spread: the generated code is cached per program.
        runFusedMap(gpu!.rt, structuredClone(p), gs, spreadOf(p.shape.length));
        for (let k = nIn; k < gs.length; k++) {
          const got = await gpu!.read(gs[k] as never);
          const w = want[k];
          if (p.inputs[k] === 'bool') expect(Array.from(got), `${label}: output ${k - nIn}`).toEqual(Array.from(w));
          else expectClose(got, w, c.tol ?? { atol: 1e-6, rtol: 1e-6 }, `${label}: output ${k - nIn}`);
        }
        for (const s of gs) gpu!.release(s as never);
      }
    });
  }
});

interface EpilogueCase {
  name: string;
  l: MatmulLayout;
  /** The program over [batch * m, n]; input `acc` is the matmul's result. */
  program: FusedProgram;
  acc: number;
  numels: number[];
}

const layout = (batch: number, m: number, n: number, k: number, transA = false, transB = false): MatmulLayout => ({ batch, m, n, k, transA, transB, aBatchStride: m * k, bBatchStride: k * n });
const epilogueCases: EpilogueCase[] = [];
{
  // Linear layer forward: relu(x @ w + bias), 8 x 8 blocks and ragged edges.
  for (const [m, n, k] of [[37, 20, 33], [64, 64, 16], [5, 3, 9]]) {
    epilogueCases.push({
      name: `relu(a @ b + bias), ${m} x ${n} x ${k}`,
      l: layout(1, m, n, k),
      acc: 0,
      numels: [m * n, n, m * n],
      program: {
        shape: [m, n], inputs: ['float32', 'float32', 'float32'],
        loads: [{ input: 0, offset: 0, strides: [n, 1] }, { input: 1, offset: 0, strides: [0, 1] }],
        outputs: [{ offset: 0, strides: [n, 1], dtype: 'float32', expr: un('relu', bin('add', L(0), L(1))) }],
      },
    });
  }
  // Batched, both operands transposed; a residual read, a column broadcast, two outputs (one bool); acc not first.
  const [bt, m, n, k] = [3, 6, 8, 7];
  epilogueCases.push({
    name: 'batched transposed matmul with a residual, a column broadcast and two outputs',
    l: layout(bt, m, n, k, true, true),
    acc: 1,
    numels: [bt * m * n, bt * m * n, bt * m, bt * m * n, bt * m * n],
    program: {
      shape: [bt * m, n], inputs: ['float32', 'float32', 'float32', 'float32', 'bool'],
      loads: [{ input: 1, offset: 0, strides: [n, 1] }, { input: 0, offset: 0, strides: [n, 1] }, { input: 2, offset: 0, strides: [1, 0] }],
      outputs: [
        { offset: 0, strides: [n, 1], dtype: 'float32', expr: bin('sub', bin('add', L(0), L(1)), un('tanh', L(2))) },
        { offset: 0, strides: [n, 1], dtype: 'bool', expr: bin('gt', L(0), c32(0), 'bool') },
      ],
    },
  });
}

describe('WebGPU matmul epilogues against the reference matmul and kernel', () => {
  let gpu: WebGPUBackend | null = null;
  const cpu = new CpuBackend();
  beforeAll(async () => {
    gpu = (await acquireWebGPU()).backend;
  });
  it('are offered on a CPU-emulated adapter (the packed matmul), declined elsewhere', async (ctx) => {
    if (!gpu) return ctx.skip();
    const c = epilogueCases[0];
    const runner = fusedMapKernels(gpu)!.matmulEpilogue!(c.l, c.program, c.acc);
    expect(runner !== null).toBe(gpu.rt.cpuEmulated);
  });
  for (const c of epilogueCases) {
    it(c.name, async (ctx) => {
      if (!gpu) return ctx.skip();
      const { l, program: p, acc } = c;
      const nIn = p.inputs.length - p.outputs.length;
      const aData = data(l.batch * l.m * l.k, 'float32', 11);
      const bData = data(l.batch * l.k * l.n, 'float32', 12);
      const init = c.numels.map((n, k) => data(n, p.inputs[k], 200 + k));
      // Reference: the cpu matmul into the result, then the cpu kernel.
      const cs = init.map((d, k) => cpu.upload(d.slice(), p.inputs[k]));
      cpu.matmul(cpu.upload(aData, 'float32'), cpu.upload(bData, 'float32'), cs[acc], l);
      cpu.fusedMap().build(p)(...cs);
      const want = await Promise.all(cs.map((s) => cpu.read(s)));
      const ga = gpu.upload(aData, 'float32') as unknown as GPUStorage;
      const gb = gpu.upload(bData, 'float32') as unknown as GPUStorage;
      const gs = init.map((d, k) => (k === acc ? null : (gpu!.upload(d.slice(), p.inputs[k]) as unknown as GPUStorage)));
      runMatmulEpilogue(gpu.rt, l, p, acc, ga, gb, gs);
      for (let k = nIn; k < gs.length; k++) {
        const got = await gpu.read(gs[k] as never);
        if (p.inputs[k] === 'bool') {
          // A comparison of a sum against 0 may differ where the sum is within rounding of 0: none here.
          const sums = want[k] as Uint8Array;
          expect(Array.from(got), `output ${k - nIn}`).toEqual(Array.from(sums));
        } else expectClose(got, want[k], { atol: 1e-5, rtol: 1e-5 }, `output ${k - nIn}`);
      }
    });
  }
});

type Tensor = fg.Tensor;

/** An MLP trained for a few steps from seed 7: eager or captured (fused), its losses and final state. */
async function mlpRun(sizes: number[], batch: number, opt: 'SGD' | 'SAM', captured: boolean): Promise<{ losses: number[]; state: Float32Array[]; fusedKernels: number; epilogues: number }> {
  fg.manualSeed(7);
  const model = fg.nn.models.mlp(sizes);
  model.train();
  const sgd = { lr: 0.05, momentum: 0.9 };
  const o = opt === 'SGD' ? new fg.optim.SGD(model.parameters(), sgd) : new fg.optim.SAM(model.parameters(), fg.optim.SGD, { ...sgd, rho: 0.05 });
  const raw = (x: Tensor, y: Tensor): Tensor => {
    const closure = () => fg.tidy(() => {
      const l = fg.crossEntropy(model.forward(x), y);
      l.backward();
      return l;
    });
    if (opt === 'SAM') return o.step(closure) as Tensor;
    o.zeroGrad();
    const l = closure();
    o.step();
    return l;
  };
  const compiled = captured ? fg.compile(raw, { onMessage: (m) => { throw new Error(`unexpected fall-back: ${m}`); } }) : null;
  const step = compiled ?? raw;
  const losses: number[] = [];
  const classes = sizes[sizes.length - 1];
  for (let t = 0; t < 5; t++) {
    const r = rng(900 + t);
    const x = fg.tensor(Float32Array.from({ length: batch * sizes[0] }, () => r() * 2 - 1), { shape: [batch, sizes[0]] });
    const y = fg.tensor(Int32Array.from({ length: batch }, () => Math.floor(r() * classes)), { dtype: 'int32' });
    const l = step(x, y);
    losses.push(...(await l.data()));
    fg.dispose([l, x, y]);
  }
  const state: Float32Array[] = [];
  for (const v of Object.values(model.stateDict())) state.push(Float32Array.from(await (v as Tensor).data()));
  const plan = compiled?.stats().plan as { fusedKernels: number; epilogues?: number } | undefined;
  return { losses, state, fusedKernels: plan?.fusedKernels ?? 0, epilogues: plan?.epilogues ?? 0 };
}

describe('captured MLP steps on WebGPU equal eager within float32 tolerance', () => {
  let gpu: WebGPUBackend | null = null;
  beforeAll(async () => {
    gpu = (await acquireWebGPU()).backend;
  });
  // Widths in fours (vec4 fused kernels) and odd ones (scalar fused kernels).
  for (const [sizes, batch] of [[[12, 16, 16, 4], 8], [[10, 15, 7, 3], 5]] as [number[], number][]) {
    for (const opt of ['SGD', 'SAM'] as const) {
      it(`mlp ${sizes.join('-')}, batch ${batch}, ${opt}`, async (ctx) => {
        if (!gpu) return ctx.skip();
        await withBackend(gpu, async () => {
          const eager = await mlpRun(sizes, batch, opt, false);
          const captured = await mlpRun(sizes, batch, opt, true);
          expect(captured.fusedKernels).toBeGreaterThan(0);
          // The forward layers' bias + relu run in their matmul's store on a CPU-emulated adapter.
          if (gpu!.rt.cpuEmulated) expect(captured.epilogues).toBeGreaterThan(0);
          expectClose(Float32Array.from(captured.losses), Float32Array.from(eager.losses), { rtol: 1e-4, atol: 1e-5 }, 'losses');
          eager.state.forEach((v, i) => expectClose(captured.state[i], v, { rtol: 1e-4, atol: 1e-5 }, `state ${i}`));
        });
      });
    }
  }
});
