/**
 * Dawn, the `webgpu` package, as Node's WebGPU: loaded by device.ts only in Node, so that a
 * browser bundle carries none of this. On Linux without a GPU driver Dawn can run on the
 * SwiftShader Vulkan driver that Debian's chromium ships; the loader reads VK_ICD_FILENAMES when
 * Dawn creates its instance, so it has to be set before the first `create()`.
 */
import { SWIFTSHADER_ICD } from './device.js';

/** Makes Dawn use SwiftShader when no Vulkan driver is configured. */
async function preferSwiftShader(): Promise<void> {
  if (process.platform !== 'linux' || process.env.VK_ICD_FILENAMES) return;
  const { existsSync } = await import('node:fs');
  if (existsSync(SWIFTSHADER_ICD)) process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
}

let nodeGpu: Promise<GPU> | null = null;

/** The Dawn GPU object, created once per process (Dawn's instance reads the environment once). */
export async function dawnGpu(): Promise<GPU> {
  nodeGpu ??= (async () => {
    await preferSwiftShader();
    let mod: { create: (opts: string[]) => GPU; globals: object };
    try {
      // An optional dependency: typed here rather than through its package, and left to Node to
      // resolve at run time (bundlers mark it external).
      mod = (await import(/* @vite-ignore */ 'webgpu' as string)) as typeof mod;
    } catch (e) {
      throw new Error(`the 'webgpu' package (Dawn for Node) could not be loaded: ${(e as Error).message}`);
    }
    // Dawn's globals hold GPUBufferUsage, GPUMapMode etc., which browsers define themselves.
    Object.assign(globalThis, mod.globals);
    return paceCpuAdapterWaits(mod.create([]));
  })();
  try {
    return await nodeGpu;
  } catch (e) {
    nodeGpu = null;
    throw e;
  }
}


/**
 * Waits for `p` with the thread asleep between turns of the event loop. While a promise of the
 * `webgpu` package is pending (a readback's mapAsync, onSubmittedWorkDone), Dawn polls the device
 * from setImmediate on every turn, so an awaiting JavaScript thread spins at 100 %. Here each turn
 * first sleeps a twentieth of the time waited so far, at most 1 ms (shorter naps are skipped), so
 * a wait ends at most 5 % (or 1 ms) after the work: the cost of a poll missed. The event loop is
 * blocked for those naps; timers and I/O of the process wait up to 1 ms.
 */
export async function pacedWait<T>(p: Promise<T>): Promise<T> {
  let done = false;
  const settle = () => (done = true);
  p.then(settle, settle);
  const nap = new Int32Array(new SharedArrayBuffer(4));
  const t0 = performance.now();
  while (!done) {
    const ms = Math.min(1, (performance.now() - t0) / 20);
    if (ms > 0.05) Atomics.wait(nap, 0, 0, ms);
    await new Promise((r) => setImmediate(r));
  }
  return p;
}

/** A CPU adapter: SwiftShader (Dawn's fallback) or Mesa's llvmpipe / lavapipe. */
const isCpuAdapter = (info: GPUAdapterInfo | undefined) =>
  !!info && (info.isFallbackAdapter || /swiftshader|llvmpipe|lavapipe/i.test(`${info.architecture} ${info.description} ${info.device}`));

/**
 * Makes the devices of `gpu`'s CPU adapters wait by pacedWait. On a CPU adapter the shaders run
 * on the same cores as the JavaScript thread, and a thread spinning in Dawn's poll takes a core
 * from them: an eager WebGPU training step on SwiftShader ran 1.5-1.7x slower on this 2-core
 * machine (bench/webgpu-wait.ts). A real GPU is left alone: there spinning only costs an idle core,
 * and a nap would only delay the result. Wraps the instances it hands out (adapter, device, queue,
 * buffers), not the package's classes, so another GPU object in the process is unchanged; the
 * benchmarks apply it to the GPU object they share with the peers, so every contender waits alike.
 */
export function paceCpuAdapterWaits(gpu: GPU): GPU {
  const requestAdapter = gpu.requestAdapter.bind(gpu);
  gpu.requestAdapter = async (options) => {
    const adapter = await requestAdapter(options);
    if (!adapter || !isCpuAdapter(adapter.info)) return adapter;
    const requestDevice = adapter.requestDevice.bind(adapter);
    adapter.requestDevice = async (descriptor) => {
      const device = await requestDevice(descriptor);
      const queue = device.queue;
      const workDone = queue.onSubmittedWorkDone.bind(queue);
      queue.onSubmittedWorkDone = () => pacedWait(workDone());
      const createBuffer = device.createBuffer.bind(device);
      device.createBuffer = (d) => {
        const buffer = createBuffer(d);
        const mapAsync = buffer.mapAsync.bind(buffer);
        buffer.mapAsync = (mode, offset, size) => pacedWait(mapAsync(mode, offset, size));
        return buffer;
      };
      return device;
    };
    return adapter;
  };
  return gpu;
}
