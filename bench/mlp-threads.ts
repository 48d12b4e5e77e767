/**
 * The MLP 784-256-256-10 step (batch 128) on wasm with one thread against two, in one process,
 * interleaved (the order reversed every round): SGD and SAM, eager and captured (fg.compile)
 * (issue 13: two threads <= 0.6x one).
 * Wall and process CPU time per step; 2T/1T as the median of per-round ratios, and the ratio of
 * the fastest and of the 25th-percentile steps (what the machine does when nothing interrupts:
 * on a loaded machine the worker waits for a core, and the median says more about the load).
 * --profile: then the steps' calls by wall time (two threads eager and captured, one thread
 * captured: which calls split, and how much, the time between them).
 *
 *   npx esbuild bench/mlp-threads.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/mlp-threads.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/mlp-threads.mjs [--rounds=30] [--profile] [--no-backoff]
 */
import os from 'node:os';
import * as fg from '../src/index.js';
import * as registry from '../src/kernels/registry.js';
import type { Backend, MatmulLayout, Storage } from '../src/kernels/backend.js';
import { planProfile } from '../src/compile/plan.js';
import { fusedKernelsFor } from '../src/kernels/fused.js';
import { instrumentCalls, trainStep, wallCharger, type WallProfile } from './instrument.js';

const rounds = Number(process.argv.find((a) => a.startsWith('--rounds='))?.split('=')[1] ?? 30);
const doProfile = process.argv.includes('--profile');
const WARMUP = 3;
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const batch = 128;
fg.manualSeed(1);
const xData = Float32Array.from({ length: batch * 784 }, () => Math.random() * 2 - 1);
const yData = Int32Array.from({ length: batch }, (_, i) => i % 10);

// --profile: every outermost backend, arena and plan call charged its wall time, by kind and shape.
let acc: WallProfile | null = null;
const charge = wallCharger(() => acc);
const shapeKey = (n: string, a: unknown[]) => {
  if (n === 'matmul') {
    const l = a[3] as MatmulLayout;
    return `matmul ${l.m}x${l.k}x${l.n}${l.transA ? ' tA' : ''}${l.transB ? ' tB' : ''}`;
  }
  if (n === 'matmulEpilogue') return `matmulEpilogue A ${(a[0] as Storage).numel}, B ${(a[1] as Storage).numel} elements`;
  return n;
};
// Installed before any step is captured, so that the plans bind the wrappers.
if (doProfile) planProfile.around = (n, run, a) => charge(shapeKey(n, a), run);

interface Contender { name: string; backend: Backend; run: () => number; wall: number[]; cpu: number[]; loss: number }
const contenders: Contender[] = [];
let initState: Record<string, fg.Tensor> | null = null;
let calibration: unknown = null;
for (const threads of [1, 2]) {
  await fg.init({ backend: 'wasm', threads });
  const backend = registry.getBackend();
  if (threads === 2) calibration = (fg.backendInfo().details as { threadCalibration?: unknown }).threadCalibration;
  // --no-backoff: the cost model keeps splitting when split calls find no free core (SplitCost.observeSplit ignored).
  const cost = (backend as unknown as { splitCost?: { observeSplit: (wall: number, cpu: number) => void } | null }).splitCost;
  if (cost && process.argv.includes('--no-backoff')) cost.observeSplit = () => {};
  if (doProfile) instrumentCalls([['', backend], ['arena.', fusedKernelsFor(backend)]], (n, a, run) => charge(shapeKey(n, a), run));
  for (const kind of ['sgd', 'sam'] as const) {
    for (const captured of [false, true]) {
      fg.manualSeed(1);
      const model = fg.nn.models.mlp([784, 256, 256, 10]);
      initState ??= model.stateDict();
      model.loadStateDict(initState);
      model.train();
      const x = fg.tensor(xData, { shape: [batch, 784] }).keep();
      const y = fg.tensor(yData, { dtype: 'int32' }).keep();
      const opt = kind === 'sam' ? new fg.optim.SAM(model.parameters(), fg.optim.SGD, { lr: 0.01, rho: 0.05 }) : new fg.optim.SGD(model.parameters(), { lr: 0.01 });
      const closure = () => {
        const l = fg.crossEntropy(model.forward(x), y);
        l.backward();
        return l;
      };
      const eager = trainStep(opt, closure);
      const step = captured ? fg.compile(eager, { onMessage: (m) => { throw new Error(m); } }) : eager;
      contenders.push({
        name: `${threads}T ${kind} ${captured ? 'captured' : 'eager'}`,
        backend,
        wall: [],
        cpu: [],
        loss: NaN,
        run: () => {
          registry.setBackend(backend);
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
const quantile = (v: number[], f: number) => sorted(v)[Math.floor(f * (v.length - 1))];
const med = (v: number[]) => {
  const s = sorted(v);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const loadStart = os.loadavg();
for (let r = 0; r < rounds + WARMUP; r++) {
  for (const c of r % 2 ? [...contenders].reverse() : contenders) {
    const w0 = performance.now();
    const t0 = cpuMs();
    c.loss = c.run();
    const t1 = cpuMs();
    const w1 = performance.now();
    if (r >= WARMUP) {
      c.wall.push(w1 - w0);
      c.cpu.push(t1 - t0);
    }
  }
}
const la = (v: number[]) => v.map((x) => x.toFixed(2)).join('/');
console.log(`\nMLP 784-256-256-10, batch 128, wasm; ${rounds} interleaved rounds after ${WARMUP}; load average (1/5/15 min) ${la(loadStart)} at the start, ${la(os.loadavg())} at the end.`);
console.log(`Two-thread calibration: ${JSON.stringify(calibration)}\n`);
console.log('| contender | wall ms (median) | wall ms (fastest) | wall ms (25th pct) | CPU ms (median) | loss |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
for (const c of contenders) console.log(`| ${c.name} | ${med(c.wall).toFixed(2)} | ${Math.min(...c.wall).toFixed(2)} | ${quantile(c.wall, 0.25).toFixed(2)} | ${med(c.cpu).toFixed(2)} | ${c.loss.toFixed(6)} |`);
console.log('\n| two threads / one | wall (median of rounds) | fastest / fastest | 25th pct / 25th pct | CPU (median of rounds) | losses |');
console.log('| --- | ---: | ---: | ---: | ---: | --- |');
for (const c of contenders.filter((k) => k.name.startsWith('2T'))) {
  const one = contenders.find((k) => k.name === c.name.replace('2T', '1T'))!;
  const ratio = (a: number[], b: number[]) => med(a.map((t, i) => t / b[i])).toFixed(3);
  console.log(
    `| ${c.name} | ${ratio(c.wall, one.wall)} | ${(Math.min(...c.wall) / Math.min(...one.wall)).toFixed(3)} | ${(quantile(c.wall, 0.25) / quantile(one.wall, 0.25)).toFixed(3)} | ${ratio(c.cpu, one.cpu)} | ${c.loss === one.loss ? 'equal' : 'DIFFER'} |`,
  );
}
const twoT = contenders.find((c) => c.name.startsWith('2T'))!.backend;
console.log(`\nBack-offs of the two-thread cost model over the rounds (split calls without a free core): ${(twoT.info().details as { splitBackoffs?: number }).splitBackoffs ?? 'none'}${process.argv.includes('--no-backoff') ? ' (--no-backoff)' : ''}`);
if (doProfile) {
  for (const name of ['2T sgd captured', '2T sgd eager', '1T sgd captured']) {
    const c = contenders.find((k) => k.name === name)!;
    const N = 20;
    acc = new Map();
    const w0 = performance.now();
    for (let i = 0; i < N; i++) c.run();
    const wall = performance.now() - w0;
    const prof = acc;
    acc = null;
    let inCalls = 0;
    console.log(`\n${name}: ${(wall / N).toFixed(2)} ms per step (wall)\n\n| call | calls per step | ms per step |\n| --- | ---: | ---: |`);
    for (const [k, r] of [...prof].sort((a, b) => b[1].ms - a[1].ms)) {
      inCalls += r.ms;
      if (r.ms / N >= 0.01) console.log(`| ${k} | ${(r.calls / N).toFixed(0)} | ${(r.ms / N).toFixed(3)} |`);
    }
    console.log(`| (between calls) | | ${((wall - inCalls) / N).toFixed(3)} |`);
  }
}
process.exit(0);
