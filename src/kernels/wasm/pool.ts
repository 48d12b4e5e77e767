/**
 * Max and average pooling on the wasm backend. The outputs whose window lies wholly inside the
 * input (all of them for unpadded pooling) run in SIMD, four neighbouring outputs of a row at a
 * time, with no bounds to check: each tap loads the four cells it reads with one vector load for
 * stride 1 and two loads and a shuffle (the even lanes) for stride 2; other strides take the
 * same rule one output at a time. The few border outputs run the reference rule (maxPoolAt,
 * avgPoolAt of the CPU backend) over the same memory.
 *
 * Max pooling keeps, per lane, the running maximum and its index, and takes a candidate when no
 * index is held yet, when it is larger, or when it is the first NaN (a NaN is then never
 * replaced): the reference's order, so values and indices agree exactly. Average pooling sums in
 * float32 (the reference sums in float64: they agree to a few ulps) and divides by kh*kw or the
 * divisor override, which is every interior window's divisor under both of PyTorch's rules.
 */
import type { AvgPool2dLayout, Window2d } from '../backend.js';
import { avgPoolAt, maxPoolAt } from '../cpu/index.js';
import { f32, f32x4, i32, i32x4, select, v128, ValType, type FuncBuilder, type Local, type ModuleBuilder } from './emit.js';
import type { KernelExports } from './module.js';

const { i32: I32, f32: F32, v128: V128 } = ValType;

/** The geometry both pooling kernels take, then the interior rectangle [oy0, oy1) x [ox0, ox1). */
const PARAMS = ['planes', 'h', 'w', 'oh', 'ow', 'kh', 'kw', 'sh', 'sw', 'ph', 'pw', 'dh', 'dw', 'oy0', 'oy1', 'ox0', 'ox1'] as const;

/** The lanes 0..3 of four outputs' taps: 0, sw, 2sw, 3sw cells apart (sw is 1 or 2 here). */
const lanesOf = (sw: Local) => select(v128.i32x4([0, 1, 2, 3]), v128.i32x4([0, 2, 4, 6]), i32.eq(sw, 1), 'v128');

/** v = the four cells at `addr` and every sw-th after it (sw 1 or 2: stride 2 reads one cell past the fourth). */
function load4(f: FuncBuilder, v: Local, sw: Local, addr: Local): void {
  f.if(
    i32.eq(sw, 1),
    () => f.set(v, v128.load(addr)),
    () => f.set(v, v128.shuffle(v128.load(addr), v128.load(addr, 16), [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27])),
  );
}

/**
 * The loop nest over the interior: for each plane p and output row oy, `vector(ox)` for groups of
 * four outputs (when sw is 1 or 2) and `scalar(ox)` for the rest. Before them, `plane` holds the
 * plane's input pointer, `rowY` the first input row of the output row and `outAt` the output's
 * address (advanced by the callbacks' element counts).
 */
interface Cursor {
  plane: Local;
  rowY: Local;
  outAt: Local;
  argAt: Local;
}

function interior(f: FuncBuilder, g: Named, x: Local, out: Local, arg: Local, c: Cursor, vector: (ox: Local) => void, scalar: (ox: Local) => void): void {
  const [p, oy, ox, vecEnd] = f.localsOf(I32, 4);
  f.set(c.plane, x);
  f.for(p, 0, g.planes, 1, () => {
    f.for(oy, g.oy0, g.oy1, 1, () => {
      f.set(c.rowY, i32.sub(i32.mul(oy, g.sh), g.ph));
      const first = i32.shl(i32.add(i32.mul(i32.add(i32.mul(p, g.oh), oy), g.ow), g.ox0), 2);
      f.set(c.outAt, i32.add(out, first));
      f.set(c.argAt, i32.add(arg, first));
      // Stride 2 reads one cell past a group's last tap: the group must not end the interior.
      f.set(vecEnd, select(i32.sub(g.ox1, i32.add(g.sw, 2)), g.ox0, i32.leS(g.sw, 2)));
      f.set(ox, g.ox0);
      f.block((exit) =>
        f.loop((top) => {
          f.brIf(exit, i32.geS(ox, vecEnd));
          vector(ox);
          f.inc(c.outAt, 16);
          f.inc(c.argAt, 16);
          f.inc(ox, 4);
          f.br(top);
        }),
      );
      f.block((exit) =>
        f.loop((top) => {
          f.brIf(exit, i32.geS(ox, g.ox1));
          scalar(ox);
          f.inc(c.outAt, 4);
          f.inc(c.argAt, 4);
          f.inc(ox, 1);
          f.br(top);
        }),
      );
    });
    f.inc(c.plane, i32.shl(i32.mul(g.h, g.w), 2));
  });
}

type Named = Record<(typeof PARAMS)[number], Local>;

function named(args: Local[]): Named {
  return Object.fromEntries(PARAMS.map((k, i) => [k, args[i]])) as Named;
}

/** The taps of a window: body() for each (ki, kj), with `y` the input row of ki. */
function forTaps(f: FuncBuilder, g: Named, rowY: Local, ki: Local, kj: Local, y: Local, body: () => void): void {
  f.for(ki, 0, g.kh, 1, () => {
    f.set(y, i32.add(rowY, i32.mul(ki, g.dh)));
    f.for(kj, 0, g.kw, 1, body);
  });
}

/** pool_max(x, out, arg (0: none), <PARAMS>): the interior outputs and their argmax. */
function emitMax(mb: ModuleBuilder): void {
  mb.func('pool_max', [I32, I32, I32, ...PARAMS.map(() => I32)], [], (f, x, out, arg, ...rest) => {
    const g = named(rest);
    const c: Cursor = { plane: f.local(I32), rowY: f.local(I32), outAt: f.local(I32), argAt: f.local(I32) };
    const [ki, kj, y, at, addr] = f.localsOf(I32, 5);
    const [best, idx, v, cand, take] = f.localsOf(V128, 5);
    const [bestS, vS] = f.localsOf(F32, 2);
    const argS = f.local(I32);
    // The cell of tap (ki, kj) for output ox: its index in the plane and its address.
    const cell = (ox: Local) => {
      f.set(at, i32.add(i32.mul(y, g.w), i32.add(i32.sub(i32.mul(ox, g.sw), g.pw), i32.mul(kj, g.dw))));
      f.set(addr, i32.add(c.plane, i32.shl(at, 2)));
    };
    interior(
      f,
      g,
      x,
      out,
      arg,
      c,
      (ox) => {
        f.set(best, f32x4.splat(f32.const(-Infinity)));
        f.set(idx, i32x4.splat(-1));
        forTaps(f, g, c.rowY, ki, kj, y, () => {
          cell(ox);
          load4(f, v, g.sw, addr);
          f.set(cand, i32x4.add(i32x4.splat(at), lanesOf(g.sw)));
          f.set(take, v128.or(i32x4.ltS(idx, 0), v128.or(f32x4.gt(v, best), v128.and(f32x4.ne(v, v), f32x4.eq(best, best)))));
          f.set(best, v128.bitselect(v, best, take));
          f.set(idx, v128.bitselect(cand, idx, take));
        });
        f.exec(v128.store(c.outAt, best));
        f.if(arg, () => f.exec(v128.store(c.argAt, idx)));
      },
      (ox) => {
        f.set(bestS, f32.const(-Infinity));
        f.set(argS, -1);
        forTaps(f, g, c.rowY, ki, kj, y, () => {
          cell(ox);
          f.set(vS, f32.load(addr));
          f.if(i32.or(i32.ltS(argS, 0), i32.or(f32.gt(vS, bestS), i32.and(f32.ne(vS, vS), f32.eq(bestS, bestS)))), () => {
            f.set(bestS, vS);
            f.set(argS, at);
          });
        });
        f.exec(f32.store(c.outAt, bestS));
        f.if(arg, () => f.exec(i32.store(c.argAt, argS)));
      },
    );
  });
}

/** pool_avg(x, out, <PARAMS>, divisor): the interior outputs, each its window's sum / divisor. */
function emitAvg(mb: ModuleBuilder): void {
  mb.func('pool_avg', [I32, I32, ...PARAMS.map(() => I32), F32], [], (f, x, out, ...rest) => {
    const g = named(rest.slice(0, PARAMS.length));
    const divisor = rest[PARAMS.length];
    const c: Cursor = { plane: f.local(I32), rowY: f.local(I32), outAt: f.local(I32), argAt: f.local(I32) };
    const [ki, kj, y, addr] = f.localsOf(I32, 4);
    const [sum, v] = f.localsOf(V128, 2);
    const sumS = f.local(F32);
    const cell = (ox: Local) => f.set(addr, i32.add(c.plane, i32.shl(i32.add(i32.mul(y, g.w), i32.add(i32.sub(i32.mul(ox, g.sw), g.pw), kj)), 2)));
    interior(
      f,
      g,
      x,
      out,
      out,
      c,
      (ox) => {
        f.set(sum, f32x4.splat(f32.const(0)));
        forTaps(f, g, c.rowY, ki, kj, y, () => {
          cell(ox);
          load4(f, v, g.sw, addr);
          f.set(sum, f32x4.add(sum, v));
        });
        f.exec(v128.store(c.outAt, f32x4.div(sum, f32x4.splat(divisor))));
      },
      (ox) => {
        f.set(sumS, f32.const(0));
        forTaps(f, g, c.rowY, ki, kj, y, () => {
          cell(ox);
          f.set(sumS, f32.add(sumS, f32.load(addr)));
        });
        f.exec(f32.store(c.outAt, f32.div(sumS, divisor)));
      },
    );
  });
}

/** Adds the pooling kernels to the backend's module (called by buildKernelModule). */
export function emitPoolKernels(mb: ModuleBuilder): void {
  emitMax(mb);
  emitAvg(mb);
}

// ---- the host side: the interior rectangle in SIMD, the border by the reference rule ----

/** The outputs [lo, hi) along one dim whose whole window (k taps, d apart) is inside [0, size). */
function insideRange(out: number, size: number, k: number, s: number, p: number, d: number): [number, number] {
  const lo = Math.min(out, Math.ceil(p / s));
  const hi = Math.max(lo, Math.min(out, Math.floor((size - 1 + p - (k - 1) * d) / s) + 1));
  return [lo, hi];
}

function interiorOf(g: Window2d): { oy0: number; oy1: number; ox0: number; ox1: number } {
  const [oy0, oy1] = insideRange(g.oh, g.h, g.kh, g.sh, g.ph, g.dh);
  const [ox0, ox1] = insideRange(g.ow, g.w, g.kw, g.sw, g.pw, g.dw);
  return { oy0, oy1, ox0, ox1 };
}

/** Calls f(oy, ox) for every output outside the interior rectangle. */
function forBorder(g: Window2d, r: ReturnType<typeof interiorOf>, f: (oy: number, ox: number) => void): void {
  for (let oy = 0; oy < g.oh; oy++) {
    const inRows = oy >= r.oy0 && oy < r.oy1;
    for (let ox = 0; ox < g.ow; ox++) if (!inRows || ox < r.ox0 || ox >= r.ox1) f(oy, ox);
  }
}

const args = (g: Window2d, r: ReturnType<typeof interiorOf>) => [g.n * g.c, g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, r.oy0, r.oy1, r.ox0, r.ox1];

/** float32 max pooling over wasm memory: X, O, A typed views of x, out and arg (A may be null). */
export function maxPool2dWasm(k: KernelExports, ptrs: { x: number; out: number; arg: number }, X: Float32Array, O: Float32Array, A: Int32Array | null, g: Window2d): void {
  const r = interiorOf(g);
  k.pool_max(ptrs.x, ptrs.out, A ? ptrs.arg : 0, ...args(g, r));
  const plane = g.h * g.w;
  for (let p = 0; p < g.n * g.c; p++)
    forBorder(g, r, (oy, ox) => {
      const o = (p * g.oh + oy) * g.ow + ox;
      const arg = maxPoolAt(X, p * plane, g, oy, ox);
      O[o] = arg < 0 ? -Infinity : X[p * plane + arg];
      if (A) A[o] = arg;
    });
}

/** float32 average pooling over wasm memory. */
export function avgPool2dWasm(k: KernelExports, ptrs: { x: number; out: number }, X: Float32Array, O: Float32Array, g: AvgPool2dLayout): void {
  const r = interiorOf({ ...g, dh: 1, dw: 1 });
  k.pool_avg(ptrs.x, ptrs.out, ...args({ ...g, dh: 1, dw: 1 }, r), g.divisorOverride || g.kh * g.kw);
  for (let p = 0; p < g.n * g.c; p++) forBorder(g, r, (oy, ox) => (O[(p * g.oh + oy) * g.ow + ox] = avgPoolAt(X, p * g.h * g.w, g, oy, ox)));
}
