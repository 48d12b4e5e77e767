/**
 * Where the time of one SGD step of the small ResNet (`flatgrad train --model cnn`: widths
 * 8/16/32, one block per stage, 28x28x1 input) goes on the wasm backend, one thread: every backend
 * kernel call is timed (the backend is synchronous on wasm, so a call's time is its kernel's),
 * and the step is split into forward (with the time inside Conv2d and BatchNorm2d layers), loss,
 * backward and optimizer phases. Times are this process's CPU time (process.cpuUsage, user +
 * system), which other processes on a busy machine distort far less than wall time; the step's
 * wall time is printed too.
 *
 *   npx esbuild bench/cnn-profile.ts --bundle --platform=node --format=esm --packages=external \
 *     --ignore-annotations --outfile=node_modules/.cache/flatgrad/cnn-profile.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/cnn-profile.mjs [--batch=128] [--steps=6]
 *
 * It uses only the public API, so the same file profiles an older tree (e.g. an export of HEAD)
 * for a before/after comparison. Prints markdown tables.
 */
import * as fg from '../src/index.js';

const arg = (k: string, d: number) => Number(process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d);
const batch = arg('batch', 128);
const steps = arg('steps', 6);

/** This process's CPU time in ms. */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Adds the CPU time of f() to `into` under `key`. */
function charge<T>(into: Map<string, number>, key: string, f: () => T): T {
  const t0 = cpuMs();
  try {
    return f();
  } finally {
    into.set(key, (into.get(key) ?? 0) + cpuMs() - t0);
  }
}

await fg.init({ backend: 'wasm', threads: 1 });
const be = fg.getBackend() as unknown as Record<string, unknown>;
const kernelMs = new Map<string, number>();
let depth = 0;
// Wrap every method of the backend instance: only the outermost call counts (a kernel that falls
// back to another method of the backend is charged once, to itself).
let proto = Object.getPrototypeOf(be);
const names = new Set<string>();
while (proto && proto !== Object.prototype) {
  for (const n of Object.getOwnPropertyNames(proto)) if (n !== 'constructor' && typeof be[n] === 'function') names.add(n);
  proto = Object.getPrototypeOf(proto);
}
for (const n of names) {
  const f = be[n] as (...a: unknown[]) => unknown;
  be[n] = (...a: unknown[]) => {
    if (depth > 0) return f.apply(be, a);
    depth++;
    try {
      return charge(kernelMs, n, () => f.apply(be, a));
    } finally {
      depth--;
    }
  };
}

const layerMs = new Map<string, number>();
for (const cls of [fg.nn.Conv2d, fg.nn.BatchNorm2d] as unknown as { prototype: { forward: (x: unknown) => unknown }; name: string }[]) {
  const f = cls.prototype.forward;
  cls.prototype.forward = function (this: unknown, x: unknown) {
    return charge(layerMs, `${cls.name}.forward`, () => f.call(this, x));
  };
}

const model = fg.nn.models.resnetSmall({ inChannels: 1, numClasses: 10, widths: [8, 16, 32], blocksPerStage: 1 });
const opt = new fg.optim.SGD(model.parameters(), { lr: 0.01, momentum: 0.9 });
const x = fg.randn([batch, 1, 28, 28]);
const y = fg.tensor(Int32Array.from({ length: batch }, (_, i) => i % 10), { dtype: 'int32' });
const phaseMs = new Map<string, number>();
let total = 0;
let wall = 0;
for (let s = 0; s < steps + 2; s++) {
  const measure = s >= 2; // two warm-up steps
  if (s === 2) {
    kernelMs.clear();
    layerMs.clear();
    phaseMs.clear();
  }
  const w0 = performance.now();
  const t0 = cpuMs();
  fg.tidy(() => {
    opt.zeroGrad();
    const logits = charge(phaseMs, 'forward', () => model.forward(x));
    const loss = charge(phaseMs, 'loss', () => fg.crossEntropy(logits, y));
    charge(phaseMs, 'backward', () => loss.backward());
    charge(phaseMs, 'optimizer', () => opt.step());
  });
  if (measure) {
    total += cpuMs() - t0;
    wall += performance.now() - w0;
  }
}
const per = (ms: number) => (ms / steps).toFixed(1);
const pct = (ms: number) => `${((100 * ms) / total).toFixed(0)}%`;
console.log(`\nresnetSmall 8/16/32 SGD step, batch ${batch}, wasm 1 thread: ${per(total)} ms CPU (${per(wall)} ms wall) per step, mean of ${steps}\n`);
console.log('| phase | CPU ms per step | share |\n| --- | --- | --- |');
for (const [k, v] of phaseMs) console.log(`| ${k} | ${per(v)} | ${pct(v)} |`);
for (const [k, v] of layerMs) console.log(`| (inside forward) ${k} | ${per(v)} | ${pct(v)} |`);
console.log('\n| backend kernel | CPU ms per step | share |\n| --- | --- | --- |');
for (const [k, v] of [...kernelMs].sort((a, b) => b[1] - a[1])) if (v / steps >= 0.05) console.log(`| ${k} | ${per(v)} | ${pct(v)} |`);
