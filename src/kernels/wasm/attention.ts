/**
 * Scaled dot-product attention (Backend.attention / attentionBackward) on the wasm backend, for
 * float32, with every head read in place through its row stride (the heads of a packed
 * [n, l, 3 * heads * d] projection need no permute and no slicing). The forward pass is two
 * calls: attn_scores writes softmax(scale * q . k) into the probabilities (falling back to the
 * softmax kernel for rows with non-finite scores), and attn_pv writes out = P V. The backward
 * pass is one call (attn_backward).
 *
 * Sums over keys run four keys at a time against a head's keys or values packed transposed
 * ([d, s] in scratch); sums over the head dim run in f32x4 (d / 4 vectors, then the last d % 4
 * features one at a time). Pointers are bytes; q, k and v point at row 0 of their first head
 * (the layout's offsets already added) and step by their row strides (bytes).
 */
import { f32, f32x4, f64, i32, i32x4, memory, select, v128, ValType, type FuncBuilder, type Local, type ModuleBuilder, type Operand } from './emit.js';
import { columnSums } from './layernorm.js';
import { elementwise, expV, lanes4 } from './module.js';
import type { AttentionLayout } from '../backend.js';

const { i32: I32, f32: F32, v128: V128 } = ValType;

/**
 * Emits body(c, vec) for the features of a head: c the byte offset of a group of four features
 * (vec true) while four remain, then of each of the last 1-3 (vec false).
 */
function features(f: FuncBuilder, d: Local, body: (c: Local, vec: boolean) => void): void {
  const [c, end] = f.localsOf(I32, 2);
  f.set(end, i32.shl(d, 2));
  f.set(c, 0);
  f.block((exit) =>
    f.loop((top) => {
      f.brIf(exit, i32.gtS(i32.add(c, 16), end));
      body(c, true);
      f.inc(c, 16);
      f.br(top);
    }),
  );
  f.for(c, c, end, 4, () => body(c, false));
}

/** The address of row `row` (of `rows` per batch) of head h of batch b: base + (b * rows + row) * stride + h * d * 4. */
function rowAt(base: Operand, b: Local, rows: Local, row: Operand, stride: Local, h: Local, d: Local) {
  return i32.add(i32.add(base, i32.mul(i32.add(i32.mul(b, rows), row), stride)), i32.shl(i32.mul(h, d), 2));
}

/**
 * dst[0..d) = sum_j w[j] * row_j[0..d) over the s rows of head h of batch b (`stride` bytes apart
 * from `base`): each group of four features accumulates in a register over all rows, then is
 * stored once; the last d % 4 features likewise one at a time.
 */
function weightedRows(f: FuncBuilder, dst: Local, w: Local, base: Operand, b: Local, s: Local, stride: Local, h: Local, d: Local): void {
  const [j, src, wj] = f.localsOf(I32, 3);
  const acc = f.local(V128);
  const one = f.local(F32);
  features(f, d, (c, vec) => {
    f.set(src, i32.add(rowAt(base, b, s, 0, stride, h, d), c));
    f.set(wj, w);
    if (vec) f.set(acc, f32x4.splat(f32.const(0)));
    else f.set(one, 0);
    f.for(j, 0, s, 1, () => {
      if (vec) f.set(acc, f32x4.add(acc, f32x4.mul(v128.load32Splat(wj), v128.load(src))));
      else f.set(one, f32.add(one, f32.mul(f32.load(wj), f32.load(src))));
      f.inc(src, stride);
      f.inc(wj, 4);
    });
    f.exec(vec ? v128.store(i32.add(dst, c), acc) : f32.store(i32.add(dst, c), one));
  });
}

const SHAPE = [I32, I32, I32, I32, I32]; // n, heads, l, s, d

/**
 * Packs the s rows of head h of batch b (d features each, `stride` bytes apart from `base`) as
 * their transpose [d, s4] at dst (s4 = s rounded up to 4; the padding columns are left alone).
 */
function packTransposed(f: FuncBuilder, dst: Local, base: Operand, b: Local, s: Local, s4: Local, stride: Local, h: Local, d: Local): void {
  const [j, c, src] = f.localsOf(I32, 3);
  f.for(j, 0, s, 1, () => {
    f.set(src, rowAt(base, b, s, j, stride, h, d));
    f.for(c, 0, d, 1, () => f.exec(f32.store(i32.add(dst, i32.shl(i32.add(i32.mul(c, s4), j), 2)), f32.load(i32.add(src, i32.shl(c, 2))))));
  });
}

/**
 * row[j] = sum_c x[c] * t[c, j] for the s4 columns of t [d, s4], four columns at a time:
 * x's features splatted, no horizontal sums. With `scale` (a splat), each sum is multiplied by it
 * on its way to the store: the same float32 product as a pass over the stored row, without one.
 */
function rowTimesTransposed(f: FuncBuilder, row: Local, x: Local, t: Local, d: Local, s4: Local, scale?: Local): void {
  const [j, c, tc, xc, step, d4] = f.localsOf(I32, 6);
  const acc = f.local(V128);
  f.set(step, i32.shl(s4, 2));
  f.set(d4, i32.and(d, -4));
  const term = (offset: number) => {
    f.set(acc, f32x4.add(acc, f32x4.mul(v128.load32Splat(xc, offset), v128.load(tc))));
    f.inc(tc, step);
  };
  f.for(j, 0, s4, 4, () => {
    f.set(acc, f32x4.splat(f32.const(0)));
    f.set(tc, i32.add(t, i32.shl(j, 2)));
    f.set(xc, x);
    // Four features per iteration (the loop's own cost is most of a term's), then the rest.
    f.for(c, 0, d4, 4, () => {
      for (let k = 0; k < 4; k++) term(4 * k);
      f.inc(xc, 16);
    });
    f.for(c, d4, d, 1, () => {
      term(0);
      f.inc(xc, 4);
    });
    f.exec(v128.store(i32.add(row, i32.shl(j, 2)), scale ? f32x4.mul(acc, scale) : acc));
  });
}

/**
 * attn_scores(q, k, probs, n, heads, l, s, d, qRow, kRow, scale, scratch, softmax) -> i32:
 * probs[b, h, i, j] = scale * q_i . k_j, each head's keys packed transposed into scratch first
 * (d * s4 floats, then a row of s4). With `softmax` set, each row is turned into probabilities
 * on the way out (max, exp(x - max) four keys at a time with the padding keys masked out of the
 * sum, times 1 / sum), and the result is 1 if some row's max was not finite (an inf or NaN in q
 * or k): the caller then runs the call again without softmax and the softmax kernel over all
 * rows, whose rules for such rows (NaN rows, as PyTorch) this loop does not repeat.
 */
function emitScores(mb: ModuleBuilder): void {
  mb.func('attn_scores', [I32, I32, I32, ...SHAPE, I32, I32, F32, I32, I32], [I32], (f, q, k, p, n, heads, l, s, d, qRow, kRow, scale, kt, softmax) => {
    const [b, h, i, j, s4, row, qi, bad] = f.localsOf(I32, 8);
    const [sv, mv, acc, e, lanes] = f.localsOf(V128, 5);
    const [mx, inv] = f.localsOf(F32, 2);
    f.set(s4, i32.and(i32.add(s, 3), -4));
    f.set(row, i32.add(kt, i32.shl(i32.mul(d, s4), 2)));
    f.set(sv, f32x4.splat(scale));
    f.set(bad, 0);
    f.set(lanes, v128.i32x4([0, 1, 2, 3]));
    // The padding columns hold zeros: their scores are never stored, but stay finite.
    f.exec(memory.fill(kt, 0, i32.shl(i32.mul(d, s4), 2)));
    /** The lanes of the four keys from j that are real keys (j + lane < s). */
    const real = () => i32x4.gtS(i32x4.splat(s), i32x4.add(i32x4.splat(j), lanes));
    f.for(b, 0, n, 1, () =>
      f.for(h, 0, heads, 1, () => {
        packTransposed(f, kt, k, b, s, s4, kRow, h, d);
        f.for(i, 0, l, 1, () => {
          f.set(qi, rowAt(q, b, l, i, qRow, h, d));
          // Scaled after the sum, as the composition's mul after its matmul.
          rowTimesTransposed(f, row, qi, kt, d, s4, sv);
          f.if(
            softmax,
            () => {
              f.set(mv, f32x4.splat(f32.const(-Infinity)));
              f.for(j, 0, s4, 4, () => f.set(mv, f32x4.max(mv, v128.bitselect(v128.load(i32.add(row, i32.shl(j, 2))), f32x4.splat(f32.const(-Infinity)), real()))));
              f.set(mx, lanes4(mv, f32.max));
              f.if(
                f32.lt(f32.abs(mx), Infinity),
                () => {
                  f.set(mv, f32x4.splat(mx));
                  f.set(acc, f32x4.splat(f32.const(0)));
                  f.for(j, 0, s4, 4, () => {
                    f.set(e, v128.and(expV(f, f32x4.sub(v128.load(i32.add(row, i32.shl(j, 2))), mv)), real()));
                    f.exec(v128.store(i32.add(row, i32.shl(j, 2)), e));
                    f.set(acc, f32x4.add(acc, e));
                  });
                  f.set(inv, f32.div(1, lanes4(acc, f32.add)));
                  f.set(mv, f32x4.splat(inv));
                },
                () => f.set(bad, 1),
              );
              elementwise(f, s, [{ ptr: row }], { ptr: p }, ([x]) => f32x4.mul(x, mv));
            },
            () => elementwise(f, s, [{ ptr: row }], { ptr: p }, ([x]) => x),
          );
          f.inc(p, i32.shl(s, 2));
        });
      }),
    );
    f.push(bad);
  });
}

/** attn_pv(probs, v, out, n, heads, l, s, d, vRow): out[b, i, h*d:(h+1)*d] = sum_j P[b, h, i, j] v_j (out contiguous [n, l, heads * d]). */
function emitPv(mb: ModuleBuilder): void {
  mb.func('attn_pv', [I32, I32, I32, ...SHAPE, I32], [], (f, p, v, out, n, heads, l, s, d, vRow) => {
    const [b, h, i, o, eRow] = f.localsOf(I32, 5);
    f.set(eRow, i32.shl(i32.mul(heads, d), 2));
    f.for(b, 0, n, 1, () =>
      f.for(h, 0, heads, 1, () =>
        f.for(i, 0, l, 1, () => {
          f.set(o, rowAt(out, b, l, i, eRow, h, d));
          weightedRows(f, o, p, v, b, s, vRow, h, d);
          f.inc(p, i32.shl(s, 2));
        }),
      ),
    );
  });
}

/**
 * dst rows j < s (`dstStride` bytes apart, head h of batch b) get dst_j[c] = sum_i a_i[c] * m[i, j]
 * over the l rows a_i (`aStride` bytes apart from aBase) and the scratch matrix m [l, s4]: four
 * features and four keys at a time in registers (the m load shared by the four features), then
 * stored lane by lane; the last d % 4 features one at a time the same way.
 */
function transposedProduct(f: FuncBuilder, dstBase: Operand, dstStride: Local, aBase: Operand, aStride: Local, m: Local, b: Local, l: Local, s: Local, s4: Local, h: Local, d: Local): void {
  const [j, c, i, ap, mp, width, rowStep] = f.localsOf(I32, 7);
  const acc = f.localsOf(V128, 4);
  const mv = f.local(V128);
  f.set(rowStep, i32.shl(s4, 2));
  f.for(j, 0, s4, 4, () => {
    f.set(c, 0);
    f.block((done) =>
      f.loop((next) => {
        f.brIf(done, i32.geS(c, d));
        // Four features while four remain, else one.
        f.set(width, select(4, 1, i32.leS(i32.add(c, 4), d)));
        for (const a of acc) f.set(a, f32x4.splat(f32.const(0)));
        f.set(ap, i32.add(rowAt(aBase, b, l, 0, aStride, h, d), i32.shl(c, 2)));
        f.set(mp, i32.add(m, i32.shl(j, 2)));
        f.for(i, 0, l, 1, () => {
          f.set(mv, v128.load(mp));
          f.if(i32.eq(width, 4), () => acc.forEach((a, k) => f.set(a, f32x4.add(a, f32x4.mul(v128.load32Splat(ap, 4 * k), mv)))), () => f.set(acc[0], f32x4.add(acc[0], f32x4.mul(v128.load32Splat(ap), mv))));
          f.inc(ap, aStride);
          f.inc(mp, rowStep);
        });
        for (let lane = 0; lane < 4; lane++) {
          f.if(i32.ltS(i32.add(j, lane), s), () => {
            f.set(ap, i32.add(rowAt(dstBase, b, s, i32.add(j, lane), dstStride, h, d), i32.shl(c, 2)));
            f.exec(v128.store32Lane(ap, acc[0], lane));
            f.if(i32.eq(width, 4), () => acc.slice(1).forEach((a, k) => f.exec(v128.store32Lane(ap, a, lane, 4 * (k + 1)))));
          });
        }
        f.inc(c, width);
        f.br(next);
      }),
    );
  });
}

/**
 * attn_backward(g, q, k, v, probs, dq, dk, dv, n, heads, l, s, d, qRow, kRow, vRow, scale, scratch):
 * per batch and head, with the head's values packed transposed (vt [d, s4]) and for each query
 * row i: dP = dO_i V^T and t = sum_j P_ij dP_j (four keys at a time), dS_i = scale * P_i (dP - t)
 * and dq_i = sum_j dS_ij k_j; then dk = dS^T Q and dv = P^T dO (transposedProduct) over the rows
 * of dS and P kept in scratch. dq, dk and dv have the row strides of q, k and v; g is contiguous
 * [n, l, heads * d]. Scratch: vt (d * s4 floats), then pm and dsm ([l, s4] each: P and dS, zero
 * past s).
 */
function emitBackward(mb: ModuleBuilder, withSums = false): void {
  // attn_backward_sums(..., x, width, sums, acc): dq, dk and dv are rows of x ([n * l, width],
  // l = s); once a batch's heads are done its l rows of x are final and are added into the
  // float64 row acc (as reduce_cols_sum adds rows), and sums = acc at the end: the bias gradient
  // of the packed projection (a captured step's, src/compile/fuse-reduce.ts).
  const params = [I32, I32, I32, I32, I32, I32, I32, I32, ...SHAPE, I32, I32, I32, F32, I32, ...(withSums ? [I32, I32, I32, I32] : [])];
  mb.func(withSums ? 'attn_backward_sums' : 'attn_backward', params, [], (f, g, q, k, v, p, dq, dk, dv, n, heads, l, s, d, qRow, kRow, vRow, scale, vt, x, width, sums, sumAcc) => {
    const [b, h, i, j, s4, pm, dsm, prow, ds, gi, qi, at, eRow, x4] = f.localsOf(I32, 14);
    const xRow = withSums ? f.local(I32) : null;
    if (withSums) {
      f.exec(memory.fill(sumAcc, 0, i32.shl(width, 3)));
      f.set(xRow!, x);
    }
    const t = f.local(F32);
    const [acc, sv, tv] = f.localsOf(V128, 3);
    f.set(s4, i32.and(i32.add(s, 3), -4));
    f.set(pm, i32.add(vt, i32.shl(i32.mul(d, s4), 2)));
    f.set(dsm, i32.add(pm, i32.shl(i32.mul(l, s4), 2)));
    f.set(eRow, i32.shl(i32.mul(heads, d), 2));
    f.set(sv, f32x4.splat(scale));
    // Zero padding columns (values and probabilities) keep the padded keys out of every sum;
    // only columns below s are written after this.
    f.exec(memory.fill(vt, 0, i32.shl(i32.mul(i32.add(d, l), s4), 2)));
    f.for(b, 0, n, 1, () => {
      f.for(h, 0, heads, 1, () => {
        packTransposed(f, vt, v, b, s, s4, vRow, h, d);
        f.for(i, 0, l, 1, () => {
          f.set(gi, rowAt(g, b, l, i, eRow, h, d));
          f.set(prow, i32.add(pm, i32.shl(i32.mul(i, s4), 2)));
          f.set(ds, i32.add(dsm, i32.shl(i32.mul(i, s4), 2)));
          f.exec(memory.copy(prow, i32.add(p, i32.shl(i32.mul(i32.add(i32.mul(i32.add(i32.mul(b, heads), h), l), i), s), 2)), i32.shl(s, 2)));
          rowTimesTransposed(f, ds, gi, vt, d, s4);
          f.set(acc, f32x4.splat(f32.const(0)));
          f.for(j, 0, s4, 4, () => f.set(acc, f32x4.add(acc, f32x4.mul(v128.load(i32.add(prow, i32.shl(j, 2))), v128.load(i32.add(ds, i32.shl(j, 2)))))));
          f.set(t, lanes4(acc, f32.add));
          f.set(tv, f32x4.splat(t));
          f.for(j, 0, s4, 4, () => {
            f.set(x4, i32.shl(j, 2));
            f.exec(v128.store(i32.add(ds, x4), f32x4.mul(f32x4.mul(v128.load(i32.add(prow, x4)), f32x4.sub(v128.load(i32.add(ds, x4)), tv)), sv)));
          });
          f.set(at, rowAt(dq, b, l, i, qRow, h, d));
          weightedRows(f, at, ds, k, b, s, kRow, h, d);
        });
        transposedProduct(f, dk, kRow, q, qRow, dsm, b, l, s, s4, h, d);
        transposedProduct(f, dv, vRow, g, eRow, pm, b, l, s, s4, h, d);
      });
      if (withSums) {
        f.for(i, 0, l, 1, () => {
          columnSums(f, xRow!, sumAcc, width);
          f.inc(xRow!, i32.shl(width, 2));
        });
      }
    });
    if (withSums) f.for(i, 0, width, 1, () => f.exec(f32.store(i32.add(sums, i32.shl(i, 2)), f32.demoteF64(f64.load(i32.add(sumAcc, i32.shl(i, 3)))))));
  });
}

export function emitAttentionKernels(mb: ModuleBuilder): void {
  emitScores(mb);
  emitPv(mb);
  emitBackward(mb);
  emitBackward(mb, true);
}

/** What the wasm backend lends the attention kernels: its exports and memory helpers. */
export interface AttentionHost {
  exports: Record<string, (...args: number[]) => unknown>;
  scratch(bytes: number): number;
}

/** The byte address of an operand's first element and its row stride in bytes. */
const operand = (ptr: number, o: AttentionLayout['q']) => [ptr + o.offset * 4, o.row * 4];

/** Scratch bytes of one attn_scores call (a head's keys transposed, then a row of scores). */
export const attentionScratchBytes = (g: AttentionLayout): number => 4 * (g.d + 1) * ((g.s + 3) & ~3);

/**
 * The arguments of attn_scores (softmax on, scratch at `scratch`) and of attn_pv for the batches
 * [b0, b1) of g: the kernels index from their first batch, so a range is its operands' addresses
 * moved on by b0 batches (q rows b * l + i, k and v rows b * s + j, probs [n, heads, l, s], out
 * [n, l, heads * d]); a batch's results depend on nothing else, so any split has the same bits.
 */
export function attentionForwardArgs(q: number, k: number, v: number, out: number, probs: number, g: AttentionLayout, b0: number, b1: number, scratch: number): [number[], number[]] {
  const { heads, l, s, d, scale } = g;
  const [qp, qRow] = operand(q, g.q);
  const [kp, kRow] = operand(k, g.k);
  const [vp, vRow] = operand(v, g.v);
  const pb = probs + 4 * b0 * heads * l * s;
  const n = b1 - b0;
  return [
    [qp + b0 * l * qRow, kp + b0 * s * kRow, pb, n, heads, l, s, d, qRow, kRow, scale, scratch, 1],
    [pb, vp + b0 * s * vRow, out + 4 * b0 * l * heads * d, n, heads, l, s, d, vRow],
  ];
}

export function attentionWasm(host: AttentionHost, q: number, k: number, v: number, out: number, probs: number, g: AttentionLayout): void {
  const x = host.exports;
  const [scores, pv] = attentionForwardArgs(q, k, v, out, probs, g, 0, g.n, host.scratch(attentionScratchBytes(g)));
  if (x.attn_scores(...scores)) {
    // A row with an infinite or NaN score: the softmax kernel's rules for it.
    x.attn_scores(...scores.slice(0, -1), 0);
    x.softmax(probs, probs, g.n * g.heads * g.l, g.s, 0);
  }
  x.attn_pv(...pv);
}

/**
 * attn_backward's arguments before its scratch for the batches [b0, b1) of g (addresses moved on
 * by b0 batches, as attentionForwardArgs'), and the scratch's bytes.
 */
export function attentionBackwardArgs(grad: number, q: number, k: number, v: number, probs: number, dq: number, dk: number, dv: number, g: AttentionLayout, b0 = 0, b1 = g.n): [number[], number] {
  const { heads, l, s, d, scale } = g;
  const [qp, qRow] = operand(q, g.q);
  const [kp, kRow] = operand(k, g.k);
  const [vp, vRow] = operand(v, g.v);
  // The gradients have their inputs' layouts.
  const [dqp, dkp, dvp] = [operand(dq, g.q)[0], operand(dk, g.k)[0], operand(dv, g.v)[0]];
  const [qo, ko] = [b0 * l * qRow, b0 * s * kRow];
  const vo = b0 * s * vRow;
  const s4 = (s + 3) & ~3;
  return [
    [grad + 4 * b0 * l * heads * d, qp + qo, kp + ko, vp + vo, probs + 4 * b0 * heads * l * s, dqp + qo, dkp + ko, dvp + vo, b1 - b0, heads, l, s, d, qRow, kRow, vRow, scale],
    4 * (d + 2 * l) * s4,
  ];
}

export function attentionBackwardWasm(host: AttentionHost, grad: number, q: number, k: number, v: number, probs: number, dq: number, dk: number, dv: number, g: AttentionLayout): void {
  const [args, work] = attentionBackwardArgs(grad, q, k, v, probs, dq, dk, dv, g);
  host.exports.attn_backward(...args, host.scratch(work));
}

/**
 * attentionBackward into one packed storage x (Backend.attentionBackwardWithSums) and the column
 * sums of x (`width` floats at `sums`); the caller has checked the layout.
 */
export function attentionBackwardWithSumsWasm(host: AttentionHost, grad: number, q: number, k: number, v: number, probs: number, x: number, sums: number, width: number, g: AttentionLayout): void {
  const [args, bytes] = attentionBackwardArgs(grad, q, k, v, probs, x, x, x, g);
  // The kernel's scratch, then the sums' float64 row (16-byte aligned).
  const work = Math.ceil(bytes / 16) * 16;
  const scratch = host.scratch(work + 8 * width);
  host.exports.attn_backward_sums(...args, scratch, x, width, sums, scratch + work);
}
