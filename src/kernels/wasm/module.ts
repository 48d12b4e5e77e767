/**
 * The WebAssembly kernels of the wasm backend, generated with emit.ts. Every pointer is a byte
 * address into the one imported memory and every count is an element count, unless a name ends
 * in `Bytes`. The module is pure: it allocates nothing and keeps no state, so the main thread
 * and the worker threads instantiate the same bytes over the same shared memory.
 */
import {
  call,
  f32,
  f32x4,
  f64,
  f64x2,
  i32,
  i16x8,
  i32x4,
  i64x2,
  i8x16,
  memory,
  ModuleBuilder,
  select,
  v128,
  ValType,
  type Expr,
  type FuncBuilder,
  type FuncRef,
  type Local,
  type Operand,
} from './emit.js';
import { emitRandom } from './rngsimd.js';
import { SQRT_2_OVER_PI } from '../mathfns.js';
import * as COEFFS from '../mathcoeffs.js';
import { emitConvKernels } from './conv.js';
import { emitWinogradKernels } from './conv-winograd.js';
import { emitPoolKernels } from './pool.js';
import { columnSums, emitLayerNormKernels } from './layernorm.js';
import { emitBatchNormKernels } from './batchnorm.js';
import { emitStridedCopyKernels } from './copy.js';
import { emitAttentionKernels } from './attention.js';

const { i32: I32, f32: F32, f64: F64, v128: V128 } = ValType;

/** Register blocking and cache tiling of the matmul (see emitGemm). */
export interface GemmTiling {
  /** Rows of C per micro-kernel tile. */
  mr: number;
  /** Columns of C per micro-kernel tile: a multiple of 4 (one f32x4 per 4 columns). */
  nr: number;
  /** Depth of a packed block: one B micro-panel (kc x nr) stays in L1 across the A panels. */
  kc: number;
  /** Rows of a packed A block (mc x kc, kept in L2). */
  mc: number;
  /** Columns of a packed B block (kc x nc). */
  nc: number;
}

/**
 * 4x8 tiles (8 accumulators) beat 4x12, 6x8, 5x8, 3x16 and 8x4 under V8 on the machine this was
 * tuned on; kc 128-384 and mc 64-128 were within noise of each other.
 */
export const DEFAULT_TILING: GemmTiling = { mr: 4, nr: 8, kc: 256, mc: 64, nc: 2048 };

/** Bytes of scratch one thread needs for the matmul: packed A, packed B and an edge tile. */
export function gemmScratchBytes(t: GemmTiling): number {
  const mc = Math.ceil(t.mc / t.mr) * t.mr;
  const nc = Math.ceil(t.nc / t.nr) * t.nr;
  return (mc * t.kc + t.kc * nc + t.mr * t.nr) * 4;
}

/** The elementwise ops with a SIMD body; every other op runs in JS over the same memory. */
export const SIMD_UNARY_F32 = [
  'neg', 'abs', 'sqrt', 'rsqrt', 'square', 'reciprocal', 'relu', 'affine', 'clamp', 'insideMask', 'exp', 'sigmoid',
  'floor', 'ceil', 'round', 'leakyRelu', 'expm1', 'log', 'log1p', 'tanh', 'silu', 'softplus', 'elu', 'geluTanh',
  'erf', 'geluErf', 'sin', 'cos', 'powScalar', 'sign',
] as const;
export const SIMD_UNARY_I32 = ['neg', 'abs', 'square', 'sign'] as const;
/** The bool-valued unary ops (float32 or int32 in, bool out). */
export const SIMD_UNARY_BOOL_F32 = ['isnan', 'isinf', 'isfinite', 'logicalNot'] as const;
export const SIMD_UNARY_BOOL_I32 = ['logicalNot'] as const;
export const SIMD_BINARY_F32 = ['add', 'sub', 'mul', 'div', 'maximum', 'minimum'] as const;
export const SIMD_BINARY_I32 = ['add', 'sub', 'mul', 'maximum', 'minimum'] as const;
/**
 * Float32 binary ops whose body is a function of its own that the row kernels call once per
 * vector (pow_f32x4): pow's hundreds of instructions inlined would be copied into every loop of
 * every variant, and the call costs a few instructions of them. Not fused (wasm/fusedmap.ts).
 */
export const SIMD_BINARY_F32_CALLED = ['pow'] as const;

/** The bool-valued binary ops: comparisons and the logical ops (nonzero, NaN included, is true). */
export const SIMD_COMPARE = ['eq', 'ne', 'lt', 'le', 'gt', 'ge', 'logicalAnd', 'logicalOr', 'logicalXor'] as const;

/** The operand patterns of a row kernel with k operands: every string of k letters 'v' / 's'. */
export function rowVariants(k: number): string[] {
  return k === 0 ? [''] : rowVariants(k - 1).flatMap((v) => [v + 'v', v + 's']);
}

export function unaryExport(op: string, dtype: 'f32' | 'i32'): string {
  return `unary_${op}_${dtype}`;
}
/** Arithmetic and comparisons of two operands; comparisons write bools. */
export function binaryExport(op: string, dtype: 'f32' | 'i32', variant: string): string {
  return `binary_${op}_${dtype}_${variant}`;
}
/** where(cond, a, b) over 4-byte values (f32 or i32 alike). */
export function whereExport(variant: string): string {
  return `where_${variant}`;
}

/** A unary vector body: the input (in a local) and the splatted parameters p0, p1. */
export type VecBody = (f: FuncBuilder, xs: Local[], p: Local[]) => Operand;

/**
 * A stream of elements that an elementwise loop reads or writes: 4-byte elements (f32, i32) or
 * bool bytes, which are widened to one i32 lane each on load (0 or 1) and narrowed on store. A
 * splat stream holds one value for every element.
 */
interface Stream {
  ptr: Local;
  bool?: boolean;
  splat?: boolean;
}

const addrOf = (s: Stream, i: Operand) => i32.add(s.ptr, s.bool ? i : i32.shl(i, 2));

/** The 4 elements of a stream at element i as an f32x4 / i32x4 (bools widened to i32 lanes). */
function load4(s: Stream, i: Operand): Expr {
  return s.bool ? i32x4.extendLowI16x8U(i16x8.extendLowI8x16U(v128.load32Zero(addrOf(s, i)))) : v128.load(addrOf(s, i));
}

/**
 * Emits out[i] = body(inputs[i]) for n elements. A tail of 1-3 elements runs the same body once
 * on the window of the last four elements (reaching back before the start when n < 4: every
 * storage lies at address 256 or above) and stores only the tail's lanes, so each op is written
 * once and costs one vector step there. `pairs`: the main loop runs the body on two vectors a turn
 * (half the loop's own instructions per vector; V8 unrolls only the smallest loops itself), then
 * one vector, then the tail. Bool outputs go sixteen elements a turn. `bumped`: a main loop
 * first that runs that many vectors a turn (bool outputs twice as many), each stream read and
 * written through a pointer of its own that moves once a turn, every vector of the turn at a
 * constant offset from it (the address is one register and the load's offset field): an index
 * costs each stream an address computation per vector (V8 emits a lea), 10 x64 instructions per
 * vector of a two-operand row against about 6 this way.
 */
export function elementwise(f: FuncBuilder, n: Operand, inputs: Stream[], out: Stream, body: (xs: Local[]) => Operand, pairs = false, bumped = 0): void {
  const i = f.local(I32);
  const end = f.local(I32);
  const v = f.local(V128);
  const xs = inputs.map(() => f.local(V128));
  const splats = inputs.map((s) => {
    if (!s.splat) return null;
    const x = f.local(V128);
    f.set(x, i32x4.splat(s.bool ? i32.load8u(s.ptr) : i32.load(s.ptr)));
    return x;
  });
  const loadInputs = (at: Operand = i) => inputs.forEach((s, k) => f.set(xs[k], splats[k] ?? load4(s, at)));
  // Bools leave as the low byte of each lane, packed into 4 bytes. A body may give 0 / 1 or a
  // comparison's 0 / all-ones lanes: the signed narrowings keep 0, 1 and -1, and one and with 1s
  // makes bools of them (a mask's and with 1 per vector would cost three more per sixteen).
  const packed = (x: Operand) => {
    const w = i16x8.narrowI32x4S(x, x);
    return v128.and(i8x16.narrowI16x8S(w, w), BOOL_BYTES);
  };
  const packed16 = ([q0, q1, q2, q3]: Operand[]) => v128.and(i8x16.narrowI16x8S(i16x8.narrowI32x4S(q0, q1), i16x8.narrowI32x4S(q2, q3)), BOOL_BYTES);
  f.set(end, n);
  f.set(i, 0);
  if (bumped) {
    // Bool outputs: twice as many vectors (a whole number of fours), each four packed into one
    // 16-byte store as below: 32 bools a turn ran 5-10% faster than 16 (eq over 2^18 floats).
    const vectors = out.bool ? 4 * Math.ceil(bumped / 2) : bumped;
    const moving = inputs.map((s) => (s.splat ? null : f.local(I32)));
    const outAt = f.local(I32);
    const results = f.localsOf(V128, vectors);
    moving.forEach((p, k) => p && f.set(p, inputs[k].ptr));
    f.set(outAt, out.ptr);
    f.block((exit) =>
      f.loop((top) => {
        f.brIf(exit, i32.gtS(i32.add(i, 4 * vectors), end));
        results.forEach((r, u) => {
          inputs.forEach((s, k) => {
            const p = moving[k];
            if (!p) f.set(xs[k], splats[k]!);
            else f.set(xs[k], s.bool ? i32x4.extendLowI16x8U(i16x8.extendLowI8x16U(v128.load32Zero(p, 4 * u))) : v128.load(p, 16 * u));
          });
          f.set(r, body(xs));
        });
        if (out.bool) {
          for (let u = 0; u < vectors; u += 4) f.exec(v128.store(outAt, packed16(results.slice(u, u + 4)), 4 * u));
        } else results.forEach((r, u) => f.exec(v128.store(outAt, r, 16 * u)));
        moving.forEach((p, k) => p && f.inc(p, inputs[k].bool ? 4 * vectors : 16 * vectors));
        f.inc(outAt, out.bool ? 4 * vectors : 16 * vectors);
        f.inc(i, 4 * vectors);
        f.br(top);
      }),
    );
  }
  if (out.bool) {
    // Sixteen bools at a time: four bodies packed by three narrowings into one 16-byte store,
    // instead of two narrowings and a 4-byte store per four (half the instructions of isnan).
    const quarters = f.localsOf(V128, 4);
    f.block((exit) =>
      f.loop((top) => {
        f.brIf(exit, i32.gtS(i32.add(i, 16), end));
        quarters.forEach((q, k) => {
          loadInputs(k ? i32.add(i, 4 * k) : i);
          f.set(q, body(xs));
        });
        f.exec(v128.store(addrOf(out, i), packed16(quarters)));
        f.inc(i, 16);
        f.br(top);
      }),
    );
  } else if (pairs) {
    const [first, second] = f.localsOf(V128, 2);
    f.block((exit) =>
      f.loop((top) => {
        f.brIf(exit, i32.gtS(i32.add(i, 8), end));
        loadInputs();
        f.set(first, body(xs));
        loadInputs(i32.add(i, 4));
        f.set(second, body(xs));
        f.exec(v128.store(addrOf(out, i), first));
        f.exec(v128.store(addrOf(out, i32.add(i, 4)), second));
        f.inc(i, 8);
        f.br(top);
      }),
    );
  }
  f.block((exit) =>
    f.loop((top) => {
      f.brIf(exit, i32.gtS(i32.add(i, 4), end));
      loadInputs();
      f.exec(out.bool ? v128.store32Lane(addrOf(out, i), packed(body(xs)), 0) : v128.store(addrOf(out, i), body(xs)));
      f.inc(i, 4);
      f.br(top);
    }),
  );
  f.if(i32.ltS(i, end), () => {
    const rem = f.local(I32);
    f.set(rem, i32.sub(end, i));
    f.set(i, i32.sub(end, 4));
    loadInputs();
    f.set(v, out.bool ? packed(body(xs)) : body(xs));
    storeTail(f, addrOf(out, i), v, rem, out.bool);
  });
}

/** Sixteen bytes of 1 (bool true). */
const BOOL_BYTES = v128.i32x4([0x01010101, 0x01010101, 0x01010101, 0x01010101]);

/** Stores the last `rem` (1-3) lanes of v into the window of four elements at base. */
function storeTail(f: FuncBuilder, base: Expr, v: Local, rem: Local, bytes = false): void {
  const storeLane = (lane: number) => f.exec(bytes ? v128.store8Lane(base, v, lane, lane) : v128.store32Lane(base, v, lane, 4 * lane));
  storeLane(3);
  f.if(i32.geS(rem, 2), () => storeLane(2));
  f.if(i32.geS(rem, 3), () => storeLane(1));
}

/** The lanes of the last window that belong to a tail of `rem` (1-3) elements: lanes 4-rem..3. */
export function tailMask(rem: Operand): Expr {
  return i32x4.gtS(v128.i32x4([0, 1, 2, 3]), i32x4.splat(i32.sub(3, rem)));
}

// The polynomials shared with the WebGPU prelude (src/kernels/mathcoeffs.ts), as numbers.
const [EXP_P, EXPM1_Q, LOG_TAIL_Q, ERF_SMALL_P, SIN_S, COS_C] = [
  COEFFS.EXP_P, COEFFS.EXPM1_Q, COEFFS.LOG_TAIL_Q, COEFFS.ERF_SMALL_P, COEFFS.SIN_S, COEFFS.COS_C,
].map((t) => t.map(Number));

/**
 * exp(x) for f32x4 (Cephes expf): x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r,
 * and 2^n applied in two halves so that results near overflow and in the subnormal range stay
 * right. n is rounded with the 1.5 * 2^23 trick, which also leaves it in the float's low bits.
 * The clamps are pmin/pmax with x first, so a NaN passes through. Relative error about 2 ulp;
 * exp(-inf) = 0, exp(inf) = inf.
 */
export function expV(f: FuncBuilder, x: Operand): Local {
  const [xv, out] = f.localsOf(V128, 2);
  f.set(xv, x);
  // Where every |x| <= 87 (no NaN), n is in [-126, 126]: 2^n is normal, the clamps change nothing
  // and p 2^n is one product, rounded once as the two halves round it (the same bits; the exp
  // kernel's loop is 45 x64 instructions per vector so, 57 the full way, counted by
  // bench/unary.bench.ts --count). NaN's bits compare above 87's.
  f.if(
    anyLane(i32x4.gtS(v128.and(xv, ABS_F32), v128.i32x4(lanes(f32Bits(87))))),
    () => {
      const { p, n } = expSplitV(f, xv);
      f.set(out, scale2V(f, p, n));
    },
    () => {
      const { p, kf } = expSplitV(f, xv, true);
      f.set(out, f32x4.mul(p, pow2OfKf(kf)));
    },
  );
  return out;
}

/**
 * e^x = p 2^n as expV computes it: p in [0.7, 1.42] and n an i32x4 (x clamped to [-110, 89]);
 * kf holds n in its low bits (0x4b400000 + n). `inRange`: the caller knows |x| <= 87 or NaN, so
 * the clamps are left out (they would change nothing), and n is not formed (pow2OfKf(kf) is 2^n).
 */
function expSplitV(f: FuncBuilder, x: Operand, inRange = false): { p: Local; n: Local; kf: Local } {
  const ROUND = 12582912; // 1.5 * 2^23
  const t = f.local(V128);
  const kf = f.local(V128);
  const fx = f.local(V128);
  const r = f.local(V128);
  const p = f.local(V128);
  const n = f.local(V128);
  f.set(t, inRange ? x : f32x4.pmin(f32x4.pmax(x, -110), 89));
  f.set(kf, f32x4.add(f32x4.mul(t, Math.LOG2E), ROUND));
  f.set(fx, f32x4.sub(kf, ROUND));
  f.set(r, f32x4.sub(f32x4.sub(t, f32x4.mul(fx, 0.693359375)), f32x4.mul(fx, -2.12194440e-4)));
  f.set(p, f32x4.splat(EXP_P[0]));
  for (const c of EXP_P.slice(1)) f.set(p, f32x4.add(f32x4.mul(p, r), c));
  f.set(p, f32x4.add(f32x4.add(f32x4.mul(f32x4.mul(p, r), r), r), 1));
  if (!inRange) f.set(n, i32x4.sub(kf, v128.i32x4([0x4b400000, 0x4b400000, 0x4b400000, 0x4b400000])));
  return { p, n, kf };
}

/**
 * p 2^n for an i32x4 n in [-252, 254], applied in two halves so that neither power of two leaves
 * the normal range: the first product is exact (or overflows, as the result does) and the second
 * rounds once, also where the result is subnormal.
 */
function scale2V(f: FuncBuilder, p: Operand, n: Local): Expr {
  const n1 = f.local(V128);
  f.set(n1, i32x4.shrS(n, 1));
  return f32x4.mul(f32x4.mul(p, pow2V(n1)), pow2V(i32x4.sub(n, n1)));
}

/** 2^n from expSplitV's kf (n in [-126, 127]): its bits are 0x4b400000 + n, and 0x4b400000 << 23 wraps to 0. */
const pow2OfKf = (kf: Operand) => i32x4.shl(i32x4.add(kf, v128.i32x4(lanes(127))), 23);

/** 2^n for an i32x4 n in [-126, 127], from its exponent bits. */
const pow2V = (n: Operand) => i32x4.shl(i32x4.add(n, 127), 23);

/** Horner's p(x) in f32x4 over coefficients from the highest degree down. */
function hornerV(f: FuncBuilder, x: Local, coefs: number[]): Local {
  const p = f.local(V128);
  f.set(p, f32x4.splat(f32.const(coefs[0])));
  for (const c of coefs.slice(1)) f.set(p, f32x4.add(f32x4.mul(p, x), c));
  return p;
}

/*
 * The float32 bodies of expm1, log, log1p, tanh, silu, softplus, elu and erf (and the
 * polynomials of sin and cos): the algorithms of the WebGPU prelude (src/kernels/webgpu/wgsl-math.ts,
 * with the same coefficients: src/kernels/mathcoeffs.ts), in f32x4 with IEEE arithmetic, so that subnormals need no
 * assembly from bits; except where IEEE arithmetic allows fewer instructions than the prelude's
 * forms (log1p as log u + c / u, softplus' log1p by the series alone, erf's tail as 1 - e g with
 * a polynomial g fitted to what erf needs). Two to four times the throughput of computing in
 * f64x2; 1-3 float32 ulps from the float64 closure (the tolerances of test/unary-sweep.test.ts).
 */
const NAN_F32 = v128.i32x4([0x7fc00000, 0x7fc00000, 0x7fc00000, 0x7fc00000]);
const SIGN_F32 = v128.i32x4([0x80000000 | 0, 0x80000000 | 0, 0x80000000 | 0, 0x80000000 | 0]);
/** -|x| by setting the sign bit: V8 makes f32x4.neg(f32x4.abs(x)) six instructions (both masks built in the loop). */
const negAbs = (x: Operand) => v128.or(x, SIGN_F32);
const ABS_F32 = v128.i32x4([0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff]);
/** |x| by clearing the sign bit: one instruction, where V8 builds f32x4.abs's mask in the loop (three). */
const absV = (x: Operand) => v128.and(x, ABS_F32);
const lanes = (x: number) => [x, x, x, x] as const;
/**
 * Whether any lane of a mask (lanes all ones or all zeros) is set, for a branch: the sign bits'
 * bitmask, which V8 tests in three instructions where v128.anyTrue takes five.
 */
const anyLane = (mask: Operand) => i32x4.bitmask(mask);
/** The bits of a float32 as an i32 (a lane of a v128.i32x4 constant). */
const f32Bits = (x: number) => new Int32Array(Float32Array.of(x).buffer)[0];

/**
 * e^x - 1: x = n ln2 + r (|r| <= ln2/2, the head of ln 2 exact in n ln2), expm1(r) by a fitted
 * polynomial, then 2^n expm1(r) + (2^n - 1), whose two terms are exact to rounding (no
 * cancellation near 0); from n = 31 on, (expm1(r) + 1) 2^n by two powers of two. |x| < 1e-20
 * (subnormals included) gives x, and so does NaN. What a caller knows of its x leaves steps out
 * (each about a tenth of the instructions): `upTo20`, every lane it keeps has x <= 20 (n <= 29,
 * so the n > 30 form is not needed); `inRange`, x is already in [-30, 20] or NaN (no clamps);
 * `noPassThrough`, it selects its own result for tiny x and NaN.
 */
function expm1V(f: FuncBuilder, x: Local, opts: { upTo20?: boolean; inRange?: boolean; noPassThrough?: boolean } = {}): Local {
  const [xc, kf, n, r, r2, em, s, out] = f.localsOf(V128, 8);
  f.set(xc, opts.inRange ? x : f32x4.pmin(f32x4.pmax(x, -30), 89));
  // n rounded with the 1.5 * 2^23 trick (as expV), which leaves it in kf's low bits too.
  f.set(kf, f32x4.add(f32x4.mul(xc, Math.LOG2E), 12582912));
  f.set(n, f32x4.sub(kf, 12582912));
  f.set(r, f32x4.sub(f32x4.sub(xc, f32x4.mul(n, 0.693359375)), f32x4.mul(n, -2.12194440e-4)));
  const q = hornerV(f, r, EXPM1_Q);
  f.set(r2, f32x4.mul(r, r));
  f.set(em, f32x4.add(r, f32x4.add(f32x4.mul(r2, 0.5), f32x4.mul(f32x4.mul(r2, r), q))));
  const ni = f.local(V128);
  f.set(ni, i32x4.sub(kf, v128.i32x4([0x4b400000, 0x4b400000, 0x4b400000, 0x4b400000])));
  // n <= 30 here (2^n normal); the other branch uses n - 64 and 2^64, both in range for n <= 128.
  f.set(s, pow2V(opts.inRange ? ni : i32x4.minS(ni, v128.i32x4([30, 30, 30, 30]))));
  f.set(out, f32x4.add(f32x4.mul(s, em), f32x4.sub(s, 1)));
  if (!opts.upTo20) {
    const big = f32x4.mul(f32x4.mul(f32x4.add(em, 1), pow2V(i32x4.sub(ni, v128.i32x4([64, 64, 64, 64])))), 18446744073709551616);
    f.set(out, v128.bitselect(big, out, f32x4.gt(n, 30)));
  }
  if (!opts.noPassThrough) f.set(out, v128.bitselect(x, out, v128.or(f32x4.lt(absV(x), 1e-20), f32x4.ne(x, x))));
  return out;
}

/**
 * log x = e ln2 + f + (log(1 + f) - f) with x = 2^e (1 + f), 1 + f in [sqrt(1/2), sqrt(2)) (f
 * exact), the head of ln 2 exact in e ln2, and log(1 + f) - f = f^3 Q(f) - f^2/2 (Q fitted). A
 * subnormal x is scaled by 2^23 first. log(±0) = -Inf, log(x < 0) = NaN, Inf and NaN pass.
 * `ordinary` leaves out the subnormal scaling and the special cases: for vectors whose lanes are
 * all positive normal floats (see notPositiveNormal), about a third of the instructions.
 */
function logV(f: FuncBuilder, x: Local, ordinary = false): Local {
  const [sub, xs, e, m, big, fr, f2, out] = f.localsOf(V128, 8);
  let bias: Expr = v128.i32x4([127, 127, 127, 127]);
  if (!ordinary) {
    f.set(sub, f32x4.lt(absV(x), 1.1754943508222875e-38));
    bias = v128.bitselect(v128.i32x4([150, 150, 150, 150]), bias, sub);
  }
  f.set(xs, ordinary ? x : v128.bitselect(f32x4.mul(x, 8388608), x, sub));
  f.set(m, v128.or(v128.and(xs, v128.i32x4([0x7fffff, 0x7fffff, 0x7fffff, 0x7fffff])), v128.i32x4([0x3f800000, 0x3f800000, 0x3f800000, 0x3f800000])));
  f.set(big, f32x4.gt(m, 1.41421356));
  // In integers: the exponent, one more where m is halved (big is -1 there), and m halved by its
  // exponent bits (exact). A negative x leaves a wrong exponent here, and its NaN is selected below.
  f.set(e, f32x4.convertI32x4S(i32x4.sub(i32x4.sub(i32x4.shrU(xs, 23), bias), big)));
  f.set(fr, f32x4.sub(i32x4.sub(m, v128.and(big, v128.i32x4([0x800000, 0x800000, 0x800000, 0x800000]))), 1));
  const q = hornerV(f, fr, LOG_TAIL_Q);
  f.set(f2, f32x4.mul(fr, fr));
  const tail = f32x4.sub(f32x4.mul(f32x4.mul(f2, fr), q), f32x4.mul(f2, 0.5));
  f.set(out, f32x4.add(f32x4.mul(e, 0.693359375), f32x4.add(fr, f32x4.add(tail, f32x4.mul(e, -2.12194440e-4)))));
  if (ordinary) return out;
  // !(x < Inf) is NaN or +Inf: x itself.
  f.set(out, v128.bitselect(out, x, f32x4.lt(x, Infinity)));
  f.set(out, v128.bitselect(NAN_F32, out, f32x4.lt(x, 0)));
  f.set(out, v128.bitselect(f32x4.splat(f32.const(-Infinity)), out, f32x4.eq(x, 0)));
  return out;
}

/** The lanes that are not positive normal floats (zeros, subnormals, negatives, Inf, NaN), by their bits. */
const notPositiveNormal = (f: FuncBuilder, x: Local) => v128.or(i32x4.ltS(x, v128.i32x4([0x800000, 0x800000, 0x800000, 0x800000])), i32x4.gtS(x, v128.i32x4([0x7f7fffff, 0x7f7fffff, 0x7f7fffff, 0x7f7fffff])));

/**
 * A body that runs `fast` on the vectors where no lane is `special`, and `full` on the others:
 * one well-predicted branch per vector where special values are rare, as they are in most data.
 */
function withFastPath(special: (f: FuncBuilder, x: Local) => Expr, fast: VecBody, full: VecBody): VecBody {
  return (f, xs, p) => {
    const out = f.local(V128);
    f.if(anyLane(special(f, xs[0])), () => f.set(out, full(f, xs, p)), () => f.set(out, fast(f, xs, p)));
    return out;
  };
}

/**
 * log(1 + x) = log u + c / u with u = 1 + x rounded and c = (1 + x) - u its rounding, exact: x - (u - 1)
 * below u = 2 (u - 1 is exact there, and so is the difference), 1 - (u - x) from 2 on (u - x
 * exact); c / u is the first-order term of log(1 + c / u), and c / u <= 2^-24 leaves the next
 * one below 2^-49 (fdlibm's log1pf). Where u is not a positive normal float (x <= -1, Inf, NaN) the
 * result is log u alone; |x| < 1e-20 gives x (keeps -0). `ordinary`: every lane of 1 + x is a
 * positive normal float (logV's fast form).
 */
function log1pV(f: FuncBuilder, x: Local, ordinary = false): Local {
  const [u, c, out] = f.localsOf(V128, 3);
  f.set(u, f32x4.add(x, 1));
  f.set(c, v128.bitselect(f32x4.sub(1, f32x4.sub(u, x)), f32x4.sub(x, f32x4.sub(u, 1)), f32x4.ge(u, 2)));
  const log = logV(f, u, ordinary);
  f.set(out, f32x4.add(log, f32x4.div(c, u)));
  if (!ordinary) f.set(out, v128.bitselect(log, out, notPositiveNormal(f, u)));
  f.set(out, v128.bitselect(x, out, f32x4.lt(absV(x), 1e-20)));
  return out;
}

/**
 * log1pV's series, 2 atanh(s) with s = x / (2 + x), to s^17: for x in [0, 1] (s <= 1/3) the first
 * term left out, 2 s^19 / 19, is below 1e-10 relative, so it serves alone there (softplus).
 */
function log1pSeriesV(f: FuncBuilder, x: Local): Expr {
  const [s, z] = f.localsOf(V128, 2);
  f.set(s, f32x4.div(x, f32x4.add(x, 2)));
  f.set(z, f32x4.mul(s, s));
  const p = hornerV(f, z, [1 / 17, 1 / 15, 1 / 13, 1 / 11, 1 / 9, 1 / 7, 1 / 5, 1 / 3]);
  return f32x4.add(f32x4.add(s, s), f32x4.mul(f32x4.mul(f32x4.add(s, s), z), p));
}

/**
 * x sigmoid(x) = x / (1 + e) for x >= 0 and x e / (1 + e) below, e = e^-|x| (one division either
 * way). Left of -17, where 1 + e rounds to 1, x e^x is formed as (x p) 2^n from exp's split, so
 * that a subnormal result keeps its bits; left of -110 it is -0. silu(-Inf) = -Inf * 0 = NaN, as
 * the closure. `ordinary`: every lane is in [-17, 87] (or NaN), so that e = p 2^n with n >= -126
 * is one scaling, and the far-left forms are left out (a quarter of the instructions).
 */
function siluV(f: FuncBuilder, x: Local, ordinary = false): Local {
  const [e, out] = f.localsOf(V128, 2);
  // One split e^-|x| = p 2^n serves both: it is e^x where the far-left form applies.
  // Ordinary lanes have -|x| in [-87, 0] (or NaN): no clamps, and one scaling.
  const { p, n, kf } = expSplitV(f, negAbs(x), ordinary);
  f.set(e, ordinary ? f32x4.mul(p, pow2OfKf(kf)) : scale2V(f, p, n));
  f.set(out, f32x4.div(v128.bitselect(f32x4.mul(x, e), x, f32x4.lt(x, 0)), f32x4.add(e, 1)));
  if (ordinary) return out;
  f.set(out, v128.bitselect(scale2V(f, f32x4.mul(x, p), n), out, f32x4.lt(x, -17)));
  f.set(out, v128.bitselect(f32x4.splat(f32.const(-0)), out, f32x4.lt(x, -110)));
  f.set(out, v128.bitselect(NAN_F32, out, f32x4.eq(x, -Infinity)));
  return out;
}

/** erf(x) for |x| <= 1: x P(x^2), fitted (the WebGPU prelude's fg_erf_small). */
function erfSmallV(f: FuncBuilder, x: Operand): Expr {
  const z = f.local(V128);
  f.set(z, f32x4.mul(x, x));
  return f32x4.mul(x, hornerV(f, z, ERF_SMALL_P));
}

/**
 * erfc(a) e^(a^2) on [1, 4] as a degree-8 polynomial in a - 2.5, for erf = 1 - e^(-a^2) g(a): fitted
 * (weighted least squares, reweighted towards minimax) to the absolute error of e^(-a^2) g(a),
 * the term erf subtracts from 1, which is below 2^-28.6; erf needs no more, as erf(a) >= 0.84 there
 * has an ulp of 2^-24 (the relative accuracy erfc itself would need is what made the shared tail
 * form, WebGPU's, twice the instructions). Past a = 3.84 the term is below 2^-25 and erf rounds to 1.
 */
const ERF_TAIL_G = [
  0.00010684337030397728, 0.00022506355890072882, 0.0005433212500065565, -0.0006611197022721171, 0.0023025034461170435,
  -0.008132251910865307, 0.02491462603211403, -0.07434218376874924, 0.21080760657787323,
];

/**
 * erf: x P(x^2) below |x| = 1 (the WebGPU prelude's fg_erf_small); from there sign(x) (1 - e g)
 * with a = min(|x|, 4), e = e^(-a^2) (a^2 rounded: its error a^2 2^-24 relative in e is far below
 * what the term needs) and g from ERF_TAIL_G. Within 1 ulp of the float64 erf over [1, 4.2] in a
 * float32 model with e 1 ulp off; NaN passes through.
 */
function erfV(f: FuncBuilder, x: Local): Local {
  const [a, t, out] = f.localsOf(V128, 3);
  f.set(a, f32x4.pmin(absV(x), 4));
  const e = expV(f, negAbs(f32x4.mul(a, a)));
  f.set(t, f32x4.sub(a, 2.5));
  const tail = v128.or(f32x4.sub(1, f32x4.mul(e, hornerV(f, t, ERF_TAIL_G))), v128.and(x, SIGN_F32));
  f.set(out, v128.bitselect(tail, erfSmallV(f, x), f32x4.ge(absV(x), 1)));
  f.set(out, v128.bitselect(x, out, f32x4.ne(x, x)));
  return out;
}

/**
 * tanh |x| = expm1(2|x|) / (expm1(2|x|) + 2) (tanh(10) rounds to 1), x's sign put back by bits.
 * Tiny |x| needs no pass-through: there n = 0, r = 2|x| and r^2 vanishes, so expm1 gives 2|x|
 * exactly and (2|x|) / 2 is |x| (subnormals and ±0 included); a NaN stays NaN through it all.
 */
function tanhV(f: FuncBuilder, x: Local): Expr {
  const [a, e] = f.localsOf(V128, 2);
  f.set(a, f32x4.mul(f32x4.pmin(absV(x), 10), 2));
  f.set(e, expm1V(f, a, { upTo20: true, inRange: true, noPassThrough: true }));
  return v128.or(f32x4.div(e, f32x4.add(e, 2)), v128.and(x, SIGN_F32));
}

/**
 * log(x) for a positive normal f32, in f64: x = 2^e m with m in [sqrt(1/2), sqrt(2)), and
 * log m = 2 atanh((m-1)/(m+1)) by its series to z^11 (relative error below 1e-10). Used once per
 * row for log-sum-exp, where x is a sum of exponentials in [1, cols].
 */
function emitLog(mb: ModuleBuilder): FuncRef {
  return mb.func('log_f32', [F32], [F64], (f, x) => {
    const bits = f.local(I32);
    const e = f.local(I32);
    const m = f.local(F64);
    const z = f.local(F64);
    const z2 = f.local(F64);
    const series = f.local(F64);
    f.set(bits, i32.reinterpretF32(x));
    f.set(e, i32.sub(i32.shrU(bits, 23), 127));
    f.set(m, f64.promoteF32(f32.reinterpretI32(i32.or(i32.and(bits, 0x7fffff), 0x3f800000))));
    f.if(f64.gt(m, Math.SQRT2), () => {
      f.set(m, f64.mul(m, 0.5));
      f.inc(e, 1);
    });
    f.set(z, f64.div(f64.sub(m, 1), f64.add(m, 1)));
    f.set(z2, f64.mul(z, z));
    f.set(series, 1 / 11);
    for (const c of [1 / 9, 1 / 7, 1 / 5, 1 / 3, 1]) f.set(series, f64.add(f64.mul(series, z2), c));
    f.push(f64.add(f64.mul(f64.convertI32S(e), Math.LN2), f64.mul(f64.mul(2, z), series)));
  }, { exported: false });
}

/*
 * geluTanh, geluErf and pow compute in f64x2 and round once to float32, as the CPU
 * closures do in float64: with float64 errors of a few 2^-53 the float32 result is the correctly
 * rounded one (the sweep in test/unary-sweep.test.ts holds them to 0 ulp), and every special case
 * (NaN, ±Inf, ±0, float32 subnormals, which are normal in float64) is selected explicitly. Their
 * float32 forms would need the exponent splits of the WebGPU prelude to stay within a few ulps.
 */
const f64Lanes = (lo: number, hi: number) => v128.i32x4([lo, hi, lo, hi]);
const F64_SIGN = f64Lanes(0, 0x80000000 | 0);
const F64_INF = f64Lanes(0, 0x7ff00000);
const F64_ZERO = f64Lanes(0, 0);
const F64_NAN = f64Lanes(0, 0x7ff80000);
// fdlibm's ln 2 split: the head has 21 trailing zero bits, so k * LN2_HI is exact for |k| < 2^21.
const LN2_HI = 6.93147180369123816490e-1;
const LN2_LO = 1.90821492927058770002e-10;
/** 1/k! for k = from, from - 1, ..., to: Horner coefficients of the exponential series. */
const invFactorials = (from: number, to: number) => {
  const c: number[] = [];
  for (let k = from; k >= to; k--) {
    let fact = 1;
    for (let j = 2; j <= k; j++) fact *= j;
    c.push(1 / fact);
  }
  return c;
};
const EXP_TAYLOR = invFactorials(13, 0); // |r| <= ln2/2: the 14th term is below 2^-60 relative.

/** Horner's p(x) over coefficients from the highest degree down. */
function hornerD(f: FuncBuilder, x: Local, coefs: number[]): Local {
  const p = f.local(V128);
  f.set(p, f64x2.splat(f64.const(coefs[0])));
  for (const c of coefs.slice(1)) f.set(p, f64x2.add(f64x2.mul(p, x), c));
  return p;
}

/**
 * e^x for f64x2: x = k ln2 + r with |r| <= ln2/2 (k by the 1.5 * 2^52 rounding trick, which
 * leaves k in the low bits), the Taylor series of e^r to degree 13, and 2^k built from bits. x is
 * clamped to [-708, 709] so that 2^k stays normal; below -708 the result is 0 (every caller
 * rounds to float32, where e^-708 is 0) and above 709 it is +Inf. NaN passes through the clamps.
 */
function expD(f: FuncBuilder, x: Local): Local {
  const ROUND = 6755399441055744; // 1.5 * 2^52
  const t = f.local(V128);
  const kf = f.local(V128);
  const fx = f.local(V128);
  const r = f.local(V128);
  const out = f.local(V128);
  f.set(t, f64x2.pmin(f64x2.pmax(x, -708), 709));
  f.set(kf, f64x2.add(f64x2.mul(t, Math.LOG2E), ROUND));
  f.set(fx, f64x2.sub(kf, ROUND));
  f.set(r, f64x2.sub(f64x2.sub(t, f64x2.mul(fx, LN2_HI)), f64x2.mul(fx, LN2_LO)));
  const p = hornerD(f, r, EXP_TAYLOR);
  const pow2k = i64x2.shl(i64x2.add(i64x2.sub(kf, f64Lanes(0, 0x43380000)), f64Lanes(1023, 0)), 52);
  f.set(out, f64x2.mul(p, pow2k));
  f.set(out, v128.bitselect(F64_ZERO, out, f64x2.lt(x, -708)));
  f.set(out, v128.bitselect(F64_INF, out, f64x2.gt(x, 709)));
  return out;
}

/**
 * log(x) for f64x2 over positive normal inputs: x = 2^e m with m in [sqrt(1/2), sqrt(2)), and
 * log m = 2 atanh(z), z = (m-1)/(m+1), |z| <= 0.1716, by its series to z^23 (below 2^-60
 * relative). log 0 = -Inf, log of a negative number NaN, log Inf = Inf, NaN passes through.
 */
function logD(f: FuncBuilder, x: Local): Local {
  const z = f.local(V128);
  const z2 = f.local(V128);
  const out = f.local(V128);
  const { m, e } = splitD(f, x);
  f.set(z, f64x2.div(f64x2.sub(m, 1), f64x2.add(m, 1)));
  f.set(z2, f64x2.mul(z, z));
  const coefs: number[] = [];
  for (let k = 11; k >= 0; k--) coefs.push(1 / (2 * k + 1));
  const series = hornerD(f, z2, coefs);
  f.set(out, f64x2.add(f64x2.mul(e, LN2_HI), f64x2.add(f64x2.mul(e, LN2_LO), f64x2.mul(f64x2.add(z, z), series))));
  // !(x < Inf) is NaN or +Inf: x itself.
  f.set(out, v128.bitselect(out, x, f64x2.lt(x, Infinity)));
  f.set(out, v128.bitselect(F64_NAN, out, f64x2.lt(x, 0)));
  f.set(out, v128.bitselect(f64Lanes(0, 0xfff00000 | 0), out, f64x2.eq(x, 0)));
  return out;
}

/** x = 2^e m with m in [sqrt(1/2), sqrt(2)), for a positive normal f64x2 x (every float32 is one). */
function splitD(f: FuncBuilder, x: Operand): { m: Local; e: Local } {
  const [m, e, big] = f.localsOf(V128, 3);
  f.set(m, v128.or(v128.and(x, f64Lanes(-1, 0x000fffff)), f64Lanes(0, 0x3ff00000)));
  // The biased exponents (below 2^11) sit in the low i32 of each i64 lane: gather and convert.
  const biased = i64x2.shrU(x, 52);
  f.set(e, f64x2.sub(f64x2.convertLowI32x4S(v128.shuffle(biased, biased, [0, 1, 2, 3, 8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11])), 1023));
  f.set(big, f64x2.gt(m, Math.SQRT2));
  f.set(m, v128.bitselect(f64x2.mul(m, 0.5), m, big));
  f.set(e, v128.bitselect(f64x2.add(e, 1), e, big));
  return { m, e };
}

/** The CPU closure's sigmoid in f64x2: with e = e^-|x|, 1 / (1 + e) for x >= 0 and e / (1 + e) below. */
function sigmoidD(f: FuncBuilder, x: Local): Local {
  const a = f.local(V128);
  const r = f.local(V128);
  f.set(a, f64x2.neg(f64x2.abs(x)));
  const e = expD(f, a);
  f.set(r, f64x2.div(1, f64x2.add(1, e)));
  f.set(r, v128.bitselect(f64x2.mul(e, r), r, f64x2.lt(x, 0)));
  return r;
}

/**
 * A float32 body from a float64 one: each half of the f32x4 is promoted to f64x2, computed, and
 * demoted (one rounding), then the halves are joined. p0 arrives promoted too.
 */
function viaF64(body: (f: FuncBuilder, x: Local, p0: Local) => Local): VecBody {
  return (f, [x], [p0]) => {
    const p0d = f.local(V128);
    f.set(p0d, f64x2.promoteLowF32x4(p0));
    return inF64Halves(f, [x], ([xd]) => [body(f, xd, p0d)])[0];
  };
}

/**
 * Runs `body` on each half of f32x4s promoted to f64x2 (lanes 0-1 of every input, then lanes
 * 2-3), demotes each f64x2 it returns to float32 (one rounding) and joins the halves: one f32x4
 * per returned value.
 */
function inF64Halves(f: FuncBuilder, xs: Operand[], body: (xds: Local[]) => Operand[]): Expr[] {
  const halves = [(x: Operand) => f64x2.promoteLowF32x4(x), (x: Operand) => f64x2.promoteLowF32x4(v128.shuffle(x, x, HIGH_HALF))].map((half) => {
    const xds = xs.map((x) => {
      const xd = f.local(V128);
      f.set(xd, half(x));
      return xd;
    });
    return body(xds).map((r) => {
      const out = f.local(V128);
      f.set(out, f32x4.demoteF64x2Zero(r));
      return out;
    });
  });
  return halves[0].map((lo, k) => v128.shuffle(lo, halves[1][k], [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23]));
}

/** Horner's p(x) with each coefficient chosen per lane: from `b` where `useB` is set, else from `a`. */
function hornerSelD(f: FuncBuilder, x: Local, a: number[], b: number[], useB: Local): Local {
  const p = f.local(V128);
  const coef = (k: number) => v128.bitselect(f64x2.splat(f64.const(b[k])), f64x2.splat(f64.const(a[k])), useB);
  f.set(p, coef(0));
  for (let k = 1; k < a.length; k++) f.set(p, f64x2.add(f64x2.mul(p, x), coef(k)));
  return p;
}

/*
 * erfc for geluErf from fdlibm's s_erf.c (Sun Microsystems, 1993; the same in musl, Go and Julia):
 * rational approximations on [0, 0.84375) in b^2, on [0.84375, 1.25) in b - 1, and for erfc on
 * [1.25, 1/0.35) and [1/0.35, 28) in 1/b^2 times e^(-b^2 - 0.5625) / b, each below 1 float64 ulp
 * or so: far more than the float32 result needs, so the rounding to float32 is the closure's.
 */
const ERF_ERX = 8.45062911510467529297e-1;
const ERF_PP = [-2.37630166566501626084e-5, -5.77027029648944159157e-3, -2.84817495755985104766e-2, -3.25042107247001499370e-1, 1.28379167095512558561e-1];
const ERF_QQ = [-3.96022827877536812320e-6, 1.32494738004321644526e-4, 5.08130628187576562776e-3, 6.50222499887672944485e-2, 3.97917223959155352819e-1, 1];
const ERF_PA = [-2.16637559486879084300e-3, 3.54783043256182359371e-2, -1.10894694282396677476e-1, 3.18346619901161753674e-1, -3.72207876035701323847e-1, 4.14856118683748331666e-1, -2.36211856075265944077e-3];
const ERF_QA = [1.19844998467991074170e-2, 1.36370839120290507362e-2, 1.26171219808761642112e-1, 7.18286544141962662868e-2, 5.40397917702171048937e-1, 1.06420880400844228286e-1, 1];
// The two erfc tails, the second padded with a zero top coefficient to the first's degree.
const ERF_RA = [-9.81432934416914548592, -8.12874355063065934246e1, -1.84605092906711035994e2, -1.62396669462573470355e2, -6.23753324503260060396e1, -1.05586262253232909814e1, -6.93858572707181764372e-1, -9.86494403484714822705e-3];
const ERF_SA = [-6.04244152148580987438e-2, 6.57024977031928170135, 1.08635005541779435134e2, 4.29008140027567833386e2, 6.45387271733267880336e2, 4.34565877475229228821e2, 1.37657754143519042600e2, 1.96512716674392571292e1, 1];
const ERF_RB = [0, -4.83519191608651397019e2, -1.02509513161107724954e3, -6.37566443368389627722e2, -1.60636384855821916062e2, -1.77579549177547519889e1, -7.99283237680523006574e-1, -9.86494292470009928597e-3];
const ERF_SB = [0, -2.24409524465858183362e1, 4.74528541206955367215e2, 2.55305040643316442583e3, 3.19985821950859553908e3, 1.53672958608443695994e3, 3.25792512996573918826e2, 3.03380607434824582924e1, 1];

/**
 * erfc(b) for b >= 0 in f64x2 (0 from 28 on, and for b = Inf). In the tail, b^2 = z^2 + (b - z)(b + z) with z = b cut to 21 bits, so z^2 is exact and the one
 * exponential keeps its argument to an ulp of itself (2^-45 relative at b = 10, where erfc meets
 * the float32 subnormals). `nearOnly`: every b is below 1.25, and the two forms there suffice
 * (a quarter of the instructions: the tail has the divisions and the exponential).
 */
function erfcD(f: FuncBuilder, b: Local, nearOnly = false): Local {
  const z2 = f.local(V128);
  const small = f.local(V128);
  const s = f.local(V128);
  const mid = f.local(V128);
  const u = f.local(V128);
  const far = f.local(V128);
  const z = f.local(V128);
  const tail = f.local(V128);
  const erfc = f.local(V128);
  f.set(z2, f64x2.mul(b, b));
  // [0, 0.84375): erf = b + b P(b^2) / Q(b^2).
  f.set(small, f64x2.add(b, f64x2.mul(b, f64x2.div(hornerD(f, z2, ERF_PP), hornerD(f, z2, ERF_QQ)))));
  // [0.84375, 1.25): erf = erx + P(b - 1) / Q(b - 1).
  f.set(s, f64x2.sub(b, 1));
  f.set(mid, f64x2.div(hornerD(f, s, ERF_PA), hornerD(f, s, ERF_QA)));
  const isSmall = f.local(V128);
  f.set(isSmall, f64x2.lt(b, 0.84375));
  if (nearOnly) {
    f.set(erfc, v128.bitselect(f64x2.sub(1, small), f64x2.sub(1 - ERF_ERX, mid), isSmall));
    return erfc;
  }
  // [1.25, 28): erfc = e^(-z^2 - 0.5625 + (z - b)(z + b) + R(1/b^2) / S(1/b^2)) / b.
  f.set(u, f64x2.div(1, z2));
  f.set(far, f64x2.ge(b, 1 / 0.35));
  f.set(z, v128.and(b, f64Lanes(0, -1)));
  const ratio = f64x2.div(hornerSelD(f, u, ERF_RA, ERF_RB, far), hornerSelD(f, u, ERF_SA, ERF_SB, far));
  const arg = f.local(V128);
  f.set(arg, f64x2.add(f64x2.sub(f64x2.neg(f64x2.mul(z, z)), 0.5625), f64x2.add(f64x2.mul(f64x2.sub(z, b), f64x2.add(z, b)), ratio)));
  f.set(tail, f64x2.div(expD(f, arg), b));
  f.set(tail, v128.bitselect(F64_ZERO, tail, f64x2.ge(b, 28)));
  f.set(erfc, v128.bitselect(f64x2.sub(1, small), v128.bitselect(f64x2.sub(1 - ERF_ERX, mid), tail, f64x2.lt(b, 1.25)), isSmall));
  return erfc;
}

/**
 * The closure's geluErf: x/2 erfc(a) with a = -x / sqrt 2 (the same float64 division), erfc(a) for
 * a < 0 being 2 - erfc(|a|); geluErf(Inf) = Inf, geluErf(-Inf) = -Inf * 0 = NaN, as PyTorch.
 */
function geluErfD(f: FuncBuilder, x: Local, nearOnly = false): Local {
  const a = f.local(V128);
  const b = f.local(V128);
  const out = f.local(V128);
  f.set(a, f64x2.div(f64x2.neg(x), Math.SQRT2));
  f.set(b, f64x2.abs(a));
  const erfc = erfcD(f, b, nearOnly);
  f.set(out, f64x2.mul(f64x2.mul(x, 0.5), v128.bitselect(f64x2.sub(2, erfc), erfc, f64x2.lt(a, 0))));
  f.set(out, v128.bitselect(x, out, f64x2.eq(x, Infinity)));
  return out;
}

/**
 * |x| beyond which sin and cos leave the SIMD body: up to it the quadrant n = round(x 2/pi) has
 * at most 20 bits, so n times fdlibm's 33-bit head of pi/2 is exact and the three-part Cody-Waite
 * reduction below leaves r = x - n pi/2 to an ulp of itself, also next to a zero of sin or cos
 * (where float32 pieces of pi/2 would leave hundreds of ulps). The wasm backend computes the rare
 * larger arguments with the closure (Payne-Hanek is not worth its code for them).
 */
export const TRIG_SIMD_LIMIT = 2 ** 20;
// fdlibm's e_rem_pio2.c: pi/2 in 33-bit pieces.
const PIO2_1 = 1.57079632673412561417;
const PIO2_2 = 6.07710050630396597660e-11;
const PIO2_3 = 2.02226624871116645580e-21;

/**
 * sin (shift 0) or cos (shift 1): r = x - n pi/2 (|r| <= pi/4) and the quadrant (n + shift) mod 4
 * in f64x2, rounded to float32 (r then carries half an ulp), then Cephes' sinf and cosf
 * polynomials in f32x4 (the WebGPU prelude's fg_trig_poly), the quadrant choosing and negating.
 * sin(±0) = ±0 is selected (r = -0 - 0 would be +0); NaN and Inf give NaN (Inf - Inf).
 */
function trigV(f: FuncBuilder, x: Local, shift: 0 | 1): Local {
  const [r, q, r2, out] = f.localsOf(V128, 4);
  const [rv, qv] = inF64Halves(f, [x], ([xd]) => {
    const [n, m] = f.localsOf(V128, 2);
    f.set(n, f64x2.nearest(f64x2.mul(xd, 2 / Math.PI)));
    f.set(m, shift ? f64x2.add(n, 1) : n);
    return [
      f64x2.sub(f64x2.sub(f64x2.sub(xd, f64x2.mul(n, PIO2_1)), f64x2.mul(n, PIO2_2)), f64x2.mul(n, PIO2_3)),
      // (n + shift) mod 4 as a value in {-2, ..., 2}.
      f64x2.sub(m, f64x2.mul(f64x2.nearest(f64x2.mul(m, 0.25)), 4)),
    ];
  });
  f.set(r, rv);
  f.set(q, qv);
  f.set(r2, f32x4.mul(r, r));
  const sin = f32x4.add(r, f32x4.mul(f32x4.mul(r, r2), hornerV(f, r2, SIN_S)));
  const cos = f32x4.add(f32x4.sub(1, f32x4.mul(r2, 0.5)), f32x4.mul(f32x4.mul(r2, r2), hornerV(f, r2, COS_C)));
  // Odd quadrants take the cosine; q = ±2 and q = -1 (3 mod 4) negate.
  f.set(out, v128.bitselect(cos, sin, f32x4.eq(absV(q), 1)));
  f.set(out, v128.xor(out, v128.and(v128.or(f32x4.eq(absV(q), 2), f32x4.eq(q, -1)), SIGN_F32)));
  if (!shift) f.set(out, v128.bitselect(x, out, f32x4.eq(x, 0)));
  return out;
}

/** 2^k for integer-valued k in [-1022, 1023] (f64x2), from its exponent bits (k by the 1.5 * 2^52 trick). */
function pow2D(k: Operand): Expr {
  const kf = f64x2.add(k, 6755399441055744);
  return i64x2.shl(i64x2.add(i64x2.sub(kf, f64Lanes(0, 0x43380000)), f64Lanes(1023, 0)), 52);
}

/**
 * x ** p with C's rules, as the closures' powC, for f64x2 x and p (one exponent per lane: the
 * binary op's, or powScalar's splatted). |x|^p = 2^(p e) e^(p log m) with |x| = 2^e m, m in
 * [sqrt(1/2), sqrt(2)): p e is exact (24 x 9 bits), so its integer part goes to the exponent and
 * only its fraction and p log m (at most 0.35 |p|) enter the exponential, which keeps the error
 * at a few float64 ulps however large p log |x| is. Where |p e| > 600 (so e != 0) the power is
 * beyond 2^300 or below 2^-300: Inf or 0 by the sign of p e. Lanes with a whole p,
 * 1 <= |p| <= POW_PRODUCT_MAX, take powWholeD's products instead, and lanes with p = 0.5 and
 * x >= -0 a square root (see there): each lane's result is the closure's where that is exact.
 */
function powD(f: FuncBuilder, x: Local, p: Local): Local {
  const [ax, pe, k, half, t, mag, whole, odd, ap, products, out] = f.localsOf(V128, 11);
  f.set(ax, f64x2.abs(x));
  const { m, e } = splitD(f, ax);
  f.set(pe, f64x2.mul(p, e));
  f.set(k, f64x2.nearest(f64x2.pmin(f64x2.pmax(pe, -600), 600)));
  f.set(t, f64x2.add(f64x2.mul(p, logD(f, m)), f64x2.mul(f64x2.sub(pe, k), Math.LN2)));
  f.set(half, f64x2.nearest(f64x2.mul(k, 0.5)));
  f.set(mag, f64x2.mul(f64x2.mul(expD(f, t), pow2D(half)), pow2D(f64x2.sub(k, half))));
  // Inf where p e (or, for the specials, p log |x|) is positive, 0 where negative: |p e| > 600, a
  // zero or infinite base, an infinite exponent (|x| = 1 is taken care of below).
  const toInf = v128.not(v128.xor(f64x2.gt(ax, 1), f64x2.gt(p, 0)));
  const special = v128.or(v128.or(f64x2.gt(f64x2.abs(pe), 600), f64x2.eq(ax, 0)), v128.or(f64x2.eq(ax, Infinity), f64x2.eq(f64x2.abs(p), Infinity)));
  f.set(mag, v128.bitselect(v128.bitselect(F64_INF, F64_ZERO, toInf), mag, special));
  // A negative base keeps its sign under an odd whole exponent (|p| < 2^24: every float32 beyond is even).
  f.set(whole, f64x2.eq(f64x2.nearest(p), p));
  f.set(odd, v128.and(whole, f64x2.ne(f64x2.mul(f64x2.nearest(f64x2.mul(p, 0.5)), 2), p)));
  f.set(out, v128.xor(mag, v128.and(v128.and(x, F64_SIGN), odd)));
  f.set(ap, f64x2.abs(p));
  f.set(products, v128.and(whole, v128.and(f64x2.ge(ap, 1), f64x2.le(ap, POW_PRODUCT_MAX))));
  f.set(out, v128.bitselect(powWholeD(f, x, p, ap, POW_PRODUCT_MAX), out, products));
  // sqrt(-0) + 0 = +0 as pow(-0, 0.5); a negative or NaN x keeps the general form (NaN; Inf for -Inf).
  f.set(out, v128.bitselect(f64x2.add(f64x2.sqrt(x), 0), out, v128.and(f64x2.eq(p, 0.5), f64x2.ge(x, 0))));
  // NaN for a NaN operand and for a negative finite base under a fractional exponent.
  f.set(out, v128.bitselect(F64_NAN, out, v128.or(v128.or(f64x2.ne(x, x), f64x2.ne(p, p)), v128.andnot(v128.and(f64x2.lt(x, 0), f64x2.gt(x, -Infinity)), whole))));
  // pow(x, 0) = pow(1, p) = 1 even for NaN, and (-1)^±Inf = 1.
  f.set(out, v128.bitselect(F64_ONE, out, v128.or(v128.or(f64x2.eq(p, 0), f64x2.eq(x, 1)), v128.and(f64x2.eq(x, -1), f64x2.eq(ap, Infinity)))));
  return out;
}

const F64_ONE = f64Lanes(0, 0x3ff00000);

/**
 * The largest |p| whose whole powers are products (binary powering: squarings of x, each
 * multiplied in where p's bit is set; 1 / that for p < 0). Where x^p is a float64, which every
 * float32 tie (a 25-bit result: 31^5, 7.25^5) is, every partial product is one too, so the
 * result is exact and rounds to float32 as the closure's exact Math.pow does (fdlibm returns
 * representable powers exactly); the log-exp form's few ulps could round such a tie either way.
 * Otherwise the error is at most about |p| float64 ulps, far below a float32 ulp. A tie needs a
 * 25-bit power (|p| <= 15: 3^16 has 26 bits); up to 32 the products also keep exact the powers
 * of up to 53 bits, which could lie a few float64 ulps from a tie (3^33 is the last under 2^53).
 */
const POW_PRODUCT_MAX = 32;

/**
 * x ** p for a whole p with 1 <= |p| <= max (ap = |p|) by binary powering (see POW_PRODUCT_MAX):
 * x^2 exact, x^3 = x x^2 and x^4 = (x^2)^2 rounded once. Lanes outside the range compute values
 * the caller does not select. 0, Inf and signed zeros come out as C's pow gives them (products
 * keep the sign of an odd power; 1 / ±0 is ±Inf).
 */
function powWholeD(f: FuncBuilder, x: Local, p: Local, ap: Local, max: number): Local {
  const [acc, sq, q, next] = f.localsOf(V128, 4);
  f.set(acc, F64_ONE);
  f.set(sq, x);
  f.set(q, ap);
  const bits = Math.floor(Math.log2(max)) + 1;
  for (let j = 0; j < bits; j++) {
    // Bit j of |p| is q's lowest: q odd where floor(q / 2) * 2 != q.
    f.set(next, f64x2.floor(f64x2.mul(q, 0.5)));
    f.set(acc, v128.bitselect(f64x2.mul(acc, sq), acc, f64x2.ne(f64x2.add(next, next), q)));
    if (j < bits - 1) {
      f.set(sq, f64x2.mul(sq, sq));
      f.set(q, next);
    }
  }
  f.set(acc, v128.bitselect(f64x2.div(1, acc), acc, f64x2.lt(p, 0)));
  return acc;
}

/**
 * powD where every lane's p is whole with |p| <= max: its products and the special cases that
 * remain for such p (NaN for a NaN base, 1 for x = 1 and for p = 0, which the products give
 * but for a NaN base), the same bits without its log and exp.
 */
function powWholeOnlyD(f: FuncBuilder, x: Local, p: Local, max: number): Local {
  const [ap, out] = f.localsOf(V128, 2);
  f.set(ap, f64x2.abs(p));
  f.set(out, v128.bitselect(F64_NAN, powWholeD(f, x, p, ap, max), f64x2.ne(x, x)));
  f.set(out, v128.bitselect(F64_ONE, out, v128.or(f64x2.eq(x, 1), f64x2.eq(p, 0))));
  return out;
}

/**
 * The float32 pow of powScalar (b splatted) and of the binary op (one exponent per lane), the
 * closure's powC rounded once. Per vector, where every lane's exponent allows, a cheaper form of
 * the same bits: p = 0.5 is float32's sqrt (the closure's Math.pow(x, 0.5) equals Math.sqrt(x)
 * for x >= +0 under V8, fdlibm's pow special-cases it, and float64 sqrt rounded to float32 is
 * float32's sqrt; pow(-0, 0.5) = +0 is sqrt(-0) + 0 and pow(-Inf, 0.5) = Inf; other negatives
 * give NaN either way), whole exponents up to 4 in magnitude three bits of products, up to
 * POW_PRODUCT_MAX all of them (p = 0 among them); other vectors (lanes of mixed kinds too) take powD.
 */
function powV(f: FuncBuilder, a: Local, b: Local): Local {
  const [ab, whole, out] = f.localsOf(V128, 3);
  f.set(ab, absV(b));
  // Whole, 0 included (not NaN; ±Inf is whole but beyond every bound below).
  f.set(whole, f32x4.eq(f32x4.nearest(b), b));
  const every = (mask: Operand) => i32.eq(anyLane(mask), 15);
  const inF64 = (body: (f: FuncBuilder, x: Local, p: Local) => Local) => inF64Halves(f, [a, b], ([x, p]) => [body(f, x, p)])[0];
  f.if(
    every(f32x4.eq(b, 0.5)),
    () => f.set(out, v128.bitselect(f32x4.splat(f32.const(Infinity)), f32x4.add(f32x4.sqrt(a), 0), f32x4.eq(a, -Infinity))),
    () =>
      f.if(
        every(v128.and(whole, f32x4.le(ab, 4))),
        () => f.set(out, inF64((f, x, p) => powWholeOnlyD(f, x, p, 4))),
        () =>
          f.if(
            every(v128.and(whole, f32x4.le(ab, POW_PRODUCT_MAX))),
            () => f.set(out, inF64((f, x, p) => powWholeOnlyD(f, x, p, POW_PRODUCT_MAX))),
            () => f.set(out, inF64(powD)),
          ),
      ),
  );
  return out;
}

export const UNARY_F32_BODIES: Record<(typeof SIMD_UNARY_F32)[number], VecBody> = {
  neg: (_f, [x]) => f32x4.neg(x),
  abs: (_f, [x]) => absV(x),
  sqrt: (_f, [x]) => f32x4.sqrt(x),
  rsqrt: (_f, [x]) => f32x4.div(1, f32x4.sqrt(x)),
  square: (_f, [x]) => f32x4.mul(x, x),
  reciprocal: (_f, [x]) => f32x4.div(1, x),
  // pmax(x, 0) = x < 0 ? 0 : x keeps relu(NaN) = NaN, as the CPU closure does.
  relu: (_f, [x]) => f32x4.pmax(x, 0),
  affine: (_f, [x], [p0, p1]) => f32x4.add(f32x4.mul(p0, x), p1),
  // Selects rather than min/max, to keep the CPU closure's answer when p0 > p1.
  clamp: (_f, [x], [p0, p1]) => v128.bitselect(p0, v128.bitselect(p1, x, f32x4.gt(x, p1)), f32x4.lt(x, p0)),
  // Inclusive bounds, as the CPU closure and PyTorch's clamp gradient (NaN is outside).
  insideMask: (_f, [x], [p0, p1]) => v128.and(f32x4.splat(f32.const(1)), v128.and(f32x4.ge(x, p0), f32x4.le(x, p1))),
  exp: (f, [x]) => expV(f, x),
  // e = e^-|x|: 1 / (1 + e) for x >= 0 and e / (1 + e) below, so that far left the result is
  // e^x (down to the subnormals) instead of 1 / (1 + inf) = 0.
  sigmoid: (f, [x]) => {
    const e = f.local(V128);
    const r = f.local(V128);
    f.set(e, expV(f, negAbs(x)));
    f.set(r, f32x4.div(1, f32x4.add(1, e)));
    return v128.bitselect(f32x4.mul(e, r), r, f32x4.lt(x, 0));
  },
  floor: (_f, [x]) => f32x4.floor(x),
  ceil: (_f, [x]) => f32x4.ceil(x),
  // nearest rounds half to even, as torch.round.
  round: (_f, [x]) => f32x4.nearest(x),
  leakyRelu: (_f, [x], [p0]) => v128.bitselect(x, f32x4.mul(p0, x), f32x4.gt(x, 0)),
  // Vectors with every |x| in [1e-20, 20] (no NaN) need neither the n > 30 form nor the pass-through.
  expm1: withFastPath(
    (_f, x) => v128.not(v128.and(f32x4.ge(absV(x), 1e-20), f32x4.le(x, 20))),
    (f, [x]) => expm1V(f, x, { upTo20: true, noPassThrough: true }),
    (f, [x]) => expm1V(f, x),
  ),
  log: withFastPath(notPositiveNormal, (f, [x]) => logV(f, x, true), (f, [x]) => logV(f, x)),
  log1p: withFastPath(
    (f, x) => {
      const onePlus = f.local(V128);
      f.set(onePlus, f32x4.add(x, 1));
      return notPositiveNormal(f, onePlus);
    },
    (f, [x]) => log1pV(f, x, true),
    (f, [x]) => log1pV(f, x),
  ),
  tanh: (f, [x]) => tanhV(f, x),
  silu: withFastPath((_f, x) => v128.or(f32x4.lt(x, -17), f32x4.gt(x, 87)), (f, [x]) => siluV(f, x, true), (f, [x]) => siluV(f, x)),
  // max(x, 0) + log1p(e^-|x|); pmax keeps NaN. e is in [0, 1] (NaN only where x is NaN, and the
  // sum is NaN then), where log1p's series alone is accurate; below 1e-20 log1p(e) is e (the
  // series' e / 2 would drop a subnormal's last bit).
  softplus: (f, [x]) => {
    const e = expV(f, negAbs(x));
    return f32x4.add(f32x4.pmax(x, 0), v128.bitselect(e, log1pSeriesV(f, e), f32x4.lt(e, 1e-20)));
  },
  // Lanes with x > 0 keep x: expm1 is needed up to 0 only.
  elu: (f, [x], [p0]) => v128.bitselect(x, f32x4.mul(p0, expm1V(f, x, { upTo20: true })), f32x4.gt(x, 0)),
  // The closure's x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), its exponent computed by the same
  // float64 operations in the same order, so that it is bit for bit the closure's; geluTanh(Inf) = Inf.
  geluTanh: viaF64((f, x) => {
    const w = f.local(V128);
    const out = f.local(V128);
    f.set(w, f64x2.mul(2 * SQRT_2_OVER_PI, f64x2.add(x, f64x2.mul(f64x2.mul(f64x2.mul(x, 0.044715), x), x))));
    f.set(out, v128.bitselect(x, f64x2.mul(x, sigmoidD(f, w)), f64x2.eq(x, Infinity)));
    return out;
  }),
  erf: (f, [x]) => erfV(f, x),
  // Vectors with every |x| < 1.767 (so |x| / sqrt 2 < 1.25, no NaN: most of a network's
  // activations) need erfc's two near forms only, the same bits.
  geluErf: withFastPath((_f, x) => v128.not(f32x4.lt(absV(x), 1.767)), viaF64((f, x) => geluErfD(f, x, true)), viaF64((f, x) => geluErfD(f, x))),
  sin: (f, [x]) => trigV(f, x, 0),
  cos: (f, [x]) => trigV(f, x, 1),
  // p is one value per call, so powV's per-vector forms always go the same way.
  powScalar: (f, [x], [p0]) => powV(f, x, p0),
  // sign(NaN) = sign(±0) = 0, as the closure and PyTorch.
  sign: (_f, [x]) => v128.or(v128.and(f32x4.gt(x, 0), f32x4.splat(f32.const(1))), v128.and(f32x4.lt(x, 0), f32x4.splat(f32.const(-1)))),
};

/**
 * The float32 unary kernels run two vectors a turn (elementwise's `pairs`): 1.1-1.4x for most
 * bodies (sin, tanh, geluTanh, softplus, the one-instruction ones), measured by their bench in
 * one process; these two were 2-6% slower so, and keep one vector a turn.
 */
const UNARY_SINGLE_VECTOR: ReadonlySet<(typeof SIMD_UNARY_F32)[number]> = new Set(['exp', 'sigmoid'] as const);

/** The float32 kernel of a unary op as the module holds it (bench/unary.bench.ts counts its instructions). */
export function emitUnaryF32(mb: ModuleBuilder, op: (typeof SIMD_UNARY_F32)[number], name = unaryExport(op, 'f32')): void {
  emitUnary(mb, name, UNARY_F32_BODIES[op], { limit: SIMD_UNARY_LIMIT[op], pairs: !UNARY_SINGLE_VECTOR.has(op) });
}

/** The ops whose SIMD body covers |x| <= limit only; the wasm backend finishes the rest with the closure. */
export const SIMD_UNARY_LIMIT: Partial<Record<(typeof SIMD_UNARY_F32)[number], number>> = { sin: TRIG_SIMD_LIMIT, cos: TRIG_SIMD_LIMIT };

/**
 * Time per element of the compute-bound elementwise kernels over copy's, in cache: copy's GB/s
 * over the op's in bench/results/unary.md (one thread, 2^20 floats; pow from its binary table,
 * per element). A call of such an op is split as a memory-bound call of `cost` times its elements
 * and bytes: the ViT's exact GELU over 35 K floats takes copy's time for 45 MB, and ran on one
 * thread under the 2 MB floor meant for copies. Ops not listed run at about copy's speed.
 */
export const ELEMENTWISE_COST: Partial<Record<string, number>> = {
  exp: 9, expm1: 15, log: 16, log1p: 22, sqrt: 3, rsqrt: 5, reciprocal: 2, elu: 14, silu: 16, tanh: 13, sigmoid: 14,
  softplus: 27, geluTanh: 44, geluErf: 160, erf: 30, sin: 17, cos: 16, pow: 150,
};

const UNARY_I32_BODIES: Record<(typeof SIMD_UNARY_I32)[number], VecBody> = {
  neg: (_f, [x]) => i32x4.neg(x),
  abs: (_f, [x]) => i32x4.abs(x),
  square: (_f, [x]) => i32x4.mul(x, x),
  // 1 for x > 0 and -1 (all ones) for x < 0.
  sign: (_f, [x]) => v128.or(v128.and(i32x4.gtS(x, 0), v128.i32x4([1, 1, 1, 1])), i32x4.ltS(x, 0)),
};

/** The bool-valued ops: each lane 1 or 0. logicalNot counts NaN as nonzero (false), as PyTorch. */
const ONES = () => v128.i32x4([1, 1, 1, 1]);
export const UNARY_BOOL_F32_BODIES: Record<(typeof SIMD_UNARY_BOOL_F32)[number], VecBody> = {
  isnan: (_f, [x]) => v128.and(f32x4.ne(x, x), ONES()),
  // On the bits of |x| (Inf's are 0x7f800000, NaN's above): V8 builds f32x4.abs's mask in the loop.
  isinf: (_f, [x]) => v128.and(i32x4.eq(v128.and(x, ABS_F32), v128.i32x4(lanes(0x7f800000))), ONES()),
  isfinite: (_f, [x]) => v128.and(i32x4.ltS(v128.and(x, ABS_F32), v128.i32x4(lanes(0x7f800000))), ONES()),
  logicalNot: (_f, [x]) => v128.and(f32x4.eq(x, 0), ONES()),
};
const UNARY_BOOL_I32_BODIES: Record<(typeof SIMD_UNARY_BOOL_I32)[number], VecBody> = {
  logicalNot: (_f, [x]) => v128.and(i32x4.eq(x, 0), ONES()),
};

export type PairOp = (a: Operand, b: Operand) => Expr;

export const BINARY_F32: Record<(typeof SIMD_BINARY_F32)[number], PairOp> = {
  add: f32x4.add,
  sub: f32x4.sub,
  mul: f32x4.mul,
  div: f32x4.div,
  // The CPU closures' a > b ? a : b and a < b ? a : b (b where they are equal: maximum(0, -0) is
  // -0) are pmax(b, a) and pmin(b, a), one vmaxps / vminps each; those give b where a is NaN, so
  // a's NaN lanes are set to all ones (a NaN; a NaN b passes through as it is). 3 instructions
  // against f32x4.max's 8, which also returned +0 for maximum(0, -0). NaN bits are not the
  // closures' 0x7fc00000 (f32x4.min gave 0xffc00000 before): selecting that NaN takes 5
  // instructions, measured at 0.68 and 0.74 of copy over [26214, 10] + [1, 10] (maximum) and
  // [1024, 256] + [1, 256] (minimum) where this form ran at 0.81 and 0.90 (interleaved with copy).
  maximum: (a, b) => v128.or(f32x4.pmax(b, a), f32x4.ne(a, a)),
  minimum: (a, b) => v128.or(f32x4.pmin(b, a), f32x4.ne(a, a)),
};

export const COMPARE_F32: Record<(typeof SIMD_COMPARE)[number], PairOp> = {
  eq: f32x4.eq,
  ne: f32x4.ne,
  lt: f32x4.lt,
  le: f32x4.le,
  gt: f32x4.gt,
  ge: f32x4.ge,
  logicalAnd: (a, b) => v128.and(f32x4.ne(a, 0), f32x4.ne(b, 0)),
  logicalOr: (a, b) => v128.or(f32x4.ne(a, 0), f32x4.ne(b, 0)),
  logicalXor: (a, b) => v128.xor(f32x4.ne(a, 0), f32x4.ne(b, 0)),
};

export const COMPARE_I32: Record<(typeof SIMD_COMPARE)[number], PairOp> = {
  eq: i32x4.eq,
  ne: i32x4.ne,
  lt: i32x4.ltS,
  le: i32x4.leS,
  gt: i32x4.gtS,
  ge: i32x4.geS,
  logicalAnd: (a, b) => v128.and(i32x4.ne(a, 0), i32x4.ne(b, 0)),
  logicalOr: (a, b) => v128.or(i32x4.ne(a, 0), i32x4.ne(b, 0)),
  logicalXor: (a, b) => v128.xor(i32x4.ne(a, 0), i32x4.ne(b, 0)),
};

export const BINARY_I32: Record<(typeof SIMD_BINARY_I32)[number], PairOp> = {
  add: i32x4.add,
  sub: i32x4.sub,
  mul: i32x4.mul,
  maximum: i32x4.maxS,
  minimum: i32x4.minS,
};

/**
 * unary_<op>_<dtype>(x, out, n, p0, p1); with `limit`, it returns 1 when some finite |x| exceeds
 * it, else 0, and those lanes of out hold x for the caller to finish. `outBool` writes one byte per
 * element; `pairs` runs two vectors a turn.
 */
export function emitUnary(mb: ModuleBuilder, name: string, body: VecBody, opts: { limit?: number; outBool?: boolean; pairs?: boolean } = {}): void {
  const { limit, outBool, pairs } = opts;
  mb.func(name, [I32, I32, I32, F32, F32], limit === undefined ? [] : [I32], (f, x, out, n, p0, p1) => {
    const p = [f.local(V128), f.local(V128)];
    const beyond = f.local(V128);
    f.set(p[0], f32x4.splat(p0));
    f.set(p[1], f32x4.splat(p1));
    elementwise(f, n, [{ ptr: x }], { ptr: out, bool: outBool }, (xs) => {
      if (limit === undefined) return body(f, xs, p);
      // Lanes beyond the limit pass x through, so that the caller finds them in the output even
      // when it overwrote x (the ops with a limit never return more than it).
      const ax = absV(xs[0]);
      const mask = f.local(V128);
      f.set(mask, v128.and(f32x4.gt(ax, limit), f32x4.lt(ax, Infinity)));
      f.set(beyond, v128.or(beyond, mask));
      return v128.bitselect(xs[0], body(f, xs, p), mask);
    }, pairs);
    if (limit !== undefined) f.push(v128.anyTrue(beyond));
  });
}

/**
 * Vectors a turn of the row kernels' main loop (elementwise's `bumped`). 8 made the bool-valued
 * kernels 1.4x slower (64 bools a turn: their operands no longer fit the 16 vector registers)
 * and add no faster (2^18 floats, same shape and row biases).
 */
const ROW_KERNEL_VECTORS = 4;

/**
 * A row kernel over broadcast operands: name(p_0..p_k-1, out, outer, rows, cols,
 * rowStride_0..k-1, outerStride_0..k-1) with out a contiguous [outer, rows, cols] and operand j
 * advancing by rowStride_j elements per row (0 repeats a row: a bias add) and by outerStride_j per
 * block of rows (a per-channel bias over NCHW is one call: outer N, rows C, cols H*W, the bias's
 * strides 1 and 0). `variant` has one letter per operand: 'v' runs along the row, 's' is one value
 * per row (a column broadcast).
 */
function emitRowKernel(mb: ModuleBuilder, name: string, operands: { bool?: boolean }[], variant: string, outBool: boolean, body: (xs: Local[]) => Operand): void {
  const k = operands.length;
  mb.func(name, Array<ValType>(3 * k + 4).fill(I32), [], (f, ...params) => {
    const bases = params.slice(0, k);
    const streams: Stream[] = operands.map((o, j) => ({ ptr: f.local(I32), bool: o.bool, splat: variant[j] === 's' }));
    const [out, outer, rows, cols] = params.slice(k, k + 4);
    const rowStrides = params.slice(k + 4, 2 * k + 4);
    const outerStrides = params.slice(2 * k + 4);
    const bytes = (j: number, elements: Operand) => (operands[j].bool ? elements : i32.shl(elements, 2));
    const [o, r] = f.localsOf(I32, 2);
    f.for(o, 0, outer, 1, () => {
      streams.forEach((s, j) => f.set(s.ptr, i32.add(bases[j], bytes(j, i32.mul(o, outerStrides[j])))));
      f.for(r, 0, rows, 1, () => {
        elementwise(f, cols, streams, { ptr: out, bool: outBool }, body, false, ROW_KERNEL_VECTORS);
        streams.forEach((s, j) => f.inc(s.ptr, bytes(j, rowStrides[j])));
        f.inc(out, outBool ? cols : i32.shl(cols, 2));
      });
    });
  });
}

/** Horizontal reduction of the 4 lanes of a f32x4 with a scalar op. */
export function lanes4(v: Local, op: (a: Operand, b: Operand) => Expr): Expr {
  const lane = (k: number) => f32x4.extractLane(v, k);
  return op(op(lane(0), lane(1)), op(lane(2), lane(3)));
}

/**
 * row_max / row_min(ptr, n) -> f32 over n contiguous floats; NaN wins; empty gives -inf / inf.
 * The running extreme uses pmax/pmin (NaNs in x are ignored there) and NaNs are tracked apart:
 * a third of the instructions of the NaN-propagating max, which V8 expands to about eight.
 */
function emitRowExtreme(mb: ModuleBuilder, which: 'max' | 'min'): FuncRef {
  const pick = which === 'max' ? f32x4.pmax : f32x4.pmin;
  return mb.func(`row_${which}`, [I32, I32], [F32], (f, ptr, n) => {
    const acc = f.local(V128);
    const init = f.local(V128);
    const nan = f.local(V128);
    const x = f.local(V128);
    const i = f.local(I32);
    const take = () => {
      f.set(acc, pick(acc, x));
      f.set(nan, v128.or(nan, f32x4.ne(x, x)));
    };
    f.set(init, f32x4.splat(f32.const(which === 'max' ? -Infinity : Infinity)));
    f.set(acc, init);
    f.set(nan, f32x4.splat(f32.const(0)));
    f.for(i, 0, i32.sub(n, 3), 4, () => {
      f.set(x, v128.load(i32.add(ptr, i32.shl(i, 2))));
      take();
    });
    f.if(i32.ltS(i, n), () => {
      f.set(x, v128.bitselect(v128.load(i32.add(ptr, i32.shl(i32.sub(n, 4), 2))), init, tailMask(i32.sub(n, i))));
      take();
    });
    f.set(acc, pick(acc, v128.shuffle(acc, acc, [8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7])));
    f.set(acc, pick(acc, v128.shuffle(acc, acc, [4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11])));
    f.push(select(f32.const(NaN), f32x4.extractLane(acc, 0), v128.anyTrue(nan), F32));
  }, { exported: false });
}

/**
 * row_sum(ptr, n) -> f64 over n contiguous floats, accumulated in f64 (two f64x2 per f32x4) so
 * that long sums keep the CPU reference's accuracy; summation is memory-bound either way.
 */
function emitRowSum(mb: ModuleBuilder): FuncRef {
  return mb.func('row_sum', [I32, I32], [F64], (f, ptr, n) => {
    const lo = f.local(V128);
    const hi = f.local(V128);
    const x = f.local(V128);
    const tail = f.local(F64);
    const i = f.local(I32);
    f.set(lo, f64x2Zero());
    f.set(hi, f64x2Zero());
    f.for(i, 0, i32.sub(n, 3), 4, () => {
      f.set(x, v128.load(i32.add(ptr, i32.shl(i, 2))));
      f.set(lo, f64x2.add(lo, f64x2.promoteLowF32x4(x)));
      f.set(hi, f64x2.add(hi, f64x2.promoteLowF32x4(v128.shuffle(x, x, HIGH_HALF))));
    });
    f.set(tail, 0);
    f.for(i, i, n, 1, () => f.set(tail, f64.add(tail, f64.promoteF32(f32.load(i32.add(ptr, i32.shl(i, 2)))))));
    f.set(lo, f64x2.add(lo, hi));
    f.push(f64.add(f64.add(f64x2.extractLane(lo, 0), f64x2.extractLane(lo, 1)), tail), F64);
  }, { exported: false });
}

/** Byte lanes that move floats 2, 3 of a vector into lanes 0, 1. */
const HIGH_HALF = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];

function f64x2Zero(): Expr {
  return f64x2.promoteLowF32x4(f32x4.splat(f32.const(0)));
}

/**
 * row_sum_exp(ptr, n, shift) -> f32: the sum of exp(x - shift); row_exp_store(ptr, n, shift, out)
 * also stores each exp(x - shift) to out (softmax keeps them and scales).
 */
function emitRowSumExp(mb: ModuleBuilder, store: boolean): FuncRef {
  const params = store ? [I32, I32, F32, I32] : [I32, I32, F32];
  return mb.func(store ? 'row_exp_store' : 'row_sum_exp', params, [F32], (f, ptr, n, shift, out) => {
    const acc = f.local(V128);
    const e = f.local(V128);
    const s = f.local(V128);
    const i = f.local(I32);
    const rem = f.local(I32);
    const at = (p: Local, q: Operand) => i32.add(p, i32.shl(q, 2));
    f.set(s, f32x4.splat(shift));
    f.set(acc, f32x4.splat(f32.const(0)));
    f.for(i, 0, i32.sub(n, 3), 4, () => {
      f.set(e, expV(f, f32x4.sub(v128.load(at(ptr, i)), s)));
      if (store) f.exec(v128.store(at(out, i), e));
      f.set(acc, f32x4.add(acc, e));
    });
    f.set(rem, i32.sub(n, i));
    f.if(rem, () => {
      f.set(e, expV(f, f32x4.sub(v128.load(at(ptr, i32.sub(n, 4))), s)));
      if (store) storeTail(f, at(out, i32.sub(n, 4)), e, rem);
      f.set(acc, f32x4.add(acc, v128.and(e, tailMask(rem))));
    });
    f.push(lanes4(acc, f32.add), F32);
  }, { exported: false });
}

/**
 * Log-sum-exp of a row as the CPU reference computes it: max + log(sum exp(x - max)), or the max
 * itself when that is infinite or NaN.
 */
function rowLogSumExp(f: FuncBuilder, fns: RowFns, row: Operand, cols: Operand, rowMax?: Local): Local {
  const mx = rowMax ?? f.local(F32);
  const lse = f.local(F64);
  if (!rowMax) setShiftMax(f, fns, mx, row, cols);
  f.if(
    f32.lt(f32.abs(mx), Infinity),
    () => f.set(lse, f64.add(f64.promoteF32(mx), call(fns.log, call(fns.rowSumExp, row, cols, mx)))),
    () => f.set(lse, f64.promoteF32(mx)),
  );
  return lse;
}

interface RowFns {
  log: FuncRef;
  rowMax: FuncRef;
  rowMin: FuncRef;
  rowSum: FuncRef;
  rowSumExp: FuncRef;
  rowExpStore: FuncRef;
}

/**
 * mx = the row's max as the shift of softmax and its kin, with +inf read as NaN: PyTorch's
 * x - max is then inf - inf = NaN, which makes the whole row NaN (the CPU's rowLogSumExp rule).
 */
function setShiftMax(f: FuncBuilder, fns: RowFns, mx: Local, row: Operand, cols: Operand): void {
  f.set(mx, call(fns.rowMax, row, cols));
  f.set(mx, select(f32.const(NaN), mx, f32.eq(mx, Infinity), F32));
}

/**
 * softmax(x, out, rows, cols, log): out = exp(x - lse) or x - lse per row. With a finite row max,
 * softmax keeps the exponentials of the sum pass and scales them by 1 / sum. logSoftmax is
 * (x - max) - log(sum): subtracting a float32 lse instead would lose the bits of lse's rounding
 * (an ulp of the max, 6e-5 for logits near 1000, against PyTorch's few ulps of the result).
 */
function emitSoftmax(mb: ModuleBuilder, fns: RowFns): void {
  mb.func('softmax', [I32, I32, I32, I32, I32], [], (f, x, out, rows, cols, isLog) => {
    const r = f.local(I32);
    const mx = f.local(F32);
    const v = f.local(V128);
    const shift = f.local(V128);
    f.for(r, 0, rows, 1, () => {
      setShiftMax(f, fns, mx, x, cols);
      f.if(
        i32.and(f32.lt(f32.abs(mx), Infinity), i32.eqz(isLog)),
        () => {
          f.set(v, f32x4.splat(f32.div(1, call(fns.rowExpStore, x, cols, mx, out))));
          elementwise(f, cols, [{ ptr: out }], { ptr: out }, ([e]) => f32x4.mul(e, v));
        },
        () => {
          // lse = mx + log(sum exp(x - mx)), or mx itself when mx is infinite or NaN (the CPU rule).
          f.set(shift, f32x4.splat(mx));
          f.set(v, f32x4.splat(f32.const(0)));
          f.if(f32.lt(f32.abs(mx), Infinity), () => f.set(v, f32x4.splat(f32.demoteF64(call(fns.log, call(fns.rowSumExp, x, cols, mx))))));
          f.if(
            isLog,
            () => elementwise(f, cols, [{ ptr: x }], { ptr: out }, ([e]) => f32x4.sub(f32x4.sub(e, shift), v)),
            () => elementwise(f, cols, [{ ptr: x }], { ptr: out }, ([e]) => expV(f, f32x4.sub(f32x4.sub(e, shift), v))),
          );
        },
      );
      f.inc(x, i32.shl(cols, 2));
      f.inc(out, i32.shl(cols, 2));
    });
  });
}

/**
 * cross_entropy(x, labels, out, rows, cols, smoothing, ignore): per-row loss
 * (1-s)(lse - x[y]) + s (lse - mean(x)), NaN for a label outside [0, cols), 0 for the label
 * `ignore` (which may be a class: it is applied last, over whatever the row computed).
 */
function emitCrossEntropy(mb: ModuleBuilder, fns: RowFns, withSum = false): void {
  // cross_entropy_sum(..., total): the per-row losses and their sum, as reduce_rows_sum sums them
  // (a captured step's loss: src/compile/fuse-reduce.ts); the plain kernel's code is as it was.
  const params = [I32, I32, I32, I32, I32, F32, I32, ...(withSum ? [I32] : [])];
  mb.func(withSum ? 'cross_entropy_sum' : 'cross_entropy', params, [], (f, x, labels, out, rows, cols, s, ignore, total) => {
    const out0 = withSum ? f.local(I32) : null;
    if (out0) f.set(out0, out);
    const r = f.local(I32);
    const y = f.local(I32);
    const lse = f.local(F64);
    const loss = f.local(F64);
    const sd = f.local(F64);
    f.set(sd, f64.promoteF32(s));
    f.for(r, 0, rows, 1, () => {
      f.set(y, i32.load(labels));
      f.if(
        i32.geU(y, cols),
        () => f.exec(f32.store(out, f32.const(NaN))),
        () => {
          f.set(lse, rowLogSumExp(f, fns, x, cols));
          f.set(loss, f64.mul(f64.sub(1, sd), f64.sub(lse, f64.promoteF32(f32.load(i32.add(x, i32.shl(y, 2)))))));
          f.if(f32.ne(s, 0), () =>
            f.set(loss, f64.add(loss, f64.mul(sd, f64.sub(lse, f64.div(call(fns.rowSum, x, cols), f64.convertI32S(cols)))))),
          );
          f.exec(f32.store(out, f32.demoteF64(loss)));
        },
      );
      f.if(i32.eq(y, ignore), () => f.exec(f32.store(out, f32.const(0))));
      f.inc(x, i32.shl(cols, 2));
      f.inc(labels, 4);
      f.inc(out, 4);
    });
    if (out0) f.exec(f32.store(total, f32.demoteF64(call(fns.rowSum, out0, rows))));
  });
}

/**
 * cross_entropy_backward(x, labels, grad, out, rows, cols, smoothing, ignore): (softmax - target) * grad[r],
 * a row of zeros for the label `ignore` (written last, over whatever the row computed).
 */
function emitCrossEntropyBackward(mb: ModuleBuilder, fns: RowFns, withSums = false): void {
  // cross_entropy_backward_sums(..., sums, scratch): also the column sums of out, as reduce_cols_sum
  // sums them, in `cols` doubles of scratch (a captured step's bias gradient of the last linear layer).
  const params = [I32, I32, I32, I32, I32, I32, F32, I32, ...(withSums ? [I32, I32] : [])];
  mb.func(withSums ? 'cross_entropy_backward_sums' : 'cross_entropy_backward', params, [], (f, x, labels, grad, out, rows, cols, s, ignore, sums, scratch) => {
    if (withSums) f.exec(memory.fill(scratch, 0, i32.shl(cols, 3)));
    const r = f.local(I32);
    const y = f.local(I32);
    const g = f.local(F32);
    const mx = f.local(F32);
    const shift = f.local(V128);
    const logSum = f.local(V128);
    const gv = f.local(V128);
    const smooth = f.local(V128);
    const labelAddr = f.local(I32);
    f.set(smooth, f32x4.splat(f32.div(s, f32.convertI32S(cols))));
    f.for(r, 0, rows, 1, () => {
      f.set(y, i32.load(labels));
      f.set(g, f32.load(grad));
      // softmax as exp((x - max) - log(sum)), as the softmax kernel: exp(x - lse) with a float32
      // lse would carry lse's rounding (an ulp of the max) into every probability.
      setShiftMax(f, fns, mx, x, cols);
      f.set(shift, f32x4.splat(mx));
      f.set(logSum, f32x4.splat(f32.const(0)));
      f.if(f32.lt(f32.abs(mx), Infinity), () => f.set(logSum, f32x4.splat(f32.demoteF64(call(fns.log, call(fns.rowSumExp, x, cols, mx))))));
      f.set(gv, f32x4.splat(select(g, f32.const(NaN), i32.ltU(y, cols), F32)));
      elementwise(f, cols, [{ ptr: x }], { ptr: out }, ([v]) => f32x4.mul(f32x4.sub(expV(f, f32x4.sub(f32x4.sub(v, shift), logSum)), smooth), gv));
      f.if(i32.ltU(y, cols), () => {
        f.set(labelAddr, i32.add(out, i32.shl(y, 2)));
        f.exec(f32.store(labelAddr, f32.sub(f32.load(labelAddr), f32.mul(f32.sub(1, s), g))));
      });
      f.if(i32.eq(y, ignore), () => f.exec(memory.fill(out, 0, i32.shl(cols, 2))));
      if (withSums) columnSums(f, out, scratch, cols);
      f.inc(x, i32.shl(cols, 2));
      f.inc(out, i32.shl(cols, 2));
      f.inc(labels, 4);
      f.inc(grad, 4);
    });
    if (withSums) {
      f.for(r, 0, cols, 1, () => f.exec(f32.store(i32.add(sums, i32.shl(r, 2)), f32.demoteF64(f64.load(i32.add(scratch, i32.shl(r, 3)))))));
    }
  });
}

/**
 * reduce_rows_<op>(x, out, outer, size): the reduced dim is innermost (inner = 1).
 * reduce_cols_<op>(x, out, outer, size, inner, scratch): vectors run along inner; the sum
 * accumulates in a f64 scratch row of `inner` doubles.
 */
function emitReductions(mb: ModuleBuilder, fns: RowFns): void {
  for (const op of ['sum', 'max', 'min'] as const) {
    mb.func(`reduce_rows_${op}`, [I32, I32, I32, I32], [], (f, x, out, outer, size) => {
      const a = f.local(I32);
      f.for(a, 0, outer, 1, () => {
        const value = op === 'sum' ? f32.demoteF64(call(fns.rowSum, x, size)) : call(op === 'max' ? fns.rowMax : fns.rowMin, x, size);
        f.exec(f32.store(out, value));
        f.inc(x, i32.shl(size, 2));
        f.inc(out, 4);
      });
    });
  }
  for (const op of ['max', 'min'] as const) {
    const vop = op === 'max' ? f32x4.max : f32x4.min;
    mb.func(`reduce_cols_${op}`, [I32, I32, I32, I32, I32], [], (f, x, out, outer, size, inner) => {
      const a = f.local(I32);
      const j = f.local(I32);
      const init = f.local(V128);
      f.set(init, f32x4.splat(f32.const(op === 'max' ? -Infinity : Infinity)));
      f.for(a, 0, outer, 1, () => {
        elementwise(f, inner, [], { ptr: out }, () => init);
        f.for(j, 0, size, 1, () => {
          elementwise(f, inner, [{ ptr: out }, { ptr: x }], { ptr: out }, ([acc, v]) => vop(acc, v));
          f.inc(x, i32.shl(inner, 2));
        });
        f.inc(out, i32.shl(inner, 2));
      });
    });
  }
  mb.func('reduce_cols_sum', [I32, I32, I32, I32, I32, I32], [], (f, x, out, outer, size, inner, scratch) => {
    const a = f.local(I32);
    const j = f.local(I32);
    const c = f.local(I32);
    const v = f.local(V128);
    const acc = f.local(I32);
    f.for(a, 0, outer, 1, () => {
      f.exec(memory.fill(scratch, 0, i32.shl(inner, 3)));
      f.for(j, 0, size, 1, () => {
        f.for(c, 0, i32.sub(inner, 3), 4, () => {
          f.set(v, v128.load(i32.add(x, i32.shl(c, 2))));
          f.set(acc, i32.add(scratch, i32.shl(c, 3)));
          f.exec(v128.store(acc, f64x2.add(v128.load(acc), f64x2.promoteLowF32x4(v))));
          f.exec(v128.store(acc, f64x2.add(v128.load(acc, 16), f64x2.promoteLowF32x4(v128.shuffle(v, v, HIGH_HALF))), 16));
        });
        f.for(c, c, inner, 1, () => {
          f.set(acc, i32.add(scratch, i32.shl(c, 3)));
          f.exec(f64.store(acc, f64.add(f64.load(acc), f64.promoteF32(f32.load(i32.add(x, i32.shl(c, 2)))))));
        });
        f.inc(x, i32.shl(inner, 2));
      });
      f.for(c, 0, inner, 1, () => f.exec(f32.store(i32.add(out, i32.shl(c, 2)), f32.demoteF64(f64.load(i32.add(scratch, i32.shl(c, 3)))))));
      f.inc(out, i32.shl(inner, 2));
    });
  });
}

/** axpy(dst, src, n, alpha): dst += alpha * src. */
function emitAxpy(mb: ModuleBuilder): void {
  mb.func('axpy', [I32, I32, I32, F32], [], (f, dst, src, n, alpha) => {
    const av = f.local(V128);
    f.set(av, f32x4.splat(alpha));
    elementwise(f, n, [{ ptr: dst }, { ptr: src }], { ptr: dst }, ([d, s]) => f32x4.add(d, f32x4.mul(av, s)));
  });
}

/** ceil(a / b) for b > 0 and any sign of a (i32.div_s truncates toward zero). */
export function ceilDiv(a: Local, b: Operand): Expr {
  return select(i32.divS(i32.add(a, i32.sub(b, 1)), b), i32.divS(a, b), i32.gtS(a, 0));
}

/** The window geometry parameters shared by im2col and col2im, after the two pointers. */
const WINDOW_PARAMS = Array<ValType>(14).fill(I32);

/**
 * The loop nest shared by im2col and col2im: for every row (image, channel, ki, kj) of the
 * column matrix and every output row oy, `run` gets the column-matrix row pointer, the input
 * row pointer of the first valid ox, the valid range [lo, hi) of ox, and whether the input row
 * y is inside the image at all.
 */
function windowLoops(
  f: FuncBuilder,
  x: Local,
  colsPtr: Local,
  g: Local[],
  run: (cols: Local, src: Local, lo: Local, hi: Local, rowInside: Expr) => void,
): void {
  const [n, c, h, w, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw] = g;
  const [plane, ki, kj, oy, y, xoff, lo, hi, t, src] = f.localsOf(I32, 10);
  f.for(plane, 0, i32.mul(n, c), 1, () => {
    f.for(ki, 0, kh, 1, () =>
      f.for(kj, 0, kw, 1, () => {
        f.set(xoff, i32.sub(i32.mul(kj, dw), pw));
        f.set(t, i32.sub(0, xoff));
        f.set(lo, ceilDiv(t, sw));
        f.set(lo, select(0, select(ow, lo, i32.gtS(lo, ow)), i32.ltS(lo, 0)));
        f.set(t, i32.sub(w, xoff));
        f.set(hi, ceilDiv(t, sw));
        f.set(hi, select(lo, select(ow, hi, i32.gtS(hi, ow)), i32.ltS(hi, lo)));
        f.for(oy, 0, oh, 1, () => {
          f.set(y, i32.add(i32.sub(i32.mul(oy, sh), ph), i32.mul(ki, dh)));
          f.set(src, i32.add(x, i32.shl(i32.add(i32.add(i32.mul(y, w), i32.mul(lo, sw)), xoff), 2)));
          run(colsPtr, src, lo, hi, i32.ltU(y, h));
          f.inc(colsPtr, i32.shl(ow, 2));
        });
      }),
    );
    f.inc(x, i32.shl(i32.mul(h, w), 2));
  });
}

function emitIm2col(mb: ModuleBuilder): void {
  mb.func('im2col', [I32, I32, ...WINDOW_PARAMS], [], (f, x, cols, ...g) => {
    const ow = g[7];
    const sw = g[9];
    const ox = f.local(I32);
    windowLoops(f, x, cols, g, (dst, src, lo, hi, inside) => {
      f.if(
        inside,
        () => {
          f.exec(memory.fill(dst, 0, i32.shl(lo, 2)));
          f.exec(memory.fill(i32.add(dst, i32.shl(hi, 2)), 0, i32.shl(i32.sub(ow, hi), 2)));
          f.if(
            i32.eq(sw, 1),
            () => f.exec(memory.copy(i32.add(dst, i32.shl(lo, 2)), src, i32.shl(i32.sub(hi, lo), 2))),
            () =>
              f.for(ox, lo, hi, 1, () => {
                f.exec(f32.store(i32.add(dst, i32.shl(ox, 2)), f32.load(src)));
                f.inc(src, i32.shl(sw, 2));
              }),
          );
        },
        () => f.exec(memory.fill(dst, 0, i32.shl(ow, 2))),
      );
    });
  });
}

function emitCol2im(mb: ModuleBuilder): void {
  mb.func('col2im', [I32, I32, ...WINDOW_PARAMS], [], (f, cols, out, ...g) => {
    const [n, c, h, w] = g;
    const sw = g[9];
    const ox = f.local(I32);
    const from = f.local(I32);
    f.exec(memory.fill(out, 0, i32.shl(i32.mul(i32.mul(n, c), i32.mul(h, w)), 2)));
    windowLoops(f, out, cols, g, (colsRow, dst, lo, hi, inside) => {
      f.if(inside, () => {
        f.set(from, i32.add(colsRow, i32.shl(lo, 2)));
        f.if(
          i32.eq(sw, 1),
          () => elementwise(f, i32.sub(hi, lo), [{ ptr: dst }, { ptr: from }], { ptr: dst }, ([o, v]) => f32x4.add(o, v)),
          () =>
            f.for(ox, lo, hi, 1, () => {
              f.exec(f32.store(dst, f32.add(f32.load(dst), f32.load(from))));
              f.inc(dst, i32.shl(sw, 2));
              f.inc(from, 4);
            }),
        );
      });
    });
  });
}

/** Shuffles the f32 lanes of two vectors: `lanes` index into a ++ b (0-3 from a, 4-7 from b). */
export function shuffle32(a: Operand, b: Operand, lanes: readonly number[]): Expr {
  return v128.shuffle(a, b, lanes.flatMap((l) => [4 * l, 4 * l + 1, 4 * l + 2, 4 * l + 3]));
}

/** Transposes in place the 4x4 block held in four vector locals (rows become columns). */
export function transpose4(f: FuncBuilder, x: Local[], tmp: Local[]): void {
  const [r0, r1, r2, r3] = x;
  const [t0, t1, t2, t3] = tmp;
  f.set(t0, shuffle32(r0, r1, [0, 4, 1, 5]));
  f.set(t1, shuffle32(r0, r1, [2, 6, 3, 7]));
  f.set(t2, shuffle32(r2, r3, [0, 4, 1, 5]));
  f.set(t3, shuffle32(r2, r3, [2, 6, 3, 7]));
  f.set(r0, shuffle32(t0, t2, [0, 1, 4, 5]));
  f.set(r1, shuffle32(t0, t2, [2, 3, 6, 7]));
  f.set(r2, shuffle32(t1, t3, [0, 1, 4, 5]));
  f.set(r3, shuffle32(t1, t3, [2, 3, 6, 7]));
}

/**
 * Packs `total` rows (or columns) of a matrix into panels of `width`: panel q holds, for each of
 * the kc steps p, the `width` values src[(q*width + r)*stepR + p*stepP], zero past `total`. The
 * micro-kernel then reads both operands sequentially. A full panel takes one vector per 4 values
 * when they are adjacent along r, and 4x4 transposes when they are adjacent along p (a row-major
 * A, a transposed B); what is left over goes one value at a time.
 */
function emitPack(mb: ModuleBuilder, name: string, width: number): FuncRef {
  return mb.func(name, [I32, I32, I32, I32, I32, I32], [], (f, src, stepR, stepP, total, kc, dst) => {
    const [q, r, p, pStart, rows, from] = f.localsOf(I32, 6);
    const block = f.localsOf(V128, 4);
    const tmp = f.localsOf(V128, 4);
    const at = (row: Operand, step: Operand) => i32.add(dst, i32.shl(i32.add(i32.mul(step, width), row), 2));
    f.for(q, 0, total, width, () => {
      f.set(rows, i32.sub(total, q));
      f.set(pStart, 0);
      f.if(i32.geS(rows, width), () =>
        f.if(
          i32.eq(stepR, 4),
          () => {
            f.set(from, src);
            f.for(p, 0, kc, 1, () => {
              for (let v = 0; v < width / 4; v++) f.exec(v128.store(at(4 * v, p), v128.load(from, 16 * v)));
              f.inc(from, stepP);
            });
            f.set(pStart, kc);
          },
          () =>
            f.if(i32.eq(stepP, 4), () => {
              f.for(p, 0, i32.sub(kc, 3), 4, () => {
                for (let g = 0; g < width / 4; g++) {
                  block.forEach((x, k) => f.set(x, v128.load(i32.add(i32.add(src, i32.shl(p, 2)), i32.mul(4 * g + k, stepR)))));
                  transpose4(f, block, tmp);
                  block.forEach((c, k) => f.exec(v128.store(at(4 * g, i32.add(p, k)), c)));
                }
              });
              f.set(pStart, p);
            }),
        ),
      );
      f.for(r, 0, width, 1, () => {
        f.set(from, i32.add(i32.add(src, i32.mul(r, stepR)), i32.mul(pStart, stepP)));
        f.if(
          i32.ltS(r, rows),
          () =>
            f.for(p, pStart, kc, 1, () => {
              f.exec(f32.store(at(r, p), f32.load(from)));
              f.inc(from, stepP);
            }),
          () => f.for(p, pStart, kc, 1, () => f.exec(f32.store(at(r, p), 0))),
        );
      });
      f.inc(dst, i32.mul(kc, width * 4));
      f.inc(src, i32.mul(stepR, width));
    });
  });
}

/**
 * The micro-kernel: C[mr x nr] (+)= Apanel[kc x mr]^T Bpanel[kc x nr], with mr*nr/4 f32x4
 * accumulators held in registers and A values broadcast straight from memory (load32_splat).
 * `accumulate` adds into C (every k block after the first). The k loop is deliberately not
 * unrolled: V8's register allocator spills the unrolled bodies, and on the machine this was
 * tuned on (Xeon, Node 20) unrolling by 2, 4 and 8 ran 10-25% slower than this plain loop.
 */
function emitMicroKernel(mb: ModuleBuilder, t: GemmTiling): FuncRef {
  const nv = t.nr / 4;
  return mb.func(
    'gemm_micro',
    [I32, I32, I32, I32, I32, I32],
    [],
    (f, pa, pb, c, ldcBytes, kc, accumulate) => {
      const acc = Array.from({ length: t.mr }, () => f.localsOf(V128, nv));
      const b = f.localsOf(V128, nv);
      const a = f.local(V128);
      const p = f.local(I32);
      const row = f.local(I32);
      for (const rowAcc of acc) for (const x of rowAcc) f.set(x, f32x4.splat(f32.const(0)));
      f.for(p, 0, kc, 1, () => {
        for (let v = 0; v < nv; v++) f.set(b[v], v128.load(pb, 16 * v));
        for (let r = 0; r < t.mr; r++) {
          f.set(a, v128.load32Splat(pa, 4 * r));
          for (let v = 0; v < nv; v++) f.set(acc[r][v], f32x4.add(acc[r][v], f32x4.mul(a, b[v])));
        }
        f.inc(pa, t.mr * 4);
        f.inc(pb, t.nr * 4);
      });
      const storeAll = (value: (r: number, v: number) => Operand) => {
        f.set(row, c);
        for (let r = 0; r < t.mr; r++) {
          for (let v = 0; v < nv; v++) f.exec(v128.store(row, value(r, v), 16 * v));
          f.inc(row, ldcBytes);
        }
      };
      f.if(
        accumulate,
        () => storeAll((r, v) => f32x4.add(v128.load(row, 16 * v), acc[r][v])),
        () => storeAll((r, v) => acc[r][v]),
      );
    },
    { exported: false },
  );
}

/**
 * gemm(a, aRowBytes, aColBytes, b, bRowBytes, bColBytes, c, ldcBytes, m, n, k, batch,
 * aBatchBytes, bBatchBytes, cBatchBytes, scratch): C[b] = A[b] @ B[b] with A(i, p) at
 * a + i*aRowBytes + p*aColBytes and B(p, j) at b + p*bRowBytes + j*bColBytes, so the transpose
 * flags are just strides, and C(i, j) at c + i*ldcBytes + 4j. Blocked as in BLIS (Goto and van
 * de Geijn, "Anatomy of high-performance matrix multiplication", 2008): loop over nc-wide column
 * blocks and kc-deep slices, pack B's slice once, then for each mc-tall row block pack A and
 * sweep the micro-kernel. `scratch` holds gemmScratchBytes(tiling) bytes private to the thread.
 */
function emitGemm(mb: ModuleBuilder, t: GemmTiling): void {
  const micro = emitMicroKernel(mb, t);
  const packA = emitPack(mb, 'gemm_pack_a', t.mr);
  const packB = emitPack(mb, 'gemm_pack_b', t.nr);
  const mcMax = Math.ceil(t.mc / t.mr) * t.mr;
  const ncMax = Math.ceil(t.nc / t.nr) * t.nr;
  const params = Array<ValType>(16).fill(I32);
  mb.func('gemm', params, [], (f, a, aRow, aCol, b, bRow, bCol, c, ldc, m, n, k, batch, aBatch, bBatch, cBatch, scratch) => {
    const [bt, jc, pc, ic, jr, ir, nc, kc, mc, pa, pb, tile, cTile, mr, nr, i, j, cBlock] = f.localsOf(I32, 18);
    f.set(pa, scratch);
    f.set(pb, i32.add(scratch, mcMax * t.kc * 4));
    f.set(tile, i32.add(pb, t.kc * ncMax * 4));
    const minI = (x: Operand, y: Operand) => select(x, y, i32.ltS(x, y));
    f.for(bt, 0, batch, 1, () => {
      f.for(jc, 0, n, t.nc, () => {
        f.set(nc, minI(t.nc, i32.sub(n, jc)));
        f.for(pc, 0, k, t.kc, () => {
          f.set(kc, minI(t.kc, i32.sub(k, pc)));
          f.exec(call(packB, i32.add(i32.add(b, i32.mul(pc, bRow)), i32.mul(jc, bCol)), bCol, bRow, nc, kc, pb));
          f.for(ic, 0, m, t.mc, () => {
            f.set(mc, minI(t.mc, i32.sub(m, ic)));
            f.exec(call(packA, i32.add(i32.add(a, i32.mul(ic, aRow)), i32.mul(pc, aCol)), aRow, aCol, mc, kc, pa));
            f.set(cBlock, i32.add(c, i32.add(i32.mul(ic, ldc), i32.shl(jc, 2))));
            f.for(jr, 0, nc, t.nr, () => {
              f.set(nr, minI(t.nr, i32.sub(nc, jr)));
              f.for(ir, 0, mc, t.mr, () => {
                f.set(mr, minI(t.mr, i32.sub(mc, ir)));
                f.set(cTile, i32.add(cBlock, i32.add(i32.mul(ir, ldc), i32.shl(jr, 2))));
                const panelA = i32.add(pa, i32.mul(ir, i32.shl(kc, 2)));
                const panelB = i32.add(pb, i32.mul(jr, i32.shl(kc, 2)));
                f.if(
                  i32.and(i32.eq(mr, t.mr), i32.eq(nr, t.nr)),
                  () => f.exec(call(micro, panelA, panelB, cTile, ldc, kc, i32.ne(pc, 0))),
                  () => {
                    // An edge tile: compute the full tile into scratch, then move the valid part.
                    f.exec(call(micro, panelA, panelB, tile, t.nr * 4, kc, 0));
                    f.for(i, 0, mr, 1, () =>
                      f.for(j, 0, nr, 1, () => {
                        const dst = i32.add(cTile, i32.add(i32.mul(i, ldc), i32.shl(j, 2)));
                        const v = f32.load(i32.add(tile, i32.shl(i32.add(i32.mul(i, t.nr), j), 2)));
                        f.exec(f32.store(dst, select(f32.add(f32.load(dst), v), v, i32.ne(pc, 0), F32)));
                      }),
                    );
                  },
                );
              });
            });
          });
        });
      });
      f.inc(a, aBatch);
      f.inc(b, bBatch);
      f.inc(c, cBatch);
    });
  });
}

/**
 * Matrix-vector products, for a matmul with one row or one column of output, which the packing
 * of gemm would only slow down (it is bound by reading the matrix once):
 * gemv_rows(x, xStepBytes, mat, stepPBytes, y, len, k): y[0:len] = sum_p x[p] M[p, 0:len], with
 * rows of M contiguous (an axpy per p into y, which stays in L1);
 * gemv_dots(x, mat, stepJBytes, y, len, k): y[j] = dot(x[0:k], M[0:k, j]), with columns of M and
 * x contiguous.
 */
function emitGemv(mb: ModuleBuilder): void {
  mb.func('gemv_rows', [I32, I32, I32, I32, I32, I32, I32], [], (f, x, xStep, mat, stepP, y, len, k) => {
    const p = f.local(I32);
    const xs = f.local(V128);
    f.exec(memory.fill(y, 0, i32.shl(len, 2)));
    f.for(p, 0, k, 1, () => {
      f.set(xs, v128.load32Splat(x));
      elementwise(f, len, [{ ptr: y }, { ptr: mat }], { ptr: y }, ([acc, m]) => f32x4.add(acc, f32x4.mul(xs, m)));
      f.inc(x, xStep);
      f.inc(mat, stepP);
    });
  });
  mb.func('gemv_dots', [I32, I32, I32, I32, I32, I32], [], (f, x, mat, stepJ, y, len, k) => {
    const j = f.local(I32);
    const p = f.local(I32);
    const acc0 = f.local(V128);
    const acc1 = f.local(V128);
    const at = (ptr: Operand, q: Operand) => v128.load(i32.add(ptr, i32.shl(q, 2)));
    f.for(j, 0, len, 1, () => {
      // Two accumulators halve the dependency chain of the adds.
      f.set(acc0, f32x4.splat(f32.const(0)));
      f.set(acc1, f32x4.splat(f32.const(0)));
      f.for(p, 0, i32.sub(k, 7), 8, () => {
        f.set(acc0, f32x4.add(acc0, f32x4.mul(at(x, p), at(mat, p))));
        f.set(acc1, f32x4.add(acc1, f32x4.mul(v128.load(i32.add(x, i32.shl(p, 2)), 16), v128.load(i32.add(mat, i32.shl(p, 2)), 16))));
      });
      f.for(p, p, i32.sub(k, 3), 4, () => f.set(acc0, f32x4.add(acc0, f32x4.mul(at(x, p), at(mat, p)))));
      f.if(i32.ltS(p, k), () => {
        const last = i32.sub(k, 4);
        f.set(acc1, f32x4.add(acc1, v128.and(f32x4.mul(at(x, last), at(mat, last)), tailMask(i32.sub(k, p)))));
      });
      f.set(acc0, f32x4.add(acc0, acc1));
      f.exec(f32.store(y, lanes4(acc0, f32.add)));
      f.inc(mat, stepJ);
      f.inc(y, 4);
    });
  });
}

export interface KernelModuleOptions {
  /** Share the memory between threads (requires SharedArrayBuffer). */
  shared: boolean;
  /** Memory limits in 64 KiB pages. */
  initialPages: number;
  maximumPages: number;
  tiling?: GemmTiling;
}

/** The module's bytes. It imports only `env.memory`. */
export function buildKernelModule(opts: KernelModuleOptions): Uint8Array {
  const mb = new ModuleBuilder();
  mb.importMemory('env', 'memory', { initial: opts.initialPages, maximum: opts.maximumPages, shared: opts.shared });
  const fns: RowFns = {
    log: emitLog(mb),
    rowMax: emitRowExtreme(mb, 'max'),
    rowMin: emitRowExtreme(mb, 'min'),
    rowSum: emitRowSum(mb),
    rowSumExp: emitRowSumExp(mb, false),
    rowExpStore: emitRowSumExp(mb, true),
  };
  for (const op of SIMD_UNARY_F32) emitUnaryF32(mb, op);
  for (const op of SIMD_UNARY_I32) emitUnary(mb, unaryExport(op, 'i32'), UNARY_I32_BODIES[op]);
  for (const op of SIMD_UNARY_BOOL_F32) emitUnary(mb, unaryExport(op, 'f32'), UNARY_BOOL_F32_BODIES[op], { outBool: true });
  for (const op of SIMD_UNARY_BOOL_I32) emitUnary(mb, unaryExport(op, 'i32'), UNARY_BOOL_I32_BODIES[op], { outBool: true });
  const called: Record<(typeof SIMD_BINARY_F32_CALLED)[number], FuncRef> = {
    pow: mb.func('pow_f32x4', [V128, V128], [V128], (f, a, b) => f.push(powV(f, a, b), 'v128'), { exported: false }),
  };
  for (const variant of rowVariants(2)) {
    const pair = [{}, {}];
    for (const op of SIMD_BINARY_F32_CALLED) emitRowKernel(mb, binaryExport(op, 'f32', variant), pair, variant, false, ([a, b]) => call(called[op], a, b));
    for (const op of SIMD_BINARY_F32) emitRowKernel(mb, binaryExport(op, 'f32', variant), pair, variant, false, ([a, b]) => BINARY_F32[op](a, b));
    for (const op of SIMD_BINARY_I32) emitRowKernel(mb, binaryExport(op, 'i32', variant), pair, variant, false, ([a, b]) => BINARY_I32[op](a, b));
    for (const op of SIMD_COMPARE) {
      // The comparisons' masks as they are: the bool store packs them (elementwise).
      emitRowKernel(mb, binaryExport(op, 'f32', variant), pair, variant, true, ([a, b]) => COMPARE_F32[op](a, b));
      emitRowKernel(mb, binaryExport(op, 'i32', variant), pair, variant, true, ([a, b]) => COMPARE_I32[op](a, b));
    }
  }
  for (const variant of rowVariants(3)) {
    emitRowKernel(mb, whereExport(variant), [{ bool: true }, {}, {}], variant, false, ([c, a, b]) => v128.bitselect(a, b, i32x4.ne(c, 0)));
  }
  emitAxpy(mb);
  emitReductions(mb, fns);
  emitSoftmax(mb, fns);
  emitCrossEntropy(mb, fns);
  emitCrossEntropyBackward(mb, fns);
  emitCrossEntropy(mb, fns, true);
  emitCrossEntropyBackward(mb, fns, true);
  emitIm2col(mb);
  emitCol2im(mb);
  emitGemm(mb, opts.tiling ?? DEFAULT_TILING);
  emitZeroBytes(mb);
  emitGemv(mb);
  emitRandom(mb);
  emitConvKernels(mb);
  emitWinogradKernels(mb);
  emitPoolKernels(mb);
  emitLayerNormKernels(mb);
  emitBatchNormKernels(mb);
  emitStridedCopyKernels(mb);
  emitAttentionKernels(mb);
  return mb.toBytes();
}

/**
 * zero_bytes(ptr, bytes): memory.fill with zeros. The host's TypedArray fill is slow over a
 * SharedArrayBuffer in V8 (measured 20x for Uint8Array, 4x for Float32Array, per MiB), so the
 * allocator and the convolutions' scratch clear memory through this on a threaded backend.
 */
function emitZeroBytes(mb: ModuleBuilder): void {
  mb.func('zero_bytes', [I32, I32], [], (f, ptr, bytes) => f.exec(memory.fill(ptr, 0, bytes)));
}

/** The exports as the JS side calls them (pointers and counts as numbers). */
export interface KernelExports {
  [name: string]: (...args: number[]) => number | void;
}
