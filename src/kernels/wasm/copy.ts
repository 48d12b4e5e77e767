/**
 * Strided copies (the Backend's stridedCopy: permute, transpose, slice, expand, concat, pad and
 * their backwards) on the wasm backend, with the whole loop nest in wasm.
 *
 * The JS side (planStridedCopy) collapses the layout (collapseDims) and puts its two innermost
 * dims into the kernel's arguments as [rows, cols] with byte strides; every dim beyond runs in
 * wasm as an odometer over a small descriptor in scratch memory, four i32 per dim from the
 * innermost out: size, source stride, destination stride (bytes) and a counter that starts at 0.
 * The rows x cols tile is copied in one of four modes:
 *
 * - run: cols are contiguous on both sides: f32x4 moves (memory.copy for long runs);
 * - splat: cols repeat one source element (an expand) into a contiguous run: one splat, f32x4 stores;
 * - transpose: rows are contiguous in the source and cols in the destination (the innermost dims
 *   swap, as in a transpose of the last two dims): 4x4 blocks loaded as four source vectors,
 *   transposed in registers and stored as four destination vectors; the edges go element by element;
 * - general: element by element along both dims.
 *
 * Elements move as bit patterns of their width (i32 / i64 / byte loads and stores, which wasm
 * never canonicalizes), so NaN payloads survive, as in the reference. Width 4 (float32, int32)
 * has every mode; widths 1 (bool) and 8 (float64) have run (memory.copy) and general.
 *
 * The source and destination must not overlap: every caller copies between distinct storages.
 */
import { i32, memory, v128, ValType, type FuncBuilder, type Local, type ModuleBuilder, type Operand } from './emit.js';
import { transpose4 } from './module.js';

const { i32: I32, v128: V128 } = ValType;

/** Byte widths of the element kinds the kernels copy. */
export type CopyWidth = 1 | 4 | 8;
export const COPY_MODES = { run: 0, splat: 1, transpose: 2, general: 3 } as const;
export type CopyMode = keyof typeof COPY_MODES;

export function stridedCopyExport(width: CopyWidth): string {
  return `strided_copy_w${width}`;
}

/** Runs of at least this many 4-byte elements go through memory.copy instead of the f32x4 loop. */
const BULK_RUN = 64;

/** A dimension of an iteration space and its stride in each operand (in elements). */
export interface Dim {
  size: number;
  strides: number[];
}

/**
 * Drops size-1 dims and merges neighbours that are contiguous in every operand, so that a
 * broadcast or strided copy is expressed with as few (and as long) dims as possible.
 */
export function collapseDims(shape: readonly number[], strides: readonly (readonly number[])[]): Dim[] {
  const dims: Dim[] = [];
  shape.forEach((size, ax) => {
    if (size === 1) return;
    const st = strides.map((s) => s[ax]);
    const prev = dims[dims.length - 1];
    if (prev && prev.strides.every((ps, i) => ps === st[i] * size)) {
      prev.size *= size;
      prev.strides = st;
    } else dims.push({ size, strides: st });
  });
  return dims;
}

/** A copy as one kernel call: the [rows, cols] tile and the outer dims (innermost first). */
export interface StridedCopyPlan {
  mode: CopyMode;
  rows: number;
  cols: number;
  /** Element strides [source, destination] of the row and column dims. */
  rowStrides: [number, number];
  colStrides: [number, number];
  /** The remaining dims from the innermost out, as [size, source stride, destination stride]. */
  outer: [number, number, number][];
}

/**
 * Plans a copy of `shape` (element strides on each side). The copy visits every element once
 * and source and destination do not overlap, so the dims may be visited in any order: the tile's
 * cols are the dim contiguous in the destination (else the source's), its rows the next one
 * (for a transpose, the dim contiguous in the source).
 */
export function planStridedCopy(shape: readonly number[], srcStrides: readonly number[], dstStrides: readonly number[], width: CopyWidth): StridedCopyPlan {
  const dims = collapseDims(shape, [srcStrides, dstStrides]);
  const take = (pred: (d: Dim) => boolean): Dim | null => {
    for (let i = dims.length - 1; i >= 0; i--) if (pred(dims[i])) return dims.splice(i, 1)[0];
    return null;
  };
  const one: Dim = { size: 1, strides: [0, 0] };
  const col = take((d) => d.strides[1] === 1) ?? take((d) => d.strides[0] === 1) ?? dims.pop() ?? one;
  const [cs, cd] = col.strides;
  let row: Dim | null = null;
  let mode: CopyMode = 'general';
  if (cs === 1 && cd === 1) mode = 'run';
  else if (width === 4 && cs === 0 && cd === 1) mode = 'splat';
  else if (width === 4 && cd === 1 && col.size >= 4) {
    row = take((d) => d.strides[0] === 1 && d.size >= 4);
    if (row) mode = 'transpose';
  }
  row ??= dims.pop() ?? one;
  return {
    mode,
    rows: row.size,
    cols: col.size,
    rowStrides: [row.strides[0], row.strides[1]],
    colStrides: [cs, cd],
    outer: dims.reverse().map((d) => [d.size, d.strides[0], d.strides[1]]),
  };
}

/** The arguments of the kernel after its two pointers: (desc, nOuter, mode, rows, rowSrc, rowDst, cols, colSrc, colDst), strides in bytes. */
export function stridedCopyArgs(p: StridedCopyPlan, width: CopyWidth, desc: number): number[] {
  const b = (s: number) => s * width;
  return [desc, p.outer.length, COPY_MODES[p.mode], p.rows, b(p.rowStrides[0]), b(p.rowStrides[1]), p.cols, b(p.colStrides[0]), b(p.colStrides[1])];
}

/** Writes the outer dims' descriptor (16 bytes per dim) at byte address desc of the i32 heap view. */
export function writeCopyDescriptor(heap: Int32Array, desc: number, p: StridedCopyPlan, width: CopyWidth): void {
  p.outer.forEach(([size, ss, ds], i) => heap.set([size, ss * width, ds * width, 0], (desc >> 2) + 4 * i));
}

/** The bytes the descriptor of a plan takes. */
export function copyDescriptorBytes(p: StridedCopyPlan): number {
  return 16 * p.outer.length;
}

/** Element loads and stores of one width, as bit patterns. */
interface ElementIO {
  load(addr: Operand): (f: FuncBuilder) => void;
  store(addr: Operand, v: Operand): (f: FuncBuilder) => void;
  type: ValType;
}

const IO: Record<CopyWidth, ElementIO> = {
  1: { load: (a) => i32.load8u(a), store: (a, v) => i32.store8(a, v), type: I32 },
  4: { load: (a) => i32.load(a), store: (a, v) => i32.store(a, v), type: I32 },
  8: {
    // i64 loads and stores move the 8 bytes untouched; emitted raw (emit.ts has no i64 helpers).
    load: (a) => (f) => {
      f.push(a);
      f.raw.byte(0x29).u32(3).u32(0);
    },
    store: (a, v) => (f) => {
      f.push(a);
      f.push(v, ValType.i64 as never);
      f.raw.byte(0x37).u32(3).u32(0);
    },
    type: ValType.i64,
  },
};

function emitStridedCopy(mb: ModuleBuilder, width: CopyWidth): void {
  const params = [I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32];
  mb.func(stridedCopyExport(width), params, [], (f, src, dst, desc, nOuter, mode, rows, rowSrc, rowDst, cols, colSrc, colDst) => {
    const io = IO[width];
    const [r, c, s, d, s2, d2, dim, entry, cnt] = f.localsOf(I32, 9);
    const e = f.local(io.type);

    /** cols elements from s to d, one at a time along the col strides. */
    const generalRow = (s0: Local, d0: Local, n: Operand) => {
      f.set(s2, s0);
      f.set(d2, d0);
      f.for(c, 0, n, 1, () => {
        f.set(e, io.load(s2));
        f.exec(io.store(d2, e));
        f.inc(s2, colSrc);
        f.inc(d2, colDst);
      });
    };
    /** The rows x cols tile at (s, d) in the current mode. */
    const tile = () => {
      if (width !== 4) {
        f.if(
          i32.eq(mode, COPY_MODES.run),
          () => forRows(() => f.exec(memory.copy(d, s, i32.mul(cols, width)))),
          () => forRows(() => generalRow(s, d, cols)),
        );
        return;
      }
      f.if(
        i32.eq(mode, COPY_MODES.run),
        () =>
          f.if(
            i32.geS(cols, BULK_RUN),
            () => forRows(() => f.exec(memory.copy(d, s, i32.shl(cols, 2)))),
            () => forRows(() => vectorRun(f, s, d, cols, null)),
          ),
        () =>
          f.if(
            i32.eq(mode, COPY_MODES.splat),
            () => {
              const v = f.local(V128);
              forRows(() => {
                f.set(v, v128.load32Splat(s));
                vectorRun(f, s, d, cols, v);
              });
            },
            () => f.if(i32.eq(mode, COPY_MODES.transpose), () => transposeTile(f, s, d, rows, cols, colSrc, rowDst), () => forRows(() => generalRow(s, d, cols))),
          ),
      );
    };
    /** body() once per row, with s and d at the row's start. */
    const forRows = (body: () => void) => {
      const [sr, dr] = [f.local(I32), f.local(I32)];
      f.set(sr, s);
      f.set(dr, d);
      f.for(r, 0, rows, 1, () => {
        body();
        f.inc(s, rowSrc);
        f.inc(d, rowDst);
      });
      f.set(s, sr);
      f.set(d, dr);
    };

    f.set(s, src);
    f.set(d, dst);
    f.block((done) =>
      f.loop((next) => {
        tile();
        // Advance the odometer of the outer dims, innermost first.
        f.set(dim, 0);
        f.set(entry, desc);
        f.loop((carry) => {
          f.brIf(done, i32.geS(dim, nOuter));
          f.set(cnt, i32.add(i32.load(entry, 12), 1));
          f.inc(s, i32.load(entry, 4));
          f.inc(d, i32.load(entry, 8));
          f.if(i32.ltS(cnt, i32.load(entry)), () => {
            f.exec(i32.store(entry, cnt, 12));
            f.br(next);
          });
          f.exec(i32.store(entry, 0, 12));
          f.set(s, i32.sub(s, i32.mul(i32.load(entry, 4), cnt)));
          f.set(d, i32.sub(d, i32.mul(i32.load(entry, 8), cnt)));
          f.inc(dim);
          f.inc(entry, 16);
          f.br(carry);
        });
      }),
    );
  });
}

/**
 * n contiguous 4-byte elements from s to d (neither pointer moves): f32x4 moves, then the last 1-3
 * one at a time; with `splat`, every element is the one at s.
 */
function vectorRun(f: FuncBuilder, s: Local, d: Local, n: Local, splat: Local | null): void {
  const [i, off] = f.localsOf(I32, 2);
  f.set(off, 0);
  f.for(i, 0, i32.sub(n, 3), 4, () => {
    f.exec(v128.store(i32.add(d, off), splat ?? v128.load(i32.add(s, off))));
    f.inc(off, 16);
  });
  f.for(i, i, n, 1, () => {
    f.exec(i32.store(i32.add(d, off), i32.load(splat ? s : i32.add(s, off))));
    f.inc(off, 4);
  });
}

/**
 * dst[r * rowDst + c * 4] = src[r * 4 + c * colSrc] for r < rows, c < cols: 4x4 blocks through
 * registers, then the columns past the last full block and the rows past the last full block
 * element by element. s and d are left as they were.
 */
function transposeTile(f: FuncBuilder, s: Local, d: Local, rows: Local, cols: Local, colSrc: Local, rowDst: Local): void {
  const [r, c, sb, db, sp, dp, rows4, cols4, j] = f.localsOf(I32, 9);
  const x = f.localsOf(V128, 4);
  const tmp = f.localsOf(V128, 4);
  f.set(rows4, i32.and(rows, -4));
  f.set(cols4, i32.and(cols, -4));
  const scalar = (rFrom: Operand, rTo: Operand, cFrom: Operand, cTo: Operand) =>
    f.for(r, rFrom, rTo, 1, () => {
      f.set(sp, i32.add(i32.add(s, i32.shl(r, 2)), i32.mul(cFrom, colSrc)));
      f.set(dp, i32.add(i32.add(d, i32.mul(r, rowDst)), i32.shl(cFrom, 2)));
      f.for(c, cFrom, cTo, 1, () => {
        f.exec(i32.store(dp, i32.load(sp)));
        f.inc(sp, colSrc);
        f.inc(dp, 4);
      });
    });
  f.for(j, 0, rows4, 4, () => {
    // Block row j: source rows j..j+3 are adjacent 4-element groups along each source column.
    f.set(sb, i32.add(s, i32.shl(j, 2)));
    f.set(db, i32.add(d, i32.mul(j, rowDst)));
    f.for(c, 0, cols4, 4, () => {
      f.set(sp, sb);
      for (let k = 0; k < 4; k++) {
        f.set(x[k], v128.load(sp));
        if (k < 3) f.inc(sp, colSrc);
      }
      transpose4(f, x, tmp);
      f.set(dp, db);
      for (let k = 0; k < 4; k++) {
        f.exec(v128.store(dp, x[k]));
        if (k < 3) f.inc(dp, rowDst);
      }
      f.inc(sb, i32.shl(colSrc, 2));
      f.inc(db, 16);
    });
  });
  f.if(i32.ltS(cols4, cols), () => scalar(0, rows4, cols4, cols));
  scalar(rows4, rows, 0, cols);
}

export function emitStridedCopyKernels(mb: ModuleBuilder): void {
  for (const width of [1, 4, 8] as const) emitStridedCopy(mb, width);
}
