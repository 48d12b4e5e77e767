/**
 * SIMD kernels for the fused optimizer passes (src/kernels/fused.ts) and the counter-based random
 * draws (src/kernels/rng.ts) of the wasm backend, on float32 storages.
 *
 * The CPU reference computes in float64 and rounds to float32 after each elementary operation
 * (`Math.fround`), with host coefficients (lr, betas, eps, ...) kept as float64. To agree with it
 * bit for bit, the kernels run those operations in f64x2 lanes: an f32 element is promoted on
 * load, every `fround` is a demote-and-promote, and the result is demoted on store (`pairs`; a
 * trailing odd element runs the same body in scalar f64). The SGD, Adam, perturb and restore
 * bodies also have a four-lane form (`quads`): an operation on two float32 values, rounded, is the
 * f32x4 operation exactly (add, sub, mul, div, sqrt), so only the multiplies by a float64
 * coefficient take the f64x2 detour. Reductions (sums of squares, dots) accumulate in f64
 * pairwise, so they differ from the sequential reference only in the last bits of a float64
 * (they are stored to float32).
 *
 * The random kernels hash four indexes per i32x4 (PCG-RXS-M-XS; its data-dependent shift is the
 * high half of a 64-bit product by a per-lane power of two). Uniform and keep-mask draws are
 * exact; normal draws use float64 series for log and sin (relative error around 1e-16), so after
 * rounding to float32 they match the reference's Math.log / Math.cos except where the two float64
 * values straddle a float32 rounding boundary (a few parts in 1e8 per draw; none in the tests).
 */
import { f32, f32x4, f64, f64x2, i32, i32x4, i64x2, v128, ValType, type Expr, type FuncBuilder, type Local, type ModuleBuilder, type Operand } from './emit.js';

const { i32: I32, f64: F64, v128: V128 } = ValType;

/** Arithmetic on either two f64 lanes (v128) or one scalar f64, over promoted float32 elements. */
interface Lanes {
  ld(ptr: Local, i: Local): Expr;
  st(ptr: Local, i: Local, v: Operand): Expr;
  add(a: Operand, b: Operand): Expr;
  sub(a: Operand, b: Operand): Expr;
  mul(a: Operand, b: Operand): Expr;
  div(a: Operand, b: Operand): Expr;
  sqrt(a: Operand): Expr;
  abs(a: Operand): Expr;
  /** Math.fround. */
  fr(a: Operand): Expr;
  /** A host coefficient (an f64 parameter) in this width. */
  k(x: Local): Local;
  local(): Local;
  set(l: Local, x: Operand): void;
}

const addr = (ptr: Local, i: Operand) => i32.add(ptr, i32.shl(i, 2));

function vecLanes(f: FuncBuilder, coefs: Local[]): Lanes {
  const splats = new Map<Local, Local>();
  for (const c of coefs) {
    const l = f.local(V128);
    f.set(l, f64x2.splat(c));
    splats.set(c, l);
  }
  return {
    ld: (ptr, i) => f64x2.promoteLowF32x4(v128.load64Zero(addr(ptr, i))),
    st: (ptr, i, v) => v128.store64Lane(addr(ptr, i), f32x4.demoteF64x2Zero(v), 0),
    add: f64x2.add,
    sub: f64x2.sub,
    mul: f64x2.mul,
    div: f64x2.div,
    sqrt: f64x2.sqrt,
    abs: f64x2.abs,
    fr: (a) => f64x2.promoteLowF32x4(f32x4.demoteF64x2Zero(a)),
    k: (x) => splats.get(x)!,
    local: () => f.local(V128),
    set: (l, x) => f.set(l, x),
  };
}

function scalarLanes(f: FuncBuilder): Lanes {
  return {
    ld: (ptr, i) => f64.promoteF32(f32.load(addr(ptr, i))),
    st: (ptr, i, v) => f32.store(addr(ptr, i), f32.demoteF64(v)),
    add: f64.add,
    sub: f64.sub,
    mul: f64.mul,
    div: f64.div,
    sqrt: f64.sqrt,
    abs: f64.abs,
    fr: (a) => f64.promoteF32(f32.demoteF64(a)),
    k: (x) => x,
    local: () => f.local(F64),
    set: (l, x) => f.set(l, x),
  };
}

/** Runs body over [start, end): two elements at a time in f64x2, then a last odd one in f64. */
function pairs(f: FuncBuilder, start: Local, end: Local, coefs: Local[], body: (L: Lanes, i: Local) => void): { vec: Lanes; sc: Lanes } {
  const vec = vecLanes(f, coefs);
  const sc = scalarLanes(f);
  const i = f.local(I32);
  f.set(i, start);
  f.block((exit) =>
    f.loop((top) => {
      f.brIf(exit, i32.gtS(i32.add(i, 2), end));
      body(vec, i);
      f.inc(i, 2);
      f.br(top);
    }),
  );
  f.if(i32.ltS(i, end), () => body(sc, i));
  return { vec, sc };
}

/**
 * Four float32 elements at a time as an f32x4, for bodies whose f32-by-f32 operations (add, mul,
 * div, sqrt of float32 values) run as f32x4 - exactly fround of the float64 operation - and only
 * the operations with a float64 host coefficient go through f64x2 (`cm`, `ca`); the last 0-3
 * elements run the two-lane body `rest` (see pairs).
 */
interface Quad {
  ld(ptr: Local, i: Local): Expr;
  st(ptr: Local, i: Local, v: Operand): Expr;
  /** fr(c x) for a float64 coefficient c (an f64 parameter). */
  cm(c: Local, x: Operand): Expr;
  /** fr(x + c). */
  ca(x: Operand, c: Local): Expr;
  local(): Local;
}

function quads(f: FuncBuilder, start: Local, end: Local, coefs: Local[], body: (Q: Quad, i: Local) => void, rest: (L: Lanes, i: Local) => void): void {
  const splats = new Map<Local, Local>();
  for (const c of coefs) {
    const l = f.local(V128);
    f.set(l, f64x2.splat(c));
    splats.set(c, l);
  }
  const tmp = f.local(V128);
  const both = (x: Operand, op: (h: Expr) => Expr): Expr => (fb) => {
    fb.set(tmp, x);
    v128.shuffle(
      f32x4.demoteF64x2Zero(op(f64x2.promoteLowF32x4(tmp))),
      f32x4.demoteF64x2Zero(op(f64x2.promoteLowF32x4(v128.shuffle(tmp, tmp, HALF_HIGH)))),
      LOW_LOW,
    )(fb);
  };
  const Q: Quad = {
    ld: (ptr, i) => v128.load(addr(ptr, i)),
    st: (ptr, i, v) => v128.store(addr(ptr, i), v),
    cm: (c, x) => both(x, (h) => f64x2.mul(splats.get(c)!, h)),
    ca: (x, c) => both(x, (h) => f64x2.add(h, splats.get(c)!)),
    local: () => f.local(V128),
  };
  const i = f.local(I32);
  f.set(i, start);
  f.block((exit) =>
    f.loop((top) => {
      f.brIf(exit, i32.gtS(i32.add(i, 4), end));
      body(Q, i);
      f.inc(i, 4);
      f.br(top);
    }),
  );
  pairs(f, i, end, coefs, rest);
}

function emitSumSquares(mb: ModuleBuilder): void {
  // fz_sumsq(x, start, end) -> f64; fz_sumsq_w(x, p, start, end, eta) -> f64: sum of ((|p| + eta) x)^2.
  for (const weighted of [false, true]) {
    const params = weighted ? [I32, I32, I32, I32, F64] : [I32, I32, I32];
    mb.func(weighted ? 'fz_sumsq_w' : 'fz_sumsq', params, [F64], (f, ...a) => {
      const [x, p, start, end, eta] = weighted ? a : [a[0], a[0], a[1], a[2], a[0]];
      const accV = f.local(V128);
      const accS = f.local(F64);
      f.set(accV, f64x2.splat(f64.const(0)));
      f.set(accS, 0);
      pairs(f, start, end, weighted ? [eta] : [], (L, i) => {
        const t = L.local();
        L.set(t, weighted ? L.mul(L.add(L.abs(L.ld(p, i)), L.k(eta)), L.ld(x, i)) : L.ld(x, i));
        const acc = t.type === V128 ? accV : accS;
        L.set(acc, L.add(acc, L.mul(t, t)));
      });
      f.push(f64.add(f64.add(f64x2.extractLane(accV, 0), f64x2.extractLane(accV, 1)), accS), F64);
    });
  }
}

function emitDot(mb: ModuleBuilder): void {
  // fz_dot(x, y, start, end) -> f64: sum of x y (each product exact in f64).
  mb.func('fz_dot', [I32, I32, I32, I32], [F64], (f, x, y, start, end) => {
    const accV = f.local(V128);
    const accS = f.local(F64);
    f.set(accV, f64x2.splat(f64.const(0)));
    f.set(accS, 0);
    pairs(f, start, end, [], (L, i) => {
      const t = L.local();
      L.set(t, L.mul(L.ld(x, i), L.ld(y, i)));
      const acc = t.type === V128 ? accV : accS;
      L.set(acc, L.add(acc, t));
    });
    f.push(f64.add(f64.add(f64x2.extractLane(accV, 0), f64x2.extractLane(accV, 1)), accS), F64);
  });
}

function emitPerturb(mb: ModuleBuilder): void {
  // fz_perturb_<delta>(p, dir, aux, start, end, c): e = fr(c dir), aux = e (delta), p = fr(p + e).
  // fz_perturb_ad_<delta>(p, dir, aux, start, end, c, eta): e = fr(c t t dir) with t = |p| + eta.
  for (const adaptive of [false, true]) {
    for (const delta of [0, 1]) {
      const params = adaptive ? [I32, I32, I32, I32, I32, F64, F64] : [I32, I32, I32, I32, I32, F64];
      mb.func(`fz_perturb${adaptive ? '_ad' : ''}_${delta}`, params, [], (f, p, dir, aux, start, end, c, eta) => {
        const quad = (Q: Quad, i: Local) => {
          const e = Q.local();
          f.set(e, Q.cm(c, Q.ld(dir, i)));
          if (delta) f.exec(Q.st(aux, i, e));
          f.exec(Q.st(p, i, f32x4.add(Q.ld(p, i), e)));
        };
        const run = (rest: (L: Lanes, i: Local) => void) => (adaptive ? pairs(f, start, end, [c, eta], rest) : quads(f, start, end, [c], quad, rest));
        run((L, i) => {
          const e = L.local();
          const pv = L.local();
          L.set(pv, L.ld(p, i));
          if (adaptive) {
            const t = L.local();
            L.set(t, L.add(L.abs(pv), L.k(eta)));
            L.set(e, L.fr(L.mul(L.mul(L.mul(L.k(c), t), t), L.ld(dir, i))));
          } else L.set(e, L.fr(L.mul(L.k(c), L.ld(dir, i))));
          if (delta) f.exec(L.st(aux, i, e));
          f.exec(L.st(p, i, L.add(pv, e)));
        });
      });
    }
  }
  // fz_sub(p, aux, start, end): p = fr(p - aux).
  mb.func('fz_sub', [I32, I32, I32, I32], [], (f, p, aux, start, end) => {
    quads(f, start, end, [], (Q, i) => f.exec(Q.st(p, i, f32x4.sub(Q.ld(p, i), Q.ld(aux, i)))), (L, i) => f.exec(L.st(p, i, L.sub(L.ld(p, i), L.ld(aux, i)))));
  });
}

/**
 * fz_lc<t>_<self>(out, x_0..x_{t-1}, start, end, a, c_0..c_{t-1}): lincomb of src/kernels/cpu/fused.ts,
 * out = fr([a out] + c_0 x_0 + ...) summed left to right in f64; without self and with 2+ terms
 * the sum starts from 0 (as there: 0 + -0 is +0).
 */
export function lincombExport(terms: number, self: boolean): string {
  return `fz_lc${terms}_${self ? 1 : 0}`;
}

function emitLincomb(mb: ModuleBuilder): void {
  for (let t = 0; t <= 3; t++) {
    for (const self of [false, true]) {
      if (t === 0 && !self) continue;
      mb.func(lincombExport(t, self), [...Array<ValType>(t + 3).fill(I32), ...Array<ValType>(t + 1).fill(F64)], [], (f, out, ...rest) => {
        const xs = rest.slice(0, t);
        const [start, end, a] = rest.slice(t, t + 3);
        const cs = rest.slice(t + 3);
        pairs(f, start, end, [a, ...cs], (L, i) => {
          let v: Expr | null = self ? L.mul(L.k(a), L.ld(out, i)) : t === 1 ? null : L.add(0, 0);
          for (let j = 0; j < t; j++) {
            const term = L.mul(L.k(cs[j]), L.ld(xs[j], i));
            v = v === null ? term : L.add(v, term);
          }
          f.exec(L.st(out, i, v!));
        });
      });
    }
  }
}

/** fz_sgd_<variant>(p, d, m, start, end, nlr, momentum, damp, wd): sgd32 of src/kernels/cpu/fused.ts. */
export function sgdExport(momentum: boolean, nesterov: boolean, first: boolean, decay: boolean): string {
  return `fz_sgd_${momentum ? 1 : 0}${nesterov ? 1 : 0}${first ? 1 : 0}${decay ? 1 : 0}`;
}

function emitSgd(mb: ModuleBuilder): void {
  for (const mom of [false, true]) {
    for (const nesterov of mom ? [false, true] : [false]) {
      for (const first of mom ? [false, true] : [false]) {
        for (const decay of [false, true]) {
          mb.func(sgdExport(mom, nesterov, first, decay), [I32, I32, I32, I32, I32, F64, F64, F64, F64], [], (f, p, d, m, start, end, nlr, momentum, damp, wd) => {
            const quad = (Q: Quad, i: Local) => {
              const [pv, dd, buf] = [Q.local(), Q.local(), Q.local()];
              f.set(pv, Q.ld(p, i));
              f.set(dd, decay ? f32x4.add(Q.ld(d, i), Q.cm(wd, pv)) : Q.ld(d, i));
              if (!mom) {
                f.exec(Q.st(p, i, f32x4.add(pv, Q.cm(nlr, dd))));
                return;
              }
              f.set(buf, first ? dd : f32x4.add(Q.cm(momentum, Q.ld(m, i)), Q.cm(damp, dd)));
              f.exec(Q.st(m, i, buf));
              f.exec(Q.st(p, i, f32x4.add(pv, Q.cm(nlr, nesterov ? f32x4.add(dd, Q.cm(momentum, buf)) : buf))));
            };
            quads(f, start, end, [nlr, momentum, damp, wd], quad, (L, i) => {
              const pv = L.local();
              const dd = L.local();
              L.set(pv, L.ld(p, i));
              L.set(dd, decay ? L.fr(L.add(L.ld(d, i), L.fr(L.mul(L.k(wd), pv)))) : L.ld(d, i));
              if (!mom) {
                f.exec(L.st(p, i, L.add(pv, L.fr(L.mul(L.k(nlr), dd)))));
                return;
              }
              const buf = L.local();
              L.set(buf, first ? dd : L.add(L.fr(L.mul(L.k(momentum), L.ld(m, i))), L.fr(L.mul(L.k(damp), dd))));
              if (!first) L.set(buf, L.fr(buf));
              f.exec(L.st(m, i, buf));
              const step = nesterov ? L.fr(L.add(dd, L.fr(L.mul(L.k(momentum), buf)))) : buf;
              f.exec(L.st(p, i, L.add(pv, L.fr(L.mul(L.k(nlr), step)))));
            });
          });
        }
      }
    }
  }
}

/** fz_adam_<mode>(p, d, m, v, start, end, decay, wd, beta1, c1, beta2, c2, invBc2, eps, nStep); mode 0: no decay, 1: decoupled, 2: L2. */
export function adamExport(mode: 0 | 1 | 2): string {
  return `fz_adam_${mode}`;
}

function emitAdam(mb: ModuleBuilder): void {
  for (const mode of [0, 1, 2] as const) {
    mb.func(adamExport(mode), [I32, I32, I32, I32, I32, I32, F64, F64, F64, F64, F64, F64, F64, F64, F64], [], (f, p, d, m, v, start, end, decay, wd, beta1, c1, beta2, c2, invBc2, eps, nStep) => {
      const coefs = [decay, wd, beta1, c1, beta2, c2, invBc2, eps, nStep];
      const quad = (Q: Quad, i: Local) => {
        const [pv, dd, mi, vi, denom] = [Q.local(), Q.local(), Q.local(), Q.local(), Q.local()];
        f.set(pv, Q.ld(p, i));
        f.set(dd, Q.ld(d, i));
        if (mode === 1) f.set(pv, Q.cm(decay, pv));
        if (mode === 2) f.set(dd, f32x4.add(dd, Q.cm(wd, pv)));
        f.set(mi, f32x4.add(Q.cm(beta1, Q.ld(m, i)), Q.cm(c1, dd)));
        f.set(vi, f32x4.add(Q.cm(beta2, Q.ld(v, i)), Q.cm(c2, f32x4.mul(dd, dd))));
        f.exec(Q.st(m, i, mi));
        f.exec(Q.st(v, i, vi));
        f.set(denom, Q.ca(Q.cm(invBc2, f32x4.sqrt(vi)), eps));
        f.exec(Q.st(p, i, f32x4.add(pv, Q.cm(nStep, f32x4.div(mi, denom)))));
      };
      quads(f, start, end, coefs, quad, (L, i) => {
        const pv = L.local();
        const dd = L.local();
        const mi = L.local();
        const vi = L.local();
        const denom = L.local();
        L.set(pv, L.ld(p, i));
        L.set(dd, L.ld(d, i));
        if (mode === 1) L.set(pv, L.fr(L.mul(L.k(decay), pv)));
        if (mode === 2) L.set(dd, L.fr(L.add(dd, L.fr(L.mul(L.k(wd), pv)))));
        L.set(mi, L.fr(L.add(L.fr(L.mul(L.k(beta1), L.ld(m, i))), L.fr(L.mul(L.k(c1), dd)))));
        L.set(vi, L.fr(L.add(L.fr(L.mul(L.k(beta2), L.ld(v, i))), L.fr(L.mul(L.k(c2), L.fr(L.mul(dd, dd)))))));
        f.exec(L.st(m, i, mi));
        f.exec(L.st(v, i, vi));
        L.set(denom, L.fr(L.add(L.fr(L.mul(L.k(invBc2), L.fr(L.sqrt(vi)))), L.k(eps))));
        f.exec(L.st(p, i, L.add(pv, L.fr(L.mul(L.k(nStep), L.fr(L.div(mi, denom)))))));
      });
    });
  }
}

// ---- randomness ----

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

function emitRandom(mb: ModuleBuilder): void {
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

/** Adds the fused optimizer and random kernels to the module. */
export function emitFusedKernels(mb: ModuleBuilder): void {
  emitSumSquares(mb);
  emitDot(mb);
  emitPerturb(mb);
  emitLincomb(mb);
  emitSgd(mb);
  emitAdam(mb);
  emitRandom(mb);
}
