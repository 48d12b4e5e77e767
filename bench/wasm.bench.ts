/**
 * The wasm backend against tfjs-backend-wasm and jax-js (wasm device, jit), side by side in one
 * process: matmul GFLOP/s on square sizes and on the three products of an MLP layer's training
 * step, a few memory-bound kernels in GB/s, and how far each is from the machine's limits: the
 * f32x4 mul+add peak of one core (measured here with a kernel from our own emitter) and the
 * memory copy bandwidth.
 *
 * Run (bundles the TypeScript, keeps the benchmark libraries as ordinary node_modules imports):
 *   npx esbuild bench/wasm.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/wasm.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/wasm.bench.mjs
 * Writes bench/results/wasm.json and prints a markdown table. Other processes on the machine skew
 * the two-thread figures most: `--quiet-wait=S` waits up to S seconds for the 1-minute load
 * average to fall below 0.5 before measuring, and the load average is recorded with the results.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import * as jax from '@jax-js/jax';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { measureSimdPeak } from './simd-peak.js';
import type { MatmulLayout } from '../src/kernels/backend.js';

/** Median wall time (ms) of `reps` calls after `warmup` calls; `run` may be async. */
async function timeIt(run: () => unknown, { warmup = 5, minReps = 5, budgetMs = 400 } = {}): Promise<number> {
  for (let i = 0; i < warmup; i++) await run();
  const t0 = performance.now();
  await run();
  const first = performance.now() - t0;
  const reps = Math.max(minReps, Math.min(200, Math.floor(budgetMs / Math.max(first, 1e-3))));
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const s = performance.now();
    await run();
    times.push(performance.now() - s);
  }
  return median(times);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}

interface Contender {
  name: string;
  run: () => unknown;
  dispose: () => void;
}

/**
 * Times contenders round-robin: each round runs every contender for about `roundMs`, so that
 * whatever else the machine is doing falls on all of them alike. Returns, per contender, the
 * median and the best of the per-call times of the rounds (ms).
 */
async function timeInterleaved(contenders: Contender[], rounds = 9, roundMs = 40): Promise<{ median: number; best: number }[]> {
  const calls = [];
  for (const c of contenders) {
    for (let i = 0; i < 5; i++) await c.run();
    const t0 = performance.now();
    await c.run();
    calls.push(Math.max(1, Math.round(roundMs / Math.max(performance.now() - t0, 1e-3))));
  }
  const perRound: number[][] = contenders.map(() => []);
  for (let r = 0; r < rounds; r++) {
    for (const [i, c] of contenders.entries()) {
      const t0 = performance.now();
      for (let j = 0; j < calls[i]; j++) await c.run();
      perRound[i].push((performance.now() - t0) / calls[i]);
    }
  }
  return perRound.map((t) => ({ median: median(t), best: Math.min(...t) }));
}

async function measureCopyBandwidth(): Promise<number> {
  const n = 1 << 22;
  const buf = new Float32Array(2 * n);
  const ms = await timeIt(() => buf.copyWithin(n, 0, n), { warmup: 5, minReps: 15 });
  return (2 * n * 4) / ms / 1e6; // read + write, GB/s
}

interface MatmulCase {
  name: string;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
}

const MATMULS: MatmulCase[] = [
  ...[128, 256, 512, 1024].map((s) => ({ name: `${s}`, m: s, n: s, k: s, transA: false, transB: false })),
  // An MLP layer 784 -> 256 at batch 128: forward X W, weight gradient X^T dY, input gradient dY W^T.
  { name: 'MLP fwd 128x784 @ 784x256', m: 128, n: 256, k: 784, transA: false, transB: false },
  { name: 'MLP dW X^T dY (transA)', m: 784, n: 256, k: 128, transA: true, transB: false },
  { name: 'MLP dX dY W^T (transB)', m: 128, n: 784, k: 256, transA: false, transB: true },
];

function randomData(n: number, seed: number): Float32Array<ArrayBuffer> {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1);
}

function flatgradMatmul(be: WasmBackend, c: MatmulCase, name: string): Contender {
  const a = be.upload(randomData(c.m * c.k, 1), 'float32');
  const b = be.upload(randomData(c.k * c.n, 2), 'float32');
  const layout: MatmulLayout = { batch: 1, m: c.m, n: c.n, k: c.k, transA: c.transA, transB: c.transB, aBatchStride: 0, bBatchStride: 0 };
  return {
    name,
    // Allocating the output each call (from the pool) matches what the other libraries do.
    run: () => {
      const out = be.alloc(c.m * c.n, 'float32');
      be.matmul(a, b, out, layout);
      be.release(out);
    },
    dispose: () => {
      be.release(a);
      be.release(b);
    },
  };
}

function tfjsMatmul(c: MatmulCase): Contender {
  const a = tf.tensor2d(randomData(c.m * c.k, 1), c.transA ? [c.k, c.m] : [c.m, c.k]);
  const b = tf.tensor2d(randomData(c.k * c.n, 2), c.transB ? [c.n, c.k] : [c.k, c.n]);
  return {
    name: 'tfjs-wasm',
    // tfjs-backend-wasm runs each kernel synchronously when the op is called.
    run: () => tf.matMul(a, b, c.transA, c.transB).dispose(),
    dispose: () => {
      a.dispose();
      b.dispose();
    },
  };
}

function jaxMatmul(c: MatmulCase): Contender {
  const np = jax.numpy;
  const a = np.array(randomData(c.m * c.k, 1)).reshape(c.transA ? [c.k, c.m] : [c.m, c.k]);
  const b = np.array(randomData(c.k * c.n, 2)).reshape(c.transB ? [c.n, c.k] : [c.k, c.n]);
  const product = jax.jit((x: jax.numpy.Array, y: jax.numpy.Array) => np.matmul(c.transA ? x.transpose() : x, c.transB ? y.transpose() : y));
  return {
    name: 'jax-js wasm jit',
    // jax-js is lazy and asynchronous: the time runs until the result is ready.
    run: async () => (await product(a.ref, b.ref).blockUntilReady()).dispose(),
    dispose: () => {
      a.dispose();
      b.dispose();
    },
  };
}

/** Memory-bound kernels: effective GB/s over the bytes each must read and write. */
async function elementwiseKernels(be: WasmBackend): Promise<{ name: string; gbs: number }[]> {
  const n = 1 << 20;
  const x = be.upload(randomData(n, 3), 'float32');
  const y = be.upload(randomData(n, 4), 'float32');
  const out = be.alloc(n, 'float32');
  const one = be.alloc(1, 'float32');
  const same = { shape: [n], aStrides: [1], bStrides: [1] };
  const bias = { shape: [n / 256, 256], aStrides: [256, 1], bStrides: [0, 1] };
  const rows = 100_000;
  const labels = be.upload(Int32Array.from({ length: rows }, (_, i) => i % 10), 'int32');
  const loss = be.alloc(rows, 'float32');
  const kernels: [string, number, () => void][] = [
    ['add (same shape)', 12 * n, () => be.binary('add', x, y, out, same)],
    ['add (bias row broadcast)', 8 * n, () => be.binary('add', x, y, out, bias)],
    ['relu', 8 * n, () => be.unary('relu', x, out)],
    ['exp', 8 * n, () => be.unary('exp', x, out)],
    ['axpy', 12 * n, () => be.axpy(out, x, 0.5)],
    ['sum', 4 * n, () => be.reduce('sum', x, one, { outer: 1, size: n, inner: 1 })],
    ['softmax rows of 10', 8 * rows * 10, () => be.softmax(x, out, { rows, cols: 10, log: false })],
    ['cross-entropy rows of 10', 4 * rows * 10, () => be.crossEntropy(x, labels, loss, { rows, cols: 10, labelSmoothing: 0, ignoreIndex: -100 })],
  ];
  const results = [];
  for (const [name, bytes, run] of kernels) results.push({ name, gbs: bytes / (await timeIt(run)) / 1e6 });
  for (const s of [x, y, out, one, labels, loss]) be.release(s);
  return results;
}

/** Waits (up to `seconds`) until the machine is nearly idle, so that both cores are ours. */
async function waitForQuiet(seconds: number): Promise<void> {
  const until = Date.now() + seconds * 1000;
  while (os.loadavg()[0] > 0.5 && Date.now() < until) {
    console.error(`waiting for a quiet machine (load ${os.loadavg()[0].toFixed(2)})`);
    await new Promise((r) => setTimeout(r, 5000));
  }
}

async function main(): Promise<void> {
  const wait = process.argv.find((a) => a.startsWith('--quiet-wait='));
  if (wait) await waitForQuiet(Number(wait.split('=')[1]));
  const loadBefore = os.loadavg();
  await tf.setBackend('wasm');
  await tf.ready();
  await jax.init('wasm');
  jax.defaultDevice('wasm');
  const one = await createWasmBackend({ threads: 1 });
  const two = await createWasmBackend({ threads: 2 });

  const peak = await measureSimdPeak();
  const bandwidth = await measureCopyBandwidth();

  const rows = [];
  for (const c of MATMULS) {
    const flops = 2 * c.m * c.n * c.k;
    const contenders = [flatgradMatmul(one, c, 'flatgrad 1T'), flatgradMatmul(two, c, 'flatgrad 2T'), tfjsMatmul(c), jaxMatmul(c)];
    const times = await timeInterleaved(contenders);
    contenders.forEach((x) => x.dispose());
    const [flatgrad1, flatgrad2, tfjsWasm, jaxWasmJit] = times.map((t) => ({ median: flops / t.median / 1e6, best: flops / t.best / 1e6 }));
    rows.push({ case: c.name, shape: { m: c.m, n: c.n, k: c.k, transA: c.transA, transB: c.transB }, flatgrad1, flatgrad2, tfjsWasm, jaxWasmJit });
    console.error(`measured ${c.name}`);
  }
  const memoryBound = await elementwiseKernels(one);
  one.dispose();
  two.dispose();

  const results = {
    date: new Date().toISOString(),
    machine: { cpu: os.cpus()[0]?.model, cores: os.cpus().length, node: process.version, loadavgBefore: loadBefore, loadavgAfter: os.loadavg() },
    libraries: {
      flatgrad: 'wasm backend, 1 and 2 threads',
      tfjsWasm: `@tensorflow/tfjs-backend-wasm ${tf.version_core}, SIMD ${await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')}, threads ${await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT')}`,
      jaxWasmJit: '@jax-js/jax wasm device, jit (single-threaded in Node: it needs a global Worker)',
    },
    simdPeakGflopsPerCore: peak,
    copyBandwidthGBs: bandwidth,
    matmulGflops: rows,
    memoryBoundGBs: memoryBound,
  };
  mkdirSync('bench/results', { recursive: true });
  writeFileSync('bench/results/wasm.json', JSON.stringify(results, null, 2) + '\n');

  const f1 = (x: number) => x.toFixed(1);
  const pct = (x: number, of: number) => `${Math.round((100 * x) / of)}%`;
  console.log(`\nf32x4 mul+add peak: ${f1(peak)} GFLOP/s per core; copy bandwidth ${f1(bandwidth)} GB/s; load average ${loadBefore.map(f1).join(' ')}\n`);
  console.log('GFLOP/s: median of interleaved rounds (best round in parentheses)\n');
  console.log('| matmul | flatgrad 1T | % peak | flatgrad 2T | % 2x peak | tfjs-wasm | jax-js wasm jit | 1T / tfjs | 2T / tfjs | 1T / jax |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  const both = (x: { median: number; best: number }) => `${f1(x.median)} (${f1(x.best)})`;
  for (const r of rows) {
    console.log(
      `| ${r.case} | ${both(r.flatgrad1)} | ${pct(r.flatgrad1.median, peak)} | ${both(r.flatgrad2)} | ${pct(r.flatgrad2.median, 2 * peak)} | ` +
        `${both(r.tfjsWasm)} | ${both(r.jaxWasmJit)} | ${(r.flatgrad1.median / r.tfjsWasm.median).toFixed(2)}x | ` +
        `${(r.flatgrad2.median / r.tfjsWasm.median).toFixed(2)}x | ${(r.flatgrad1.median / r.jaxWasmJit.median).toFixed(2)}x |`,
    );
  }
  console.log('\n| memory-bound kernel (1 thread, 1M floats) | GB/s | % of copy bandwidth |');
  console.log('| --- | --- | --- |');
  for (const k of memoryBound) console.log(`| ${k.name} | ${f1(k.gbs)} | ${pct(k.gbs, bandwidth)} |`);
}

await main();
