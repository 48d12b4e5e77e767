/**
 * The eager training step's host time (issue 13, task E): how much of an eager step is kernels
 * and how much is the ops' JavaScript between them, on the small ResNet (batch 128) or the MLP
 * 784-256-256-10 (batch 128), wasm, one or two threads.
 * Every outermost backend and arena call is charged its wall time (bench/instrument.ts); the step's
 * wall time less that is the host time. With --profile=FILE (and --no-kernel-time) a V8 CPU
 * profile of the timed steps.
 *
 *   npx esbuild bench/eager-host.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/eager-host.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/eager-host.mjs [--model=cnn|mlp] [--threads=1] [--steps=20] [--kind=sgd|sam] [--captured] [--no-kernel-time] [--profile=FILE.cpuprofile] [--arena-split=BYTES] [--spin-us=1000,3000]
 */
import * as fg from '../src/index.js';
import * as registry from '../src/kernels/registry.js';
import { fusedKernelsFor } from '../src/kernels/fused.js';
import { planProfile } from '../src/compile/plan.js';
import type { MatmulLayout } from '../src/kernels/backend.js';
import { instrumentCalls, trainStep, wallCharger, type WallProfile } from './instrument.js';
import { stepModel } from './models.js';

const opt = (k: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1];
const modelName = opt('model') ?? 'cnn';
const threads = Number(opt('threads') ?? 1);
const steps = Number(opt('steps') ?? (modelName === 'mlp' ? 100 : 20));
const kind = opt('kind') ?? 'sgd';
const kernelTime = !process.argv.includes('--no-kernel-time');
const batch = 128;
const inputShape = modelName === 'mlp' ? [batch, 784] : [batch, 1, 28, 28];

await fg.init({ backend: 'wasm', threads });
const backend = registry.getBackend();
fg.manualSeed(1);
const model = stepModel(modelName);
model.train();
const x = fg.tensor(Float32Array.from({ length: inputShape.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(i)), { shape: inputShape }).keep();
const y = fg.tensor(Int32Array.from({ length: batch }, (_, i) => i % 10), { dtype: 'int32' }).keep();
const sgd = { lr: 0.01, momentum: 0.9 };
const o = kind === 'sam' ? new fg.optim.SAM(model.parameters(), fg.optim.SGD, { ...sgd, rho: 0.05 }) : new fg.optim.SGD(model.parameters(), sgd);
const eager = trainStep(o, () => {
  const l = fg.crossEntropy(model.forward(x), y);
  l.backward();
  return l;
});
// --captured: the same step captured (fg.compile), for the host time that both modes share.
const captured = process.argv.includes('--captured');
const step = captured ? fg.compile(eager, { onMessage: (m) => { throw new Error(m); } }) : eager;
const mode = captured ? 'captured' : 'eager';
let acc: WallProfile | null = null;
/** A call's profile key: its name, and for matmuls the shape (the 10-wide ones of the MLP apart). */
const keyOf = (n: string, a: unknown[]) => {
  if (n !== 'matmul') return n;
  const l = a[3] as MatmulLayout;
  return `matmul ${l.m}x${l.k}x${l.n}${l.transA ? ' tA' : ''}${l.transB ? ' tB' : ''}`;
};
const charge = wallCharger(() => acc);
// A captured plan's own generated kernels are charged too (installed before the step is traced).
if (kernelTime) planProfile.around = (n, run, a) => charge(keyOf(n, a), run);
if (kernelTime) instrumentCalls([['', backend], ['arena.', fusedKernelsFor(backend)]], (n, a, run) => charge(keyOf(n, a), run));
// Two threads or more: the main thread's wall time waiting for the workers at the end of split
// calls (ThreadPool.finished, wrapped on the instance): what a split loses to its tail.
const poolOf = (backend as unknown as { pool: { finished: (base: number) => boolean } | null }).pool;
let waitMs = 0;
if (poolOf) {
  const finished = poolOf.finished.bind(poolOf);
  poolOf.finished = (base: number) => {
    const t0 = performance.now();
    try {
      return finished(base);
    } finally {
      waitMs += performance.now() - t0;
    }
  };
}
const run = () => {
  const l = step();
  const v = (l.dataSync() as Float32Array)[0];
  l.dispose();
  return v;
};
for (let i = 0; i < 8; i++) run();
// --arena-split=BYTES: the arena passes split from BYTES on (WasmBackend.arenaSplitBytes) against
// the default, step by step interleaved (two threads; the MLP's 269K parameters are 1.1-2.2 MB a pass).
const arenaSplit = opt('arena-split');
if (arenaSplit !== undefined) {
  const wasm = backend as unknown as { arenaSplitBytes: number };
  const base = wasm.arenaSplitBytes;
  const byThreshold = new Map<number, { wall: number[]; arena: number[] }>([[base, { wall: [], arena: [] }], [Number(arenaSplit), { wall: [], arena: [] }]]);
  for (let i = 0; i < steps; i++) {
    for (const [bytes, r] of i % 2 ? [...byThreshold].reverse() : byThreshold) {
      wasm.arenaSplitBytes = bytes;
      acc = new Map();
      const t0 = performance.now();
      run();
      r.wall.push(performance.now() - t0);
      r.arena.push([...acc].filter(([k]) => k.startsWith('arena.')).reduce((n, [, v]) => n + v.ms, 0));
    }
  }
  acc = null;
  wasm.arenaSplitBytes = base;
  const med = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
  console.log(`${modelName} ${kind} ${mode}, ${threads}T, arena passes split from N bytes on (median of ${steps} interleaved steps):`);
  for (const [bytes, r] of byThreshold) console.log(`  N = ${bytes}: step ${med(r.wall).toFixed(3)} ms, arena passes ${med(r.arena).toFixed(3)} ms${kernelTime ? '' : ' (run without --no-kernel-time)'}`);
}
// --spin-us=A,B,...: idle workers spin A us (then B, ...) before they sleep (ThreadPool.spinLoads,
// scaled from the calibrated loads per us), step by step interleaved; per step the wall time and
// the posts that found their worker asleep (ThreadPool.stats.woken: a wake-up paid).
const spinList = opt('spin-us')?.split(',').map(Number);
if (spinList) {
  const pool = (backend as unknown as { pool: { spinLoads: number; stats: { posted: number; woken: number } } | null }).pool;
  if (!pool) throw new Error('--spin-us: needs --threads=2 or more');
  const cal = (backend as unknown as { threadCalibration: { spinLoads: number; spinUs: number; spinRounds?: number } | null }).threadCalibration;
  // Loads per us as the calibration measured them, or (where it chose no spinning: a busy machine)
  // as this thread measures them now, on an Int32Array over shared memory like the workers' slots.
  const loadsPerUs = () => {
    const ctl = new Int32Array(new SharedArrayBuffer(16));
    const t0 = performance.now();
    for (let i = 0; i < 2e6; i++) Atomics.load(ctl, 0);
    return 2e6 / ((performance.now() - t0) * 1000);
  };
  const perUs = cal?.spinUs ? cal.spinLoads / cal.spinUs : loadsPerUs();
  const base = pool.spinLoads;
  const rows = spinList.map((us) => ({ us, wall: [] as number[], woken: 0, posted: 0 }));
  for (let i = 0; i < steps; i++) {
    for (const r of i % 2 ? [...rows].reverse() : rows) {
      pool.spinLoads = r.us * perUs;
      run(); // one step to settle the workers at this budget, then the timed one
      const [w0, p0] = [pool.stats.woken, pool.stats.posted];
      const t0 = performance.now();
      run();
      r.wall.push(performance.now() - t0);
      r.woken += pool.stats.woken - w0;
      r.posted += pool.stats.posted - p0;
    }
  }
  pool.spinLoads = base;
  const med = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
  console.log(`${modelName} ${kind} ${mode}, ${threads}T, idle workers spinning S us (median of ${steps} interleaved steps; ${perUs.toFixed(0)} loads per us):`);
  for (const r of rows) console.log(`  S = ${r.us}: step ${med(r.wall).toFixed(3)} ms (fastest ${Math.min(...r.wall).toFixed(3)}), posts ${(r.posted / steps).toFixed(1)} per step, ${(r.woken / steps).toFixed(1)} of them to a sleeping worker`);
}
// --profile=FILE: a V8 CPU profile of the timed steps only (not the setup nor the warm-up steps).
const profileFile = opt('profile');
const session = profileFile ? new (await import('node:inspector')).Session() : null;
const post = (m: string, p?: object) => new Promise<unknown>((res, rej) => session!.post(m, p ?? {}, (e, r) => (e ? rej(e) : res(r))));
if (session) {
  session.connect();
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 100 });
  await post('Profiler.start');
}
acc = new Map();
waitMs = 0;
const w0 = performance.now();
let loss = 0;
for (let i = 0; i < steps; i++) loss = run();
const wall = (performance.now() - w0) / steps;
const prof = acc as WallProfile;
if (session) {
  const { profile } = (await post('Profiler.stop')) as { profile: unknown };
  (await import('node:fs')).writeFileSync(profileFile!, JSON.stringify(profile));
}
acc = null;
const inCalls = [...prof.values()].reduce((s, r) => s + r.ms, 0) / steps;
console.log(`${modelName} ${kind} ${mode}, ${threads}T: ${wall.toFixed(2)} ms per step, in backend calls ${inCalls.toFixed(2)} ms, host ${(wall - inCalls).toFixed(2)} ms (${((100 * (wall - inCalls)) / wall).toFixed(1)} %)${poolOf ? `, waiting for workers at split ends ${(waitMs / steps).toFixed(2)} ms` : ''}; loss ${loss}`);
if (kernelTime) {
  console.log('| call | calls per step | ms per step |\n| --- | ---: | ---: |');
  for (const [k, r] of [...prof].sort((a, b) => b[1].ms - a[1].ms).slice(0, 40)) console.log(`| ${k} | ${(r.calls / steps).toFixed(1)} | ${(r.ms / steps).toFixed(3)} |`);
}
process.exit(0);
