/**
 * One thread against two, kernel by kernel, on a whole training step (issue 13: two threads
 * >= 1.7x one on the CNN step, <= 0.6x on the MLP step): where the two-thread step's wall time
 * goes, which kernels split well, which badly, which not at all, and how much of the step is
 * host work and gaps between calls (the caller's JS, the workers' wake-ups).
 *
 * Contenders: 1 and 2 threads x SGD / SAM (rho 0.05 over the same SGD) x eager / captured
 * (fg.compile), each its own copy of the same model from the same weights; first timed rounds,
 * interleaved (order reversed every round), without any instrumentation: 2T/1T as the median of
 * per-round wall-time ratios. Then per contender a profiled run: every outermost backend call,
 * fused arena call ("arena.") and plan call (planProfile: the captured plan's generated kernels)
 * is charged its wall time under its name and shape; the rest of the step is "(between calls)".
 * The per-kernel table puts 2T's ms next to 1T's (same kind, same mode).
 *
 *   npx esbuild bench/threads-profile.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/threads-profile.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/threads-profile.mjs [--model=cnn|mlp] [--rounds=8] [--profile-steps=6] [--sgd-only] [--no-profile] [--base] [--winograd=off|on|auto]
 *
 * Prints markdown tables.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import * as fg from '../src/index.js';
import * as registry from '../src/kernels/registry.js';
import type { Backend, Conv2dLayout, MatmulLayout, Storage, Window2d } from '../src/kernels/backend.js';
import { planProfile } from '../src/compile/plan.js';
import { fusedKernelsFor } from '../src/kernels/fused.js';
import { instrumentCalls, sgdSamStep, wallCharger, type WallProfile } from './instrument.js';

const opt = (k: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1];
const modelName = opt('model') ?? 'cnn';
const rounds = Number(opt('rounds') ?? (modelName === 'mlp' ? 30 : 8));
const profileSteps = Number(opt('profile-steps') ?? (modelName === 'mlp' ? 20 : 6));
const kinds = process.argv.includes('--sgd-only') ? (['sgd'] as const) : (['sgd', 'sam'] as const);
const doProfile = !process.argv.includes('--no-profile');
const WARMUP = 3;
const batch = 128;
const inputShape = modelName === 'mlp' ? [batch, 784] : [batch, 1, 28, 28];
const makeNet = () =>
  modelName === 'mlp' ? fg.nn.models.mlp([784, 256, 256, 10]) : fg.nn.models.resnetSmall({ inChannels: 1, numClasses: 10, widths: [8, 16, 32], blocksPerStage: 1 });

// Every outermost backend, arena and plan call charged its wall time, by kind and shape (while acc is set).
let acc: WallProfile | null = null;
const charge = wallCharger(() => acc);
const win = (l: Window2d) => `${l.n}x${l.c}x${l.h}x${l.w} k${l.kh}s${l.sh}`;
const shapeKey = (n: string, a: unknown[]) => {
  if (n === 'matmul') {
    const l = a[3] as MatmulLayout;
    return `matmul ${l.m}x${l.k}x${l.n}${l.transA ? ' tA' : ''}${l.transB ? ' tB' : ''}`;
  }
  if (n.startsWith('conv2d')) {
    const l = a.find((x) => typeof x === 'object' && x !== null && 'outChannels' in x) as Conv2dLayout | undefined;
    return l ? `${n} ${win(l)}->${l.outChannels}` : n;
  }
  if (/pool|batchNorm/i.test(n)) {
    const s = a.find((x) => typeof x === 'object' && x !== null && 'numel' in x) as Storage | undefined;
    return s ? `${n} ${s.numel}` : n;
  }
  return n;
};
if (doProfile) planProfile.around = (n, run, a) => charge(shapeKey(n, a), run);

interface Contender { name: string; threads: number; backend: Backend; run: () => number; wall: number[]; loss: number; prof?: Map<string, { ms: number; calls: number }>; profWall?: number }
const contenders: Contender[] = [];
let init: Record<string, fg.Tensor> | null = null;
const xData = Float32Array.from({ length: inputShape.reduce((a, b) => a * b, 1) }, () => Math.random() * 2 - 1);
const yData = Int32Array.from({ length: batch }, (_, i) => i % 10);
const calibrations: string[] = [];
/**
 * --base: a third contender, two threads with this round's changes off (split recordings not kept,
 * fused programs not split: conv.ts keepRecordings, WasmBackend.splitFused), as "2T base".
 * --winograd=off|on|auto: the Winograd form's mode on every backend (default: as the backend has it).
 */
const withBase = process.argv.includes('--base');
const winograd = opt('winograd');
const variants: { threads: number; base: boolean }[] = [{ threads: 1, base: false }, { threads: 2, base: false }, ...(withBase ? [{ threads: 2, base: true }] : [])];
for (const { threads, base } of variants) {
  await fg.init({ backend: 'wasm', threads });
  const backend = registry.getBackend();
  const wasm = backend as unknown as { winogradConvs?: string; splitFused?: boolean; convKernels?: { keepRecordings: boolean } | null };
  if (winograd) wasm.winogradConvs = winograd;
  if (base) wasm.splitFused = false;
  fg.manualSeed(1);
  init ??= makeNet().stateDict();
  if (threads === 2) calibrations.push(JSON.stringify((fg.backendInfo().details as { threadCalibration?: unknown }).threadCalibration));
  if (doProfile) instrumentCalls([['', backend], ['arena.', fusedKernelsFor(backend)]], (n, a, run) => charge(shapeKey(n, a), run));
  for (const kind of kinds) {
    for (const captured of [false, true]) {
      const eager = sgdSamStep(kind, makeNet, init, { data: xData, shape: inputShape }, yData);
      const step = captured ? fg.compile(eager, { onMessage: (m) => { throw new Error(m); } }) : eager;
      contenders.push({
        name: `${kind} ${captured ? 'captured' : 'eager'}`,
        threads: base ? -2 : threads,
        backend,
        wall: [],
        loss: NaN,
        run: () => {
          registry.setBackend(backend);
          if (base && wasm.convKernels) wasm.convKernels.keepRecordings = false;
          const l = step();
          const v = (l.dataSync() as Float32Array)[0];
          l.dispose();
          return v;
        },
      });
    }
  }
}

const sorted = (v: number[]) => [...v].sort((a, b) => a - b);
const med = (v: number[]) => {
  const s = sorted(v);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const la = (v: number[]) => v.map((x) => x.toFixed(2)).join('/');
/** Busy CPU ms of the whole machine so far (/proc/stat; null where there is none). */
const machineBusyMs = (): number | null => {
  try {
    const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    const busy = cpu.slice(0, 8).reduce((a, b) => a + b, 0) - cpu[3] - cpu[4];
    return (busy * 1000) / 100;
  } catch {
    return null;
  }
};
const ownMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const loadStart = os.loadavg();
let busy0: number | null = null;
let own0 = 0;
let wall0 = 0;
for (let r = 0; r < rounds + WARMUP; r++) {
  if (r === WARMUP) {
    busy0 = machineBusyMs();
    own0 = ownMs();
    wall0 = performance.now();
  }
  for (const c of r % 2 ? [...contenders].reverse() : contenders) {
    const w0 = performance.now();
    c.loss = c.run();
    if (r >= WARMUP) c.wall.push(performance.now() - w0);
  }
}
console.log(`\n${modelName === 'mlp' ? 'MLP 784-256-256-10' : 'resnetSmall 8/16/32'}, batch ${batch}, wasm; ${rounds} interleaved rounds after ${WARMUP}; load average ${la(loadStart)} at the start, ${la(os.loadavg())} at the end.`);
const busy1 = machineBusyMs();
// What other processes ran while the rounds were timed: a second thread gets a core only when nobody else wants it.
if (busy0 !== null && busy1 !== null) console.log(`Other processes' CPU during the timed rounds: ${((100 * (busy1 - busy0 - (ownMs() - own0))) / (performance.now() - wall0)).toFixed(0)} % of one core (of 200 %).`);
console.log(`Two-thread calibration: ${calibrations.join(' ')}\n`);
console.log(`Winograd convolutions: ${winograd ?? 'as the backend chooses'}.\n`);
// On a loaded machine most rounds lose a core to another process for a while: the fastest and
// 25th-percentile steps say what the step does when nothing interrupts it.
const q25 = (v: number[]) => sorted(v)[Math.floor(0.25 * (v.length - 1))];
console.log('| step | threads | 1T wall ms (median) | wall ms (median) | 1T / this (median of rounds) | 1T / this (fastest) | 1T / this (25th pct) | losses |');
console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |');
for (const c of contenders.filter((k) => k.threads !== 1)) {
  const one = contenders.find((k) => k.threads === 1 && k.name === c.name)!;
  console.log(`| ${c.name} | ${c.threads === 2 ? '2T' : '2T base'} | ${med(one.wall).toFixed(2)} | ${med(c.wall).toFixed(2)} | ${med(one.wall.map((t, i) => t / c.wall[i])).toFixed(3)} | ${(Math.min(...one.wall) / Math.min(...c.wall)).toFixed(3)} | ${(q25(one.wall) / q25(c.wall)).toFixed(3)} | ${c.loss === one.loss ? 'equal' : `DIFFER ${one.loss} ${c.loss}`} |`);
}
if (doProfile) {
  // Profiled runs, 1T and 2T (not the base) alternating step by step.
  const profiled = contenders.filter((k) => k.threads > 0);
  for (const c of profiled) {
    c.prof = new Map();
    c.profWall = 0;
  }
  for (let s = 0; s < profileSteps; s++) {
    for (const c of s % 2 ? [...profiled].reverse() : profiled) {
      acc = c.prof!;
      const w0 = performance.now();
      c.run();
      c.profWall! += performance.now() - w0;
      acc = null;
    }
  }
  for (const c of contenders.filter((k) => k.threads === 2)) {
    const one = contenders.find((k) => k.threads === 1 && k.name === c.name)!;
    const N = profileSteps;
    const keys = [...new Set([...one.prof!.keys(), ...c.prof!.keys()])];
    const get = (k: Contender, key: string) => k.prof!.get(key) ?? { ms: 0, calls: 0 };
    keys.sort((a, b) => get(c, b).ms - get(c, a).ms);
    const inCalls = (k: Contender) => [...k.prof!.values()].reduce((s, r) => s + r.ms, 0);
    console.log(`\n${c.name}: 1T ${(one.profWall! / N).toFixed(2)} ms, 2T ${(c.profWall! / N).toFixed(2)} ms per step (wall, profiled)\n`);
    console.log('| call | calls | 1T ms | 2T ms | 1T / 2T | 2T ms - 1T ms / 2 |');
    console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
    for (const k of keys) {
      const [a, b] = [get(one, k), get(c, k)];
      if (Math.max(a.ms, b.ms) / N < 0.05) continue;
      console.log(`| ${k} | ${(b.calls / N).toFixed(0)} | ${(a.ms / N).toFixed(3)} | ${(b.ms / N).toFixed(3)} | ${b.ms ? (a.ms / b.ms).toFixed(2) : '-'} | ${((b.ms - a.ms / 2) / N).toFixed(3)} |`);
    }
    const small = (k: Contender) => [...k.prof!.entries()].filter(([key]) => Math.max(get(one, key).ms, get(c, key).ms) / N < 0.05).reduce((s, [, r]) => s + r.ms, 0);
    console.log(`| (calls under 0.05 ms, together) | | ${(small(one) / N).toFixed(3)} | ${(small(c) / N).toFixed(3)} | | ${((small(c) - small(one) / 2) / N).toFixed(3)} |`);
    const gap = (k: Contender) => (k.profWall! - inCalls(k)) / N;
    console.log(`| (between calls) | | ${gap(one).toFixed(3)} | ${gap(c).toFixed(3)} | ${(gap(one) / gap(c)).toFixed(2)} | ${(gap(c) - gap(one) / 2).toFixed(3)} |`);
  }
}
process.exit(0);
