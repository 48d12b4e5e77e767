/**
 * Matmul split over threads (issue 13, task M): a matmul split over 2 or 3 threads gives the very
 * bits of one thread, for every transposition of A and B, odd sizes (edge tiles on both axes, a
 * k past one kc block), batches fewer and more than the threads, and the MLP 784-256-256-10
 * step's shapes; every such call really splits (the pool's runs are counted); and splitGemm's
 * parts tile C exactly (disjoint, covering, whole micro-kernel tiles, full depth k), so that each
 * element is computed by the same micro-kernel over the same operands in the same k order. And
 * the cost model's back-off (SplitCost.observeSplit): split calls that ran about serially (CPU
 * per wall time near 1: no free core) stop splitting for a while, judged over windows of split
 * time. No timing is asserted here (bench/threads.bench.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWasmBackend, splitGemm, type GemmJob, type WasmBackend } from '../src/kernels/wasm/index.js';
import { DEFAULT_TILING } from '../src/kernels/wasm/module.js';
import type { MatmulLayout } from '../src/kernels/backend.js';
import { SPLIT_BACKOFF_MS, SplitCost, VERDICT_WALL_US } from '../src/kernels/wasm/threads.js';
import { randomF32 } from './helpers/webgpu.js';
import { countSplits, matmulOn, splitBackends } from './helpers/thread-splits.js';

const layout = (m: number, k: number, n: number, transA: boolean, transB: boolean, batch = 1, shareB = false): MatmulLayout => ({
  batch,
  m,
  k,
  n,
  transA,
  transB,
  aBatchStride: m * k,
  bBatchStride: shareB ? 0 : k * n,
});

/** [m, k, n]: odd sizes, edge tiles along m (mr 4) and n (nr 8), k across kc blocks (256). */
const ODD: [number, number, number][] = [
  [5, 3, 9],
  [37, 65, 129],
  [130, 257, 9],
  [6, 17, 300],
  [257, 784, 63],
];

/** The MLP 784-256-256-10 step's matmuls at batch 128 (forward x W^T, dY W, dY^T x). */
const MLP: MatmulLayout[] = [
  layout(128, 784, 256, false, true),
  layout(256, 128, 784, true, false),
  layout(128, 256, 256, false, true),
  layout(128, 256, 256, false, false),
  layout(256, 128, 256, true, false),
  layout(128, 256, 10, false, true),
  layout(128, 10, 256, false, false),
  layout(10, 128, 256, true, false),
];

const COMBOS: [boolean, boolean][] = [
  [false, false],
  [true, false],
  [false, true],
  [true, true],
];

/** The float64 product of the same operands (strides as the layout gives them). */
function reference(A: Float32Array, B: Float32Array, l: MatmulLayout): number[] {
  const out: number[] = [];
  for (let b = 0; b < l.batch; b++) {
    for (let i = 0; i < l.m; i++) {
      for (let j = 0; j < l.n; j++) {
        let s = 0;
        for (let p = 0; p < l.k; p++) {
          const a = A[b * l.aBatchStride + (l.transA ? p * l.m + i : i * l.k + p)];
          const v = B[b * l.bBatchStride + (l.transB ? j * l.k + p : p * l.n + j)];
          s += a * v;
        }
        out.push(s);
      }
    }
  }
  return out;
}

/** Operands of mixed sign and magnitude, so that another summation order changes low bits. */
function operands(l: MatmulLayout, seed: number): [Float32Array, Float32Array] {
  const A = randomF32(l.aBatchStride * (l.batch - 1) + l.m * l.k, seed).map((v, i) => v * (1 + (i % 7) * 50));
  const B = randomF32(l.bBatchStride * (l.batch - 1) + l.k * l.n, seed + 1);
  return [A, B];
}

describe('matmul split over 2 and 3 threads: the bits of one thread', () => {
  let one: WasmBackend;
  let many: WasmBackend[] = [];
  let splits: (() => number)[] = [];
  let dispose = () => {};
  beforeAll(async () => ({ one, many, splits, dispose } = await splitBackends()));
  afterAll(() => dispose());

  /** Each backend's bits equal one thread's, each call split, and one thread's result is right. */
  function check(l: MatmulLayout, seed: number): void {
    const [A, B] = operands(l, seed);
    const want = matmulOn(one, A, B, l);
    const ref = reference(A, B, l);
    const scale = ref.reduce((s, v) => Math.max(s, Math.abs(v)), 1);
    const worst = want.reduce((w, v, i) => Math.max(w, Math.abs(v - ref[i])), 0);
    expect(worst, `${JSON.stringify(l)}: one thread against float64`).toBeLessThan(1e-5 * scale * Math.sqrt(l.k));
    for (const [j, be] of many.entries()) {
      expect(be.activeThreads).toBe(j + 2);
      const before = splits[j]();
      expect(matmulOn(be, A, B, l), `${JSON.stringify(l)} on ${j + 2} threads`).toEqual(want);
      expect(splits[j](), `${JSON.stringify(l)} on ${j + 2} threads was split`).toBe(before + 1);
    }
  }

  for (const [tA, tB] of COMBOS) {
    it(`odd sizes, transA ${tA}, transB ${tB}`, () => {
      ODD.forEach(([m, k, n], i) => check(layout(m, k, n, tA, tB), 100 + i));
    });
    it(`batches (fewer and more than the threads, B shared or not), transA ${tA}, transB ${tB}`, () => {
      check(layout(33, 19, 17, tA, tB, 2), 200);
      check(layout(9, 40, 13, tA, tB, 5, true), 210);
      check(layout(21, 7, 70, tA, tB, 3), 220);
    });
  }

  it('the MLP 784-256-256-10 step\'s matmuls at batch 128', () => {
    MLP.forEach((l, i) => check(l, 300 + 2 * i));
  });
});

describe('splitGemm: parts that tile C in whole micro-kernel tiles, at full depth', () => {
  const t = DEFAULT_TILING;
  /** A job over made-up addresses, so that each part's offsets say which block of C it covers. */
  const jobOf = (l: MatmulLayout): GemmJob => ({
    a: 1 << 20,
    aRow: l.transA ? 4 : l.k * 4,
    aCol: l.transA ? l.m * 4 : 4,
    b: 2 << 20,
    bRow: l.transB ? 4 : l.n * 4,
    bCol: l.transB ? l.k * 4 : 4,
    c: 3 << 20,
    ldc: l.n * 4,
    m: l.m,
    n: l.n,
    k: l.k,
    batch: l.batch,
    aBatch: l.aBatchStride * 4,
    bBatch: l.bBatchStride * 4,
    cBatch: l.m * l.n * 4,
  });

  it('every C element in exactly one part, each part\'s operands the ones of its block', () => {
    const shapes = [...MLP, ...ODD.map(([m, k, n]) => layout(m, k, n, false, false)), layout(33, 19, 17, true, true, 2), layout(9, 40, 13, false, true, 5, true)];
    for (const l of shapes) {
      const job = jobOf(l);
      for (const threads of [1, 2, 3, 4]) {
        const parts = splitGemm(job, threads, t);
        const what = `${JSON.stringify(l)} over ${threads}`;
        expect(parts.length, what).toBeLessThanOrEqual(threads);
        const covered = new Uint8Array(l.batch * l.m * l.n);
        for (const p of parts) {
          expect(p.k, what).toBe(l.k);
          // The block's first batch, row and column, from where its C starts.
          const off = (p.c - job.c) / 4;
          const b0 = Math.floor(off / (l.m * l.n));
          const i0 = Math.floor((off % (l.m * l.n)) / l.n);
          const j0 = off % l.n;
          // Whole tiles: a part starts on a tile boundary (an edge tile only at the end of C).
          expect(i0 % t.mr, what).toBe(0);
          expect(j0 % t.nr, what).toBe(0);
          // Its operands are those of its block (same strides, offsets to its first row / column).
          expect(p.a, what).toBe(job.a + b0 * job.aBatch + i0 * job.aRow);
          expect(p.b, what).toBe(job.b + b0 * job.bBatch + j0 * job.bCol);
          expect([p.aRow, p.aCol, p.bRow, p.bCol, p.ldc, p.aBatch, p.bBatch, p.cBatch], what).toEqual([job.aRow, job.aCol, job.bRow, job.bCol, job.ldc, job.aBatch, job.bBatch, job.cBatch]);
          for (let b = b0; b < b0 + p.batch; b++)
            for (let i = i0; i < i0 + p.m; i++) for (let j = j0; j < j0 + p.n; j++) covered[(b * l.m + i) * l.n + j]++;
        }
        expect(covered.every((x) => x === 1), `${what}: every element once`).toBe(true);
      }
    }
  });
});

describe('SplitCost.observeSplit: no splits for a while after splits that found no free core', () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  /** Split calls over one verdict window, at `parallel` CPU per wall time. */
  const window = (cost: SplitCost, parallel: number) => {
    for (let us = 0; us < VERDICT_WALL_US; us += 1000) cost.observeSplit(1000, 1000 * parallel);
  };

  it('backs off after two serial windows in a row, for a doubling while, and resumes', async () => {
    const cost = new SplitCost(2, 1e-3, 0.1, 0.1, 1e9);
    const big = 1e9;
    expect(cost.threadsFor(big)).toBe(2);
    // Free cores (about 2 CPU per wall): nothing changes.
    for (let i = 0; i < 3; i++) window(cost, 1.95);
    expect([cost.threadsFor(big), cost.backoffs]).toEqual([2, 0]);
    // One serial window alone backs nothing off; one that interrupts two serial ones neither.
    window(cost, 1.0);
    window(cost, 1.9);
    window(cost, 1.05);
    expect([cost.threadsFor(big), cost.backoffs]).toEqual([2, 0]);
    // Two in a row: unsplit for SPLIT_BACKOFF_MS.
    window(cost, 1.02);
    expect([cost.threadsFor(big), cost.backoffs, cost.backedOff]).toEqual([1, 1, true]);
    await sleep(SPLIT_BACKOFF_MS + 20);
    expect([cost.threadsFor(big), cost.backedOff]).toEqual([2, false]);
    // Still serial: the next back-off lasts twice as long.
    window(cost, 1.0);
    window(cost, 1.1);
    expect(cost.backoffs).toBe(2);
    await sleep(SPLIT_BACKOFF_MS + 20);
    expect(cost.threadsFor(big)).toBe(1);
    await sleep(SPLIT_BACKOFF_MS + 20);
    expect(cost.threadsFor(big)).toBe(2);
    // A parallel window resets the back-off to its first length.
    window(cost, 2.0);
    window(cost, 1.0);
    window(cost, 1.0);
    expect(cost.backoffs).toBe(3);
    await sleep(SPLIT_BACKOFF_MS + 20);
    expect(cost.threadsFor(big)).toBe(2);
  });

  it('judges by threads: three threads need more than 1.6 CPU per wall time; one thread ignores it', () => {
    const three = new SplitCost(3, 1e-3, 0.1, 0.1, 1e9);
    window(three, 1.7);
    window(three, 1.7);
    expect(three.backoffs).toBe(0);
    window(three, 1.5);
    window(three, 1.5);
    expect([three.backoffs, three.threadsFor(1e9)]).toEqual([1, 1]);
    const one = new SplitCost(1, 1e-3, 0.1, 0.1, 1e9);
    window(one, 0.5);
    window(one, 0.5);
    expect(one.backoffs).toBe(0);
  });

  it('the backend feeds it every split call\'s wall and CPU time', async () => {
    // minThreadedWork 1: the call splits whatever the machine's load; the cost model still hears of it.
    const be = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
    try {
      const cost = (be as unknown as { splitCost: SplitCost | null }).splitCost;
      expect(cost, 'a 2-thread backend has a cost model').not.toBeNull();
      const seen: [number, number][] = [];
      cost!.observeSplit = (wall, cpu) => void seen.push([wall, cpu]);
      const splits = countSplits(be);
      const l = layout(96, 64, 80, false, false);
      const [A, B] = operands(l, 900);
      matmulOn(be, A, B, l);
      expect(splits()).toBe(1);
      expect(seen.length).toBe(1);
      expect(seen[0][0]).toBeGreaterThan(0);
      expect(seen[0][1]).toBeGreaterThanOrEqual(0);
    } finally {
      be.dispose();
    }
  });
});
