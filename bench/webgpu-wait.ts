/**
 * How Dawn's Node binding waits, and what that costs an eager step on a CPU adapter (why
 * src/kernels/webgpu/dawn.ts paces the waits of CPU adapters' devices). While any of
 * its promises is pending (a readback's mapAsync, onSubmittedWorkDone), the `webgpu` package polls
 * the device from setImmediate on every turn of the event loop: the JavaScript thread spins at
 * 100 % until the work is done. On SwiftShader the shaders run on the same cores, so the spinning
 * thread takes a core from them. This probe runs the same eager SGD step on two copies of a model,
 * interleaved in one process: "spin" ends with the runtime's readback as every step does; "paced"
 * first submits and waits for the queue by dawn.ts's pacedWait (asleep between polls, Atomics.wait
 * growing to 1 ms: Dawn's poll still runs once per turn of the loop), then reads back. Same kernels, same
 * losses (checked); wall and process CPU ms, the median of per-round ratios.
 *
 *   npx esbuild bench/webgpu-wait.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/webgpu-wait.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/webgpu-wait.mjs [--model=cnn|vit] [--rounds=9]
 *
 * Models as in bench/steps.bench.ts (the small ResNet and the ViT, batch 32; SGD lr 0.01).
 */
import * as fg from '../src/index.js';
import * as registry from '../src/kernels/registry.js';
import type { WebGPUBackend } from '../src/kernels/webgpu/index.js';
import { pacedWait } from '../src/kernels/webgpu/dawn.js';
import { SWIFTSHADER_ICD } from '../src/kernels/webgpu/device.js';
import { existsSync } from 'node:fs';
import { stepModel } from './models.js';

const arg = (k: string, d: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d;
const model = arg('model', 'cnn');
const rounds = Number(arg('rounds', '9'));

// A GPU object of its own, without paceCpuAdapterWaits (which fg.init's own Dawn GPU has): the
// "spin" variant waits as the package does, "paced" by the library's pacedWait.
if (process.platform === 'linux' && !process.env.VK_ICD_FILENAMES && existsSync(SWIFTSHADER_ICD)) process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
const dawn = (await import('webgpu')) as unknown as { create: (o: string[]) => GPU; globals: object };
Object.assign(globalThis, dawn.globals);
await fg.init({ backend: 'webgpu', gpu: dawn.create([]) });
const backend = registry.getBackend() as unknown as WebGPUBackend;
const { nn, optim } = fg;
const make = () => {
  fg.manualSeed(1);
  const m = stepModel(model);
  m.train();
  return m;
};
fg.manualSeed(0);
const x = fg.randn([32, 1, 28, 28]);
const y = fg.tensor(Int32Array.from({ length: 32 }, (_, i) => i % 10), { dtype: 'int32' });
const nets = [make(), make()];
const opts = nets.map((n) => new optim.SGD(n.parameters(), { lr: 0.01 }));
const step = (i: number) =>
  fg.tidy(() => {
    opts[i].zeroGrad();
    const l = nn.functional.crossEntropy(nets[i].forward(x), y);
    l.backward();
    opts[i].step();
    return l;
  });

const variants: Record<'spin' | 'paced', () => Promise<number>> = {
  spin: async () => {
    const l = step(0);
    const v = await l.item();
    l.dispose();
    return v;
  },
  paced: async () => {
    const l = step(1);
    backend.flush();
    await pacedWait(backend.device.queue.onSubmittedWorkDone());
    const v = await l.item();
    l.dispose();
    return v;
  },
};
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const median = (a: number[]) => a.slice().sort((p, q) => p - q)[a.length >> 1];
const losses = { spin: [] as number[], paced: [] as number[] };
for (let i = 0; i < 2; i++) for (const k of ['spin', 'paced'] as const) losses[k].push(await variants[k]());
const t = { spin: { wall: [] as number[], cpu: [] as number[] }, paced: { wall: [] as number[], cpu: [] as number[] } };
for (let r = 0; r < rounds; r++) {
  for (const k of r % 2 ? (['spin', 'paced'] as const) : (['paced', 'spin'] as const)) {
    const t0 = performance.now();
    const c0 = cpuMs();
    losses[k].push(await variants[k]());
    t[k].wall.push(performance.now() - t0);
    t[k].cpu.push(cpuMs() - c0);
  }
}
const same = losses.spin.every((v, i) => v === losses.paced[i]);
console.log(`model ${model}, batch 32, adapter ${backend.info().adapter}, ${rounds} rounds`);
for (const k of ['spin', 'paced'] as const) console.log(`${k}: wall ${median(t[k].wall).toFixed(1)} ms, CPU ${median(t[k].cpu).toFixed(1)} ms`);
const ratio = (a: number[], b: number[]) => median(a.map((v, i) => v / b[i])).toFixed(3);
console.log(`paced / spin (median of per-round ratios): wall ${ratio(t.paced.wall, t.spin.wall)}, CPU ${ratio(t.paced.cpu, t.spin.cpu)}; losses equal: ${same}`);
process.exit(same ? 0 : 1);
