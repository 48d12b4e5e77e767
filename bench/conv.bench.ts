/**
 * Convolution on the wasm backend (one thread) against tfjs-backend-wasm (XNNPACK), side by side
 * in one process and interleaved round by round, so that whatever else runs on the machine falls
 * on every contender alike: GFLOP/s of conv2d forward, input gradient and weight gradient on the
 * issue's case (batch 32, 16 -> 32 channels, 28x28, 3x3, pad 1) and on the layers of the small
 * ResNet (`--model cnn`, widths 8/16/32) at batch 32, next to
 * - each form of the forward and input gradient forced: conv.ts's implicit GEMM and, for 3x3
 *   stride-1 layers, Winograd F(2x2, 3x3) (conv-winograd.ts); the fwd and input-grad columns are
 *   what the default ('auto') runs, and fwd / tfjs uses them. GFLOP/s count the direct form's
 *   multiply-adds for every form,
 * - the old formulation (materialized im2col + the matmul kernel) on the same backend,
 * - the square-matmul GFLOP/s of the same backend in the same run (the target: conv forward and
 *   both gradients at >= 70% of it),
 * - tfjs-wasm's conv2d (NHWC, its native layout) and its conv2dTranspose (the input gradient's
 *   kernel, Conv2DBackpropInput); tfjs-wasm has no weight-gradient kernel (Conv2DBackpropFilter).
 *
 *   npx esbuild bench/conv.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --ignore-annotations --outfile=node_modules/.cache/flatgrad/conv.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/conv.bench.mjs [--quick]
 * Writes bench/results/conv.json and bench/results/conv.md. Absolute figures are only as good as
 * the machine is quiet (the load average is recorded); the ratios within one row are the result.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { getThreadsCount } from '@tensorflow/tfjs-backend-wasm';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import type { Conv2dLayout, Storage } from '../src/kernels/backend.js';
import { isWinogradConv, useWinogradConv } from '../src/kernels/wasm/conv-winograd.js';

const quick = process.argv.includes('--quick');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}

interface Contender {
  name: string;
  /** Multiply-adds x 2 of one call. */
  flops: number;
  run: () => void;
  dispose: () => void;
}

/**
 * This process's CPU time in ms (user + system). Every contender runs on this one thread
 * (flatgrad with threads: 1, tfjs-wasm's single-threaded SIMD build: the run records its thread
 * count), so CPU time is the work of a call; unlike wall time it does not count the time other
 * processes of a busy machine hold the core.
 */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Round-robin: each round runs every contender for about `roundMs` of CPU time; per contender the median round's ms per call. */
function timeInterleaved(contenders: Contender[], rounds = quick ? 3 : 9, roundMs = quick ? 20 : 60): number[] {
  const calls = contenders.map((c) => {
    for (let i = 0; i < 3; i++) c.run();
    const t0 = cpuMs();
    let n = 0;
    while (cpuMs() - t0 < 5) {
      c.run();
      n++;
    }
    return Math.max(1, Math.round((roundMs * n) / (cpuMs() - t0)));
  });
  const perRound: number[][] = contenders.map(() => []);
  for (let r = 0; r < rounds; r++) {
    contenders.forEach((c, i) => {
      const t0 = cpuMs();
      for (let j = 0; j < calls[i]; j++) c.run();
      perRound[i].push((cpuMs() - t0) / calls[i]);
    });
  }
  return perRound.map(median);
}

function randomData(n: number, seed: number): Float32Array<ArrayBuffer> {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1);
}

interface ConvCase {
  name: string;
  n: number;
  c: number;
  hw: number;
  o: number;
  k: number;
  stride: number;
  pad: number;
}

const CASES: ConvCase[] = [
  { name: 'issue case 16->32 28x28 3x3', n: 32, c: 16, hw: 28, o: 32, k: 3, stride: 1, pad: 1 },
  { name: 'resnet stem 1->8 28x28 3x3', n: 32, c: 1, hw: 28, o: 8, k: 3, stride: 1, pad: 1 },
  { name: 'resnet 8->8 28x28 3x3', n: 32, c: 8, hw: 28, o: 8, k: 3, stride: 1, pad: 1 },
  { name: 'resnet 8->16 28x28 3x3 s2', n: 32, c: 8, hw: 28, o: 16, k: 3, stride: 2, pad: 1 },
  { name: 'resnet 16->16 14x14 3x3', n: 32, c: 16, hw: 14, o: 16, k: 3, stride: 1, pad: 1 },
  { name: 'resnet 16->32 14x14 1x1 s2', n: 32, c: 16, hw: 14, o: 32, k: 1, stride: 2, pad: 0 },
  { name: 'resnet 32->32 7x7 3x3', n: 32, c: 32, hw: 7, o: 32, k: 3, stride: 1, pad: 1 },
];

function layoutOf(c: ConvCase): Conv2dLayout {
  const o = Math.floor((c.hw + 2 * c.pad - c.k) / c.stride) + 1;
  return { n: c.n, c: c.c, h: c.hw, w: c.hw, kh: c.k, kw: c.k, oh: o, ow: o, sh: c.stride, sw: c.stride, ph: c.pad, pw: c.pad, dh: 1, dw: 1, outChannels: c.o, groups: 1 };
}

/** One backend call per run, its output taken from and given back to the pool, as a training step does. */
function kernelContender(be: WasmBackend, name: string, flops: number, outNumel: number, operands: Storage[], call: (out: Storage) => void): Contender {
  return {
    name,
    flops,
    run: () => {
      const out = be.alloc(outNumel, 'float32');
      call(out);
      be.release(out);
    },
    dispose: () => operands.forEach((s) => be.release(s)),
  };
}

function flatgradContenders(be: WasmBackend, c: ConvCase): Contender[] {
  const l = layoutOf(c);
  const L = l.oh * l.ow;
  const K = c.c * c.k * c.k;
  const flops = 2 * c.n * c.o * L * K;
  const xN = c.n * c.c * c.hw * c.hw;
  const yN = c.n * c.o * L;
  const wN = c.o * K;
  const x = be.upload(randomData(xN, 1), 'float32');
  const w = be.upload(randomData(wN, 2), 'float32');
  const dy = be.upload(randomData(yN, 3), 'float32');
  const fresh = () => [be.upload(randomData(1, 9), 'float32')];
  // conv.ts's kernels ('off') and the Winograd form's ('on', where it applies): 'auto' runs
  // whichever useWinogradConv picks, so its figure is that contender's.
  const mode = (m: 'on' | 'off', f: (out: Storage) => void) => (out: Storage) => {
    be.winogradConvs = m;
    f(out);
    be.winogradConvs = 'auto';
  };
  const fwd = (out: Storage) => be.conv2d(x, w, out, l);
  const dx = (out: Storage) => be.conv2dBackwardInput(dy, w, out, l);
  return [
    kernelContender(be, 'forward', flops, yN, [x, w, dy], mode('off', fwd)),
    kernelContender(be, 'input grad', flops, xN, fresh(), mode('off', dx)),
    ...(isWinogradConv(l, 'forward') ? [kernelContender(be, 'winograd forward', flops, yN, fresh(), mode('on', fwd))] : []),
    ...(isWinogradConv(l, 'backwardInput') ? [kernelContender(be, 'winograd input grad', flops, xN, fresh(), mode('on', dx))] : []),
    kernelContender(be, 'weight grad', flops, wN, fresh(), (out) => be.conv2dBackwardWeight(x, dy, out, l)),
    // The formulation this replaced: cols [n, K, L] materialized, then one batched matmul W @ cols.
    kernelContender(be, 'im2col+matmul forward', flops, yN, fresh(), (out) => {
      const cols = be.alloc(c.n * K * L, 'float32');
      be.im2col(x, cols, l);
      be.matmul(w, cols, out, { batch: c.n, m: c.o, n: L, k: K, transA: false, transB: false, aBatchStride: 0, bBatchStride: K * L });
      be.release(cols);
    }),
  ];
}

function tfjsContenders(c: ConvCase): Contender[] {
  const l = layoutOf(c);
  const flops = 2 * c.n * c.o * l.oh * l.ow * c.c * c.k * c.k;
  const x = tf.tensor4d(randomData(c.n * c.hw * c.hw * c.c, 1), [c.n, c.hw, c.hw, c.c]);
  const w = tf.tensor4d(randomData(c.k * c.k * c.c * c.o, 2), [c.k, c.k, c.c, c.o]);
  const dy = tf.tensor4d(randomData(c.n * l.oh * l.ow * c.o, 3), [c.n, l.oh, l.ow, c.o]);
  // tfjs takes 'same'/'valid' or explicit NHWC pads.
  const pad: [[number, number], [number, number], [number, number], [number, number]] = [[0, 0], [c.pad, c.pad], [c.pad, c.pad], [0, 0]];
  const dispose = () => [x, w, dy].forEach((t) => t.dispose());
  return [
    // tfjs-backend-wasm runs each kernel synchronously when the op is called.
    { name: 'tfjs forward', flops, run: () => tf.conv2d(x, w, c.stride, pad).dispose(), dispose },
    {
      name: 'tfjs input grad',
      flops,
      run: () => tf.conv2dTranspose(dy, w, [c.n, c.hw, c.hw, c.c], c.stride, c.pad === 0 ? 'valid' : 'same').dispose(),
      dispose: () => {},
    },
  ];
}

function squareMatmul(be: WasmBackend, s: number): Contender {
  const a = be.upload(randomData(s * s, 4), 'float32');
  const b = be.upload(randomData(s * s, 5), 'float32');
  return kernelContender(be, `matmul ${s}`, 2 * s * s * s, s * s, [a, b], (out) =>
    be.matmul(a, b, out, { batch: 1, m: s, n: s, k: s, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 }),
  );
}

async function main(): Promise<void> {
  const loadBefore = os.loadavg();
  await tf.setBackend('wasm');
  await tf.ready();
  const be = await createWasmBackend({ threads: 1 });
  const rows = [];
  for (const c of CASES) {
    const ours = flatgradContenders(be, c);
    // A peer that cannot run a case (no kernel, a padding it cannot express) is left out of it.
    const peers = tfjsContenders(c).filter((p) => {
      try {
        p.run();
        return true;
      } catch (e) {
        console.error(`${p.name} cannot run ${c.name}: ${(e as Error).message}`);
        return false;
      }
    });
    const matmuls = [squareMatmul(be, 256), squareMatmul(be, 512)];
    const all = [...ours, ...peers, ...matmuls];
    const ms = timeInterleaved(all);
    all.forEach((x) => x.dispose());
    const gflops: Record<string, number> = { 'tfjs forward': NaN, 'tfjs input grad': NaN, 'winograd forward': NaN, 'winograd input grad': NaN };
    all.forEach((x, i) => (gflops[x.name] = x.flops / ms[i] / 1e6));
    // What the backend's default ('auto') runs.
    const l = layoutOf(c);
    const auto = { forward: useWinogradConv(l, 'forward') ? 'winograd' : 'conv.ts', inputGrad: useWinogradConv(l, 'backwardInput') ? 'winograd' : 'conv.ts' };
    gflops['auto forward'] = auto.forward === 'winograd' ? gflops['winograd forward'] : gflops.forward;
    gflops['auto input grad'] = auto.inputGrad === 'winograd' ? gflops['winograd input grad'] : gflops['input grad'];
    rows.push({ case: c.name, auto, gflops });
    console.error(`measured ${c.name}`);
  }
  be.dispose();

  const results = {
    date: new Date().toISOString(),
    machine: { cpu: os.cpus()[0]?.model, cores: os.cpus().length, node: process.version, loadavgBefore: loadBefore, loadavgAfter: os.loadavg() },
    libraries: { flatgrad: 'wasm backend, 1 thread', tfjsWasm: `@tensorflow/tfjs-backend-wasm ${tf.version_core}`, tfjsWasmThreads: getThreadsCount() },
    note: 'GFLOP/s from the median of interleaved rounds, timed by process CPU time; every contender of a row ran in the same rounds',
    rows,
  };
  const f1 = (x: number) => (Number.isNaN(x) ? 'n/a' : x.toFixed(1));
  const lines = [
    `conv2d on wasm, one thread, GFLOP/s (median of interleaved rounds, one process, timed by process CPU time; tfjs-wasm ran on ${getThreadsCount()} thread(s); load average ${loadBefore.map(f1).join(' ')}).`,
    'GFLOP/s counted as the direct convolution\'s 2*N*K*C*kh*kw*OH*OW for every form (the Winograd form does 16/36 of the 3x3 multiplies).',
    'fwd and input grad: what the default (winogradConvs \'auto\') runs, the form named; conv.ts and Winograd columns: each form forced.',
    'mm = the mean of the square matmuls 256 and 512 measured in the same rounds.',
    '',
    '| case (batch 32) | fwd | fwd form | fwd conv.ts | fwd Winograd | input grad | dX form | dX conv.ts | dX Winograd | weight grad | old im2col+matmul fwd | tfjs-wasm fwd | tfjs-wasm input grad | mm | fwd / tfjs | fwd / mm | dX / mm | dW / mm |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const r of rows) {
    const g = r.gflops;
    const mm = (g['matmul 256'] + g['matmul 512']) / 2;
    const [fwd, dx] = [g['auto forward'], g['auto input grad']];
    lines.push(
      `| ${r.case} | ${f1(fwd)} | ${r.auto.forward} | ${f1(g.forward)} | ${f1(g['winograd forward'])} | ${f1(dx)} | ${r.auto.inputGrad} | ${f1(g['input grad'])} | ${f1(g['winograd input grad'])} | ` +
        `${f1(g['weight grad'])} | ${f1(g['im2col+matmul forward'])} | ${f1(g['tfjs forward'])} | ` +
        `${f1(g['tfjs input grad'])} | ${f1(mm)} | ${(fwd / g['tfjs forward']).toFixed(2)}x | ${(fwd / mm).toFixed(2)} | ` +
        `${(dx / mm).toFixed(2)} | ${(g['weight grad'] / mm).toFixed(2)} |`,
    );
  }
  mkdirSync('bench/results', { recursive: true });
  writeFileSync('bench/results/conv.json', JSON.stringify(results, null, 2) + '\n');
  writeFileSync('bench/results/conv.md', lines.join('\n') + '\n');
  console.log(lines.join('\n'));
}

await main();
