/**
 * The wasm backend's worker threads: a convolution or matmul split over 2 or 3 threads gives the
 * same bits as one thread (each output element keeps its summation order), on odd shapes,
 * strides, dilations and groups; the splits really happen (the pool's runs are counted); the
 * cost model splits large calls and not small ones; the start-up calibration reports what it
 * measured and honours an explicit thread count. No timing is asserted here (see
 * bench/threads.bench.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWasmBackend, splitGemm, type WasmBackend } from '../src/kernels/wasm/index.js';
import { DEFAULT_TILING } from '../src/kernels/wasm/module.js';
import { chooseThreads, SPIN_BRIDGE_US, SplitCost, splitRange } from '../src/kernels/wasm/threads.js';
import type { MatmulLayout } from '../src/kernels/backend.js';
import { type Case, checkParity, KERNELS, layoutOf, run, sizes } from './helpers/conv-parity.js';
import { randomF32 } from './helpers/webgpu.js';
import { countSplits, matmulOn, splitBackends } from './helpers/thread-splits.js';

const CASES: Case[] = [
  { name: '3x3 pad 1, 16 -> 32 (the issue case, small batch)', n: 5, c: 16, h: 28, w: 28, o: 32, k: [3, 3], pad: [1, 1] },
  { name: '3x3 pad 1, odd sizes, 3 images', n: 3, c: 3, h: 7, w: 9, o: 5, k: [3, 3], pad: [1, 1] },
  { name: 'one image, rows split (several row blocks)', n: 1, c: 8, h: 40, w: 33, o: 24, k: [3, 3], pad: [1, 1] },
  { name: 'stride 2, 8 -> 16, odd size', n: 3, c: 8, h: 15, w: 15, o: 16, k: [3, 3], stride: [2, 2], pad: [1, 1] },
  { name: 'stride 2x3, 3x2 kernel, groups 2', n: 3, c: 4, h: 9, w: 7, o: 6, k: [3, 2], stride: [2, 3], pad: [1, 0], groups: 2 },
  { name: 'depthwise 3x3', n: 2, c: 6, h: 11, w: 10, o: 6, k: [3, 3], pad: [1, 1], groups: 6 },
  { name: 'dilation and stride mixed (input gradient by columns)', n: 2, c: 3, h: 11, w: 10, o: 4, k: [2, 3], stride: [3, 2], pad: [1, 2], dil: [3, 1] },
  { name: 'dilation 2', n: 2, c: 2, h: 12, w: 12, o: 3, k: [3, 3], pad: [2, 2], dil: [2, 2] },
  { name: 'stem: 1 -> 8 (weight gradient: one 8-channel tile, split by images)', n: 4, c: 1, h: 28, w: 28, o: 8, k: [3, 3], pad: [1, 1] },
  { name: '1x1 stride 2', n: 3, c: 16, h: 14, w: 13, o: 32, k: [1, 1], stride: [2, 2] },
  { name: '1x1 pointwise, partial tiles', n: 3, c: 17, h: 7, w: 7, o: 13, k: [1, 1] },
  { name: 'patch embedding 7x7 stride 7', n: 4, c: 1, h: 28, w: 28, o: 32, k: [7, 7], stride: [7, 7] },
  { name: '40 channels: five 8-channel tiles over 3 threads', n: 2, c: 5, h: 9, w: 9, o: 40, k: [3, 3], pad: [1, 1] },
];

describe('wasm threads: split calls give the bits of one thread', () => {
  // 2 and 3 threads with minThreadedWork 1: every call is split, whatever the cost model would say.
  let one: WasmBackend;
  let many: WasmBackend[];
  let splits: (() => number)[];
  let dispose: () => void;
  beforeAll(async () => ({ one, many, splits, dispose } = await splitBackends()));
  afterAll(() => dispose());

  CASES.forEach((t, i) =>
    it(`conv: ${t.name}`, async () => {
      const l = layoutOf(t);
      for (const [j, be] of many.entries()) {
        expect(be.activeThreads).toBe(j + 2);
        for (const kernel of KERNELS) {
          const s = sizes(kernel, l);
          const a = randomF32(s.a, 50 + i);
          const b = randomF32(s.b, 70 + i);
          const before = splits[j]();
          const want = await run(one, kernel, l, a, b, s.out);
          const got = await run(be, kernel, l, a, b, s.out);
          // What stays on one thread: the dilated and strided input gradient, and a weight
          // gradient of one image and one 8-channel tile in all (its threads take (chunk of
          // images, tile) units).
          const unsplit =
            (kernel === 'conv2dBackwardInput' && (l.sh > 1 || l.sw > 1) && (l.dh > 1 || l.dw > 1)) ||
            (kernel === 'conv2dBackwardWeight' && l.n * l.groups * Math.ceil(l.outChannels / l.groups / 8) < 2);
          expect(splits[j]() > before, `${kernel} on ${j + 2} threads was split`).toBe(!unsplit);
          expect(Array.from(got), `${kernel} on ${j + 2} threads`).toEqual(Array.from(want));
        }
        expect(be.memory().liveBuffers).toBe(0);
      }
      // And the threaded result is right, not only equal to the other.
      await checkParity(many[1], t, 900 + i);
    }),
  );

  it('matmul: rows, columns and batch splits over 3 threads, odd shapes', () => {
    const cases: MatmulLayout[] = [
      { batch: 1, m: 257, n: 63, k: 65, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 },
      { batch: 1, m: 7, n: 257, k: 300, transA: true, transB: true, aBatchStride: 0, bBatchStride: 0 },
      { batch: 1, m: 13, n: 9, k: 5, transA: false, transB: true, aBatchStride: 0, bBatchStride: 0 },
      { batch: 4, m: 33, n: 17, k: 9, transA: false, transB: true, aBatchStride: 33 * 9, bBatchStride: 0 },
      { batch: 128, m: 17, n: 8, k: 17, transA: false, transB: false, aBatchStride: 17 * 17, bBatchStride: 17 * 8 },
    ];
    const be = many[1];
    for (const [t, l] of cases.entries()) {
      const A = randomF32(l.aBatchStride * (l.batch - 1) + l.m * l.k, 400 + t);
      const B = randomF32(l.bBatchStride * (l.batch - 1) + l.k * l.n, 500 + t);
      const before = splits[1]();
      expect(matmulOn(be, A, B, l), JSON.stringify(l)).toEqual(matmulOn(one, A, B, l));
      expect(splits[1]()).toBe(before + 1);
    }
  });
});

/**
 * The eight matmuls of one SGD step of the MLP 784-256-256-10 at batch 128 (bench/steps), as the
 * backend receives them: forward x @ W^T, input gradient dY @ W, weight gradient dY^T @ x.
 */
const MLP_MATMULS: MatmulLayout[] = [
  [128, 784, 256, false, true],
  [256, 128, 784, true, false],
  [128, 256, 256, false, true],
  [128, 256, 256, false, false],
  [256, 128, 256, true, false],
  [128, 256, 10, false, true],
  [128, 10, 256, false, false],
  [10, 128, 256, true, false],
].map(([m, k, n, transA, transB]) => ({ batch: 1, m, k, n, transA, transB, aBatchStride: 0, bBatchStride: 0 }) as MatmulLayout);

describe('wasm threads: the MLP step\'s matmuls', () => {
  it('split over 2 threads give the bits of one thread (float sums over k are order-sensitive, so a split of k would differ)', async () => {
    const one = await createWasmBackend({ threads: 1 });
    const two = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
    const splits = countSplits(two);
    try {
      for (const [t, l] of MLP_MATMULS.entries()) {
        // Values of mixed sign and magnitude: a different summation order changes low bits.
        const A = randomF32(l.m * l.k, 600 + t).map((v, i) => v * (1 + (i % 7) * 100));
        const B = randomF32(l.k * l.n, 700 + t);
        const before = splits();
        expect(matmulOn(two, A, B, l), JSON.stringify(l)).toEqual(matmulOn(one, A, B, l));
        expect(splits(), JSON.stringify(l)).toBe(before + 1);
      }
      // The check can fail: the first layer's weight gradient (dY^T x, k = 128) summed as two halves
      // of k, as a split along k would, differs from one thread's bits on these data.
      const l = MLP_MATMULS[1];
      const A = randomF32(l.m * l.k, 601).map((v, i) => v * (1 + (i % 7) * 100));
      const B = randomF32(l.k * l.n, 701);
      // A is stored k x m (transA): rows k0..k1 are contiguous, as are B's.
      const half = (k0: number, k1: number) => matmulOn(one, A.subarray(k0 * l.m, k1 * l.m), B.subarray(k0 * l.n, k1 * l.n), { ...l, k: k1 - k0 });
      const [lo, hi] = [half(0, l.k / 2), half(l.k / 2, l.k)];
      const kSplit = Array.from(Float32Array.from(lo, (v, i) => v + hi[i]));
      expect(kSplit).not.toEqual(matmulOn(one, A, B, l));
    } finally {
      one.dispose();
      two.dispose();
    }
  });

  it('are split along m or n in whole tiles, never along k, into parts that differ by at most one tile', () => {
    const t = DEFAULT_TILING;
    for (const l of MLP_MATMULS) {
      const job = { a: 0, aRow: 0, aCol: 0, b: 0, bRow: 0, bCol: 0, c: 0, ldc: l.n * 4, m: l.m, n: l.n, k: l.k, batch: 1, aBatch: 0, bBatch: 0, cBatch: 0 };
      const parts = splitGemm(job, 2, t);
      expect(parts.length, JSON.stringify(l)).toBe(2);
      for (const p of parts) expect(p.k).toBe(l.k);
      const byRows = parts.every((p) => p.n === l.n);
      const [dim, tile] = byRows ? [l.m, t.mr] : [l.n, t.nr];
      const sizes = parts.map((p) => (byRows ? p.m : p.n));
      expect(sizes.reduce((x, y) => x + y, 0)).toBe(dim);
      const tiles = sizes.map((s) => Math.ceil(s / tile));
      expect(Math.max(...tiles) - Math.min(...tiles)).toBeLessThanOrEqual(1);
      // The larger of m and n is split: the other operand, which every part packs whole, is the smaller.
      expect(byRows, JSON.stringify(l)).toBe(l.m > l.n);
    }
  });
});

describe('wasm threads: cost model and calibration', () => {
  it('splitRange covers [0, units) in contiguous, near-equal ranges', () => {
    expect(splitRange(10, 3)).toEqual([
      [0, 3],
      [3, 6],
      [6, 10],
    ]);
    expect(splitRange(2, 4)).toEqual([
      [0, 1],
      [1, 2],
    ]);
    expect(splitRange(0, 2)).toEqual([[0, 0]]);
  });

  it('SplitCost splits only calls whose parts outweigh the overhead, with fewer threads for mid-sized calls', () => {
    // 1e-3 us per flop; hot split 5 us, cold 50 us; a long spin window.
    const cost = new SplitCost(4, 1e-3, 5, 50, 1e9);
    // Cold (no split yet): parts must be worth 3 x 50 us = 150 us of work.
    expect(cost.threadsFor(100_000)).toBe(1); // 100 us in all
    expect(cost.threadsFor(300_000)).toBe(2); // 300 us: two parts of 150
    expect(cost.threadsFor(500_000)).toBe(3);
    expect(cost.threadsFor(600_000)).toBe(4);
    cost.splitEnded();
    // Hot: parts of 3 x 5 = 15 us suffice.
    expect(cost.threadsFor(30_000)).toBe(2);
    expect(cost.threadsFor(20_000)).toBe(1);
    // The overhead is never priced below MIN_OVERHEAD_US (5 us), however low it was measured.
    const fast = new SplitCost(2, 1e-3, 0.1, 0.1, 1e9);
    expect(fast.threadsFor(20_000)).toBe(1);
    expect(fast.threadsFor(30_000)).toBe(2);
    expect(new SplitCost(1, 1e-3, 5, 50, 1e9).threadsFor(1e12)).toBe(1);
  });

  it('the default thread count comes from a measurement that info() reports; an explicit count is honoured', async () => {
    const auto = await createWasmBackend();
    const explicit = await createWasmBackend({ threads: 2 });
    try {
      const cal = auto.info().details?.threadCalibration as
        | { threads: number; available: number; reason: string; gflops: number; speedup: number; spinUs: number; hotUs: number; coldUs: number }
        | undefined;
      if (cal) {
        // Several cores and shared memory: the measured choice is one of 1, 2 or all of them.
        expect([1, 2, cal.available]).toContain(cal.threads);
        expect(auto.activeThreads).toBe(cal.threads);
        expect(cal.reason).toMatch(/calibration matmul/);
        expect(cal.gflops).toBeGreaterThan(0);
        expect(cal.speedup).toBeGreaterThan(0);
        // The spin budget: none (spinning is the slower), or long enough to bridge a training step's gaps.
        expect([0, SPIN_BRIDGE_US]).toContain(cal.spinUs);
        expect(cal.hotUs).toBeLessThanOrEqual(cal.coldUs);
        expect(auto.info().details?.threads).toBe(cal.threads);
      } else expect(auto.activeThreads).toBe(1);
      expect(explicit.activeThreads).toBe(2);
      const ex = explicit.info().details?.threadCalibration as { threads: number; reason: string };
      expect(ex.threads).toBe(2);
      expect(ex.reason).toBe('asked for 2 threads');
    } finally {
      auto.dispose();
      explicit.dispose();
    }
  });
});

describe('wasm threads: elementwise kernels split by blocks, rows or vectors give the bits of one thread', () => {
  let one: WasmBackend;
  let three: WasmBackend;
  let splits: () => number;
  beforeAll(async () => {
    one = await createWasmBackend({ threads: 1 });
    three = await createWasmBackend({ threads: 3, minThreadedWork: 1 });
    splits = countSplits(three);
  });
  afterAll(() => [one, three].forEach((b) => b?.dispose()));

  const contiguous = (shape: number[]) => shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  /** Strides of an operand of `shape` broadcast to `full` (size-1 dims get stride 0). */
  const broadcast = (shape: number[], full: number[]) => {
    const st = contiguous(shape);
    return full.map((_, i) => (shape[i] === 1 && full[i] !== 1 ? 0 : st[i]));
  };

  it('unary ops without parameters, odd lengths (a tail of 1 to 3)', () => {
    for (const [i, n] of [1, 5, 1023, 4097, 30001].entries()) {
      const x = randomF32(n, 10 + i).map((v) => v * 4);
      for (const op of ['relu', 'exp', 'tanh', 'neg', 'geluErf', 'sigmoid'] as const) {
        const result = (be: WasmBackend) => {
          const [sx, so] = [be.upload(x, 'float32'), be.alloc(n, 'float32')];
          be.unary(op, sx, so);
          const r = Array.from(be.readSync(so));
          [sx, so].forEach((s) => be.release(s));
          return r;
        };
        const before = splits();
        expect(result(three), `${op} over ${n}`).toEqual(result(one));
        expect(splits() > before, `${op} over ${n} was split`).toBe(n > 4);
      }
    }
  });

  it('binary ops and where over broadcasts: same shape, bias rows, per-channel NCHW, column broadcast', () => {
    const cases: [number[], number[], number[]][] = [
      [[1001], [1001], [1001]],
      [[33, 65], [33, 65], [1, 65]],
      [[5, 7, 3, 3], [5, 7, 3, 3], [1, 7, 1, 1]],
      [[2, 3, 17], [2, 3, 17], [2, 3, 1]],
      [[4, 6, 9], [1, 6, 9], [4, 1, 9]],
    ];
    for (const [i, [full, sa, sb]] of cases.entries()) {
      const numel = (s: number[]) => s.reduce((a, b) => a * b, 1);
      const a = randomF32(numel(sa), 30 + i);
      const b = randomF32(numel(sb), 40 + i);
      const layout = { shape: full, aStrides: broadcast(sa, full), bStrides: broadcast(sb, full) };
      const result = (be: WasmBackend, op: 'add' | 'mul' | 'sub' | 'gt') => {
        const [x, y] = [be.upload(a, 'float32'), be.upload(b, 'float32')];
        const o = be.alloc(numel(full), op === 'gt' ? 'bool' : 'float32');
        be.binary(op, x, y, o, layout);
        const cond = be.alloc(numel(full), 'bool');
        be.binary('gt', x, y, cond, layout);
        const w = be.alloc(numel(full), 'float32');
        be.where(cond, x, y, w, { shape: full, condStrides: contiguous(full), aStrides: layout.aStrides, bStrides: layout.bStrides });
        const r = [...Array.from(be.readSync(o)), ...Array.from(be.readSync(w))];
        [x, y, o, cond, w].forEach((s) => be.release(s));
        return r;
      };
      for (const op of ['add', 'mul', 'sub', 'gt'] as const) {
        const before = splits();
        expect(result(three, op), `${op} ${JSON.stringify(layout)}`).toEqual(result(one, op));
        expect(splits() > before, `${op} ${JSON.stringify(full)} was split`).toBe(true);
      }
    }
  });
});

describe('wasm threads: batchNorm backward split by channels gives the bits of one thread', () => {
  it('with and without weight, dx, dweight and dbias; odd channel counts and row lengths', async () => {
    const one = await createWasmBackend({ threads: 1 });
    const three = await createWasmBackend({ threads: 3, minThreadedWork: 1 });
    const splits = countSplits(three);
    try {
      for (const [i, [n, c, hw]] of [
        [4, 7, 13],
        [3, 16, 49],
        [2, 1, 9],
        [5, 5, 1],
      ].entries()) {
        for (const withWeight of [true, false]) {
          const grad = randomF32(n * c * hw, 80 + i);
          const x = randomF32(n * c * hw, 90 + i);
          const mean = randomF32(2 * c, 100 + i).map((v, j) => (j % 2 ? v * 1e-7 : v));
          const rstd = randomF32(c, 110 + i).map((v) => 1 + Math.abs(v));
          const weight = randomF32(c, 120 + i);
          const result = (be: WasmBackend, outputs: [boolean, boolean, boolean]) => {
            const up = (d: Float32Array) => be.upload(d, 'float32');
            const [g, xs, m, r] = [up(grad), up(x), up(mean), up(rstd)];
            const w = withWeight ? up(weight) : null;
            const [dx, dw, db] = [n * c * hw, c, c].map((len, j) => (outputs[j] ? be.alloc(len, 'float32') : null));
            be.batchNormBackward(g, xs, m, r, w, dx, dw, db, { n, c, hw, eps: 1e-5 });
            const out = [dx, dw, db].flatMap((s) => (s ? Array.from(be.readSync(s)) : []));
            [g, xs, m, r, w, dx, dw, db].forEach((s) => s && be.release(s));
            return out;
          };
          for (const outputs of [
            [true, true, true],
            [true, false, false],
            [false, true, true],
          ] as [boolean, boolean, boolean][]) {
            const before = splits();
            expect(result(three, outputs), `n ${n} c ${c} hw ${hw} weight ${withWeight} outputs ${outputs}`).toEqual(result(one, outputs));
            expect(splits() > before).toBe(c > 1);
          }
        }
      }
    } finally {
      one.dispose();
      three.dispose();
    }
  });
});

/**
 * One thread, then 2 and 3 with every call split, each with its pool runs counted: made once for
 * the blocks below, which ask for them with threadedBackends().
 */
let threaded: Promise<{ one: WasmBackend; many: WasmBackend[]; splits: (() => number)[] }> | null = null;
const threadedBackends = () =>
  (threaded ??= Promise.all([1, 2, 3].map((threads) => createWasmBackend(threads > 1 ? { threads, minThreadedWork: 1 } : { threads }))).then(([one, ...many]) => ({
    one,
    many,
    splits: many.map(countSplits),
  })));
afterAll(async () => {
  if (!threaded) return;
  const { one, many } = await threaded;
  [one, ...many].forEach((b) => b.dispose());
});

describe('wasm threads: batchNorm forward and eval split by channels give the bits of one thread', () => {
  it('train and eval, with and without weight and bias, eps through the pool as two i32 halves', async () => {
    const { one, many, splits } = await threadedBackends();
    for (const [i, [n, c, hw]] of [
      [32, 8, 28 * 28],
      [3, 16, 49],
      [6, 3, 1],
      [4, 7, 13],
      [2, 1, 9],
    ].entries()) {
      // An offset channel (values near 1000) and an eps that is not a float32 (1e-5, and 0.3,
      // large enough to move rstd visibly): a wrong half of eps would change the bits.
      const x = randomF32(n * c * hw, 130 + i).map((v, j) => (Math.floor(j / hw) % c === 0 ? 1000 + v : v));
      const weight = randomF32(c, 140 + i);
      const bias = randomF32(c, 150 + i);
      const runningMean = randomF32(c, 160 + i);
      const runningVar = randomF32(c, 170 + i).map((v) => Math.abs(v));
      for (const eps of [1e-5, 0.3]) {
        for (const affine of [true, false]) {
          const train = (be: WasmBackend) => {
            const up = (d: Float32Array) => be.upload(d, 'float32');
            const [xs, w, b] = [up(x), affine ? up(weight) : null, affine ? up(bias) : null];
            const [out, mean, variance, rstd] = [n * c * hw, 2 * c, c, c].map((len) => be.alloc(len, 'float32'));
            be.batchNorm(xs, w, b, out, mean, variance, rstd, { n, c, hw, eps });
            const r = [out, mean, variance, rstd].flatMap((s) => Array.from(be.readSync(s)));
            [xs, w, b, out, mean, variance, rstd].forEach((s) => s && be.release(s));
            return r;
          };
          const evaluate = (be: WasmBackend) => {
            const up = (d: Float32Array) => be.upload(d, 'float32');
            const [xs, rm, rv, w, b] = [up(x), up(runningMean), up(runningVar), affine ? up(weight) : null, affine ? up(bias) : null];
            const out = be.alloc(n * c * hw, 'float32');
            be.batchNormEval(xs, rm, rv, w, b, out, { n, c, hw, eps });
            const r = Array.from(be.readSync(out));
            [xs, rm, rv, w, b, out].forEach((s) => s && be.release(s));
            return r;
          };
          const label = `n ${n} c ${c} hw ${hw} eps ${eps} affine ${affine}`;
          const want = [train(one), evaluate(one)];
          // rstd = 1 / sqrt(var + eps) from the float64 variance (stored rounded to float32): eps
          // arrived whole (a lost high half would make it 0 or huge, far outside this bound).
          const rstd = want[0].slice(n * c * hw + 3 * c);
          const variance = want[0].slice(n * c * hw + 2 * c, n * c * hw + 3 * c);
          rstd.forEach((r, ch) => expect(Math.abs(r * Math.sqrt(variance[ch] + eps) - 1), `${label} rstd ${ch}`).toBeLessThan(3e-7));
          const evalRstd0 = Math.fround(1 / Math.sqrt(Math.fround(runningVar[0]) + eps));
          const k0 = affine ? Math.fround(evalRstd0 * weight[0]) : evalRstd0;
          const b0 = affine ? bias[0] : 0;
          expect(want[1][0], `${label} eval`).toBe(Math.fround(Math.fround(Math.fround(x[0] - runningMean[0]) * k0) + b0));
          for (const [j, be] of many.entries()) {
            const before = splits[j]();
            expect(train(be), `${label} train on ${j + 2} threads`).toEqual(want[0]);
            expect(evaluate(be), `${label} eval on ${j + 2} threads`).toEqual(want[1]);
            expect(splits[j]() - before, `${label}: both calls split`).toBe(c > 1 ? 2 : 0);
          }
        }
      }
    }
  });
});

/**
 * The splits of this stop: the weight gradient over (chunk of images, 8-channel tile) units, with
 * more images than chunks, a batch that does not divide into them, and one 8-channel tile; the
 * strided input gradient as one split of whole images, all its stride phases per image, with
 * pixels no phase writes (cleared per image by the part's thread) and with groups.
 */
const SPLIT_CASES: (Case & { unsplit?: boolean })[] = [
  { name: 'weight gradient, one tile, 19 images (8 chunks of 2-3)', n: 19, c: 8, h: 9, w: 9, o: 8, k: [3, 3], pad: [1, 1] },
  { name: 'weight gradient, 1 -> 8 stem, 11 images', n: 11, c: 1, h: 12, w: 12, o: 8, k: [3, 3], pad: [1, 1] },
  { name: 'weight gradient, groups 2 x 2 tiles, 9 images', n: 9, c: 4, h: 7, w: 7, o: 32, k: [3, 3], pad: [1, 1], groups: 2 },
  { name: 'one image of one row block, one tile: nothing to split over', n: 1, c: 3, h: 10, w: 10, o: 8, k: [3, 3], pad: [1, 1], unsplit: true },
  { name: 'stride 2, 8 -> 16, even size (every pixel covered)', n: 6, c: 8, h: 14, w: 14, o: 16, k: [3, 3], stride: [2, 2], pad: [1, 1] },
  { name: '1x1 stride 2, 8 -> 16 (three of four pixels cleared)', n: 5, c: 8, h: 12, w: 12, o: 16, k: [1, 1], stride: [2, 2] },
  { name: '3x3 stride 2 pad 0, odd size (last row and column uncovered)', n: 4, c: 5, h: 12, w: 11, o: 7, k: [3, 3], stride: [2, 2] },
  { name: 'stride 2, groups 2, 2x2 kernel', n: 3, c: 6, h: 9, w: 8, o: 10, k: [2, 2], stride: [2, 2], pad: [1, 0], groups: 2 },
];

describe('wasm threads: weight gradient by image chunks and strided input gradient by images give the bits of one thread', () => {
  SPLIT_CASES.forEach((t, i) =>
    it(t.name, async () => {
      const { one, many, splits } = await threadedBackends();
      const l = layoutOf(t);
      // conv.ts's forms: the Winograd form splits even one image (by blocks of tile rows; its
      // splits are tested in conv-winograd.test.ts).
      for (const be of [one, ...many]) be.winogradConvs = t.unsplit ? 'off' : 'auto';
      for (const kernel of KERNELS) {
        const s = sizes(kernel, l);
        const [a, b] = [randomF32(s.a, 600 + i), randomF32(s.b, 700 + i)];
        const want = await run(one, kernel, l, a, b, s.out);
        for (const [j, be] of many.entries()) {
          const before = splits[j]();
          expect(Array.from(await run(be, kernel, l, a, b, s.out)), `${kernel} on ${j + 2} threads`).toEqual(Array.from(want));
          // Exactly one pool run per call: the strided input gradient's phases share one split.
          expect(splits[j]() - before, `${kernel} on ${j + 2} threads: pool runs`).toBe(t.unsplit ? 0 : 1);
        }
      }
      await checkParity(many[1], t, 1900 + i);
      for (const be of [one, ...many]) be.winogradConvs = 'auto';
      for (const be of many) expect(be.memory().liveBuffers).toBe(0);
    }),
  );
});

describe('wasm threads: the calibration cannot pick the wrong count from one noisy round', () => {
  /** Rounds of [one-thread us, two-thread us]. */
  const rounds = (pairs: [number, number][]) => pairs.map(([a, b]) => new Map([[1, a], [2, b]]));
  const quiet: [number, number][] = [
    [400, 215],
    [405, 212],
    [398, 220],
    [402, 214],
    [401, 218],
    [399, 216],
    [403, 213],
  ];

  it('two threads on a machine where they pay, one slow round among them or not', () => {
    expect(chooseThreads(rounds(quiet), [2], 1.15, null).threads).toBe(2);
    // One round where the worker was not scheduled (two threads slower than one): the best of the
    // rounds ignores it, and the median round is still faster.
    const oneSlow = quiet.map((r, i): [number, number] => (i === 3 ? [r[0], 900] : r));
    const c = chooseThreads(rounds(oneSlow), [2], 1.15, null);
    expect(c.threads).toBe(2);
    expect(c.speedup(2)).toBeCloseTo(398 / 212, 5);
    expect(c.reason).toMatch(/best of 7 interleaved rounds/);
  });

  it('one thread where two do not pay, even with one lucky round', () => {
    const flat: [number, number][] = quiet.map(([a]) => [a, a * 1.02]);
    expect(chooseThreads(rounds(flat), [2], 1.15, null).threads).toBe(1);
    // One round where one thread was interrupted makes two look 2x faster in that round and in
    // the best-of ratio (below the "impossible" bound): most rounds still say no.
    const lucky = flat.map((r, i): [number, number] => (i === 2 ? [r[0], 250] : r));
    const c = chooseThreads(rounds(lucky), [2], 1.15, null);
    expect(c.speedup(2)).toBeGreaterThan(1.15);
    expect(c.threads).toBe(1);
    expect(c.reason).toMatch(/one thread$/);
  });

  it('a machine too busy to measure (more than 2x on two threads) gives one thread; an explicit count is kept', () => {
    const disturbed: [number, number][] = quiet.map(([a, b], i) => (i === 0 ? [a, 150] : [a * 3, b]));
    expect(chooseThreads(rounds(disturbed), [2], 1.15, null).reason).toMatch(/too busy to measure/);
    expect(chooseThreads(rounds(disturbed), [2], 1.15, null).threads).toBe(1);
    expect(chooseThreads(rounds(quiet.map(([a]) => [a, 2 * a])), [2], 1.15, 2)).toMatchObject({ threads: 2, reason: 'asked for 2 threads' });
  });

  it('the most threads that pay come first; two where all of them do not', () => {
    const r = [0, 1, 2, 3, 4].map(() => new Map([[1, 400], [4, 390], [2, 215]]));
    expect(chooseThreads(r, [4, 2], 1.15, null).threads).toBe(2);
    const all = [0, 1, 2, 3, 4].map(() => new Map([[1, 400], [4, 120], [2, 215]]));
    expect(chooseThreads(all, [4, 2], 1.15, null).threads).toBe(4);
  });

  it('a default backend reports how many rounds its choice rests on', async () => {
    const auto = await createWasmBackend();
    try {
      const cal = auto.info().details?.threadCalibration as { rounds: number; threads: number } | undefined;
      if (cal) {
        expect(cal.rounds).toBeGreaterThanOrEqual(3);
        expect(cal.rounds).toBeLessThanOrEqual(15);
      } else expect(auto.activeThreads).toBe(1);
    } finally {
      auto.dispose();
    }
  });
});
