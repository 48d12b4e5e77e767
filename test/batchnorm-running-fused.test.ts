/**
 * BatchNorm's running statistics in one call per layer (Backend.batchNormRunning, issue 13):
 * - the kernel of every backend (cpu reference in float32 and float64, wasm with 1, 2 and 3
 *   threads, WebGPU) gives, bit for bit, the running mean, variance and batch count of the
 *   unfused ops it replaced (mul by a scalar, add; the int32 add) on that backend: momenta 0.1,
 *   0.37, 1/3 (cumulative), 1 and 0, channel counts of 1-300, values with -0, NaN, infinities,
 *   tiny and huge magnitudes, a count at the int32 wrap;
 * - nn.BatchNorm2d makes one such call per layer and eager step (a traced step records the ops,
 *   which the fusion pass folds into its programs), and a small ResNet's running statistics come
 *   out the same, bit for bit, eager and captured (SGD, SAM), with 1, 2 and 3 threads, and on
 *   WebGPU eager and captured.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import type { DType } from '../src/tensor/dtype.js';
import { batchNormRunning } from '../src/tensor/ops/normalization.js';
import { withBackend } from './helpers/backend-scope.js';
import { rng } from './helpers/random.js';
import { expectBitEqual, expectSameRun, runSteps, trainingStep, type StepRun } from './helpers/train-steps.js';
import { acquireWebGPU } from './helpers/webgpu.js';

const { add, mul, narrow, reshape, tensor } = fg;

/** c values: random ones of mixed magnitude, and (when c allows) -0, 0, NaN, +-Infinity, tiny and huge ones. */
function values(r: () => number, c: number, positive: boolean): number[] {
  const special = [-0, 0, NaN, Infinity, -Infinity, 1e-40, 3e38, -7e-39];
  return Array.from({ length: c }, (_, i) => {
    const v = i < special.length && c > 8 ? special[i] : (r() * 2 - 1) * 10 ** Math.floor(r() * 8 - 4);
    return positive ? Math.abs(v) : v;
  });
}

/** The update as the layer computed it before (four affine calls, two adds) and as the one call does. */
async function bothWays(b: Backend, dtype: DType, c: number, m: number, momentum: number, seed: number): Promise<[number[][], number[][]]> {
  return withBackend(b, async () => {
    const r = rng(seed);
    const t = (v: number[], shape = [v.length]) => tensor(v, { shape, dtype });
    const rm = t(values(r, c, false));
    const rv = t(values(r, c, true));
    // The mean pairs (hi, lo) as batchNorm leaves them; lo is never read.
    const pairs = t(values(r, 2 * c, false), [c, 2]);
    const variance = t(values(r, c, true));
    const mean = reshape(narrow(pairs, 1, 0, 1), [c]);
    // A batch count on every other case (none: a layer without one), at the int32 wrap on some.
    const count = seed % 2 ? tensor([seed % 3 ? seed : 2147483647], { shape: [], dtype: 'int32' }) : null;
    const want = [add(mul(rm, 1 - momentum), mul(mean, momentum)), add(mul(rv, 1 - momentum), mul(variance, (momentum * m) / (m - 1))), ...(count ? [add(count, 1)] : [])];
    const got = batchNormRunning(rm, rv, count, { pairs, variance }, m, momentum);
    expect(got[2] === null, 'a count exactly when given').toBe(count === null);
    const read = (ts: (fg.Tensor | null)[]) => Promise.all(ts.filter((x) => x !== null).map(async (x) => Array.from(await x!.data())));
    return [await read(want), await read(got)] as [number[][], number[][]];
  });
}

const MOMENTA = [0.1, 0.37, 1 / 3, 1, 0];
const CASES: [number, number][] = [
  [1, 2],
  [3, 6],
  [8, 128 * 64],
  [16, 1000],
  [33, 7],
];

describe('batchNormRunning gives the unfused ops\' bits on each backend', () => {
  const backends: [string, Backend, DType[]][] = [];
  const wasms: WasmBackend[] = [];
  beforeAll(async () => {
    backends.push(['cpu', new CpuBackend(), ['float32', 'float64']]);
    for (const threads of [1, 2, 3]) {
      const w = await createWasmBackend(threads > 1 ? { threads, minThreadedWork: 1 } : { threads });
      wasms.push(w);
      backends.push([`wasm ${threads} thread(s)`, w, threads === 1 ? ['float32', 'float64'] : ['float32']]);
    }
  });
  afterAll(() => wasms.forEach((w) => w.dispose()));

  it('cpu and wasm: every momentum, channel count and special value', async () => {
    let seed = 1;
    for (const [name, b, dtypes] of backends) {
      for (const dtype of dtypes) {
        for (const momentum of MOMENTA) {
          for (const [c, m] of CASES) {
            const [want, got] = await bothWays(b, dtype, c, m, momentum, seed++);
            expectBitEqual(got[0], want[0], `${name} ${dtype} running mean, momentum ${momentum}, c ${c}`);
            expectBitEqual(got[1], want[1], `${name} ${dtype} running var, momentum ${momentum}, c ${c}`);
            expectBitEqual(got[2] ?? [], want[2] ?? [], `${name} ${dtype} batch count`);
          }
        }
      }
    }
  });

  it('WebGPU: the same bits as its unfused kernels', async () => {
    const gpu = (await acquireWebGPU()).backend;
    if (!gpu) return expect(process.env.REQUIRE_WEBGPU, 'no WebGPU adapter').not.toBe('1');
    let seed = 100;
    for (const momentum of MOMENTA) {
      for (const [c, m] of [...CASES, [300, 50] as [number, number]]) {
        const [want, got] = await bothWays(gpu, 'float32', c, m, momentum, seed++);
        expectBitEqual(got[0], want[0], `webgpu running mean, momentum ${momentum}, c ${c}`);
        expectBitEqual(got[1], want[1], `webgpu running var, momentum ${momentum}, c ${c}`);
        expectBitEqual(got[2] ?? [], want[2] ?? [], 'webgpu batch count');
      }
    }
  });
});

describe('nn.BatchNorm2d: one call per layer, eager and captured alike', () => {
  const make = () => fg.nn.models.resnetSmall({ inChannels: 1, numClasses: 4, widths: [8, 16, 32], blocksPerStage: 1 });
  let backends: WasmBackend[] = [];
  beforeAll(async () => {
    backends = await Promise.all([1, 2, 3].map((threads) => createWasmBackend(threads > 1 ? { threads, minThreadedWork: 1 } : { threads })));
  });
  afterAll(() => backends.forEach((b) => b.dispose()));

  const run = (b: Backend, o: 'SGD' | 'SAM', compile: boolean): Promise<StepRun> =>
    withBackend(b, () => {
      fg.manualSeed(5);
      const model = make();
      model.train();
      return runSteps(model, trainingStep(model, o), { shape: [6, 1, 10, 10], steps: 3, seed: 70, compile: compile ? {} : null });
    });

  it('one batchNormRunning call per BatchNorm layer and step (a SAM step updates on its first pass only)', async () => {
    const b = backends[0];
    const layers = make().modules().filter((m) => m instanceof fg.nn.BatchNorm2d).length;
    expect(layers).toBeGreaterThan(1);
    const orig = b.batchNormRunning;
    let calls = 0;
    b.batchNormRunning = function (this: WasmBackend, ...a: Parameters<Backend['batchNormRunning']>) {
      calls++;
      return orig.apply(this, a);
    };
    try {
      await run(b, 'SAM', false);
    } finally {
      delete (b as Partial<WasmBackend>).batchNormRunning;
    }
    expect(calls).toBe(3 * layers);
  });

  for (const o of ['SGD', 'SAM'] as const) {
    it(`${o}: running statistics eager = captured, 1/2/3 threads, bit for bit`, async () => {
      const eager = await run(backends[0], o, false);
      const moved = eager.state.filter(([k, v]) => k.endsWith('running_mean') && v.some((x) => x !== 0));
      expect(moved.length, 'the running means moved').toBeGreaterThan(1);
      for (const b of backends) {
        expectSameRun(await run(b, o, true), eager);
        expectSameRun(await run(b, o, false), eager);
      }
    });
  }

  it('WebGPU: eager = captured, bit for bit', async () => {
    const gpu = (await acquireWebGPU()).backend;
    if (!gpu) return expect(process.env.REQUIRE_WEBGPU, 'no WebGPU adapter').not.toBe('1');
    const small = (b: Backend, compile: boolean) =>
      withBackend(b, () => {
        fg.manualSeed(6);
        const model = new fg.nn.Sequential(new fg.nn.Conv2d(1, 4, 3, { padding: 1 }), new fg.nn.BatchNorm2d(4), new fg.nn.ReLU(), new fg.nn.Flatten(), new fg.nn.Linear(4 * 6 * 6, 4));
        model.train();
        return runSteps(model, trainingStep(model as never, 'SGD'), { shape: [4, 1, 6, 6], steps: 3, seed: 80, compile: compile ? {} : null });
      });
    const eager = await small(gpu, false);
    expect(eager.state.some(([k, v]) => k.endsWith('running_var') && v.some((x) => x !== 1))).toBe(true);
    expectSameRun(await small(gpu, true), eager);
  });
});
