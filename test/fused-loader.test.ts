/**
 * The fused optimizer kernels of a device backend load through registerFusedLoader (the WebGPU
 * ones, with the arena kernels' WGSL renderer, are registered by src/kernels/arena/run.ts and
 * awaited by createWebGPUBackend), so that a WebGPU app without optimizers ships none of them
 * (test/consumer.test.ts checks the bundle). Here: the registry itself, on a made-up backend kind.
 */
import { describe, expect, it } from 'vitest';
import type { Backend } from '../src/kernels/backend.js';
import { fusedKernelsFor, loadFusedKernels, registerFusedKernels, registerFusedLoader, type FusedKernels } from '../src/kernels/fused.js';

describe('fused kernel loaders', () => {
  it('refuses a backend whose fused kernels are registered but not loaded, rather than silently running unfused', async () => {
    const name = 'loader-test-device';
    const kernels = { tag: 'fused' } as unknown as FusedKernels;
    let loads = 0;
    registerFusedLoader(name, async () => {
      loads++;
      registerFusedKernels(name, () => kernels);
    });
    const early = { name } as unknown as Backend;
    expect(() => fusedKernelsFor(early)).toThrow(/loader-test-device: not loaded, because this loader-test-device backend was created before the optimizers were imported/);
    await Promise.all([loadFusedKernels(name), loadFusedKernels(name)]);
    expect(loads).toBe(1);
    const late = { name } as unknown as Backend;
    expect(fusedKernelsFor(late)).toBe(kernels);
  });

  it('loads nothing for a backend kind without a loader', async () => {
    await expect(loadFusedKernels('loader-test-none')).resolves.toBeUndefined();
    expect(fusedKernelsFor({ name: 'loader-test-none' } as unknown as Backend)).toBeNull();
  });

  it('registers the WebGPU loader with the arena runner, and the WebGPU module no longer registers its fused kernels on import', async () => {
    const device = await import('../src/kernels/webgpu/device.js');
    expect(typeof device.createWebGPUBackend).toBe('function');
    const rt = { dispatch: () => undefined };
    // Without run.ts (and so without the loader) a webgpu backend has no fused kernels, and no error.
    expect(fusedKernelsFor({ name: 'webgpu', rt } as unknown as Backend)).toBeNull();
    const { runScalarProgram } = await import('../src/kernels/arena/run.js');
    const { defineArenaKernel } = await import('../src/kernels/arena/define.js');
    // Before the loader ran (a backend created before the arena kernels were imported): an error
    // that says how to get the renderer, not a bare "no renderer".
    const prog = defineArenaKernel({ name: 'prog', vectors: {}, slots: { a: 0 }, after: (sl, k) => ({ a: k.add(sl.a, 1) }) });
    expect(() => runScalarProgram(prog, { name: 'webgpu' } as unknown as Backend, {} as never)).toThrow(
      /arena kernel "prog": no renderer for backend webgpu \(it loads when the backend is created: import the arena kernels or flatgrad\/optim before init\(\) creates it, or call init\(\) again\)/,
    );
    await loadFusedKernels('webgpu');
    // The loaded factory declines a backend without a WebGPU runtime (rt), as it always did.
    expect(fusedKernelsFor({ name: 'webgpu' } as unknown as Backend)).toBeNull();
    expect(fusedKernelsFor({ name: 'webgpu', rt } as unknown as Backend)).not.toBeNull();
  });
});
