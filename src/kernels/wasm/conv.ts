/**
 * Convolution on the wasm backend as implicit GEMM over the padded input: no im2col is made.
 * Per image and group the input is copied once into a zero-bordered buffer (split into its stride
 * phases when the stride is above 1), and every kernel tap's row of the would-be im2col matrix is
 * that buffer read at a fixed offset (see DirectConv below). So
 * - forward:         out[og, grid] = W[og, K] @ P[taps, grid]               (conv_gemm)
 * - weight gradient: dW[og, K] += dY'[og, grid] . P[taps, grid], dY' the output gradient spread
 *                    onto the same grid with zeros between rows (conv_dots: dot products along
 *                    the grid, so both operands are read as they lie)
 * - input gradient:  the "full" convolution of dY with the weights flipped and transposed,
 *                    through the forward code: once for stride 1, once per stride phase of dX
 *                    otherwise; with a dilation and a stride at once, W^T @ dY is formed a
 *                    block of im2col columns at a time and summed back into dX (conv_uncols).
 * Padding is zeros in the buffer, so the micro-kernels have no bounds and no branch inside.
 * The weights are packed once per group into panels of 4 rows (gemm_pack_a of module.ts).
 *
 * The micro-kernel is a 4 x 8 tile (four output channels by eight output positions, eight f32x4
 * accumulators), as the matmul's (module.ts), but it reads B rows through a table of offsets
 * (the taps) instead of a packed panel; the 4-channel panels suit the narrow channel counts (8,
 * 16, 32) of small CNNs, where a wider tile would be mostly padding. One thread (the backend's
 * worker threads are used by the matmul only).
 */
import type { Conv2dLayout, Storage } from '../backend.js';
import { call, f32, f32x4, i32, select, v128, ValType, type FuncBuilder, type Local, type ModuleBuilder, type Operand } from './emit.js';
import { ceilDiv, elementwise, type KernelExports } from './module.js';

const { i32: I32, v128: V128 } = ValType;

/** Rows and columns of the micro-kernel's tile. */
const MR = 4;
const NR = 8;
/** Bytes of an im2col column block (the fallback form), to stay in L2 next to the packed weights. */
const BLOCK_BYTES = 96 * 1024;

/** The window geometry that conv_uncols takes after its pointers. */
const GEOMETRY = ['c', 'h', 'w', 'kh', 'kw', 'ow', 'sh', 'sw', 'ph', 'pw', 'dh', 'dw'] as const;

/**
 * The loop nest of conv_uncols: for every row p = (ci, ki, kj) of the column
 * block and every piece of it that lies in one output row, `run` gets the block row pointer of
 * the piece, the image row pointer of its first input pixel, and its split into a leading run of
 * padding, a run of input pixels and a trailing run of padding (element counts).
 */
function blockRows(
  f: FuncBuilder,
  x: Local,
  block: Local,
  ldb: Local,
  j0: Local,
  nb: Local,
  g: Local[],
  run: (dst: Local, src: Local, before: Local, inside: Local, after: Local) => void,
): void {
  const [c, h, w, kh, kw, ow, sh, sw, ph, pw, dh, dw] = g;
  const [ci, ki, kj, xoff, lo, hi, j, oy, ox0, ox1, a, b, y, t, dst, src, before, inside, after, plane] = f.localsOf(I32, 20);
  const clamp = (v: Operand, low: Operand, high: Operand) => select(low, select(high, v, i32.gtS(v, high)), i32.ltS(v, low));
  f.set(plane, x);
  f.set(dst, block);
  f.for(ci, 0, c, 1, () => {
    f.for(ki, 0, kh, 1, () =>
      f.for(kj, 0, kw, 1, () => {
        // The output columns ox whose input column ox*sw + xoff is inside the image: [lo, hi).
        f.set(xoff, i32.sub(i32.mul(kj, dw), pw));
        f.set(t, i32.sub(0, xoff));
        f.set(lo, clamp(ceilDiv(t, sw), 0, ow));
        f.set(t, i32.sub(w, xoff));
        f.set(hi, clamp(ceilDiv(t, sw), lo, ow));
        f.set(j, j0);
        f.block((exit) =>
          f.loop((top) => {
            f.brIf(exit, i32.geS(j, i32.add(j0, nb)));
            f.set(oy, i32.divS(j, ow));
            f.set(ox0, i32.sub(j, i32.mul(oy, ow)));
            f.set(ox1, i32.add(ox0, i32.sub(i32.add(j0, nb), j)));
            f.set(ox1, select(ow, ox1, i32.gtS(ox1, ow)));
            f.set(y, i32.add(i32.sub(i32.mul(oy, sh), ph), i32.mul(ki, dh)));
            f.set(a, clamp(lo, ox0, ox1));
            f.set(b, clamp(hi, a, ox1));
            // A row of the window outside the image is all padding.
            f.set(a, select(a, ox1, i32.ltU(y, h)));
            f.set(b, select(b, ox1, i32.ltU(y, h)));
            f.set(before, i32.sub(a, ox0));
            f.set(inside, i32.sub(b, a));
            f.set(after, i32.sub(ox1, b));
            f.set(src, i32.add(plane, i32.shl(i32.add(i32.mul(y, w), i32.add(i32.mul(a, sw), xoff)), 2)));
            run(dst, src, before, inside, after);
            f.inc(dst, i32.shl(i32.sub(ox1, ox0), 2));
            f.inc(j, i32.sub(ox1, ox0));
            f.br(top);
          }),
        );
        f.set(dst, i32.add(dst, i32.sub(ldb, i32.shl(nb, 2))));
      }),
    );
    f.inc(plane, i32.shl(i32.mul(h, w), 2));
  });
}

/**
 * conv_uncols(block, <geometry>, j0, nb, ldbBytes, dx): the adjoint of an im2col block
 * (block[p, jj] = cols[p, j0 + jj]): adds each block value that came from an input pixel back
 * onto that pixel of dx (padding gets nothing).
 */
function emitUncols(mb: ModuleBuilder): void {
  mb.func('conv_uncols', [I32, ...GEOMETRY.map(() => I32), I32, I32, I32, I32], [], (f, block, ...rest) => {
    const g = rest.slice(0, GEOMETRY.length);
    const [j0, nb, ldb, dx] = rest.slice(GEOMETRY.length);
    const sw = g[7];
    const q = f.local(I32);
    blockRows(
      f,
      dx,
      block,
      ldb,
      j0,
      nb,
      g,
      (from, to, before, inside) => {
        f.set(q, i32.add(from, i32.shl(before, 2)));
        f.if(
          i32.eq(sw, 1),
          () => elementwise(f, inside, [{ ptr: to }, { ptr: q }], { ptr: to }, ([o, v]) => f32x4.add(o, v)),
          () => {
            const end = f.local(I32);
            f.set(end, i32.add(q, i32.shl(inside, 2)));
            f.block((exit) =>
              f.loop((top) => {
                f.brIf(exit, i32.geU(q, end));
                f.exec(f32.store(to, f32.add(f32.load(to), f32.load(q))));
                f.inc(q, 4);
                f.inc(to, i32.shl(sw, 2));
                f.br(top);
              }),
            );
          },
        );
      },
    );
  });
}

/**
 * conv_gemm(pa, depth, rows, b, offs, cols, c, ldcBytes, tile, accumulate):
 * C[i, j] (+)= sum_p A(i, p) B[p, j] for i < rows, j < cols, with A packed in panels of 4 rows
 * (gemm_pack_a: panel q is depth x 4 floats) and B read in place: row p starts at b + offs[p]
 * (an i32 table of byte offsets), readable up to the next multiple of 8 columns. The table lets B
 * be a column block (offs[p] = p * ldb) or the padded input itself, whose row p for the tap
 * (ci, ki, kj) is the input shifted by that tap (see WasmConv.direct). Edge tiles of C go through
 * `tile` (4 x 8 floats).
 */
function emitGemm(mb: ModuleBuilder): void {
  const micro = mb.func(
    'conv_micro',
    [I32, I32, I32, I32, I32, I32, I32],
    [],
    (f, pa, b, offs, c, ldc, depth, accumulate) => {
      const acc = Array.from({ length: MR }, () => f.localsOf(V128, NR / 4));
      const bv = f.localsOf(V128, NR / 4);
      const a = f.local(V128);
      const end = f.local(I32);
      const row = f.local(I32);
      const pb = f.local(I32);
      for (const r of acc) for (const x of r) f.set(x, f32x4.splat(f32.const(0)));
      f.set(end, i32.add(pa, i32.mul(depth, MR * 4)));
      f.block((exit) =>
        f.loop((top) => {
          f.brIf(exit, i32.geU(pa, end));
          f.set(pb, i32.add(b, i32.load(offs)));
          for (let v = 0; v < NR / 4; v++) f.set(bv[v], v128.load(pb, 16 * v));
          for (let r = 0; r < MR; r++) {
            f.set(a, v128.load32Splat(pa, 4 * r));
            for (let v = 0; v < NR / 4; v++) f.set(acc[r][v], f32x4.add(acc[r][v], f32x4.mul(a, bv[v])));
          }
          f.inc(pa, MR * 4);
          f.inc(offs, 4);
          f.br(top);
        }),
      );
      const storeAll = (value: (r: number, v: number) => Operand) => {
        f.set(row, c);
        for (let r = 0; r < MR; r++) {
          for (let v = 0; v < NR / 4; v++) f.exec(v128.store(row, value(r, v), 16 * v));
          f.inc(row, ldc);
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
  mb.func('conv_gemm', Array<ValType>(10).fill(I32), [], (f, pa, depth, rows, b, offs, cols, c, ldc, tile, accumulate) => {
    const [i, j, panel, cTile, mr, nr, r, q, dst] = f.localsOf(I32, 9);
    const v = f.local(ValType.f32);
    f.for(j, 0, cols, NR, () => {
      f.set(nr, i32.sub(cols, j));
      f.set(panel, pa);
      f.for(i, 0, rows, MR, () => {
        f.set(mr, i32.sub(rows, i));
        f.set(cTile, i32.add(c, i32.add(i32.mul(i, ldc), i32.shl(j, 2))));
        const bCol = i32.add(b, i32.shl(j, 2));
        f.if(
          i32.and(i32.geS(mr, MR), i32.geS(nr, NR)),
          () => f.exec(call(micro, panel, bCol, offs, cTile, ldc, depth, accumulate)),
          () => {
            // An edge tile: the whole tile into scratch, then its valid part into C.
            f.exec(call(micro, panel, bCol, offs, tile, NR * 4, depth, 0));
            f.for(r, 0, select(mr, MR, i32.ltS(mr, MR)), 1, () =>
              f.for(q, 0, select(nr, NR, i32.ltS(nr, NR)), 1, () => {
                f.set(dst, i32.add(cTile, i32.add(i32.mul(r, ldc), i32.shl(q, 2))));
                f.set(v, f32.load(i32.add(tile, i32.shl(i32.add(i32.mul(r, NR), q), 2))));
                f.exec(f32.store(dst, select(f32.add(f32.load(dst), v), v, accumulate, ValType.f32)));
              }),
            );
          },
        );
        f.inc(panel, i32.mul(depth, MR * 4));
      });
    });
  });
}

/**
 * conv_dots(a, ldaBytes, rows, b, offs, cols, depth, c, ldcBytes): C[i, j] += dot(A[i, :depth],
 * B[j, :depth]) for i < rows (a multiple of 4), j < cols (a multiple of 2), depth a multiple of 4,
 * with B's row j at b + offs[j] as in conv_gemm: a 4 x 2 tile of dot products, each an f32x4
 * accumulator summed across its lanes at the end.
 */
function emitDots(mb: ModuleBuilder): void {
  mb.func('conv_dots', Array<ValType>(9).fill(I32), [], (f, a, lda, rows, b, offs, cols, depth, c, ldc) => {
    const [i, j, p, bRow, bRow2, cAt] = f.localsOf(I32, 6);
    const aRows = f.localsOf(I32, 4);
    const acc = Array.from({ length: 4 }, () => f.localsOf(V128, 2));
    const bv = f.localsOf(V128, 2);
    const av = f.local(V128);
    const depthBytes = f.local(I32);
    f.set(depthBytes, i32.shl(depth, 2));
    f.for(i, 0, rows, 4, () =>
      f.for(j, 0, cols, 2, () => {
        for (const r of acc) for (const x of r) f.set(x, f32x4.splat(f32.const(0)));
        // One pointer per row and one running offset: each load is base + offset, no multiply.
        aRows.forEach((row, r) => f.set(row, i32.add(a, i32.mul(i32.add(i, r), lda))));
        f.set(bRow, i32.add(b, i32.load(i32.add(offs, i32.shl(j, 2)))));
        f.set(bRow2, i32.add(b, i32.load(i32.add(offs, i32.shl(j, 2)), 4)));
        f.for(p, 0, depthBytes, 16, () => {
          f.set(bv[0], v128.load(i32.add(bRow, p)));
          f.set(bv[1], v128.load(i32.add(bRow2, p)));
          for (let r = 0; r < 4; r++) {
            f.set(av, v128.load(i32.add(aRows[r], p)));
            for (let s = 0; s < 2; s++) f.set(acc[r][s], f32x4.add(acc[r][s], f32x4.mul(av, bv[s])));
          }
        });
        for (let r = 0; r < 4; r++)
          for (let s = 0; s < 2; s++) {
            f.set(cAt, i32.add(c, i32.add(i32.mul(i32.add(i, r), ldc), i32.shl(i32.add(j, s), 2))));
            const x = acc[r][s];
            const lanes = f32.add(f32.add(f32x4.extractLane(x, 0), f32x4.extractLane(x, 1)), f32.add(f32x4.extractLane(x, 2), f32x4.extractLane(x, 3)));
            f.exec(f32.store(cAt, f32.add(f32.load(cAt), lanes)));
          }
      }),
    );
  });
}

/**
 * conv_copy_rows(src, srcOuterBytes, srcInnerBytes, srcStepBytes, dst, dstOuterBytes,
 * dstInnerBytes, dstStepBytes, outer, inner, len): copies outer x inner runs of `len` floats
 * between two strided layouts, consecutive elements of a run srcStepBytes / dstStepBytes apart
 * (an image into the interior of its padded copy or into one stride phase of it, a block of the
 * padded-width grid into the output, one stride phase of the input gradient into its place).
 */
function emitCopyRows(mb: ModuleBuilder): void {
  mb.func('conv_copy_rows', Array<ValType>(11).fill(I32), [], (f, src, srcOuter, srcInner, srcStep, dst, dstOuter, dstInner, dstStep, outer, inner, len) => {
    const [i, j, from, to, end, vecEnd] = f.localsOf(I32, 6);
    f.for(i, 0, outer, 1, () => {
      f.for(j, 0, inner, 1, () => {
        f.set(from, i32.add(src, i32.add(i32.mul(i, srcOuter), i32.mul(j, srcInner))));
        f.set(to, i32.add(dst, i32.add(i32.mul(i, dstOuter), i32.mul(j, dstInner))));
        // Contiguous runs go a vector at a time, strided ones one float at a time.
        f.set(vecEnd, select(i32.add(to, i32.shl(i32.and(len, -4), 2)), to, i32.and(i32.eq(srcStep, 4), i32.eq(dstStep, 4))));
        f.set(end, i32.add(to, i32.mul(len, dstStep)));
        f.block((exit) =>
          f.loop((top) => {
            f.brIf(exit, i32.geU(to, vecEnd));
            f.exec(v128.store(to, v128.load(from)));
            f.inc(to, 16);
            f.inc(from, 16);
            f.br(top);
          }),
        );
        f.block((exit) =>
          f.loop((top) => {
            f.brIf(exit, i32.geU(to, end));
            f.exec(f32.store(to, f32.load(from)));
            f.inc(to, dstStep);
            f.inc(from, srcStep);
            f.br(top);
          }),
        );
      });
    });
  });
}

/** conv_all_finite(x, n): 1 when none of the n floats at x is NaN or infinite (x*0 is 0 exactly for those). */
function emitAllFinite(mb: ModuleBuilder): void {
  mb.func('conv_all_finite', [I32, I32], [I32], (f, x, n) => {
    const [end, vecEnd] = f.localsOf(I32, 2);
    const acc = f.local(V128);
    const accS = f.local(ValType.f32);
    f.set(acc, f32x4.splat(f32.const(0)));
    f.set(accS, f32.const(0));
    f.set(end, i32.add(x, i32.shl(n, 2)));
    f.set(vecEnd, i32.add(x, i32.shl(i32.and(n, -4), 2)));
    f.block((exit) =>
      f.loop((top) => {
        f.brIf(exit, i32.geU(x, vecEnd));
        f.set(acc, f32x4.add(acc, f32x4.mul(v128.load(x), f32x4.splat(f32.const(0)))));
        f.inc(x, 16);
        f.br(top);
      }),
    );
    f.block((exit) =>
      f.loop((top) => {
        f.brIf(exit, i32.geU(x, end));
        f.set(accS, f32.add(accS, f32.mul(f32.load(x), f32.const(0))));
        f.inc(x, 4);
        f.br(top);
      }),
    );
    f.set(accS, f32.add(accS, f32.add(f32.add(f32x4.extractLane(acc, 0), f32x4.extractLane(acc, 1)), f32.add(f32x4.extractLane(acc, 2), f32x4.extractLane(acc, 3)))));
    f.push(f32.eq(accS, accS));
  });
}

/** Adds the convolution kernels to the backend's module (called by buildKernelModule). */
export function emitConvKernels(mb: ModuleBuilder): void {
  emitAllFinite(mb);
  emitCopyRows(mb);
  emitUncols(mb);
  emitGemm(mb);
  emitDots(mb);
}

// ---- the host side: blocking, padding and packing, per image and group ----

export interface WasmConvHost {
  exports: KernelExports;
  /** Byte address of a storage's first element. */
  ptr(s: Storage): number;
  /** Scratch memory for one call (reused between calls; asking again may move it). */
  scratch(bytes: number): number;
  /** A temporary float32 buffer beyond the scratch (zero-filled); the caller releases it. */
  temp(numel: number): { ptr: number; release(): void };
  /** The whole memory as floats (re-read after any scratch call: the memory may have grown). */
  f32(): Float32Array;
  i32(): Int32Array;
}

const roundUp = (v: number, m: number) => Math.ceil(v / m) * m;

/** Output columns per block of the padded-width grid (whole output rows, at least this many). */
const DIRECT_COLUMNS = 256;

/** The per-group sizes of a convolution and the column blocking of its im2col form. */
function plan(l: Conv2dLayout) {
  const cg = l.c / l.groups;
  const og = l.outChannels / l.groups;
  const K = cg * l.kh * l.kw;
  const L = l.oh * l.ow;
  // As many columns as keep the [K, nb] block near BLOCK_BYTES, in whole tiles.
  const nb = Math.min(roundUp(L, NR), Math.max(NR, Math.floor(BLOCK_BYTES / (K * 4) / NR) * NR));
  return { cg, og, K, L, nb, ldb: nb * 4 };
}

/** The geometry arguments of conv_uncols for one group. */
const geometry = (l: Conv2dLayout, cg: number) => [cg, l.h, l.w, l.kh, l.kw, l.ow, l.sh, l.sw, l.ph, l.pw, l.dh, l.dw];

/** Carves consecutive 16-byte aligned regions out of one scratch allocation. */
function carve(host: WasmConvHost, sizes: number[]): number[] {
  const aligned = sizes.map((s) => roundUp(s, 16));
  let at = host.scratch(aligned.reduce((a, b) => a + b, 0));
  return aligned.map((s) => {
    const p = at;
    at += s;
    return p;
  });
}

/**
 * A convolution seen on the padded-width grid: with the input of one image and group copied into
 * a zero-bordered buffer P [cin, hp, wp], output (oy, ox) of tap (ci, ki, kj) reads
 * P[ci*hp*wp + (oy + ki*dh)*wp + ox + kj*dw] (stride 1), which is P at offset off(tap) + j for
 * the grid index j = oy*wp + ox. So the whole convolution is a GEMM whose B row for each tap is P
 * itself, shifted: no im2col, no bounds. The grid computes wp - ow extra columns per row
 * (discarded when the block is copied out), a few percent for the usual paddings.
 * A stride s is undone the same way by splitting P into its s x s phases (rows = a mod sh,
 * columns = b mod sw, each [cin, hq, wq] with hq = ceil(hp / sh)): the tap (ki, kj) then reads
 * phase ((ki*dh) mod sh, (kj*dw) mod sw) shifted by (floor(ki*dh / sh), floor(kj*dw / sw)), and
 * the grid is j = oy*wq + ox. Only the phases some tap reads are filled.
 */
interface DirectConv {
  n: number;
  groups: number;
  /** Input: address, channels per group, total channels, spatial size. */
  src: number;
  cin: number;
  srcChannels: number;
  H: number;
  W: number;
  kh: number;
  kw: number;
  sh: number;
  sw: number;
  dh: number;
  dw: number;
  ph: number;
  pw: number;
}

/** The phase planes' geometry, each tap's byte offset into them, and the output blocking. */
function directGeometry(d: DirectConv) {
  const hp = d.H + 2 * d.ph;
  const wp = d.W + 2 * d.pw;
  const OH = Math.floor((hp - (d.kh - 1) * d.dh - 1) / d.sh) + 1;
  const OW = Math.floor((wp - (d.kw - 1) * d.dw - 1) / d.sw) + 1;
  const hq = Math.ceil(hp / d.sh);
  const wq = Math.ceil(wp / d.sw);
  const K = d.cin * d.kh * d.kw;
  const offsets = new Int32Array(K);
  const phases = new Set<number>();
  for (let ci = 0; ci < d.cin; ci++)
    for (let ki = 0; ki < d.kh; ki++)
      for (let kj = 0; kj < d.kw; kj++) {
        const phase = ((ki * d.dh) % d.sh) * d.sw + ((kj * d.dw) % d.sw);
        phases.add(phase);
        const row = Math.floor((ki * d.dh) / d.sh);
        const col = Math.floor((kj * d.dw) / d.sw);
        offsets[(ci * d.kh + ki) * d.kw + kj] = (((phase * d.cin + ci) * hq + row) * wq + col) * 4;
      }
  const rowsPerBlock = Math.max(1, Math.ceil(DIRECT_COLUMNS / wq));
  const nbPad = roundUp(rowsPerBlock * wq, NR);
  // Reads run past the last grid row by a row, a tile and the widest tap: zeros there.
  const paddedFloats = d.sh * d.sw * d.cin * hq * wq + wq + (d.kw - 1) * d.dw + 2 * NR;
  return { hq, wq, OH, OW, K, offsets, phases: [...phases], rowsPerBlock, nbPad, paddedFloats };
}

/** Copies one image's group of channels into the phases of the padded buffer that the taps read. */
function fillPhases(k: KernelExports, d: DirectConv, gm: ReturnType<typeof directGeometry>, image: number, padded: number): void {
  for (const phase of gm.phases) {
    const a = Math.floor(phase / d.sw);
    const b = phase % d.sw;
    // Phase rows y' hold input rows y = sh*y' + a - ph; those inside [0, H) are copied.
    const y0 = Math.max(0, Math.ceil((d.ph - a) / d.sh));
    const y1 = Math.floor((d.H - 1 + d.ph - a) / d.sh);
    const x0 = Math.max(0, Math.ceil((d.pw - b) / d.sw));
    const x1 = Math.floor((d.W - 1 + d.pw - b) / d.sw);
    if (y1 < y0 || x1 < x0) continue;
    const src = image + ((d.sh * y0 + a - d.ph) * d.W + (d.sw * x0 + b - d.pw)) * 4;
    const dst = padded + (((phase * d.cin) * gm.hq + y0) * gm.wq + x0) * 4;
    k.conv_copy_rows(src, d.H * d.W * 4, d.sh * d.W * 4, d.sw * 4, dst, gm.hq * gm.wq * 4, gm.wq * 4, 4, d.cin, y1 - y0 + 1, x1 - x0 + 1);
  }
}

export class WasmConv {
  constructor(private readonly h: WasmConvHost) {}

  forward(x: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    const d = this.directOf(l, this.h.ptr(x), l.c / l.groups, l.c, l.h, l.w, [l.kh, l.kw], [l.sh, l.sw], [l.ph, l.pw]);
    const weights = l.outChannels * d.cin * l.kh * l.kw;
    this.directForward(d, l.outChannels / l.groups, this.h.ptr(out), l.outChannels, weights * 4, (dst) => {
      const from = this.h.ptr(weight) >>> 2;
      this.h.f32().copyWithin(dst >>> 2, from, from + weights);
    });
  }

  backwardInput(grad: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    const phT = (l.kh - 1) * l.dh - l.ph;
    const pwT = (l.kw - 1) * l.dw - l.pw;
    if (l.sh === 1 && l.sw === 1 && phT >= 0 && pwT >= 0) {
      // The input gradient of a stride-1 convolution is the "full" convolution of the output
      // gradient with the weights flipped in space and transposed in channels.
      const cg = l.c / l.groups;
      const og = l.outChannels / l.groups;
      const d = this.directOf(l, this.h.ptr(grad), og, l.outChannels, l.oh, l.ow, [l.kh, l.kw], [1, 1], [phT, pwT]);
      this.directForward(d, cg, this.h.ptr(out), l.c, l.outChannels * cg * l.kh * l.kw * 4, (dst) => this.writeFlippedTaps(dst, weight, l, 0, 0, l.kh, l.kw));
      return;
    }
    if (l.dh === 1 && l.dw === 1) this.backwardInputByPhases(grad, weight, out, l);
    else this.backwardInputByColumns(grad, weight, out, l);
  }

  /**
   * Writes at `dst` the kernel of the "full" convolution that gives the input gradient: the taps
   * ki = a + m*sh, kj = b + m2*sw (m < kha, m2 < kwb) of the weights, flipped in space and
   * transposed in channels, as [groups, in/groups, out/groups, kha, kwb]. At stride 1 (a = b = 0,
   * kha = kh, kwb = kw) that is every tap; at a larger stride, those of one stride phase.
   */
  private writeFlippedTaps(dst: number, weight: Storage, l: Conv2dLayout, a: number, b: number, kha: number, kwb: number): void {
    const cg = l.c / l.groups;
    const og = l.outChannels / l.groups;
    const taps = kha * kwb;
    const f = this.h.f32();
    const src = this.h.ptr(weight) >>> 2;
    const base = dst >>> 2;
    for (let g = 0; g < l.groups; g++)
      for (let ci = 0; ci < cg; ci++)
        for (let o = 0; o < og; o++)
          for (let m = 0; m < kha; m++)
            for (let m2 = 0; m2 < kwb; m2++) {
              const ki = a + (kha - 1 - m) * l.sh;
              const kj = b + (kwb - 1 - m2) * l.sw;
              f[base + ((g * cg + ci) * og + o) * taps + m * kwb + m2] = f[src + (((g * og + o) * cg + ci) * l.kh + ki) * l.kw + kj];
            }
  }

  /**
   * The input gradient of a strided convolution, one stride phase of the input at a time: the
   * pixels y = sh*Y' + a - ph (and likewise in x) receive only the taps ki = a + m*sh, from
   * output row Y' - m, so each phase is a stride-1 "full" convolution of the output gradient with
   * those taps flipped (directForward), written into a phase-sized buffer and then spread into
   * its places in dX. The phases partition dX: every pixel is written once (or stays zero).
   */
  private backwardInputByPhases(grad: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    const k = this.h.exports;
    const cg = l.c / l.groups;
    const og = l.outChannels / l.groups;
    const dx = this.h.ptr(out);
    this.h.f32().fill(0, dx >>> 2, (dx >>> 2) + l.n * l.c * l.h * l.w);
    for (let a = 0; a < Math.min(l.sh, l.kh); a++)
      for (let b = 0; b < Math.min(l.sw, l.kw); b++) {
        const kha = Math.ceil((l.kh - a) / l.sh);
        const kwb = Math.ceil((l.kw - b) / l.sw);
        const rows = l.oh + kha - 1;
        const cols = l.ow + kwb - 1;
        // The phase rows and columns that land inside dX.
        const y0 = Math.max(0, Math.ceil((l.ph - a) / l.sh));
        const y1 = Math.min(rows - 1, Math.floor((l.h - 1 + l.ph - a) / l.sh));
        const x0 = Math.max(0, Math.ceil((l.pw - b) / l.sw));
        const x1 = Math.min(cols - 1, Math.floor((l.w - 1 + l.pw - b) / l.sw));
        if (y1 < y0 || x1 < x0) continue;
        const phase = this.h.temp(l.n * l.c * rows * cols);
        const d = this.directOf(l, this.h.ptr(grad), og, l.outChannels, l.oh, l.ow, [kha, kwb], [1, 1], [kha - 1, kwb - 1]);
        this.directForward(d, cg, phase.ptr, l.c, l.outChannels * cg * kha * kwb * 4, (dst) => this.writeFlippedTaps(dst, weight, l, a, b, kha, kwb));
        const from = phase.ptr + (y0 * cols + x0) * 4;
        const to = dx + ((l.sh * y0 + a - l.ph) * l.w + (l.sw * x0 + b - l.pw)) * 4;
        k.conv_copy_rows(from, rows * cols * 4, cols * 4, 4, to, l.h * l.w * 4, l.sh * l.w * 4, l.sw * 4, l.n * l.c, y1 - y0 + 1, x1 - x0 + 1);
        phase.release();
      }
  }

  /**
   * Returns false (and does nothing) when x holds a NaN or an infinity: the padded-width grid
   * multiplies the cells between output rows by the zero gaps of dY', and 0 * inf would put a NaN
   * where the definition has none. The caller then runs the reference kernel.
   */
  backwardWeight(x: Storage, grad: Storage, out: Storage, l: Conv2dLayout): boolean {
    if (!this.h.exports.conv_all_finite(this.h.ptr(x), l.n * l.c * l.h * l.w)) return false;
    this.backwardWeightDirect(x, grad, out, l);
    return true;
  }

  /** A DirectConv over `src` [n, srcChannels, H, W] with l's batch, groups and dilation. */
  private directOf(
    l: Conv2dLayout,
    src: number,
    cin: number,
    srcChannels: number,
    H: number,
    W: number,
    [kh, kw]: [number, number],
    [sh, sw]: [number, number],
    [ph, pw]: [number, number],
  ): DirectConv {
    return { n: l.n, groups: l.groups, src, cin, srcChannels, H, W, kh, kw, sh, sw, dh: l.dh, dw: l.dw, ph, pw };
  }

  /**
   * out [n, dstChannels, OH, OW] (cout per group) = the stride-1 convolution `d` with weights
   * [groups, cout, cin*kh*kw], which `writeWeights` puts at the address it is given.
   */
  private directForward(d: DirectConv, cout: number, dst: number, dstChannels: number, weightBytes: number, writeWeights: (at: number) => void): void {
    const k = this.h.exports;
    const gm = directGeometry(d);
    const { wq, OH, OW, K, rowsPerBlock, nbPad } = gm;
    const [weights, packed, padded, offs, cBlock, tile] = carve(this.h, [weightBytes, roundUp(cout, MR) * K * 4, gm.paddedFloats * 4, K * 4, cout * nbPad * 4, MR * NR * 4]);
    writeWeights(weights);
    this.h.i32().set(gm.offsets, offs >>> 2);
    // The border, the slack and (below) the interior: the border stays zero for every image.
    this.h.f32().fill(0, padded >>> 2, (padded >>> 2) + gm.paddedFloats);
    for (let g = 0; g < d.groups; g++) {
      k.gemm_pack_a(weights + g * cout * K * 4, K * 4, 4, cout, K, packed);
      for (let n = 0; n < d.n; n++) {
        fillPhases(k, d, gm, d.src + ((n * d.srcChannels + g * d.cin) * d.H * d.W) * 4, padded);
        const outImage = dst + ((n * dstChannels + g * cout) * OH * OW) * 4;
        for (let oy = 0; oy < OH; oy += rowsPerBlock) {
          const rows = Math.min(rowsPerBlock, OH - oy);
          k.conv_gemm(packed, K, cout, padded + oy * wq * 4, offs, roundUp(rows * wq, NR), cBlock, nbPad * 4, tile, 0);
          k.conv_copy_rows(cBlock, nbPad * 4, wq * 4, 4, outImage + oy * OW * 4, OH * OW * 4, OW * 4, 4, cout, rows, OW);
        }
      }
    }
  }

  /** dW[o, tap] = sum over images and the padded-width grid of dY'[o, j] * P[off(tap) + j], dY' zero off the output. */
  private backwardWeightDirect(x: Storage, grad: Storage, out: Storage, l: Conv2dLayout): void {
    const k = this.h.exports;
    const cg = l.c / l.groups;
    const og = l.outChannels / l.groups;
    const d = this.directOf(l, this.h.ptr(x), cg, l.c, l.h, l.w, [l.kh, l.kw], [l.sh, l.sw], [l.ph, l.pw]);
    const gm = directGeometry(d);
    const { wq, OH, OW, K, rowsPerBlock, nbPad } = gm;
    const rows = roundUp(og, 4);
    const kPad = roundUp(K, 2);
    const [padded, offs, gradBlock, acc] = carve(this.h, [gm.paddedFloats * 4, kPad * 4, rows * nbPad * 4, rows * kPad * 4]);
    // An odd last tap pairs with a copy of the one before it: its column of acc is never read.
    const offsets = new Int32Array(kPad);
    offsets.set(gm.offsets);
    if (kPad > K) offsets[K] = offsets[K - 1];
    this.h.i32().set(offsets, offs >>> 2);
    const f = this.h.f32();
    f.fill(0, padded >>> 2, (padded >>> 2) + gm.paddedFloats);
    // dY' is zero off the output: the grid's extra columns, the block's tail and the padding rows
    // are never written by a full block.
    f.fill(0, gradBlock >>> 2, (gradBlock >>> 2) + rows * nbPad);
    const gp = this.h.ptr(grad);
    const op = this.h.ptr(out) >>> 2;
    for (let g = 0; g < l.groups; g++) {
      f.fill(0, acc >>> 2, (acc >>> 2) + rows * kPad);
      for (let n = 0; n < l.n; n++) {
        fillPhases(k, d, gm, d.src + ((n * l.c + g * cg) * l.h * l.w) * 4, padded);
        const gImage = gp + ((n * l.outChannels + g * og) * OH * OW) * 4;
        for (let oy = 0; oy < OH; oy += rowsPerBlock) {
          const blockRows = Math.min(rowsPerBlock, OH - oy);
          // A partial block rewrites only part of what a full one did: clear the rest.
          if (blockRows < rowsPerBlock) f.fill(0, gradBlock >>> 2, (gradBlock >>> 2) + rows * nbPad);
          k.conv_copy_rows(gImage + oy * OW * 4, OH * OW * 4, OW * 4, 4, gradBlock, nbPad * 4, wq * 4, 4, og, blockRows, OW);
          k.conv_dots(gradBlock, nbPad * 4, rows, padded + oy * wq * 4, offs, kPad, roundUp(blockRows * wq, NR), acc, kPad * 4);
        }
      }
      for (let o = 0; o < og; o++) f.copyWithin(op + (g * og + o) * K, (acc >>> 2) + o * kPad, (acc >>> 2) + o * kPad + K);
    }
  }

  private backwardInputByColumns(grad: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    const { cg, og, K, L, nb, ldb } = plan(l);
    const k = this.h.exports;
    const [packed, gradBlock, block, offs, tile] = carve(this.h, [roundUp(K, MR) * og * 4, og * ldb, K * ldb, og * 4, MR * NR * 4]);
    this.h.i32().set(Int32Array.from({ length: og }, (_, p) => p * ldb), offs >>> 2);
    const [gp, wp, op] = [this.h.ptr(grad), this.h.ptr(weight), this.h.ptr(out)];
    const geo = geometry(l, cg);
    const f = this.h.f32();
    f.fill(0, op >>> 2, (op >>> 2) + l.n * l.c * l.h * l.w);
    for (let g = 0; g < l.groups; g++) {
      // W^T as A: row p of A is column p of the group's weights [og, K].
      k.gemm_pack_a(wp + g * og * K * 4, 4, K * 4, K, og, packed);
      for (let n = 0; n < l.n; n++) {
        const dxImage = op + ((n * l.c + g * cg) * l.h * l.w) * 4;
        for (let j0 = 0; j0 < L; j0 += nb) {
          const cols = Math.min(nb, L - j0);
          // In a last, partial block the columns past `cols` keep older values: each column of the
          // product depends on its own column only, and those are never read back.
          k.conv_copy_rows(gp + ((n * l.outChannels + g * og) * L + j0) * 4, L * 4, 0, 4, gradBlock, ldb, 0, 4, og, 1, cols);
          k.conv_gemm(packed, og, K, gradBlock, offs, cols, block, ldb, tile, 0);
          k.conv_uncols(block, ...geo, j0, cols, ldb, dxImage);
        }
      }
    }
  }
}
