/**
 * Task E (issue 13, the eager step's host time): what changed on the eager path.
 * - The leak reporter formats a tensor's shape only when it reports a leak (no string per tensor):
 *   a tensor collected without dispose() is still reported with its dtype, shape and backend.
 * - ThreadPool.stats.woken counts the posts that found their worker asleep (past its spin budget),
 *   the wake-ups that bench/eager-host.ts --spin-us compares: a worker that has slept gets a
 *   wake-up counted, one still spinning does not, and the split's bits are those of one thread.
 * No timing is asserted here (see bench/eager-host.ts).
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import type { MatmulLayout } from '../src/kernels/backend.js';
import { countSplits } from './helpers/thread-splits.js';
import { randomF32 } from './helpers/webgpu.js';

describe('leak reporter', () => {
  it('reports a tensor collected without dispose() with its dtype, shape and backend', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    await fg.init({ backend: 'cpu' });
    const messages: string[] = [];
    const before = fg.leaks.count;
    fg.leaks.report = (m) => messages.push(m);
    try {
      // Made and dropped in a function of its own, so that nothing here still refers to it.
      (() => {
        fg.zeros([2, 3, 5], { dtype: 'int32' });
      })();
      for (let i = 0; i < 20 && fg.leaks.count === before; i++) {
        gc();
        await new Promise((r) => setTimeout(r, 10));
      }
    } finally {
      fg.leaks.report = null;
    }
    expect(fg.leaks.count).toBeGreaterThan(before);
    expect(messages.join('\n')).toContain('a int32 tensor of shape [2,3,5] on cpu was garbage-collected');
  });
});

describe('ThreadPool.stats.woken', () => {
  let one: WasmBackend;
  let two: WasmBackend;
  let pool: { spinLoads: number; stats: { posted: number; takenBack: number; woken: number } };
  let splits: () => number;
  beforeAll(async () => {
    one = await createWasmBackend({ threads: 1 });
    // minThreadedWork 1: every matmul splits, whatever the cost model says.
    two = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
    pool = (two as unknown as { pool: typeof pool }).pool;
    splits = countSplits(two);
  });
  afterAll(() => [one, two].forEach((b) => b?.dispose()));

  const l: MatmulLayout = { batch: 1, m: 67, k: 45, n: 33, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 };
  const A = randomF32(l.m * l.k, 11);
  const B = randomF32(l.k * l.n, 12);
  const matmul = (b: WasmBackend) => {
    const [sa, sb, so] = [b.upload(A, 'float32'), b.upload(B, 'float32'), b.alloc(l.m * l.n, 'float32')];
    b.matmul(sa, sb, so, l);
    const r = Array.from(b.readSync(so));
    [sa, sb, so].forEach((s) => b.release(s));
    return r;
  };

  it('counts a post to a sleeping worker, not one to a spinning worker; the bits are one thread’s', async () => {
    const spin0 = pool.spinLoads;
    const expected = matmul(one);
    try {
      // No spinning: after its part the worker blocks in Atomics.wait at once; 50 ms later it surely has.
      pool.spinLoads = 0;
      matmul(two);
      await new Promise((r) => setTimeout(r, 50));
      let [woken, runs] = [pool.stats.woken, splits()];
      expect(matmul(two)).toEqual(expected);
      expect(splits() - runs, 'the matmul split').toBe(1);
      expect(pool.stats.woken - woken, 'a post to a sleeping worker').toBe(1);
      // A budget of seconds: between two calls the worker is still spinning, nobody is woken.
      pool.spinLoads = 2e9;
      // Until the worker has run a part itself (one posted with this budget): a worker woken by the
      // last sleeping-phase post may find its part taken back and block again, still on budget 0.
      // On a loaded machine the woken worker can lose the race for many calls in a row: keep
      // posting for up to 5 s (a few ms when the machine is quiet).
      let ranPart = false;
      for (const until = performance.now() + 5000; !ranPart && performance.now() < until; ) {
        const taken = pool.stats.takenBack;
        matmul(two);
        ranPart = pool.stats.takenBack === taken;
        if (!ranPart) await new Promise((r) => setTimeout(r, 1));
      }
      expect(ranPart, 'the worker ran a part of a split within 5 s').toBe(true);
      [woken, runs] = [pool.stats.woken, splits()];
      expect(matmul(two)).toEqual(expected);
      expect(splits() - runs, 'the matmul split').toBe(1);
      expect(pool.stats.woken - woken, 'a post to a spinning worker').toBe(0);
    } finally {
      pool.spinLoads = spin0;
    }
  });
});
