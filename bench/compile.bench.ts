/**
 * Captured (fg.compile) against eager training steps, side by side in one process: dispatches per
 * step, host ms per step and wall ms per step, for SGD and SAM steps on the cpu and wasm backends
 * (and WebGPU with --webgpu), MLP 784-256-256-10 at batch 128 (and, with --all, the small CNN and
 * ViT on wasm and WebGPU: the cpu reference convolutions take seconds per step).
 *
 * Both runs of a row train their own copy of the same model from the same seed; the eager and the
 * captured step alternate within each round, so that load from other processes hits both alike.
 * The machine is shared: absolute numbers are noisy, the ratios are the figures to read.
 *
 * - dispatches: device calls per step (kernels, host writes of constants, fused arena kernels),
 *   counted by the recorder of src/compile/trace.ts on one eager step, and from the plan's figures
 *   for the captured step (its zero fills and state copies included);
 * - wall ms: from the call to the end of an awaited readback of the loss;
 * - process CPU ms (cpu, wasm): the process's user + system time over the same span, which other
 *   processes' load disturbs far less than wall time on a shared machine;
 * - captured unfused: the same compiled step with the fusion pass off (fuse: false);
 * - host ms: on cpu and wasm, where kernels run on the calling thread, the wall time minus the time
 *   spent inside kernel calls (backend and fused arena kernels, and every call of a captured plan,
 *   its generated kernels included; allocation and host transfers count as host work), timed by
 *   wrapping them in a separate instrumented run; on
 *   WebGPU, the time until the step function returns (the GPU work is asynchronous).
 *
 * Run:
 *   npx esbuild bench/compile.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --ignore-annotations --outfile=node_modules/.cache/flatgrad/compile.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/compile.bench.mjs [--quick] [--all] [--webgpu] [--backends=cpu,wasm,webgpu] [--models=mlp,cnn,vit] [--schedule]
 * --schedule: a cosine learning-rate schedule (and rho for SAM) stepped after every step, as a
 * training run has; the captured step takes the values as plan inputs (the traces column says so).
 * - dynamic calls: of the captured step's calls, those whose host code runs on each replay (inputs,
 *   outputs, random keys, live hyper-parameters); on WebGPU the others are encoded from recorded
 *   command streams. submits: queue submits per step on WebGPU (the readback of the loss included).
 * Writes bench/results/compile.json and bench/results/compile.md (--out=NAME: bench/results/NAME.*).
 * --ignore-annotations: package.json's "sideEffects" names the dist/ files, and without the flag
 * esbuild drops the side-effect imports of src/ (the gradient rules) from a bundle of the sources.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import * as fg from '../src/index.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { traceStep } from '../src/compile/trace.js';
import { fusedKernelsFor } from '../src/kernels/fused.js';
import { planProfile } from '../src/compile/plan.js';
import { HOST_WORK } from './instrument.js';

const { nn, optim } = fg;
type Tensor = fg.Tensor;
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const ROUNDS = quick ? 5 : 15;
const schedule = args.includes('--schedule');

type ModelKind = 'mlp' | 'cnn' | 'vit';
type OptKind = 'SGD' | 'SAM';
type Net = fg.nn.Module & { forward(x: Tensor): Tensor };

function makeModel(kind: ModelKind): Net {
  fg.manualSeed(1);
  if (kind === 'mlp') return nn.models.mlp([784, 256, 256, 10]);
  if (kind === 'cnn') return nn.models.resnetSmall({ inChannels: 1, numClasses: 10, widths: [8, 16] });
  return nn.models.vit({ imageSize: 28, patchSize: 7, dim: 32, depth: 2, heads: 4, numClasses: 10 });
}
const BATCH: Record<ModelKind, number> = { mlp: 128, cnn: 16, vit: 16 };
const inputShape = (kind: ModelKind, n: number) => (kind === 'mlp' ? [n, 784] : [n, 1, 28, 28]);

/** The step, and the host code between steps (the schedules with --schedule). */
type Step = ((x: Tensor, y: Tensor) => Tensor) & { between?: () => void };

function makeStep(kind: ModelKind, opt: OptKind): Step {
  const model = makeModel(kind);
  model.train();
  const sgd = { lr: 0.01, momentum: 0.9 };
  const o = opt === 'SGD' ? new optim.SGD(model.parameters(), sgd) : new optim.SAM(model.parameters(), optim.SGD, { ...sgd, rho: 0.05 });
  const schedules = !schedule ? [] : [
    new optim.CosineAnnealingLR(o, { tMax: 1000, etaMin: 1e-4 }),
    ...(opt === 'SAM' ? [new optim.CosineAnnealingLR(o, { key: 'rho', tMax: 1000, etaMin: 0.01 })] : []),
  ];
  const step: Step = function step(x: Tensor, y: Tensor): Tensor {
    const closure = () =>
      fg.tidy(() => {
        const l = fg.crossEntropy(model.forward(x), y);
        l.backward();
        return l;
      });
    if (opt === 'SGD') {
      o.zeroGrad();
      const l = closure();
      o.step();
      return l;
    }
    return o.step(closure) as Tensor;
  };
  if (schedule) step.between = () => { for (const s of schedules) s.step(); };
  return step;
}

/** A step made by makeStep, captured: its host code between steps stays outside the capture. */
function compiled(step: Step, opts: fg.CompileOptions = {}): fg.CompiledStep<[Tensor, Tensor], Tensor> & { between?: () => void } {
  return Object.assign(fg.compile(step, opts), { between: step.between });
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];


/**
 * Wraps every method (but the allocator's and the transfers') of the backend and of its fused arena kernels to add up the time spent inside
 * (outermost calls only); plans built while it is installed run each of their calls through it too
 * (planProfile), so the generated kernels of a captured step (fusedMap, matmulEpilogue, the fused
 * reductions), which are functions of the plan rather than backend methods, count as kernel time.
 */
function kernelTimer(b: Backend): { ms: () => number; reset: () => void; remove: () => void } {
  let total = 0;
  let depth = 0;
  const timed = (run: () => unknown): unknown => {
    if (depth++ > 0) {
      try { return run(); } finally { depth--; }
    }
    const t0 = performance.now();
    try {
      return run();
    } finally {
      total += performance.now() - t0;
      depth--;
    }
  };
  planProfile.around = (name, run) => (HOST_WORK.has(name) ? run() : timed(run));
  const removers: (() => void)[] = [() => { planProfile.around = null; }];
  for (const target of [b, fusedKernelsFor(b)]) {
    if (!target) continue;
    const names = new Set<string>();
    for (let o: object | null = target; o && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
      for (const k of Object.getOwnPropertyNames(o)) if (typeof (target as unknown as Record<string, unknown>)[k] === 'function' && k !== 'constructor') names.add(k);
    }
    const rec = target as unknown as Record<string, (...a: unknown[]) => unknown>;
    for (const k of names) {
      // Own function properties stay as they are; allocation and transfers count as host work.
      if (Object.prototype.hasOwnProperty.call(rec, k) || HOST_WORK.has(k)) continue;
      const orig = rec[k];
      removers.push(() => { delete rec[k]; });
      rec[k] = function (this: unknown, ...a: unknown[]) {
        return timed(() => orig.apply(this, a));
      };
    }
  }
  return { ms: () => total, reset: () => { total = 0; }, remove: () => { for (const r of removers) r(); } };
}

interface Row {
  backend: string;
  model: ModelKind;
  opt: OptKind;
  batch: number;
  eagerDispatches: number;
  capturedDispatches: number;
  /** The same plan with the fusion pass off (compile option fuse: false). */
  unfusedDispatches: number;
  fusedKernels: number;
  capturedZeroFills: number;
  capturedDynamic: number;
  traces: number;
  /** WebGPU: median queue submits per step (readback included). */
  eagerSubmits: number | null;
  capturedSubmits: number | null;
  eagerWallMs: number;
  capturedWallMs: number;
  unfusedWallMs: number;
  /** Process CPU ms per step (user + system), eager / captured unfused / captured: robust to other processes' load (cpu, wasm). */
  cpuMs: [number, number, number] | null;
  eagerHostMs: number;
  capturedHostMs: number;
  speedup: number;
}

async function measure(kind: ModelKind, opt: OptKind): Promise<Row> {
  const b = getBackend();
  const gpu = b.name === 'webgpu';
  const n = BATCH[kind];
  fg.manualSeed(2);
  const xs = Array.from({ length: 4 }, () => fg.randn(inputShape(kind, n)).keep());
  const ys = Array.from({ length: 4 }, () => fg.randint(0, 10, [n]).keep());
  let i = 0;
  // WebGPU: submits counted around each step.
  let submits = 0;
  const queue = gpu ? (b as unknown as { device: GPUDevice }).device.queue : null;
  const submit = queue?.submit;
  if (queue && submit) queue.submit = function (this: GPUQueue, ...a: Parameters<GPUQueue['submit']>) { submits++; return submit.apply(this, a); };
  const timeStep = async (f: Step): Promise<{ wall: number; host: number; submits: number; cpu: number }> => {
    submits = 0;
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const l = f(xs[i % 4], ys[i % 4]);
    const t1 = performance.now();
    await l.data();
    const t2 = performance.now();
    const c = process.cpuUsage(c0);
    l.dispose();
    f.between?.();
    i++;
    return { wall: t2 - t0, host: t1 - t0, submits, cpu: (c.user + c.system) / 1000 };
  };

  // Wall time, uninstrumented.
  const eager = makeStep(kind, opt);
  const captured = compiled(makeStep(kind, opt), { onMessage: (m) => { throw new Error(m); } });
  const unfused = compiled(makeStep(kind, opt), { fuse: false, onMessage: (m) => { throw new Error(m); } });
  const runs = [eager, captured, unfused];
  for (let w = 0; w < 3; w++) for (const f of runs) await timeStep(f);
  const wall: number[][] = [[], [], []];
  const cpu: number[][] = [[], [], []];
  const hostGpu: number[][] = [[], [], []];
  const submitCounts: number[][] = [[], [], []];
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? [0, 1, 2] : [2, 1, 0];
    for (const k of order) {
      const t = await timeStep(runs[k]);
      wall[k].push(t.wall);
      cpu[k].push(t.cpu);
      hostGpu[k].push(t.host);
      submitCounts[k].push(t.submits);
    }
  }
  if (queue && submit) queue.submit = submit;
  const capturedDispatches = captured.stats().plan!.calls;
  const unfusedDispatches = unfused.stats().plan!.calls;
  const fusedKernels = captured.stats().plan!.fusedKernels;
  unfused.dispose();
  const capturedZeroFills = captured.stats().plan!.zeroFills;
  const capturedDynamic = captured.stats().plan!.dynamicCalls;
  const traces = captured.stats().traces;
  const eagerDispatches = traceStep(b, [xs[0].storage, ys[0].storage], () => eager(xs[0], ys[0])).trace.events.length;
  captured.dispose();

  // Host time on cpu and wasm: wall minus the time inside kernels, from an instrumented pair.
  let host: [number, number] = [median(hostGpu[0]), median(hostGpu[1])];
  if (!gpu) {
    const timer = kernelTimer(b);
    const e2 = makeStep(kind, opt);
    const c2 = compiled(makeStep(kind, opt));
    for (let w = 0; w < 3; w++) {
      await timeStep(e2);
      await timeStep(c2);
    }
    const h: [number[], number[]] = [[], []];
    for (let r = 0; r < ROUNDS; r++) {
      for (const k of [0, 1]) {
        timer.reset();
        const t = await timeStep(k === 0 ? e2 : c2);
        h[k].push(t.wall - timer.ms());
      }
    }
    timer.remove();
    c2.dispose();
    host = [median(h[0]), median(h[1])];
  }
  for (const t of [...xs, ...ys]) t.dispose();
  const eagerWallMs = median(wall[0]);
  const capturedWallMs = median(wall[1]);
  return {
    backend: b.name, model: kind, opt, batch: n, eagerDispatches, capturedDispatches, unfusedDispatches, fusedKernels, capturedZeroFills, capturedDynamic, traces,
    eagerSubmits: gpu ? median(submitCounts[0]) : null, capturedSubmits: gpu ? median(submitCounts[1]) : null, eagerWallMs, capturedWallMs, unfusedWallMs: median(wall[2]),
    cpuMs: gpu ? null : [median(cpu[0]), median(cpu[2]), median(cpu[1])],
    eagerHostMs: host[0], capturedHostMs: host[1], speedup: eagerWallMs / capturedWallMs,
  };
}

const rows: Row[] = [];
const backends: [string, () => Promise<Backend>][] = [
  ['cpu', async () => new CpuBackend()],
  ['wasm', () => createWasmBackend({ threads: 1 })],
];
if (args.includes('--webgpu')) {
  backends.push(['webgpu', async () => (await import('../src/kernels/webgpu/index.js')).createWebGPUBackend()]);
}
// --backends=wasm,webgpu: only those.
const onlyBackends = args.find((a) => a.startsWith('--backends='))?.slice('--backends='.length).split(',');
if (onlyBackends) for (let i = backends.length - 1; i >= 0; i--) if (!onlyBackends.includes(backends[i][0])) backends.splice(i, 1);
for (const [name, make] of backends) {
  // The cpu backend is the plain-TypeScript reference: its convolutions take seconds per step, so
  // the CNN and ViT rows run on wasm (and WebGPU) only.
  let models: ModelKind[] = args.includes('--all') && name !== 'cpu' ? ['mlp', 'cnn', 'vit'] : ['mlp'];
  // --models=mlp,vit: only those (the CNN takes seconds per step on SwiftShader).
  const onlyModels = args.find((a) => a.startsWith('--models='))?.slice('--models='.length).split(',');
  if (onlyModels) models = models.filter((m) => onlyModels.includes(m));
  let b: Backend;
  try {
    b = await make();
  } catch (e) {
    console.error(`${name}: unavailable (${(e as Error).message.split('\n')[0]})`);
    continue;
  }
  setBackend(b);
  for (const kind of models) {
    for (const opt of ['SGD', 'SAM'] as OptKind[]) {
      const row = await measure(kind, opt);
      rows.push(row);
      console.error(`${row.backend} ${row.model} ${row.opt}: eager ${row.eagerWallMs.toFixed(1)} ms, captured ${row.capturedWallMs.toFixed(1)} ms`);
    }
  }
}

const f = (x: number) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const md = [
  '# Captured against eager steps (bench/compile.bench.ts)',
  '',
  `${new Date().toISOString()}, Node ${process.version}, ${os.cpus().length} x ${os.cpus()[0]?.model}, load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}${quick ? ', --quick' : ''}${schedule ? ', --schedule (cosine lr and rho, stepped every step)' : ''}.`,
  'The machine is shared with other busy processes: absolute times are noisy, read the ratios. Median of ' + ROUNDS + ' alternating rounds.',
  'Captured dispatches include the zero fills of reused buffers, which an eager step gets from its fresh (zeroed) allocations. Unfused: the same plan with the fusion pass off (fuse: false); fused kernels: generated elementwise kernels in the captured plan (src/compile/fuse.ts), whose copies into a destination are also forwarded to the producer.',
  'Host ms (cpu, wasm): wall minus the time inside kernels, from a separate instrumented pair of runs; every call of the captured plan is timed (its generated kernels too: fusedMap, matmulEpilogue, fused reductions); allocation, host transfers and host writes of constants count as host work (bench/instrument.ts HOST_WORK).',
  'Dynamic: captured calls whose host code runs on every replay (the rest are encoded from recorded command streams on WebGPU). Submits: WebGPU queue submits per step, readback included.',
  '',
  '| backend | model | step | batch | dispatches eager | dispatches captured unfused | dispatches captured (zero fills) | fused kernels | dynamic | traces | submits eager / captured | host ms eager | host ms captured | host share captured | wall ms eager | wall ms captured unfused | wall ms captured | wall speedup | process CPU ms eager / unfused / captured |',
  '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ...rows.map((r) =>
    `| ${r.backend} | ${r.model} | ${r.opt} | ${r.batch} | ${r.eagerDispatches} | ${r.unfusedDispatches} | ${r.capturedDispatches} (${r.capturedZeroFills}) | ${r.fusedKernels} | ${r.capturedDynamic} | ${r.traces} | ${r.eagerSubmits === null ? '-' : `${r.eagerSubmits} / ${r.capturedSubmits}`} | ${f(r.eagerHostMs)} | ${f(r.capturedHostMs)} | ${((100 * r.capturedHostMs) / r.capturedWallMs).toFixed(0)}% | ${f(r.eagerWallMs)} | ${f(r.unfusedWallMs)} | ${f(r.capturedWallMs)} | ${r.speedup.toFixed(2)}x | ${r.cpuMs ? r.cpuMs.map(f).join(' / ') : '-'} |`),
  '',
];
const sgdSam = rows.filter((r) => r.opt === 'SAM').map((s) => {
  const g = rows.find((r) => r.opt === 'SGD' && r.backend === s.backend && r.model === s.model);
  return g ? `${s.backend} ${s.model}: SAM / SGD captured ${(s.capturedWallMs / g.capturedWallMs).toFixed(2)}, eager ${(s.eagerWallMs / g.eagerWallMs).toFixed(2)}` : '';
}).filter(Boolean);
md.push(...sgdSam.map((l) => `- ${l}`), '');
mkdirSync('bench/results', { recursive: true });
const out = args.find((a) => a.startsWith('--out='))?.slice('--out='.length) ?? 'compile';
writeFileSync(`bench/results/${out}.json`, JSON.stringify({ date: new Date().toISOString(), quick, rows }, null, 2));
writeFileSync(`bench/results/${out}.md`, md.join('\n'));
console.log(md.join('\n'));
