/**
 * Runs an arena kernel on a backend: one pass over the whole arena (cpu: the reference; wasm: the
 * f32x4 kernel for float32 arenas, the reference for float64; webgpu: the WGSL block kernel, plus
 * a step-count pass and a tree pass when the kernel needs them), or the per-tensor baseline: the
 * same kernel once per parameter over that parameter's own storages, in place and with no
 * temporaries, as PyTorch's foreach-free loop over parameters.
 *
 * The built-in fused primitives (src/kernels/arena/fused.ts) run through here as well: the arena
 * layout and the scalar storage S are those of src/kernels/fused.ts.
 *
 * This module checks the buffers and dispatches; the passes themselves are the host loop
 * (host.ts, cpu and wasm) and the WGSL passes (webgpu.ts), each registered by its backend in
 * backends.ts, so that a program ships only those of the backends it chose.
 *
 * These passes write device memory themselves (host typed arrays on cpu and wasm, the WebGPU
 * runtime's own encoder), not through the Backend methods that a captured step (src/compile)
 * records: while a step is traced, each entry point below goes through captureHooks.deviceCall so
 * that the replay runs the pass too. The kernel and backend are closed over, not passed as
 * arguments: they are constants of the call, and the recorder would otherwise walk the kernel's
 * expression graph looking for storages.
 */
import type { TypedArray } from '../../tensor/dtype.js';
import type { Backend, Storage } from '../backend.js';
import { captureHooks } from '../../compile/hooks.js';
import type { CpuStorage } from '../cpu/index.js';
import { registerFusedLoader, type ArenaLayout } from '../fused.js';
import type { ArenaKernel } from './define.js';
import { usesSteps } from './define.js';
import { arenaBackends, type Host } from './backends.js';

// The WebGPU renderer and fused kernels load when the WebGPU backend is created (createWebGPUBackend
// awaits this), the way init() loads a backend: a WebGPU app without arena kernels never ships them.
registerFusedLoader('webgpu', () => import('../webgpu/fused.js'));

/** The host passes, or an error saying what is missing (a host backend created without its module, as a test double might be). */
function hostPasses(kernel: ArenaKernel, backend: Backend): NonNullable<typeof arenaBackends.host> {
  if (!arenaBackends.host) throw new Error(`arena kernel "${kernel.name}" on ${backend.name}: the host passes are not loaded (src/kernels/arena/host.ts, which the cpu and wasm backends import)`);
  return arenaBackends.host;
}

function noRenderer(kernel: ArenaKernel, backend: Backend): Error {
  const why = backend.name === 'webgpu' ? ' (it loads when the backend is created: import the arena kernels or flatgrad/optim before init() creates it, or call init() again)' : '';
  return new Error(`arena kernel "${kernel.name}": no renderer for backend ${backend.name}${why}`);
}

/** Hyper-parameters of each parameter group (a missing one takes the kernel's default). */
export type GroupHyper = readonly Readonly<Record<string, number>>[];

export interface ArenaBuffers {
  layout: ArenaLayout;
  /** A storage of the arena's layout for each vector the kernel declares. */
  vectors: Readonly<Record<string, Storage>>;
  /** The scalar slots (S_SLOTS elements of the arena's dtype); may be left out by a kernel that declares no slot. */
  S?: Storage;
  /** Per-parameter step counts (one element per parameter); needed when the kernel counts or reads steps. */
  steps?: Storage | null;
  hyper?: GroupHyper;
}

export interface RunOptions {
  /**
   * Which host code runs on cpu and wasm: 'auto' (the wasm kernel for float32 on wasm, else the
   * generated reference), 'reference' (the generated reference, also on wasm), 'interpret' (the
   * interpreter the reference falls back to where code generation is forbidden).
   */
  path?: 'auto' | 'reference' | 'interpret';
}

function checkBuffers(kernel: ArenaKernel, backend: Backend, vectors: Readonly<Record<string, Storage>>, steps: Storage | null | undefined, numel: number | null, where: string, S: Storage | undefined): void {
  if (!S && Object.keys(kernel.slots).length > 0) throw new Error(`arena kernel "${kernel.name}" on ${backend.name}${where}: declares scalar slots but no S storage was given`);
  for (const v of kernel.vectors) {
    const s = vectors[v.name];
    if (!s) throw new Error(`arena kernel "${kernel.name}" on ${backend.name}${where}: no storage given for vector '${v.name}'`);
    if (numel !== null && s.numel < numel) throw new RangeError(`arena kernel "${kernel.name}" on ${backend.name}${where}: vector '${v.name}' has ${s.numel} elements, the arena ${numel}`);
  }
  if (usesSteps(kernel) && !steps) throw new Error(`arena kernel "${kernel.name}" on ${backend.name}${where}: counts or reads step counts but no steps storage was given`);
}


/** A typed array over a storage of a host-memory backend (cpu, wasm), or null on a device backend. */
export function hostArrayOf(backend: Backend): ((s: Storage) => TypedArray) | null {
  const h = hostOf(backend);
  return h ? h.typed : null;
}

function hostOf(backend: Backend): Host | null {
  if (backend.name === 'cpu') return { typed: (s) => (s as CpuStorage).data, wasm: null };
  if (backend.name === 'wasm') {
    // The wasm backend's memory and typed views (TypeScript-private members, as the existing fused
    // kernels reach them): the kernels of this module are instantiated over the same memory.
    const b = backend as unknown as { typed(s: Storage): TypedArray; mem: object };
    return { typed: (s) => b.typed(s), wasm: { memory: b.mem, ptr: (s) => (s as unknown as { ptr: number }).ptr } };
  }
  return null;
}

/**
 * Runs a kernel that is a scalar program alone (no vectors: only `after`) over the slots S, in one
 * invocation on a GPU.
 */
export function runScalarProgram(kernel: ArenaKernel, backend: Backend, S: Storage): void {
  if (kernel.vectors.length > 0 || kernel.reductions.length > 0) throw new Error(`arena kernel "${kernel.name}": runScalarProgram takes a kernel with only a scalar program (after), this one reads vectors`);
  if (captureHooks.deviceCall) return void captureHooks.deviceCall(`arena scalar program "${kernel.name}"`, (s: Storage) => scalarProgramNow(kernel, backend, s), [S]);
  scalarProgramNow(kernel, backend, S);
}

function scalarProgramNow(kernel: ArenaKernel, backend: Backend, S: Storage): void {
  const host = hostOf(backend);
  if (host) {
    hostPasses(kernel, backend).scalars(kernel, host.typed(S));
    for (const o of hostPassObservers) o(kernel, backend, 0, 1);
    return;
  }
  if (backend.name === 'webgpu' && arenaBackends.webgpuScalars) return arenaBackends.webgpuScalars(kernel, backend, S);
  throw noRenderer(kernel, backend);
}

/**
 * Observers of the passes the host backends run (WebGPU passes show in its runtime's dispatches):
 * `flatgrad bench` counts dispatches and bytes with it. Called with the elements each vector spans
 * and the number of dispatches (1 for an arena pass, one per tensor for the per-tensor baseline).
 */
export const hostPassObservers = new Set<(kernel: ArenaKernel, backend: Backend, elements: number, dispatches: number) => void>();

/** Runs `kernel` once over the whole arena. */
export function runArenaKernel(kernel: ArenaKernel, backend: Backend, buf: ArenaBuffers, opts: RunOptions = {}): void {
  checkBuffers(kernel, backend, buf.vectors, buf.steps, buf.layout.numel, '', buf.S);
  if (captureHooks.deviceCall) return void captureHooks.deviceCall(`arena pass "${kernel.name}"`, (b: ArenaBuffers, o: RunOptions) => arenaPassNow(kernel, backend, b, o), [buf, opts]);
  arenaPassNow(kernel, backend, buf, opts);
}

function arenaPassNow(kernel: ArenaKernel, backend: Backend, buf: ArenaBuffers, opts: RunOptions): void {
  const L = buf.layout;
  const host = hostOf(backend);
  if (host) {
    hostPasses(kernel, backend).arena(kernel, backend, host, buf, opts);
    for (const o of hostPassObservers) o(kernel, backend, L.numel, 1);
    return;
  }
  if (backend.name === 'webgpu' && arenaBackends.webgpuArena) return arenaBackends.webgpuArena(kernel, backend, buf);
  throw noRenderer(kernel, backend);
}

export interface PerTensorParam {
  /** This parameter's own storage of each declared vector (numel elements each). */
  vectors: Readonly<Record<string, Storage>>;
  numel: number;
  group: number;
  /** FLAG_* bits (FLAG_ACTIVE for a parameter with a gradient). */
  flags: number;
  /**
   * The index of its first element in the flat arena the same parameters would form (0 if not
   * given): its normal draws (k.normal) take element index + j, so that they equal the arena's.
   */
  index?: number;
}

export interface PerTensorBuffers {
  dtype: 'float32' | 'float64';
  params: readonly PerTensorParam[];
  S?: Storage;
  steps?: Storage | null;
  hyper?: GroupHyper;
}

/**
 * The per-tensor baseline: the kernel once per parameter over its own storages (one dispatch per
 * tensor). Reductions combine the per-tensor block partials in the arena's order, so they equal
 * the arena pass's bit for bit. On WebGPU: one block-kernel dispatch per tensor (vec4 bindings
 * padded to 16 bytes), one step-count pass and one tree pass.
 */
export function runPerTensor(kernel: ArenaKernel, backend: Backend, buf: PerTensorBuffers, opts: RunOptions = {}): void {
  buf.params.forEach((p, k) => checkBuffers(kernel, backend, p.vectors, buf.steps, p.numel, ` (per tensor, parameter ${k})`, buf.S));
  if (captureHooks.deviceCall) return void captureHooks.deviceCall(`arena per-tensor pass "${kernel.name}"`, (b: PerTensorBuffers, o: RunOptions) => perTensorNow(kernel, backend, b, o), [buf, opts]);
  perTensorNow(kernel, backend, buf, opts);
}

function perTensorNow(kernel: ArenaKernel, backend: Backend, buf: PerTensorBuffers, opts: RunOptions): void {
  const host = hostOf(backend);
  if (!host) {
    if (backend.name === 'webgpu' && arenaBackends.webgpuPerTensor) return arenaBackends.webgpuPerTensor(kernel, backend, buf);
    throw noRenderer(kernel, backend);
  }
  hostPasses(kernel, backend).perTensor(kernel, backend, host, buf, opts);
  for (const o of hostPassObservers) o(kernel, backend, buf.params.reduce((n, p) => n + p.numel, 0), buf.params.length);
}

