/**
 * Where each backend's arena renderers register (run.ts dispatches through them), and the little
 * they share. A module of its own, apart from run.ts, so that the host backends can register
 * without importing run.ts, whose loading registers the WebGPU fused-kernel loader: a program
 * that uses the cpu backend does not thereby load WebGPU's optimizer kernels.
 */
import type { TypedArray } from '../../tensor/dtype.js';
import type { Backend, Storage } from '../backend.js';
import type { ArenaLayout } from '../fused.js';
import type { ArenaKernel } from './define.js';
import type { ArenaBuffers, GroupHyper, PerTensorBuffers, RunOptions } from './run.js';

/** Host memory access of the cpu and wasm backends. */
export interface Host {
  typed(s: Storage): TypedArray;
  wasm: { memory: object; ptr(s: Storage): number } | null;
}

/**
 * The renderers that belong to one backend register here when that backend's module loads
 * (src/kernels/cpu/index.ts and src/kernels/wasm/index.ts load ./host.ts, wasm also ./wasm.ts;
 * src/kernels/webgpu/fused.ts loads ./webgpu.ts, and is itself loaded by the loader that run.ts
 * registers), so that an app ships only the code of the backends it chose.
 */
export const arenaBackends: {
  /** The passes on host memory (host.ts): the generated reference, or the wasm kernel. */
  host: {
    arena(kernel: ArenaKernel, backend: Backend, host: Host, buf: ArenaBuffers, opts: RunOptions): void;
    perTensor(kernel: ArenaKernel, backend: Backend, host: Host, buf: PerTensorBuffers, opts: RunOptions): void;
    /** The kernel's scalar program over the host array of S. */
    scalars(kernel: ArenaKernel, S: TypedArray): void;
  } | null;
  /**
   * The f32x4 kernel of a definition over a wasm memory: (pointers, start, end, partial pointers,
   * write, coefficients), specialized to the values of its boolean coefficients when given
   * (kernel.coefs order, null for the float ones).
   */
  wasmKernel: ((kernel: ArenaKernel, memory: object, boolCoefs?: readonly (boolean | null)[]) => (...args: number[]) => void) | null;
  /** The reductions' tree over float32 partials in a wasm memory (wasm.ts wasmTree). */
  wasmTree: ((memory: object) => { sum(P: number, n: number): void; max(P: number, n: number): void; norm(P: number, S: number, n: number): void }) | null;
  /** A pass on WebGPU: the arena (one block-kernel dispatch) or the per-tensor baseline (one per tensor). */
  webgpuArena: ((kernel: ArenaKernel, backend: Backend, buf: ArenaBuffers) => void) | null;
  webgpuPerTensor: ((kernel: ArenaKernel, backend: Backend, buf: PerTensorBuffers) => void) | null;
  webgpuScalars: ((kernel: ArenaKernel, backend: Backend, S: Storage) => void) | null;
  /** RWP's row norms on WebGPU (FusedKernels.rowNorms): each element's filter-row norm of p into out. */
  webgpuRowNorms: ((backend: Backend, L: ArenaLayout, p: Storage, out: Storage, scratch: Storage) => void) | null;
} = { host: null, wasmKernel: null, wasmTree: null, webgpuArena: null, webgpuPerTensor: null, webgpuScalars: null, webgpuRowNorms: null };

/** A group's hyper-parameter by name (its own value, or the kernel's default). */
export function hyperOf(kernel: ArenaKernel, hyper: GroupHyper | undefined, group: number): (name: string) => number {
  const g = hyper?.[group];
  return (name) => {
    const v = g?.[name];
    return typeof v === 'number' ? v : kernel.hyper[name];
  };
}
