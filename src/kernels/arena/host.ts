/**
 * The arena passes on host memory (the cpu and wasm backends): the loop over parameter ranges
 * that runs each kernel's generated reference (reference.ts) or, on wasm for float32 arenas, its
 * f32x4 kernel, then combines the block partials and runs the scalar program. A module of its
 * own, registered into run.ts's `arenaBackends` by the host backends when they load
 * (src/kernels/cpu/index.ts, src/kernels/wasm/index.ts), so that a WebGPU page never fetches the
 * reference code generator with the optimizers.
 */
import type { TypedArray } from '../../tensor/dtype.js';
import type { Backend, Storage } from '../backend.js';
import { FLAG_ACTIVE, S_SLOTS } from '../fused.js';
import type { ArenaKernel } from './define.js';
import { topo } from './expr.js';
import { coefficientValues, referenceKernel, type RangeFn } from './reference.js';
import { evalUniform, type UniformEnv } from './uniform.js';
import { combinePartials, partialOffsets, partialsOf, reductionValue } from './reduce.js';
import { arenaBackends, hyperOf, type Host } from './backends.js';
import type { ArenaBuffers, GroupHyper, PerTensorBuffers, RunOptions } from './run.js';

/**
 * What a backend with worker threads offers the wasm passes (the wasm backend, index.ts): the
 * threads to split a pass over `elements` elements of `vectors` vectors over (1: run it here),
 * and the runner of such a split (part t's calls of the kernel on thread t).
 */
export interface ArenaSplitter {
  arenaThreads(elements: number, vectors: number): number;
  runArenaParts(parts: readonly { fn: (...args: number[]) => void; args: number[] }[][]): void;
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
  /** Added to an element's index for its normal draws (0 over an arena, the arena offset per tensor). */
  index: number;
}

/** The host loop shared by the arena pass and the per-tensor baseline. */
function runHost(kernel: ArenaKernel, backend: Backend, host: Host, dtype: 'float32' | 'float64', ranges: readonly Range[], blocks: number, S: Storage | undefined, steps: Storage | null | undefined, hyper: GroupHyper | undefined, path: RunOptions['path']): void {
  const round = dtype === 'float32' ? Math.fround : (x: number) => x;
  const useWasm = host.wasm !== null && dtype === 'float32' && (path ?? 'auto') === 'auto';
  const nparts = partialOffsets(kernel.reductions).total;
  // Uninitialized: every block's partials are written below (a skipped range's set to the
  // identity, 0), where zeroing them all first costs a fifth of a norm's pass over a large arena.
  const wasmParts = useWasm && nparts > 0 ? (backend.allocUninit ?? backend.alloc).call(backend, nparts * blocks, 'float32') : null;
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
    // The wasm function's arguments, reused: vector pointers, start, end, partial pointers, write, ib, coefficients.
    const args: number[] = wasmOn ? new Array(nv + 4 + nparts + kernel.coefs.length).fill(0) : [];
    let lastVectors: readonly Storage[] | null = null;
    // Over threads where the backend says so: the calls are collected, then cut into parts (runSplit).
    const splitter = backend as Partial<ArenaSplitter>;
    const threads = wasmOn && splitter.arenaThreads ? splitter.arenaThreads(ranges.reduce((n, r) => n + r.end - r.start, 0), nv) : 1;
    const split: { fn: (...args: number[]) => void; args: number[] }[] | null = threads > 1 ? [] : null;
    /** Sets the wasm partials of blocks [from, to) to the identity (0): blocks no range runs over. */
    const zeroParts = (from: number, to: number) => {
      const P = host.typed(wasmParts!);
      for (let c = 0; c < nparts; c++) P.fill(0, c * blocks + from, c * blocks + to);
    };
    // Ranges cover consecutive blocks from 0 (parameters lie back to back in 64-element blocks);
    // what lies past the last is zeroed here.
    if (wasmParts) zeroParts(ranges.reduce((n, r) => Math.max(n, r.pblk + Math.ceil((r.end - r.start) / 64)), 0), blocks);
    for (const r of ranges) {
      if (!kernel.includeInactive && !(r.flags & FLAG_ACTIVE)) {
        if (wasmParts) zeroParts(r.pblk, r.pblk + Math.ceil((r.end - r.start) / 64));
        continue;
      }
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
        args[nv + 3 + nparts] = r.index;
        for (let j = 0; j < m.C.length; j++) args[nv + 4 + nparts + j] = m.C[j];
        if (split) split.push({ fn: m.wfn, args: args.slice() });
        else m.wfn.apply(null, args);
      } else {
        fn!(r.vectors.map((s) => host.typed(s)), r.start, r.end, m.C, hostParts.map((a) => a.subarray(r.pblk)), 0, m.ok, r.index);
      }
    }
    if (split) runSplit(splitter as ArenaSplitter, split, threads, nv, nparts);
    if (nparts === 0) return runAfterHost(kernel, Sh);
    if (wasmParts && arenaBackends.wasmTree) {
      // The tree in wasm over the float32 partials where they lie: the same float32 operations as
      // the host tree below (wasm.ts renderWasmTree), at a fraction of its cost.
      const tree = arenaBackends.wasmTree(host.wasm!.memory);
      const at = (c: number) => partBase + 4 * c * blocks;
      let c = 0;
      for (const red of kernel.reductions) {
        if (red.reduction === 'norm') tree.norm(at(c), at(c + 1), blocks);
        else if (red.reduction === 'sum') tree.sum(at(c), blocks);
        else tree.max(at(c), blocks);
        const P = host.typed(wasmParts);
        Sh[red.slot] = reductionValue(red.reduction, P[c * blocks], red.reduction === 'norm' ? P[(c + 1) * blocks] : 0, dtype);
        c += partialsOf(red.reduction);
      }
      return runAfterHost(kernel, Sh);
    }
    // Combined in place over the wasm memory's float32 partials: every value of the tree is
    // rounded to float32 (round), so float32 storage holds it exactly, as a float64 copy would.
    const wasmAll = wasmParts ? (host.typed(wasmParts) as Float32Array) : null;
    const parts: Float32Array[] | Float64Array[] = wasmAll ? Array.from({ length: nparts }, (_, c) => wasmAll.subarray(c * blocks, (c + 1) * blocks)) : hostParts;
    let c = 0;
    for (const red of kernel.reductions) {
      const n = partialsOf(red.reduction);
      Sh[red.slot] = combinePartials(red.reduction, parts.slice(c, c + n), blocks, dtype);
      c += n;
    }
    runAfterHost(kernel, Sh);
  } finally {
    if (wasmParts) backend.release(wasmParts);
  }
}

/**
 * Runs the wasm kernel's range calls over `threads` threads: cut into parts of near-equal element
 * counts, a range cut only at a 64-element block boundary from its start (the next piece starts
 * there with its partial pointers that many blocks on). Every block is then the same elements
 * through the same code with its partials at the same place, and every element's write the same
 * function of its inputs (its normal draws keyed by its index), so the result is the one-thread
 * pass's bit for bit.
 */
function runSplit(splitter: ArenaSplitter, calls: { fn: (...args: number[]) => void; args: number[] }[], threads: number, nv: number, nparts: number): void {
  const total = calls.reduce((n, c) => n + c.args[nv + 1] - c.args[nv], 0);
  const parts: { fn: (...args: number[]) => void; args: number[] }[][] = [[]];
  let done = 0;
  for (const c of calls) {
    let args = c.args;
    for (;;) {
      const bound = Math.round((parts.length * total) / threads);
      const [start, end] = [args[nv], args[nv + 1]];
      const cut = parts.length < threads ? start + Math.ceil((bound - done) / 64) * 64 : end;
      if (cut >= end) {
        parts[parts.length - 1].push({ fn: c.fn, args });
        done += end - start;
        if (done >= bound && parts.length < threads) parts.push([]);
        break;
      }
      if (cut > start) {
        const head = args.slice();
        head[nv + 1] = cut;
        parts[parts.length - 1].push({ fn: c.fn, args: head });
        done += cut - start;
        args = args.slice();
        args[nv] = cut;
        for (let p = 0; p < nparts; p++) args[nv + 2 + p] += (4 * (cut - start)) / 64;
      }
      parts.push([]);
    }
  }
  splitter.runArenaParts(parts.filter((p) => p.length > 0));
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

/** One pass of `kernel` over the whole arena on host memory. */
function hostArena(kernel: ArenaKernel, backend: Backend, host: Host, buf: ArenaBuffers, opts: RunOptions): void {
  const L = buf.layout;
  const vecs = kernel.vectors.map((v) => buf.vectors[v.name]);
  const ranges: Range[] = L.params.map((info, k) => ({ vectors: vecs, start: info.offset, end: info.offset + info.numel, pblk: info.offset / 64, group: info.group, flags: info.flags, param: k, index: 0 }));
  runHost(kernel, backend, host, L.dtype as 'float32' | 'float64', ranges, L.blocks, buf.S, buf.steps, buf.hyper, opts.path);
}

/** The per-tensor baseline on host memory: each parameter's own storages, block partials back to back. */
function hostPerTensor(kernel: ArenaKernel, backend: Backend, host: Host, buf: PerTensorBuffers, opts: RunOptions): void {
  let pblk = 0;
  const ranges: Range[] = buf.params.map((p, k) => {
    const r = { vectors: kernel.vectors.map((v) => p.vectors[v.name]), start: 0, end: p.numel, pblk, group: p.group, flags: p.flags, param: k, index: p.index ?? 0 };
    pblk += Math.ceil(p.numel / 64);
    return r;
  });
  runHost(kernel, backend, host, buf.dtype, ranges, Math.max(pblk, 1), buf.S, buf.steps, buf.hyper, opts.path);
}

/** What the host backends register as `arenaBackends.host`. */
export const arenaHost = { arena: hostArena, perTensor: hostPerTensor, scalars: runAfterHost };
