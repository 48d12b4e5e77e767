/**
 * Matmul epilogues in a captured step: a matmul whose result only one elementwise consumer reads
 * (a chain the fusion pass made: bias + activation, bias + residual; or one fusable call: the bias
 * add of attention's qkv, a gradient added into another) becomes one call, `matmulEpilogue`, that
 * runs the matmul and then the consumer's program on its result, which then needs no buffer of
 * its own (src/kernels/fusedmap.ts, FusedMapKernels.matmulEpilogue; the backends keep it in a
 * panel of scratch while it is still in cache).
 *
 * Formed only where the bits cannot change: the result is a temporary of the step written in full
 * by the matmul and read by nothing but the consumer, which reads it at the identity address over
 * the [batch * m, n] output (so the program sees the very float32 values the matmul stored);
 * nothing between them writes the matmul's operands, and no output of the consumer overlaps them
 * (a backend writes the outputs panel by panel while it still reads the operands). The fused call
 * stands where the consumer stood: everything else it reads is read at that point, as before.
 */
import type { MatmulLayout } from '../kernels/backend.js';
import type { FusedAccess, FusedExpr, FusedMapKernels, FusedProgram } from '../kernels/fusedmap.js';
import type { DType } from '../tensor/dtype.js';
import { contiguousStrides as contiguous, numel as numelOf } from '../tensor/shape.js';
import type { MapNode } from './fuse.js';
import { isSlot, slotOf, type SlotRef, type StorageRecord, type TraceEvent } from './trace.js';

/** A fused elementwise call's program and the slots of its storages (inputs, then outputs). */
export interface ChainProgram {
  program: FusedProgram;
  slots: number[];
}

/** What the epilogue pass needs of the fusion pass (src/compile/fuse.ts) that runs it. */
export interface EpilogueContext {
  recs: StorageRecord[];
  kernels: FusedMapKernels;
  /** A temporary of the step (made and freed within it, no views, not state, not returned). */
  isTemp(slot: number): boolean;
  /** Whether two slots may share memory. */
  overlap(a: number, b: number): boolean;
  /** Slots an event touches. */
  touched(e: TraceEvent): number[];
  /** Argument positions a backend call overwrites in full (trace.ts writesAllAt over the slots' storages). */
  backendWritesAll(method: string, args: unknown[]): readonly number[];
  /** The elementwise call an event is, or null. */
  mapNode(e: TraceEvent, index: number): MapNode | null;
  /** An input's access re-expressed over a root iteration space (fuse.ts `compose`). */
  compose(root: number[], acc: FusedAccess, shape: number[], strides: number[], offset: number): FusedAccess | null;
  /** Programs of the fused calls the pass made, by their runner. */
  chains: WeakMap<object, ChainProgram>;
  /** Per fused call (its runner): whether each output (the last arguments) is written in full. */
  fullOutputs: WeakMap<object, boolean[]>;
}


/** Rewrites `events`: each matmul with a fusable consumer and that consumer become one call. Returns the events and the count. */
export function fuseEpilogues(events: TraceEvent[], cx: EpilogueContext): { events: TraceEvent[]; fused: number } {
  const build = cx.kernels.matmulEpilogue?.bind(cx.kernels);
  if (!build) return { events, fused: 0 };
  const { recs } = cx;
  const touches = events.map((e) => cx.touched(e));
  const users: number[][] = recs.map(() => []);
  touches.forEach((ss, i) => { for (const s of new Set(ss)) users[s].push(i); });
  const replaced = new Map<number, TraceEvent | null>();
  let fused = 0;

  events.forEach((e, i) => {
    if (e.kind !== 'call' || e.target !== 'backend' || e.method !== 'matmul') return;
    if (!e.args.slice(0, 3).every(isSlot)) return;
    const [a, b, c] = e.args.slice(0, 3).map(slotOf);
    const l = e.args[3] as MatmulLayout;
    if (![a, b, c].every((s) => recs[s].dtype === 'float32') || a === c || b === c) return;
    if (!cx.isTemp(c) || users[c].length !== 2 || users[c][0] !== i) return;
    const j = users[c][1];
    if (replaced.has(j)) return;
    const consumer = consumerOf(events[j], j);
    if (!consumer) return;
    const nIn = consumer.program.inputs.length - consumer.program.outputs.length;
    const acc = consumer.slots.indexOf(c);
    if (acc < 0 || acc >= nIn || consumer.slots.lastIndexOf(c) !== acc) return;
    // The operands are read at the consumer's place: nothing between may write them.
    for (let t = i + 1; t < j; t++) if (writesEither(events[t], touches[t], a, b)) return;
    // Outputs are written panel by panel while the operands are still being read. (On WebGPU an
    // output may share a buffer with an operand where they do not overlap: fused-common.ts shareBuffers.)
    for (const s of consumer.slots.slice(nIn)) if (cx.overlap(s, a) || cx.overlap(s, b)) return;
    if (consumer.slots.length + 1 > (cx.kernels.maxStorages ?? Infinity)) return;
    const program = overRows(consumer.program, acc, [l.batch * l.m, l.n]);
    if (!program) return;
    const runner = build(l, program, acc);
    if (!runner) return;
    // A runner of its own per call: the output facts are keyed by it.
    const run = (...x: unknown[]): void => (runner as (...y: unknown[]) => void)(...x);
    cx.fullOutputs.set(run, consumer.full);
    replaced.set(i, null);
    replaced.set(j, {
      kind: 'call', target: 'extern', method: 'matmulEpilogue',
      args: [{ $s: a }, { $s: b }, ...consumer.slots.map((s, k) => (k === acc ? null : ({ $s: s } satisfies SlotRef)))],
      fn: run as (...x: unknown[]) => unknown,
    });
    fused++;
  });
  const out = events.map((e, i) => (replaced.has(i) ? replaced.get(i)! : e)).filter((e): e is TraceEvent => e !== null);
  return { events: out, fused };

  /** The consumer's program over its own storages: a chain the pass fused, or one fusable call (not a copy: forwardCopies handles those better). */
  function consumerOf(e: TraceEvent, index: number): (ChainProgram & { full: boolean[] }) | null {
    if (e.kind !== 'call') return null;
    if (e.target === 'extern') {
      const chain = cx.chains.get(e.fn as object);
      const full = cx.fullOutputs.get(e.fn as object);
      // A partial output (a copy into a concat) is left alone: the contract promises whole outputs.
      return chain && full && full.every(Boolean) ? { ...chain, full } : null;
    }
    const n = cx.mapNode(e, index);
    if (!n || n.kind === 'copy' || n.partial || !cx.kernels.supports(n)) return null;
    const slots: number[] = [];
    const loads: FusedProgram['loads'] = [];
    const args: FusedExpr[] = n.inputs.map((inp) => {
      let input = slots.indexOf(inp.slot);
      if (input < 0) input = slots.push(inp.slot) - 1;
      const key = JSON.stringify([input, inp.offset, inp.strides]);
      let li = loads.findIndex((x) => JSON.stringify([x.input, x.offset, x.strides]) === key);
      if (li < 0) li = loads.push({ input, offset: inp.offset, strides: inp.strides.slice() }) - 1;
      return { k: 'load', load: li };
    });
    // An output read at another element of a load would see a stored value: the chain pass refuses these too.
    if (slots.some((s) => cx.overlap(s, n.out))) return null;
    const out = n.outDtype;
    let expr: FusedExpr;
    switch (n.kind) {
      case 'unary': expr = { k: 'unary', op: n.op as never, x: args[0], p0: n.p0 ?? 0, p1: n.p1 ?? 0, in: n.inDtypes[0], out }; break;
      case 'binary': expr = { k: 'binary', op: n.op as never, a: args[0], b: args[1], in: n.inDtypes[0], out }; break;
      case 'where': expr = { k: 'where', cond: args[0], a: args[1], b: args[2], out }; break;
      default: expr = { k: 'cast', x: args[0], in: n.inDtypes[0], out };
    }
    const inputs = slots.map((s) => recs[s].dtype as DType);
    slots.push(n.out);
    return {
      program: { shape: n.shape.slice(), inputs: [...inputs, out], loads, outputs: [{ expr, dtype: out, offset: 0, strides: contiguous(n.shape) }] },
      slots,
      full: [true],
    };
  }

  /** Whether an event may write a or b (kernels write only their output positions; anything unknown counts as writing). */
  function writesEither(e: TraceEvent, touched: number[], a: number, b: number): boolean {
    const hits = (s: number) => cx.overlap(s, a) || cx.overlap(s, b);
    if (!touched.some(hits)) return false;
    if (e.kind === 'write') return true;
    if (e.target === 'backend') {
      const outs = cx.backendWritesAll(e.method, e.args);
      // A kernel whose outputs the contract does not list (attentionBackward's slices) may write anything it is given.
      if (outs.length === 0) return true;
      return e.args.some((x, k) => (isSlot(x) ? outs.includes(k) && hits(slotOf(x)) : cx.touched({ ...e, args: [x] }).some(hits)));
    }
    const full = e.target === 'extern' ? cx.fullOutputs.get(e.fn as object) : undefined;
    if (!full) return true;
    return e.args.slice(e.args.length - full.length).some((x) => isSlot(x) && hits(slotOf(x)));
  }

  /**
   * The program over the matmul's output rows [rows, n], its result (input `acc`) read at the
   * identity; null where some access is not affine there or the result is read otherwise.
   */
  function overRows(p: FusedProgram, acc: number, root: number[]): FusedProgram | null {
    if (numelOf(p.shape) !== numelOf(root) || p.inputs[acc] !== 'float32') return null;
    const ident: FusedAccess = { offset: 0, strides: contiguous(root) };
    const re = (x: FusedAccess): FusedAccess | null => cx.compose(root, ident, p.shape, x.strides, x.offset);
    const loads: FusedProgram['loads'] = [];
    for (const x of p.loads) {
      const y = re(x);
      if (!y) return null;
      if (x.input === acc) {
        const identity = y.offset === 0 && y.strides.every((s, d) => root[d] === 1 || s === ident.strides[d]);
        if (!identity) return null;
        loads.push({ input: acc, offset: 0, strides: ident.strides.slice() });
      } else loads.push({ input: x.input, offset: y.offset, strides: y.strides });
    }
    if (loads.filter((x) => x.input === acc).length !== 1) return null;
    const outputs: FusedProgram['outputs'] = [];
    for (const o of p.outputs) {
      const y = re(o);
      if (!y) return null;
      outputs.push({ expr: o.expr, dtype: o.dtype, offset: y.offset, strides: y.strides });
    }
    return { shape: root.slice(), inputs: p.inputs.slice(), loads, outputs };
  }
}
