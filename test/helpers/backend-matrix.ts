/**
 * The four configurations the edge suites run every case on (cpu float64, cpu float32, wasm
 * float32, webgpu float32), and the switch that makes one of them the active backend and default
 * dtype for the duration of a test. One place, so that the suites agree on what "every backend" means.
 */
import { beforeAll } from 'vitest';
import * as fg from '../../src/index.js';
import type { Backend } from '../../src/kernels/backend.js';
import { CpuBackend } from '../../src/kernels/cpu/index.js';
import { getBackend, setBackend } from '../../src/kernels/registry.js';
import { createWasmBackend } from '../../src/kernels/wasm/index.js';
import { acquireWebGPU } from './webgpu.js';

export interface BackendConfig {
  name: string;
  dtype: 'float32' | 'float64';
  backend: () => Backend | null;
}

export interface BackendMatrix {
  /** The configurations, for describe.each; a backend is null until beforeAll ran, or when absent. */
  configs: BackendConfig[];
  /** The WebGPU backend, or null when there is no adapter (see gpuReason()). */
  gpu: () => Backend | null;
  /** Why there is no WebGPU backend ('' when there is one). */
  gpuReason: () => string;
  /** Runs `fn` with `cfg`'s backend and default dtype active, restoring both afterwards; skips when the backend is absent. */
  onConfig: (cfg: BackendConfig, skip: (why: string) => void, fn: () => Promise<void>) => Promise<void>;
}

/**
 * Registers a beforeAll that initialises flatgrad on cpu and creates the wasm (one thread) and
 * WebGPU backends. Call it at the top level of a test file.
 */
export function useBackendMatrix(): BackendMatrix {
  const cpu = new CpuBackend();
  let wasm: Backend | null = null;
  let gpu: Backend | null = null;
  let gpuReason = '';

  beforeAll(async () => {
    await fg.init({ backend: 'cpu' });
    wasm = await createWasmBackend({ threads: 1 });
    const acquired = await acquireWebGPU();
    gpu = acquired.backend;
    gpuReason = acquired.reason;
  });

  const configs: BackendConfig[] = [
    { name: 'cpu float64', dtype: 'float64', backend: () => cpu },
    { name: 'cpu float32', dtype: 'float32', backend: () => cpu },
    { name: 'wasm float32', dtype: 'float32', backend: () => wasm },
    { name: 'webgpu float32', dtype: 'float32', backend: () => gpu },
  ];

  async function onConfig(cfg: BackendConfig, skip: (why: string) => void, fn: () => Promise<void>): Promise<void> {
    const b = cfg.backend();
    if (!b) return skip(`no ${cfg.name} backend: ${gpuReason}`);
    const prevBackend = getBackend();
    const prevDtype = fg.getDefaultDtype();
    setBackend(b);
    fg.setDefaultDtype(cfg.dtype);
    try {
      await fn();
    } finally {
      setBackend(prevBackend);
      fg.setDefaultDtype(prevDtype);
    }
  }

  return { configs, gpu: () => gpu, gpuReason: () => gpuReason, onConfig };
}
