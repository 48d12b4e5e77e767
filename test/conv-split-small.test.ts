/**
 * The small ResNet's narrow convolutions split over threads (issue 13: two threads >= 1.7x one on
 * the CNN step): the one-channel stem (1 -> 8, 3x3) and the 1x1 stride-2 shortcuts (8 -> 16 at
 * 28x28, 16 -> 32 at 14x14) are about a thousand short calls each at batch 128, which a split
 * records as encoded lists (CallList: one copy into the pool's memory, no object per call).
 * - forward, input and weight gradients of those shapes split over 2 and 3 threads give the
 *   one-thread bits, and the parts the pool receives are CallLists;
 * - CallList records and replays its calls, grows past its first buffer, refuses too many
 *   arguments, and the pool refuses encoded parts mixed with parts of KernelCalls;
 * - chooseSpin: one slow round does not turn the workers' spinning off, most rounds do.
 * No timing is asserted here (bench/threads.bench.ts measures).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { CallList, chooseSpin, type ThreadPart } from '../src/kernels/wasm/threads.js';
import { type Case, checkParity, KERNELS, layoutOf, run, sizes } from './helpers/conv-parity.js';
import { randomF32 } from './helpers/webgpu.js';

const SMALL: Case[] = [
  { name: 'stem 1 -> 8, 3x3 pad 1, 28x28', n: 9, c: 1, h: 28, w: 28, o: 8, k: [3, 3], pad: [1, 1] },
  { name: 'shortcut 1x1 stride 2, 8 -> 16, 28x28', n: 9, c: 8, h: 28, w: 28, o: 16, k: [1, 1], stride: [2, 2] },
  { name: 'shortcut 1x1 stride 2, 16 -> 32, 14x14', n: 9, c: 16, h: 14, w: 14, o: 32, k: [1, 1], stride: [2, 2] },
];

/** Records the parts of every pool run of `be`. */
function recordParts(be: WasmBackend): ThreadPart[][] {
  const pool = (be as unknown as { pool: { run: (parts: ThreadPart[], ...rest: unknown[]) => void } }).pool;
  const seen: ThreadPart[][] = [];
  const run0 = pool.run.bind(pool);
  pool.run = (parts: ThreadPart[], ...rest: unknown[]) => {
    seen.push(parts);
    run0(parts, ...rest);
  };
  return seen;
}

describe('wasm threads: the CNN\'s narrow convolutions split as encoded lists give the bits of one thread', () => {
  let one: WasmBackend;
  const many: WasmBackend[] = [];
  const seen: ThreadPart[][][] = [];
  beforeAll(async () => {
    one = await createWasmBackend({ threads: 1 });
    // minThreadedWork 1: every call is split, whatever the cost model would say.
    for (const threads of [2, 3]) {
      const be = await createWasmBackend({ threads, minThreadedWork: 1 });
      many.push(be);
      seen.push(recordParts(be));
    }
  });
  afterAll(() => [one, ...many].forEach((b) => b?.dispose()));

  SMALL.forEach((t, i) =>
    it(t.name, async () => {
      const l = layoutOf(t);
      for (const kernel of KERNELS) {
        const s = sizes(kernel, l);
        const [a, b] = [randomF32(s.a, 3100 + i), randomF32(s.b, 3200 + i)];
        const want = await run(one, kernel, l, a, b, s.out);
        for (const [j, be] of many.entries()) {
          const before = seen[j].length;
          expect(Array.from(await run(be, kernel, l, a, b, s.out)), `${kernel} on ${j + 2} threads`).toEqual(Array.from(want));
          const runs = seen[j].slice(before);
          expect(runs.length, `${kernel} on ${j + 2} threads: one pool run`).toBe(1);
          // Several parts (a queue), each an encoded list of calls.
          expect(runs[0].length, `${kernel} on ${j + 2} threads: parts`).toBeGreaterThan(j + 2);
          for (const part of runs[0]) {
            expect(part).toBeInstanceOf(CallList);
            expect((part as CallList).length).toBeGreaterThan(0);
          }
        }
      }
      // The threaded result is right, not only equal to the one-thread one.
      await checkParity(many[1], t, 3300 + i);
      for (const be of many) expect(be.memory().liveBuffers).toBe(0);
    }),
  );
});

describe('wasm threads: CallList', () => {
  it('records calls in order and replays them, growing past its first buffer', () => {
    const list = new CallList();
    const calls = Array.from({ length: 300 }, (_, i) => ({ fn: i % 7, args: Array.from({ length: i % 15 }, (_, k) => i * 100 + k - 50) }));
    for (const c of calls) list.push(c.fn, c.args);
    expect(list.length).toBe(calls.reduce((n, c) => n + 2 + c.args.length, 0));
    expect(list.ints.length).toBeGreaterThan(1024);
    const replayed: { fn: number; args: number[] }[] = [];
    list.forEach((fn, args) => replayed.push({ fn, args: [...args] }));
    expect(replayed).toEqual(calls);
  });

  it('refuses more arguments than a record holds', () => {
    expect(() => new CallList().push(0, new Array(29).fill(1))).toThrow(/29 arguments \(at most 28\)/);
  });

  it('the pool refuses encoded parts mixed with parts of KernelCalls', async () => {
    const be = await createWasmBackend({ threads: 2, minThreadedWork: 1 });
    try {
      const pool = (be as unknown as { pool: { run: (parts: ThreadPart[], runHere: (c: unknown) => void) => void } }).pool;
      expect(() => pool.run([new CallList(), []], () => {})).toThrow(/mixed/);
    } finally {
      be.dispose();
    }
  });
});

describe('wasm threads: chooseSpin', () => {
  it('one slow spinning round among fast ones keeps the workers spinning', () => {
    const pairs = [
      { cold: 30, spinning: 0.5 },
      { cold: 35, spinning: 80 },
      { cold: 28, spinning: 0.4 },
      { cold: 40, spinning: 0.6 },
      { cold: 33, spinning: 0.5 },
    ];
    expect(chooseSpin(pairs)).toEqual({ spin: true, hotUs: 0.5, coldUs: 33 });
  });

  it('spinning slower than sleeping in most rounds turns it off (hot is then the cold figure)', () => {
    const pairs = [
      { cold: 12, spinning: 900 },
      { cold: 11, spinning: 0.5 },
      { cold: 14, spinning: 2000 },
    ];
    expect(chooseSpin(pairs)).toEqual({ spin: false, hotUs: 12, coldUs: 12 });
  });

  it('no rounds: no spinning', () => {
    expect(chooseSpin([]).spin).toBe(false);
  });
});
