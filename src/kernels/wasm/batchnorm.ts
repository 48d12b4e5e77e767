/**
 * Batch normalization forward (train and eval) and backward on the wasm backend, in f32x4, one
 * channel at a time: a channel of x [n, c, hw] is n rows of hw contiguous floats, c * hw apart.
 * Each row is summed in f32x4 (rowSum4: four accumulators, tail windows masked) and the rows'
 * sums are added in float64, so a channel of many rows loses no more than a row does.
 *
 * batch_norm(x, weight, bias, out, mean, var, rstd, n, c, hw, epsLo, epsHi, count): the channel's
 * mean (summed about its first element, kept as the float32 pair hi + lo of the Backend contract),
 * its biased variance about that mean (a second pass: E[x^2] - mean^2 cancels), rstd, and
 * out = ((x - hi) - lo) * k + b with k = rstd * weight and b = bias folded per channel.
 * batch_norm_eval(x, runningMean, runningVar, weight, bias, out, n, c, hw, epsLo, epsHi, count):
 * the same affine pass with hi = runningMean, lo = 0, rstd = 1 / sqrt(runningVar + eps).
 * weight or bias 0: absent (1 and 0), tested once per channel, not per element.
 * eps is a float64 passed as its two 32-bit halves (epsArgs): the thread pool's calls carry i32
 * arguments only. Both run for the first `count` channels at the pointers given, as the backward.
 *
 * batch_norm_backward(grad, x, mean, rstd, weight, dx, dweight, dbias, n, c, hw, count): one pass
 * per channel sums grad and grad * xhat (dbias and dweight, each written unless its pointer is 0),
 * a second writes dx = k * grad - k * mean(grad) - xhat * k * mean(grad * xhat) unless dx is 0;
 * for the first `count` channels at the pointers given (rows still c * hw apart), so that threads
 * can take ranges of channels (index.ts batchNormBackward).
 */
import { f32, f32x4, f64, f64x2, i32, i32x4, v128, ValType, type Expr, type FuncBuilder, type Local, type ModuleBuilder, type Operand } from './emit.js';
import { elementwise, lanes4, tailMask } from './module.js';
import { at } from './layernorm.js';

const { i32: I32, f32: F32, f64: F64, v128: V128 } = ValType;

interface ChannelWalk {
  /** The channel's first row (element ch * hw of the storage), for each storage walked. */
  rows: { base: Local; row: Local }[];
  /** Runs body once per row i of the channel with each `row` local at that row's address. */
  eachRow: (body: () => void) => void;
}

/**
 * Loops over the first `count` (default c) channels: per channel, `body(ch, walk)`; walk.eachRow
 * visits its n rows of every storage in `bases` (a row is hw floats, rows are c * hw apart).
 */
function forChannels(f: FuncBuilder, bases: Local[], n: Local, c: Local, hw: Local, body: (ch: Local, walk: ChannelWalk) => void, count: Local = c): void {
  const ch = f.local(I32);
  const i = f.local(I32);
  const rows = bases.map((base) => ({ base, row: f.local(I32) }));
  const eachRow = (rowBody: () => void) => {
    for (const r of rows) f.set(r.row, at(r.base, i32.mul(ch, hw)));
    f.for(i, 0, n, 1, () => {
      rowBody();
      for (const r of rows) f.inc(r.row, i32.shl(i32.mul(c, hw), 2));
    });
  };
  f.for(ch, 0, count, 1, () => body(ch, { rows, eachRow }));
}

/** The f32x4 value of the window at element i of a row (statements allowed: it may set locals). */
type WindowValue = (i: Operand) => Operand;

/**
 * The sum over a row of n floats of `value(i)` for its windows: four f32x4 accumulators, the
 * windows of each 16 floats one apiece (four independent chains of additions, where one
 * accumulator waits on each add's latency: measured on one thread, the forward and backward over
 * 32 x 8 x 784 floats take 20% less time so; rows of 49 gain nothing), then the remaining whole
 * windows and the masked tail window into the first, the four added pairwise and then their
 * lanes. The order depends on n alone.
 */
function rowSum4(f: FuncBuilder, n: Operand, value: WindowValue): Expr {
  const acc = f.localsOf(V128, 4);
  const i = f.local(I32);
  const rem = f.local(I32);
  for (const a of acc) f.set(a, f32x4.splat(f32.const(0)));
  f.for(i, 0, i32.sub(n, 15), 16, () => acc.forEach((a, k) => f.set(a, f32x4.add(a, value(k ? i32.add(i, 4 * k) : i)))));
  f.for(i, i, i32.sub(n, 3), 4, () => f.set(acc[0], f32x4.add(acc[0], value(i))));
  f.set(rem, i32.sub(n, i));
  f.if(rem, () => f.set(acc[0], f32x4.add(acc[0], v128.and(value(i32.sub(n, 4)), tailMask(rem)))));
  f.set(acc[0], f32x4.add(f32x4.add(acc[0], acc[1]), f32x4.add(acc[2], acc[3])));
  return lanes4(acc[0], f32.add);
}

/**
 * acc (f64) = the sum over the channel of what `value(i)` gives for the window at element i of a
 * row: each row summed in f32x4 (rowSum4), the rows added in float64.
 */
function channelSum(f: FuncBuilder, walk: ChannelWalk, acc: Local, hw: Local, value: WindowValue): void {
  f.set(acc, f64.const(0));
  walk.eachRow(() => f.set(acc, f64.add(acc, f64.promoteF32(rowSum4(f, hw, value)))));
}

/**
 * The affine pass of one channel: out = ((x - hi) - lo) * k + b, with k = rs * weight[ch] and
 * b = bias[ch] (1 and 0 where the pointer is 0). hi, lo and rs are f32 locals.
 */
function applyChannel(f: FuncBuilder, walk: ChannelWalk, ch: Local, hi: Local, lo: Local, rs: Local, w: Local, b: Local, hw: Local): void {
  const k = f.local(F32);
  const bb = f.local(F32);
  f.if(w, () => f.set(k, f32.mul(rs, f32.load(at(w, ch)))), () => f.set(k, rs));
  f.if(b, () => f.set(bb, f32.load(at(b, ch))), () => f.set(bb, f32.const(0)));
  const [hiV, loV, kV, bV] = [hi, lo, k, bb].map((s) => {
    const v = f.local(V128);
    f.set(v, f32x4.splat(s));
    return v;
  });
  const [xr, outr] = walk.rows;
  walk.eachRow(() =>
    elementwise(f, hw, [{ ptr: xr.row }], { ptr: outr.row }, ([xv]) => f32x4.add(f32x4.mul(f32x4.sub(f32x4.sub(xv, hiV), loV), kV), bV)),
  );
}

/** The float64 whose low and high 32 bits are the i32 arguments lo and hi (epsArgs' inverse), in a local. */
function epsOf(f: FuncBuilder, lo: Local, hi: Local): Local {
  const eps = f.local(F64);
  f.set(eps, f64x2.extractLane(i32x4.replaceLane(i32x4.splat(lo), 1, hi), 0));
  return eps;
}

/** A float64 as the two i32 arguments (low bits, high bits) that batch_norm and batch_norm_eval take. */
export function epsArgs(eps: number): [number, number] {
  const halves = new Int32Array(new Float64Array([eps]).buffer);
  return [halves[0], halves[1]];
}

function emitForward(mb: ModuleBuilder): void {
  mb.func('batch_norm', Array<ValType>(13).fill(I32), [], (f, x, w, b, out, mean, variance, rstd, n, c, hw, epsLo, epsHi, count) => {
    const eps = epsOf(f, epsLo, epsHi);
    const m = f.local(F64);
    const s = f.local(F64);
    const mu = f.local(F64);
    const v64 = f.local(F64);
    const x0 = f.local(V128);
    const hi = f.local(F32);
    const lo = f.local(F32);
    const rs = f.local(F32);
    const d = f.local(V128);
    const hiV = f.local(V128);
    const loV = f.local(V128);
    f.set(m, f64.mul(f64.convertI32S(n), f64.convertI32S(hw)));
    forChannels(f, [x, out], n, c, hw, (ch, walk) => {
      const xr = walk.rows[0].row;
      // The sum runs about the channel's first element: an offset channel (all near 1000, say)
      // would otherwise lose the low bits of every term to the float32 row sums.
      f.set(x0, f32x4.splat(f32.load(at(x, i32.mul(ch, hw)))));
      channelSum(f, walk, s, hw, (i) => f32x4.sub(v128.load(at(xr, i)), x0));
      f.set(mu, f64.add(f64.promoteF32(f32x4.extractLane(x0, 0)), f64.div(s, m)));
      // The mean as hi + lo (the Backend contract): x - hi - lo keeps the deviations' low bits.
      f.set(hi, f32.demoteF64(mu));
      f.set(lo, f32.demoteF64(f64.sub(mu, f64.promoteF32(hi))));
      f.set(hiV, f32x4.splat(hi));
      f.set(loV, f32x4.splat(lo));
      // The squares of the float32 deviations, as the output uses them; a NaN or an infinity in
      // the channel makes the sum NaN (inf - inf), and so the whole channel, as PyTorch.
      channelSum(f, walk, s, hw, (i) => (g) => {
        g.set(d, f32x4.sub(f32x4.sub(v128.load(at(xr, i)), hiV), loV));
        f32x4.mul(d, d)(g);
      });
      f.set(v64, f64.div(s, m));
      f.set(rs, f32.demoteF64(f64.div(f64.const(1), f64.sqrt(f64.add(v64, eps)))));
      f.exec(
        f32.store(at(mean, i32.shl(ch, 1)), hi),
        f32.store(at(mean, i32.add(i32.shl(ch, 1), 1)), lo),
        f32.store(at(variance, ch), f32.demoteF64(v64)),
        f32.store(at(rstd, ch), rs),
      );
      applyChannel(f, walk, ch, hi, lo, rs, w, b, hw);
    }, count);
  });
}

function emitEval(mb: ModuleBuilder): void {
  mb.func('batch_norm_eval', Array<ValType>(12).fill(I32), [], (f, x, rm, rv, w, b, out, n, c, hw, epsLo, epsHi, count) => {
    const eps = epsOf(f, epsLo, epsHi);
    const hi = f.local(F32);
    const lo = f.local(F32);
    const rs = f.local(F32);
    f.set(lo, f32.const(0));
    forChannels(f, [x, out], n, c, hw, (ch, walk) => {
      f.set(hi, f32.load(at(rm, ch)));
      f.set(rs, f32.demoteF64(f64.div(f64.const(1), f64.sqrt(f64.add(f64.promoteF32(f32.load(at(rv, ch))), eps)))));
      applyChannel(f, walk, ch, hi, lo, rs, w, b, hw);
    }, count);
  });
}

function emitBackward(mb: ModuleBuilder): void {
  const params = [I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32];
  mb.func('batch_norm_backward', params, [], (f, g, x, mean, rstd, w, dx, dw, db, n, c, hw, count) => {
    const m = f.local(F64);
    const sumG = f.local(F64);
    const sumGXhat = f.local(F64);
    const hiV = f.local(V128);
    const loV = f.local(V128);
    const rs = f.local(F32);
    const rsV = f.local(V128);
    const gv = f.local(V128);
    const k = f.local(F32);
    const kV = f.local(V128);
    const c1 = f.local(V128);
    const c2 = f.local(V128);
    f.set(m, f64.mul(f64.convertI32S(n), f64.convertI32S(hw)));
    forChannels(
      f,
      [g, x, dx],
      n,
      c,
      hw,
      (ch, walk) => {
        const [gr, xr, dxr] = walk.rows.map((r) => r.row);
        f.set(hiV, f32x4.splat(f32.load(at(mean, i32.shl(ch, 1)))));
        f.set(loV, f32x4.splat(f32.load(at(mean, i32.add(i32.shl(ch, 1), 1)))));
        f.set(rs, f32.load(at(rstd, ch)));
        f.set(rsV, f32x4.splat(rs));
        const xhatOf = (xv: Operand) => f32x4.mul(f32x4.sub(f32x4.sub(xv, hiV), loV), rsV);
        channelSum(f, walk, sumG, hw, (i) => v128.load(at(gr, i)));
        channelSum(f, walk, sumGXhat, hw, (i) => (b) => {
          b.set(gv, v128.load(at(gr, i)));
          f32x4.mul(gv, xhatOf(v128.load(at(xr, i))))(b);
        });
        f.if(dw, () => f.exec(f32.store(at(dw, ch), f32.demoteF64(sumGXhat))));
        f.if(db, () => f.exec(f32.store(at(db, ch), f32.demoteF64(sumG))));
        f.if(dx, () => {
          // dx = k * (g - mean(g) - xhat * mean(g * xhat)) = k * g - c1 - xhat * c2.
          f.if(w, () => f.set(k, f32.mul(rs, f32.load(at(w, ch)))), () => f.set(k, rs));
          f.set(kV, f32x4.splat(k));
          f.set(c1, f32x4.splat(f32.demoteF64(f64.div(f64.mul(f64.promoteF32(k), sumG), m))));
          f.set(c2, f32x4.splat(f32.demoteF64(f64.div(f64.mul(f64.promoteF32(k), sumGXhat), m))));
          walk.eachRow(() =>
            elementwise(f, hw, [{ ptr: gr }, { ptr: xr }], { ptr: dxr }, ([gi, xi]) => f32x4.sub(f32x4.sub(f32x4.mul(kV, gi), c1), f32x4.mul(xhatOf(xi), c2))),
          );
        });
      },
      count,
    );
  });
}

export function emitBatchNormKernels(mb: ModuleBuilder): void {
  emitForward(mb);
  emitEval(mb);
  emitBackward(mb);
}
