/**
 * The fusion pass of a captured step: rewrites a trace's device calls before the plan binds them.
 *
 * - Elementwise chains (unary, binary, where, cast, strided copies) become one generated kernel
 *   (src/kernels/fusedmap.ts) where every intermediate is a temporary of the step that only the
 *   chain touches; outputs that other calls read stay materialized (a chain may have several,
 *   of one length). A chain's operations are inlined into their consumers with composed
 *   addresses, so a broadcast or a transpose between them costs no pass over memory; one-element
 *   host writes of constants (the 0 of relu's backward) become literals and their writes go.
 * - Independent chains of one length close together share a kernel (BatchNorm's running mean
 *   and variance updates of several layers), within the backend's limit on storages per kernel.
 * - State that a chain replaces (new = 0.9 old + 0.1 mean, the tensor then pointed at the new
 *   storage) is updated in place, so that the plan keeps it in one storage without a copy back.
 * - A matmul whose result only one such chain (or one fusable call) reads runs with it as its
 *   epilogue, in one call (src/compile/epilogue.ts), where the backend offers it.
 * - A contiguous copy of a temporary into its destination (a gradient into the optimizer's
 *   arena) is dropped and the temporary's producer writes into the destination itself.
 * - Sums over rows (bias gradients, the loss) and residual adds fold into the row kernel whose
 *   output they read (src/compile/fuse-reduce.ts), where the backend offers it.
 *
 * Anything else stays as it was. The fused call takes the place of the chain's last call, which
 * is only done where no other call between touches what the chain reads or writes. Lives are
 * recomputed afterwards (src/compile/trace.ts `relive`), so the plan's buffer sharing sees the
 * fused call's operands as used together.
 */
import type { Backend, BroadcastLayout, Storage, StridedCopyLayout, WhereLayout } from '../kernels/backend.js';
import type { FusableCall, FusedAccess, FusedExpr, FusedMapKernels, FusedProgram } from '../kernels/fusedmap.js';
import { BINARY_OPS, UNARY_OPS } from '../kernels/optable.js';
import { intWgsl } from '../kernels/webgpu/fused-common.js';
import type { DType } from '../tensor/dtype.js';
import { contiguousStrides as contiguous, numel as numelOf } from '../tensor/shape.js';
import { fuseEpilogues, type ChainProgram } from './epilogue.js';
import { fuseReductions } from './fuse-reduce.js';
import { isSlot, relive, slotOf, writesAllAt, type SlotRef, type StorageRecord, type Trace, type TraceEvent } from './trace.js';

/** The fused kernels of a backend, or null: fusion is off there (copies are still forwarded). */
export function fusedMapKernels(b: Backend): FusedMapKernels | null {
  if (b.name === 'webgpu') return webgpuFusedMap(b);
  return b.fusedMap?.() ?? null;
}

/**
 * WebGPU: the WGSL generator is a kernel family of its own (src/kernels/webgpu/fusedmap.ts),
 * loaded on first use through the runtime's queue, so only programs that capture steps fetch it.
 */
const WEBGPU_FUSED = { name: 'fused elementwise', load: () => import('../kernels/webgpu/fusedmap.js') };
function webgpuFusedMap(b: Backend): FusedMapKernels {
  type Family = typeof WEBGPU_FUSED & { module?: typeof import('../kernels/webgpu/fusedmap.js') };
  const rt = (b as unknown as { rt: { cpuEmulated: boolean; lazy(f: Family, work: (m: NonNullable<Family['module']>) => void): void } }).rt;
  const limits = (b as unknown as { device?: { limits?: { maxStorageBuffersPerShaderStage?: number } } }).device?.limits;
  return {
    maxStorages: limits?.maxStorageBuffersPerShaderStage ?? 8,
    // f32 arithmetic, comparisons, where and copies: the kernels whose WGSL the op table gives in
    // f32; and int32 operations with an int32 form there (webgpu/fused-common.ts): a BatchNorm's
    // batch counter + 1, cross-entropy's label != ignoreIndex.
    supports(c) {
      const [a, x, y] = c.inDtypes;
      const int = (def: { int?: boolean; wgsl: string } | undefined) => intWgsl(def) !== null;
      switch (c.kind) {
        case 'unary': return (a === 'float32' && (c.outDtype === 'float32' || c.outDtype === 'bool')) || (a === 'int32' && c.outDtype === 'int32' && int(UNARY_OPS[c.op as keyof typeof UNARY_OPS]));
        case 'binary': {
          if (a === 'float32' && x === 'float32') return c.outDtype === 'float32' || c.outDtype === 'bool';
          const def = BINARY_OPS[c.op as keyof typeof BINARY_OPS] as { int?: boolean; wgsl: string; compare?: boolean } | undefined;
          return a === 'int32' && x === 'int32' && int(def) && c.outDtype === (def!.compare ? 'bool' : 'int32');
        }
        case 'where': return a === 'bool' && x === 'float32' && y === 'float32' && c.outDtype === 'float32';
        case 'cast': return (a === 'bool' && c.outDtype === 'float32') || (a === 'float32' && c.outDtype === 'bool');
        case 'copy': return a === c.outDtype && (a === 'float32' || a === 'bool' || a === 'int32');
      }
    },
    build: (p) => (...storages) => rt.lazy(WEBGPU_FUSED as Family, (m) => m.runFusedMap(rt as never, p, storages as never)),
    // The packed matmul of CPU-emulated adapters with the epilogue in its store; GPUs run the
    // tiled and split-K forms of matmul.ts, which have no epilogue form yet: declined there.
    matmulEpilogue: (l, p, acc) => (!rt.cpuEmulated ? null : (a, b, ...storages) => rt.lazy(WEBGPU_FUSED as Family, (m) => m.runMatmulEpilogue(rt as never, l, p, acc, a as never, b as never, storages as never))),
  };
}

/**
 * WebGPU: the backend as fuse-reduce.ts sees it, with layerNormBackwardFused (the residual add
 * and the bias gradients' block sums folded into layerNormBackward's two passes,
 * src/kernels/webgpu/layernorm.ts), reached through the fused elementwise family (loaded through
 * the runtime's queue), so that the backend itself, and what a program loads without compiling
 * its steps, does not carry it.
 */
function webgpuReductions(b: Backend): Backend {
  type Family = typeof WEBGPU_FUSED & { module?: typeof import('../kernels/webgpu/fusedmap.js') };
  const rt = (b as unknown as { rt: { lazy(f: Family, work: (m: NonNullable<Family['module']>) => void): void } }).rt;
  const fused: Backend['layerNormBackwardFused'] = (grad, x, mean, rstd, weight, add, dx, dweight, dbias, sums, l) => {
    const g = (s: Storage | null) => s as never;
    rt.lazy(WEBGPU_FUSED as Family, (m) => m.layerNormBackward(rt as never, g(grad), g(x), g(mean), g(rstd), g(weight), g(dx), g(dweight), g(dbias), l, {
      res: g(add), resFirst: l.addFirst, sums: sums.map((s, k) => ({ s: g(s), b: l.sums[k] })),
    }));
  };
  return Object.assign(Object.create(b) as Backend, { layerNormBackwardFused: fused });
}

export interface FuseStats {
  /** Fused kernels made, and the calls (and constant writes) they replace. */
  fused: number;
  replacedCalls: number;
  /** Copies dropped because their source's producer writes into the destination. */
  forwardedCopies: number;
  /** Matmuls that run with their consumer as one call (src/compile/epilogue.ts). */
  epilogues: number;
}

/** An elementwise call: a map over `shape` from its inputs (read at offset + idx . strides) to `out`. */
export interface MapNode extends FusableCall {
  index: number;
  shape: number[];
  inputs: { slot: number; strides: number[]; offset: number }[];
  out: number;
  /** Where the output goes when the call writes only part of it (a copy into a concat or pad). */
  partial: FusedAccess | null;
}


function mapNode(e: TraceEvent, index: number, recs: StorageRecord[]): MapNode | null {
  if (e.kind !== 'call' || e.target !== 'backend') return null;
  const a = e.args;
  const dt = (x: unknown) => recs[slotOf(x)].dtype;
  const numel = (x: unknown) => recs[slotOf(x)].numel;
  const flat = (x: unknown) => ({ slot: slotOf(x), strides: [1], offset: 0 });
  switch (e.method) {
    case 'unary': {
      // A live hyper-parameter (a host value placeholder) is an argument of each replay, not a constant of the code.
      if (numel(a[1]) !== numel(a[2]) || !(a[3] === undefined || typeof a[3] === 'number') || !(a[4] === undefined || typeof a[4] === 'number')) return null;
      return { kind: 'unary', op: a[0] as string, p0: (a[3] as number) ?? 0, p1: (a[4] as number) ?? 0, index, shape: [numel(a[2])], inputs: [flat(a[1])], out: slotOf(a[2]), inDtypes: [dt(a[1])], outDtype: dt(a[2]), partial: null };
    }
    case 'cast':
      if (numel(a[0]) !== numel(a[1])) return null;
      return { kind: 'cast', index, shape: [numel(a[1])], inputs: [flat(a[0])], out: slotOf(a[1]), inDtypes: [dt(a[0])], outDtype: dt(a[1]), partial: null };
    case 'binary': {
      const l = a[4] as BroadcastLayout;
      if (numelOf(l.shape) !== numel(a[3])) return null;
      return {
        kind: 'binary', op: a[0] as string, index, shape: [...l.shape], out: slotOf(a[3]), inDtypes: [dt(a[1]), dt(a[2])], outDtype: dt(a[3]), partial: null,
        inputs: [{ slot: slotOf(a[1]), strides: [...l.aStrides], offset: 0 }, { slot: slotOf(a[2]), strides: [...l.bStrides], offset: 0 }],
      };
    }
    case 'where': {
      const l = a[4] as WhereLayout;
      if (numelOf(l.shape) !== numel(a[3])) return null;
      return {
        kind: 'where', index, shape: [...l.shape], out: slotOf(a[3]), inDtypes: [dt(a[0]), dt(a[1]), dt(a[2])], outDtype: dt(a[3]), partial: null,
        inputs: [{ slot: slotOf(a[0]), strides: [...l.condStrides], offset: 0 }, { slot: slotOf(a[1]), strides: [...l.aStrides], offset: 0 }, { slot: slotOf(a[2]), strides: [...l.bStrides], offset: 0 }],
      };
    }
    case 'stridedCopy': {
      const l = a[2] as StridedCopyLayout;
      // Between dtypes a copy stores as the typed array converts (not cast's rules): left alone.
      if (dt(a[0]) !== dt(a[1])) return null;
      const full = writesAllAt('stridedCopy', [null, { numel: numel(a[1]) }, l]).length > 0;
      return {
        kind: 'copy', index, shape: [...l.shape], out: slotOf(a[1]), inDtypes: [dt(a[0])], outDtype: dt(a[1]),
        inputs: [{ slot: slotOf(a[0]), strides: [...l.srcStrides], offset: l.srcOffset }],
        partial: full ? null : { offset: l.dstOffset, strides: [...l.dstStrides] },
      };
    }
    default:
      return null;
  }
}

/** Slots an event touches (recursively through its arguments). */
function touched(e: TraceEvent): number[] {
  if (e.kind === 'write') return [e.slot];
  const out: number[] = [];
  const walk = (x: unknown): void => {
    if (typeof x !== 'object' || x === null || ArrayBuffer.isView(x)) return;
    if (isSlot(x)) out.push(slotOf(x));
    else if (Array.isArray(x)) x.forEach(walk);
    else if (Object.getPrototypeOf(x) === Object.prototype && !('blockParam' in x)) Object.values(x).forEach(walk);
  };
  e.args.forEach(walk);
  return out;
}

/**
 * The address map of an input read by a call evaluated at `acc` (the call's own flat iteration
 * index as an affine map of the root multi-index): element o + unravel(p, shape) . strides. Null
 * when that is not affine in the root index (checked over the whole root space).
 */
function compose(root: number[], acc: FusedAccess, shape: number[], strides: number[], offset: number): FusedAccess | null {
  const sNonOne = shape.map((s, i) => (s === 1 ? 0 : strides[i]));
  // A 1-D call: linear in p.
  if (shape.filter((s) => s !== 1).length <= 1) {
    const d = shape.findIndex((s) => s !== 1);
    const s = d < 0 ? 0 : sNonOne[d];
    return { offset: offset + s * acc.offset, strides: acc.strides.map((x) => x * s) };
  }
  const cont = contiguous(shape);
  const target = (p: number): number => {
    let t = offset;
    for (let d = 0; d < shape.length; d++) {
      const q = Math.floor(p / cont[d]);
      p -= q * cont[d];
      t += q * sNonOne[d];
    }
    return t;
  };
  // Same shape, read in order: the strides themselves.
  if (acc.offset === 0 && root.length === shape.length && root.every((s, i) => s === shape[i]) && acc.strides.every((s, i) => s === cont[i] || root[i] === 1)) {
    return { offset, strides: sNonOne.slice() };
  }
  const base = target(acc.offset);
  const st = root.map((s, r) => (s === 1 ? 0 : target(acc.offset + acc.strides[r]) - base));
  // Verify over the root space.
  const n = numelOf(root);
  const idx = new Array<number>(root.length).fill(0);
  let p = acc.offset;
  let want = base;
  for (let i = 0; i < n; i++) {
    if (target(p) !== want) return null;
    for (let ax = root.length - 1; ax >= 0; ax--) {
      idx[ax]++;
      p += acc.strides[ax];
      want += st[ax];
      if (idx[ax] < root[ax]) break;
      p -= acc.strides[ax] * root[ax];
      want -= st[ax] * root[ax];
      idx[ax] = 0;
    }
  }
  return { offset: base, strides: st };
}
/** Drops size-1 dims and merges neighbours that every access walks contiguously. */
function collapse(shape: number[], accesses: FusedAccess[]): number[] {
  const keep = shape.map((s) => s !== 1);
  let dims = shape.map((s, i) => ({ size: s, strides: accesses.map((a) => a.strides[i]) })).filter((_, i) => keep[i]);
  const merged: typeof dims = [];
  for (const d of dims) {
    const prev = merged[merged.length - 1];
    if (prev && prev.strides.every((s, k) => s === d.strides[k] * d.size)) {
      prev.size *= d.size;
      prev.strides = d.strides.slice();
    } else merged.push({ size: d.size, strides: d.strides.slice() });
  }
  dims = merged.length ? merged : [{ size: 1, strides: accesses.map(() => 0) }];
  accesses.forEach((a, k) => { a.strides = dims.map((d) => d.strides[k]); });
  return dims.map((d) => d.size);
}

interface Group {
  members: MapNode[];
}

/**
 * Rewrites the trace's events: fused chains, matmul epilogues (unless `epilogues` is false: the
 * comparison without them) and forwarded copies. Returns a new trace (records copied).
 */
export function fuseTrace(trace: Trace, kernels: FusedMapKernels | null, outputs: ReadonlySet<number>, epilogues = true): { trace: Trace; stats: FuseStats } {
  const recs = trace.storages;
  const events = trace.events;
  const stats: FuseStats = { fused: 0, replacedCalls: 0, forwardedCopies: 0, epilogues: 0 };
  const hasViews = new Set<number>();
  for (const r of recs) if (r.viewOf) hasViews.add(r.viewOf.base);
  const rebound = new Set<unknown>();
  for (const [a, b] of trace.rebinds) {
    rebound.add(a);
    rebound.add(b);
  }
  const rootOf = (s: number): { root: number; lo: number; hi: number } => {
    let lo = 0;
    let r = recs[s];
    while (r.viewOf) {
      lo += r.viewOf.offset;
      r = recs[r.viewOf.base];
    }
    return { root: r.id, lo, hi: lo + recs[s].numel };
  };
  /** Where a storage lives in its backend's memory (state made before the step may be views the trace never saw made). */
  const memRange = (slot: number): { space: unknown; lo: number; hi: number } | null => {
    const x = recs[slot].storage as unknown as { ptr?: number; data?: ArrayBufferView; buf?: object; offset?: number };
    const bytes = recs[slot].numel * (recs[slot].dtype === 'bool' ? 1 : recs[slot].dtype === 'float64' ? 8 : 4);
    if (typeof x.ptr === 'number') return { space: 'wasm', lo: x.ptr, hi: x.ptr + bytes };
    if (x.data && ArrayBuffer.isView(x.data)) return { space: x.data.buffer, lo: x.data.byteOffset, hi: x.data.byteOffset + x.data.byteLength };
    if (x.buf && typeof x.offset === 'number') return { space: x.buf, lo: x.offset, hi: x.offset + bytes };
    return null;
  };
  /** A temporary's trace-time memory is the pool's, reused by others: the plan gives it its own. */
  const planned = (s: number) => recs[rootOf(s).root].origin === 'made' && recs[rootOf(s).root].released;
  const overlap = (a: number, b: number): boolean => {
    if (a === b) return true;
    const x = rootOf(a);
    const y = rootOf(b);
    if (x.root === y.root) return x.lo < y.hi && y.lo < x.hi;
    if (planned(a) || planned(b)) return false;
    const [m, n] = [memRange(a), memRange(b)];
    return !m || !n || (m.space === n.space && m.lo < n.hi && n.lo < m.hi);
  };
  const sameBuffer = (a: number, b: number): boolean => {
    if (rootOf(a).root === rootOf(b).root) return true;
    if (planned(a) || planned(b)) return false;
    const [m, n] = [memRange(a), memRange(b)];
    return !m || !n || m.space === n.space;
  };
  /** A temporary of the step: made, freed within it, neither a view nor viewed, not state. */
  const isTemp = (s: number): boolean => {
    const r = recs[s];
    return r.origin === 'made' && r.released && !r.viewOf && !hasViews.has(s) && !rebound.has(r.storage) && !outputs.has(s);
  };

  // Layout checks look at the storages' lengths: slots stand in with theirs (one object per slot,
  // so that a storage passed twice is one).
  const standIns = recs.map((r) => ({ numel: r.numel }));
  const backendWritesAll = (method: string, args: unknown[]) => writesAllAt(method, args.map((a) => (isSlot(a) ? standIns[slotOf(a)] : a)));
  // WebGPU binds storages as ranges of GPU buffers: a kernel may bind disjoint ranges of one buffer,
  // all of them writable (the fused families bind such ranges read_write, fused-common.ts
  // shareBuffers); a backend kernel binds its inputs read-only, which the runtime answers with a
  // copy, so a copy is not forwarded into a backend kernel that reads the destination's buffer.
  const webgpu = trace.backend.name === 'webgpu';
  const touches = events.map(touched);
  const touchers: number[][] = recs.map(() => []);
  touches.forEach((ss, i) => { for (const s of new Set(ss)) touchers[s].push(i); });

  let out = events.slice();
  const chains = new WeakMap<object, ChainProgram>();
  if (kernels) out = fuseChains();
  if (kernels && epilogues) {
    const got = fuseEpilogues(out, {
      recs, kernels, isTemp, overlap, touched, compose, chains, fullOutputs: fusedOutputs, backendWritesAll,
      mapNode: (e, i) => mapNode(e, i, recs),
    });
    out = got.events;
    stats.epilogues = got.fused;
  }
  out = forwardCopies(out);
  // Residual adds and bias-gradient sums folded into layerNormBackward (src/compile/fuse-reduce.ts).
  const reduceTrace = kernels && webgpu ? { ...trace, backend: webgpuReductions(trace.backend) } : trace;
  const reductions = fuseReductions(out, { trace: reduceTrace, recs, isTemp, overlap, touched, noteOutputs: (run, full) => fusedOutputs.set(run, full) });
  out = reductions.events;
  stats.fused += reductions.fused;
  stats.replacedCalls += reductions.replaced;
  const next: Trace = { ...trace, events: out, storages: recs.map((r) => ({ ...r })) };
  relive(next, (e) => {
    if (e.target === 'backend') return backendWritesAll(e.method, e.args);
    const full = fusedOutputs.get(e.fn as object);
    if (!full) return [];
    const first = e.args.length - full.length;
    return full.map((f, k) => (f ? first + k : -1)).filter((k) => k >= 0);
  });
  // A temporary that its first calls write in pieces (a concat: the class token and the patches
  // of a ViT) which cover it before anything reads it needs no zero fill.
  for (const r of next.storages) if (r.firstUse >= 0 && !r.firstUseWritesAll && isTemp(r.id) && coveredBeforeRead(out, r.id)) r.firstUseWritesAll = true;
  return { trace: next, stats };

  /** Whether calls from the slot's first use on write every element of it (each a piece, reading none) before any other touches it. */
  function coveredBeforeRead(evs: TraceEvent[], slot: number): boolean {
    const seen = new Uint8Array(recs[slot].numel);
    let left = seen.length;
    for (let i = next.storages[slot].firstUse; i < evs.length && left > 0; i++) {
      const e = evs[i];
      const hits = touched(e).filter((s) => s === slot).length;
      if (hits === 0) continue;
      const piece = hits === 1 ? pieceWritten(e, slot) : null;
      if (!piece) return false;
      const { shape, offset, strides } = piece;
      const idx = shape.map(() => 0);
      for (let p = 0, at = offset, n = numelOf(shape); p < n; p++) {
        if (at < 0 || at >= seen.length) return false;
        if (!seen[at]) {
          seen[at] = 1;
          left--;
        }
        for (let ax = shape.length - 1; ax >= 0; ax--) {
          idx[ax]++;
          at += strides[ax];
          if (idx[ax] < shape[ax]) break;
          at -= strides[ax] * shape[ax];
          idx[ax] = 0;
        }
      }
    }
    return left === 0;
  }
  /** The elements a call writes of `slot` without reading it: a strided copy into it, or a fused call's partial output. */
  function pieceWritten(e: TraceEvent, slot: number): { shape: readonly number[]; offset: number; strides: readonly number[] } | null {
    if (e.kind !== 'call') return null;
    if (e.target === 'backend' && e.method === 'stridedCopy' && isSlot(e.args[1]) && slotOf(e.args[1]) === slot) {
      const l = e.args[2] as StridedCopyLayout;
      return { shape: l.shape, offset: l.dstOffset, strides: l.dstStrides };
    }
    const chain = e.target === 'extern' ? chains.get(e.fn as object) : undefined;
    if (!chain) return null;
    const k = chain.slots.indexOf(slot) - (chain.program.inputs.length - chain.program.outputs.length);
    if (k < 0) return null;
    const o = chain.program.outputs[k];
    return { shape: chain.program.shape, offset: o.offset, strides: o.strides };
  }

  function fuseChains(): TraceEvent[] {
    const nodes = new Map<number, MapNode>();
    events.forEach((e, i) => {
      const n = mapNode(e, i, recs);
      if (n && kernels!.supports(n)) nodes.set(i, n);
    });
    // One-element constants written by the host, read only by fusable calls: literals.
    const constant = new Map<number, number>();
    events.forEach((e, i) => {
      if (e.kind !== 'write' || !isTemp(e.slot) || recs[e.slot].numel !== 1) return;
      const ts = touchers[e.slot];
      if (ts[0] === i && ts.slice(1).every((j) => nodes.has(j) && nodes.get(j)!.out !== e.slot) && ts.length > 1) constant.set(e.slot, e.data[0]);
    });
    // The producer of a slot that may be inlined: the one fusable call writing all of it, first.
    const producer = new Map<number, MapNode>();
    for (const n of nodes.values()) {
      if (!n.partial && touchers[n.out][0] === n.index) producer.set(n.out, n);
    }
    /** Potentially internal: a temporary whose every other toucher is a fusable call reading it. */
    const mayInline = (s: number): boolean => {
      const p = producer.get(s);
      return !!p && isTemp(s) && touchers[s].every((j) => j === p.index || (nodes.has(j) && nodes.get(j)!.out !== s && j > p.index));
    };

    const groupOf = new Map<number, Group>();
    const groups: Group[] = [];
    for (const n of nodes.values()) {
      const cands: Group[] = [];
      for (const inp of n.inputs) {
        const p = producer.get(inp.slot);
        const g = p && groupOf.get(p.index);
        if (g && !cands.includes(g)) cands.push(g);
      }
      const tryGroup = (gs: Group[]): Group | null => {
        const g: Group = { members: [...gs.flatMap((x) => x.members), n].sort((a, c) => a.index - c.index) };
        return build(g, false) ? g : null;
      };
      let chosen: Group | null = cands.length ? tryGroup(cands) : null;
      let used = chosen ? cands : [];
      if (!chosen && cands.length > 1) {
        for (const c of [...cands].sort((a, b) => b.members.length - a.members.length)) {
          chosen = tryGroup([c]);
          if (chosen) {
            used = [c];
            break;
          }
        }
      }
      if (!chosen) chosen = { members: [n] };
      for (const u of used) groups.splice(groups.indexOf(u), 1);
      groups.push(chosen);
      for (const m of chosen.members) groupOf.set(m.index, chosen);
    }
    const finals = new WeakMap<Group, ReturnType<typeof build>>();
    // Independent chains of one length close together (BatchNorm's running mean and variance
    // updates) share a kernel where nothing between them is in the way (build checks it).
    groups.sort((a, b) => a.members[a.members.length - 1].index - b.members[b.members.length - 1].index);
    // A lone copy is left to forwardCopies, which drops it altogether where it can.
    const loneCopy = (g: Group) => g.members.length === 1 && g.members[0].kind === 'copy';
    for (let k = 1; k < groups.length; k++) {
      if (loneCopy(groups[k])) continue;
      for (let h = k - 1; h >= Math.max(0, k - 3); h--) {
        if (loneCopy(groups[h])) continue;
        const merged: Group = { members: [...groups[h].members, ...groups[k].members].sort((a, b) => a.index - b.index) };
        if (!finalBuild(groups[h]) || !finalBuild(groups[k]) || !finalBuild(merged)) continue;
        groups[k] = merged;
        groups.splice(h, 1);
        k--;
        break;
      }
    }

    const replaced = new Map<number, TraceEvent | null>();
    for (const g of groups) {
      const built = finalBuild(g);
      const usesConst = built && built.consts > 0;
      if (!built || (g.members.length < 2 && !usesConst)) continue;
      const last = g.members[g.members.length - 1].index;
      for (const m of g.members) replaced.set(m.index, null);
      updateInPlace(g, built);
      const kernel = kernels!.build(built.program);
      // A runner of its own per call: the output facts below are keyed by it.
      const run = (...a: unknown[]): void => kernel(...a);
      fusedOutputs.set(run, built.full);
      chains.set(run, { program: built.program, slots: built.slots });
      replaced.set(last, {
        kind: 'call', target: 'extern', method: 'fusedMap',
        args: built.slots.map((s) => ({ $s: s }) satisfies SlotRef),
        fn: run as (...a: unknown[]) => unknown,
      });
      stats.fused++;
      stats.replacedCalls += g.members.length;
    }
    const kept = events.map((e, i) => (replaced.has(i) ? replaced.get(i)! : e)).filter((e): e is TraceEvent => e !== null);
    // Constant writes that nothing reads any more.
    const read = new Set<number>();
    for (const e of kept) if (e.kind !== 'write') for (const s of touched(e)) read.add(s);
    return kept.filter((e) => {
      if (e.kind === 'write' && constant.has(e.slot) && !read.has(e.slot)) {
        stats.replacedCalls++;
        return false;
      }
      return true;
    });

    /**
     * State that the chain replaces (BatchNorm's running mean: new = 0.9 old + 0.1 mean, the old
     * storage freed and the tensor pointed at the new one): the kernel reads the new storage where
     * it writes it, element for element, so that the plan keeps the state in one storage (the one
     * the host objects point at) instead of copying it back after every replay (plan.ts, swaps).
     */
    function updateInPlace(g: Group, built: NonNullable<ReturnType<typeof build>>): void {
      const p = built.program;
      const inGroup = new Set(g.members.map((m) => m.index));
      for (let j = p.inputs.length - p.outputs.length - 1; j >= 0; j--) {
        const nIn = p.inputs.length - p.outputs.length;
        const s = built.slots[j];
        if (recs[s].origin !== 'pre' || !touchers[s].every((i) => inGroup.has(i))) continue;
        let to = trace.rebinds.get(recs[s].storage);
        for (let hops = 0; to && trace.rebinds.has(to) && hops < 8; hops++) to = trace.rebinds.get(to);
        const k = p.outputs.findIndex((_, q) => recs[built.slots[nIn + q]].storage === to);
        if (k < 0 || recs[s].dtype !== p.outputs[k].dtype) continue;
        const o = p.outputs[k];
        const same = (l: FusedAccess) => l.offset === o.offset && l.strides.length === o.strides.length && l.strides.every((x, d) => x === o.strides[d]);
        if (!p.loads.every((l) => l.input !== j || same(l))) continue;
        // Input j goes: its loads read output k (storage index nIn + k, one less once j is gone).
        for (const l of p.loads) l.input = l.input === j ? nIn + k - 1 : l.input > j ? l.input - 1 : l.input;
        p.inputs.splice(j, 1);
        built.slots.splice(j, 1);
      }
    }

    function finalBuild(g: Group): ReturnType<typeof build> {
      if (!finals.has(g)) finals.set(g, build(g, true));
      return finals.get(g)!;
    }

    /**
     * The program of a group, or null where it cannot be one kernel: outputs of different
     * lengths, addresses that do not compose, or another call between its members that touches
     * what it reads or writes. `final`: the group is complete (later readers are known outside).
     */
    function build(g: Group, final: boolean): { program: FusedProgram; slots: number[]; consts: number; full: boolean[] } | null {
      const inGroup = new Set(g.members.map((m) => m.index));
      const last = g.members[g.members.length - 1].index;
      const internal = (s: number): boolean => {
        if (!producer.has(s) || !inGroup.has(producer.get(s)!.index) || !mayInline(s)) return false;
        // Readers so far (or, when final, all of them) are members.
        return touchers[s].every((j) => inGroup.has(j) || (!final && j > last));
      };
      // While the group grows, its latest call's readers are all still to come: an output for now.
      const latest = g.members[g.members.length - 1];
      const outs = g.members.filter((m) => m.partial || !internal(m.out) || (!final && m === latest));
      if (outs.length === 0 || new Set(outs.map((m) => m.out)).size !== outs.length) return null;
      const n0 = numelOf(outs[0].shape);
      if (outs.some((m) => numelOf(m.shape) !== n0)) return null;
      // Hazards: nothing else touches an output after it is written, or a leaf after it is read.
      // The iteration space: a member's shape of the outputs' length, the richest first (a bias
      // broadcast over [rows, cols] is affine there, not in the flat index).
      const roots = [...new Map(g.members.filter((m) => numelOf(m.shape) === n0).map((m) => [JSON.stringify(m.shape), m.shape])).values()];
      roots.sort((a, b) => b.length - a.length);
      for (const r of roots) {
        const got = attempt(r.length ? r.slice() : [1]);
        if (got) return got;
      }
      return null;

      function attempt(root: number[]): { program: FusedProgram; slots: number[]; consts: number; full: boolean[] } | null {
      const ident: FusedAccess = { offset: 0, strides: contiguous(root) };
      const loads: (FusedAccess & { input: number })[] = [];
      const slots: number[] = [];
      const leafAt = new Map<number, number>();
      let consts = 0;
      const outSlots = new Set(outs.map((m) => m.out));
      // Outputs of one kernel never overlap (on WebGPU that would also be aliasing writable bindings).
      for (const m of outs) for (const o of outs) if (m !== o && overlap(m.out, o.out)) return null;
      const expr = (m: MapNode, acc: FusedAccess): FusedExpr | null => {
        const args: FusedExpr[] = [];
        for (const inp of m.inputs) {
          const a = compose(root, acc, m.shape, inp.strides, inp.offset);
          if (!a) return null;
          const p = producer.get(inp.slot);
          let x: FusedExpr | null;
          if (p && inGroup.has(p.index) && p.index < m.index) x = expr(p, a);
          else if (constant.has(inp.slot)) {
            consts++;
            x = { k: 'const', value: constant.get(inp.slot)!, dtype: recs[inp.slot].dtype };
          } else {
            // A leaf: read by this member at its index; nothing else may write it before the fused call.
            for (const o of outSlots) if (overlap(o, inp.slot)) return null;
            // Read now at the fused call: no other call between may write it (fusable calls write only their out).
            for (let j = m.index + 1; j < last; j++) {
              if (inGroup.has(j)) continue;
              const nj = nodes.get(j);
              if (nj ? overlap(nj.out, inp.slot) : touches[j].some((s) => overlap(s, inp.slot))) return null;
            }
            let input = leafAt.get(inp.slot);
            if (input === undefined) {
              input = slots.length;
              leafAt.set(inp.slot, input);
              slots.push(inp.slot);
            }
            const key = JSON.stringify([input, a.offset, a.strides]);
            let li = loads.findIndex((l) => JSON.stringify([l.input, l.offset, l.strides]) === key);
            if (li < 0) li = loads.push({ input, offset: a.offset, strides: a.strides }) - 1;
            x = { k: 'load', load: li };
          }
          if (!x) return null;
          args.push(x);
        }
        const out = m.outDtype;
        switch (m.kind) {
          case 'unary': return { k: 'unary', op: m.op as never, x: args[0], p0: m.p0 ?? 0, p1: m.p1 ?? 0, in: m.inDtypes[0], out };
          case 'binary': return { k: 'binary', op: m.op as never, a: args[0], b: args[1], in: m.inDtypes[0], out };
          case 'where': return { k: 'where', cond: args[0], a: args[1], b: args[2], out };
          default: return { k: 'cast', x: args[0], in: m.inDtypes[0], out };
        }
      };
      const outputs: FusedProgram['outputs'] = [];
      for (const m of outs) {
        // Another call touching the output between its member and the fused call.
        for (let j = m.index + 1; j <= last; j++) {
          if (inGroup.has(j)) continue;
          for (const s of touches[j]) if (overlap(s, m.out)) return null;
        }
        const e = expr(m, ident);
        if (!e) return null;
        const at = m.partial ? compose(root, ident, m.shape, m.partial.strides, m.partial.offset) : ident;
        if (!at) return null;
        outputs.push({ expr: e, dtype: m.outDtype, offset: at.offset, strides: at.strides.slice() });
      }
      const inputs = slots.map((s) => recs[s].dtype as DType);
      for (const m of outs) slots.push(m.out);
      if (slots.length > (kernels!.maxStorages ?? Infinity)) return null;
      const accesses: FusedAccess[] = [...loads, ...outputs];
      const shape = collapse(root.slice(), accesses);
      return { program: { shape, inputs: [...inputs, ...outs.map((m) => m.outDtype)], loads, outputs }, slots, consts, full: outs.map((m) => !m.partial) };
      }
    }
  }

  /** Drops contiguous copies of a temporary that its producer can write into the destination directly. */
  function forwardCopies(evs: TraceEvent[]): TraceEvent[] {
    const list = evs.slice();
    const touch = list.map(touched);
    for (let c = 0; c < list.length; c++) {
      const e = list[c];
      if (e.kind !== 'call' || e.target !== 'backend' || e.method !== 'stridedCopy') continue;
      const [src, dst] = [slotOf(e.args[0]), slotOf(e.args[1])];
      const l = e.args[2] as StridedCopyLayout;
      const n = recs[src].numel;
      if (recs[dst].numel !== n || recs[src].dtype !== recs[dst].dtype || l.srcOffset !== 0 || l.dstOffset !== 0) continue;
      if (!writesAllAt('stridedCopy', [null, { numel: n }, l]).length) continue;
      const cont = contiguous(l.shape);
      if (l.shape.some((s, i) => s !== 1 && l.srcStrides[i] !== cont[i])) continue;
      if (!isTemp(src)) continue;
      const users: number[] = [];
      for (let j = 0; j < list.length; j++) if (touch[j].includes(src)) users.push(j);
      if (users.length !== 2 || users[1] !== c) continue;
      const p = users[0];
      const pe = list[p];
      if (pe.kind !== 'call') continue;
      // The producer writes all of src without reading it.
      let writes: boolean;
      if (pe.target === 'backend') {
        const positions = backendWritesAll(pe.method, pe.args);
        writes = pe.args.some((a, i) => isSlot(a) && slotOf(a) === src && positions.includes(i)) && pe.args.filter((a) => isSlot(a) && slotOf(a) === src).length === 1;
      } else writes = outputArgs(pe).includes(src);
      if (!writes) continue;
      if (touch[p].some((s) => s !== src && overlap(s, dst))) continue;
      // WebGPU: a backend kernel may write two views of one buffer (dweight and dbias into the
      // gradient arena) but reads its inputs read-only, so none of those may share dst's buffer.
      if (webgpu && pe.target === 'backend') {
        const written = backendWritesAll(pe.method, pe.args);
        if (pe.args.some((a, i) => isSlot(a) && slotOf(a) !== src && !written.includes(i) && sameBuffer(slotOf(a), dst))) continue;
      }
      let clear = true;
      for (let j = p + 1; j < c && clear; j++) if (touch[j].some((s) => overlap(s, dst))) clear = false;
      if (!clear) continue;
      const args = pe.args.map((a) => (isSlot(a) && slotOf(a) === src ? ({ $s: dst } satisfies SlotRef) : a));
      list[p] = { ...pe, args } as TraceEvent;
      touch[p] = touched(list[p]);
      list.splice(c, 1);
      touch.splice(c, 1);
      c--;
      stats.forwardedCopies++;
    }
    return list;
  }
}

/** Per fused call (its runner): whether each output is written in full (the last arguments, in order). */
const fusedOutputs = new WeakMap<object, boolean[]>();
function outputArgs(e: Extract<TraceEvent, { kind: 'call' }>): number[] {
  const full = fusedOutputs.get(e.fn as object) ?? [];
  return e.args.slice(e.args.length - full.length).map(slotOf).filter((_, k) => full[k]);
}
