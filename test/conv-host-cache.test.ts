/**
 * The wasm convolutions' kept plans (src/kernels/wasm/conv.ts, issue 13): a repeated convolution
 * (same kind, layout and addresses) reuses its plan and its run layout (no planning JS before its
 * kept recording runs), and every number the calls depend on still selects them: another input or
 * output address, another layout and another thread count each make a new one, and each call
 * gives the reference's values. On 1, 2 and 3 threads, for conv.ts's forms: stride 1 (the input
 * gradient with the weights flipped in wasm), stride 2 by phases (3x3, and 1x1 where dX is
 * cleared first), groups with a 3x2 kernel at stride 2x3, dilation 2.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Conv2dLayout } from '../src/kernels/backend.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { cpu, expectNear, KERNELS, layoutOf, sizes, type Case, type Kernel } from './helpers/conv-parity.js';
import { rng } from './helpers/random.js';

const CASES: Case[] = [
  { name: '3x3 pad 1, 8 -> 16', n: 3, c: 8, h: 10, w: 10, o: 16, k: [3, 3], pad: [1, 1] },
  { name: '3x3 stride 2 (input gradient by phases), 8 -> 16', n: 3, c: 8, h: 11, w: 11, o: 16, k: [3, 3], stride: [2, 2], pad: [1, 1] },
  { name: '1x1 stride 2 (dX cleared first)', n: 2, c: 8, h: 9, w: 8, o: 16, k: [1, 1], stride: [2, 2] },
  { name: 'groups 2, 3x2 kernel, stride 2x3', n: 2, c: 4, h: 9, w: 7, o: 6, k: [3, 2], stride: [2, 3], pad: [1, 0], groups: 2 },
  { name: 'dilation 2, 3x3 pad 2', n: 2, c: 5, h: 9, w: 9, o: 7, k: [3, 3], pad: [2, 2], dil: [2, 2] },
];

interface ConvCounters {
  planMisses: number;
  runMisses: number;
}
const counters = (be: WasmBackend): ConvCounters => {
  const conv = (be as unknown as { convKernels: ConvCounters | null }).convKernels;
  return { planMisses: conv?.planMisses ?? 0, runMisses: conv?.runMisses ?? 0 };
};
const data = (n: number, seed: number) => {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r() * 2 - 1);
};
function reference(kernel: Kernel, l: Conv2dLayout, a: Float32Array, b: Float32Array, out: number): Float32Array {
  const [sa, sb, so] = [cpu.upload(a, 'float32'), cpu.upload(b, 'float32'), cpu.alloc(out, 'float32')];
  cpu[kernel](sa, sb, so, l);
  return cpu.readSync(so) as Float32Array;
}

describe('wasm convolutions keep their plans per layout, addresses and threads', () => {
  let backends: WasmBackend[] = [];
  beforeAll(async () => {
    backends = await Promise.all([1, 2, 3].map((threads) => createWasmBackend(threads > 1 ? { threads, minThreadedWork: 1 } : { threads })));
    // conv.ts's forms (the Winograd form plans apart).
    for (const be of backends) be.winogradConvs = 'off';
  });
  afterAll(() => backends.forEach((b) => b.dispose()));

  for (const t of CASES) {
    it(t.name, () => {
      const l = layoutOf(t);
      backends.forEach((be, bi) => {
        for (const kernel of KERNELS) {
          const s = sizes(kernel, l);
          const what = `${be.activeThreads} thread(s), ${kernel}`;
          const ins = [be.allocUninit(s.a, 'float32'), be.allocUninit(s.a, 'float32')];
          const outs = [be.allocUninit(s.out, 'float32'), be.allocUninit(s.out, 'float32')];
          const sb = be.allocUninit(s.b, 'float32');
          let seed = 10 * bi;
          /** Runs the kernel on input i and output o with new data, checks it, and returns how many plans and run layouts it made. */
          const runOn = (i: number, o: number, step: string): ConvCounters => {
            const [a, b] = [data(s.a, ++seed), data(s.b, ++seed)];
            be.write(ins[i], a);
            be.write(sb, b);
            be.write(outs[o], new Float32Array(s.out).fill(NaN));
            const before = counters(be);
            be[kernel](ins[i], sb, outs[o], l);
            const after = counters(be);
            expectNear(be.readSync(outs[o]) as Float32Array, reference(kernel, l, a, b, s.out), s.terms, `${what}, ${step}`);
            return { planMisses: after.planMisses - before.planMisses, runMisses: after.runMisses - before.runMisses };
          };
          // The weight gradient runs no directRun (its own form): plans only.
          const runs = kernel === 'conv2dBackwardWeight' ? 0 : 1;
          expect(runOn(0, 0, 'first call'), `${what}: a new convolution plans`).toEqual({ planMisses: 1, runMisses: runs });
          expect(runOn(0, 0, 'again'), `${what}: the same call plans nothing`).toEqual({ planMisses: 0, runMisses: 0 });
          expect(runOn(1, 0, 'another input'), `${what}: another input address plans anew`).toEqual({ planMisses: 1, runMisses: runs });
          // The weight gradient's output is written after the split, outside its plan and recording.
          const outputPlans = kernel === 'conv2dBackwardWeight' ? 0 : 1;
          expect(runOn(0, 1, 'another output'), `${what}: another output address`).toEqual({ planMisses: outputPlans, runMisses: outputPlans });
          expect(runOn(0, 0, 'the first again'), `${what}: the first plan is still kept`).toEqual({ planMisses: 0, runMisses: 0 });
          [...ins, ...outs, sb].forEach((x) => be.release(x));
        }
      });
    });
  }

  it('another layout over the same buffers plans anew', () => {
    const be = backends[1];
    const l = layoutOf(CASES[0]);
    const l2 = layoutOf({ ...CASES[0], h: 9, w: 11 });
    const s = sizes('conv2d', l);
    const [x, w, y] = [be.allocUninit(s.a, 'float32'), be.allocUninit(s.b, 'float32'), be.allocUninit(s.out, 'float32')];
    // (The first may find a plan an earlier test made: freed buffers come back at the same addresses.)
    for (const [layout, step] of [[l, 'first'], [l2, 'smaller image'], [l, 'first again'], [l2, 'smaller again']] as const) {
      const z = sizes('conv2d', layout);
      const [a, b] = [data(z.a, 1), data(z.b, 2)];
      be.write(x, new Float32Array(s.a).fill(0).map((_, i) => (i < z.a ? a[i] : 0)));
      be.write(w, b);
      const before = counters(be);
      be.conv2d(x, w, y, layout);
      const made = counters(be).planMisses - before.planMisses;
      if (step !== 'first') expect(made, step).toBe(step.endsWith('again') ? 0 : 1);
      expectNear((be.readSync(y) as Float32Array).slice(0, z.out), reference('conv2d', layout, a, b, z.out), z.terms, step);
    }
    [x, w, y].forEach((t) => be.release(t));
  });

  it('another thread count over the same plan lays the run out anew', () => {
    const be = backends[1];
    const l = layoutOf(CASES[1]);
    const s = sizes('conv2dBackwardInput', l);
    const [g, w, dx] = [be.allocUninit(s.a, 'float32'), be.allocUninit(s.b, 'float32'), be.allocUninit(s.out, 'float32')];
    // The test backend splits every call (minThreadedWork 1); a huge minimum splits none: one thread.
    const mutable = be as unknown as { minThreadedWork: number };
    const runWith = (minWork: number, seed: number) => {
      mutable.minThreadedWork = minWork;
      const [a, b] = [data(s.a, seed), data(s.b, seed + 1)];
      be.write(g, a);
      be.write(w, b);
      const before = counters(be);
      be.conv2dBackwardInput(g, w, dx, l);
      expectNear(be.readSync(dx) as Float32Array, reference('conv2dBackwardInput', l, a, b, s.out), s.terms, `minThreadedWork ${minWork}`);
      const after = counters(be);
      return { planMisses: after.planMisses - before.planMisses, runMisses: after.runMisses - before.runMisses };
    };
    try {
      // (The plan may be an earlier test's: freed buffers come back at the same addresses.)
      runWith(1, 1);
      expect(runWith(2 ** 60, 3), 'one thread: the plan kept, its run laid out anew').toEqual({ planMisses: 0, runMisses: 1 });
      expect(runWith(1, 5), 'two threads again: both kept').toEqual({ planMisses: 0, runMisses: 0 });
      expect(runWith(2 ** 60, 7)).toEqual({ planMisses: 0, runMisses: 0 });
    } finally {
      mutable.minThreadedWork = 1;
      [g, w, dx].forEach((t) => be.release(t));
    }
  });
});
