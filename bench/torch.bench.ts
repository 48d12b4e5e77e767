/**
 * The small ResNet's whole SGD and SAM steps at batch 128, flatgrad wasm against PyTorch on the
 * same cores (issue #13: "within 1.5x of PyTorch"). The model is `flatgrad train --model cnn` at
 * its defaults: nn.models.resnetSmall, widths 8/16/32, one BasicBlock per stage, BatchNorm in train
 * mode, 28x28x1 input, 10 classes.
 *
 *   SGD step: forward, cross-entropy, backward, SGD (lr 0.01, momentum 0.9)
 *   SAM step: davda54/sam's: forward-backward at w, e = 0.05 g / ||g|| (one global norm), p += e,
 *             forward-backward at w + e, restore w, the same SGD step with g(w + e)
 *
 * Contenders, each in its own processes:
 *   flatgrad wasm, 1 and 2 threads, captured (fg.compile, as `flatgrad train` runs its step) and eager;
 *   PyTorch (Debian's python3-torch, bench/torch_steps.py) with torch.set_num_threads(1) and (2).
 * The driver draws the weights from flatgrad's initializers (fg.manualSeed(0)), a random batch and
 * labels, and writes them to one file that every process loads, so every contender starts from the
 * same weights on the same batch. A process runs `--warmup` iterations and then `--steps` timed
 * ones; each iteration is one SGD step (on its copy of the model) and one SAM step (on another),
 * each timed from the call to its loss read back on the host. The losses of every step are kept:
 * the first step's loss checks the same forward pass, the loss at the last step checks that N steps
 * of the same optimizer moved the weights the same way.
 *
 * Interleaving: `--rounds` rounds; in each round every contender runs one process, in an order
 * that rotates from round to round, so the machine's other load falls on all of them. A contender's
 * figure is the median over its processes of each process's median step time.
 *
 * Python: $FLATGRAD_PYTHON, else the first of /usr/bin/python3 and python3 that imports torch. With
 * none, the bench says so and writes a "skipped" results file, exit code 0.
 *
 *   npx esbuild bench/torch.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/torch.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/torch.bench.mjs [--quick] [--rounds=5] [--steps=5] [--warmup=3] [--no-eager]
 *
 * Writes bench/results/torch.json and bench/results/torch.md.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as fg from '../src/index.js';

const BATCH = 128;
const WIDTHS = [8, 16, 32];
const CLASSES = 10;
const LR = 0.01;
const MOMENTUM = 0.9;
const RHO = 0.05;

const args = process.argv.slice(2);
const flag = (k: string) => args.includes(`--${k}`);
const opt = (k: string) => args.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3);
const num = (k: string, d: number) => Number(opt(k) ?? d);

/** The repository root (the bundle lives in node_modules/.cache/flatgrad, the source in bench/). */
function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (dir !== path.dirname(dir)) {
    try {
      if (JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')).name === 'flatgrad') return dir;
    } catch {
      // no package.json here: go up
    }
    dir = path.dirname(dir);
  }
  throw new Error('torch.bench: cannot find the flatgrad repository root above the bundle');
}

interface StepRecord {
  sgdMs: number[];
  samMs: number[];
  sgdLoss: number[];
  samLoss: number[];
}

interface Entry {
  name: string;
  offset: number;
  shape: number[];
}

function makeModel() {
  return fg.nn.models.resnetSmall({ inChannels: 1, numClasses: CLASSES, widths: WIDTHS, blocksPerStage: 1 });
}

// ---------------------------------------------------------------------------------------------
// Worker: one flatgrad process (--worker=flatgrad --threads=N --mode=captured|eager --data=DIR)

async function flatgradWorker(dir: string, threads: number, mode: string, warmup: number, steps: number): Promise<void> {
  const info = await fg.init({ backend: 'wasm', threads });
  const meta = JSON.parse(readFileSync(path.join(dir, 'problem.json'), 'utf8')) as { params: Entry[]; x: Entry; y: Entry };
  const bin = readFileSync(path.join(dir, 'problem.bin'));
  const f32 = (e: Entry) => new Float32Array(bin.buffer.slice(bin.byteOffset + e.offset, bin.byteOffset + e.offset + 4 * e.shape.reduce((a, b) => a * b, 1)));
  const state = Object.fromEntries(meta.params.map((e) => [e.name, f32(e)]));
  const x = fg.tensor(f32(meta.x), { shape: meta.x.shape }).keep();
  const yData = new Int32Array(bin.buffer.slice(bin.byteOffset + meta.y.offset, bin.byteOffset + meta.y.offset + 4 * meta.y.shape[0]));
  const y = fg.tensor(yData, { dtype: 'int32' }).keep();
  const build = (kind: 'sgd' | 'sam') => {
    const model = makeModel();
    model.loadStateDict(state, { strict: false });
    model.train();
    const o = kind === 'sgd' ? new fg.optim.SGD(model.parameters(), { lr: LR, momentum: MOMENTUM }) : new fg.optim.SAM(model.parameters(), fg.optim.SGD, { rho: RHO, lr: LR, momentum: MOMENTUM });
    const closure = (xb: fg.Tensor, yb: fg.Tensor) => () =>
      fg.tidy(() => {
        const l = fg.crossEntropy(model.forward(xb), yb);
        l.backward();
        return l;
      });
    // The step as `flatgrad train` writes it (src/cli/optimizers.ts), captured unless --mode=eager.
    return fg.compile(
      function step(xb: fg.Tensor, yb: fg.Tensor): fg.Tensor {
        if (o instanceof fg.optim.SharpnessAware) return (o.step(closure(xb, yb)) as fg.Tensor).detach();
        o.zeroGrad();
        const l = closure(xb, yb)();
        o.step();
        return l.detach();
      },
      { eager: mode === 'eager', onMessage: (m) => { throw new Error(`torch.bench: the ${kind} step could not be captured: ${m}`); } },
    );
  };
  const steppers = { sgd: build('sgd'), sam: build('sam') };
  const out: StepRecord & { describe: string } = { describe: `flatgrad ${info.name} (${threads} thread${threads > 1 ? 's' : ''}, ${mode})`, sgdMs: [], samMs: [], sgdLoss: [], samLoss: [] };
  for (let i = 0; i < warmup + steps; i++) {
    for (const kind of ['sgd', 'sam'] as const) {
      const t0 = performance.now();
      const l = steppers[kind](x, y);
      const v = await l.item();
      const ms = performance.now() - t0;
      l.dispose();
      out[`${kind}Loss`].push(v);
      if (i >= warmup) out[`${kind}Ms`].push(ms);
    }
  }
  console.log(JSON.stringify(out));
}

// ---------------------------------------------------------------------------------------------
// Driver

const median = (v: number[]) => {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** The first python that imports torch, with its version, or why there is none. */
function findTorch(): { python: string; version: string } | { missing: string } {
  const candidates = process.env.FLATGRAD_PYTHON ? [process.env.FLATGRAD_PYTHON] : ['/usr/bin/python3', 'python3'];
  const tried: string[] = [];
  for (const py of candidates) {
    const r = spawnSync(py, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
    if (r.status === 0) return { python: py, version: r.stdout.trim() };
    tried.push(`${py}: ${r.error ? r.error.message : (r.stderr.trim().split('\n').pop() ?? `exit ${r.status}`)}`);
  }
  return { missing: `no python with torch (${tried.join('; ')})` };
}

/** Weights from flatgrad's own initializers, a batch and labels, all in one binary file and its index. */
async function writeProblem(dir: string): Promise<void> {
  await fg.init({ backend: 'cpu' });
  fg.manualSeed(0);
  const model = makeModel();
  const parts: { entry: Entry; bytes: Uint8Array }[] = [];
  let offset = 0;
  const add = (name: string, shape: number[], data: Float32Array | Int32Array) => {
    parts.push({ entry: { name, offset, shape }, bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) });
    offset += data.byteLength;
    return parts[parts.length - 1].entry;
  };
  for (const [name, t] of model.namedParameters()) add(name, t.shape, (await t.data()) as Float32Array);
  const x = add('x', [BATCH, 1, 28, 28], (await fg.randn([BATCH, 1, 28, 28]).data()) as Float32Array);
  const y = add('y', [BATCH], (await fg.randint(0, CLASSES, [BATCH]).data()) as Int32Array);
  const params = parts.slice(0, -2).map((p) => p.entry);
  writeFileSync(path.join(dir, 'problem.bin'), Buffer.concat(parts.map((p) => p.bytes)));
  writeFileSync(path.join(dir, 'problem.json'), JSON.stringify({ widths: WIDTHS, classes: CLASSES, lr: LR, momentum: MOMENTUM, rho: RHO, params, x, y }));
}

interface ContenderResult {
  name: string;
  describe: string;
  threads: number;
  /** Each process's median ms per step, in round order. */
  sgdMsPerProcess: number[];
  samMsPerProcess: number[];
  sgdMs: number;
  samMs: number;
  /** The first process's losses at every step (warmup included). */
  sgdLoss: number[];
  samLoss: number[];
}

async function driver(): Promise<void> {
  const root = repoRoot();
  const resultsDir = path.join(root, 'bench', 'results');
  mkdirSync(resultsDir, { recursive: true });
  const quick = flag('quick');
  const rounds = num('rounds', quick ? 1 : 5);
  const steps = num('steps', quick ? 2 : 5);
  // compile traces on the second call and replays from the third: three warm-up iterations.
  const warmup = num('warmup', quick ? 2 : 3);
  const machine = { cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length, node: process.version, loadavgBefore: os.loadavg(), loadavgAfter: [] as number[] };
  const torch = findTorch();
  const write = (json: unknown, md: string) => {
    writeFileSync(path.join(resultsDir, 'torch.json'), JSON.stringify(json, null, 2) + '\n');
    writeFileSync(path.join(resultsDir, 'torch.md'), md);
    console.log(md);
  };
  if ('missing' in torch) {
    const line = `skipped: ${torch.missing}; install Debian's python3-torch (or set FLATGRAD_PYTHON) to run this bench`;
    write({ bench: 'torch', skipped: line, machine }, `# flatgrad wasm against PyTorch: small ResNet steps (bench/torch.bench.ts)\n\n${line}\n`);
    return;
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'flatgrad-torch-bench-'));
  try {
    await writeProblem(dir);
    const self = fileURLToPath(import.meta.url);
    const script = path.join(root, 'bench', 'torch_steps.py');
    const modes = flag('no-eager') ? ['captured'] : ['captured', 'eager'];
    const common = [`--warmup=${warmup}`, `--steps=${steps}`];
    const contenders = [
      ...[1, 2].flatMap((t) => modes.map((m) => ({ name: `flatgrad wasm ${m}, ${t} thread${t > 1 ? 's' : ''}`, threads: t, cmd: process.execPath, argv: [self, '--worker=flatgrad', `--threads=${t}`, `--mode=${m}`, `--data=${dir}`, ...common] }))),
      ...[1, 2].map((t) => ({ name: `PyTorch ${torch.version}, ${t} thread${t > 1 ? 's' : ''}`, threads: t, cmd: torch.python, argv: [script, '--data', dir, '--threads', `${t}`, '--warmup', `${warmup}`, '--steps', `${steps}`] })),
    ];
    const runs = new Map<string, (StepRecord & { describe?: string; torch?: string })[]>();
    for (let r = 0; r < rounds; r++) {
      for (let k = 0; k < contenders.length; k++) {
        const c = contenders[(k + r) % contenders.length];
        const t0 = performance.now();
        const p = spawnSync(c.cmd, c.argv, { encoding: 'utf8', maxBuffer: 1 << 24 });
        if (p.status !== 0) throw new Error(`torch.bench: ${c.name} failed (exit ${p.status}${p.error ? `, ${p.error.message}` : ''}):\n${p.stderr}`);
        const rec = JSON.parse(p.stdout.trim().split('\n').pop()!) as StepRecord;
        console.error(`round ${r + 1}/${rounds} ${c.name}: SGD ${median(rec.sgdMs).toFixed(1)} ms, SAM ${median(rec.samMs).toFixed(1)} ms (process ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
        runs.set(c.name, [...(runs.get(c.name) ?? []), rec]);
      }
    }
    machine.loadavgAfter = os.loadavg();
    const results: ContenderResult[] = contenders.map((c) => {
      const rs = runs.get(c.name)!;
      const sgdPer = rs.map((x) => median(x.sgdMs));
      const samPer = rs.map((x) => median(x.samMs));
      return { name: c.name, describe: rs[0].describe ?? `PyTorch ${rs[0].torch} (torch.set_num_threads(${c.threads}))`, threads: c.threads, sgdMsPerProcess: sgdPer, samMsPerProcess: samPer, sgdMs: median(sgdPer), samMs: median(samPer), sgdLoss: rs[0].sgdLoss, samLoss: rs[0].samLoss };
    });
    const n = warmup + steps;
    const ref = (t: number) => results.find((x) => x.name.startsWith('PyTorch') && x.threads === t)!;
    const md: string[] = [
      '# flatgrad wasm against PyTorch: small ResNet steps (bench/torch.bench.ts)',
      '',
      `The model of \`flatgrad train --model cnn\` (resnetSmall, widths ${WIDTHS.join('/')}, BatchNorm in train mode), batch ${BATCH}, 28x28x1, the same weights, batch and labels in every process. SGD: lr ${LR}, momentum ${MOMENTUM}. SAM: davda54/sam (rho ${RHO}) over the same SGD. Wall ms per step (call to loss on the host), median over ${rounds} interleaved process${rounds > 1 ? 'es' : ''} of each process's median of ${steps} steps after ${warmup} warm-up.`,
      '',
      `Machine: ${machine.cpu}, ${machine.cores} cores, Node ${machine.node}, load average ${machine.loadavgBefore.map((v) => v.toFixed(2)).join(' ')} before, ${machine.loadavgAfter.map((v) => v.toFixed(2)).join(' ')} after. PyTorch: ${torch.python} (torch ${torch.version}).`,
      '',
      '| contender | SGD ms | SAM ms | SAM / SGD | SGD / PyTorch | SAM / PyTorch | per process SGD | per process SAM |',
      '| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |',
      ...results.map((r) => {
        const t = ref(r.threads);
        return `| ${r.name} | ${r.sgdMs.toFixed(1)} | ${r.samMs.toFixed(1)} | ${(r.samMs / r.sgdMs).toFixed(2)} | ${(r.sgdMs / t.sgdMs).toFixed(2)}x | ${(r.samMs / t.samMs).toFixed(2)}x | ${r.sgdMsPerProcess.map((v) => v.toFixed(0)).join(', ')} | ${r.samMsPerProcess.map((v) => v.toFixed(0)).join(', ')} |`;
      }),
      // A contender whose processes differ several-fold met the machine's other load (PyTorch's
      // OpenMP threads spin-wait, so two threads on two busy cores can lose 10x): say so by name.
      ...results
        .filter((r) => [r.sgdMsPerProcess, r.samMsPerProcess].some((v) => Math.max(...v) > 3 * Math.min(...v)))
        .map((r) => `\nUneven: the processes of ${r.name} range ${Math.min(...r.sgdMsPerProcess).toFixed(0)}-${Math.max(...r.sgdMsPerProcess).toFixed(0)} ms per SGD step and ${Math.min(...r.samMsPerProcess).toFixed(0)}-${Math.max(...r.samMsPerProcess).toFixed(0)} per SAM step; the machine's other load fell on some of them, and the median is the figure.`),
      '',
      `The ratio columns divide by PyTorch with the same number of threads. Check that all compute the same thing: the loss at step 1 (the initial weights) and at step ${n} (after ${n - 1} updates), from each contender's first process:`,
      '',
      `| contender | SGD loss step 1 | SGD loss step ${n} | SAM loss step 1 | SAM loss step ${n} | max over the ${n} steps of abs(loss - PyTorch's) (SGD, SAM) |`,
      '| --- | ---: | ---: | ---: | ---: | --- |',
      ...results.map((r) => {
        const t = ref(r.threads);
        const gap = (a: number[], b: number[]) => Math.max(...a.map((v, i) => Math.abs(v - b[i]))).toExponential(1);
        return `| ${r.name} | ${r.sgdLoss[0].toFixed(6)} | ${r.sgdLoss[n - 1].toFixed(6)} | ${r.samLoss[0].toFixed(6)} | ${r.samLoss[n - 1].toFixed(6)} | ${gap(r.sgdLoss, t.sgdLoss)}, ${gap(r.samLoss, t.samLoss)} |`;
      }),
      '',
    ];
    write({ bench: 'torch', model: { name: 'resnetSmall', widths: WIDTHS, batch: BATCH, lr: LR, momentum: MOMENTUM, rho: RHO }, rounds, steps, warmup, machine, torch, results }, md.join('\n'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const worker = opt('worker');
if (worker === 'flatgrad') await flatgradWorker(opt('data')!, num('threads', 1), opt('mode') ?? 'captured', num('warmup', 3), num('steps', 5));
else if (worker !== undefined) throw new Error(`torch.bench: unknown --worker=${worker}`);
else await driver();
