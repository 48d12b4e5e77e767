/**
 * Where the time of one eager training step goes on the WebGPU backend, per kernel: the step's
 * dispatches are recorded (kernel name, specialization key, pipeline, bind group, grid) by
 * wrapping the runtime's dispatch for one step; then each kernel's dispatches of that step are
 * encoded again on their own (same pipelines, same bind groups, same buffers), several times in
 * one pass, submitted and waited for, charged the process's CPU time (on SwiftShader the
 * shaders run on the process's own threads). That is the kernel's device cost per step, its fixed
 * cost per dispatch included; the rest of the step's wall time is encoding on the JavaScript thread
 * (op front-ends, autograd, bind groups) and the submits. On SwiftShader the "device" is the CPU
 * cores, so device time and encoding compete for the same cores: figures are medians of repeats.
 *
 *   npx esbuild bench/webgpu-step-profile.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/webgpu-step-profile.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/webgpu-step-profile.mjs [--model=vit|mlp] [--reps=5] [--gpu-matmul]
 *
 * --gpu-matmul runs the matmuls through the GPU-shaped forms of matmul.ts as a CPU-emulated
 * adapter ran them before matmul-emulated.ts (chooseMatmul's direct and split-K plans, and 8 x 8
 * direct blocks on 2-D workgroup tiles where a GPU tiles), for a before/after comparison in one tree.
 *
 * Models as in bench/steps.bench.ts (ViT: 28x28, patch 7, dim 32, depth 2, 4 heads, MLP 64,
 * batch 32; MLP 784-256-256-10, batch 128), the SGD step (forward, backward, p -= lr g).
 */
import * as fg from '../src/index.js';
import * as registry from '../src/kernels/registry.js';
import { asGPU, Runtime, type KernelCall } from '../src/kernels/webgpu/runtime.js';
import type { WebGPUBackend } from '../src/kernels/webgpu/index.js';
import { chooseMatmul, matmul, type MatmulPlan } from '../src/kernels/webgpu/matmul.js';

const arg = (k: string, d: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d;
const model = arg('model', 'vit');
const reps = Number(arg('reps', '5'));

await fg.init({ backend: 'webgpu' });
const backend = registry.getBackend() as unknown as WebGPUBackend;
const rt = backend.rt;
const device = backend.device;
if (process.argv.includes('--gpu-matmul')) {
  const before: MatmulPlan = { kind: 'direct', rm: 8, rn: 8, splitK: 1, wg: 64, gx: 8 };
  (backend as { matmul: WebGPUBackend['matmul'] }).matmul = (a, b, out, l) => {
    const plan = chooseMatmul(l);
    matmul(rt, asGPU(a), asGPU(b), asGPU(out), l, plan.kind === 'tiled' ? before : plan);
  };
}

const { nn, optim } = fg;
const batch = model === 'vit' ? 32 : 128;
const net =
  model === 'vit'
    ? nn.models.vit({ imageSize: 28, patchSize: 7, inChannels: 1, numClasses: 10, dim: 32, depth: 2, heads: 4, mlpRatio: 2 })
    : nn.models.mlp([784, 256, 256, 10]);
net.train();
const x = fg.randn(model === 'vit' ? [batch, 1, 28, 28] : [batch, 784]);
const y = fg.tensor(Int32Array.from({ length: batch }, (_, i) => i % 10), { dtype: 'int32' });
const opt = new optim.SGD(net.parameters(), { lr: 0.01 });
const step = async () => {
  const loss = fg.tidy(() => {
    opt.zeroGrad();
    const l = fg.nn.functional.crossEntropy(net.forward(x), y);
    l.backward();
    opt.step();
    return l;
  });
  const v = await loss.item();
  loss.dispose();
  return v;
};

const median = (a: number[]) => a.slice().sort((p, q) => p - q)[a.length >> 1];
/** This process's CPU time in ms: on SwiftShader the shaders run on its threads, so this counts them too, and other processes on a loaded machine barely move it. */
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

const note = (m: string) => process.stderr.write(`${m}\n`);
note('warming up');
for (let i = 0; i < 3; i++) await step();
note('warm');
const wall: number[] = [];
const cpu: number[] = [];
for (let i = 0; i < reps * 2; i++) {
  const t0 = performance.now();
  const c0 = cpuMs();
  await step();
  wall.push(performance.now() - t0);
  cpu.push(cpuMs() - c0);
}

// ---- record one step's commands with the runtime's own recorder (src/kernels/webgpu/capture.ts:
// bind groups against a copy of each dispatch's uniforms, so they replay with the right values),
// and the kernel names in the same order by wrapping the runtime's dispatch.
interface Rec {
  name: string;
  key: string;
  pipeline?: GPUComputePipeline;
  bindGroup?: GPUBindGroup;
  x: number;
  y: number;
}
const named: { name: string; key: string }[] = [];
const proto = Runtime.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
const origDispatch = proto.dispatch;
proto.dispatch = function (this: Runtime, call: unknown) {
  const c = call as KernelCall;
  if (c.groups > 0) named.push({ name: c.name, key: c.key });
  return origDispatch.call(this, call);
};
note('recording');
if (!rt.beginRecording()) throw new Error('the command recorder is not loaded');
await step();
const recording = rt.endRecording();
proto.dispatch = origDispatch;
if (!recording) throw new Error('the step was not recorded whole');
const dispatched = recording.commands.filter((c) => c.kind === 'dispatch');
if (dispatched.length !== named.length) throw new Error(`recorded ${dispatched.length} dispatches but ${named.length} named calls`);
const recs: Rec[] = dispatched.map((c, i) => ({ ...named[i], pipeline: c.pipeline, bindGroup: c.bindGroup, x: c.x, y: c.y }));
const copies = recording.commands.filter((c) => c.kind === 'copy').length;
const clears = recording.commands.filter((c) => c.kind === 'clear').length;
note(`recorded ${recs.length}`);

// ---- time each kernel's dispatches on their own
async function timeEncode(items: Rec[], times: number): Promise<number> {
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  for (let t = 0; t < times; t++) {
    for (const r of items) {
      pass.setPipeline(r.pipeline!);
      pass.setBindGroup(0, r.bindGroup!);
      pass.dispatchWorkgroups(r.x, r.y);
    }
  }
  pass.end();
  const t0 = cpuMs();
  device.queue.submit([enc.finish()]);
  await device.queue.onSubmittedWorkDone();
  return cpuMs() - t0;
}
const REPEAT = 4;
async function deviceMs(items: Rec[]): Promise<number> {
  const runs: number[] = [];
  for (let i = 0; i < reps; i++) runs.push((await timeEncode(items, REPEAT)) / REPEAT);
  return median(runs);
}
await rt.sync();
const groups = new Map<string, Rec[]>();
for (const r of recs) {
  const k = `${r.name} | ${r.key}`;
  groups.set(k, [...(groups.get(k) ?? []), r]);
}
const rows: { k: string; n: number; ms: number; wg: number }[] = [];
for (const [k, items] of groups) note(`timing ${k}`), rows.push({ k, n: items.length, ms: await deviceMs(items), wg: items.reduce((s, r) => s + r.x * r.y, 0) / items.length });
const whole = await deviceMs(recs);
rows.sort((a, b) => b.ms - a.ms);
const sum = rows.reduce((s, r) => s + r.ms, 0);
console.log(`model ${model}, batch ${batch}, adapter ${backend.info().adapter}${process.argv.includes('--gpu-matmul') ? ', GPU-shaped matmul forms' : ''}`);
console.log(`eager SGD step (median of ${wall.length}): wall ${median(wall).toFixed(1)} ms, process CPU ${median(cpu).toFixed(1)} ms`);
console.log(`dispatches per step: ${recs.length}; buffer copies ${copies}, clears ${clears}`);
console.log(`all of the step's dispatches replayed in one pass: ${whole.toFixed(1)} CPU ms; sum of kernels timed alone: ${sum.toFixed(1)} CPU ms`);
console.log('| kernel | key | dispatches | avg workgroups | CPU ms per step | % of sum |');
console.log('| --- | --- | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  const [name, key] = r.k.split(' | ');
  console.log(`| ${name} | ${key.slice(0, 70)} | ${r.n} | ${r.wg.toFixed(0)} | ${r.ms.toFixed(2)} | ${((100 * r.ms) / sum).toFixed(1)}% |`);
}
process.exit(0);
