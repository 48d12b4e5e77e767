/**
 * Fused against unfused SAM, side by side in one process:
 *
 * 1. The optimizer side of one SAM step (global norm, perturb, the second gradient's check,
 *    restore, base SGD update with momentum: firstStep + secondStep, gradients given) on the
 *    parameter lists of an MLP 784-256-256-10, the small ResNet-style CNN and the small ViT
 *    (152 tensors): kernel dispatches and time per step, fused (flat arena) vs unfused (the
 *    per-tensor loop of the PyTorch implementations, without a NaN check as davda54/sam).
 * 2. The whole SAM step against 2 x (forward + backward) + one SGD step on the MLP (batch 128)
 *    and the CNN: the price of the optimizer side and of the perturbation.
 *
 * Run (bundles the TypeScript):
 *   npx esbuild bench/sam.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/sam.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/sam.bench.mjs [--quick] [--backends=cpu,wasm,webgpu] [--bandwidth-only]
 * Writes bench/results/sam.json and prints markdown tables. Times are medians of several reps.
 * --bandwidth-only times the arena kernels against the copy kernel alone (part 3 below, with the
 * SAM step's kernels defined by one untimed step, plus the reductions the SAM run does not use),
 * and writes bench/results/sam-bandwidth.json instead.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { fusedKernelsFor } from '../src/kernels/fused.js';
import { hostPassObservers, runArenaKernel } from '../src/kernels/arena/run.js';
import { builtinKernels, copyCall, dotCall } from '../src/kernels/arena/fused.js';
import { defineArenaKernel, type ArenaKernel } from '../src/kernels/arena/define.js';
import { S_SLOTS } from '../src/kernels/fused.js';
import { FlatArena } from '../src/optim/arena.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';

const { nn, optim } = fg;
const quick = process.argv.includes('--quick');
const bandwidthOnly = process.argv.includes('--bandwidth-only');
const backendsArg = process.argv.find((a) => a.startsWith('--backends='));
const BACKENDS = (backendsArg ? backendsArg.slice('--backends='.length) : 'cpu,wasm,webgpu').split(',') as ('cpu' | 'wasm' | 'webgpu')[];

const KERNELS = [
  'fill', 'cast', 'unary', 'binary', 'where', 'axpy', 'stridedCopy', 'reduce', 'argReduce', 'softmax', 'crossEntropy',
  'crossEntropyBackward', 'matmul', 'im2col', 'col2im', 'maxPool2d', 'maxPool2dBackward', 'avgPool2d', 'avgPool2dBackward',
  'gather', 'scatterAdd', 'random',
];

/** Counts kernel dispatches: compute passes on WebGPU, kernel calls (backend and fused) elsewhere. */
function instrument(b: Backend): { count: () => number; reset: () => void } {
  let n = 0;
  const wrap = (obj: Record<string, unknown>, name: string) => {
    const f = obj[name];
    if (typeof f !== 'function') return;
    obj[name] = function (this: unknown, ...args: unknown[]) {
      n++;
      return (f as (...a: unknown[]) => unknown).apply(this, args);
    };
  };
  const rt = (b as unknown as { rt?: Record<string, unknown> }).rt;
  if (b.name === 'webgpu' && rt) wrap(rt, 'dispatch');
  else {
    for (const k of KERNELS) wrap(b as unknown as Record<string, unknown>, k);
    // The fused and per-tensor optimizer kernels are arena kernels: their runner reports each pass
    // (one dispatch per arena pass, one per tensor in the per-tensor baseline), so no list of them
    // is kept here. The one primitive outside the language, RWP's row norms, is counted by its method.
    hostPassObservers.add((_k, be, _e, d) => {
      if (be === b) n += d;
    });
    const fk = fusedKernelsFor(b) as unknown as Record<string, unknown> | null;
    if (fk) wrap(fk, 'rowNorms');
  }
  return { count: () => n, reset: () => (n = 0) };
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median ms per call of `run`, waiting for the device at the end of each rep. */
async function timeIt(run: () => void, reps: number, perRep = 1): Promise<number> {
  const b = getBackend();
  run();
  await b.sync();
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t = performance.now();
    for (let i = 0; i < perRep; i++) run();
    await b.sync();
    times.push((performance.now() - t) / perRep);
  }
  return median(times);
}

type ModelKind = 'mlp' | 'cnn' | 'vit';
function makeModel(kind: ModelKind): fg.nn.Layer {
  fg.manualSeed(1);
  if (kind === 'mlp') return nn.models.mlp([784, 256, 256, 10]);
  if (kind === 'cnn') return nn.models.resnetSmall({ inChannels: 1, numClasses: 10, widths: [16, 32, 64] });
  return nn.models.vit({ imageSize: 28, patchSize: 7, dim: 64, depth: 12, heads: 4, numClasses: 10 });
}

interface OptRow {
  backend: string;
  model: ModelKind;
  tensors: number;
  params: number;
  fusedDispatches: number;
  unfusedDispatches: number;
  fusedMs: number;
  unfusedMs: number;
  speedup: number;
}

async function optimizerSide(kind: ModelKind, counter: ReturnType<typeof instrument>): Promise<OptRow> {
  const row: Partial<OptRow> = { backend: getBackend().name, model: kind };
  const runs = [true, false].map((fused) => {
    const model = makeModel(kind);
    const ps = model.parameters();
    fg.manualSeed(2);
    for (const p of ps) p.grad = fg.randn(p.shape.slice(), { std: 0.01 }).keep();
    // Unfused as davda54/sam: no non-finite check.
    const opt = new optim.SAM(ps, optim.SGD, { rho: 0.05, lr: 0.01, momentum: 0.9, weightDecay: 5e-4, fused, skipNonFinite: fused });
    row.tensors = ps.length;
    row.params = ps.reduce((a, p) => a + p.size, 0);
    return {
      opt,
      step: () => {
        opt.firstStep();
        opt.secondStep();
      },
    };
  });
  const perRep = getBackend().name === 'webgpu' ? 2 : 1;
  const times: number[][] = [[], []];
  for (const [i, r] of runs.entries()) {
    r.step();
    await getBackend().sync();
    counter.reset();
    r.step();
    if (i === 0) row.fusedDispatches = counter.count();
    else row.unfusedDispatches = counter.count();
  }
  // Interleaved, so that the machine's load hits both alike.
  for (let rep = 0; rep < (quick ? 3 : 9); rep++) for (const [i, r] of runs.entries()) times[i].push(await timeIt(r.step, 1, perRep));
  row.fusedMs = median(times[0]);
  row.unfusedMs = median(times[1]);
  for (const r of runs) r.opt.dispose();
  row.speedup = row.unfusedMs / row.fusedMs;
  return row as OptRow;
}

interface StepRow {
  backend: string;
  model: ModelKind;
  batch: number;
  samMs: number;
  baseMs: number;
  ratio: number;
  samDispatches: number;
  baseDispatches: number;
}

async function wholeStep(kind: 'mlp' | 'cnn', batch: number, counter: ReturnType<typeof instrument>): Promise<StepRow> {
  const model = makeModel(kind);
  fg.manualSeed(3);
  const x = (kind === 'mlp' ? fg.randn([batch, 784]) : fg.randn([batch, 1, 28, 28])).keep();
  const y = fg.randint(0, 10, [batch]).keep();
  const ps = model.parameters();
  const sam = new optim.SAM(ps, optim.SGD, { rho: 0.05, lr: 0.01, momentum: 0.9 });
  const fwdBwd = () => {
    const l = nn.functional.crossEntropy(model.forward(x), y);
    l.backward();
    return l;
  };
  const samStep = () => fg.tidy(() => void sam.step(fwdBwd));
  // The baseline: the same work a SAM step does outside the optimizer, with a plain SGD step.
  const baseStep = () =>
    fg.tidy(() => {
      sam.zeroGrad();
      fwdBwd();
      sam.zeroGrad();
      fwdBwd();
      sam.base.step();
    });
  const reps = quick ? 3 : 5;
  counter.reset();
  samStep();
  const samDispatches = counter.count();
  counter.reset();
  baseStep();
  const baseDispatches = counter.count();
  // Interleave so that machine load hits both alike.
  const s: number[] = [];
  const b: number[] = [];
  for (let r = 0; r < reps; r++) {
    s.push(await timeIt(samStep, 1));
    b.push(await timeIt(baseStep, 1));
  }
  sam.dispose();
  const samMs = median(s);
  const baseMs = median(b);
  return { backend: getBackend().name, model: kind, batch, samMs, baseMs, ratio: samMs / baseMs, samDispatches, baseDispatches };
}

interface BandwidthRow {
  backend: string;
  /** The arena: the ViT's parameters, or 8 equal tensors of a round number of elements. */
  arena: string;
  kernel: string;
  /** Bytes the pass moves: each vector it reads and each it writes, over the arena. */
  bytes: number;
  ms: number;
  gbs: number;
  /** GB/s over the copy kernel's GB/s, measured alongside. */
  vsCopy: number;
}

/**
 * The reductions that no SAM step above runs on its own, timed alongside (the built-in dot is
 * defined by dotCall; max |x| and the non-finite flag alone have no built-in).
 */
const EXTRA_REDUCTIONS: { key: string; kernel: ArenaKernel }[] = [
  { key: 'dot (bench)', kernel: dotCall('x', 'y', 0).kernel },
  ...(['maxAbs', 'anyNonFinite', 'sumSquares', 'norm'] as const).map((r) => ({
    key: `${r} (bench)`,
    kernel: defineArenaKernel({ name: `bench_${r}`, vectors: { x: 'read' }, slots: { out: 0 }, reduce: ({ x }, _h, _s, k) => ({ out: k[r](x) }) }),
  })),
];

/** One untimed fused SAM step on the MLP: defines the built-in kernels that --bandwidth-only times. */
function defineSamKernels(): void {
  const ps = makeModel('mlp').parameters();
  for (const p of ps) p.grad = fg.randn(p.shape.slice(), { std: 0.01 }).keep();
  const opt = new optim.SAM(ps, optim.SGD, { rho: 0.05, lr: 0.01, momentum: 0.9, weightDecay: 5e-4, fused: true, skipNonFinite: true });
  opt.firstStep();
  opt.secondStep();
  opt.dispose();
}

/**
 * Every built-in arena kernel the SAM runs above defined (builtinKernels(): derived, no list kept
 * here) against the copy kernel, over the ViT's arena: bytes moved per second, as a fraction of
 * what a plain copy of the same layout achieves.
 */
async function bandwidth(counterless: Backend, elements: number | null): Promise<BandwidthRow[]> {
  // Past the last-level cache (4M elements: 16 MB a vector) a pass runs at memory speed; the ViT
  // arena (0.2M) and 1M mostly run from cache, where a kernel of more vectors loses its share first.
  const ps = elements === null ? makeModel('vit').parameters() : Array.from({ length: 8 }, () => fg.zeros([elements / 8 / 64, 64]).requiresGrad_().keep());
  for (const p of ps) p.grad = fg.zeros(p.shape.slice()).keep();
  const arena = new FlatArena(ps, ps.map(() => 0), 1, 'all');
  arena.syncGrads();
  const S = counterless.alloc(S_SLOTS, arena.dtype);
  const L = arena.layout;
  const copy = copyCall('out', 'x').kernel;
  const kernels = [...builtinKernels(), ...EXTRA_REDUCTIONS].filter(({ kernel }) => kernel.vectors.length > 0);
  // Each vector filled once with gradient-like values: a norm over all-zero blocks takes its slower
  // path (zero is outside its direct rule), which no real gradient does.
  const filled = new Set<string>();
  let seed = 1;
  const vec = (name: string) => {
    const s = arena.vec(name);
    if (!filled.has(name)) {
      filled.add(name);
      let z = seed++ * 0x9e3779b9;
      const data = new Float32Array(L.numel).map(() => ((z = (Math.imul(z, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * 0.02);
      counterless.write(s, arena.dtype === 'float64' ? Float64Array.from(data) : data);
    }
    return s;
  };
  const time = async (k: ArenaKernel) => {
    const vectors = Object.fromEntries(k.vectors.map((v) => [v.name, vec(v.name)]));
    return timeIt(() => runArenaKernel(k, counterless, { layout: L, vectors, S, steps: arena.stepCounts }), quick ? 5 : 15, 4);
  };
  const bytesOf = (k: ArenaKernel) => k.vectors.reduce((n, v) => n + (v.read ? 1 : 0) + (v.access !== 'read' ? 1 : 0), 0) * L.numel * (arena.dtype === 'float64' ? 8 : 4);
  const rows: BandwidthRow[] = [];
  for (const { key, kernel: k } of kernels) {
    // The copy is timed right before each kernel, so that the machine's load hits both alike.
    const copyMs = await time(copy);
    const ms = await time(k);
    const gbs = bytesOf(k) / ms / 1e6;
    rows.push({ backend: counterless.name, arena: elements === null ? 'vit' : `${elements / 2 ** 20}M`, kernel: `${key} [${k.vectors.map((v) => `${v.name}:${v.access}`).join(' ')}]`, bytes: bytesOf(k), ms, gbs, vsCopy: gbs / (bytesOf(copy) / copyMs / 1e6) });
  }
  counterless.release(S);
  arena.dispose();
  for (const p of ps) {
    p.grad?.dispose();
    if (elements !== null) p.dispose();
  }
  return rows;
}

const results: { opt: OptRow[]; step: StepRow[]; bandwidth: BandwidthRow[]; info: Record<string, unknown> } = {
  opt: [],
  step: [],
  bandwidth: [],
  info: { date: new Date().toISOString(), node: process.version, cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, loadavg: os.loadavg(), quick },
};

for (const name of BACKENDS) {
  let info: fg.BackendInfo;
  try {
    info = await fg.init({ backend: name });
  } catch (e) {
    console.error(`skipping ${name}: ${(e as Error).message.split('\n')[0]}`);
    continue;
  }
  (results.info as Record<string, unknown>)[name] = info.adapter;
  const b = getBackend();
  const counter = instrument(b);
  console.error(`# ${name}: ${info.adapter}${fusedKernelsFor(b) ? '' : ' (no fused kernels: both rows unfused)'}`);
  if (bandwidthOnly) defineSamKernels();
  for (const kind of bandwidthOnly ? [] : (['mlp', 'cnn', 'vit'] as ModelKind[])) {
    const r = await optimizerSide(kind, counter);
    results.opt.push(r);
    console.error(JSON.stringify(r));
  }
  const steps: ['mlp' | 'cnn', number][] = name === 'cpu' ? [['mlp', 128], ['cnn', 8]] : [['mlp', 128], ['cnn', 32]];
  for (const [kind, batch] of bandwidthOnly ? [] : steps) {
    if (quick && kind === 'cnn' && name !== 'wasm') continue;
    const r = await wholeStep(kind, batch, counter);
    results.step.push(r);
    console.error(JSON.stringify(r));
  }
  if (fusedKernelsFor(b) && name !== 'cpu') {
    for (const elements of [null, 2 ** 20, 2 ** 22]) {
      for (const r of await bandwidth(b, elements)) {
        results.bandwidth.push(r);
        console.error(JSON.stringify(r));
      }
    }
  }
  setBackend(b);
}

// Relative to the repository root (the bundle runs from node_modules/.cache).
const dir = 'bench/results';
if (!existsSync(dir)) mkdirSync(dir, { recursive: true });
const stem = bandwidthOnly ? 'sam-bandwidth' : 'sam';
writeFileSync(`${dir}/${stem}.json`, JSON.stringify(results, null, 1) + '\n');

const f = (x: number, d = 2) => x.toFixed(d);
const lines: string[] = [];
const out = (l: string) => lines.push(l);
out(`Measured ${results.info.date} on ${results.info.cpus} x ${results.info.cpuModel} (load average ${(results.info.loadavg as number[]).map((x) => x.toFixed(1)).join(' ')}), Node ${results.info.node}${quick ? ', quick run' : ''}.`);
for (const name of BACKENDS) if ((results.info as Record<string, unknown>)[name]) out(`- ${name}: ${(results.info as Record<string, unknown>)[name]}`);
out('\n### Optimizer side of one SAM step (SGD momentum + weight decay): fused vs unfused\n');
out('| backend | params of | tensors | parameters | dispatches fused / unfused | ms fused / unfused | speedup |');
out('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
for (const r of results.opt) {
  out(`| ${r.backend} | ${r.model} | ${r.tensors} | ${r.params} | ${r.fusedDispatches} / ${r.unfusedDispatches} | ${f(r.fusedMs)} / ${f(r.unfusedMs)} | ${f(r.speedup, 1)}x |`);
}
out('\n### Whole SAM step / (2 x forward-backward + SGD step)\n');
out('| backend | model | batch | SAM step ms | 2 fwd-bwd + SGD ms | ratio | dispatches SAM / base |');
out('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
for (const r of results.step) {
  out(`| ${r.backend} | ${r.model} | ${r.batch} | ${f(r.samMs, 1)} | ${f(r.baseMs, 1)} | ${f(r.ratio, 3)} | ${r.samDispatches} / ${r.baseDispatches} |`);
}
out('\n### Bandwidth of each arena kernel against a copy kernel of the same layout\n');
out('| backend | arena | kernel [vectors] | MB moved | ms | GB/s | vs copy |');
out('| --- | --- | --- | ---: | ---: | ---: | ---: |');
for (const r of results.bandwidth) out(`| ${r.backend} | ${r.arena} | ${r.kernel} | ${f(r.bytes / 1e6, 1)} | ${f(r.ms, 3)} | ${f(r.gbs, 1)} | ${f(r.vsCopy, 2)} |`);
writeFileSync(`${dir}/${stem}.md`, lines.join('\n') + '\n');
console.log(lines.join('\n'));
process.exit(0);
