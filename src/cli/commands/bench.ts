/**
 * `flatgrad bench`: times optimizers on a model, side by side in one process. For each backend,
 * each optimizer config and each engine (fused over the flat arena, or per tensor) it measures
 *
 *   - ms/step: a whole training step (forward-backward passes and the update; two passes for the
 *     sharpness-aware family) on a random batch, and its ratio to SGD's step on the same engine;
 *   - the optimizer side: the update alone with the gradients given (firstStep + secondStep for
 *     SAM and its defineSamVariant members, step() for base optimizers); for wrappers with their own
 *     step logic (LookSAM) it is derived: the step minus its passes, each timed alone;
 *   - dispatches and bytes moved by one optimizer side: WebGPU compute passes and the bytes of
 *     their bindings; on cpu and wasm, kernel calls (and arena passes) and the bytes of their
 *     operands;
 *   - GB/s of the optimizer side, and of a plain copy kernel moving the same bytes.
 *
 * It writes bench.md, bench.json and bench.svg into --out. Times are medians of --steps reps.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { BackendName, Storage } from '../../kernels/backend.js';
import * as fusedModule from '../../kernels/fused.js';
import { hostPassObservers } from '../../kernels/arena/run.js';
import type { ArenaKernel } from '../../kernels/arena/define.js';
import { ArenaOptimizer, type OptimizerDefinition } from '../../kernels/arena/optimizer.js';
import { getBackend } from '../../kernels/registry.js';
import * as optim from '../../optim/index.js';
import { copyInto, type Module } from '../../nn/module.js';
import { crossEntropy } from '../../tensor/ops/nn.js';
import { Tensor, tidy } from '../../tensor/tensor.js';
import { typedArrayFor } from '../../tensor/dtype.js';
import { randint, randn } from '../../tensor/random.js';
import { listFlag, numberFlag, stringFlag, UsageError } from '../args.js';
import type { CliIO } from '../io.js';
import { buildModel, MODEL_DEFAULTS, MODEL_NAMES, type ModelName } from '../models.js';
import { barChartSvg } from '../plot.js';
import { ProgressBar } from '../progress.js';
import { resolvePath, startBackend } from '../runtime.js';
import { defineCommand } from './define.js';

const BACKENDS = ['cpu', 'wasm', 'webgpu'] as const;
const BUILTIN = ['sgd', 'adamw', 'sam', 'asam', 'looksam'] as const;
type Builtin = (typeof BUILTIN)[number];
const MODULE_FILE = /\.(mjs|js|cjs)$/;

const flags = {
  model: stringFlag(`${MODEL_NAMES.join(', ')}, or a module file whose default export (fg) => model (28x28 grey images, 10 classes) or { model, inputShape, numClasses }`, { default: 'mlp', placeholder: '<name|file>' }),
  optimizer: listFlag(
    (raw, flag) => {
      if ((BUILTIN as readonly string[]).includes(raw) || MODULE_FILE.test(raw)) return raw;
      throw new UsageError(`--${flag}: unknown optimizer '${raw}'; expected ${BUILTIN.join(', ')} or a file (.mjs/.js) defining one`);
    },
    `optimizers to time (SGD is always timed: the ratio column is to it): ${BUILTIN.join(', ')}, or a file whose default export (fg) => a defineOptimizer definition or a SAM-variant class`,
    { default: ['sgd', 'sam'], placeholder: '<a,b,...>' },
  ),
  backend: listFlag((raw, flag) => {
    if ((BACKENDS as readonly string[]).includes(raw)) return raw as BackendName;
    throw new UsageError(`--${flag} must be a list of ${BACKENDS.join(', ')}, got ${raw}`);
  }, 'backends to run on (default: every one that starts)', { placeholder: '<cpu,wasm,webgpu>' }),
  batch: numberFlag('batch size of a step', { integer: true, min: 1, default: 32 }),
  steps: numberFlag('timed repetitions per measurement (the median is reported)', { integer: true, min: 1, default: 5 }),
  width: numberFlag('model width (as flatgrad train --width; default per model)', { integer: true, min: 1 }),
  depth: numberFlag('model depth (as flatgrad train --depth; default per model)', { integer: true, min: 1 }),
  out: stringFlag('directory for bench.md, bench.json and bench.svg', { default: 'bench-out', placeholder: '<dir>' }),
};

// ------------------------------------------------------------------------------------ configs

type Kind = 'base' | 'sam' | 'wrapper';
interface OptConfig {
  name: string;
  kind: Kind;
  make(params: Tensor[], fused: boolean): optim.Optimizer | ArenaOptimizer;
}

const SGD_OPTS = { lr: 0.01, momentum: 0.9, weightDecay: 5e-4 };

function builtin(name: Builtin): OptConfig {
  switch (name) {
    case 'sgd':
      return { name, kind: 'base', make: (p, fused) => new optim.SGD(p, { ...SGD_OPTS, fused }) };
    case 'adamw':
      return { name, kind: 'base', make: (p, fused) => new optim.AdamW(p, { lr: 1e-3, weightDecay: 0.01, fused }) };
    case 'sam':
      return { name, kind: 'sam', make: (p, fused) => new optim.SAM(p, optim.SGD, { ...SGD_OPTS, rho: 0.05, fused }) };
    case 'asam':
      return { name, kind: 'sam', make: (p, fused) => new optim.ASAM(p, optim.SGD, { ...SGD_OPTS, rho: 0.5, fused }) };
    case 'looksam':
      return { name, kind: 'wrapper', make: (p, fused) => new optim.LookSAM(p, optim.SGD, { ...SGD_OPTS, rho: 0.05, k: 5, fused }) };
  }
}

function isDefinition(x: unknown): x is OptimizerDefinition {
  return typeof x === 'object' && x !== null && typeof (x as OptimizerDefinition).create === 'function' && (x as OptimizerDefinition).kernel?.kind === 'arena-kernel';
}

async function loadModule(io: CliIO, file: string, flag: string): Promise<unknown> {
  const abs = await resolvePath(io, file);
  let mod: { default?: unknown };
  try {
    mod = await import(pathToFileURL(abs).href);
  } catch (e) {
    throw new UsageError(`--${flag} ${file}: cannot load it (${(e as Error).message.split('\n')[0]})`);
  }
  if (typeof mod.default !== 'function') throw new UsageError(`--${flag} ${file}: its default export must be a function (fg) => ..., got ${typeof mod.default}`);
  const fg = await import('../../index.js');
  // The flatgrad module, with the arena API's names also at the top: examples/lion.mjs takes
  // fg.arena ({ defineOptimizer, FLAG_DECAY }), examples/friendly-sam.mjs takes fg ({ arena, optim }).
  return (mod.default as (api: unknown) => unknown)({ ...fg.arena, ...fg });
}

async function fileConfig(io: CliIO, file: string): Promise<OptConfig> {
  const made = await loadModule(io, file, 'optimizer');
  if (isDefinition(made)) return { name: made.name, kind: 'base', make: (p, fused) => made.create(p, { fused }) };
  if (typeof made === 'function' && made.prototype instanceof optim.SharpnessAware) {
    const Cls = made as unknown as new (p: Tensor[], B: optim.BaseOptimizerClass, o: Record<string, unknown>) => optim.Optimizer;
    // A defineSamVariant class (or a SAM subclass) has SAM's firstStep/secondStep: timed directly.
    const direct = made.prototype instanceof optim.SAM && !Object.prototype.hasOwnProperty.call(made.prototype, 'step');
    return { name: made.name || file, kind: direct ? 'sam' : 'wrapper', make: (p, fused) => new Cls(p, optim.SGD, { ...SGD_OPTS, fused }) };
  }
  if (typeof made === 'function' && made.prototype instanceof optim.Optimizer) {
    const Cls = made as unknown as new (p: Tensor[], o: Record<string, unknown>) => optim.Optimizer;
    return { name: made.name || file, kind: 'base', make: (p, fused) => new Cls(p, { fused }) };
  }
  throw new UsageError(`--optimizer ${file}: its default export must return a definition from fg.arena.defineOptimizer, a SAM-variant class (fg.optim.defineSamVariant) or an Optimizer class`);
}

// -------------------------------------------------------------------------------------- model

interface BenchModel {
  model: Module & { forward(x: Tensor): Tensor };
  inputShape: number[];
  numClasses: number;
}

async function makeModel(io: CliIO, spec: string, width: number | undefined, depth: number | undefined): Promise<BenchModel> {
  if ((MODEL_NAMES as readonly string[]).includes(spec)) {
    const name = spec as ModelName;
    const d = MODEL_DEFAULTS[name];
    return { model: buildModel({ model: name, width: width ?? d.width, depth: depth ?? d.depth }, 10), inputShape: [1, 28, 28], numClasses: 10 };
  }
  const made = (await loadModule(io, spec, 'model')) as Partial<BenchModel> & { forward?: unknown };
  if (made && typeof made.forward === 'function') return { model: made as BenchModel['model'], inputShape: [1, 28, 28], numClasses: 10 };
  if (made?.model && typeof made.model.forward === 'function' && Array.isArray(made.inputShape) && Number.isInteger(made.numClasses)) return made as BenchModel;
  throw new UsageError(`--model ${spec}: its default export must return a module with forward(x), or { model, inputShape, numClasses }`);
}

// ------------------------------------------------------------------------------------ counting

const KERNEL_METHODS = [
  'fill', 'cast', 'unary', 'binary', 'where', 'axpy', 'stridedCopy', 'reduce', 'argReduce', 'softmax', 'crossEntropy', 'crossEntropyBackward',
  'layerNorm', 'layerNormBackward', 'batchNorm', 'batchNormEval', 'batchNormBackward', 'matmul', 'im2col', 'col2im', 'maxPool2d', 'maxPool2dBackward', 'avgPool2d', 'avgPool2dBackward', 'gather', 'scatterAdd', 'cumsum', 'argsort', 'random',
];

const isStorage = (x: unknown): x is Storage =>
  typeof x === 'object' && x !== null && typeof (x as Storage).numel === 'number' && typeof (x as Storage).dtype === 'string' && !('params' in x);
const bytesOf = (s: Storage) => s.numel * typedArrayFor(s.dtype, 0).BYTES_PER_ELEMENT;

interface Counter {
  dispatches: number;
  bytes: number;
  reset(): void;
  /** Puts the wrapped methods back. */
  detach(): void;
}

/**
 * Counts dispatches and the bytes they touch. WebGPU: every compute pass of the runtime, with the
 * bytes of its bindings (read_write twice). cpu and wasm: every kernel call of the backend and of
 * its fused optimizer kernels, with the bytes of its storage operands, and every arena pass, with
 * the vectors its kernel reads and writes.
 */
function instrument(): Counter {
  const b = getBackend();
  const undo: (() => void)[] = [];
  const c: Counter = {
    dispatches: 0,
    bytes: 0,
    reset() {
      c.dispatches = 0;
      c.bytes = 0;
    },
    detach: () => undo.forEach((f) => f()),
  };
  const wrap = (obj: Record<string, unknown>, name: string, bytes: (args: unknown[]) => number) => {
    const f = obj[name];
    if (typeof f !== 'function') return;
    const had = Object.prototype.hasOwnProperty.call(obj, name);
    obj[name] = function (this: unknown, ...args: unknown[]) {
      c.dispatches++;
      c.bytes += bytes(args);
      return (f as (...a: unknown[]) => unknown).apply(this, args);
    };
    undo.push(() => (had ? (obj[name] = f) : delete obj[name]));
  };
  const operands = (args: unknown[]) => args.filter(isStorage).reduce((n, s) => n + bytesOf(s), 0);
  const rt = (b as unknown as { rt?: Record<string, unknown> }).rt;
  if (b.name === 'webgpu' && rt) {
    wrap(rt, 'dispatch', ([d]) => ((d as { binds?: { s: Storage; access: string }[] }).binds ?? []).reduce((n, x) => n + bytesOf(x.s) * (x.access === 'read_write' ? 2 : 1), 0));
    return c;
  }
  for (const k of KERNEL_METHODS) wrap(b as unknown as Record<string, unknown>, k, operands);
  // The hand-written fused kernels, where this build still has them (they move onto arena kernels).
  const fusedFor = (fusedModule as Record<string, unknown>).fusedKernelsFor as ((x: unknown) => Record<string, unknown> | null) | undefined;
  const fk = fusedFor?.(b);
  if (fk) for (const k of Object.keys(fk)) if (typeof fk[k] === 'function') wrap(fk, k, operands);
  const observer = (kernel: ArenaKernel, on: unknown, elements: number, dispatches: number) => {
    if (on !== b) return;
    const touched = kernel.vectors.filter((v) => v.read).length + kernel.vectors.filter((v) => v.access !== 'read').length;
    c.dispatches += dispatches;
    // The bench models are float32.
    c.bytes += touched * elements * 4;
  };
  hostPassObservers.add(observer);
  undo.push(() => hostPassObservers.delete(observer));
  return c;
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median ms of `fn` over `reps` runs (after two untimed runs: code generation, pipelines, caches), waiting for the device each time. */
async function timeMs(fn: () => void, reps: number): Promise<number> {
  const b = getBackend();
  for (let w = 0; w < 2; w++) {
    fn();
    await b.sync();
  }
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t = performance.now();
    fn();
    await b.sync();
    times.push(performance.now() - t);
  }
  return median(times);
}

// --------------------------------------------------------------------------------------- rows

export interface BenchRow {
  optimizer: string;
  backend: string;
  engine: 'fused' | 'per tensor';
  stepMs: number;
  /** stepMs over SGD's on the same backend and engine. */
  ratioToSgd: number;
  optimizerMs: number;
  /** 'direct' (timed alone) or 'derived' (the step minus its passes). */
  optimizerTiming: 'direct' | 'derived';
  dispatches: number;
  bytes: number;
  gbPerS: number;
  copyGbPerS: number;
  /** gbPerS / copyGbPerS. */
  ofCopy: number;
  /** Why a measurement is missing. */
  note?: string;
}

interface Measured {
  stepMs: number;
  optimizerMs: number;
  optimizerTiming: 'direct' | 'derived';
  dispatches: number;
  bytes: number;
}

async function measure(cfg: OptConfig, bm: BenchModel, batch: number, reps: number, fused: boolean, counter: Counter): Promise<Measured> {
  const params = bm.model.parameters();
  const saved = params.map((p) => p.clone().keep());
  const x = randn([batch, ...bm.inputShape]).keep();
  const y = randint(0, bm.numClasses, [batch]).keep();
  const opt = cfg.make(params, fused);
  let passes = 0;
  const fwdBwd = () => {
    passes++;
    const l = crossEntropy(bm.model.forward(x), y);
    l.backward();
    return l;
  };
  try {
    const step = () =>
      tidy(() => {
        if (cfg.kind === 'base') {
          opt.zeroGrad();
          fwdBwd();
          opt.step();
        } else (opt as optim.Optimizer).step(fwdBwd);
      });
    const stepMs = await timeMs(step, reps);
    passes = 0;
    step();
    const passesPerStep = passes;
    // Gradients given: a fixed set from one more pass, kept for the optimizer side.
    opt.zeroGrad();
    tidy(() => void fwdBwd());
    const optSide =
      cfg.kind === 'base' ? () => opt.step() : cfg.kind === 'sam' ? () => ((opt as optim.SAM).firstStep(), (opt as optim.SAM).secondStep()) : null;
    let optimizerMs: number;
    let optimizerTiming: 'direct' | 'derived';
    if (optSide) {
      optimizerMs = await timeMs(optSide, reps);
      optimizerTiming = 'direct';
    } else {
      const passMs = await timeMs(() => tidy(() => void fwdBwd()), reps);
      optimizerMs = Math.max(0, stepMs - passesPerStep * passMs);
      optimizerTiming = 'derived';
    }
    await getBackend().sync();
    counter.reset();
    if (optSide) optSide();
    else step();
    await getBackend().sync();
    return { stepMs, optimizerMs, optimizerTiming, dispatches: counter.dispatches, bytes: counter.bytes };
  } finally {
    opt.dispose();
    // The next config starts from the same weights.
    params.forEach((p, k) => {
      p.grad?.dispose();
      p.grad = null;
      copyInto(p, saved[k], 'flatgrad bench');
      saved[k].dispose();
    });
    x.dispose();
    y.dispose();
  }
}

/** GB/s of a plain copy moving `bytes` (half read, half written). */
async function copyGbPerS(bytes: number, reps: number): Promise<number> {
  const b = getBackend();
  const n = Math.max(1, Math.ceil(bytes / 2 / 4));
  const src = b.alloc(n, 'float32');
  const dst = b.alloc(n, 'float32');
  try {
    const ms = await timeMs(() => b.stridedCopy(src, dst, { shape: [n], srcStrides: [1], srcOffset: 0, dstStrides: [1], dstOffset: 0 }), reps);
    return (2 * n * 4) / (ms * 1e6);
  } finally {
    b.release(src);
    b.release(dst);
  }
}

// ------------------------------------------------------------------------------------- output

const f = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
const mb = (bytes: number) => (bytes / 1e6).toFixed(2);

export function benchMarkdown(rows: readonly BenchRow[], info: Record<string, unknown>): string {
  const lines = [
    `# flatgrad bench: ${info.model} (${info.tensors} tensors, ${info.parameters} parameters), batch ${info.batch}`,
    '',
    `Medians of ${info.steps} reps, ${info.date}. Optimizer side: the update alone with the gradients given ("derived": the step minus its forward-backward passes). Bytes: operands of the dispatches of one optimizer side; GB/s against a plain copy kernel of the same bytes on the same backend.`,
    '',
    '| optimizer | backend | engine | ms/step | ratio to SGD | optimizer ms | dispatches | MB moved | GB/s | copy GB/s | of copy |',
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of rows) {
    if (r.note) {
      lines.push(`| ${r.optimizer} | ${r.backend} | ${r.engine} | ${r.note} | | | | | | | |`);
      continue;
    }
    const opt = `${f(r.optimizerMs, 3)}${r.optimizerTiming === 'derived' ? ' (derived)' : ''}`;
    lines.push(`| ${r.optimizer} | ${r.backend} | ${r.engine} | ${f(r.stepMs)} | ${f(r.ratioToSgd, 3)} | ${opt} | ${r.dispatches} | ${mb(r.bytes)} | ${f(r.gbPerS)} | ${f(r.copyGbPerS)} | ${f(r.ofCopy)} |`);
  }
  return lines.join('\n') + '\n';
}

export function benchSvg(rows: readonly BenchRow[], title: string): string {
  const measured = rows.filter((r) => !r.note);
  const categories = [...new Set(measured.map((r) => r.optimizer))];
  const seriesNames = [...new Set(measured.map((r) => `${r.backend} ${r.engine}`))];
  return barChartSvg({
    title,
    yLabel: 'ms per step',
    categories,
    series: seriesNames.map((s) => ({ name: s, values: categories.map((c) => measured.find((r) => r.optimizer === c && `${r.backend} ${r.engine}` === s)?.stepMs ?? NaN) })),
  });
}

// ------------------------------------------------------------------------------------ command

export const benchCommand = defineCommand({
  name: 'bench',
  summary: 'time optimizers (fused and per tensor) on a model: ms/step, dispatches, GB/s',
  synopsis: '[flags]',
  positionals: { min: 0, max: 0, names: '' },
  flags,
  notes: [
    'examples:',
    '  flatgrad bench --model vit --optimizer sgd,sam,asam',
    '  flatgrad bench --model vit --optimizer examples/lion.mjs --backend wasm',
    '  flatgrad bench --model mlp --optimizer examples/friendly-sam.mjs,sam --out results',
    'The benchmarks of the repository (bench/, against tfjs and jax-js) run with npm run bench.',
  ].join('\n'),
  async run({ flags: fl }, io) {
    if (!(MODEL_NAMES as readonly string[]).includes(fl.model) && !MODULE_FILE.test(fl.model)) {
      throw new UsageError(`--model must be one of ${MODEL_NAMES.join(', ')} or a module file (.mjs/.js), got ${fl.model}`);
    }
    const names = ['sgd', ...fl.optimizer.filter((o) => o !== 'sgd')];
    const configs: OptConfig[] = [];
    for (const n of names) configs.push((BUILTIN as readonly string[]).includes(n) ? builtin(n as Builtin) : await fileConfig(io, n));
    const backends = fl.backend ?? [...BACKENDS];
    const outDir = await resolvePath(io, fl.out);
    const rows: BenchRow[] = [];
    const info: Record<string, unknown> = { date: new Date().toISOString(), model: fl.model, batch: fl.batch, steps: fl.steps, adapters: {} };
    const progress = new ProgressBar(io.stderr, { total: backends.length * configs.length * 2, label: 'bench' });
    let done = 0;
    for (const backend of backends) {
      try {
        const facts = await startBackend(backend, undefined, io);
        (info.adapters as Record<string, string>)[backend] = facts.adapter;
      } catch (e) {
        if (fl.backend) throw new Error(`--backend ${backend}: ${(e as Error).message.split('\n')[0]}`);
        io.stderr.write(`bench: skipping ${backend}: ${(e as Error).message.split('\n')[0]}\n`);
        done += configs.length * 2;
        continue;
      }
      const { manualSeed } = await import('../../index.js');
      manualSeed(1);
      const bm = await makeModel(io, fl.model, fl.width, fl.depth);
      const params = bm.model.parameters();
      info.tensors = params.length;
      info.parameters = params.reduce((n, p) => n + p.size, 0);
      const counter = instrument();
      try {
        for (const engine of ['fused', 'per tensor'] as const) {
          for (const cfg of configs) {
            const base = { optimizer: cfg.name, backend, engine };
            try {
              const m = await measure(cfg, bm, fl.batch, fl.steps, engine === 'fused', counter);
              const copy = await copyGbPerS(m.bytes, fl.steps);
              const gb = m.bytes / (m.optimizerMs * 1e6);
              rows.push({ ...base, ...m, ratioToSgd: NaN, gbPerS: gb, copyGbPerS: copy, ofCopy: gb / copy });
            } catch (e) {
              // A configuration that cannot run here (an optimizer file that a backend rejects) is a row
              // that says why, rather than the end of the table.
              rows.push({ ...base, stepMs: NaN, ratioToSgd: NaN, optimizerMs: NaN, optimizerTiming: 'direct', dispatches: 0, bytes: 0, gbPerS: NaN, copyGbPerS: NaN, ofCopy: NaN, note: `n/a: ${(e as Error).message.split('\n')[0]}` });
            }
            progress.update(++done);
          }
        }
      } finally {
        counter.detach();
        for (const p of params) p.dispose();
      }
    }
    progress.finish(done);
    for (const r of rows) {
      const sgd = rows.find((s) => s.optimizer === 'sgd' && s.backend === r.backend && s.engine === r.engine && !s.note);
      r.ratioToSgd = sgd ? r.stepMs / sgd.stepMs : NaN;
    }
    await mkdir(outDir, { recursive: true });
    const md = benchMarkdown(rows, info);
    await writeFile(join(outDir, 'bench.md'), md);
    await writeFile(join(outDir, 'bench.json'), JSON.stringify({ info, rows }, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 1) + '\n');
    await writeFile(join(outDir, 'bench.svg'), benchSvg(rows, `flatgrad bench: ${fl.model}, batch ${fl.batch}`));
    io.stdout.write(md);
    io.stdout.write(`\nwrote ${join(outDir, 'bench.md')}, bench.json and bench.svg\n`);
    return 0;
  },
});
