/**
 * Whole training steps side by side: an MLP 784-256-256-10 at batch 128, float32, random inputs
 * and labels from a fixed seed, the same initial weights in every library.
 *
 *   SGD step: forward, backward, p -= lr * g                (lr 0.01, no momentum)
 *   SAM step: forward-backward at w, e = rho g / ||g||, forward-backward at w + e, restore w,
 *             p -= lr * g(w + e)                           (rho 0.05)
 *
 * Two families, each in its own process, every library of a family on the same device:
 *   webgpu: flatgrad webgpu, @tensorflow/tfjs-backend-webgpu, @jax-js/jax on webgpu (jit)
 *   wasm:   flatgrad wasm with 2 threads and with 1 thread, @tensorflow/tfjs-backend-wasm,
 *           @jax-js/jax on wasm (jit)
 * Each library is written as its users would write it: flatgrad with nn.models.mlp, optim.SGD and
 * optim.SAM; tfjs with tf.variableGrads, a per-variable perturb (backup + assign) and restore, and
 * tf.train.sgd; jax-js with one jitted step function over the parameter list (valueAndGrad, and
 * for SAM the perturbed gradient inside the same jit). The SGD and the SAM step train separate
 * copies of the model, so the losses after the same number of steps agree across libraries (they
 * are reported as a check that all of them compute the same thing).
 *
 * Timing: warmup steps, then rounds; in each round every library (in a rotating order) does one
 * SGD step and one SAM step, each timed from the call to the end of an awaited readback of its
 * loss (so all of the step's work is complete). A process reports each library's median; the
 * whole measurement runs in several separate processes and the report is the median of those.
 *
 * Run (bundles the TypeScript, keeps the benchmark libraries as ordinary node_modules imports):
 *   npx esbuild bench/steps.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/steps.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/steps.bench.mjs [--quick] [--procs=3] [--families=webgpu,wasm]
 * (or `npm run bench`, which runs every bench). Without --family it is the driver: it spawns
 * itself once per family and process (--family=F --out=FILE), then writes bench/results/steps.json
 * and bench/results/steps.md. Other processes on the machine skew everything (on SwiftShader the
 * GPU is the CPU cores): the CPU model and the load average are recorded.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// ---------------------------------------------------------------------------------------------
// The problem, identical for every library

const SIZES = [784, 256, 256, 10];
const BATCH = 128;
const LR = 0.01;
const RHO = 0.05;

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

type F32 = Float32Array<ArrayBuffer>;
interface Problem {
  /** Per layer: weight [in, out] row-major and bias [out]; uniform(-1/sqrt(in), 1/sqrt(in)). */
  weights: F32[];
  biases: F32[];
  x: F32;
  labels: Int32Array<ArrayBuffer>;
}

function makeProblem(): Problem {
  const r = lcg(1);
  const weights: F32[] = [];
  const biases: F32[] = [];
  for (let i = 0; i + 1 < SIZES.length; i++) {
    const [fi, fo] = [SIZES[i], SIZES[i + 1]];
    const bound = 1 / Math.sqrt(fi);
    weights.push(Float32Array.from({ length: fi * fo }, () => (2 * r() - 1) * bound));
    biases.push(Float32Array.from({ length: fo }, () => (2 * r() - 1) * bound));
  }
  const x = Float32Array.from({ length: BATCH * SIZES[0] }, () => 2 * r() - 1);
  const labels = Int32Array.from({ length: BATCH }, () => Math.floor(r() * SIZES[SIZES.length - 1]));
  return { weights, biases, x, labels };
}

function transpose(a: F32, rows: number, cols: number): F32 {
  const t = new Float32Array(a.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = a[i * cols + j];
  return t;
}

// ---------------------------------------------------------------------------------------------
// Contenders

type Family = 'webgpu' | 'wasm';

interface Contender {
  name: string;
  /** What it is, for the report (versions, threads, adapter). */
  describe: string;
  /** One SGD step on its SGD copy of the model; resolves to the loss, read back from the device. */
  sgd: () => Promise<number>;
  /** One SAM step on its SAM copy of the model; resolves to the (first-pass) loss. */
  sam: () => Promise<number>;
}

interface Failure {
  name: string;
  stage: string;
  error: string;
}

function errorText(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

type FG = typeof import('../src/index.js');
type Registry = typeof import('../src/kernels/registry.js');

async function flatgradContender(fg: FG, registry: Registry, p: Problem, name: string, initOpts: Parameters<FG['init']>[0]): Promise<Contender> {
  const info = await fg.init(initOpts);
  const backend = registry.getBackend();
  const { nn, optim } = fg;
  // nn.Linear holds weight as [out, in].
  const makeModel = () => {
    const model = nn.models.mlp(SIZES);
    const sd: Record<string, Float32Array> = {};
    const named = model.namedParameters();
    for (let i = 0; i + 1 < SIZES.length; i++) {
      sd[named[2 * i][0]] = transpose(p.weights[i], SIZES[i], SIZES[i + 1]);
      sd[named[2 * i + 1][0]] = p.biases[i];
    }
    model.loadStateDict(sd);
    return model;
  };
  const x = fg.tensor(p.x, { shape: [BATCH, SIZES[0]] });
  const y = fg.tensor(p.labels, { dtype: 'int32' });
  const sgdModel = makeModel();
  const samModel = makeModel();
  const sgdOpt = new optim.SGD(sgdModel.parameters(), { lr: LR });
  const samOpt = new optim.SAM(samModel.parameters(), optim.SGD, { rho: RHO, lr: LR });
  const lossOf = (model: ReturnType<typeof makeModel>) => nn.functional.crossEntropy(model.forward(x), y);
  return {
    name,
    describe: `flatgrad ${info.name}: ${info.adapter}`,
    async sgd() {
      registry.setBackend(backend);
      const loss = fg.tidy(() => {
        sgdOpt.zeroGrad();
        const l = lossOf(sgdModel);
        l.backward();
        sgdOpt.step();
        return l;
      });
      const v = await loss.item();
      loss.dispose();
      return v;
    },
    async sam() {
      registry.setBackend(backend);
      const loss = fg.tidy(
        () =>
          samOpt.step(() => {
            const l = lossOf(samModel);
            l.backward();
            return l;
          }) as InstanceType<FG['Tensor']>,
      );
      const v = await loss.item();
      loss.dispose();
      return v;
    },
  };
}

type TF = typeof import('@tensorflow/tfjs');

async function tfjsContender(tf: TF, p: Problem, name: string, backendName: 'webgpu' | 'wasm'): Promise<Contender> {
  const ok = await tf.setBackend(backendName);
  if (!ok) throw new Error(`tf.setBackend('${backendName}') returned false`);
  await tf.ready();
  const makeVars = (prefix: string) => {
    const vars: import('@tensorflow/tfjs').Variable[] = [];
    for (let i = 0; i + 1 < SIZES.length; i++) {
      vars.push(tf.variable(tf.tensor2d(p.weights[i], [SIZES[i], SIZES[i + 1]]), true, `${prefix}_w${i}`));
      vars.push(tf.variable(tf.tensor1d(p.biases[i]), true, `${prefix}_b${i}`));
    }
    return vars;
  };
  const x = tf.tensor2d(p.x, [BATCH, SIZES[0]]);
  const y = tf.tidy(() => tf.oneHot(tf.tensor1d(p.labels, 'int32'), SIZES[SIZES.length - 1]));
  const lossFn = (vars: ReturnType<typeof makeVars>) => () => {
    let h: import('@tensorflow/tfjs').Tensor = x;
    for (let i = 0; i + 1 < SIZES.length; i++) {
      h = tf.add(tf.matMul(h, vars[2 * i]), vars[2 * i + 1]);
      if (i + 2 < SIZES.length) h = tf.relu(h);
    }
    return tf.losses.softmaxCrossEntropy(y, h) as import('@tensorflow/tfjs').Scalar;
  };
  const sgdVars = makeVars('sgd');
  const samVars = makeVars('sam');
  const sgdLoss = lossFn(sgdVars);
  const samLoss = lossFn(samVars);
  const sgdOpt = tf.train.sgd(LR);
  const samBase = tf.train.sgd(LR);
  let extra = '';
  if (backendName === 'wasm') {
    extra = `, SIMD ${await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')}, multithread ${await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT')}`;
  }
  return {
    name,
    describe: `@tensorflow/tfjs-backend-${backendName} ${tf.version_core}${extra}`,
    async sgd() {
      const loss = sgdOpt.minimize(sgdLoss, true, sgdVars)!;
      const v = (await loss.data())[0];
      loss.dispose();
      return v;
    },
    async sam() {
      // As davda54/sam, per variable: e = rho g / ||g||, back up p, p += e; gradient at w + e;
      // restore p from the backup; base SGD step with the second gradient.
      const first = tf.variableGrads(samLoss, samVars);
      const backups = tf.tidy(() => {
        const norm = tf.sqrt(tf.addN(samVars.map((v) => tf.sum(tf.square(first.grads[v.name])))));
        const scale = tf.div(RHO, tf.add(norm, 1e-12));
        return samVars.map((v) => {
          const old = tf.clone(v);
          v.assign(tf.add(v, tf.mul(first.grads[v.name], scale)));
          return old;
        });
      });
      tf.dispose(first.grads);
      const second = tf.variableGrads(samLoss, samVars);
      second.value.dispose();
      samVars.forEach((v, i) => v.assign(backups[i]));
      tf.dispose(backups);
      samBase.applyGradients(second.grads);
      tf.dispose(second.grads);
      const v = (await first.value.data())[0];
      first.value.dispose();
      return v;
    },
  };
}

type JAX = typeof import('@jax-js/jax');

async function jaxContender(jax: JAX, p: Problem, name: string, device: 'webgpu' | 'wasm'): Promise<Contender> {
  const devices = await jax.init(device);
  if (!devices.includes(device)) throw new Error(`jax.init('${device}') returned [${devices.join(', ')}]`);
  jax.defaultDevice(device);
  const { numpy: np, nn, jit, valueAndGrad, grad, tree } = jax;
  type A = import('@jax-js/jax').numpy.Array;
  const makeParams = (): A[] => {
    const ps: A[] = [];
    for (let i = 0; i + 1 < SIZES.length; i++) {
      ps.push(np.array(p.weights[i]).reshape([SIZES[i], SIZES[i + 1]]));
      ps.push(np.array(p.biases[i]));
    }
    return ps;
  };
  const x = np.array(p.x).reshape([BATCH, SIZES[0]]);
  const y = nn.oneHot(np.array(p.labels, { dtype: np.int32 }), SIZES[SIZES.length - 1]);
  // jax-js's ownership rules: every argument is consumed; .ref where a value is used again.
  const lossFn = (ps: A[], xs: A, ys: A): A => {
    let h = xs;
    for (let i = 0; i + 1 < SIZES.length; i++) {
      h = np.matmul(h, ps[2 * i]).add(ps[2 * i + 1]);
      if (i + 2 < SIZES.length) h = nn.relu(h);
    }
    return nn.logSoftmax(h, -1).mul(ys).sum().mul(-1 / BATCH);
  };
  const sgdStep = jit((ps: A[], xs: A, ys: A): [A[], A] => {
    const [loss, g] = valueAndGrad(lossFn)(tree.ref(ps), xs, ys);
    return [ps.map((pi, i) => pi.sub(g[i].mul(LR))), loss];
  });
  const samStep = jit((ps: A[], xs: A, ys: A): [A[], A] => {
    const [loss, g] = valueAndGrad(lossFn)(tree.ref(ps), xs.ref, ys.ref);
    const norm = np.sqrt(g.map((gi) => np.square(gi.ref).sum()).reduce((a, b) => a.add(b)));
    const scale = np.divide(RHO, norm.add(1e-12));
    const perturbed = ps.map((pi, i) => pi.ref.add(g[i].mul(scale.ref)));
    scale.dispose();
    const g2 = grad(lossFn)(perturbed, xs, ys);
    return [ps.map((pi, i) => pi.sub(g2[i].mul(LR))), loss];
  });
  let sgdParams = makeParams();
  let samParams = makeParams();
  const run = async (step: typeof sgdStep, ps: A[]): Promise<[A[], number]> => {
    const [next, loss] = step(ps, x.ref, y.ref);
    const v = (await loss.data())[0];
    // jax-js is lazy: make sure the updated parameters are computed too, not just the loss.
    await jax.blockUntilReady(next);
    return [next, v];
  };
  return {
    name,
    describe: `@jax-js/jax ${device} device, jit(valueAndGrad)`,
    async sgd() {
      const [next, v] = await run(sgdStep, sgdParams);
      sgdParams = next;
      return v;
    },
    async sam() {
      const [next, v] = await run(samStep, samParams);
      samParams = next;
      return v;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// One process: one family

interface ContenderResult {
  name: string;
  describe: string;
  sgdMs: number | null;
  samMs: number | null;
  firstSgdMs: number | null;
  firstSamMs: number | null;
  sgdTimes: number[];
  samTimes: number[];
  initialLoss: number | null;
  /** Loss read back by the last SGD and the last SAM step (same number of steps for every library). */
  lastSgdLoss: number | null;
  lastSamLoss: number | null;
  steps: number;
  error?: string;
}

interface FamilyRun {
  family: Family;
  date: string;
  pid: number;
  adapter: string;
  adapterDetails?: unknown;
  machine: { cpu: string; cores: number; node: string; loadavgBefore: number[]; loadavgAfter: number[] };
  warmup: number;
  rounds: number;
  results: ContenderResult[];
  failures: Failure[];
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[n >> 1] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

async function runFamily(family: Family, opts: { warmup: number; rounds: number; budgetMs: number }): Promise<FamilyRun> {
  const loadavgBefore = os.loadavg();
  const failures: Failure[] = [];
  const problem = makeProblem();
  const makers: { name: string; make: () => Promise<Contender> }[] = [];
  let adapter = '';
  let adapterDetails: unknown;

  if (family === 'webgpu') {
    // The peers find WebGPU as a browser exposes it: Dawn goes in as navigator.gpu before they load.
    const { SWIFTSHADER_ICD } = await import('../src/kernels/webgpu/device.js');
    if (process.platform === 'linux' && !process.env.VK_ICD_FILENAMES && existsSync(SWIFTSHADER_ICD)) process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
    const dawn = (await import('webgpu')) as unknown as { create: (o: string[]) => GPU; globals: object };
    Object.assign(globalThis, dawn.globals);
    const gpu = dawn.create([]);
    (globalThis as Record<string, unknown>).__stepsBenchGpu = gpu; // Dawn's instance must outlive its devices
    Object.defineProperty(globalThis, 'navigator', { value: { gpu, userAgent: `Node.js ${process.version}` }, configurable: true, writable: true });
    const fg = await import('../src/index.js');
    const registry = await import('../src/kernels/registry.js');
    makers.push({
      name: 'flatgrad webgpu',
      make: async () => {
        const c = await flatgradContender(fg, registry, problem, 'flatgrad webgpu', { backend: 'webgpu', gpu });
        const info = fg.backendInfo();
        adapter = info.adapter;
        adapterDetails = info.details;
        return c;
      },
    });
    makers.push({
      name: 'tfjs-webgpu',
      make: async () => {
        const tf = await import('@tensorflow/tfjs');
        await import('@tensorflow/tfjs-backend-webgpu');
        return tfjsContender(tf, problem, 'tfjs-webgpu', 'webgpu');
      },
    });
    makers.push({ name: 'jax-js webgpu jit', make: async () => jaxContender(await import('@jax-js/jax'), problem, 'jax-js webgpu jit', 'webgpu') });
  } else {
    const fg = await import('../src/index.js');
    const registry = await import('../src/kernels/registry.js');
    makers.push({
      name: 'flatgrad wasm 2T',
      make: async () => {
        const c = await flatgradContender(fg, registry, problem, 'flatgrad wasm 2T', { backend: 'wasm', threads: 2 });
        const info = fg.backendInfo();
        adapter = info.adapter;
        adapterDetails = info.details;
        return c;
      },
    });
    makers.push({ name: 'flatgrad wasm 1T', make: async () => flatgradContender(fg, registry, problem, 'flatgrad wasm 1T', { backend: 'wasm', threads: 1 }) });
    makers.push({
      name: 'tfjs-wasm',
      make: async () => {
        const tf = await import('@tensorflow/tfjs');
        await import('@tensorflow/tfjs-backend-wasm');
        return tfjsContender(tf, problem, 'tfjs-wasm', 'wasm');
      },
    });
    makers.push({ name: 'jax-js wasm jit', make: async () => jaxContender(await import('@jax-js/jax'), problem, 'jax-js wasm jit', 'wasm') });
  }

  const results: ContenderResult[] = [];
  const live: { c: Contender; r: ContenderResult }[] = [];
  for (const m of makers) {
    const r: ContenderResult = {
      name: m.name, describe: '', sgdMs: null, samMs: null, firstSgdMs: null, firstSamMs: null, sgdTimes: [], samTimes: [],
      initialLoss: null, lastSgdLoss: null, lastSamLoss: null, steps: 0,
    };
    results.push(r);
    try {
      const c = await m.make();
      r.describe = c.describe;
      live.push({ c, r });
    } catch (e) {
      r.error = `setup: ${errorText(e)}`;
      failures.push({ name: m.name, stage: 'setup', error: errorText(e) });
      console.error(`# ${m.name} failed in setup: ${errorText(e)}`);
    }
  }

  const timed = async (f: () => Promise<number>): Promise<[number, number]> => {
    const t = performance.now();
    const loss = await f();
    return [performance.now() - t, loss];
  };
  const drop = (x: { c: Contender; r: ContenderResult }, stage: string, e: unknown) => {
    x.r.error = `${stage}: ${errorText(e)}`;
    failures.push({ name: x.r.name, stage, error: errorText(e) });
    console.error(`# ${x.r.name} failed in ${stage}: ${errorText(e)}`);
    live.splice(live.indexOf(x), 1);
  };

  // Warmup (compiles pipelines, jit traces, fills pools); the first step of each kind is recorded.
  for (const x of live.slice()) {
    try {
      for (let i = 0; i < opts.warmup; i++) {
        const [ms, loss] = await timed(x.c.sgd);
        if (i === 0) {
          x.r.firstSgdMs = ms;
          x.r.initialLoss = loss;
        }
        x.r.lastSgdLoss = loss;
      }
      for (let i = 0; i < opts.warmup; i++) {
        const [ms, loss] = await timed(x.c.sam);
        if (i === 0) x.r.firstSamMs = ms;
        x.r.lastSamLoss = loss;
      }
      x.r.steps = opts.warmup;
      console.error(`# ${x.r.name}: warm (first SGD step ${x.r.firstSgdMs!.toFixed(0)} ms, first SAM step ${x.r.firstSamMs!.toFixed(0)} ms)`);
    } catch (e) {
      drop(x, 'warmup', e);
    }
  }

  // Rounds, interleaved, with a rotating order so that no library always follows the same one.
  const started = performance.now();
  let rounds = 0;
  while (live.length && rounds < opts.rounds && (rounds < 3 || performance.now() - started < opts.budgetMs)) {
    const order = live.map((_, i) => live[(i + rounds) % live.length]);
    for (const x of order) {
      try {
        const [sgdMs, l1] = await timed(x.c.sgd);
        const [samMs, l2] = await timed(x.c.sam);
        x.r.sgdTimes.push(sgdMs);
        x.r.samTimes.push(samMs);
        x.r.lastSgdLoss = l1;
        x.r.lastSamLoss = l2;
        x.r.steps++;
      } catch (e) {
        drop(x, `round ${rounds + 1}`, e);
      }
    }
    rounds++;
  }
  for (const r of results) {
    if (r.sgdTimes.length) r.sgdMs = median(r.sgdTimes);
    if (r.samTimes.length) r.samMs = median(r.samTimes);
    console.error(`# ${r.name}: SGD ${r.sgdMs?.toFixed(1) ?? '-'} ms, SAM ${r.samMs?.toFixed(1) ?? '-'} ms over ${r.sgdTimes.length} rounds`);
  }
  return {
    family,
    date: new Date().toISOString(),
    pid: process.pid,
    adapter,
    adapterDetails,
    machine: { cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length, node: process.version, loadavgBefore, loadavgAfter: os.loadavg() },
    warmup: opts.warmup,
    rounds,
    results,
    failures,
  };
}

// ---------------------------------------------------------------------------------------------
// The driver: processes, aggregation, report

interface Aggregate {
  family: Family;
  name: string;
  describe: string;
  sgdMs: number | null;
  samMs: number | null;
  samOverSgd: number | null;
  /** Per-process medians, in process order. */
  sgdPerProcess: (number | null)[];
  samPerProcess: (number | null)[];
  firstSgdMs: number | null;
  firstSamMs: number | null;
  initialLoss: number | null;
  lastSgdLoss: number | null;
  lastSamLoss: number | null;
  /** peer / flatgrad reference, per reference (>1: flatgrad is faster). */
  ratios: Record<string, { sgd: number | null; sam: number | null }>;
  errors: string[];
}

const REFERENCES: Record<Family, string[]> = { webgpu: ['flatgrad webgpu'], wasm: ['flatgrad wasm 2T', 'flatgrad wasm 1T'] };

function aggregate(family: Family, runs: FamilyRun[]): Aggregate[] {
  const names = [...new Set(runs.flatMap((r) => r.results.map((x) => x.name)))];
  const med = (xs: (number | null)[]) => {
    const v = xs.filter((x): x is number => x !== null);
    return v.length ? median(v) : null;
  };
  const rows: Aggregate[] = names.map((name) => {
    const per = runs.map((r) => r.results.find((x) => x.name === name));
    const sgdPerProcess = per.map((x) => x?.sgdMs ?? null);
    const samPerProcess = per.map((x) => x?.samMs ?? null);
    const sgdMs = med(sgdPerProcess);
    const samMs = med(samPerProcess);
    const last = per.filter((x) => x && x.lastSgdLoss !== null).at(-1);
    return {
      family,
      name,
      describe: per.find((x) => x?.describe)?.describe ?? '',
      sgdMs,
      samMs,
      samOverSgd: med(per.map((x) => (x?.sgdMs != null && x.samMs != null ? x.samMs / x.sgdMs : null))),
      sgdPerProcess,
      samPerProcess,
      firstSgdMs: med(per.map((x) => x?.firstSgdMs ?? null)),
      firstSamMs: med(per.map((x) => x?.firstSamMs ?? null)),
      initialLoss: per.find((x) => x?.initialLoss != null)?.initialLoss ?? null,
      lastSgdLoss: last?.lastSgdLoss ?? null,
      lastSamLoss: last?.lastSamLoss ?? null,
      ratios: {},
      errors: [...new Set(per.map((x) => x?.error).filter((e): e is string => !!e))],
    };
  });
  // Ratios side by side: within each process, then the median over processes.
  for (const ref of REFERENCES[family]) {
    const base = rows.find((r) => r.name === ref);
    for (const r of rows) {
      const ratio = (a: (number | null)[], b: (number | null)[] | undefined) => med(a.map((x, i) => (x !== null && b?.[i] != null ? x / b[i]! : null)));
      r.ratios[ref] = { sgd: ratio(r.sgdPerProcess, base?.sgdPerProcess), sam: ratio(r.samPerProcess, base?.samPerProcess) };
    }
  }
  return rows;
}

function markdown(report: { date: string; procs: number; families: Record<string, { runs: FamilyRun[]; rows: Aggregate[]; processErrors: string[] }> }): string {
  const lines: string[] = [];
  const out = (l = '') => lines.push(l);
  const f = (x: number | null | undefined, d = 1) => (x == null ? '-' : x.toFixed(d));
  const allRuns = Object.values(report.families).flatMap((x) => x.runs);
  const m = allRuns[0]?.machine;
  out(`### Whole training steps: MLP ${SIZES.join('-')}, batch ${BATCH}, float32 (SGD lr ${LR}; SAM rho ${RHO} over SGD)`);
  out();
  out(
    `Measured ${report.date} on ${m?.cores ?? '?'} x ${m?.cpu ?? '?'}, Node ${m?.node ?? '?'}; median of ${report.procs} process(es) per family, ` +
      `each the median of its interleaved rounds; ratios (and SAM / SGD) are taken within each process, then the median over processes. ` +
      `Every step ends with an awaited readback of its loss.`,
  );
  out(`Load average (1/5/15 min) at the start of each process: ${allRuns.map((r) => `${r.family} ${r.machine.loadavgBefore.map((x) => x.toFixed(1)).join('/')}`).join(', ')}.`);
  out('The machine was shared with other work; on SwiftShader the GPU is these CPU cores, so the ratios measured side by side count, not the absolute times.');
  for (const [family, fam] of Object.entries(report.families)) {
    const refs = REFERENCES[family as Family];
    out();
    out(`#### ${family} family${fam.runs[0]?.adapter ? `: flatgrad backendInfo() adapter "${fam.runs[0].adapter}"` : ''}`);
    out();
    const ratioHead = refs.flatMap((r) => [`SGD peer / ${r}`, `SAM peer / ${r}`]);
    out(`| library | SGD step ms | SAM step ms | SAM / SGD | ${ratioHead.join(' | ')} | SGD ms per process | SAM ms per process |`);
    out(`| --- | ---: | ---: | ---: | ${ratioHead.map(() => '---:').join(' | ')} | --- | --- |`);
    for (const r of fam.rows) {
      const ratios = refs.flatMap((ref) => [f(r.ratios[ref]?.sgd, 2), f(r.ratios[ref]?.sam, 2)]);
      if (r.sgdMs === null && r.errors.length) {
        out(`| ${r.name} | failed | failed | - | ${ratios.join(' | ')} | - | - |`);
        continue;
      }
      out(
        `| ${r.name} | ${f(r.sgdMs)} | ${f(r.samMs)} | ${f(r.samOverSgd, 2)} | ${ratios.join(' | ')} | ` +
          `${r.sgdPerProcess.map((x) => f(x)).join(', ')} | ${r.samPerProcess.map((x) => f(x)).join(', ')} |`,
      );
    }
    out();
    out('First step (pipeline compile / jit trace included), median over processes, and the losses as a check that every library computes the same steps:');
    out();
    out('| library | first SGD step ms | first SAM step ms | initial loss | last SGD-model loss | last SAM-model loss | what ran |');
    out('| --- | ---: | ---: | ---: | ---: | ---: | --- |');
    for (const r of fam.rows) {
      out(`| ${r.name} | ${f(r.firstSgdMs, 0)} | ${f(r.firstSamMs, 0)} | ${f(r.initialLoss, 5)} | ${f(r.lastSgdLoss, 5)} | ${f(r.lastSamLoss, 5)} | ${r.describe || '-'} |`);
    }
    const errors = [...fam.processErrors.map((e) => `process: ${e}`), ...fam.rows.flatMap((r) => r.errors.map((e) => `${r.name}: ${e}`))];
    if (errors.length) {
      out();
      out('Failures (exact error text):');
      out();
      for (const e of errors) out(`- ${e.replace(/\n/g, ' ')}`);
    }
  }
  return lines.join('\n') + '\n';
}

async function driver(): Promise<void> {
  const arg = (k: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3);
  const quick = process.argv.includes('--quick');
  const procs = Number(arg('procs') ?? (quick ? 1 : 3));
  const families = (arg('families') ?? 'webgpu,wasm').split(',') as Family[];
  const passThrough = process.argv.slice(2).filter((a) => /^--(quick|rounds=|warmup=|budget=)/.test(a));
  const self = process.argv[1];
  const tmp = path.join(os.tmpdir(), `flatgrad-steps-${process.pid}`);
  mkdirSync(tmp, { recursive: true });
  const byFamily: Record<string, { runs: FamilyRun[]; rows: Aggregate[]; processErrors: string[] }> = {};
  for (const fam of families) byFamily[fam] = { runs: [], rows: [], processErrors: [] };
  // --from-json: no measuring, only the report again from the processes in bench/results/steps.json.
  const fromJson = process.argv.includes('--from-json');
  if (fromJson) {
    const old = JSON.parse(readFileSync('bench/results/steps.json', 'utf8')) as { date: string; procs: number; families: typeof byFamily };
    for (const fam of families) byFamily[fam] = { runs: old.families[fam]?.runs ?? [], rows: [], processErrors: old.families[fam]?.processErrors ?? [] };
  }
  // Processes alternate between the families, so that a change in the machine's load hits both.
  for (let p = 0; p < (fromJson ? 0 : procs); p++) {
    for (const fam of families) {
      const out = path.join(tmp, `${fam}-${p}.json`);
      console.error(`## steps: ${fam}, process ${p + 1} of ${procs} (load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')})`);
      const res = spawnSync(process.execPath, [self, `--family=${fam}`, `--out=${out}`, ...passThrough], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 8 * 60_000 });
      if (existsSync(out)) byFamily[fam].runs.push(JSON.parse(readFileSync(out, 'utf8')) as FamilyRun);
      else byFamily[fam].processErrors.push(`process ${p + 1} exited with ${res.error ? errorText(res.error) : `status ${res.status} signal ${res.signal}`} and wrote no result`);
    }
  }
  rmSync(tmp, { recursive: true, force: true });
  for (const fam of families) byFamily[fam].rows = aggregate(fam, byFamily[fam].runs);
  const report = { date: fromJson ? byFamily[families[0]].runs.at(-1)?.date ?? '' : new Date().toISOString(), procs: fromJson ? byFamily[families[0]].runs.length : procs, quick, problem: { sizes: SIZES, batch: BATCH, dtype: 'float32', lr: LR, rho: RHO }, families: byFamily };
  mkdirSync('bench/results', { recursive: true });
  writeFileSync('bench/results/steps.json', JSON.stringify(report, null, 1) + '\n');
  const md = markdown(report);
  writeFileSync('bench/results/steps.md', md);
  console.log(md);
}

async function child(family: Family, outFile: string): Promise<void> {
  const arg = (k: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3);
  const quick = process.argv.includes('--quick');
  const defaults = family === 'webgpu' ? { rounds: quick ? 3 : 7, budgetMs: quick ? 20_000 : 70_000 } : { rounds: quick ? 5 : 40, budgetMs: quick ? 5_000 : 30_000 };
  const run = await runFamily(family, {
    warmup: Number(arg('warmup') ?? 3),
    rounds: Number(arg('rounds') ?? defaults.rounds),
    budgetMs: Number(arg('budget') ?? defaults.budgetMs / 1000) * 1000,
  });
  writeFileSync(outFile, JSON.stringify(run) + '\n');
}

const familyArg = process.argv.find((a) => a.startsWith('--family='))?.slice('--family='.length) as Family | undefined;
if (familyArg) {
  const outFile = process.argv.find((a) => a.startsWith('--out='))?.slice('--out='.length) ?? `bench/results/steps-${familyArg}.tmp`;
  await child(familyArg, outFile);
} else {
  await driver();
}
// Worker threads (flatgrad's and tfjs's) and Dawn keep the event loop alive.
process.exit(0);
