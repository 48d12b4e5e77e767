/**
 * SIMD kernels for the counter-based random draws (src/kernels/rng.ts) of the wasm backend, on
 * float32 storages (the backend's `random`).
 *
 * The kernels hash four indexes per i32x4 (PCG-RXS-M-XS; its data-dependent shift is the high half
 * of a 64-bit product by a per-lane power of two). Uniform and keep-mask draws are exact; normal
 * draws use float64 series for log and sin (relative error around 1e-16), so after rounding to
 * float32 they match the reference's Math.log / Math.cos except where the two float64 values
 * straddle a float32 rounding boundary (a few parts in 1e8 per draw; none in the tests).
 */
import { f32, f32x4, f64, f64x2, i32, i32x4, i64x2, v128, ValType, type Expr, type FuncBuilder, type Local, type ModuleBuilder, type Operand } from './emit.js';

const { i32: I32, f64: F64, v128: V128 } = ValType;

const addr = (ptr: Local, i: Operand) => i32.add(ptr, i32.shl(i, 2));

/** PCG-RXS-M-XS of four lanes (src/kernels/rng.ts pcgHash). */
function pcgV(f: FuncBuilder, v: Operand): Local {
  const s = f.local(V128);
  const x = f.local(V128);
  f.set(s, i32x4.add(i32x4.mul(v, 747796405), 2891336453 | 0));
  // x = s >>> r with r = (s >>> 28) + 4, per lane: the high 32 bits of s * 2^(32 - r), the
  // multiplier built as the float 2^(28 - (s >>> 28)) (exponent bits) and truncated to an integer.
  f.set(x, i32x4.truncSatF32x4S(i32x4.shl(i32x4.sub(155, i32x4.shrU(s, 28)), 23)));
  f.set(x, v128.shuffle(i64x2.extmulLowI32x4U(s, x), i64x2.extmulHighI32x4U(s, x), [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31]));
  f.set(x, i32x4.mul(v128.xor(x, s), 277803737));
  f.set(x, v128.xor(i32x4.shrU(x, 22), x));
  return x;
}

/** hashBits(key0, key1, idx) for four lanes of indexes. */
function bitsV(f: FuncBuilder, idx: Operand, k0: Local, k1: Local): Local {
  const h = pcgV(f, i32x4.add(idx, k0));
  return pcgV(f, v128.xor(h, k1));
}

const LANE_IDS = v128.i32x4([0, 1, 2, 3]);
const HALF_HIGH = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];
/** Lanes 0, 1 of a and lanes 0, 1 of b. */
const LOW_LOW = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];

/**
 * Runs `vec(i)` -> f32x4 for the four outputs from element i while 4 fit, then for each of the
 * last 1-3 elements stores lane 0 of vec(i) (the window starting at that element).
 */
function draws(f: FuncBuilder, out: Local, n: Local, vec: (i: Local) => Operand): void {
  const i = f.local(I32);
  const r = f.local(V128);
  f.set(i, 0);
  f.block((exit) =>
    f.loop((top) => {
      f.brIf(exit, i32.gtS(i32.add(i, 4), n));
      f.exec(v128.store(addr(out, i), vec(i)));
      f.inc(i, 4);
      f.br(top);
    }),
  );
  f.block((exit) =>
    f.loop((top) => {
      f.brIf(exit, i32.geS(i, n));
      f.set(r, vec(i));
      f.exec(v128.store32Lane(addr(out, i), r, 0));
      f.inc(i, 1);
      f.br(top);
    }),
  );
}

/** The uniform of 24-bit integers u (i32x4) as two f64x2 halves' lane pairs: promotes lanes 0,1 / 2,3. */
function halves(x: Operand): [Expr, Expr] {
  return [f64x2.convertLowI32x4S(x), f64x2.convertLowI32x4S(v128.shuffle(x, x, HALF_HIGH))];
}

/** Adds the random kernels (rng_uniform, rng_keep, rng_normal_0, rng_normal_1) to the module. */
export function emitRandom(mb: ModuleBuilder): void {
  const SCALE = 5.9604644775390625e-8;
  // rng_uniform(out, n, base, k0, k1, low, span): out[i] = fr(low + span * uniform(base + i)).
  mb.func('rng_uniform', [I32, I32, I32, I32, I32, F64, F64], [], (f, out, n, base, k0s, k1s, low, span) => {
    const k0 = f.local(V128);
    const k1 = f.local(V128);
    const lo = f.local(V128);
    const sp = f.local(V128);
    const b = f.local(V128);
    f.set(k0, i32x4.splat(k0s));
    f.set(k1, i32x4.splat(k1s));
    f.set(lo, f64x2.splat(low));
    f.set(sp, f64x2.splat(span));
    draws(f, out, n, (i) => (fb) => {
      fb.set(b, i32x4.shrU(bitsV(fb, i32x4.add(i32x4.splat(i32.add(base, i)), LANE_IDS), k0, k1), 8));
      const [h0, h1] = halves(b);
      const one = (h: Expr) => f32x4.demoteF64x2Zero(f64x2.add(lo, f64x2.mul(sp, f64x2.mul(h, SCALE))));
      v128.shuffle(one(h0), one(h1), LOW_LOW)(fb);
    });
  });
  // rng_keep(out, n, base, k0, k1, p): out[i] = uniform(base + i) >= p (f32) ? 1 : 0.
  mb.func('rng_keep', [I32, I32, I32, I32, I32, ValType.f32], [], (f, out, n, base, k0s, k1s, p) => {
    const k0 = f.local(V128);
    const k1 = f.local(V128);
    const pv = f.local(V128);
    f.set(k0, i32x4.splat(k0s));
    f.set(k1, i32x4.splat(k1s));
    f.set(pv, f32x4.splat(p));
    draws(f, out, n, (i) => (fb) => {
      const b = bitsV(fb, i32x4.add(i32x4.splat(i32.add(base, i)), LANE_IDS), k0, k1);
      const u = f32x4.mul(f32x4.convertI32x4S(i32x4.shrU(b, 8)), SCALE);
      v128.and(f32x4.ge(u, pv), f32x4.splat(f32.const(1)))(fb);
    });
  });
  // rng_normal_<mean>(out, n, base, k0, k1, mean, std): out[i] = fr([mean +] std * normal(base + i)).
  for (const withMean of [false, true]) {
    mb.func(`rng_normal_${withMean ? 1 : 0}`, [I32, I32, I32, I32, I32, F64, F64], [], (f, out, n, base, k0s, k1s, mean, std) => {
      const k0 = f.local(V128);
      const k1 = f.local(V128);
      const mv = f.local(V128);
      const sv = f.local(V128);
      const ha = f.local(V128);
      const hb = f.local(V128);
      const u1 = f.local(V128);
      const u2 = f.local(V128);
      const m = f.local(V128);
      const e = f.local(V128);
      const big = f.local(V128);
      const md = f.local(V128);
      const z = f.local(V128);
      const z2 = f.local(V128);
      const ser = f.local(V128);
      const y = f.local(V128);
      const t = f.local(V128);
      const t2 = f.local(V128);
      const sn = f.local(V128);
      const res = [f.local(V128), f.local(V128)];
      f.set(k0, i32x4.splat(k0s));
      f.set(k1, i32x4.splat(k1s));
      f.set(mv, f64x2.splat(mean));
      f.set(sv, f64x2.splat(std));
      draws(f, out, n, (i) => (fb) => {
        // Bits of elements 2j and 2j+1 for the four outputs j = base + i + 0..3.
        const first = i32x4.add(i32x4.splat(i32.shl(i32.add(base, i), 1)), LANE_IDS);
        fb.set(ha, bitsV(fb, first, k0, k1));
        fb.set(hb, bitsV(fb, i32x4.add(first, 4), k0, k1));
        // u1 as the integer (bits >>> 8) + 1 in [1, 2^24] (u1 = that * 2^-24), u2's 24 bits.
        fb.set(u1, i32x4.add(i32x4.shrU(v128.shuffle(ha, hb, [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]), 8), 1));
        fb.set(u2, i32x4.shrU(v128.shuffle(ha, hb, [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31]), 8));
        // u1 = 2^(e - 24) m with m in [sqrt(1/2), sqrt(2)).
        fb.set(m, f32x4.convertI32x4S(u1));
        fb.set(e, i32x4.sub(i32x4.shrU(m, 23), 127 + 24));
        fb.set(m, v128.or(v128.and(m, v128.i32x4([0x7fffff, 0x7fffff, 0x7fffff, 0x7fffff])), v128.i32x4([0x3f800000, 0x3f800000, 0x3f800000, 0x3f800000])));
        fb.set(big, f32x4.gt(m, Math.SQRT2));
        fb.set(m, v128.bitselect(f32x4.mul(m, 0.5), m, big));
        fb.set(e, i32x4.sub(e, big));
        for (const h of [0, 1]) {
          const lanes = (x: Local) => (h === 0 ? x : v128.shuffle(x, x, HALF_HIGH));
          // log m = 2 atanh(z), z = (m - 1) / (m + 1), |z| <= 0.1716: the series to z^23.
          fb.set(md, f64x2.promoteLowF32x4(lanes(m)));
          fb.set(z, f64x2.div(f64x2.sub(md, 1), f64x2.add(md, 1)));
          fb.set(z2, f64x2.mul(z, z));
          fb.set(ser, f64x2.splat(f64.const(1 / 23)));
          for (let k = 21; k >= 1; k -= 2) fb.set(ser, f64x2.add(f64x2.mul(ser, z2), 1 / k));
          const log = f64x2.add(f64x2.mul(f64x2.convertLowI32x4S(lanes(e)), Math.LN2), f64x2.mul(f64x2.add(z, z), ser));
          // cos(2 pi u2) = -sin(2 pi (|y| - 1/4)) with y = u2 - round(u2): |t| <= pi/2, Taylor to t^25.
          fb.set(y, f64x2.mul(f64x2.convertLowI32x4S(lanes(u2)), SCALE));
          fb.set(y, f64x2.sub(f64x2.abs(f64x2.sub(y, f64x2.nearest(y))), 0.25));
          fb.set(t, f64x2.mul(y, 2 * Math.PI));
          fb.set(t2, f64x2.mul(t, t));
          let fact = 1;
          const coefs: number[] = [];
          for (let k = 0; k <= 12; k++) {
            coefs.push((k % 2 ? -1 : 1) / fact);
            fact *= (2 * k + 2) * (2 * k + 3);
          }
          fb.set(sn, f64x2.splat(f64.const(coefs[12])));
          for (let k = 11; k >= 0; k--) fb.set(sn, f64x2.add(f64x2.mul(sn, t2), coefs[k]));
          const normal = f64x2.mul(f64x2.sqrt(f64x2.mul(log, -2)), f64x2.neg(f64x2.mul(sn, t)));
          const scaled = f64x2.mul(sv, normal);
          fb.set(res[h], f32x4.demoteF64x2Zero(withMean ? f64x2.add(mv, scaled) : scaled));
        }
        v128.shuffle(res[0], res[1], LOW_LOW)(fb);
      });
    });
  }
}
