/**
 * Runs an arena kernel on a backend: one pass over the whole arena (cpu: the reference; wasm: the
 * f32x4 kernel for float32 arenas, the reference for float64; webgpu: the WGSL block kernel, plus
 * a step-count pass and a tree pass when the kernel needs them), or the per-tensor baseline: the
 * same kernel once per parameter over that parameter's own storages, in place and with no
 * temporaries, as PyTorch's foreach-free loop over parameters.
 *
 * Nothing here touches the existing fused kernels (src/kernels/fused.ts): the arena layout and the
 * scalar storage S are the same, so both can run over one FlatArena.
 */
import type { TypedArray } from '../../tensor/dtype.js';
import type { Backend, Storage } from '../backend.js';
import { CpuStorage } from '../cpu/index.js';
import { FLAG_ACTIVE, type ArenaLayout } from '../fused.js';
import type { Bind, GPUStorage, Runtime } from '../webgpu/runtime.js';
import type { Param } from '../webgpu/wgsl.js';
import type { ArenaKernel } from './define.js';
import { coefficientValues, evalUniform, referenceKernel, type RangeFn, type UniformEnv } from './reference.js';
import { combinePartials, partialsOf } from './reduce.js';
import { wasmKernel } from './wasm.js';
import { renderWgsl, renderWgslSteps, renderWgslTree, usesSteps, WGSL_BLOCK_WG, wgslHostUniforms } from './wgsl.js';

/** Hyper-parameters of each parameter group (a missing one takes the kernel's default). */
export type GroupHyper = readonly Readonly<Record<string, number>>[];

export interface ArenaBuffers {
  layout: ArenaLayout;
  /** A storage of the arena's layout for each vector the kernel declares. */
  vectors: Readonly<Record<string, Storage>>;
  /** The scalar slots (S_SLOTS elements of the arena's dtype). */
  S: Storage;
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

function hyperOf(kernel: ArenaKernel, hyper: GroupHyper | undefined, group: number): (name: string) => number {
  const g = hyper?.[group];
  return (name) => {
    const v = g?.[name];
    return typeof v === 'number' ? v : kernel.hyper[name];
  };
}

function checkBuffers(kernel: ArenaKernel, backend: Backend, vectors: Readonly<Record<string, Storage>>, steps: Storage | null | undefined, numel: number | null, where: string): void {
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
  wasm: { memory: WebAssembly.Memory; ptr(s: Storage): number } | null;
}

function hostOf(backend: Backend): Host | null {
  if (backend.name === 'cpu') return { typed: (s) => (s as CpuStorage).data, wasm: null };
  if (backend.name === 'wasm') {
    // The wasm backend's memory and typed views (TypeScript-private members, as the existing fused
    // kernels reach them): the kernels of this module are instantiated over the same memory.
    const b = backend as unknown as { typed(s: Storage): TypedArray; mem: WebAssembly.Memory };
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
function runHost(kernel: ArenaKernel, backend: Backend, host: Host, dtype: 'float32' | 'float64', ranges: readonly Range[], blocks: number, S: Storage, steps: Storage | null | undefined, hyper: GroupHyper | undefined, path: RunOptions['path']): void {
  const round = dtype === 'float32' ? Math.fround : (x: number) => x;
  const useWasm = host.wasm !== null && dtype === 'float32' && (path ?? 'auto') === 'auto';
  const nparts = kernel.reductions.reduce((s, r) => s + partialsOf(r.reduction), 0);
  const wasmParts = useWasm && nparts > 0 ? backend.alloc(nparts * blocks, 'float32') : null;
  try {
    // Views are taken after the allocation above (which may grow, and detach, the wasm memory).
    const Sh = host.typed(S);
    const stepsH = steps ? host.typed(steps) : null;
    const hostParts = Array.from({ length: nparts }, () => new Float64Array(blocks));
    const fn: RangeFn | null = useWasm ? null : referenceKernel(kernel, dtype, { interpret: path === 'interpret' });
    const wfn = useWasm ? wasmKernel(kernel, host.wasm!.memory) : null;
    const partBase = wasmParts ? host.wasm!.ptr(wasmParts) : 0;
    const C = new Float64Array(kernel.coefs.length);
    for (const r of ranges) {
      if (!kernel.includeInactive && !(r.flags & FLAG_ACTIVE)) continue;
      const env: UniformEnv = {
        hyper: hyperOf(kernel, hyper, r.group),
        slot: (name) => Sh[kernel.slots[name]],
        flags: r.flags,
        step: stepsH ? stepsH[r.param] : 0,
      };
      const ok = kernel.guard ? evalUniform(kernel.guard, env) !== 0 : true;
      if (ok && kernel.countSteps && r.flags & FLAG_ACTIVE) env.step = stepsH![r.param] = stepsH![r.param] + 1;
      if (!ok && nparts === 0) continue;
      coefficientValues(kernel, env, round, C);
      if (wfn) {
        const ptrs = r.vectors.map((s) => host.wasm!.ptr(s));
        const pptrs = Array.from({ length: nparts }, (_, c) => partBase + 4 * (c * blocks + r.pblk));
        wfn(...ptrs, r.start, r.end, ...pptrs, ok ? 1 : 0, ...C);
      } else {
        fn!(r.vectors.map((s) => host.typed(s)), r.start, r.end, C, hostParts.map((a) => a.subarray(r.pblk)), 0, ok);
      }
    }
    if (nparts === 0) return;
    if (wasmParts) {
      const all = host.typed(wasmParts);
      hostParts.forEach((a, c) => a.set(all.subarray(c * blocks, (c + 1) * blocks)));
    }
    let c = 0;
    for (const red of kernel.reductions) {
      const n = partialsOf(red.reduction);
      Sh[red.slot] = combinePartials(red.reduction, hostParts.slice(c, c + n), blocks, round);
      c += n;
    }
  } finally {
    if (wasmParts) backend.release(wasmParts);
  }
}

/** Runs `kernel` once over the whole arena. */
export function runArenaKernel(kernel: ArenaKernel, backend: Backend, buf: ArenaBuffers, opts: RunOptions = {}): void {
  const L = buf.layout;
  checkBuffers(kernel, backend, buf.vectors, buf.steps, L.numel, '');
  const host = hostOf(backend);
  if (host) {
    const vecs = kernel.vectors.map((v) => buf.vectors[v.name]);
    const ranges: Range[] = L.params.map((info, k) => ({ vectors: vecs, start: info.offset, end: info.offset + info.numel, pblk: info.offset / 64, group: info.group, flags: info.flags, param: k }));
    runHost(kernel, backend, host, L.dtype as 'float32' | 'float64', ranges, L.blocks, buf.S, buf.steps, buf.hyper, opts.path);
    return;
  }
  if (backend.name === 'webgpu') return runWebGPU(kernel, backend, buf);
  throw new Error(`arena kernel "${kernel.name}": no renderer for backend ${backend.name}`);
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
  S: Storage;
  steps?: Storage | null;
  hyper?: GroupHyper;
}

/**
 * The per-tensor baseline: the kernel once per parameter over its own storages (one dispatch per
 * tensor). Reductions combine the per-tensor block partials in the arena's order, so they equal
 * the arena pass's bit for bit. Host backends only in this phase.
 */
export function runPerTensor(kernel: ArenaKernel, backend: Backend, buf: PerTensorBuffers, opts: RunOptions = {}): void {
  buf.params.forEach((p, k) => checkBuffers(kernel, backend, p.vectors, buf.steps, p.numel, ` (per tensor, parameter ${k})`));
  const host = hostOf(backend);
  if (!host) throw new Error(`arena kernel "${kernel.name}": the per-tensor baseline runs on cpu and wasm in this phase, not on ${backend.name}`);
  let pblk = 0;
  const ranges: Range[] = buf.params.map((p, k) => {
    const r = { vectors: kernel.vectors.map((v) => p.vectors[v.name]), start: 0, end: p.numel, pblk, group: p.group, flags: p.flags, param: k };
    pblk += Math.ceil(p.numel / 64);
    return r;
  });
  runHost(kernel, backend, host, buf.dtype, ranges, Math.max(pblk, 1), buf.S, buf.steps, buf.hyper, opts.path);
}

function runWebGPU(kernel: ArenaKernel, backend: Backend, buf: ArenaBuffers): void {
  const L = buf.layout;
  if (L.dtype !== 'float32') throw new TypeError(`arena kernel "${kernel.name}" on webgpu: the arena must be float32, got ${L.dtype}`);
  const rt = (backend as unknown as { rt: Runtime }).rt;
  const gpu = (s: Storage) => s as GPUStorage;
  const hyperParams: Param[] = [];
  wgslHostUniforms(kernel).forEach((n, j) => {
    for (let g = 0; g < Math.max(L.groups, 1); g++) {
      const env: UniformEnv = { hyper: hyperOf(kernel, buf.hyper, g), slot: () => NaN, flags: 0, step: 0 };
      hyperParams.push({ name: `u${j}_${g}`, type: 'f32', value: evalUniform(n, env) });
    }
  });
  const groups = Math.max(L.groups, 1);
  const tables: Bind[] = [
    { name: 'bp', s: gpu(L.blockParam), access: 'read' },
    { name: 'pt', s: gpu(L.paramTable), access: 'read' },
  ];
  const steps = usesSteps(kernel);
  if (kernel.countSteps) {
    rt.dispatch({
      name: `arena.${kernel.name}.steps`,
      key: kernel.name,
      binds: [{ name: 'S', s: gpu(buf.S), access: 'read' }, ...tables, { name: 'steps', s: gpu(buf.steps!), access: 'read_write' }],
      params: [{ name: 'nparams', type: 'u32', value: L.params.length }, ...hyperParams],
      groups: Math.ceil(L.params.length / WGSL_BLOCK_WG),
      wgsl: () => renderWgslSteps(kernel, groups),
    });
  }
  const nparts = kernel.reductions.reduce((s, r) => s + partialsOf(r.reduction), 0);
  const part = nparts > 0 ? rt.temp(nparts * L.blocks, 'float32') : null;
  const binds: Bind[] = kernel.vectors.map((v) => ({ name: `v_${v.name}`, s: gpu(buf.vectors[v.name]), access: v.access === 'read' ? 'read' : 'read_write', type: 'vec4<f32>' }));
  binds.push({ name: 'S', s: gpu(buf.S), access: 'read' }, ...tables);
  if (steps) binds.push({ name: 'steps', s: gpu(buf.steps!), access: 'read' });
  if (part) binds.push({ name: 'part', s: part, access: 'write' });
  rt.dispatch({
    name: `arena.${kernel.name}`,
    key: kernel.name,
    binds,
    params: [{ name: 'nblocks', type: 'u32', value: L.blocks }, ...hyperParams],
    groups: Math.ceil(L.blocks / WGSL_BLOCK_WG),
    wgsl: () => renderWgsl(kernel, groups),
  });
  if (part) {
    rt.dispatch({
      name: `arena.${kernel.name}.tree`,
      key: kernel.name,
      binds: [
        { name: 'part', s: part, access: 'read_write' },
        { name: 'S', s: gpu(buf.S), access: 'read_write' },
      ],
      params: [{ name: 'nblocks', type: 'u32', value: L.blocks }],
      groups: 1,
      wgsl: () => renderWgslTree(kernel),
    });
    rt.release(part);
  }
}
