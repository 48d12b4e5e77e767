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
import { CpuStorage } from '../cpu/index.js';
import { FLAG_ACTIVE, registerFusedLoader, S_SLOTS, type ArenaLayout } from '../fused.js';
import type { ArenaKernel } from './define.js';
import { topo } from './expr.js';
import { coefficientValues, evalUniform, referenceKernel, type RangeFn, type UniformEnv } from './reference.js';
import { combinePartials, partialOffsets, partialsOf } from './reduce.js';
import { usesSteps } from './define.js';

/**
 * The renderers that belong to one backend register here when that backend's module loads
 * (src/kernels/wasm/index.ts loads ./wasm.ts, src/kernels/webgpu/fused.ts loads ./webgpu.ts, and
 * is itself loaded by the loader below), so that an app ships only the code of the backends it chose.
 */
export const arenaBackends: {
  /**
   * The f32x4 kernel of a definition over a wasm memory: (pointers, start, end, partial pointers,
   * write, coefficients), specialized to the values of its boolean coefficients when given
   * (kernel.coefs order, null for the float ones).
   */
  wasmKernel: ((kernel: ArenaKernel, memory: object, boolCoefs?: readonly (boolean | null)[]) => (...args: number[]) => void) | null;
  /** A pass on WebGPU: the arena (one block-kernel dispatch) or the per-tensor baseline (one per tensor). */
  webgpuArena: ((kernel: ArenaKernel, backend: Backend, buf: ArenaBuffers) => void) | null;
  webgpuPerTensor: ((kernel: ArenaKernel, backend: Backend, buf: PerTensorBuffers) => void) | null;
  webgpuScalars: ((kernel: ArenaKernel, backend: Backend, S: Storage) => void) | null;
} = { wasmKernel: null, webgpuArena: null, webgpuPerTensor: null, webgpuScalars: null };

// The WebGPU renderer and fused kernels load when the WebGPU backend is created (createWebGPUBackend
// awaits this), the way init() loads a backend: a WebGPU app without arena kernels never ships them.
registerFusedLoader('webgpu', () => import('../webgpu/fused.js'));

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

/** A group's hyper-parameter by name (its own value, or the kernel's default). */
export function hyperOf(kernel: ArenaKernel, hyper: GroupHyper | undefined, group: number): (name: string) => number {
  const g = hyper?.[group];
  return (name) => {
    const v = g?.[name];
    return typeof v === 'number' ? v : kernel.hyper[name];
  };
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

/** Host memory access of the cpu and wasm backends. */
interface Host {
  typed(s: Storage): TypedArray;
  wasm: { memory: object; ptr(s: Storage): number } | null;
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

interface Range {
  /** Storages of the kernel's vectors for this range, in declaration order. */
  vectors: readonly Storage[];
  start: number;
  end: number;
  /** Block index of `start` in the partial arrays. */
  pblk: number;
  group: number;
  flags: number;
  /** Index into the steps storage. */
  param: number;
}

/** The host loop shared by the arena pass and the per-tensor baseline. */
function runHost(kernel: ArenaKernel, backend: Backend, host: Host, dtype: 'float32' | 'float64', ranges: readonly Range[], blocks: number, S: Storage | undefined, steps: Storage | null | undefined, hyper: GroupHyper | undefined, path: RunOptions['path']): void {
  const round = dtype === 'float32' ? Math.fround : (x: number) => x;
  const useWasm = host.wasm !== null && dtype === 'float32' && (path ?? 'auto') === 'auto';
  const nparts = partialOffsets(kernel.reductions).total;
  const wasmParts = useWasm && nparts > 0 ? backend.alloc(nparts * blocks, 'float32') : null;
  try {
    // Views are taken after the allocation above (which may grow, and detach, the wasm memory).
    const Sh = S ? host.typed(S) : new Float64Array(S_SLOTS);
    const stepsH = steps ? host.typed(steps) : null;
    // The wasm kernel's partials stay in wasm memory (float32, combined there below); only the
    // reference path needs host arrays.
    const hostParts = wasmParts ? [] : Array.from({ length: nparts }, () => new Float64Array(blocks));
    const fn: RangeFn | null = useWasm ? null : referenceKernel(kernel, dtype, { interpret: path === 'interpret' });
    if (useWasm && !arenaBackends.wasmKernel) throw new Error(`arena kernel "${kernel.name}" on wasm: the wasm renderer is not loaded (src/kernels/arena/wasm.ts)`);
    const wasmOn = useWasm ? arenaBackends.wasmKernel! : null;
    const partBase = wasmParts ? host.wasm!.ptr(wasmParts) : 0;
    // Coefficients per distinct (group, flags, step count[, parameter]): computed once per pass
    // rather than once per parameter (a model's parameters share a handful of combinations).
    const perParam = drawsPerParam(kernel);
    const memo = new Map<string, { ok: boolean; counted: boolean; C: Float64Array; wfn: ((...args: number[]) => void) | null }>();
    const hyperFns = new Map<number, (name: string) => number>();
    const slotOf = (name: string) => Sh[kernel.slots[name]];
    const nv = kernel.vectors.length;
    // The wasm function's arguments, reused: vector pointers, start, end, partial pointers, write, coefficients.
    const args: number[] = wasmOn ? new Array(nv + 3 + nparts + kernel.coefs.length).fill(0) : [];
    let lastVectors: readonly Storage[] | null = null;
    for (const r of ranges) {
      if (!kernel.includeInactive && !(r.flags & FLAG_ACTIVE)) continue;
      const step0 = stepsH ? stepsH[r.param] : 0;
      const key = perParam ? `${r.group},${r.flags},${step0},${r.param}` : `${r.group},${r.flags},${step0}`;
      let m = memo.get(key);
      if (!m) {
        let hf = hyperFns.get(r.group);
        if (!hf) hyperFns.set(r.group, (hf = hyperOf(kernel, hyper, r.group)));
        const env: UniformEnv = { hyper: hf, slot: slotOf, flags: r.flags, step: step0, param: r.param };
        const ok = kernel.guard ? evalUniform(kernel.guard, env) !== 0 : true;
        const counted = ok && kernel.countSteps && (r.flags & FLAG_ACTIVE) !== 0 && (kernel.countIf === null || evalUniform(kernel.countIf, env) !== 0);
        if (counted) env.step = step0 + 1;
        const C = coefficientValues(kernel, env, round);
        // The wasm kernel for these boolean coefficients (true as the kernel's f32 argument != 0).
        const wfn = wasmOn ? wasmOn(kernel, host.wasm!.memory, kernel.coefs.map((c, j) => (c.ty === 'b' ? Math.fround(C[j]) !== 0 : null))) : null;
        m = { ok, counted, C, wfn };
        memo.set(key, m);
      }
      if (m.counted) stepsH![r.param] = step0 + 1;
      if (!m.ok && nparts === 0) continue;
      if (m.wfn) {
        if (r.vectors !== lastVectors) {
          for (let v = 0; v < nv; v++) args[v] = host.wasm!.ptr(r.vectors[v]);
          lastVectors = r.vectors;
        }
        args[nv] = r.start;
        args[nv + 1] = r.end;
        for (let c = 0; c < nparts; c++) args[nv + 2 + c] = partBase + 4 * (c * blocks + r.pblk);
        args[nv + 2 + nparts] = m.ok ? 1 : 0;
        for (let j = 0; j < m.C.length; j++) args[nv + 3 + nparts + j] = m.C[j];
        m.wfn.apply(null, args);
      } else {
        fn!(r.vectors.map((s) => host.typed(s)), r.start, r.end, m.C, hostParts.map((a) => a.subarray(r.pblk)), 0, m.ok);
      }
    }
    if (nparts === 0) return runAfterHost(kernel, Sh);
    // Combined in place over the wasm memory's float32 partials: every value of the tree is
    // rounded to float32 (round), so float32 storage holds it exactly, as a float64 copy would.
    const wasmAll = wasmParts ? (host.typed(wasmParts) as Float32Array) : null;
    const parts: Float32Array[] | Float64Array[] = wasmAll ? Array.from({ length: nparts }, (_, c) => wasmAll.subarray(c * blocks, (c + 1) * blocks)) : hostParts;
    let c = 0;
    for (const red of kernel.reductions) {
      const n = partialsOf(red.reduction);
      Sh[red.slot] = combinePartials(red.reduction, parts.slice(c, c + n), blocks, round);
      c += n;
    }
    runAfterHost(kernel, Sh);
  } finally {
    if (wasmParts) backend.release(wasmParts);
  }
}

const perParamMemo = new WeakMap<ArenaKernel, boolean>();
/** Whether the kernel's coefficients depend on the parameter's index (a paramUniform draw). */
function drawsPerParam(kernel: ArenaKernel): boolean {
  let r = perParamMemo.get(kernel);
  if (r === undefined) {
    r = topo([...kernel.coefs, ...(kernel.guard ? [kernel.guard] : []), ...(kernel.countIf ? [kernel.countIf] : [])]).some((n) => n.op === 'draw');
    perParamMemo.set(kernel, r);
  }
  return r;
}

/** The kernel's scalar program on host memory: float64, each result stored in S's dtype. */
function runAfterHost(kernel: ArenaKernel, Sh: TypedArray): void {
  if (kernel.after.length === 0) return;
  const env: UniformEnv = { hyper: () => NaN, slot: (name) => Sh[kernel.slots[name]], flags: 0, step: 0 };
  for (const a of kernel.after) Sh[a.slot] = evalUniform(a.value, env);
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
    runAfterHost(kernel, host.typed(S));
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
    const vecs = kernel.vectors.map((v) => buf.vectors[v.name]);
    const ranges: Range[] = L.params.map((info, k) => ({ vectors: vecs, start: info.offset, end: info.offset + info.numel, pblk: info.offset / 64, group: info.group, flags: info.flags, param: k }));
    runHost(kernel, backend, host, L.dtype as 'float32' | 'float64', ranges, L.blocks, buf.S, buf.steps, buf.hyper, opts.path);
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
  let pblk = 0;
  const ranges: Range[] = buf.params.map((p, k) => {
    const r = { vectors: kernel.vectors.map((v) => p.vectors[v.name]), start: 0, end: p.numel, pblk, group: p.group, flags: p.flags, param: k };
    pblk += Math.ceil(p.numel / 64);
    return r;
  });
  runHost(kernel, backend, host, buf.dtype, ranges, Math.max(pblk, 1), buf.S, buf.steps, buf.hyper, opts.path);
  for (const o of hostPassObservers) o(kernel, backend, buf.params.reduce((n, p) => n + p.numel, 0), buf.params.length);
}

