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
    return mod.create([]);
  })();
  try {
    return await nodeGpu;
  } catch (e) {
    nodeGpu = null;
    throw e;
  }
}

