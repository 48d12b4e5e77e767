/**
 * A captured step as a plan: the recorded device calls bound to a static buffer assignment, ready
 * to replay without a tape, Tensor objects or allocations.
 *
 * Storages of the trace fall into:
 * - fixed: existed before the step (parameters, the arena, optimizer state, constants) or were
 *   made by it and outlived it without being returned (new state): the plan uses them as they are;
 * - inputs: the compiled function's tensor arguments, bound anew on each replay;
 * - outputs: made by the step and returned: allocated anew on each replay (the caller owns them);
 * - temporaries: made and released within the step. Each gets a planned buffer; buffers are
 *   shared by temporaries whose lives (first to last use) do not overlap, so a replay allocates
 *   and frees nothing. A temporary first touched by a read is zeroed first, as allocation would;
 * - swapped state: a tensor that existed before the step and was pointed at new storage during it
 *   (BatchNorm's running statistics, via Tensor.rebind). Where the step is done with the old value
 *   before it writes the new one, the plan reads and writes the new storage (the old one is freed);
 *   otherwise it keeps the old storage and copies the current state into it first on each replay.
 *   State that moves later (another plan's trace, an eager step, host code) is followed: see
 *   `retarget` and compile.ts.
 *
 * `calls` is the seam for later passes: a fusion pass rewrites this list (elementwise chains into
 * one generated kernel) before it is bound.
 */
import type { Backend, Storage } from '../kernels/backend.js';
import { fusedKernelsFor } from '../kernels/fused.js';
import type { HostRef, KeyRef, SlotRef, StorageRecord, Trace, TraceEvent } from './trace.js';
import { fusedMapKernels, fuseTrace, type FuseStats } from './fuse.js';

/** Where a storage of the plan comes from on a replay. */
export type Binding =
  | { kind: 'fixed'; storage: Storage }
  | { kind: 'input'; index: number }
  | { kind: 'output'; index: number }
  | { kind: 'buffer'; buffer: number; offset: number }
  | { kind: 'unsupported'; why: string };

/** A call in the plan: the recorded event plus, for planned buffers, a zero fill in front. */
export interface PlannedCall {
  event: TraceEvent;
  /** Slots to zero before this call (first touched by a read, as a fresh allocation would be zero). */
  zero: number[];
}

export interface PlanStats {
  /** Device calls per replay (kernels and host writes, including zero fills and state copies). */
  calls: number;
  /** Planned buffers, and their total elements. */
  buffers: number;
  bufferElements: number;
  /** Temporaries that the buffers serve (without reuse each would be a buffer). */
  temporaries: number;
  /** Old storages of swapped state that the plan keeps (the new value is copied back into them). */
  keptState: number;
  /** Of `calls`: zero fills of reused buffers (an eager step gets them from its fresh allocations). */
  zeroFills: number;
  /**
   * Of `calls`: those whose arguments change on each replay (inputs, outputs, random keys, live
   * hyper-parameters), so their host code runs every time. On WebGPU the others are encoded from
   * recorded command streams (no host work per kernel).
   */
  dynamicCalls: number;
  /**
   * The fusion pass (src/compile/fuse.ts): generated kernels in `calls`, the calls and constant
   * writes they replaced, and copies dropped because their source's producer writes the destination.
   */
  fusedKernels: number;
  fusedCalls: number;
  forwardedCopies: number;
  /** Matmuls run with their elementwise consumer as one call (src/compile/epilogue.ts). */
  epilogues: number;
}

interface BoundStep {
  fn: (...a: unknown[]) => unknown;
  self: object | null;
  args: unknown[];
  /** Its arguments change on each replay (inputs, outputs, random keys, host values): its host code runs every time. */
  dynamic?: boolean;
}
/**
 * A run of consecutive steps: dynamic ones run their host code on each replay; a static run is
 * recorded as device commands on its first replay where the backend can (WebGPU: CommandReplay)
 * and encoded again from the recording afterwards.
 */
interface Segment {
  start: number;
  end: number;
  dynamic: boolean;
  recording: object | null;
}
interface Patch {
  obj: Record<number | string, unknown>;
  key: number | string;
  from: { input: number } | { output: number } | KeyRef | HostRef;
}

/**
 * Profiling (benches, tests): set while a plan is built, `around` is bound into each of its calls
 * and runs it on every replay, named by kind: the backend method (`fill`, `write`, `matmul`...),
 * `fused.` + a fused arena kernel, or the generated kernel's runner (`fusedMap`, `matmulEpilogue`,
 * ...), which no backend wrapper sees, with the call's arguments. Null (the default) leaves the calls unwrapped.
 */
export const planProfile: { around: ((name: string, run: () => unknown, args: unknown[]) => unknown) | null } = { around: null };

export class Plan {
  readonly backend: Backend;
  readonly calls: PlannedCall[];
  private steps: BoundStep[] = [];
  private segments: Segment[] = [];
  private patches: Patch[] = [];
  private buffers: Storage[] = [];
  /** Swapped state kept alive by the plan (released with it). */
  private kept: Storage[] = [];
  /** Per output index: numel and dtype of the storage each replay allocates. */
  readonly outputs: { numel: number; dtype: Storage['dtype'] }[];
  readonly stats: PlanStats;
  readonly unsupported: string | null;
  /** What the fusion pass did (zeros with `fuse: false`). */
  readonly fusion: FuseStats;

  constructor(traced: Trace, outputStorages: Storage[], opts: { fuse?: boolean | 'elementwise' } = {}) {
    this.backend = traced.backend;
    const b = traced.backend;
    // The fusion pass (src/compile/fuse.ts) rewrites the calls before anything is bound.
    const outputSlots = new Set(traced.storages.filter((r) => outputStorages.includes(r.storage)).map((r) => r.id));
    const pass = opts.fuse === false ? null : fuseTrace(traced, fusedMapKernels(b), outputSlots, opts.fuse !== 'elementwise');
    const trace = pass?.trace ?? traced;
    this.fusion = pass?.stats ?? { fused: 0, replacedCalls: 0, forwardedCopies: 0, epilogues: 0 };
    const records = trace.storages;
    const outputIndex = new Map<Storage, number>();
    outputStorages.forEach((s, i) => { if (!outputIndex.has(s)) outputIndex.set(s, i); });
    this.outputs = outputStorages.map((s) => ({ numel: s.numel, dtype: s.dtype }));

    let why: string | null = trace.unsupported;
    const fail = (w: string): Binding => {
      why ??= w;
      return { kind: 'unsupported', why: w };
    };

    // Pre-existing storages released during the step must be state that was swapped for new storage.
    const swaps: { from: Storage; to: Storage }[] = [];
    /**
     * Pre-existing storages that the step disposes without any recorded call touching them: state
     * the step discards and makes anew (the per-tensor optimizer's zeroGrad drops last step's
     * .grad tensors, and backward makes new ones, which the plan keeps as fixed storages). A
     * replay has nothing to do with them: they are freed once the plan is built.
     */
    const discarded: Storage[] = [];
    for (const r of records) {
      if (r.origin !== 'pre' || !r.released) continue;
      if (r.firstUse < 0 && !trace.rebinds.has(r.storage) && !records.some((x) => x.viewOf?.base === r.id)) {
        this.kept.push(r.storage);
        discarded.push(r.storage);
        continue;
      }
      let to = trace.rebinds.get(r.storage);
      const seen = new Set<Storage>();
      while (to && trace.rebinds.has(to) && !seen.has(to)) {
        seen.add(to);
        to = trace.rebinds.get(to);
      }
      // Its release was held back during the trace: the plan owns it either way.
      this.kept.push(r.storage);
      if (!to) fail(`the step disposes a ${r.dtype} tensor of ${r.numel} elements that existed before it, without replacing it in place (Tensor.rebind)`);
      else if (records.some((x) => x.storage === to && x.released)) fail(`the step replaces a ${r.dtype} tensor of ${r.numel} elements that existed before it by storage that it frees again`);
      else swaps.push({ from: r.storage, to });
    }
    // Where the step is done with the old state before it first touches the new one (BatchNorm:
    // new = f(old)), the plan reads the new storage in place of the old: the state lives in one
    // place (what the host objects point at), so changing it between steps (loadStateDict) is
    // seen, and the old storage is freed. Otherwise the new value is copied back after each replay.
    const redirect = new Map<number, Storage>();
    for (let i = swaps.length - 1; i >= 0; i--) {
      const { from, to } = swaps[i];
      const rFrom = records.find((r) => r.storage === from && r.origin === 'pre')!;
      const rTo = records.find((r) => r.storage === to && !r.released);
      const viewed = records.some((r) => r.viewOf?.base === rFrom.id);
      if (rTo && !viewed && rFrom.lastUse < rTo.firstUse) {
        redirect.set(rFrom.id, to);
        swaps.splice(i, 1);
      }
    }

    // Bindings: roots first (views are bound after, from their base).
    const binding: Binding[] = new Array(records.length);
    const temps: StorageRecord[] = [];
    for (const r of records) {
      if (r.viewOf) continue;
      if (r.origin === 'input') {
        binding[r.id] = outputIndex.has(r.storage) ? fail('the step returns one of its input tensors (return a copy)') : { kind: 'input', index: r.inputIndex };
      } else if (outputIndex.has(r.storage)) {
        if (r.origin === 'pre') binding[r.id] = fail('the step returns a tensor that existed before it (return a copy)');
        else binding[r.id] = { kind: 'output', index: outputIndex.get(r.storage)! };
      } else if (r.origin === 'made' && r.released) temps.push(r);
      else binding[r.id] = { kind: 'fixed', storage: redirect.get(r.id) ?? r.storage };
    }
    for (const s of outputStorages) if (!records.some((r) => r.storage === s)) fail('the step returns a tensor that its device calls never made');

    // Buffer assignment over the temporaries' lives: a free list per (dtype, numel), since kernels
    // take a storage's length from the storage.
    const zeroAt = new Map<number, number[]>();
    const bufferSize: { numel: number; dtype: Storage['dtype'] }[] = [];
    const free = new Map<string, number[]>();
    const starts = temps.filter((t) => t.firstUse >= 0).sort((a, c) => a.firstUse - c.firstUse);
    const byEnd = [...starts].sort((a, c) => a.lastUse - c.lastUse);
    let ended = 0;
    for (const t of temps) if (t.firstUse < 0) binding[t.id] = { kind: 'fixed', storage: t.storage }; // never touched: never used
    // New state the step makes and keeps (a .grad made by backward): the plan reuses the storage on
    // every replay, where the eager step got a fresh (zero) one; first touched by a read, it is zeroed first.
    for (const r of records) {
      if (r.viewOf || r.origin !== 'made' || r.released || r.firstUse < 0 || r.firstUseWritesAll || binding[r.id]?.kind !== 'fixed') continue;
      if (!zeroAt.has(r.firstUse)) zeroAt.set(r.firstUse, []);
      zeroAt.get(r.firstUse)!.push(r.id);
    }
    for (const t of starts) {
      // Free the buffers of temporaries whose last use came before this one's first use (not at
      // it: a call's inputs and outputs need distinct buffers).
      for (; ended < byEnd.length && byEnd[ended].lastUse < t.firstUse; ended++) {
        const done = byEnd[ended];
        const key = `${done.dtype}:${done.numel}`;
        if (!free.has(key)) free.set(key, []);
        free.get(key)!.push((binding[done.id] as { buffer: number }).buffer);
      }
      const key = `${t.dtype}:${t.numel}`;
      let buf = free.get(key)?.pop();
      if (buf === undefined) {
        buf = bufferSize.length;
        bufferSize.push({ numel: t.numel, dtype: t.dtype });
      }
      binding[t.id] = { kind: 'buffer', buffer: buf, offset: 0 };
      if (!t.firstUseWritesAll) {
        if (!zeroAt.has(t.firstUse)) zeroAt.set(t.firstUse, []);
        zeroAt.get(t.firstUse)!.push(t.id);
      }
    }
    for (const r of records) {
      if (!r.viewOf) continue;
      if (outputIndex.has(r.storage)) {
        binding[r.id] = fail('the step returns a view into another storage (return a copy)');
        continue;
      }
      const base = binding[r.viewOf.base];
      if (base.kind === 'fixed') binding[r.id] = { kind: 'fixed', storage: r.storage };
      else if (base.kind === 'buffer') binding[r.id] = { kind: 'buffer', buffer: base.buffer, offset: base.offset + r.viewOf.offset };
      else binding[r.id] = fail(`the step makes a view into ${base.kind === 'input' ? 'an input' : 'a returned'} tensor's storage`);
      // A view's own numel differs from its buffer's: remember it for materialization.
      (binding[r.id] as { numel?: number }).numel = r.numel;
    }

    this.calls = trace.events.map((event, i) => ({ event, zero: zeroAt.get(i) ?? [] }));
    this.unsupported = why;
    const callCount = this.calls.reduce((n, c) => n + 1 + c.zero.length, 0) + swaps.length;
    this.stats = {
      calls: callCount,
      buffers: bufferSize.length,
      bufferElements: bufferSize.reduce((n, s) => n + s.numel, 0),
      temporaries: starts.length,
      keptState: 0,
      zeroFills: this.calls.reduce((n, c) => n + c.zero.length, 0),
      dynamicCalls: 0,
      fusedKernels: this.fusion.fused,
      fusedCalls: this.fusion.replacedCalls,
      forwardedCopies: this.fusion.forwardedCopies,
      epilogues: this.fusion.epilogues,
    };
    if (why) return;

    // Materialize: allocate the buffers once and bind every call's arguments.
    this.buffers = bufferSize.map((s) => b.alloc(s.numel, s.dtype));
    const views = new Map<number, Storage>();
    const storageFor = (slot: number): Storage | { input: number } | { output: number } => {
      const bnd = binding[slot] as Binding & { numel?: number };
      switch (bnd.kind) {
        case 'fixed': return bnd.storage;
        case 'input': return { input: bnd.index };
        case 'output': return { output: bnd.index };
        case 'buffer': {
          const buf = this.buffers[bnd.buffer];
          const n = bnd.numel ?? records[slot].numel;
          if (bnd.offset === 0 && n === buf.numel) return buf;
          if (!views.has(slot)) views.set(slot, b.view(buf, bnd.offset, n));
          return views.get(slot)!;
        }
        default: throw new Error(`internal: unsupported binding reached materialization (${bnd.why})`);
      }
    };
    // Copies the template's objects with placeholders bound; an object with none inside is the
    // recorded object itself (kept by reference in the trace).
    let found = 0;
    const bind = (x: unknown, parent: Record<number | string, unknown>, key: number | string): unknown => {
      if (typeof x !== 'object' || x === null) return x;
      if ('$s' in x || '$k' in x || '$h' in x) found++;
      if ('$s' in x) {
        const s = storageFor((x as SlotRef).$s);
        if ('input' in s || 'output' in s) {
          this.patches.push({ obj: parent, key, from: s as { input: number } | { output: number } });
          return null;
        }
        return s;
      }
      if ('$k' in x) {
        this.patches.push({ obj: parent, key, from: x as KeyRef });
        return 0;
      }
      if ('$h' in x) {
        this.patches.push({ obj: parent, key, from: x as HostRef });
        return null;
      }
      if ('blockParam' in x && 'paramTable' in x) return x;
      if (ArrayBuffer.isView(x)) return x;
      const before = found;
      let copy: unknown;
      if (Array.isArray(x)) {
        const out: unknown[] = new Array(x.length);
        x.forEach((v, i) => { out[i] = bind(v, out as unknown as Record<number, unknown>, i); });
        copy = out;
      } else {
        const o: Record<string, unknown> = {};
        for (const [k, v] of Object.entries(x)) o[k] = bind(v, o, k);
        copy = o;
      }
      return found === before ? x : copy;
    };
    const fused = fusedKernelsFor(b) as unknown as Record<string, (...a: unknown[]) => unknown> | null;
    const be = b as unknown as Record<string, (...a: unknown[]) => unknown>;
    // A step is dynamic when binding its arguments added patches (filled anew on each replay).
    const around = planProfile.around;
    const push = (step: BoundStep, patchesBefore: number, name: string): void => {
      step.dynamic = this.patches.length > patchesBefore;
      if (around) {
        const { fn, self } = step;
        step.fn = (...a: unknown[]) => around(name, () => fn.apply(self, a), a);
      }
      this.steps.push(step);
    };
    for (const c of this.calls) {
      for (const z of c.zero) {
        const before = this.patches.length;
        const args: unknown[] = [null, 0];
        args[0] = bind({ $s: z }, args as unknown as Record<number, unknown>, 0);
        push({ fn: be.fill, self: b, args }, before, 'fill');
      }
      const e = c.event;
      const before = this.patches.length;
      if (e.kind === 'write') {
        const args: unknown[] = [null, e.data];
        args[0] = bind({ $s: e.slot }, args as unknown as Record<number, unknown>, 0);
        push({ fn: be.write, self: b, args }, before, 'write');
      } else {
        const self = e.target === 'backend' ? b : e.target === 'fused' ? fused! : null;
        const fn = e.fn ?? (self as Record<string, (...a: unknown[]) => unknown>)[e.method];
        const args: unknown[] = new Array(e.args.length);
        e.args.forEach((a, i) => { args[i] = bind(a, args as unknown as Record<number, unknown>, i); });
        push({ fn, self, args }, before, e.target === 'fused' ? `fused.${e.method}` : e.method);
      }
    }
    for (const old of [...[...redirect.keys()].map((id) => records[id].storage), ...discarded]) {
      this.kept.splice(this.kept.indexOf(old), 1);
      b.release(old);
    }
    this.stats.keptState = this.kept.length;
    // Swapped state the plan could not redirect: each replay starts by copying the current state
    // (`to`, where the host objects point, which other plans and eager steps update too) into the
    // storage that the recorded calls read.
    const copy = around ? (...a: unknown[]) => around('stridedCopy', () => be.stridedCopy.apply(b, a), a) : be.stridedCopy;
    this.steps.unshift(...swaps.map(({ from, to }) => ({
      fn: copy, self: b,
      args: [to, from, { shape: [from.numel], srcStrides: [1], srcOffset: 0, dstStrides: [1], dstOffset: 0 }],
    })));
    // Each dynamic step alone; consecutive static ones together (one recording each run).
    for (let i = 0; i < this.steps.length; ) {
      const dynamic = !!this.steps[i].dynamic;
      let j = i + 1;
      if (!dynamic) while (j < this.steps.length && !this.steps[j].dynamic) j++;
      this.segments.push({ start: i, end: j, dynamic, recording: null });
      i = j;
    }
    this.stats.dynamicCalls = this.steps.filter((st) => st.dynamic).length;
  }

  /** Drops the recorded command streams (their bindings changed); the next replay records again. */
  private dropRecordings(): void {
    const cr = this.backend.commandReplay;
    for (const seg of this.segments) {
      if (seg.recording && cr) cr.release(seg.recording);
      seg.recording = null;
    }
  }

  /** Runs steps [start, end) through their host code. */
  private run(start: number, end: number): void {
    for (let i = start; i < end; i++) {
      const st = this.steps[i];
      st.fn.apply(st.self, st.args);
    }
  }

  /**
   * State moved from `from` to `to` outside this plan (another plan's trace, an eager step, host
   * code: Tensor.rebind): the plan reads and writes `to` from now on.
   */
  retarget(from: Storage, to: Storage): void {
    let moved = false;
    const walk = (x: unknown): void => {
      if (typeof x !== 'object' || x === null || ArrayBuffer.isView(x) || Object.isFrozen(x)) return;
      if (Array.isArray(x)) {
        for (let i = 0; i < x.length; i++) {
          if (x[i] === from) {
            x[i] = to;
            moved = true;
          } else walk(x[i]);
        }
      } else if (Object.getPrototypeOf(x) === Object.prototype && !('blockParam' in x)) {
        const o = x as Record<string, unknown>;
        for (const k of Object.keys(o)) {
          if (o[k] === from) {
            o[k] = to;
            moved = true;
          } else walk(o[k]);
        }
      }
    };
    for (const s of this.steps) walk(s.args);
    // Every live plan hears of every move (another model's BatchNorm too): only a plan that used
    // the old storage records its command streams again.
    if (moved) this.dropRecordings();
  }

  /**
   * Runs the plan: inputs bound, outputs allocated here and returned, random keys drawn and host
   * values (captureHooks.hostValue, by index; null for those that are guards) computed by the caller.
   */
  replay(inputs: Storage[], keys: [number, number][], hostValues: readonly (object | null)[] = []): Storage[] {
    const b = this.backend;
    const outs = this.outputs.map((o) => b.alloc(o.numel, o.dtype));
    for (const p of this.patches) {
      const f = p.from;
      p.obj[p.key] = '$k' in f ? keys[f.$k][f.part] : '$h' in f ? hostValues[f.$h] : 'input' in f ? inputs[f.input] : outs[f.output];
    }
    const cr = b.commandReplay;
    if (!cr) {
      this.run(0, this.steps.length);
      return outs;
    }
    // One submit for the whole step; static runs encoded from their recordings.
    cr.holdSubmits(true);
    try {
      for (const seg of this.segments) {
        if (seg.dynamic) {
          this.run(seg.start, seg.end);
          continue;
        }
        if (seg.recording && cr.replay(seg.recording)) continue;
        if (seg.recording) cr.release(seg.recording);
        seg.recording = null;
        const recording = cr.begin();
        let done = false;
        try {
          this.run(seg.start, seg.end);
          done = true;
        } finally {
          if (recording) {
            const r = cr.end();
            if (done) seg.recording = r;
            else if (r) cr.release(r);
          }
        }
      }
    } finally {
      cr.holdSubmits(false);
    }
    return outs;
  }

  /** Releases the planned buffers and the swapped state the plan kept alive. */
  dispose(): void {
    this.dropRecordings();
    for (const s of this.buffers) this.backend.release(s);
    for (const s of this.kept) this.backend.release(s);
    this.buffers = [];
    this.kept = [];
    this.steps = [];
  }
}
