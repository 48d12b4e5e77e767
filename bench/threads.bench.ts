/**
 * Do the wasm backend's worker threads pay? One thread against two, side by side in one process
 * (two raw backends, interleaved round by round, median of the rounds):
 * - every matmul and convolution call kind of one SGD step of the bench/steps models (MLP
 *   784-256-256-10 at batch 128, the small ResNet 8/16/32 and the ViT at batch 32), recorded from
 *   a real step and replayed on operands of the same sizes: calls per step, wall us per call on
 *   one and two threads, whether the two-thread backend split the call, and the step's total of
 *   these calls;
 * - square matmuls 256 / 512 / 1024 and the issue's conv case (batch 32, 16 -> 32 channels,
 *   28x28, 3x3, pad 1) forward, input gradient and weight gradient;
 * - memory-bound kernels at the issue case's activation size: relu, add, BatchNorm backward and
 *   forward (split by channels, above MEMORY_SPLIT_BYTES only);
 * - the pool's own cost: a split call that does next to nothing, back to back (the worker still
 *   spinning) and after an idle pause (the worker asleep in Atomics.wait).
 * Times are wall clock (the point of a thread is wall time); the process CPU time per call (all
 * threads) is printed beside it, and the load average before and after, since a second thread
 * only gets a core on a machine that has one free.
 *
 *   npx esbuild bench/threads.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/threads.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/threads.bench.mjs [--only=profile,micro,pool] [--rounds=9] [--models=mlp,cnn,vit] [--stat=min] [--cnn-batch=32] [--no-backoff]
 */
import os from 'node:os';
import * as fg from '../src/index.js';
import { getBackend } from '../src/kernels/registry.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import type { Conv2dLayout, MatmulLayout, Storage } from '../src/kernels/backend.js';

const argOf = (k: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1];
const only = argOf('only')?.split(',') ?? ['pool', 'micro', 'profile'];
const ROUNDS = Number(argOf('rounds') ?? 9);
const MODELS = (argOf('models')?.split(',') ?? ['mlp', 'cnn', 'vit']) as ('mlp' | 'cnn' | 'vit')[];

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
/**
 * --stat=min: the fastest round instead of the median, for a loaded machine, where most rounds of
 * a two-thread call lose its second core to another process for a while.
 */
const STAT_NAME = argOf('stat') === 'min' ? 'fastest' : 'median';
const stat = (xs: number[]) => (STAT_NAME === 'fastest' ? Math.min(...xs) : median(xs));
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const f1 = (x: number) => x.toFixed(1);
const f2 = (x: number) => x.toFixed(2);

/** One replayable backend call: how to run it on a backend (operands made there). */
interface CallKind {
  key: string;
  kind: 'matmul' | 'conv2d' | 'conv2dBackwardInput' | 'conv2dBackwardWeight';
  /** Element counts of the operands, in the order the method takes them. */
  sizes: [number, number, number];
  layout: MatmulLayout | Conv2dLayout;
  flops: number;
}

interface Bound {
  run: () => void;
  dispose: () => void;
}

function bind(be: WasmBackend, c: CallKind): Bound {
  const ops = c.sizes.map((n, i) => {
    const d = new Float32Array(n);
    for (let j = 0; j < n; j++) d[j] = Math.sin(j * 0.37 + i) * 0.5;
    return be.upload(d, 'float32');
  }) as [Storage, Storage, Storage];
  const run = () => (be[c.kind] as (a: Storage, b: Storage, o: Storage, l: unknown) => void).call(be, ops[0], ops[1], ops[2], c.layout);
  return { run, dispose: () => ops.forEach((s) => be.release(s)) };
}

/** Per-call wall and CPU ms of each bound call, interleaved round by round (each round ~roundMs). */
function timeInterleaved(calls: Bound[], rounds = ROUNDS, roundMs = 30): { wall: number; cpu: number }[] {
  for (const c of calls) for (let i = 0; i < 3; i++) c.run();
  const reps = calls.map((c) => {
    const t0 = performance.now();
    c.run();
    return Math.max(1, Math.min(500, Math.round(roundMs / Math.max(performance.now() - t0, 1e-3))));
  });
  const wall: number[][] = calls.map(() => []);
  const cpu: number[][] = calls.map(() => []);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < calls.length; i++) {
      const j = (i + r) % calls.length;
      const [w0, c0] = [performance.now(), cpuMs()];
      for (let k = 0; k < reps[j]; k++) calls[j].run();
      wall[j].push((performance.now() - w0) / reps[j]);
      cpu[j].push((cpuMs() - c0) / reps[j]);
    }
  }
  return calls.map((_, j) => ({ wall: stat(wall[j]), cpu: stat(cpu[j]) }));
}

/** Counts the calls that the backend split over its threads (its pool's run), by wrapping it. */
function countSplits(be: WasmBackend): () => number {
  const pool = (be as unknown as { pool: { run: (...a: unknown[]) => void } | null }).pool;
  let n = 0;
  if (pool) {
    const run = pool.run.bind(pool);
    pool.run = (...a: unknown[]) => {
      n++;
      run(...a);
    };
  }
  return () => n;
}

/** A call on one thread (a) against two (b), interleaved; whether b's backend split it. */
function oneAgainstTwo(a: Bound, b: Bound, splits: () => number): { split: boolean; t1: { wall: number; cpu: number }; t2: { wall: number; cpu: number } } {
  const before = splits();
  b.run();
  const split = splits() > before;
  const [t1, t2] = timeInterleaved([a, b]);
  a.dispose();
  b.dispose();
  return { split, t1, t2 };
}

const MLP_SIZES = [784, 256, 256, 10];
const CNN_WIDTHS = [8, 16, 32];
const VIT = { image: 28, patch: 7, dim: 32, depth: 2, heads: 4, hidden: 64 };

/** Records the matmul and conv calls of one SGD step of a model (after a warm-up step). */
async function recordStep(model: 'mlp' | 'cnn' | 'vit'): Promise<{ kind: CallKind; perStep: number }[]> {
  await fg.init({ backend: 'wasm', threads: 1 });
  const be = getBackend() as unknown as Record<string, (...a: unknown[]) => unknown>;
  const { nn, optim } = fg;
  fg.manualSeed(1);
  const batch = model === 'mlp' ? 128 : Number(argOf('cnn-batch') ?? 32);
  const net =
    model === 'mlp'
      ? nn.models.mlp(MLP_SIZES)
      : model === 'cnn'
        ? nn.models.resnetSmall({ inChannels: 1, numClasses: 10, widths: CNN_WIDTHS, blocksPerStage: 1 })
        : nn.models.vit({ imageSize: VIT.image, patchSize: VIT.patch, inChannels: 1, numClasses: 10, dim: VIT.dim, depth: VIT.depth, heads: VIT.heads, mlpRatio: VIT.hidden / VIT.dim });
  net.train();
  const x = fg.randn(model === 'mlp' ? [batch, 784] : [batch, 1, 28, 28]).keep();
  const y = fg.tensor(Int32Array.from({ length: batch }, (_, i) => i % 10), { dtype: 'int32' }).keep();
  const opt = new optim.SGD(net.parameters(), { lr: 0.01 });
  const step = () =>
    fg.tidy(() => {
      opt.zeroGrad();
      const l = nn.functional.crossEntropy(net.forward(x), y);
      l.backward();
      opt.step();
      l.dataSync();
    });
  step();
  const seen = new Map<string, { kind: CallKind; perStep: number }>();
  const originals: [string, unknown][] = [];
  for (const kind of ['matmul', 'conv2d', 'conv2dBackwardInput', 'conv2dBackwardWeight'] as const) {
    const f = be[kind];
    originals.push([kind, f]);
    be[kind] = (...a: unknown[]) => {
      const [s0, s1, s2] = a.slice(0, 3) as Storage[];
      const layout = { ...(a[3] as object) } as MatmulLayout | Conv2dLayout;
      const key = `${kind} ${JSON.stringify(layout)}`;
      let flops: number;
      if (kind === 'matmul') {
        const l = layout as MatmulLayout;
        flops = 2 * l.batch * l.m * l.n * l.k;
      } else {
        const l = layout as Conv2dLayout;
        flops = (2 * l.n * l.outChannels * l.oh * l.ow * (l.c / l.groups) * l.kh * l.kw);
      }
      const r = seen.get(key) ?? { kind: { key, kind, sizes: [s0.numel, s1.numel, s2.numel], layout, flops }, perStep: 0 };
      r.perStep++;
      seen.set(key, r);
      return f.apply(be, a);
    };
  }
  step();
  for (const [k, f] of originals) be[k] = f as (...a: unknown[]) => unknown;
  return [...seen.values()];
}

function describe(c: CallKind): string {
  if (c.kind === 'matmul') {
    const l = c.layout as MatmulLayout;
    return `matmul ${l.batch > 1 ? `${l.batch}x ` : ''}${l.m}x${l.k} @ ${l.k}x${l.n}${l.transA ? ' tA' : ''}${l.transB ? ' tB' : ''}`;
  }
  const l = c.layout as Conv2dLayout;
  const name = { conv2d: 'conv fwd', conv2dBackwardInput: 'conv dX', conv2dBackwardWeight: 'conv dW' }[c.kind as string];
  return `${name} n${l.n} ${l.c}->${l.outChannels} ${l.h}x${l.w} k${l.kh} s${l.sh}${l.groups > 1 ? ` g${l.groups}` : ''}`;
}

async function profile(one: WasmBackend, two: WasmBackend): Promise<void> {
  for (const model of MODELS) {
    const kinds = await recordStep(model);
    console.log(`\n### ${model}: matmul and conv calls of one SGD step, 1 thread vs 2 (wall us per call, ${STAT_NAME} of ${ROUNDS} interleaved rounds)\n`);
    console.log('| call | per step | MFLOP | 1T us | 2T us | 2T / 1T | 2T split? | 1T CPU us | 2T CPU us |');
    console.log('| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |');
    let [sum1, sum2] = [0, 0];
    const splits = countSplits(two);
    for (const { kind, perStep } of kinds.sort((a, b) => b.kind.flops * b.perStep - a.kind.flops * a.perStep)) {
      const { split, t1, t2 } = oneAgainstTwo(bind(one, kind), bind(two, kind), splits);
      sum1 += t1.wall * perStep;
      sum2 += t2.wall * perStep;
      console.log(
        `| ${describe(kind)} | ${perStep} | ${f2(kind.flops / 1e6)} | ${f1(t1.wall * 1000)} | ${f1(t2.wall * 1000)} | ${f2(t2.wall / t1.wall)} | ${split ? 'yes' : 'no'} | ${f1(t1.cpu * 1000)} | ${f1(t2.cpu * 1000)} |`,
      );
    }
    console.log(`| **sum per step (ms)** | | | ${f2(sum1)} | ${f2(sum2)} | ${f2(sum2 / sum1)} | | | |`);
  }
}

async function micro(one: WasmBackend, two: WasmBackend): Promise<void> {
  const mm = (s: number): CallKind => ({
    key: `mm${s}`,
    kind: 'matmul',
    sizes: [s * s, s * s, s * s],
    layout: { batch: 1, m: s, n: s, k: s, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 },
    flops: 2 * s ** 3,
  });
  const l: Conv2dLayout = { n: 32, c: 16, h: 28, w: 28, kh: 3, kw: 3, oh: 28, ow: 28, sh: 1, sw: 1, ph: 1, pw: 1, dh: 1, dw: 1, outChannels: 32, groups: 1 };
  const flops = 2 * 32 * 32 * 28 * 28 * 16 * 9;
  const [x, w, y] = [32 * 16 * 784, 32 * 16 * 9, 32 * 32 * 784];
  const cases: CallKind[] = [
    mm(256),
    mm(512),
    mm(1024),
    { key: 'fwd', kind: 'conv2d', sizes: [x, w, y], layout: l, flops },
    { key: 'dX', kind: 'conv2dBackwardInput', sizes: [y, w, x], layout: l, flops },
    { key: 'dW', kind: 'conv2dBackwardWeight', sizes: [x, y, w], layout: l, flops },
  ];
  console.log(`\n### 1 thread vs 2: GFLOP/s (wall, ${STAT_NAME} of ${ROUNDS} interleaved rounds)\n`);
  // The same calls on a shared memory that never splits: what sharing the memory alone costs.
  const shared = await createWasmBackend({ threads: 2, minThreadedWork: Infinity });
  console.log('| case | 1T GFLOP/s | 1T on shared memory | 2T GFLOP/s | 2T speed-up | 1T CPU ms | 2T CPU ms (all threads) |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const c of cases) {
    const bound = [bind(one, c), bind(shared, c), bind(two, c)];
    const [t1, ts, t2] = timeInterleaved(bound, ROUNDS, 60);
    bound.forEach((b) => b.dispose());
    console.log(`| ${describe(c)} | ${f1(c.flops / t1.wall / 1e6)} | ${f1(c.flops / ts.wall / 1e6)} | ${f1(c.flops / t2.wall / 1e6)} | ${f2(t1.wall / t2.wall)}x | ${f2(t1.cpu)} | ${f2(t2.cpu)} |`);
  }
  shared.dispose();
  // Memory-bound kernels of the CNN step at the issue case's activation size, and BatchNorm's backward.
  const [n, c, hw] = [32, 16, 784];
  const numel = n * c * hw;
  const memoryBound = (be: WasmBackend, what: 'relu' | 'add' | 'bn' | 'bn forward'): Bound => {
    const data = (len: number, seed: number) => be.upload(Float32Array.from({ length: len }, (_, i) => Math.sin(i * 0.37 + seed)), 'float32');
    const [xs, ys, out] = [data(numel, 1), data(numel, 2), be.alloc(numel, 'float32')];
    const stats = [data(2 * c, 3), data(c, 4), be.alloc(c, 'float32'), be.alloc(c, 'float32')];
    const run =
      what === 'relu'
        ? () => be.unary('relu', xs, out)
        : what === 'add'
          ? () => be.binary('add', xs, ys, out, { shape: [numel], aStrides: [1], bStrides: [1] })
          : what === 'bn'
            ? () => be.batchNormBackward(xs, ys, stats[0], stats[1], null, out, stats[2], stats[3], { n, c, hw, eps: 1e-5 })
            : () => be.batchNorm(xs, null, null, out, stats[0], stats[2], stats[3], { n, c, hw, eps: 1e-5 });
    return { run, dispose: () => [xs, ys, out, ...stats].forEach((s) => be.release(s)) };
  };
  console.log(`\n### memory-bound kernels, ${n}x${c}x${hw} floats: wall us per call (${STAT_NAME} of ${ROUNDS} interleaved rounds)\n`);
  console.log('| kernel | 1T us | 2T us | 2T speed-up | 2T split? |');
  console.log('| --- | ---: | ---: | ---: | --- |');
  const splits = countSplits(two);
  for (const what of ['relu', 'add', 'bn', 'bn forward'] as const) {
    const { split, t1, t2 } = oneAgainstTwo(memoryBound(one, what), memoryBound(two, what), splits);
    console.log(`| ${what === 'bn' ? 'batchNorm backward' : what === 'bn forward' ? 'batchNorm forward' : what} | ${f1(t1.wall * 1000)} | ${f1(t2.wall * 1000)} | ${f2(t1.wall / t2.wall)}x | ${split ? 'yes' : 'no'} |`);
  }
}

/**
 * The pool's own cost: an empty call on a worker (ThreadPool.ping), back to back with the worker
 * spinning and after 5 ms of idling (asleep in Atomics.wait), and what the start-up calibration of
 * a default backend (no thread count given) measured and chose.
 */
async function pool(): Promise<void> {
  const be = await createWasmBackend({ threads: 2 });
  const p = (be as unknown as { pool: { ping: () => number; spinLoads: number } }).pool;
  const spins = p.spinLoads;
  p.spinLoads = 1e6;
  p.ping();
  const hot = median(Array.from({ length: 31 }, () => p.ping()));
  p.spinLoads = spins;
  const asleep: number[] = [];
  for (let i = 0; i < 15; i++) {
    await new Promise((r) => setTimeout(r, 5));
    asleep.push(p.ping());
  }
  console.log(`\n### pool round trip (an empty call on a worker)\n`);
  console.log(`worker spinning: ${f1(hot)} us (median of 31); worker asleep after 5 ms idle: ${f1(median(asleep))} us (median of 15)`);
  be.dispose();
  const auto = await createWasmBackend();
  console.log(`default backend's calibration: ${JSON.stringify(auto.info().details?.threadCalibration)}`);
  auto.dispose();
}

const load0 = os.loadavg();
console.log(`load average before: ${load0.map(f2).join(' ')}; ${os.cpus().length} cores; ${new Date().toISOString()}`);
const one = await createWasmBackend({ threads: 1 });
const two = await createWasmBackend({ threads: 2 });
// --no-backoff: the cost model keeps splitting when split calls find no free core (SplitCost.observeSplit ignored).
if (process.argv.includes('--no-backoff')) {
  const cost = (two as unknown as { splitCost: { observeSplit: (wall: number, cpu: number) => void } | null }).splitCost;
  if (cost) cost.observeSplit = () => {};
}
if (only.includes('pool')) await pool();
if (only.includes('micro')) await micro(one, two);
if (only.includes('profile')) await profile(one, two);
console.log(`\ntwo-thread backend: ${JSON.stringify(two.info().details?.threadParts)} (parts posted to the worker / taken back by the caller); back-offs of the cost model (split calls without a free core): ${two.info().details?.splitBackoffs ?? 'none'}`);
one.dispose();
two.dispose();
console.log(`\nload average after: ${os.loadavg().map(f2).join(' ')}`);
process.exit(0);
