/** Backend selection: `await init({ backend })` once before creating tensors. */
import type { Backend, BackendInfo, BackendName, MemoryInfo } from './kernels/backend.js';
import { currentBackend, getBackend, setBackend } from './kernels/registry.js';

export type BackendChoice = BackendName | 'auto';

/**
 * The WebGPU objects `init` accepts, typed by the little flatgrad needs to recognize them, so that
 * the published declarations compile in a project without @webgpu/types (or a DOM lib): a `GPU`
 * (navigator.gpu, Dawn's `create()`) or a `GPUDevice` from any of them fits.
 */
export interface GPULike {
  requestAdapter(options?: never): Promise<unknown>;
}
export interface GPUDeviceLike {
  readonly queue: unknown;
  createBuffer(descriptor: never): unknown;
}

export interface InitOptions {
  /** 'auto' picks WebGPU on a real GPU, else WebAssembly; default: FLATGRAD_BACKEND in Node, else 'cpu'. */
  backend?: BackendChoice;
  /** A GPU object to use instead of navigator.gpu or Dawn (Node). */
  gpu?: GPULike;
  /** An existing GPUDevice to run on. */
  device?: GPUDeviceLike;
  /**
   * Threads for the wasm backend, the caller's included (honoured as given). Default: one per core
   * (at most 8, where SharedArrayBuffer exists) if a short measurement at init finds them faster
   * than one thread, else one; the result's details.threadCalibration says what was measured.
   */
  threads?: number;
  /** Receives the one line that says what `auto` tried and chose (default: console.warn on fallback). */
  log?: (line: string) => void;
}

const CHOICES: BackendChoice[] = ['cpu', 'wasm', 'webgpu', 'auto'];

function envBackend(): string | undefined {
  return typeof process !== 'undefined' ? process.env?.FLATGRAD_BACKEND : undefined;
}

async function webgpu(opts: InitOptions): Promise<Backend> {
  const { createWebGPUBackend } = await import('./kernels/webgpu/device.js');
  // The structural types above stand for the real WebGPU ones, which the backend uses.
  return createWebGPUBackend({ gpu: opts.gpu as GPU | undefined, device: opts.device as GPUDevice | undefined });
}

async function cpu(): Promise<Backend> {
  // Imported when chosen: a browser page on WebGPU never fetches the CPU backend (see registry.ts).
  const { CpuBackend } = await import('./kernels/cpu/index.js');
  return new CpuBackend();
}

async function wasm(opts: InitOptions): Promise<Backend> {
  const { createWasmBackend } = await import('./kernels/wasm/index.js');
  return createWasmBackend({ threads: opts.threads });
}

/** A software adapter (SwiftShader, llvmpipe, WARP) emulates the GPU on the CPU: slower than wasm. */
export function isSoftwareAdapter(info: BackendInfo): boolean {
  return /swiftshader|llvmpipe|lavapipe|software|warp|basic render/i.test(`${info.adapter} ${JSON.stringify(info.details ?? {})}`);
}

export async function init(opts: InitOptions = {}): Promise<BackendInfo> {
  const choice = (opts.backend ?? envBackend() ?? 'cpu') as BackendChoice;
  if (!CHOICES.includes(choice)) throw new RangeError(`init: unknown backend ${JSON.stringify(choice)}; expected one of ${CHOICES.join(', ')}`);
  const prev = currentBackend();
  let next: Backend;
  if (choice === 'cpu') next = await cpu();
  else if (choice === 'wasm') next = await wasm(opts);
  else if (choice === 'webgpu') next = await webgpu(opts);
  else {
    const tried: string[] = [];
    let gpu: Backend | null = null;
    try {
      gpu = await webgpu(opts);
      if (isSoftwareAdapter(gpu.info())) {
        tried.push(`WebGPU found only a software adapter (${gpu.info().adapter})`);
        gpu.destroy?.();
        gpu = null;
      }
    } catch (e) {
      tried.push(`WebGPU: ${(e as Error).message.split('\n')[0]}`);
    }
    if (gpu) next = gpu;
    else {
      try {
        next = await wasm(opts);
      } catch (e) {
        tried.push(`wasm: ${(e as Error).message.split('\n')[0]}`);
        next = await cpu();
      }
      (opts.log ?? console.warn)(`flatgrad: using the ${next.name} backend (${tried.join('; ')})`);
    }
  }
  if (prev && prev !== next) {
    // Submit what the old backend still queues; a lost device has nothing left to submit.
    try {
      prev.flush();
    } catch {
      /* device lost: its pending work is gone with it */
    }
  }
  setBackend(next);
  return next.info();
}

export function backendInfo(): BackendInfo {
  return getBackend().info();
}

export function memory(): MemoryInfo {
  return getBackend().memory();
}

/** Submits queued GPU work now (it is submitted at readbacks anyway). */
export function flush(): void {
  getBackend().flush();
}

/** Returns the backend's pooled (free) device memory to the system. */
export function trim(): void {
  getBackend().trim?.();
}
