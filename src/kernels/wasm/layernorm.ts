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
import { f32, f32x4, f64, i32, memory, v128, ValType, type Expr, type FuncBuilder, type Local, type ModuleBuilder, type Operand } from './emit.js';
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

function emitBackward(mb: ModuleBuilder, weight: boolean): void {
  const params = [I32, I32, I32, I32, I32, I32, I32, I32, I32, I32];
  mb.func(layerNormBackwardExport(weight), params, [], (f, g, x, mean, rstd, w, dx, dw, db, rows, cols) => {
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
        const inputs = [{ ptr: g }, { ptr: x }, ...(weight ? [{ ptr: w }] : [])];
        elementwise(f, cols, inputs, { ptr: dx }, ([gi, xi, wi]) => {
          const gwi = weight ? f32x4.mul(gi, wi) : gi;
          return f32x4.sub(f32x4.sub(f32x4.mul(rs, gwi), c1), f32x4.mul(xhatOf(xi), c2));
        });
        f.inc(dx, i32.shl(cols, 2));
      });
      f.inc(g, i32.shl(cols, 2));
      f.inc(x, i32.shl(cols, 2));
      f.inc(mean, 8);
      f.inc(rstd, 4);
    });
  });
}

export function emitLayerNormKernels(mb: ModuleBuilder): void {
  for (const weight of [false, true]) {
    for (const bias of [false, true]) emitForward(mb, weight, bias);
    emitBackward(mb, weight);
  }
}
