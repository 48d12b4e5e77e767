/**
 * The MLP step's one-thread pieces on wasm, split over threads (issue 13: two threads <= 0.6x one):
 * - ThreadPool.load: a worker instantiates a generated module over the shared memory and runs its
 *   export as part of a split (the caller's own part waits until the worker's has written, so the
 *   worker, not a take-back, ran it); a module it cannot instantiate is a clear error, and no
 *   later load is accepted (the backend then runs generated code on its own thread);
 * - arena passes (the fused optimizer kernels) split over threads at 64-element block boundaries
 *   (src/kernels/arena/host.ts runSplit): writes, normal draws keyed above 2^31 (float64 records
 *   carry them exactly) and every reduction kind give the one-thread bits, for parameters cut
 *   inside and between, inactive ones among them;
 * - captured MLP steps (SGD, SAM) with every matmul and arena pass split over two threads, in
 *   shapes whose gemms split by columns (n > m), by rows (m > n) and by batch, give the
 *   one-thread bits.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { ModuleBuilder, ValType, i32 } from '../src/kernels/wasm/emit.js';
import { ThreadPool } from '../src/kernels/wasm/threads.js';
import { defineArenaKernel } from '../src/kernels/arena/index.js';
import { withBackend } from './helpers/backend-scope.js';
import { expectBits, runArena } from './helpers/arena-run.js';
import { rng } from './helpers/random.js';
import { expectBitEqual, expectSameRun, runSteps, trainingStep } from './helpers/train-steps.js';

/** A module over a shared memory whose export `name` stores value at addr (+ delta). */
function storeModule(name: string, delta: number, importFrom = 'env'): WebAssembly.Module {
  const mb = new ModuleBuilder();
  mb.importMemory(importFrom, 'memory', { initial: 1, maximum: 16, shared: true });
  mb.func(name, [ValType.i32, ValType.i32], [], (f, addr, value) => f.exec(i32.store(addr, i32.add(value, delta))));
  return new WebAssembly.Module(mb.toBytes() as Uint8Array<ArrayBuffer>);
}

describe('ThreadPool.load: workers run generated modules', () => {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 16, shared: true });
  const mem = new Int32Array(memory.buffer);
  let pool: ThreadPool;
  beforeAll(async () => {
    // Control slot at 0, call lists at 4096, flags from 8192.
    pool = await ThreadPool.start(storeModule('set', 0), memory, 0, 1, ['set'], () => 4096);
  });
  afterAll(() => pool.dispose());

  it('a loaded export gets the next index, and a worker runs it in its part', () => {
    const generated = storeModule('add_seven', 7);
    const index = pool.load(generated, 'add_seven');
    expect(index).toBe(1);
    const local = new WebAssembly.Instance(generated, { env: { memory } }).exports.add_seven as (a: number, v: number) => void;
    const set = new WebAssembly.Instance(storeModule('set', 0), { env: { memory } }).exports.set as (a: number, v: number) => void;
    const FLAG = 8192;
    Atomics.store(mem, FLAG >> 2, 0);
    let sawWorker = false;
    pool.run(
      [[{ fn: 0, args: [FLAG + 4, 5] }], [{ fn: index, args: [FLAG, 1] }]],
      (c) => {
        // The caller's part first: it waits (2 s at most) for the worker's store of 1 + 7.
        if (c.fn === 0) {
          const until = performance.now() + 2000;
          while (Atomics.load(mem, FLAG >> 2) !== 8 && performance.now() < until);
          sawWorker = Atomics.load(mem, FLAG >> 2) === 8;
        }
        (c.fn === 0 ? set : local)(...(c.args as [number, number]));
      },
    );
    expect(sawWorker, 'the worker ran the loaded export').toBe(true);
    expect(mem[(FLAG >> 2) + 1]).toBe(5);
    expect(pool.load(storeModule('again', 1), 'again')).toBe(2);
  });

  it('a module the worker cannot instantiate is an error naming the export', () => {
    // Imports its memory from "other": no such import object on the worker.
    expect(() => pool.load(storeModule('orphan', 0, 'other'), 'orphan')).toThrow(/could not instantiate the generated module of "orphan"/);
    // The workers' export lists may differ now: no later load gets an index.
    expect(() => pool.load(storeModule('later', 0), 'later')).toThrow(/generated modules cannot run on the worker threads/);
    // The pool still runs calls afterwards (here, where the caller takes the part back).
    const set = new WebAssembly.Instance(storeModule('set', 0), { env: { memory } }).exports.set as (a: number, v: number) => void;
    const FLAG = 8192 + 64;
    pool.run([[], [{ fn: 0, args: [FLAG, 42] }]], (c) => set(...(c.args as [number, number])));
    expect(mem[FLAG >> 2]).toBe(42);
  });
});

type Net = fg.nn.Module & { forward(x: fg.Tensor): fg.Tensor };

/** A linear layer over the last dim of a 3-d input: a batched matmul (bias + relu epilogue) in the captured step. */
class Batched extends fg.nn.Layer {
  readonly w: fg.Tensor;
  readonly b: fg.Tensor;
  constructor(inF: number, outF: number) {
    super();
    this.w = this.registerParameter('w', fg.nn.param(fg.randn([inF, outF]).mul(0.3)));
    this.b = this.registerParameter('b', fg.nn.param(fg.randn([outF]).mul(0.1)));
  }
  forward(x: fg.Tensor): fg.Tensor {
    return fg.relu(fg.matmul(x, this.w).add(this.b));
  }
}

const MODELS: [string, () => Net, number[]][] = [
  // Batch 20 against 96-wide layers: the forward's gemms split by columns, the weight gradients' (96 x 20 x 96) by rows too.
  ['MLP 40-96-96-4 (column and row splits)', () => fg.nn.models.mlp([40, 96, 96, 4]) as Net, [20, 40]],
  // Batch 72 against 24-wide layers: the forward's gemms split by rows.
  ['MLP 16-24-24-4 (row splits)', () => fg.nn.models.mlp([16, 24, 24, 4]) as Net, [72, 16]],
  ['batched linear 3 x 10 x 12 -> 20 (batch splits)', () => new fg.nn.Sequential(new Batched(12, 20), new fg.nn.Flatten(), new fg.nn.Linear(200, 4)) as unknown as Net, [3, 10, 12]],
];

describe('captured steps on wasm with every matmul and arena pass split over two threads: the one-thread bits', () => {
  let one: Backend;
  let two: Backend;
  beforeAll(async () => {
    one = await createWasmBackend({ threads: 1 });
    // Every matmul and arena pass split over both threads.
    two = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
  });
  afterAll(() => {
    for (const b of [one, two]) (b as { dispose?: () => void }).dispose?.();
  });
  for (const [name, make, shape] of MODELS) {
    for (const o of ['SGD', 'SAM'] as const) {
      it(`${name}, ${o}`, async () => {
        const run = (b: Backend) =>
          withBackend(b, () => {
            fg.manualSeed(5);
            const model = make();
            model.train();
            return runSteps(model, trainingStep(model, o), { shape, steps: 3, seed: 300, compile: {} });
          });
        const [want, got] = [await run(one), await run(two)];
        expect(got.stats!.plan!.epilogues, 'the plan has matmul epilogues').toBeGreaterThan(0);
        expectSameRun(got, want);
        expectBitEqual(got.losses, want.losses, 'losses');
        const parts = (two.info().details as { threadParts?: { posted: number } }).threadParts;
        expect(parts?.posted ?? 0, 'parts were posted to the worker').toBeGreaterThan(0);
      });
    }
  }
});

describe('arena passes split over two threads: the one-thread bits', () => {
  let one: Backend;
  let two: Backend;
  let unsplit: Backend;
  beforeAll(async () => {
    one = await createWasmBackend({ threads: 1 });
    // Every pass split (minThreadedWork), and the same pool with arena splits turned off (a control that a split ran).
    two = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
    unsplit = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
    (unsplit as unknown as { splitArena: boolean }).splitArena = false;
  });
  afterAll(() => {
    for (const b of [one, two, unsplit]) (b as { dispose?: () => void }).dispose?.();
  });
  /** out = x * sc + a normal draw, and the norm, sum, max |x| and sum of squares of x. */
  const MIXED = defineArenaKernel({
    name: 'split-test',
    vectors: { out: 'write', x: 'read' },
    hyper: { key0: 0, key1: 0, sc: 1 },
    slots: { n: 0, s: 1, m: 2, ss: 3 },
    body: ({ x }, h, _s, k) => ({ out: k.add(k.mul(x, h.sc), k.normal(h.key0, h.key1)) }),
    reduce: ({ x }, _h, _s, k) => ({ n: k.norm(x), s: k.sum(x), m: k.maxAbs(x), ss: k.sumSquares(x) }),
  });
  const HYPER = [{ key0: 0xdeadbeef, key1: 0x9e3779b9, sc: 0.3 }];
  for (const [name, sizes, inactive] of [
    ['one parameter cut inside', [1000], []],
    ['odd sizes, cuts inside and between', [1, 3, 63, 65, 257, 1000, 130], []],
    ['inactive parameters among them', [64, 700, 5, 300, 900], [1, 3]],
  ] as [string, number[], number[]][]) {
    it(name, async () => {
      const r = rng(sizes.length);
      const total = sizes.reduce((a, n) => a + n, 0);
      const x = Float32Array.from({ length: total }, () => Math.fround(r() * 4 - 2));
      const want = await runArena(one, MIXED, sizes, { x }, { hyper: HYPER, inactive });
      const before = (two.info().details as { threadParts: { posted: number } }).threadParts.posted;
      const got = await runArena(two, MIXED, sizes, { x }, { hyper: HYPER, inactive });
      expect((two.info().details as { threadParts: { posted: number } }).threadParts.posted, 'the pass was split').toBeGreaterThan(before);
      expectBits(got.vectors.out, want.vectors.out, 'out');
      expectBits(got.S, want.S, 'slots');
      const control = await runArena(unsplit, MIXED, sizes, { x }, { hyper: HYPER, inactive });
      expectBits(control.S, want.S, 'slots, unsplit on two threads');
    });
  }

  it('by the cost model, a pass over fewer than 16 MB runs on one thread (split, the MLP-sized passes measured slower)', async () => {
    const priced = await createWasmBackend({ threads: 2 });
    try {
      const parts = () => (priced.info().details as { threadParts?: { posted: number } }).threadParts?.posted ?? 0;
      const before = parts();
      const sizes = [200704, 256, 65536, 256, 2560, 10];
      const x = new Float32Array(sizes.reduce((a, n) => a + n, 0)).fill(0.5);
      const got = await runArena(priced, MIXED, sizes, { x }, { hyper: HYPER });
      expect(parts(), 'no part posted').toBe(before);
      expectBits(got.S, (await runArena(one, MIXED, sizes, { x }, { hyper: HYPER })).S, 'slots');
    } finally {
      priced.dispose();
    }
  });
});
