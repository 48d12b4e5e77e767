/**
 * Where the time of the small ResNet's training steps goes (`flatgrad train --model cnn`: widths
 * 8/16/32, one block per stage, 28x28x1 input; --model=vit or mlp for the other two models of
 * bench/steps) on the wasm backend, one thread, and what a SAM step
 * costs over a SGD step: every backend kernel call and every fused arena kernel call is timed (the
 * backend is synchronous on wasm, so a call's time is its kernel's), and each eager step is split
 * into forward (with the time inside Conv2d and BatchNorm2d layers), loss, backward and optimizer
 * phases. Times are this process's CPU time (process.cpuUsage, user + system), which other
 * processes on a busy machine distort far less than wall time; wall time is printed too.
 *
 * Four contenders train their own copy of the same model from the same weights, interleaved step
 * by step (rotating order): SGD and SAM (rho 0.05 over the same SGD), eager and captured
 * (fg.compile around the whole step, traced during warm-up). The SAM / SGD ratio is taken per
 * round, then the median; a per-kernel table puts SAM's calls and CPU ms next to SGD's, so the
 * kernels where SAM spends more than twice SGD's stand out.
 *
 *   npx esbuild bench/cnn-profile.ts --bundle --platform=node --format=esm --packages=external \
 *     --ignore-annotations --outfile=node_modules/.cache/flatgrad/cnn-profile.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/cnn-profile.mjs [--batch=128] [--steps=6] [--eager-only] [--model=cnn|vit|mlp] [--momentum=0.9]
 *
 * Prints markdown tables.
 */
import * as fg from '../src/index.js';
import { fusedKernelsFor } from '../src/kernels/fused.js';
import { instrumentCalls } from './instrument.js';
import { stepModel } from './models.js';

const arg = (k: string, d: number) => Number(process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d);
const batch = arg('batch', 128);
const steps = arg('steps', 6);
const eagerOnly = process.argv.includes('--eager-only');
/** SGD momentum (bench/steps uses none: --momentum=0). */
const momentum = arg('momentum', 0.9);
/** --model=vit or mlp: the same comparison for `flatgrad train --model vit` / `--model mlp` (default cnn). */
const modelName = process.argv.find((a) => a.startsWith('--model='))?.split('=')[1] ?? 'cnn';
const makeNet = () => stepModel(modelName);
const inputShape = modelName === 'mlp' ? [batch, 784] : [batch, 1, 28, 28];

/** This process's CPU time in ms. */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** CPU ms and calls by key, for the contender being measured (null: not measuring). */
type Acc = Map<string, { ms: number; calls: number }>;
let current: { kernels: Acc; layers: Acc; phases: Acc } | null = null;

/** Adds the CPU time of f() to `into` under `key` (when measuring). */
function charge<T>(into: 'kernels' | 'layers' | 'phases', key: string, f: () => T): T {
  const acc = current?.[into];
  if (!acc) return f();
  const t0 = cpuMs();
  try {
    return f();
  } finally {
    const r = acc.get(key) ?? { ms: 0, calls: 0 };
    r.ms += cpuMs() - t0;
    r.calls++;
    acc.set(key, r);
  }
}

await fg.init({ backend: 'wasm', threads: 1 });
const backend = fg.getBackend();
// Every backend kernel and fused arena kernel (SAM's norm, perturb, restore + update) is charged;
// the wrappers go in before any step, so captured plans bind them too.
instrumentCalls([['', backend], ['arena.', fusedKernelsFor(backend)]], (name, _args, run) => charge('kernels', name, run));
for (const cls of [fg.nn.Conv2d, fg.nn.BatchNorm2d] as unknown as { prototype: { forward: (x: unknown) => unknown }; name: string }[]) {
  const f = cls.prototype.forward;
  cls.prototype.forward = function (this: unknown, x: unknown) {
    return charge('layers', `${cls.name}.forward`, () => f.call(this, x));
  };
}

fg.manualSeed(1);
const init = makeNet().stateDict();
const x = fg.randn(inputShape).keep();
const y = fg.tensor(Int32Array.from({ length: batch }, (_, i) => i % 10), { dtype: 'int32' }).keep();

type Kind = 'SGD' | 'SAM';
interface Contender {
  name: string;
  kind: Kind;
  captured: boolean;
  step: () => fg.Tensor;
  kernels: Acc;
  layers: Acc;
  phases: Acc;
  cpu: number[];
  wall: number[];
  loss: number;
}

function makeContender(kind: Kind, captured: boolean): Contender {
  const model = makeNet();
  model.loadStateDict(init);
  model.train();
  const sgd = { lr: 0.01, momentum };
  const opt = kind === 'SGD' ? new fg.optim.SGD(model.parameters(), sgd) : new fg.optim.SAM(model.parameters(), fg.optim.SGD, { ...sgd, rho: 0.05 });
  // The same user code for both modes; the phases are charged in eager steps (a replay has none).
  const closure = (): fg.Tensor => {
    const logits = charge('phases', 'forward', () => model.forward(x));
    const loss = charge('phases', 'loss', () => fg.crossEntropy(logits, y));
    charge('phases', 'backward', () => loss.backward());
    return loss;
  };
  // SAM's optimizer work (its two steps around the passes, and the gradient zeroing) is charged
  // through the instance's own methods; the end of the step's scope (disposing what it made) apart.
  if (opt instanceof fg.optim.SAM) {
    for (const m of ['firstStep', 'secondStep', 'zeroGrad'] as const) {
      const f = opt[m].bind(opt);
      (opt as unknown as Record<string, unknown>)[m] = (o?: { zeroGrad?: boolean }) => charge('phases', 'optimizer', () => f(o));
    }
  }
  let scopeEnd = 0;
  const eager = function step(): fg.Tensor {
    const l = fg.tidy(() => {
      let r: fg.Tensor;
      if (kind === 'SGD') {
        charge('phases', 'optimizer', () => opt.zeroGrad());
        r = closure();
        charge('phases', 'optimizer', () => opt.step());
      } else r = opt.step(() => closure()) as fg.Tensor;
      scopeEnd = cpuMs();
      return r;
    });
    if (current) {
      const acc = current.phases.get('scope end (disposing the step\'s tensors)') ?? { ms: 0, calls: 0 };
      acc.ms += cpuMs() - scopeEnd;
      acc.calls++;
      current.phases.set('scope end (disposing the step\'s tensors)', acc);
    }
    return l;
  };
  const step = captured ? fg.compile(eager, { onMessage: (m) => { throw new Error(m); } }) : eager;
  return { name: `${kind} ${captured ? 'captured' : 'eager'}`, kind, captured, step, kernels: new Map(), layers: new Map(), phases: new Map(), cpu: [], wall: [], loss: NaN };
}

const contenders: Contender[] = [makeContender('SGD', false), makeContender('SAM', false)];
if (!eagerOnly) contenders.push(makeContender('SGD', true), makeContender('SAM', true));

const median = (v: number[]) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const WARMUP = 3; // compile traces on its second call; the third is the first replay
for (let s = 0; s < steps + WARMUP; s++) {
  const measure = s >= WARMUP;
  for (let i = 0; i < contenders.length; i++) {
    const c = contenders[(i + s) % contenders.length];
    current = measure ? c : null;
    const w0 = performance.now();
    const t0 = cpuMs();
    const l = c.step();
    c.loss = charge('phases', 'readback', () => (l.dataSync() as Float32Array)[0]);
    const t1 = cpuMs();
    const w1 = performance.now();
    l.dispose();
    current = null;
    if (measure) {
      c.cpu.push(t1 - t0);
      c.wall.push(w1 - w0);
    }
  }
}

const f = (ms: number, d = 1) => ms.toFixed(d);
const per = (ms: number) => f(ms / steps, 2);
console.log(`\n${modelName === 'cnn' ? 'resnetSmall 8/16/32' : modelName}, batch ${batch}, wasm 1 thread, SGD (lr 0.01, momentum ${momentum}) and SAM (rho 0.05) over it; ${steps} measured rounds after ${WARMUP} warm-up rounds, interleaved.\n`);
console.log('| step | CPU ms per step (median) | wall ms (median) | kernel CPU ms per step (mean) | loss after the run |');
console.log('| --- | ---: | ---: | ---: | ---: |');
for (const c of contenders) {
  const kernelTotal = [...c.kernels.values()].reduce((a, r) => a + r.ms, 0);
  console.log(`| ${c.name} | ${f(median(c.cpu))} | ${f(median(c.wall))} | ${per(kernelTotal)} | ${c.loss.toFixed(5)} |`);
}
for (const captured of eagerOnly ? [false] : [false, true]) {
  const sgd = contenders.find((c) => c.kind === 'SGD' && c.captured === captured)!;
  const sam = contenders.find((c) => c.kind === 'SAM' && c.captured === captured)!;
  const ratios = sgd.cpu.map((t, i) => sam.cpu[i] / t);
  console.log(`\nSAM / SGD ${captured ? 'captured' : 'eager'}: ${f(median(ratios), 2)} (CPU time, median of per-round ratios; wall ${f(median(sam.wall.map((t, i) => t / sgd.wall[i])), 2)})`);
}
for (const captured of eagerOnly ? [false] : [false, true]) {
  const sgd = contenders.find((c) => c.kind === 'SGD' && c.captured === captured)!;
  const sam = contenders.find((c) => c.kind === 'SAM' && c.captured === captured)!;
  console.log(`\n${captured ? 'Captured' : 'Eager'} steps by kernel (CPU ms and calls per step, mean; "arena." = fused optimizer kernels); SAM / SGD > 2.05 marked *:\n`);
  console.log('| kernel | SGD calls | SGD ms | SAM calls | SAM ms | SAM - 2 x SGD ms | SAM / SGD |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
  const keys = [...new Set([...sgd.kernels.keys(), ...sam.kernels.keys()])];
  const get = (c: Contender, k: string) => c.kernels.get(k) ?? { ms: 0, calls: 0 };
  keys.sort((a, b) => get(sam, b).ms - 2 * get(sgd, b).ms - (get(sam, a).ms - 2 * get(sgd, a).ms));
  for (const k of keys) {
    const [g, m] = [get(sgd, k), get(sam, k)];
    if (Math.max(g.ms, m.ms) / steps < 0.02) continue;
    const r = g.ms > 0 ? m.ms / g.ms : Infinity;
    console.log(`| ${k} | ${f(g.calls / steps, 0)} | ${per(g.ms)} | ${f(m.calls / steps, 0)} | ${per(m.ms)} | ${per(m.ms - 2 * g.ms)} | ${Number.isFinite(r) ? f(r, 2) : '-'}${r > 2.05 ? ' *' : ''} |`);
  }
  const kt = (c: Contender) => [...c.kernels.values()].reduce((a, r) => a + r.ms, 0);
  const host = (c: Contender) => c.cpu.reduce((a, t) => a + t, 0) - kt(c);
  console.log(`| (outside kernels: host) | | ${per(host(sgd))} | | ${per(host(sam))} | ${per(host(sam) - 2 * host(sgd))} | ${f(host(sam) / host(sgd), 2)} |`);
  if (!captured) {
    console.log('\n| eager phase | SGD CPU ms per step | SAM CPU ms per step | SAM / SGD |\n| --- | ---: | ---: | ---: |');
    const phases = [...new Set([...sgd.phases.keys(), ...sam.phases.keys(), ...sgd.layers.keys(), ...sam.layers.keys()])];
    for (const k of phases) {
      const g = sgd.phases.get(k) ?? sgd.layers.get(k) ?? { ms: 0 };
      const m = sam.phases.get(k) ?? sam.layers.get(k) ?? { ms: 0 };
      console.log(`| ${sgd.layers.has(k) ? `(inside forward) ${k}` : k} | ${per(g.ms)} | ${per(m.ms)} | ${g.ms ? f(m.ms / g.ms, 2) : '-'} |`);
    }
    const rest = (c: Contender) => c.cpu.reduce((a, t) => a + t, 0) - [...c.phases.values()].reduce((a, r) => a + r.ms, 0);
    console.log(`| rest of the step (SAM.step's own code, tidy) | ${per(rest(sgd))} | ${per(rest(sam))} | ${f(rest(sam) / rest(sgd), 2)} |`);
  }
}
process.exit(0);
