/**
 * Where an eager and a captured (fg.compile) training step spend their time on the wasm backend,
 * one thread, by call kind: every backend kernel, fused arena kernel ("arena.") and every call of
 * the captured plan (its generated kernels: fusedMap, matmulEpilogue, the fused reductions, which
 * no backend wrapper sees; through planProfile of src/compile/plan.ts) is charged the process CPU
 * time (user + system) spent inside it, outermost call only. What is left of a step's CPU time is
 * host work (tape, allocation, dispatch on eager steps; argument patching and the loop on replays).
 *
 * The two contenders train their own copy of the same model from the same weights, interleaved
 * step by step (alternating order); per-round CPU-time ratios eager / captured, then the median.
 * The models are those of bench/steps (MLP 784-256-256-10, batch 128; ViT dim 32, depth 2, 4 heads,
 * MLP ratio 2, batch 32) and bench/compile.bench's ViT (--mlp-ratio=4 --batch=16).
 *
 *   npx esbuild bench/step-profile.ts --bundle --platform=node --format=esm --packages=external \
 *     --ignore-annotations --outfile=node_modules/.cache/flatgrad/step-profile.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/step-profile.mjs [--model=vit|mlp] [--batch=32] [--steps=10] [--mlp-ratio=2] [--momentum=0] [--sam] [--plain] [--patch-ab]
 *
 * --patch-ab: both contenders captured, the first with the wasm patch convolutions off
 * (conv.ts's kernels for the ViT's patch embedding), the second with them as chosen ('auto').
 *
 * Prints markdown tables.
 */
import * as fg from '../src/index.js';
import { fusedKernelsFor } from '../src/kernels/fused.js';
import { planProfile } from '../src/compile/plan.js';
import { HOST_WORK, instrumentCalls, trainStep } from './instrument.js';

const arg = (k: string, d: number) => Number(process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d);
const modelName = process.argv.find((a) => a.startsWith('--model='))?.split('=')[1] ?? 'vit';
const batch = arg('batch', modelName === 'mlp' ? 128 : 32);
const steps = arg('steps', 10);
const mlpRatio = arg('mlp-ratio', 2);
const momentum = arg('momentum', 0);
const sam = process.argv.includes('--sam');
const makeNet = () =>
  modelName === 'mlp'
    ? fg.nn.models.mlp([784, 256, 256, 10])
    : fg.nn.models.vit({ imageSize: 28, patchSize: 7, inChannels: 1, numClasses: 10, dim: 32, depth: 2, heads: 4, mlpRatio });
const inputShape = modelName === 'mlp' ? [batch, 784] : [batch, 1, 28, 28];

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** CPU ms and calls by call kind for the contender being measured (null: not measuring). */
type Acc = Map<string, { ms: number; calls: number }>;
let current: Acc | null = null;
let depth = 0;
/** Charges f's CPU time to `key`: outermost calls only (a plan's call runs the backend's wrapped method). */
function charge(key: string, f: () => unknown): unknown {
  if (!current || depth > 0) return f();
  depth++;
  const t0 = cpuMs();
  try {
    return f();
  } finally {
    depth--;
    const r = current.get(key) ?? { ms: 0, calls: 0 };
    r.ms += cpuMs() - t0;
    r.calls++;
    current.set(key, r);
  }
}

await fg.init({ backend: 'wasm', threads: 1 });
const backend = fg.getBackend();
// Installed before any step, so that captured plans bind the wrappers (and their own calls go through planProfile).
// --plain: no instrumentation (the step times and the ratio without the timers' own cost).
const plain = process.argv.includes('--plain');
if (!plain) {
  instrumentCalls([['', backend], ['arena.', fusedKernelsFor(backend)]], (name, _args, run) => charge(name, run));
  planProfile.around = (name, run) => charge(name.startsWith('fused.') ? `arena.${name.slice(6)}` : name, run);
}

fg.manualSeed(1);
const init = makeNet().stateDict();
fg.manualSeed(2);
const x = fg.randn(inputShape).keep();
const y = fg.tensor(Int32Array.from({ length: batch }, (_, i) => i % 10), { dtype: 'int32' }).keep();

const patchAB = process.argv.includes('--patch-ab');
type PatchMode = 'auto' | 'off';
interface Contender { name: string; step: () => fg.Tensor; kernels: Acc; cpu: number[]; wall: number[]; loss: number; patch: PatchMode }
function makeContender(captured: boolean, patch: PatchMode = 'auto'): Contender {
  const model = makeNet();
  model.loadStateDict(init);
  model.train();
  const sgd = { lr: 0.01, momentum };
  const opt = sam ? new fg.optim.SAM(model.parameters(), fg.optim.SGD, { ...sgd, rho: 0.05 }) : new fg.optim.SGD(model.parameters(), sgd);
  const closure = () => fg.tidy(() => {
    const l = fg.crossEntropy(model.forward(x), y);
    l.backward();
    return l;
  });
  const eager = trainStep(opt, closure);
  const step = captured ? fg.compile(eager, { onMessage: (m) => { throw new Error(m); } }) : eager;
  const name = patchAB ? `captured, patch convs ${patch}` : captured ? 'captured' : 'eager';
  return { name, step, kernels: new Map(), cpu: [], wall: [], loss: NaN, patch };
}
const contenders = patchAB ? [makeContender(true, 'off'), makeContender(true, 'auto')] : [makeContender(false), makeContender(true)];
const setPatch = (mode: PatchMode) => ((backend as unknown as { patchConvs: PatchMode }).patchConvs = mode);

const median = (v: number[]) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const WARMUP = 3; // compile traces on its second call; the third is the first replay
for (let s = 0; s < steps + WARMUP; s++) {
  for (let i = 0; i < 2; i++) {
    const c = contenders[(i + s) % 2];
    current = s >= WARMUP ? c.kernels : null;
    setPatch(c.patch);
    const w0 = performance.now();
    const t0 = cpuMs();
    const l = c.step();
    c.loss = (l.dataSync() as Float32Array)[0];
    const t1 = cpuMs();
    const w1 = performance.now();
    l.dispose();
    current = null;
    if (s >= WARMUP) {
      c.cpu.push(t1 - t0);
      c.wall.push(w1 - w0);
    }
  }
}

const f = (ms: number, d = 2) => ms.toFixed(d);
const [e, c] = contenders;
const total = (k: Acc) => [...k].reduce((a, [key, r]) => a + (HOST_WORK.has(key) ? 0 : r.ms), 0);
const mean = (v: number[]) => v.reduce((a, t) => a + t, 0) / v.length;
console.log(`\n${modelName === 'mlp' ? 'MLP 784-256-256-10' : `ViT dim 32, depth 2, 4 heads, MLP ratio ${mlpRatio}`}, batch ${batch}, wasm 1 thread, ${sam ? 'SAM (rho 0.05) over ' : ''}SGD (lr 0.01, momentum ${momentum}); ${steps} measured rounds after ${WARMUP} warm-up rounds, interleaved; process CPU time.\n`);
console.log(`| step | CPU ms per step (median / mean) | wall ms (median) |${plain ? '' : ' in kernels, ms per step (mean) | host ms per step (mean CPU - kernels) | host share |'} loss after the run |`);
console.log(`| --- | ---: | ---: |${plain ? '' : ' ---: | ---: | ---: |'} ---: |`);
for (const k of contenders) {
  const kt = total(k.kernels) / steps;
  const host = mean(k.cpu) - kt;
  console.log(`| ${k.name} | ${f(median(k.cpu))} / ${f(mean(k.cpu))} | ${f(median(k.wall))} |${plain ? '' : ` ${f(kt)} | ${f(host)} | ${f((100 * host) / mean(k.cpu), 0)}% |`} ${k.loss.toFixed(6)} |`);
}
const ratios = e.cpu.map((t, i) => t / c.cpu[i]);
console.log(`\n${contenders[0].name} / ${contenders[1].name}: ${f(median(ratios))} (CPU time, median of per-round ratios; wall ${f(median(e.wall.map((t, i) => t / c.wall[i])))}); losses ${e.loss === c.loss ? 'equal' : 'DIFFER'}.\n`);
if (plain) process.exit(0);
const [n0, n1] = contenders.map((k) => k.name);
console.log(`| call kind | ${n0} calls | ${n0} ms | ${n0} share | ${n1} calls | ${n1} ms | ${n1} share |`);
console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
const keys = [...new Set([...e.kernels.keys(), ...c.kernels.keys()])];
const get = (k: Contender, key: string) => k.kernels.get(key) ?? { ms: 0, calls: 0 };
keys.sort((a, b) => Math.max(get(e, b).ms, get(c, b).ms) - Math.max(get(e, a).ms, get(c, a).ms));
const eCpu = mean(e.cpu);
const cCpu = mean(c.cpu);
for (const k of keys) {
  const [g, m] = [get(e, k), get(c, k)];
  if (Math.max(g.ms, m.ms) / steps < 0.01) continue;
  console.log(`| ${k}${HOST_WORK.has(k) ? ' (host work)' : ''} | ${f(g.calls / steps, 0)} | ${f(g.ms / steps)} | ${f((100 * g.ms) / steps / eCpu, 1)}% | ${f(m.calls / steps, 0)} | ${f(m.ms / steps)} | ${f((100 * m.ms) / steps / cCpu, 1)}% |`);
}
const eh = eCpu - total(e.kernels) / steps;
const ch = cCpu - total(c.kernels) / steps;
console.log(`| (host: outside kernels, host work above included) | | ${f(eh)} | ${f((100 * eh) / eCpu, 1)}% | | ${f(ch)} | ${f((100 * ch) / cCpu, 1)}% |`);
process.exit(0);
