/**
 * The WebGPU runner of arena kernels (loaded with the WebGPU backend's fused kernels,
 * src/kernels/webgpu/fused.ts): a pass is a step-count dispatch (one invocation per parameter),
 * the block kernel of wgsl.ts (once over the arena, or once per tensor for the per-tensor
 * baseline, its partials in the arena's block order) and the tree pass that finishes the
 * reductions and runs the scalar program.
 */
import type { Backend, Storage } from '../backend.js';
import { BLOCK, F_FLAGS, F_GROUP, F_NUMEL, F_OFFSET, F_ROWBASE, F_ROWLEN, FLAG_ACTIVE, FLAG_VECTOR, PARAM_FIELDS, S_SLOTS, type ArenaLayout } from '../fused.js';
import type { Bind, GPUStorage, Runtime } from '../webgpu/runtime.js';
import { entry, type Param } from '../webgpu/wgsl.js';
import { usesSteps, type ArenaKernel } from './define.js';
import { evalUniform, type UniformEnv } from './uniform.js';
import { partialOffsets } from './reduce.js';
import { arenaBackends, hyperOf } from './backends.js';
import type { ArenaBuffers, GroupHyper, PerTensorBuffers, PerTensorParam } from './run.js';
import { renderWgsl, renderWgslScalars, renderWgslSteps, renderWgslTree, WGSL_BLOCK_WG, WGSL_TREE_WG, WGSL_TREE_WG_CPU, wgslHostUniforms, wgslKeyUniforms } from './wgsl.js';

/** One block-kernel dispatch of a WebGPU pass: its vectors, its block table, where its partials go. */
interface GpuDispatch {
  vectors: Readonly<Record<string, Storage>>;
  /** int32 per block: the parameter (row of pt) owning it. */
  bp: Storage;
  nblocks: number;
  /** Index of its first block among the pass's partials. */
  pbase: number;
  /** Added to an element's index for its normal draws (the tensor's arena offset per tensor). */
  ibase: number;
}

function runWebGPU(kernel: ArenaKernel, backend: Backend, buf: ArenaBuffers): void {
  const L = buf.layout;
  if (L.dtype !== 'float32') throw new TypeError(`arena kernel "${kernel.name}" on webgpu: the arena must be float32, got ${L.dtype}`);
  runWebGPUPass(kernel, backend, { S: buf.S, steps: buf.steps, hyper: buf.hyper }, L.groups, L.params.length, L.paramTable, L.blocks, [{ vectors: buf.vectors, bp: L.blockParam, nblocks: L.blocks, pbase: 0, ibase: 0 }]);
}

/**
 * A pass on WebGPU: the step-count pass (one invocation per parameter), the block kernel once per
 * entry of `dispatches` (the arena: one; the per-tensor baseline: one per tensor), and the tree
 * pass over all `blocks` partials with the scalar program.
 */
function runWebGPUPass(
  kernel: ArenaKernel,
  backend: Backend,
  buf: { S?: Storage; steps?: Storage | null; hyper?: GroupHyper },
  ngroups: number,
  nparams: number,
  pt: Storage,
  blocks: number,
  dispatches: readonly GpuDispatch[],
): void {
  const rt = (backend as unknown as { rt: Runtime }).rt;
  const gpu = (s: Storage) => s as GPUStorage;
  // A kernel without slots still binds S (the shaders declare it): a temporary stands in.
  const ownS = buf.S ? null : rt.temp(S_SLOTS, 'float32');
  const S = gpu(buf.S ?? ownS!);
  const groups = Math.max(ngroups, 1);
  const hyperParams: Param[] = [];
  wgslKeyUniforms(kernel).forEach((n, j) => {
    for (let g = 0; g < groups; g++) {
      const env: UniformEnv = { hyper: hyperOf(kernel, buf.hyper, g), slot: () => NaN, flags: 0, step: 0 };
      hyperParams.push({ name: `k${j}_${g}`, type: 'u32', value: evalUniform(n, env) >>> 0 });
    }
  });
  wgslHostUniforms(kernel).forEach((n, j) => {
    for (let g = 0; g < groups; g++) {
      const env: UniformEnv = { hyper: hyperOf(kernel, buf.hyper, g), slot: () => NaN, flags: 0, step: 0 };
      hyperParams.push({ name: `u${j}_${g}`, type: 'f32', value: evalUniform(n, env) });
    }
  });
  const steps = usesSteps(kernel);
  if (kernel.countSteps) {
    rt.dispatch({
      name: `arena.${kernel.name}.steps`,
      key: kernel.name,
      binds: [{ name: 'S', s: S, access: 'read' }, { name: 'bp', s: gpu(dispatches[0]?.bp ?? pt), access: 'read' }, { name: 'pt', s: gpu(pt), access: 'read' }, { name: 'steps', s: gpu(buf.steps!), access: 'read_write' }],
      params: [{ name: 'nparams', type: 'u32', value: nparams }, ...hyperParams],
      groups: Math.ceil(nparams / WGSL_BLOCK_WG),
      wgsl: () => renderWgslSteps(kernel, groups),
    });
  }
  const nparts = partialOffsets(kernel.reductions).total;
  const part = nparts > 0 ? rt.temp(nparts * blocks, 'float32') : null;
  for (const d of dispatches) {
    if (d.nblocks === 0) continue;
    const binds: Bind[] = kernel.vectors.map((v) => ({ name: `v_${v.name}`, s: gpu(d.vectors[v.name]), access: v.access === 'read' ? 'read' : 'read_write', type: 'vec4<f32>', padTo16: true }));
    binds.push({ name: 'S', s: S, access: 'read' }, { name: 'bp', s: gpu(d.bp), access: 'read' }, { name: 'pt', s: gpu(pt), access: 'read' });
    if (steps) binds.push({ name: 'steps', s: gpu(buf.steps!), access: 'read' });
    if (part) binds.push({ name: 'part', s: part, access: 'write' });
    rt.dispatch({
      name: `arena.${kernel.name}`,
      key: kernel.name,
      binds,
      params: [{ name: 'nblocks', type: 'u32', value: d.nblocks }, { name: 'pstride', type: 'u32', value: blocks }, { name: 'pbase', type: 'u32', value: d.pbase }, { name: 'ibase', type: 'u32', value: d.ibase }, ...hyperParams],
      groups: Math.ceil(d.nblocks / WGSL_BLOCK_WG),
      wgsl: () => renderWgsl(kernel, groups),
    });
  }
  if (part) {
    rt.dispatch({
      name: `arena.${kernel.name}.tree`,
      key: kernel.name,
      binds: [
        { name: 'part', s: part, access: 'read_write' },
        { name: 'S', s: S, access: 'read_write' },
      ],
      params: [{ name: 'nblocks', type: 'u32', value: blocks }],
      groups: 1,
      wgsl: () => renderWgslTree(kernel, rt.cpuEmulated ? WGSL_TREE_WG_CPU : WGSL_TREE_WG),
    });
    rt.release(part);
  } else if (kernel.after.length > 0) runWebGPUScalars(kernel, backend, S);
  if (ownS) rt.release(ownS);
}

/** Per-tensor tables on WebGPU (pt rows at offset 0, a block table per tensor), cached by the parameters' shapes and flags. */
const perTensorTables = new WeakMap<Backend, Map<string, { pt: Storage; bps: Storage[] }>>();
function perTensorTablesOf(backend: Backend, params: readonly PerTensorParam[]): { pt: Storage; bps: Storage[] } {
  let byKey = perTensorTables.get(backend);
  if (!byKey) perTensorTables.set(backend, (byKey = new Map()));
  const key = params.map((p) => `${p.numel}:${p.group}:${p.flags}`).join(',');
  let t = byKey.get(key);
  if (!t) {
    const table = new Int32Array(Math.max(params.length, 1) * PARAM_FIELDS);
    params.forEach((p, k) => {
      table[k * PARAM_FIELDS + F_NUMEL] = p.numel;
      table[k * PARAM_FIELDS + F_GROUP] = p.group;
      table[k * PARAM_FIELDS + F_FLAGS] = p.flags;
    });
    t = { pt: backend.upload(table, 'int32'), bps: params.map((p, k) => backend.upload(new Int32Array(Math.max(Math.ceil(p.numel / BLOCK), 1)).fill(k), 'int32')) };
    // Kept for the backend's life, as its pipelines are: a model has a handful of keys (the flags
    // change only with which parameters have gradients).
    byKey.set(key, t);
  }
  return t;
}

function runWebGPUScalars(kernel: ArenaKernel, backend: Backend, S: Storage): void {
  const rt = (backend as unknown as { rt: Runtime }).rt;
  rt.dispatch({
    name: `arena.${kernel.name}.after`,
    key: kernel.name,
    binds: [{ name: 'S', s: S as GPUStorage, access: 'read_write' }],
    params: [],
    groups: 1,
    wgsl: () => renderWgslScalars(kernel),
  });
}

/** The per-tensor baseline on WebGPU: the block kernel once per tensor, the partials in the arena's block order. */
function runWebGPUPerTensor(kernel: ArenaKernel, backend: Backend, buf: PerTensorBuffers): void {
  if (buf.dtype !== 'float32') throw new TypeError(`arena kernel "${kernel.name}" on webgpu: per-tensor storages must be float32, got ${buf.dtype}`);
  const { pt, bps } = perTensorTablesOf(backend, buf.params);
  let pbase = 0;
  const dispatches = buf.params.map((p, k) => {
    const d = { vectors: p.vectors, bp: bps[k], nblocks: Math.ceil(p.numel / BLOCK), pbase, ibase: p.index ?? 0 };
    pbase += d.nblocks;
    return d;
  });
  const ngroups = buf.params.reduce((g, p) => Math.max(g, p.group + 1), 1);
  runWebGPUPass(kernel, backend, buf, ngroups, buf.params.length, pt, Math.max(pbase, 1), dispatches);
}

const ROW_WG = 256;

/**
 * RWP's filter-wise std (FusedKernels.rowNorms) on WebGPU: the norm of each filter row of p into
 * `scratch` (one invocation per row), then each active element's row norm into out (one per
 * element). A reduction per row, outside the kernel language (see src/kernels/arena/fused.ts
 * hostRowNorms, the host's): the noise definition then multiplies it in.
 */
function runWebGPURowNorms(backend: Backend, L: ArenaLayout, p: Storage, out: Storage, scratch: Storage): void {
  if (L.rows === 0) return;
  const rt = (backend as unknown as { rt: Runtime }).rt;
  const gpu = (s: Storage) => s as GPUStorage;
  const tables: Bind[] = [
    { name: 'bp', s: gpu(L.blockParam), access: 'read' },
    { name: 'pt', s: gpu(L.paramTable), access: 'read' },
  ];
  rt.dispatch({
    name: 'arena.rowNorms',
    key: 'arena.rowNorms',
    binds: [{ name: 'p', s: gpu(p), access: 'read' }, { name: 'rn', s: gpu(scratch), access: 'read_write' }, ...tables],
    params: [{ name: 'n', type: 'u32', value: L.rows }, { name: 'np', type: 'u32', value: L.params.length }],
    groups: Math.ceil(L.rows / ROW_WG),
    wgsl: () => `${entry(ROW_WG)} {
  let r = fg_group(wg, nwg) * ${ROW_WG}u + lid;
  if (r >= P.n) { return; }
  // The last parameter whose first row is at or before r owns it.
  var lo = 0u;
  var hi = P.np - 1u;
  loop {
    if (lo >= hi) { break; }
    let mid = (lo + hi + 1u) / 2u;
    if (u32(pt[mid * ${PARAM_FIELDS}u + ${F_ROWBASE}u]) <= r) { lo = mid; } else { hi = mid - 1u; }
  }
  let b = lo * ${PARAM_FIELDS}u;
  let rowLen = u32(pt[b + ${F_ROWLEN}u]);
  let start = u32(pt[b + ${F_OFFSET}u]) + (r - u32(pt[b + ${F_ROWBASE}u])) * rowLen;
  var s = 0.0;
  for (var j = 0u; j < rowLen; j++) { let v = p[start + j]; s += v * v; }
  var extra = 0.0;
  if ((u32(pt[b + ${F_FLAGS}u]) & ${FLAG_VECTOR}u) != 0u) { extra = 1e-16; }
  rn[r] = sqrt(s) + extra;
}`,
  });
  rt.dispatch({
    name: 'arena.rowNormsOut',
    key: 'arena.rowNormsOut',
    binds: [{ name: 'out', s: gpu(out), access: 'read_write' }, { name: 'rn', s: gpu(scratch), access: 'read' }, ...tables],
    params: [{ name: 'n', type: 'u32', value: L.numel }],
    groups: Math.ceil(L.numel / ROW_WG),
    wgsl: () => `${entry(ROW_WG)} {
  let i = fg_group(wg, nwg) * ${ROW_WG}u + lid;
  // A per-tensor call binds just the tensor.
  if (i >= P.n || i >= arrayLength(&out)) { return; }
  let k = bp[i / ${BLOCK}u];
  if (k < 0) { return; }
  let b = u32(k) * ${PARAM_FIELDS}u;
  let off = u32(pt[b + ${F_OFFSET}u]);
  let rowLen = u32(pt[b + ${F_ROWLEN}u]);
  if (i - off >= u32(pt[b + ${F_NUMEL}u]) || (u32(pt[b + ${F_FLAGS}u]) & ${FLAG_ACTIVE}u) == 0u || rowLen == 0u) { return; }
  out[i] = rn[u32(pt[b + ${F_ROWBASE}u]) + (i - off) / rowLen];
}`,
  });
}

/** Makes the arena runner render WGSL for WebGPU (called by src/kernels/webgpu/fused.ts when it loads). */
export function registerArenaWebGPU(): void {
  arenaBackends.webgpuArena = runWebGPU;
  arenaBackends.webgpuPerTensor = runWebGPUPerTensor;
  arenaBackends.webgpuScalars = runWebGPUScalars;
  arenaBackends.webgpuRowNorms = runWebGPURowNorms;
}
