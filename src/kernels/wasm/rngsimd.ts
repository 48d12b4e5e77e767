/**
 * SIMD kernels for the counter-based random draws (src/kernels/rng.ts) of the wasm backend, on
 * float32 storages (the backend's `random`), and the normal draws of the arena kernels
 * (src/kernels/arena/wasm.ts, through `normalsV`).
 *
 * The kernels hash four indexes per i32x4 (PCG-RXS-M-XS; its data-dependent shift is the high half
 * of a 64-bit product by a per-lane power of two). Uniform and keep-mask draws are exact. Normal
 * draws are src/kernels/normal.ts normalAt's float64 operations (its own series for log and cos,
 * fdlibm's order of sums) in f64x2 lanes, in the same order and with no fused multiply-add, so
 * they equal the host's draws bit for bit.
 */
import { f32, f32x4, f64x2, i32, i32x4, i64x2, v128, ValType, type Expr, type FuncBuilder, type Local, type ModuleBuilder, type Operand } from './emit.js';
import { LN2_HI, LN2_LO, LOG_SERIES, SIN_SERIES } from '../normal.js';

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

/** 2^-24: a 24-bit integer to its uniform in [0, 1). */
const SCALE = 5.9604644775390625e-8;
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
      f.set(k0, i32x4.splat(k0s));
      f.set(k1, i32x4.splat(k1s));
      f.set(mv, f64x2.splat(mean));
      f.set(sv, f64x2.splat(std));
      const normals = normalsV(f, k0, k1);
      draws(f, out, n, (i) => (fb) => {
        const one = (z: Local) => (withMean ? f64x2.add(mv, f64x2.mul(sv, z)) : f64x2.mul(sv, z));
        const [lo, hi] = normals(i32.add(base, i));
        demoteJoin(one(lo), one(hi))(fb);
      });
    });
  }
}

/** Four float64 draws (two f64x2 halves) rounded to float32, as one f32x4. */
export function demoteJoin(lo: Operand, hi: Operand): Expr {
  return v128.shuffle(f32x4.demoteF64x2Zero(lo), f32x4.demoteF64x2Zero(hi), LOW_LOW);
}

/** p = c[n-1]; p = p x + c[k] down to k = 0: normal.ts horner, lane by lane. */
function hornerV(f: FuncBuilder, p: Local, c: readonly number[], x: Local): void {
  f.set(p, f64x2.splat(c[c.length - 1]));
  for (let k = c.length - 2; k >= 0; k--) f.set(p, f64x2.add(f64x2.mul(p, x), c[k]));
}

/**
 * The standard normals normalAt(key0, key1, j + L) of normal.ts for four consecutive elements
 * (lane L = 0..3; k0, k1: the keys splatted to i32x4), as two f64x2 locals (lanes 0, 1 and 2, 3).
 * Allocates its locals once, in f; the returned function emits the draws of one quad.
 */
export function normalsV(f: FuncBuilder, k0: Local, k1: Local): (j: Operand) => readonly [Local, Local] {
  const [first, ha, hb, a, b] = f.localsOf(V128, 5);
  const boxMuller = boxMullerV(f);
  return (j) => {
    // Bits of elements 2j..2j+7: u1's integer a = (bits of 2j' >>> 8) + 1 in [1, 2^24], u2's b.
    f.set(first, i32x4.add(i32x4.splat(i32.shl(j, 1)), LANE_IDS));
    f.set(ha, bitsV(f, first, k0, k1));
    f.set(hb, bitsV(f, i32x4.add(first, 4), k0, k1));
    f.set(a, i32x4.add(i32x4.shrU(v128.shuffle(ha, hb, [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]), 8), 1));
    f.set(b, i32x4.shrU(v128.shuffle(ha, hb, [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31]), 8));
    return boxMuller(a, b);
  };
}

/**
 * normal.ts boxMuller(a, b) of four lanes: a (i32x4) in [1, 2^24], b in [0, 2^24); the results as two
 * f64x2 locals (lanes 0, 1 and 2, 3). Allocates its locals once, in f; a and b are left as they are.
 */
export function boxMullerV(f: FuncBuilder): (a: Local, b: Local) => readonly [Local, Local] {
  const [m, e, big, md, kd, fm, z, z2, p, lg, y, t, t2] = f.localsOf(V128, 13);
  const res = [f.local(V128), f.local(V128)] as const;
  return (a, b) => {
    // logUnit's split a 2^-24 = 2^e m, m in [sqrt(1/2), sqrt(2)), from the bits of float32(a)
    // (exact). m > sqrt(2) in float32 is the host's float64 test: no float32 m lies between
    // fround(SQRT2) and SQRT2, and m = fround(SQRT2) fails both.
    f.set(m, f32x4.convertI32x4S(a));
    f.set(e, i32x4.sub(i32x4.shrU(m, 23), 127 + 24));
    f.set(m, v128.or(v128.and(m, v128.i32x4([0x7fffff, 0x7fffff, 0x7fffff, 0x7fffff])), v128.i32x4([0x3f800000, 0x3f800000, 0x3f800000, 0x3f800000])));
    f.set(big, f32x4.gt(m, Math.SQRT2));
    f.set(m, v128.bitselect(f32x4.mul(m, 0.5), m, big));
    f.set(e, i32x4.sub(e, big));
    for (const h of [0, 1]) {
      const lanes = (x: Local) => (h === 0 ? x : v128.shuffle(x, x, HALF_HIGH));
      // logUnit: k LN2_HI + (f - (z (f - z^2 P(z^2)) - k LN2_LO)), f = m - 1, z = f / (m + 1).
      f.set(md, f64x2.promoteLowF32x4(lanes(m)));
      f.set(kd, f64x2.convertLowI32x4S(lanes(e)));
      f.set(fm, f64x2.sub(md, 1));
      f.set(z, f64x2.div(fm, f64x2.add(md, 1)));
      f.set(z2, f64x2.mul(z, z));
      hornerV(f, p, LOG_SERIES, z2);
      f.set(lg, f64x2.add(f64x2.mul(kd, LN2_HI), f64x2.sub(fm, f64x2.sub(f64x2.mul(z, f64x2.sub(fm, f64x2.mul(z2, p))), f64x2.mul(kd, LN2_LO)))));
      // cosTurn: t = (min(u, 1 - u) - 1/4) 2 pi, cos = -(t + t t^2 Q(t^2)).
      f.set(y, f64x2.mul(f64x2.convertLowI32x4S(lanes(b)), SCALE));
      f.set(t, f64x2.mul(f64x2.sub(f64x2.pmin(y, f64x2.sub(1, y)), 0.25), 2 * Math.PI));
      f.set(t2, f64x2.mul(t, t));
      hornerV(f, p, SIN_SERIES, t2);
      f.set(res[h], f64x2.mul(f64x2.sqrt(f64x2.mul(lg, -2)), f64x2.neg(f64x2.add(t, f64x2.mul(f64x2.mul(t, t2), p)))));
    }
    return res;
  };
}
