/**
 * The pieces of a training step that issue 13's two-thread targets split over threads since the
 * first round (bench/threads-profile.ts shows where a step's time goes on one thread and two):
 * - fused elementwise programs of captured steps (src/kernels/wasm/fusedmap.ts splitRunner), split
 *   in bands of their first dim (runs of whole vectors at rank 1) over 2 and 3 threads, give the
 *   one-thread bits: odd lengths with tails, broadcast and strided loads, several outputs, bool
 *   outputs; and they are not split where a band could read what another wrote (an output over an
 *   input read at other positions), where there is one row only, or where a worker
 *   cannot load the generated module (then they run on the caller's thread, and stay there);
 * - a captured small ResNet step (convolutions, BatchNorm, fused chains, arena passes) with every
 *   call split over 2 and 3 threads gives the one-thread bits, SGD and SAM;
 * - a split convolution's recorded calls, kept by key (conv.ts split) and run again when the same
 *   convolution comes back over the same buffers, give the one-thread bits on new data in those
 *   buffers, and a convolution over other buffers records its own;
 * - convolution outputs and `where` are allocated without a zero fill (their kernels write every
 *   element): a reused block full of garbage does not leak into them.
 * No timing is asserted here.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import type { FusedExpr, FusedProgram } from '../src/kernels/fusedmap.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { ThreadLoadError } from '../src/kernels/wasm/threads.js';
import { withBackend } from './helpers/backend-scope.js';
import { rng } from './helpers/random.js';
import { countSplits, splitBackends } from './helpers/thread-splits.js';
import { KERNELS, layoutOf, sizes, type Case } from './helpers/conv-parity.js';
import { expectBitEqual, expectSameRun, runSteps, trainingStep } from './helpers/train-steps.js';

const load = (input: number, offset: number, strides: number[]) => ({ input, offset, strides });
const L = (i: number): FusedExpr => ({ k: 'load', load: i });
const bin = (op: 'add' | 'mul' | 'sub' | 'maximum' | 'gt', a: FusedExpr, b: FusedExpr, out: 'float32' | 'bool' = 'float32'): FusedExpr => ({ k: 'binary', op, a, b, in: 'float32', out });
const un = (op: 'relu' | 'exp' | 'neg', x: FusedExpr): FusedExpr => ({ k: 'unary', op, x, p0: 0, p1: 0, in: 'float32', out: 'float32' });
const contiguous = (shape: number[]) => shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));

interface ProgramCase {
  name: string;
  program: FusedProgram;
  /** Elements of each storage (inputs, then outputs). */
  sizes: number[];
}

const CASES: ProgramCase[] = [
  (() => {
    const shape = [1027];
    const s = contiguous(shape);
    return {
      name: 'rank 1, odd length (a tail of 3): relu(a) * b + a',
      program: { shape, inputs: ['float32', 'float32', 'float32'], loads: [load(0, 0, s), load(1, 0, s)], outputs: [{ offset: 0, strides: s, dtype: 'float32', expr: bin('add', bin('mul', un('relu', L(0)), L(1)), L(0)) }] },
      sizes: [1027, 1027, 1027],
    } satisfies ProgramCase;
  })(),
  (() => {
    const shape = [13, 7, 9];
    const s = contiguous(shape);
    return {
      name: 'rank 3 with a per-channel broadcast (stride 0 over rows and columns) and an offset load',
      program: { shape, inputs: ['float32', 'float32', 'float32'], loads: [load(0, 5, s), load(1, 0, [0, 1, 0])], outputs: [{ offset: 0, strides: s, dtype: 'float32', expr: bin('sub', un('exp', L(0)), L(1)) }] },
      sizes: [13 * 7 * 9 + 5, 7, 13 * 7 * 9],
    } satisfies ProgramCase;
  })(),
  (() => {
    const shape = [11, 6];
    return {
      name: 'rank 2, a transposed load (strides [1, 11]), two outputs (one bool)',
      program: {
        shape,
        inputs: ['float32', 'float32', 'float32', 'bool'],
        loads: [load(0, 0, [6, 1]), load(1, 0, [1, 11])],
        outputs: [
          { offset: 0, strides: [6, 1], dtype: 'float32', expr: bin('maximum', L(0), un('neg', L(1))) },
          { offset: 0, strides: [6, 1], dtype: 'bool', expr: bin('gt', L(0), L(1), 'bool') },
        ],
      },
      sizes: [66, 66, 66, 66],
    } satisfies ProgramCase;
  })(),
  (() => {
    const shape = [9, 4, 5];
    const s = contiguous(shape);
    return {
      name: 'rank 3, a row broadcast (bias over the last dim) and a where',
      program: {
        shape,
        inputs: ['float32', 'float32', 'float32'],
        loads: [load(0, 0, s), load(1, 0, [0, 0, 1])],
        outputs: [{ offset: 0, strides: s, dtype: 'float32', expr: { k: 'where', cond: bin('gt', L(0), L(1), 'bool'), a: L(0), b: bin('mul', L(0), L(1)), out: 'float32' } }],
      },
      sizes: [180, 5, 180],
    } satisfies ProgramCase;
  })(),
];

/** Runs a fused program on `be` over storages filled from a seeded generator; the outputs' values (bool as numbers). */
function runProgram(be: Backend, c: ProgramCase, seed: number, alias?: [number, number]): number[][] {
  const nIn = c.program.inputs.length - c.program.outputs.length;
  const r = rng(seed);
  const storages = c.sizes.map((n, i) => {
    const dtype = c.program.inputs[i];
    const data = dtype === 'bool' ? new Uint8Array(n) : Float32Array.from({ length: n }, () => r() * 4 - 2);
    return be.upload(data, dtype);
  });
  if (alias) storages[alias[1]] = storages[alias[0]];
  const run = be.fusedMap!()!.build(c.program);
  run(...storages);
  const out = storages.slice(nIn).map((s) => Array.from(be.readSync!(s)));
  new Set(storages).forEach((s) => be.release(s));
  return out;
}

describe('fused elementwise programs split over threads', () => {
  // 2 and 3 threads with minThreadedWork 1: every program with enough rows is split.
  let one: WasmBackend;
  let many: WasmBackend[];
  let splits: (() => number)[];
  let dispose: () => void;
  beforeAll(async () => ({ one, many, splits, dispose } = await splitBackends()));
  afterAll(() => dispose());

  for (const c of CASES) {
    it(c.name, () => {
      const want = runProgram(one, c, 7);
      many.forEach((be, i) => {
        const before = splits[i]();
        const got = runProgram(be, c, 7);
        expect(splits[i]() - before, `${i + 2} threads: the program was split`).toBe(1);
        want.forEach((w, k) => expectBitEqual(got[k], w, `${i + 2} threads, output ${k}`));
      });
    });
  }

  it('in place over the same positions it splits; over other positions (a transposed read of the output) it runs on one thread, with the one-thread bits', () => {
    const shape = [8, 8];
    const same: ProgramCase = {
      name: 'x = relu(x) + y',
      program: { shape, inputs: ['float32', 'float32', 'float32'], loads: [load(0, 0, [8, 1]), load(1, 0, [8, 1])], outputs: [{ offset: 0, strides: [8, 1], dtype: 'float32', expr: bin('add', un('relu', L(0)), L(1)) }] },
      sizes: [64, 64, 64],
    };
    const transposed: ProgramCase = {
      name: 'x = x^T + y',
      program: { shape, inputs: ['float32', 'float32', 'float32'], loads: [load(0, 0, [1, 8]), load(1, 0, [8, 1])], outputs: [{ offset: 0, strides: [8, 1], dtype: 'float32', expr: bin('add', L(0), L(1)) }] },
      sizes: [64, 64, 64],
    };
    const two = many[0];
    for (const [c, split] of [[same, 1], [transposed, 0]] as const) {
      const want = runProgram(one, c, 3, [0, 2]);
      const before = splits[0]();
      const got = runProgram(two, c, 3, [0, 2]);
      expect(splits[0]() - before, `${c.name}: splits`).toBe(split);
      expectBitEqual(got[0], want[0], c.name);
    }
  });

  it('one row (nothing to band): one call on this thread', () => {
    const c: ProgramCase = {
      name: 'one row of 40',
      program: { shape: [1, 40], inputs: ['float32', 'float32'], loads: [load(0, 0, [40, 1])], outputs: [{ offset: 0, strides: [40, 1], dtype: 'float32', expr: un('exp', L(0)) }] },
      sizes: [40, 40],
    };
    const three = many[1];
    const before = splits[1]();
    const got = runProgram(three, c, 11);
    expect(splits[1]() - before).toBe(0);
    expectBitEqual(got[0], runProgram(one, c, 11)[0], 'values');
  });

  it('a worker that cannot load the generated module: the program runs here, and later ones are not split', async () => {
    const be = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
    try {
      const pool = (be as unknown as { pool: { load: (...a: unknown[]) => number } }).pool;
      pool.load = () => {
        throw new ThreadLoadError('wasm backend: (test) the worker cannot load it');
      };
      const count = countSplits(be);
      const c = CASES[0];
      const want = runProgram(one, c, 5);
      expectBitEqual(runProgram(be, c, 5)[0], want[0], 'after a failed load');
      expect(be.splitFused).toBe(false);
      expectBitEqual(runProgram(be, c, 5)[0], want[0], 'later');
      expect(count(), 'nothing reached the pool').toBe(0);
    } finally {
      be.dispose();
    }
  });
});

describe('captured small ResNet steps split over threads give the one-thread bits', () => {
  const make = () => fg.nn.models.resnetSmall({ inChannels: 1, numClasses: 4, widths: [8, 16, 32], blocksPerStage: 1 });
  let backends: WasmBackend[] = [];
  beforeAll(async () => {
    backends = await Promise.all([1, 2, 3].map((threads) => createWasmBackend(threads > 1 ? { threads, minThreadedWork: 1 } : { threads })));
  });
  afterAll(() => backends.forEach((b) => b.dispose()));

  for (const o of ['SGD', 'SAM'] as const) {
    it(`${o}, batch 6, 12x12 images, captured`, async () => {
      const run = (b: Backend) =>
        withBackend(b, () => {
          fg.manualSeed(9);
          const model = make();
          model.train();
          return runSteps(model, trainingStep(model, o), { shape: [6, 1, 12, 12], steps: 3, seed: 40, compile: {} });
        });
      const [want, ...got] = [await run(backends[0]), await run(backends[1]), await run(backends[2])];
      expect(want.stats!.plan!.fusedKernels ?? 1, 'the plan has fused programs').toBeGreaterThan(0);
      got.forEach((g, i) => {
        expectSameRun(g, want);
        const parts = (backends[i + 1].info().details as { threadParts?: { posted: number } }).threadParts;
        expect(parts?.posted ?? 0, `${i + 2} threads: parts were posted`).toBeGreaterThan(0);
      });
    });
  }
});

describe('split convolutions run their kept recordings again', () => {
  // conv.ts's forms ('off'), and the Winograd form's forward and input gradient ('on'; its weight
  // gradient is conv.ts's) on the same layout.
  const cases: (Case & { winograd: 'on' | 'off' })[] = [
    { name: '3x3 pad 1, 8 -> 16', n: 5, c: 8, h: 12, w: 12, o: 16, k: [3, 3], pad: [1, 1], winograd: 'off' },
    { name: '3x3 stride 2 (input gradient by phases), 8 -> 16', n: 5, c: 8, h: 13, w: 13, o: 16, k: [3, 3], stride: [2, 2], pad: [1, 1], winograd: 'off' },
    { name: '3x3 pad 1, 8 -> 16, Winograd', n: 5, c: 8, h: 12, w: 12, o: 16, k: [3, 3], pad: [1, 1], winograd: 'on' },
  ];
  let one: WasmBackend;
  let two: WasmBackend;
  beforeAll(async () => {
    one = await createWasmBackend({ threads: 1 });
    two = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
  });
  afterAll(() => [one, two].forEach((b) => b.dispose()));

  for (const t of cases) {
    it(t.name, () => {
      for (const be of [one, two]) be.winogradConvs = t.winograd;
      const l = layoutOf(t);
      const kept = () => (two as unknown as { convKernels: { recorded: Map<string, unknown> } | null }).convKernels?.recorded.size ?? 0;
      for (const kernel of KERNELS) {
        const s = sizes(kernel, l);
        const data = (n: number, seed: number) => {
          const r = rng(seed);
          return Float32Array.from({ length: n }, () => r() * 2 - 1);
        };
        const reference = (a: Float32Array, b: Float32Array) => {
          const [sa, sb, so] = [one.upload(a, 'float32'), one.upload(b, 'float32'), one.allocUninit(s.out, 'float32')];
          one[kernel](sa, sb, so, l);
          const r = Array.from(one.readSync(so));
          [sa, sb, so].forEach((x) => one.release(x));
          return r;
        };
        // Two input buffers: the first operand's address is in every kernel's recorded calls (the
        // weight gradient's output is written after the split, outside them).
        const ins = [two.allocUninit(s.a, 'float32'), two.allocUninit(s.a, 'float32')];
        const [sb, out] = [two.allocUninit(s.b, 'float32'), two.allocUninit(s.out, 'float32')];
        const runOn = (i: number, a: Float32Array, b: Float32Array) => {
          two.write(ins[i], a);
          two.write(sb, b);
          two.write(out, new Float32Array(s.out).fill(NaN));
          two[kernel](ins[i], sb, out, l);
          return Array.from(two.readSync(out));
        };
        const before = kept();
        expectBitEqual(runOn(0, data(s.a, 1), data(s.b, 2)), reference(data(s.a, 1), data(s.b, 2)), `${kernel}: recorded`);
        expect(kept(), `${kernel}: its recording is kept`).toBe(before + 1);
        expectBitEqual(runOn(0, data(s.a, 3), data(s.b, 4)), reference(data(s.a, 3), data(s.b, 4)), `${kernel}: kept, new data`);
        expect(kept(), `${kernel}: the same buffers ran the kept recording`).toBe(before + 1);
        expectBitEqual(runOn(1, data(s.a, 5), data(s.b, 6)), reference(data(s.a, 5), data(s.b, 6)), `${kernel}: another input buffer`);
        expect(kept(), `${kernel}: another input buffer recorded its own`).toBe(before + 2);
        [...ins, sb, out].forEach((x) => two.release(x));
      }
    });
  }
});

describe('outputs allocated without a zero fill', () => {
  let be: WasmBackend;
  beforeAll(async () => {
    be = await createWasmBackend({ threads: 1 });
  });
  afterAll(() => be.dispose());

  it('conv2d, its input gradient (stride 2, 1x1: pixels no window reads) and weight gradient, and where, over reused garbage blocks', async () => {
    await withBackend(be, async () => {
      const r = rng(2);
      const x = fg.tensor(Float32Array.from({ length: 2 * 3 * 9 * 9 }, () => r() - 0.5), { shape: [2, 3, 9, 9] });
      const w = fg.tensor(Float32Array.from({ length: 4 * 3 }, () => r() - 0.5), { shape: [4, 3, 1, 1] });
      const run = () =>
        fg.tidy(() => {
          const xv = x.detach().requiresGrad_();
          const wv = w.detach().requiresGrad_();
          const y = fg.conv2d(xv, wv, null, { stride: 2 });
          const m = fg.where(fg.gt(y, 0), y, fg.mul(y, 0.5));
          fg.sum(fg.mul(m, m)).backward();
          return [y, m, xv.grad!, wv.grad!].map((t) => Array.from(t.dataSync() as Float32Array));
        });
      const clean = run();
      // Blocks of every size class the run uses, filled with NaN and released: the next run's
      // outputs come from them.
      const junk = [2 * 4 * 5 * 5, 2 * 3 * 9 * 9, 12, 4096].map((n) => be.upload(new Float32Array(n).fill(NaN), 'float32'));
      junk.forEach((s) => be.release(s));
      const again = run();
      again.forEach((v, i) => expectBitEqual(v, clean[i], `output ${i}`));
      expect(again[2].some((v) => v === 0), 'the input gradient has pixels no window reads (zero)').toBe(true);
      fg.dispose([x, w]);
    });
  });
});
