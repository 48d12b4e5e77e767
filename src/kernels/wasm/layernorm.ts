/**
 * Layer normalization forward and backward on the wasm backend, in f32x4, one row at a time.
 *
 * layer_norm<sfx>(x, weight, bias, out, mean, rstd, rows, cols, eps: f64): the row's mean (summed
 * about the row's first element) and its variance about that mean (two passes: E[x^2] - mean^2
 * cancels) are f32x4 sums; the mean is kept as the float32 pair hi + lo (the Backend contract)
 * and the normalized row ((x - hi) - lo) * rstd * weight + bias is f32x4 with the pair and rstd
 * that the backward pass reads back. One export per combination of
 * weight and bias (sfx '', '_w', '_b', '_wb'), so the inner loop never tests for them.
 *
 * layer_norm_backward<sfx>(grad, x, mean, rstd, weight, dx, dweight, dbias, rows, cols): one pass
 * per row sums gw = grad * weight and gw * xhat (f32x4) and adds grad * xhat and grad into
 * dweight and dbias (zeroed first), a second writes dx unless dx is 0. dweight and dbias are
 * always written: the caller passes scratch for the ones it does not want.
 *
 * A row whose length is not a multiple of 4 ends with the window of its last four elements, the
 * lanes already done masked off (every storage lies at address 256 or above, so a short row's
 * window may reach back before it).
 */
import { f32, f32x4, f64, f64x2, i32, memory, v128, ValType, type Expr, type FuncBuilder, type Local, type ModuleBuilder, type Operand } from './emit.js';
import { elementwise, lanes4, tailMask } from './module.js';

const { i32: I32, f64: F64, v128: V128 } = ValType;

/** The export of the forward kernel for this weight / bias combination. */
export function layerNormExport(weight: boolean, bias: boolean): string {
  return `layer_norm${weight || bias ? '_' : ''}${weight ? 'w' : ''}${bias ? 'b' : ''}`;
}
export function layerNormBackwardExport(weight: boolean): string {
  return `layer_norm_backward${weight ? '_w' : ''}`;
}

/** The address of float32 element i of the storage at p. */
export const at = (p: Operand, i: Operand) => i32.add(p, i32.shl(i, 2));

/**
 * Walks a row of n floats four at a time: step(i, null) for each full window at element i, then,
 * for a tail of 1-3, step(n - 4, mask) with mask selecting the tail's lanes.
 */
export function rowWindows(f: FuncBuilder, n: Operand, step: (i: Local, mask: Expr | null) => void): void {
  const i = f.local(I32);
  const rem = f.local(I32);
  f.for(i, 0, i32.sub(n, 3), 4, () => step(i, null));
  f.set(rem, i32.sub(n, i));
  f.if(rem, () => {
    f.set(i, i32.sub(n, 4));
    step(i, tailMask(rem));
  });
}

/**
 * The sum over a row of the f32x4 values that `value(i)` leaves in a local (statements allowed:
 * it may set locals of its own), masked in the tail window.
 */
export function rowSum(f: FuncBuilder, n: Operand, value: (i: Local) => Operand): Expr {
  const acc = f.local(V128);
  f.set(acc, f32x4.splat(f32.const(0)));
  rowWindows(f, n, (i, mask) => f.set(acc, f32x4.add(acc, mask ? v128.and(value(i), mask) : value(i))));
  return lanes4(acc, f32.add);
}

function emitForward(mb: ModuleBuilder, weight: boolean, bias: boolean): void {
  mb.func(layerNormExport(weight, bias), [I32, I32, I32, I32, I32, I32, I32, I32, F64], [], (f, x, w, b, out, mean, rstd, rows, cols, eps) => {
    const r = f.local(I32);
    const n = f.local(F64);
    const x0 = f.local(V128);
    const hi = f.local(V128);
    const lo = f.local(V128);
    const rs = f.local(V128);
    const d = f.local(V128);
    const mu64 = f.local(F64);
    f.set(n, f64.convertI32S(cols));
    f.for(r, 0, rows, 1, () => {
      // The sum runs about the row's first element: offset rows (all near 1000, say) would
      // otherwise lose the low bits of every term to the float32 running sum.
      f.set(x0, v128.load32Splat(x));
      const shiftedSum = rowSum(f, cols, (i) => f32x4.sub(v128.load(at(x, i)), x0));
      f.set(mu64, f64.add(f64.promoteF32(f32x4.extractLane(x0, 0)), f64.div(f64.promoteF32(shiftedSum), n)));
      // The mean as hi + lo (the Backend contract): x - hi - lo keeps the deviations' low bits.
      f.set(hi, f32x4.splat(f32.demoteF64(mu64)));
      f.set(lo, f32x4.splat(f32.demoteF64(f64.sub(mu64, f64.promoteF32(f32x4.extractLane(hi, 0))))));
      const dev = (xv: Operand) => f32x4.sub(f32x4.sub(xv, hi), lo);
      // The squares of the float32 deviations, as the output uses them; a NaN or an infinity in
      // the row makes the sum NaN (inf - inf), and so the whole row, as PyTorch.
      const sumSq = rowSum(f, cols, (i) => (g) => {
        g.set(d, dev(v128.load(at(x, i))));
        f32x4.mul(d, d)(g);
      });
      f.set(rs, f32x4.splat(f32.demoteF64(f64.div(1, f64.sqrt(f64.add(f64.div(f64.promoteF32(sumSq), n), eps))))));
      f.exec(f32.store(mean, f32x4.extractLane(hi, 0)), f32.store(mean, f32x4.extractLane(lo, 0), 4), f32.store(rstd, f32x4.extractLane(rs, 0)));
      const inputs = [{ ptr: x }, ...(weight ? [{ ptr: w }] : []), ...(bias ? [{ ptr: b }] : [])];
      elementwise(f, cols, inputs, { ptr: out }, ([xv, ...p]) => {
        let y: Operand = f32x4.mul(dev(xv), rs);
        if (weight) y = f32x4.mul(y, p[0]);
        if (bias) y = f32x4.add(y, p[p.length - 1]);
        return y;
      });
      f.inc(x, i32.shl(cols, 2));
      f.inc(out, i32.shl(cols, 2));
      f.inc(mean, 8);
      f.inc(rstd, 4);
    });
  });
}

/**
 * What a captured step folds into the backward kernel (src/kernels/wasm/lnfused.ts): a residual
 * add into dx (`addFirst`: the residual is the left operand) and `sums` block sums of dx as
 * written (Backend's BlockSum). Each adds parameters after the plain kernel's: the residual's
 * address, then per sum its output, a float64 scratch row of `width` doubles, and offset,
 * period, width and count (in elements). Without it the plain kernel.
 */
export interface LayerNormBackwardExtras {
  add: boolean;
  addFirst: boolean;
  sums: number;
}

export function emitBackward(mb: ModuleBuilder, weight: boolean, name = layerNormBackwardExport(weight), extras?: LayerNormBackwardExtras): void {
  const nExtra = extras ? (extras.add ? 1 : 0) + 6 * extras.sums : 0;
  const params = Array<ValType>(10 + nExtra).fill(I32);
  mb.func(name, params, [], (f, g, x, mean, rstd, w, dx, dw, db, rows, cols, ...more) => {
    const residual = extras?.add ? more.shift()! : null;
    const sums = Array.from({ length: extras?.sums ?? 0 }, () => {
      const [out, scratch, offset, period, width, count] = more.splice(0, 6);
      return { out, scratch, offset, period, width, count, q: f.local(I32), pos: f.local(I32) };
    });
    // Each sum's q is the element of dx row r relative to its offset, pos = q mod period (kept
    // by steps of cols, no division per row): row r adds into the doubles at pos when
    // 0 <= q < count * period and pos < width.
    for (const s of sums) {
      f.exec(memory.fill(s.scratch, 0, i32.shl(s.width, 3)));
      f.set(s.q, i32.sub(0, s.offset));
      f.set(s.pos, 0);
      f.set(s.count, i32.mul(s.count, s.period));
    }
    const r = f.local(I32);
    const hi = f.local(V128);
    const lo = f.local(V128);
    const rs = f.local(V128);
    const sumGw = f.local(V128);
    const sumGwXhat = f.local(V128);
    const gv = f.local(V128);
    const xhat = f.local(V128);
    const gw = f.local(V128);
    const acc = f.local(V128);
    const c1 = f.local(V128);
    const c2 = f.local(V128);
    const n = f.local(ValType.f32);
    f.set(n, f32.convertI32S(cols));
    f.exec(memory.fill(dw, 0, i32.shl(cols, 2)), memory.fill(db, 0, i32.shl(cols, 2)));
    /** dst[i..i+4) += v, only in the lanes of `mask` when there is one (the others keep their bits). */
    const accumulate = (dst: Local, i: Local, v: Operand, mask: Expr | null) => {
      f.set(acc, v128.load(at(dst, i)));
      const sum = f32x4.add(acc, v);
      f.exec(v128.store(at(dst, i), mask ? v128.bitselect(sum, acc, mask) : sum));
    };
    const masked = (v: Operand, mask: Expr | null) => (mask ? v128.and(v, mask) : v);
    f.for(r, 0, rows, 1, () => {
      f.set(hi, f32x4.splat(f32.load(mean)));
      f.set(lo, f32x4.splat(f32.load(mean, 4)));
      f.set(rs, f32x4.splat(f32.load(rstd)));
      const xhatOf = (xv: Operand) => f32x4.mul(f32x4.sub(f32x4.sub(xv, hi), lo), rs);
      f.set(sumGw, f32x4.splat(f32.const(0)));
      f.set(sumGwXhat, f32x4.splat(f32.const(0)));
      rowWindows(f, cols, (i, mask) => {
        f.set(gv, v128.load(at(g, i)));
        f.set(xhat, xhatOf(v128.load(at(x, i))));
        f.set(gw, weight ? f32x4.mul(gv, v128.load(at(w, i))) : gv);
        f.set(sumGw, f32x4.add(sumGw, masked(gw, mask)));
        f.set(sumGwXhat, f32x4.add(sumGwXhat, masked(f32x4.mul(gw, xhat), mask)));
        accumulate(dw, i, f32x4.mul(gv, xhat), mask);
        accumulate(db, i, gv, mask);
      });
      f.if(dx, () => {
        // dx = rs * (gw - mean(gw) - xhat * mean(gw * xhat)) = rs * gw - c1 - xhat * c2.
        f.set(c1, f32x4.splat(f32.div(f32.mul(f32x4.extractLane(rs, 0), lanes4(sumGw, f32.add)), n)));
        f.set(c2, f32x4.splat(f32.div(f32.mul(f32x4.extractLane(rs, 0), lanes4(sumGwXhat, f32.add)), n)));
        const inputs = [{ ptr: g }, { ptr: x }, ...(weight ? [{ ptr: w }] : []), ...(residual ? [{ ptr: residual }] : [])];
        elementwise(f, cols, inputs, { ptr: dx }, ([gi, xi, ...rest]) => {
          const gwi = weight ? f32x4.mul(gi, rest[0]) : gi;
          const v = f32x4.sub(f32x4.sub(f32x4.mul(rs, gwi), c1), f32x4.mul(xhatOf(xi), c2));
          if (!residual) return v;
          // The float32 add of the binary add this replaces, its operands in their order.
          const r = rest[rest.length - 1];
          return extras!.addFirst ? f32x4.add(r, v) : f32x4.add(v, r);
        });
        for (const s of sums) {
          // (count now holds count * period: the end of the blocks.)
          f.if(i32.and(i32.geS(s.q, 0), i32.ltS(s.q, s.count)), () => {
            f.if(i32.ltU(s.pos, s.width), () => columnSums(f, dx, i32.add(s.scratch, i32.shl(s.pos, 3)), cols));
            f.inc(s.pos, cols);
            f.if(i32.eq(s.pos, s.period), () => f.set(s.pos, 0));
          });
          f.inc(s.q, cols);
        }
        f.inc(dx, i32.shl(cols, 2));
        if (residual) f.inc(residual, i32.shl(cols, 2));
      });
      f.inc(g, i32.shl(cols, 2));
      f.inc(x, i32.shl(cols, 2));
      f.inc(mean, 8);
      f.inc(rstd, 4);
    });
    for (const s of sums) {
      const i = f.local(I32);
      f.for(i, 0, s.width, 1, () => f.exec(f32.store(at(s.out, i), f32.demoteF64(f64.load(i32.add(s.scratch, i32.shl(i, 3)))))));
    }
  });
}

const HIGH_HALF = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];

/**
 * acc[c] += dx[c] for the row of n floats at dx, into the doubles at acc: float32 values added in
 * float64, as reduce_cols_sum adds each row (module.ts), so that the sums keep its bits. (Also
 * the bias-gradient sums of cross_entropy_backward_sums.)
 */
export function columnSums(f: FuncBuilder, dx: Local, accAt: Operand, n: Local): void {
  const c = f.local(I32);
  const v = f.local(V128);
  const a = f.local(I32);
  const acc = f.local(I32);
  f.set(acc, accAt);
  f.for(c, 0, i32.sub(n, 3), 4, () => {
    f.set(v, v128.load(at(dx, c)));
    f.set(a, i32.add(acc, i32.shl(c, 3)));
    f.exec(v128.store(a, f64x2.add(v128.load(a), f64x2.promoteLowF32x4(v))));
    f.exec(v128.store(a, f64x2.add(v128.load(a, 16), f64x2.promoteLowF32x4(v128.shuffle(v, v, HIGH_HALF))), 16));
  });
  f.for(c, c, n, 1, () => {
    f.set(a, i32.add(acc, i32.shl(c, 3)));
    f.exec(f64.store(a, f64.add(f64.load(a), f64.promoteF32(f32.load(at(dx, c))))));
  });
}

export function emitLayerNormKernels(mb: ModuleBuilder): void {
  for (const weight of [false, true]) {
    for (const bias of [false, true]) emitForward(mb, weight, bias);
    emitBackward(mb, weight);
  }
}
