/**
 * What an eager SAM step costs beyond two SGD passes on the WebGPU backend, in one process: rounds
 * of (SGD step, SAM step, SAM step cut into its parts) on their own copies of the model, rotating
 * the order each round, every step ending in an awaited readback of its loss as in
 * bench/steps.bench.ts. The parts are SAM.step's own calls with a device sync after each: zeroGrads
 * + the first forward-backward; firstStep (grad norm, perturb); the second forward-backward at
 * w + e; secondStep (the second gradient's check, the restore fused with the SGD update). Each is
 * timed by wall and process CPU time (on SwiftShader the shaders run on this process's threads).
 * The syncs take away the overlap of encoding and device work that the whole step has, and each
 * part runs in its own tidy (the whole step keeps the first pass's tensors until its end), so the
 * parts are not the step; the SGD step is cut the same way (forward-backward, update) for the
 * like-for-like comparison. Then one SGD and one SAM step are recorded and each part's commands
 * replayed alone: the device's cost of each part, without encoding. Last, it counts what one step
 * of each made the runtime and the device do: dispatches, submits, buffers created, bind groups,
 * pipelines, queue writes and readbacks.
 *
 *   npx esbuild bench/webgpu-sam-profile.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/webgpu-sam-profile.mjs --log-level=warning \
 *     && node --expose-gc node_modules/.cache/flatgrad/webgpu-sam-profile.mjs [--model=cnn|vit] [--rounds=9] [--parts=0] [--device-reps=7]
 *
 * Models as in bench/steps.bench.ts: the small ResNet of `flatgrad train --model cnn` (widths
 * 8/16/32, one block per stage, BatchNorm in train mode) and its ViT, both at batch 32; SGD lr 0.01,
 * SAM rho 0.05 over SGD.
 */
import * as fg from '../src/index.js';
import * as registry from '../src/kernels/registry.js';
import type { WebGPUBackend } from '../src/kernels/webgpu/index.js';
import { Runtime } from '../src/kernels/webgpu/runtime.js';
import { stepModel } from './models.js';

const arg = (k: string, d: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d;
const model = arg('model', 'cnn');
const rounds = Number(arg('rounds', '9'));
const withParts = arg('parts', '1') !== '0';

await fg.init({ backend: 'webgpu' });
const backend = registry.getBackend() as unknown as WebGPUBackend;
const rt = backend.rt;
const device = backend.device;
const { nn, optim } = fg;
const batch = 32;
type T = InstanceType<typeof fg.Tensor>;

fg.manualSeed(0);
const make = () => {
  fg.manualSeed(1);
  const m = stepModel(model);
  m.train();
  return m;
};
const x = fg.randn([batch, 1, 28, 28]);
const y = fg.tensor(Int32Array.from({ length: batch }, (_, i) => i % 10), { dtype: 'int32' });
const sgdNet = make();
const samNet = make();
const partNet = make();
const sgdOpt = new optim.SGD(sgdNet.parameters(), { lr: 0.01 });
const samOpt = new optim.SAM(samNet.parameters(), optim.SGD, { rho: 0.05, lr: 0.01 });
const partOpt = new optim.SAM(partNet.parameters(), optim.SGD, { rho: 0.05, lr: 0.01 });
const lossOf = (net: typeof sgdNet) => nn.functional.crossEntropy(net.forward(x), y);

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const median = (a: number[]) => a.slice().sort((p, q) => p - q)[a.length >> 1];

async function itemOf(l: T): Promise<number> {
  const v = await l.item();
  l.dispose();
  return v;
}
const sgdStep = () =>
  itemOf(
    fg.tidy(() => {
      sgdOpt.zeroGrad();
      const l = lossOf(sgdNet);
      l.backward();
      sgdOpt.step();
      return l;
    }),
  );
const samStep = () =>
  itemOf(
    fg.tidy(
      () =>
        samOpt.step(() => {
          const l = lossOf(samNet);
          l.backward();
          return l;
        }) as T,
    ),
  );

/** A timed part: runs `f`, then waits for the device. */
async function part(times: Record<string, { wall: number[]; cpu: number[]; host: number[] }>, name: string, f: () => void | Promise<unknown>): Promise<void> {
  const before = { ...counts };
  const t0 = performance.now();
  const c0 = cpuMs();
  await f();
  const t1 = performance.now();
  partCounts[name] = Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, v]) => v !== 0));
  await rt.sync();
  (times[name] ??= { wall: [], cpu: [], host: [] }).wall.push(performance.now() - t0);
  times[name].cpu.push(cpuMs() - c0);
  times[name].host.push(t1 - t0);
}
const partTimes: Record<string, { wall: number[]; cpu: number[]; host: number[] }> = {};
/** SAM.step's calls one by one (sam.ts), a sync after each. */
async function samParts(): Promise<void> {
  let loss: T | null = null;
  const closure = () => {
    const l = lossOf(partNet);
    l.backward();
    return l;
  };
  await part(partTimes, 'SAM 1: zeroGrads + forward-backward at w', () => {
    loss = fg.tidy(() => {
      partOpt.engine.zeroGrads();
      return closure();
    });
  });
  await part(partTimes, 'SAM 2: firstStep (norm, perturb)', () => fg.tidy(() => partOpt.firstStep({ zeroGrad: true })));
  await part(partTimes, 'SAM 3: forward-backward at w + e', () => {
    // firstStep froze the BatchNorm statistics; secondStep unfreezes them.
    fg.tidy(() => void closure().dispose());
  });
  await part(partTimes, 'SAM 4: secondStep (check, restore + update)', () => fg.tidy(() => partOpt.secondStep()));
  await part(partTimes, 'SAM 5: loss readback', () => itemOf(loss!));
}
const sgdPartNet = make();
const sgdPartOpt = new optim.SGD(sgdPartNet.parameters(), { lr: 0.01 });
async function sgdParts(): Promise<void> {
  let loss: T | null = null;
  await part(partTimes, 'SGD 1: zeroGrad + forward-backward', () => {
    loss = fg.tidy(() => {
      sgdPartOpt.zeroGrad();
      const l = lossOf(sgdPartNet);
      l.backward();
      return l;
    });
  });
  await part(partTimes, 'SGD 2: step (check, update)', () => fg.tidy(() => void sgdPartOpt.step()));
  await part(partTimes, 'SGD 3: loss readback', () => itemOf(loss!));
}

// ---- counters through the runtime and the device
const counts: Record<string, number> = {};
/** What each part did (its last run), the sync after it not counted. */
const partCounts: Record<string, Record<string, number>> = {};
const bump = (k: string) => (counts[k] = (counts[k] ?? 0) + 1);
const wrap = <O extends object>(o: O, name: keyof O & string, label: string) => {
  const f = (o as Record<string, unknown>)[name] as (...a: unknown[]) => unknown;
  (o as Record<string, unknown>)[name] = function (this: unknown, ...a: unknown[]) {
    bump(label);
    return f.apply(this, a);
  };
};
wrap(device, 'createBuffer', 'createBuffer');
wrap(device, 'createBindGroup', 'createBindGroup');
wrap(device, 'createComputePipeline', 'createComputePipeline');
wrap(device, 'createComputePipelineAsync', 'createComputePipelineAsync');
wrap(device, 'createCommandEncoder', 'createCommandEncoder');
wrap(device.queue, 'submit', 'queue.submit');
wrap(device.queue, 'writeBuffer', 'queue.writeBuffer');
wrap(device.queue, 'onSubmittedWorkDone', 'queue.onSubmittedWorkDone');
const proto = Runtime.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
for (const m of ['dispatch', 'flush', 'read', 'copy', 'zero', 'ensureCleared', 'write', 'alloc', 'release']) {
  const f = proto[m];
  proto[m] = function (this: Runtime, ...a: unknown[]) {
    bump(`rt.${m}`);
    return f.apply(this, a);
  };
}
const countOf = async (f: () => Promise<unknown>): Promise<Record<string, number>> => {
  await rt.sync();
  const before = { ...counts };
  await f();
  return Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, v - (before[k] ?? 0)]));
};

const note = (m: string) => process.stderr.write(`${m}\n`);
note(`model ${model}: warming up`);
for (let i = 0; i < 3; i++) {
  await sgdStep();
  await samStep();
  if (withParts) await samParts(), await sgdParts();
}
for (const k of Object.keys(partTimes)) delete partTimes[k];

const whole: Record<'SGD' | 'SAM', { wall: number[]; cpu: number[] }> = { SGD: { wall: [], cpu: [] }, SAM: { wall: [], cpu: [] } };
const ratioWall: number[] = [];
const ratioCpu: number[] = [];
for (let r = 0; r < rounds; r++) {
  const order = r % 2 === 0 ? (['SGD', 'SAM'] as const) : (['SAM', 'SGD'] as const);
  for (const k of order) {
    const t0 = performance.now();
    const c0 = cpuMs();
    await (k === 'SGD' ? sgdStep() : samStep());
    whole[k].wall.push(performance.now() - t0);
    whole[k].cpu.push(cpuMs() - c0);
  }
  ratioWall.push(whole.SAM.wall[r] / whole.SGD.wall[r]);
  ratioCpu.push(whole.SAM.cpu[r] / whole.SGD.cpu[r]);
  if (withParts) await samParts(), await sgdParts();
}

const sgdCounts = await countOf(sgdStep);
const samCounts = await countOf(samStep);

// ---- device cost of each part: one SGD step and one SAM step recorded together by the runtime's
// recorder (src/kernels/webgpu/capture.ts), then each part's commands (dispatches, copies, clears)
// replayed alone through the runtime and waited for, the parts interleaved, `deviceReps` times
// (a part of a few dispatches ten times per wait, the figure per replay).
// No encoding, no autograd, no JavaScript between kernels: what the device does for each part.
// The replays keep changing the parameters (updates, perturbations): meaningless values, same work.
const deviceReps = Number(arg('device-reps', '7'));
const recorderItems = () => (rt as unknown as { recorder: { active: { items: unknown[] } | null } | null }).recorder?.active?.items.length ?? 0;
const marks: Record<string, number> = {};
if (!rt.beginRecording()) throw new Error('the command recorder is not loaded');
const keepLosses: T[] = [];
keepLosses.push(
  fg.tidy(() => {
    sgdOpt.zeroGrad();
    const l = lossOf(sgdNet);
    l.backward();
    marks['SGD pass end'] = recorderItems();
    sgdOpt.step();
    return l;
  }),
);
marks['SAM start'] = recorderItems();
let pass = 0;
keepLosses.push(
  fg.tidy(
    () =>
      samOpt.step(() => {
        pass++;
        marks[`SAM pass ${pass} start`] = recorderItems();
        const l = lossOf(samNet);
        l.backward();
        marks[`SAM pass ${pass} end`] = recorderItems();
        return l;
      }) as T,
  ),
);
const recording = rt.endRecording();
if (!recording) throw new Error('the steps were not recorded whole');
const total = recording.commands.length;
const segments: [string, number, number][] = [
  ['nothing (the fixed cost of a replay and its wait)', 0, 0],
  ['SGD forward-backward', 0, marks['SGD pass end']],
  ['SGD update (check, p -= lr g)', marks['SGD pass end'], marks['SAM start']],
  ['SAM forward-backward at w', marks['SAM start'], marks['SAM pass 1 end']],
  ['SAM firstStep (norm, perturb)', marks['SAM pass 1 end'], marks['SAM pass 2 start']],
  ['SAM forward-backward at w + e', marks['SAM pass 2 start'], marks['SAM pass 2 end']],
  ['SAM secondStep (check, restore + update)', marks['SAM pass 2 end'], total],
];
const deviceTimes = segments.map(() => ({ wall: [] as number[], cpu: [] as number[] }));
await rt.sync();
for (let r = 0; r < deviceReps; r++) {
  for (let i = 0; i < segments.length; i++) {
    const [, a, b] = segments[i];
    const commands = recording.commands.slice(a, b);
    const sub = { ...recording, commands, dispatches: commands.filter((c) => c.kind === 'dispatch').length };
    // A short part is replayed `times` times before the wait, so that the wait's fixed cost
    // (and the garbage collection that the wait's polling brings on) is spread over them.
    const times = sub.dispatches < 10 ? 10 : 1;
    // With --expose-gc, the garbage of the previous wait is collected before the clock starts.
    (globalThis as { gc?: () => void }).gc?.();
    const t0 = performance.now();
    const c0 = cpuMs();
    for (let k = 0; k < times; k++) if (!rt.replayRecording(sub)) throw new Error('the recording went stale');
    await rt.sync();
    deviceTimes[i].wall.push((performance.now() - t0) / times);
    deviceTimes[i].cpu.push((cpuMs() - c0) / times);
  }
}
for (const l of keepLosses) l.dispose();
rt.disposeRecording(recording);

const f = (v: number) => v.toFixed(1);
console.log(`model ${model}, batch ${batch}, adapter ${backend.info().adapter}, ${rounds} rounds`);
console.log(`| step | wall ms | CPU ms |`);
console.log(`| --- | ---: | ---: |`);
for (const k of ['SGD', 'SAM'] as const) console.log(`| ${k} step | ${f(median(whole[k].wall))} | ${f(median(whole[k].cpu))} |`);
console.log(`SAM / SGD (median of per-round ratios): wall ${median(ratioWall).toFixed(3)}, CPU ${median(ratioCpu).toFixed(3)}`);
if (withParts) {
  console.log('\n| part (synced after each) | wall ms | CPU ms | of which encoding (before the sync) ms |');
  console.log('| --- | ---: | ---: | ---: |');
  for (const [k, v] of Object.entries(partTimes)) console.log(`| ${k} | ${f(median(v.wall))} | ${f(median(v.cpu))} | ${f(median(v.host))} |`);
}
console.log(`\n| part, its recorded commands replayed alone (median of ${deviceReps}) | commands | dispatches | wall ms | CPU ms |`);
console.log('| --- | ---: | ---: | ---: | ---: |');
segments.forEach(([name, a, b], i) => {
  const cmds = recording.commands.slice(a, b);
  console.log(`| ${name} | ${cmds.length} | ${cmds.filter((c) => c.kind === 'dispatch').length} | ${f(median(deviceTimes[i].wall))} | ${f(median(deviceTimes[i].cpu))} |`);
});
console.log('\n| per step | SGD | SAM | SAM - 2 SGD |');
console.log('| --- | ---: | ---: | ---: |');
for (const k of [...new Set([...Object.keys(sgdCounts), ...Object.keys(samCounts)])].sort()) {
  const a = sgdCounts[k] ?? 0;
  const b = samCounts[k] ?? 0;
  console.log(`| ${k} | ${a} | ${b} | ${b - 2 * a} |`);
}
if (withParts) {
  console.log('\nper part (its last run):');
  for (const [k, v] of Object.entries(partCounts)) console.log(`${k}: ${Object.entries(v).map(([n, c]) => `${n} ${c}`).join(', ')}`);
}
process.exit(0);
