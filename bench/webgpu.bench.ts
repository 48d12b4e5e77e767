/**
 * The WebGPU backend against @tensorflow/tfjs-backend-webgpu and @jax-js/jax (webgpu device, jit),
 * side by side in one process on one adapter: matmul GFLOP/s on square sizes and on the three
 * products of an MLP layer's training step (forward, and the two backward products through the
 * transpose flags), and elementwise GB/s against a plain WGSL copy kernel on the same buffers.
 * Kernels are measured at the backend level (the Backend contract), with an output allocated
 * from the pool on every call as the other libraries do.
 *
 * Run (bundles the TypeScript, keeps the benchmark libraries as ordinary node_modules imports):
 *   npx esbuild bench/webgpu.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/webgpu.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/webgpu.bench.mjs [--quick]
 * Writes bench/results/webgpu.json and prints a markdown table. Each figure is the median of
 * several timed loops; a loop ends with each library's own wait for the GPU (flatgrad sync(),
 * tfjs endComputePassEncoder() + submitQueue() + onSubmittedWorkDone()); jax-js evaluates lazily,
 * so each of its calls ends with blockUntilReady(). The libraries are timed in interleaved rounds:
 * on SwiftShader the GPU is the CPU cores, so other processes on the machine skew everything, and
 * interleaving makes them skew all contenders alike. The load average is recorded.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import type * as Jax from '@jax-js/jax';
import type { Tensor } from '@tensorflow/tfjs';
import type { MatmulLayout } from '../src/kernels/backend.js';
import { createWebGPUBackend, SWIFTSHADER_ICD, type WebGPUBackend } from '../src/kernels/webgpu/index.js';
import { asGPU, type GPUStorage } from '../src/kernels/webgpu/runtime.js';
import { paceCpuAdapterWaits } from '../src/kernels/webgpu/dawn.js';

const quick = process.argv.includes('--quick');
// --squares=256,1024,4096 and --elems=N size the run: tiny for bench/gpu.sh --dry-run, large on a real GPU.
const sizeArg = (k: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3);

// The peers find WebGPU as browsers expose it, so Dawn is installed as navigator.gpu before they load.
if (process.platform === 'linux' && !process.env.VK_ICD_FILENAMES && existsSync(SWIFTSHADER_ICD)) process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
const dawn = (await import('webgpu')) as unknown as { create: (o: string[]) => GPU; globals: object };
Object.assign(globalThis, dawn.globals);
// Every contender waits for the GPU alike: on a CPU adapter asleep between Dawn's polls (dawn.ts).
const gpu = paceCpuAdapterWaits(dawn.create([]));
// jax-js also reads navigator.userAgent.
Object.defineProperty(globalThis, 'navigator', { value: { gpu, userAgent: `Node.js ${process.version}` }, configurable: true, writable: true });

const tf = await import('@tensorflow/tfjs');
await import('@tensorflow/tfjs-backend-webgpu');
const jax = await import('@jax-js/jax');

/** A library's way to run one call of the measured op and to wait until the GPU has finished. */
interface Contender {
  name: string;
  run: () => unknown;
  wait: () => Promise<unknown>;
  dispose: () => void;
}

/** Repetitions of `calls` calls and one wait, until a repetition takes at least `targetMs`. */
async function calibrate(c: Contender, targetMs: number): Promise<number> {
  await c.run();
  await c.wait();
  let calls = 1;
  for (;;) {
    const ms = await rep(c, calls);
    if (ms >= targetMs || calls >= 4096) return calls;
    calls *= Math.min(8, Math.max(2, Math.ceil(targetMs / Math.max(ms, 0.01))));
  }
}

async function rep(c: Contender, calls: number): Promise<number> {
  const t = performance.now();
  for (let i = 0; i < calls; i++) await c.run();
  await c.wait();
  return performance.now() - t;
}

/**
 * Median ms per call of each contender, measured in interleaved rounds (each round times every
 * contender once, in rotating order) so that a change in the machine's load hits all of them
 * alike: on SwiftShader the "GPU" is the same CPU cores everything else runs on.
 */
async function sideBySide(contenders: Contender[]): Promise<Record<string, number>> {
  const targetMs = quick ? 150 : 400;
  const calls = [];
  for (const c of contenders) calls.push(await calibrate(c, targetMs));
  const times: number[][] = contenders.map(() => []);
  const rounds = quick ? 3 : 5;
  for (let r = 0; r < rounds; r++) {
    for (let j = 0; j < contenders.length; j++) {
      const k = (j + r) % contenders.length;
      times[k].push((await rep(contenders[k], calls[k])) / calls[k]);
    }
  }
  const out: Record<string, number> = {};
  contenders.forEach((c, k) => {
    const t = times[k].sort((a, b) => a - b);
    out[c.name] = t[t.length >> 1];
    c.dispose();
  });
  return out;
}

function randomData(n: number, seed: number): Float32Array<ArrayBuffer> {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  });
}

interface MatmulCase {
  name: string;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
}

const SQUARES = sizeArg('squares')?.split(',').map(Number) ?? (quick ? [128, 256, 512] : [128, 256, 512, 1024]);
const MATMULS: MatmulCase[] = [
  ...SQUARES.map((s) => ({ name: `${s}x${s} @ ${s}x${s}`, m: s, n: s, k: s, transA: false, transB: false })),
  { name: 'MLP fwd 128x784 @ 784x256', m: 128, n: 256, k: 784, transA: false, transB: false },
  { name: 'MLP dX 128x256 @ (784x256)^T', m: 128, n: 784, k: 256, transA: false, transB: true },
  { name: 'MLP dW (128x784)^T @ 128x256', m: 784, n: 256, k: 128, transA: true, transB: false },
];

function flatgradMatmul(be: WebGPUBackend, c: MatmulCase): Contender {
  const a = be.upload(randomData(c.m * c.k, 1), 'float32');
  const b = be.upload(randomData(c.k * c.n, 2), 'float32');
  const layout: MatmulLayout = { batch: 1, m: c.m, n: c.n, k: c.k, transA: c.transA, transB: c.transB, aBatchStride: 0, bBatchStride: 0 };
  return {
    name: 'flatgrad',
    // An output from the pool on every call, as the other libraries allocate theirs.
    run: () => {
      const out = be.alloc(c.m * c.n, 'float32');
      be.matmul(a, b, out, layout);
      be.release(out);
    },
    wait: () => be.sync(),
    dispose: () => {
      be.release(a);
      be.release(b);
    },
  };
}

type Tf = typeof import('@tensorflow/tfjs');
/** tfjs-webgpu batches commands too: close its pass, submit what it holds (as its read() does), wait. */
async function tfWait(t: Tf): Promise<void> {
  const backend = t.backend() as unknown as { endComputePassEncoder(): void; submitQueue(): void; device: GPUDevice };
  backend.endComputePassEncoder();
  backend.submitQueue();
  await backend.device.queue.onSubmittedWorkDone();
}

function tfjsMatmul(c: MatmulCase): Contender {
  const a = tf.tensor2d(randomData(c.m * c.k, 1), c.transA ? [c.k, c.m] : [c.m, c.k]);
  const b = tf.tensor2d(randomData(c.k * c.n, 2), c.transB ? [c.n, c.k] : [c.k, c.n]);
  return {
    name: 'tfjs',
    run: () => tf.matMul(a, b, c.transA, c.transB).dispose(),
    wait: () => tfWait(tf),
    dispose: () => tf.dispose([a, b]),
  };
}

function jaxMatmul(c: MatmulCase): Contender {
  const np = jax.numpy;
  const a = np.array(randomData(c.m * c.k, 1)).reshape(c.transA ? [c.k, c.m] : [c.m, c.k]);
  const b = np.array(randomData(c.k * c.n, 2)).reshape(c.transB ? [c.n, c.k] : [c.k, c.n]);
  const product = jax.jit((x: Jax.numpy.Array, y: Jax.numpy.Array) => np.matmul(c.transA ? x.transpose() : x, c.transB ? y.transpose() : y));
  return {
    name: 'jax',
    // jax-js is lazy: a result is computed when something waits for it, so every call waits.
    run: async () => (await product(a.ref, b.ref).blockUntilReady()).dispose(),
    wait: async () => {},
    dispose: () => {
      a.dispose();
      b.dispose();
    },
  };
}

/** A plain WGSL copy (one vec4 per thread) over flatgrad's own buffers: the bandwidth reference. */
function plainCopy(be: WebGPUBackend, src: GPUStorage, dst: GPUStorage): () => void {
  const device = be.device;
  const module = device.createShaderModule({
    code: `@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@compute @workgroup_size(256) fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = g.x + g.y * nwg.x * 256u;
  if (i < arrayLength(&dst)) { dst[i] = src[i]; }
}`,
  });
  const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const bindGroup = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: { buffer: src.buffer, offset: src.offset, size: src.numel * 4 } },
      { binding: 1, resource: { buffer: dst.buffer, offset: dst.offset, size: dst.numel * 4 } },
    ],
  });
  const groups = Math.ceil(src.numel / 4 / 256);
  return () => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(Math.min(groups, 65535), Math.ceil(groups / 65535));
    pass.end();
    device.queue.submit([enc.finish()]);
  };
}

interface BandwidthRow {
  name: string;
  bytesPerCall: number;
  flatgrad: number;
  tfjs: number;
  jax: number;
  plainCopy: number;
}

/** Memory-bound ops over 1<<22 floats (--elems=N): add and p += s*g, with the plain copy and memcpy for scale. */
async function elementwise(be: WebGPUBackend): Promise<{ rows: BandwidthRow[]; memcpyGBs: number }> {
  const n = Number(sizeArg('elems') ?? 1 << 22);
  const x = be.upload(randomData(n, 3), 'float32');
  const y = be.upload(randomData(n, 4), 'float32');
  const acc = be.upload(randomData(n, 5), 'float32');
  const copyDst = be.alloc(n, 'float32');
  const same = { shape: [n], aStrides: [1], bStrides: [1] };
  const keep = () => {};
  const copy: Contender = { name: 'plainCopy', run: plainCopy(be, asGPU(x), asGPU(copyDst)), wait: () => be.device.queue.onSubmittedWorkDone(), dispose: keep };
  const np = jax.numpy;
  const [tx, ty] = [tf.tensor1d(randomData(n, 3)), tf.tensor1d(randomData(n, 4))];
  const [jx, jy] = [np.array(randomData(n, 3)), np.array(randomData(n, 4))];

  const jadd = jax.jit((a: Jax.numpy.Array, b: Jax.numpy.Array) => a.add(b));
  const add = await sideBySide([
    {
      name: 'flatgrad',
      run: () => {
        const out = be.alloc(n, 'float32');
        be.binary('add', x, y, out, same);
        be.release(out);
      },
      wait: () => be.sync(),
      dispose: keep,
    },
    { name: 'tfjs', run: () => tf.add(tx, ty).dispose(), wait: () => tfWait(tf), dispose: keep },
    { name: 'jax', run: async () => (await jadd(jx.ref, jy.ref).blockUntilReady()).dispose(), wait: async () => {}, dispose: keep },
    copy,
  ]);

  let tacc: Tensor = tf.tensor1d(randomData(n, 5));
  let jacc = np.array(randomData(n, 5));
  const jaxpy = jax.jit((p: Jax.numpy.Array, g: Jax.numpy.Array) => p.add(g.mul(1e-3)));
  const axpy = await sideBySide([
    { name: 'flatgrad', run: () => be.axpy(acc, y, 1e-3), wait: () => be.sync(), dispose: keep },
    {
      name: 'tfjs',
      run: () => {
        const next = tf.tidy(() => tf.add(tacc, tf.mul(ty, 1e-3)));
        tacc.dispose();
        tacc = next;
      },
      wait: () => tfWait(tf),
      dispose: keep,
    },
    {
      name: 'jax',
      run: async () => {
        jacc = await jaxpy(jacc, jy.ref).blockUntilReady();
      },
      wait: async () => {},
      dispose: keep,
    },
    copy,
  ]);

  // The adapter's memcpy (copyBufferToBuffer), for scale: no shader comes near it on SwiftShader.
  const memcpy = await sideBySide([
    {
      name: 'memcpy',
      run: () => be.stridedCopy(x, copyDst, { shape: [n], srcStrides: [1], srcOffset: 0, dstStrides: [1], dstOffset: 0 }),
      wait: () => be.sync(),
      dispose: keep,
    },
  ]);

  tf.dispose([tx, ty, tacc]);
  for (const a of [jx, jy, jacc]) a.dispose();
  for (const s of [x, y, acc, copyDst]) be.release(s);
  const gbs = (bytes: number, ms: number) => bytes / ms / 1e6;
  const row = (name: string, bytes: number, t: Record<string, number>): BandwidthRow => ({
    name,
    bytesPerCall: bytes,
    flatgrad: gbs(bytes, t.flatgrad),
    tfjs: gbs(bytes, t.tfjs),
    jax: gbs(bytes, t.jax),
    plainCopy: gbs(8 * n, t.plainCopy),
  });
  return { rows: [row(`add (${n} floats)`, 12 * n, add), row(`p += s*g (${n} floats)`, 12 * n, axpy)], memcpyGBs: gbs(8 * n, memcpy.memcpy) };
}

async function main(): Promise<void> {
  const loadBefore = os.loadavg();
  const be = await createWebGPUBackend({ gpu });
  await tf.setBackend('webgpu');
  await tf.ready();
  await jax.init('webgpu');
  jax.defaultDevice('webgpu');

  const rows = [];
  for (const c of MATMULS) {
    const flops = 2 * c.m * c.n * c.k;
    const t = await sideBySide([flatgradMatmul(be, c), tfjsMatmul(c), jaxMatmul(c)]);
    const gf = (ms: number) => flops / ms / 1e6;
    const row = { case: c.name, shape: { m: c.m, n: c.n, k: c.k, transA: c.transA, transB: c.transB }, flatgrad: gf(t.flatgrad), tfjs: gf(t.tfjs), jax: gf(t.jax) };
    rows.push(row);
    console.error(`measured ${c.name}: flatgrad ${row.flatgrad.toFixed(3)}, tfjs ${row.tfjs.toFixed(3)}, jax-js ${row.jax.toFixed(3)} GFLOP/s`);
  }
  const { rows: bandwidth, memcpyGBs } = await elementwise(be);

  const results = {
    date: new Date().toISOString(),
    adapter: be.info(),
    machine: { cpu: os.cpus()[0]?.model, cores: os.cpus().length, node: process.version, loadavgBefore: loadBefore, loadavgAfter: os.loadavg() },
    libraries: {
      flatgrad: 'webgpu backend, kernels called through the Backend contract',
      tfjs: `@tensorflow/tfjs-backend-webgpu ${tf.version_core}`,
      jax: '@jax-js/jax webgpu device, jit',
    },
    matmulGflops: rows,
    elementwiseGBs: bandwidth,
    copyBufferToBufferGBs: memcpyGBs,
  };
  mkdirSync('bench/results', { recursive: true });
  writeFileSync('bench/results/webgpu.json', JSON.stringify(results, null, 2) + '\n');

  const f = (x: number, d = 2) => x.toFixed(d);
  console.log(`\nAdapter: ${be.info().adapter}; load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')}\n`);
  console.log('| matmul GFLOP/s | flatgrad | tfjs-webgpu | jax-js webgpu jit | vs tfjs | vs jax-js |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    console.log(`| ${r.case} | ${f(r.flatgrad)} | ${f(r.tfjs)} | ${f(r.jax)} | ${(r.flatgrad / r.tfjs).toFixed(1)}x | ${(r.flatgrad / r.jax).toFixed(1)}x |`);
  }
  console.log('\n| elementwise GB/s | flatgrad | tfjs-webgpu | jax-js webgpu jit | plain WGSL copy | flatgrad / copy |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const r of bandwidth) {
    console.log(`| ${r.name} | ${f(r.flatgrad)} | ${f(r.tfjs)} | ${f(r.jax)} | ${f(r.plainCopy)} | ${(r.flatgrad / r.plainCopy).toFixed(2)} |`);
  }
  console.log(`\nThe plain copy moves one vec4 per thread in workgroups of 256; copyBufferToBuffer on the same buffers: ${f(memcpyGBs)} GB/s.`);
  be.destroy();
  process.exit(0);
}

await main();
