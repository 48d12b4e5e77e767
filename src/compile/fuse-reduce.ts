/**
 * The reduction rules of the fusion pass (called from src/compile/fuse.ts after chains are fused
 * and copies forwarded): sums over rows fold into the row kernel whose output they sum, so the
 * sum is taken while the row is in cache and its call goes.
 *
 * layerNormBackward, as Backend.layerNormBackwardFused:
 * - The residual gradient: `binary add(r, dx)` of the dx of a layerNormBackward (the gradient
 *   that a pre-norm block's branch adds to its skip path) is written by the kernel itself, as
 *   r + dx in float32 (the add's bits), and the temporary dx goes. Only where dx is a temporary
 *   that nothing but the add reads.
 * - Bias gradients: `reduce sum` of that dx (or of the sum above) over its rows (a linear
 *   layer's bias gradient, a position embedding's over the batch) is summed in the kernel's dx
 *   pass, in the reduce kernel's order (row by row into float64, rounded once), so the sums keep
 *   the reduce's bits. dx itself is still written: its other readers (the matmuls) keep it. A
 *   strided copy of a slice of dx that only a reduce reads (the class token's gradient) folds
 *   with that reduce, as a sum over blocks of dx.
 *
 * Kernels with one sum over all the rows they write (Backend.crossEntropyWithSum,
 * crossEntropyBackwardWithSums, attentionBackwardWithSums): the sum of crossEntropy's per-row
 * losses, the column sums of crossEntropyBackward's output (the bias gradient of the layer that
 * made the logits) and of attentionBackward's packed dq, dk, dv (the bias gradient of the q, k, v
 * projection), each in the order of the reduce it replaces.
 *
 * The fused call runs where the row kernel was; what it writes earlier than the calls it
 * replaces did must be touched by no call in between, and what it reads there must be what those
 * calls read later (nothing in between writes it). Backends without the method (WebGPU) keep the
 * calls as they are.
 *
 * Where these fall short: a bias gradient whose dY a fused elementwise kernel or a matmul
 * epilogue makes (the MLP's hidden layers, a ViT's first MLP layer) and the loss's count of
 * labels and division stay separate calls (those kernels are the elementwise generator's).
 */
import type { AttentionLayout, BlockSum, BroadcastLayout, CrossEntropyLayout, LayerNormBackwardFusedLayout, LayerNormLayout, ReduceLayout, Storage, StridedCopyLayout } from '../kernels/backend.js';
import { contiguousStrides } from '../tensor/shape.js';
import { isSlot, slotOf, writesAllAt, type SlotRef, type StorageRecord, type Trace, type TraceEvent } from './trace.js';

export interface ReduceFusionContext {
  trace: Trace;
  recs: StorageRecord[];
  /** A temporary of the step that no output, view or state shares (fuse.ts). */
  isTemp(slot: number): boolean;
  overlap(a: number, b: number): boolean;
  touched(e: TraceEvent): number[];
  /** Notes that a runner writes its last `full.length` arguments (where true) in full. */
  noteOutputs(run: object, full: boolean[]): void;
}

type Call = Extract<TraceEvent, { kind: 'call' }>;

/**
 * Argument positions that these backend calls write; every other storage they take is only read.
 * Calls not listed (and external ones) count as writing whatever they touch.
 */
const WRITES: Record<string, number[]> = {
  unary: [2], binary: [3], where: [3], cast: [1], reduce: [2], matmul: [2], stridedCopy: [1], softmax: [1],
  layerNorm: [3, 4, 5], layerNormBackward: [5, 6, 7], crossEntropy: [2], crossEntropyBackward: [3],
};

/**
 * A kernel whose output a reduce sums over all its rows, and the method that does both: its
 * first `slots` arguments are storages, then its layout; `source` is the summed storage (or -1:
 * not this call), `args` the storages the fused method takes before the sum, `sums` whether the
 * reduce's layout is the one the fused method sums in the reduce's order.
 */
interface SumRule {
  fused: 'crossEntropyWithSum' | 'crossEntropyBackwardWithSums' | 'attentionBackwardWithSums';
  slots: number;
  source(slots: number[], layout: never, recs: StorageRecord[]): number;
  args(slots: number[]): number[];
  sums(layout: never, reduce: ReduceLayout): boolean;
}
const SUM_RULES: Record<string, SumRule> = {
  crossEntropy: {
    fused: 'crossEntropyWithSum', slots: 3,
    source: (s, l: CrossEntropyLayout) => (l.rows > 0 ? s[2] : -1),
    args: (s) => s,
    // The one column of per-row losses.
    sums: (l: CrossEntropyLayout, r) => r.size === l.rows && r.inner === 1,
  },
  crossEntropyBackward: {
    fused: 'crossEntropyBackwardWithSums', slots: 4,
    source: (s, l: CrossEntropyLayout) => (l.rows > 0 ? s[3] : -1),
    args: (s) => s,
    // Columns of more than one: the reduce kernel's column path, whose order the kernel keeps.
    sums: (l: CrossEntropyLayout, r) => r.size === l.rows && r.inner === l.cols && l.cols > 1,
  },
  attentionBackward: {
    fused: 'attentionBackwardWithSums', slots: 8,
    // dq, dk and dv rows of one packed storage (self-attention: l = s).
    source: (s, l: AttentionLayout) => (s[5] === s[6] && s[6] === s[7] && l.l === l.s && l.n * l.l > 0 ? s[5] : -1),
    args: (s) => s.slice(0, 6),
    sums: (l: AttentionLayout, r) => {
      const fits = (o: AttentionLayout['q']) => o.row === r.inner && o.offset >= 0 && o.offset + l.heads * l.d <= r.inner;
      return r.size === l.n * l.l && r.inner > 1 && fits(l.q) && fits(l.k) && fits(l.v);
    },
  },
};

export function fuseReductions(events: TraceEvent[], ctx: ReduceFusionContext): { events: TraceEvent[]; fused: number; replaced: number } {
  const backend = ctx.trace.backend;
  const fusedFn = backend.layerNormBackwardFused;
  if (!fusedFn && !Object.values(SUM_RULES).some((r) => backend[r.fused])) return { events, fused: 0, replaced: 0 };
  const { recs, overlap } = ctx;
  const list = events.slice();
  const touches = list.map(ctx.touched);
  const gone = new Set<number>();
  /** Per slot, the calls that touch it, in order (folded calls left out): rebuilt after each fusion. */
  let touchers = new Map<number, number[]>();
  const index = (): void => {
    touchers = new Map();
    touches.forEach((ss, i) => {
      if (gone.has(i)) return;
      for (const s of new Set(ss)) {
        if (!touchers.has(s)) touchers.set(s, []);
        touchers.get(s)!.push(i);
      }
    });
  };
  index();
  let fused = 0;
  let replaced = 0;
  const f32 = (s: number) => recs[s].dtype === 'float32';
  /** float32, or int32 (class labels: the kernels check their dtypes themselves). */
  const f32AsNeeded = (s: number) => recs[s].dtype === 'float32' || recs[s].dtype === 'int32';
  const backendCall = (i: number, method: string): Call | null => {
    const e = list[i];
    return e.kind === 'call' && e.target === 'backend' && e.method === method ? e : null;
  };
  /** No call strictly between i and j (other than those already folded) touches any of the slots. */
  const clearBetween = (i: number, j: number, slots: number[]): boolean => {
    for (let k = i + 1; k < j; k++) if (!gone.has(k) && touches[k].some((s) => slots.some((t) => overlap(s, t)))) return false;
    return true;
  };
  /** Whether call k leaves slot s as it was (it may read it). */
  const leaves = (k: number, s: number): boolean => {
    if (gone.has(k) || !touches[k].some((t) => overlap(t, s))) return true;
    const e = list[k];
    if (e.kind !== 'call' || e.target !== 'backend' || !(e.method in WRITES)) return false;
    const w = WRITES[e.method];
    return e.args.every((a, p) => !(isSlot(a) && w.includes(p) && overlap(slotOf(a), s)));
  };

  for (let iL = 0; iL < list.length && fusedFn; iL++) {
    const L = backendCall(iL, 'layerNormBackward');
    if (!L || !isSlot(L.args[5])) continue;
    const [grad, x, mean, rstd, weight, dxArg, dweight, dbias] = L.args.slice(0, 8).map((a) => (isSlot(a) ? slotOf(a) : -1));
    const layout = L.args[8] as LayerNormLayout;
    const n = layout.rows * layout.cols;
    const operands = [grad, x, mean, rstd, weight, dxArg, dweight, dbias].filter((s) => s >= 0);
    if (layout.cols <= 0 || layout.rows <= 0 || !operands.every(f32) || recs[dxArg].numel !== n) continue;
    const reads = [grad, x, mean, rstd, weight].filter((s) => s >= 0);
    const written = [dweight, dbias].filter((s) => s >= 0);

    const goneBefore = gone.size;
    // The residual add: dx is a temporary that only the add reads.
    let dx = dxArg;
    let add: { slot: number; first: boolean } | null = null;
    const users = touchers.get(dxArg) ?? [];
    if (ctx.isTemp(dxArg) && users.length === 2 && users[0] === iL) {
      const iA = users[1];
      const A = backendCall(iA, 'binary');
      if (A && A.args[0] === 'add' && isSlot(A.args[1]) && isSlot(A.args[2]) && isSlot(A.args[3])) {
        const [a, b, out] = [slotOf(A.args[1]), slotOf(A.args[2]), slotOf(A.args[3])];
        const l = A.args[4] as BroadcastLayout;
        const cont = contiguousStrides(l.shape as number[]);
        // Same shape, both read in order: element i of each (broadcasts and transposes are left alone).
        const inOrder = (st: readonly number[]) => st.every((s, d) => s === cont[d] || l.shape[d] === 1);
        const r = a === dxArg ? b : a;
        if (
          (a === dxArg) !== (b === dxArg) && inOrder(l.aStrides) && inOrder(l.bStrides) && l.shape.reduce((p, c) => p * c, 1) === n &&
          recs[r].numel === n && recs[out].numel === n && f32(r) && f32(out) &&
          // The kernel writes `out` while it reads its operands, and reads r while it writes its gradients.
          ![...reads, ...written, r].some((s) => overlap(s, out)) && !written.some((s) => overlap(s, r)) &&
          clearBetween(iL, iA, [r, out])
        ) {
          gone.add(iA);
          dx = out;
          add = { slot: r, first: a === r };
        }
      }
    }

    // Block sums of dx as written, by the reduces that follow while nothing writes dx: of dx
    // itself, or of a slice of it that a strided copy makes for the reduce alone.
    const sums: (BlockSum & { slot: number })[] = [];
    const unchangedUntil = (j: number): boolean => {
      for (let k = iL + 1; k < j; k++) if (!leaves(k, dx)) return false;
      return true;
    };
    /** The reduce at iR of `src` over its rows as a BlockSum of dx (a slice of it at offset, row stride period), or null. */
    const blockSum = (iR: number, src: number, offset: number, period: number | null): (BlockSum & { slot: number }) | null => {
      const R = backendCall(iR, 'reduce');
      if (!R || R.args[0] !== 'sum' || !isSlot(R.args[1]) || slotOf(R.args[1]) !== src || !isSlot(R.args[2])) return null;
      const l = R.args[3] as ReduceLayout;
      const out = slotOf(R.args[2]);
      const sum = { slot: out, offset, period: period ?? l.inner, width: l.inner, count: l.size };
      const rowsOf = (v: number) => v % layout.cols === 0;
      const ok = l.outer === 1 && l.inner > 1 && l.size * l.inner === recs[src].numel && recs[out].numel === l.inner && f32(out) &&
        rowsOf(sum.offset) && rowsOf(sum.period) && rowsOf(sum.width) && sum.width <= sum.period && (sum.count === 0 || sum.offset + (sum.count - 1) * sum.period + sum.width <= n) &&
        ![...reads, ...written, dx, ...(add ? [add.slot] : []), ...sums.map((x) => x.slot)].some((x) => overlap(x, out)) &&
        clearBetween(iL, iR, [out]) && unchangedUntil(iR);
      return ok ? sum : null;
    };
    for (const k of touchers.get(dx) ?? []) {
      if (k <= iL || gone.has(k)) continue;
      const direct = blockSum(k, dx, 0, null);
      if (direct) {
        gone.add(k);
        sums.push(direct);
        continue;
      }
      const slice = sliceOf(k);
      if (slice) {
        gone.add(k);
        gone.add(slice.iR);
        sums.push(slice.sum);
        continue;
      }
      // A later reduce must see the dx the kernel summed: stop at the first call that may write it.
      if (!leaves(k, dx)) break;
    }

    /**
     * A strided copy at k of rows of dx ([S, W] at offset O, row stride P: the class token of
     * every image) into a temporary that only a reduce over its S rows reads next.
     */
    function sliceOf(k: number): { iR: number; sum: BlockSum & { slot: number } } | null {
      const C = backendCall(k, 'stridedCopy');
      if (!C || !isSlot(C.args[0]) || slotOf(C.args[0]) !== dx || !isSlot(C.args[1])) return null;
      const t = slotOf(C.args[1]);
      const users = touchers.get(t) ?? [];
      if (!ctx.isTemp(t) || users.length !== 2 || users[0] !== k || recs[t].dtype !== 'float32') return null;
      const l = C.args[2] as StridedCopyLayout;
      const dims = l.shape.map((size, d) => ({ size, src: l.srcStrides[d], dst: l.dstStrides[d] })).filter((d) => d.size !== 1);
      // dst written in full, in order; src: rows of contiguous elements.
      let stride = 1;
      for (let d = dims.length - 1; d >= 0; d--) {
        if (dims[d].dst !== stride) return null;
        stride *= dims[d].size;
      }
      if (l.dstOffset !== 0 || stride !== recs[t].numel) return null;
      const [rowsDim, colsDim] = dims.length === 2 ? dims : dims.length === 1 ? [null, dims[0]] : [undefined, undefined];
      if (rowsDim === undefined || colsDim!.src !== 1) return null;
      const R = backendCall(users[1], 'reduce');
      const rl = R?.args[3] as ReduceLayout | undefined;
      // The reduce's rows must be the slice's rows.
      if (!rl || rl.inner !== colsDim!.size) return null;
      const sum = blockSum(users[1], t, l.srcOffset, rowsDim ? rowsDim.src : colsDim!.size);
      return sum && unchangedUntil(k) ? { iR: users[1], sum } : null;
    }
    if (!add && sums.length === 0) continue;

    const fl: LayerNormBackwardFusedLayout = { ...layout, addFirst: add?.first ?? false, sums: sums.map(({ offset, period, width, count }) => ({ offset, period, width, count })) };
    const ref = (s: number) => (s >= 0 ? ({ $s: s } satisfies SlotRef) : null);
    const args = [ref(grad), ref(x), ref(mean), ref(rstd), ref(weight), ref(add?.slot ?? -1), ref(dx), ref(dweight), ref(dbias), ...sums.map((s) => ref(s.slot))];
    type S = Storage;
    const run = (...a: unknown[]): void => {
      fusedFn.call(backend, a[0] as S, a[1] as S, a[2] as S, a[3] as S, a[4] as S | null, a[5] as S | null, a[6] as S, a[7] as S | null, a[8] as S | null, a.slice(9) as S[], fl);
    };
    ctx.noteOutputs(run, [true, dweight >= 0, dbias >= 0, ...sums.map(() => true)]);
    list[iL] = { kind: 'call', target: 'extern', method: 'layerNormBackwardFused', args, fn: run as (...a: unknown[]) => unknown };
    touches[iL] = ctx.touched(list[iL]);
    index();
    fused++;
    replaced += 1 + gone.size - goneBefore;
  }

  // Kernels with one sum over all rows of what they write: crossEntropy's per-row losses (the
  // loss), crossEntropyBackward's gradient (the bias gradient of the logits' layer) and
  // attentionBackward's packed dq, dk, dv (the bias gradient of the q, k, v projection).
  for (let iP = 0; iP < list.length; iP++) {
    const e = list[iP];
    if (e.kind !== 'call' || e.target !== 'backend') continue;
    const rule = SUM_RULES[e.method] as SumRule | undefined;
    if (!rule || !backend[rule.fused] || !e.args.slice(0, rule.slots).every(isSlot)) continue;
    const slots: number[] = e.args.slice(0, rule.slots).map(slotOf);
    const layout = e.args[rule.slots] as never;
    const src = rule.source(slots, layout, recs);
    if (src < 0 || !slots.every(f32AsNeeded)) continue;
    let found: { iR: number; sum: number } | null = null;
    for (const iR of touchers.get(src) ?? []) {
      if (iR <= iP) continue;
      const R = backendCall(iR, 'reduce');
      const rl = R?.args[3] as ReduceLayout | undefined;
      const sum = R && isSlot(R.args[2]) ? slotOf(R.args[2]) : -1;
      if (R && R.args[0] === 'sum' && isSlot(R.args[1]) && slotOf(R.args[1]) === src && rl!.outer === 1 && rule.sums(layout, rl!) &&
        rl!.size * rl!.inner === recs[src].numel && f32(sum) && recs[sum].numel === rl!.inner &&
        !slots.some((x) => overlap(x, sum)) && clearBetween(iP, iR, [sum])) {
        let unchanged = true;
        for (let k = iP + 1; k < iR; k++) if (!leaves(k, src)) unchanged = false;
        if (unchanged) found = { iR, sum };
        break;
      }
      if (!leaves(iR, src)) break;
    }
    if (!found) continue;
    gone.add(found.iR);
    const args = [...rule.args(slots).map((x) => ({ $s: x }) satisfies SlotRef), { $s: found.sum } satisfies SlotRef];
    const fn = backend[rule.fused] as unknown as (...a: unknown[]) => void;
    const run = (...a: unknown[]): void => fn.call(backend, ...a, layout);
    // Whether the summed storage is written in full is the recorded call's fact (trace.ts; one
    // stand-in per slot, as its checks compare storages).
    const stand = new Map<number, { numel: number }>();
    const asStorage = (a: unknown) => (isSlot(a) ? stand.get(a.$s) ?? stand.set(a.$s, { numel: recs[a.$s].numel }).get(a.$s) : a);
    const writesAll = writesAllAt(e.method, e.args.map(asStorage)).includes(e.args.findIndex((a) => isSlot(a) && a.$s === src));
    ctx.noteOutputs(run, [writesAll, true]);
    list[iP] = { kind: 'call', target: 'extern', method: rule.fused, args, fn: run as (...a: unknown[]) => unknown };
    touches[iP] = ctx.touched(list[iP]);
    index();
    fused++;
    replaced += 2;
  }
  return { events: list.filter((_, i) => !gone.has(i)), fused, replaced };
}
