/**
 * The sweep behind useWinogradConv (src/kernels/wasm/conv-winograd.ts): the forward and input
 * gradient of 3x3 stride-1 convolutions by Winograd F(2x2, 3x3) against conv.ts's implicit GEMM,
 * interleaved round by round in one process (A/B per round, median), timed by process CPU time on
 * one thread (or wall time with --threads=2), over the ResNet shapes of bench/conv.bench.ts, the
 * issue case, and a grid of channel counts and sizes. Prints the time ratio conv.ts / Winograd per
 * shape and kernel (above 1: Winograd faster).
 *
 *   npx esbuild bench/conv-winograd.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/conv-winograd.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/conv-winograd.bench.mjs [--grid] [--threads=2] [--quick] [--numerics] [--scaling] [--cnn [--rounds=8]]
 */
import os from 'node:os';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import type { Backend, Conv2dLayout } from '../src/kernels/backend.js';
import * as fg from '../src/index.js';
import * as registry from '../src/kernels/registry.js';
import { sgdSamStep } from './instrument.js';

const quick = process.argv.includes('--quick');
const threads = Number(process.argv.find((a) => a.startsWith('--threads='))?.slice(10) ?? 1);
const grid = process.argv.includes('--grid');

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const clock = () => (threads > 1 ? performance.now() : (process.cpuUsage().user + process.cpuUsage().system) / 1000);

function randomData(n: number, seed: number): Float32Array<ArrayBuffer> {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1);
}

interface Shape {
  name: string;
  n: number;
  c: number;
  hw: number;
  o: number;
}

const SHAPES: Shape[] = grid
  ? [1, 3, 8, 16, 32, 64].flatMap((c) => [7, 14, 28].flatMap((hw) => [8, 16, 32, 64].map((o) => ({ name: `${c}->${o} ${hw}x${hw}`, n: 32, c, hw, o }))))
  : [
      { name: 'issue case 16->32 28x28', n: 32, c: 16, hw: 28, o: 32 },
      { name: 'resnet stem 1->8 28x28', n: 32, c: 1, hw: 28, o: 8 },
      { name: 'resnet 8->8 28x28', n: 32, c: 8, hw: 28, o: 8 },
      { name: 'resnet 16->16 14x14', n: 32, c: 16, hw: 14, o: 16 },
      { name: 'resnet 32->32 7x7', n: 32, c: 32, hw: 7, o: 32 },
    ];

const layoutOf = (s: Shape): Conv2dLayout => ({ n: s.n, c: s.c, h: s.hw, w: s.hw, kh: 3, kw: 3, oh: s.hw, ow: s.hw, sh: 1, sw: 1, ph: 1, pw: 1, dh: 1, dw: 1, outChannels: s.o, groups: 1 });

/** Median ms per call of each of the runs, interleaved: every round runs each for about roundMs. */
function interleaved(runs: (() => void)[], rounds = quick ? 3 : 7, roundMs = quick ? 15 : 40): number[] {
  const calls = runs.map((r) => {
    for (let i = 0; i < 2; i++) r();
    const t0 = clock();
    let n = 0;
    while (clock() - t0 < 5) {
      r();
      n++;
    }
    return Math.max(1, Math.round((roundMs * n) / (clock() - t0)));
  });
  const per: number[][] = runs.map(() => []);
  for (let k = 0; k < rounds; k++)
    runs.forEach((r, i) => {
      const t0 = clock();
      for (let j = 0; j < calls[i]; j++) r();
      per[i].push((clock() - t0) / calls[i]);
    });
  return per.map(median);
}

function contenders(be: WasmBackend, s: Shape): { fwd: (() => void)[]; dx: (() => void)[]; release: () => void } {
  const l = layoutOf(s);
  const x = be.upload(randomData(s.n * s.c * s.hw * s.hw, 1), 'float32');
  const w = be.upload(randomData(s.o * s.c * 9, 2), 'float32');
  const dy = be.upload(randomData(s.n * s.o * s.hw * s.hw, 3), 'float32');
  const with_ = (mode: 'on' | 'off', f: (out: ReturnType<WasmBackend['alloc']>) => void, numel: number) => () => {
    be.winogradConvs = mode;
    const out = be.alloc(numel, 'float32');
    f(out);
    be.release(out);
  };
  const yN = s.n * s.o * s.hw * s.hw;
  const xN = s.n * s.c * s.hw * s.hw;
  return {
    fwd: (['off', 'on'] as const).map((m) => with_(m, (out) => be.conv2d(x, w, out, l), yN)),
    dx: (['off', 'on'] as const).map((m) => with_(m, (out) => be.conv2dBackwardInput(dy, w, out, l), xN)),
    release: () => [x, w, dy].forEach((t) => be.release(t)),
  };
}

/** Standard normal samples (Box-Muller) from a seeded LCG. */
function normal(n: number, seed: number, scale = 1): Float32Array<ArrayBuffer> {
  const u = randomData(2 * n, seed).map((v) => (v + 1) / 2);
  return Float32Array.from({ length: n }, (_, i) => scale * Math.sqrt(-2 * Math.log(Math.max(u[2 * i], 1e-12))) * Math.cos(2 * Math.PI * u[2 * i + 1]));
}

/** out[n, o, y, x] in float64 from float32 operands: the reference both forms are measured against. */
function reference(x: Float32Array, w: Float32Array, l: Conv2dLayout): Float64Array {
  const out = new Float64Array(l.n * l.outChannels * l.oh * l.ow);
  for (let n = 0; n < l.n; n++)
    for (let o = 0; o < l.outChannels; o++)
      for (let y = 0; y < l.oh; y++)
        for (let xx = 0; xx < l.ow; xx++) {
          let s = 0;
          for (let c = 0; c < l.c; c++)
            for (let a = 0; a < 3; a++) {
              const iy = y + a - l.ph;
              if (iy < 0 || iy >= l.h) continue;
              for (let b = 0; b < 3; b++) {
                const ix = xx + b - l.pw;
                if (ix < 0 || ix >= l.w) continue;
                s += x[((n * l.c + c) * l.h + iy) * l.w + ix] * w[((o * l.c + c) * 3 + a) * 3 + b];
              }
            }
          out[((n * l.outChannels + o) * l.oh + y) * l.ow + xx] = s;
        }
  return out;
}

/**
 * --numerics: max abs error and max abs error / max |reference| of the forward by Winograd and
 * by conv.ts against a float64 reference, on N(0, 1) inputs and He-scaled weights (std sqrt(2 /
 * (9 C))), batch 4; and the same for the input gradient (dY N(0, 1)), whose float64 reference is
 * the full convolution with the flipped, transposed weights.
 */
async function numerics(): Promise<void> {
  const be = await createWasmBackend({ threads: 1 });
  console.log('| shape | kernel | conv.ts max abs | Winograd max abs | conv.ts max rel | Winograd max rel | Winograd / conv.ts |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const s0 of SHAPES) {
    const s = { ...s0, n: 4 };
    const l = layoutOf(s);
    const x = normal(s.n * s.c * s.hw * s.hw, 1);
    const w = normal(s.o * s.c * 9, 2, Math.sqrt(2 / (9 * s.c)));
    const dy = normal(s.n * s.o * s.hw * s.hw, 3);
    // dX = the full convolution of dY with W flipped and transposed: W'[c][o][a][b] = W[o][c][2-a][2-b], padding 2 - p (= 1).
    const wT = new Float32Array(w.length);
    for (let o = 0; o < s.o; o++) for (let c = 0; c < s.c; c++) for (let a = 0; a < 3; a++) for (let b = 0; b < 3; b++) wT[((c * s.o + o) * 3 + a) * 3 + b] = w[((o * s.c + c) * 3 + 2 - a) * 3 + 2 - b];
    const lT: Conv2dLayout = { ...l, c: s.o, outChannels: s.c };
    for (const [kernel, want, a, numel] of [
      ['forward', reference(x, w, l), x, s.n * s.o * s.hw * s.hw],
      ['input grad', reference(dy, wT, lT), dy, s.n * s.c * s.hw * s.hw],
    ] as const) {
      const err = (['off', 'on'] as const).map((mode) => {
        be.winogradConvs = mode;
        const sa = be.upload(a, 'float32');
        const sw = be.upload(w, 'float32');
        const out = be.alloc(numel, 'float32');
        if (kernel === 'forward') be.conv2d(sa, sw, out, l);
        else be.conv2dBackwardInput(sa, sw, out, l);
        const got = be.readSync!(out) as Float32Array;
        [sa, sw, out].forEach((t) => be.release(t));
        let [maxAbs, maxRef] = [0, 0];
        for (let i = 0; i < want.length; i++) {
          maxAbs = Math.max(maxAbs, Math.abs(got[i] - want[i]));
          maxRef = Math.max(maxRef, Math.abs(want[i]));
        }
        return [maxAbs, maxAbs / maxRef];
      });
      const e = (v: number) => v.toExponential(2);
      console.log(`| ${s.name} | ${kernel} | ${e(err[0][0])} | ${e(err[1][0])} | ${e(err[0][1])} | ${e(err[1][1])} | ${(err[1][0] / err[0][0]).toFixed(2)}x |`);
    }
  }
  be.dispose();
}

/**
 * --scaling: the Winograd forward and input gradient (and conv.ts's, for comparison) on a 1-thread
 * and a 2-thread backend, interleaved in one process, wall time: the 2T / 1T speedups.
 */
async function scaling(): Promise<void> {
  const bes = [await createWasmBackend({ threads: 1 }), await createWasmBackend({ threads: 2 })];
  console.log(`2 threads vs 1, wall time, interleaved; load ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}; ${bes[1].info().adapter}`);
  console.log('| shape | fwd wino 1T/2T | dX wino 1T/2T | fwd conv.ts 1T/2T | dX conv.ts 1T/2T |');
  console.log('| --- | --- | --- | --- | --- |');
  for (const s of SHAPES) {
    const cs = bes.map((be) => contenders(be, s));
    const wall = interleavedWall;
    const fw = wall([cs[0].fwd[1], cs[1].fwd[1]]);
    const dw = wall([cs[0].dx[1], cs[1].dx[1]]);
    const fd = wall([cs[0].fwd[0], cs[1].fwd[0]]);
    const dd = wall([cs[0].dx[0], cs[1].dx[0]]);
    cs.forEach((c) => c.release());
    const r = ([a, b]: number[]) => (a / b).toFixed(2);
    console.log(`| ${s.name} | ${r(fw)} | ${r(dw)} | ${r(fd)} | ${r(dd)} |`);
  }
  console.log(`load after ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);
  bes.forEach((be) => be.dispose());
}

/** As interleaved, by wall time (threads' work is not this process's CPU time alone). */
function interleavedWall(runs: (() => void)[], rounds = quick ? 3 : 9, roundMs = quick ? 15 : 40): number[] {
  const per: number[][] = runs.map(() => []);
  const calls = runs.map((r) => {
    for (let i = 0; i < 3; i++) r();
    const t0 = performance.now();
    r();
    return Math.max(1, Math.round(roundMs / Math.max(0.01, performance.now() - t0)));
  });
  for (let k = 0; k < rounds; k++)
    runs.forEach((r, i) => {
      const t0 = performance.now();
      for (let j = 0; j < calls[i]; j++) r();
      per[i].push((performance.now() - t0) / calls[i]);
    });
  return per.map(median);
}

/**
 * --cnn: the small ResNet's training step (`flatgrad train --model cnn`: widths 8/16/32, batch
 * 128, eager SGD with momentum and SAM over it) with winogradConvs 'auto' against 'off', on one
 * thread and on two: every contender its own copy of the same model from the same weights, run
 * step by step in interleaved rounds (order reversed every other round), wall time; the ratio
 * off / auto is the median of the per-round ratios.
 */
async function cnn(): Promise<void> {
  const rounds = Number(process.argv.find((a) => a.startsWith('--rounds='))?.slice(9) ?? 8);
  const batch = 128;
  const makeNet = () => fg.nn.models.resnetSmall({ inChannels: 1, numClasses: 10, widths: [8, 16, 32], blocksPerStage: 1 });
  const xData = randomData(batch * 784, 5);
  const yData = Int32Array.from({ length: batch }, (_, i) => i % 10);
  let init: ReturnType<ReturnType<typeof makeNet>['stateDict']> | undefined;
  const contenders: { name: string; threads: number; mode: 'auto' | 'off'; wall: number[]; run: () => number }[] = [];
  for (const threads of [1, 2]) {
    await fg.init({ backend: 'wasm', threads });
    const backend = registry.getBackend() as unknown as WasmBackend;
    fg.manualSeed(1);
    init ??= makeNet().stateDict();
    for (const kind of ['sgd', 'sam'] as const)
      for (const mode of ['auto', 'off'] as const) {
        const step = sgdSamStep(kind, makeNet, init, { data: xData, shape: [batch, 1, 28, 28] }, yData);
        contenders.push({
          name: kind,
          threads,
          mode,
          wall: [],
          run: () => {
            registry.setBackend(backend as unknown as Backend);
            backend.winogradConvs = mode;
            const l = step();
            const v = (l.dataSync() as Float32Array)[0];
            l.dispose();
            return v;
          },
        });
      }
  }
  const load0 = os.loadavg();
  for (let r = 0; r < rounds + 2; r++)
    for (const c of r % 2 ? [...contenders].reverse() : contenders) {
      const t0 = performance.now();
      c.run();
      if (r >= 2) c.wall.push(performance.now() - t0);
    }
  console.log(`resnetSmall 8/16/32, batch ${batch}, eager steps, wall ms, ${rounds} interleaved rounds after 2; load ${load0.map((v) => v.toFixed(2)).join(' ')} at the start, ${os.loadavg().map((v) => v.toFixed(2)).join(' ')} at the end`);
  console.log('| step | threads | off ms (median) | auto ms (median) | off / auto (median of rounds) |');
  console.log('| --- | --- | ---: | ---: | ---: |');
  for (const c of contenders.filter((k) => k.mode === 'auto')) {
    const off = contenders.find((k) => k.mode === 'off' && k.name === c.name && k.threads === c.threads)!;
    console.log(`| ${c.name} | ${c.threads} | ${median(off.wall).toFixed(1)} | ${median(c.wall).toFixed(1)} | ${median(off.wall.map((t, i) => t / c.wall[i])).toFixed(3)} |`);
  }
  for (const kind of ['sgd', 'sam']) {
    const [one, two] = [1, 2].map((t) => contenders.find((k) => k.mode === 'auto' && k.name === kind && k.threads === t)!);
    console.log(`${kind} auto: 1T / 2T ${median(one.wall.map((t, i) => t / two.wall[i])).toFixed(3)}`);
  }
}

async function main(): Promise<void> {
  if (process.argv.includes('--numerics')) return numerics();
  if (process.argv.includes('--scaling')) return scaling();
  if (process.argv.includes('--cnn')) return cnn();
  const be = await createWasmBackend({ threads });
  console.log(`Winograd F(2x2,3x3) vs conv.ts, batch 32, pad 1, ${threads} thread(s), ${threads > 1 ? 'wall' : 'CPU'} time, load ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);
  console.log('GFLOP/s counted as the direct conv\'s 2*N*K*C*9*OH*OW; ratio = conv.ts time / Winograd time');
  console.log('| shape | fwd conv.ts | fwd wino | fwd ratio | dX conv.ts | dX wino | dX ratio |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const s of SHAPES) {
    const c = contenders(be, s);
    const flops = 2 * s.n * s.o * s.c * 9 * s.hw * s.hw;
    const [f0, f1] = interleaved(c.fwd);
    const [d0, d1] = interleaved(c.dx);
    c.release();
    const g = (ms: number) => (flops / ms / 1e6).toFixed(1);
    console.log(`| ${s.name} | ${g(f0)} | ${g(f1)} | ${(f0 / f1).toFixed(2)} | ${g(d0)} | ${g(d1)} | ${(d0 / d1).toFixed(2)} |`);
  }
  console.log(`load after ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);
  be.dispose();
}

await main();
