/**
 * Convolution on the wasm backend as implicit GEMM over the padded input: no im2col is made.
 * Per image and group the input is copied once into a zero-bordered buffer (split into its stride
 * phases when the stride is above 1), and every kernel tap's row of the would-be im2col matrix is
 * that buffer read at a fixed offset (see DirectConv below). So
 * - forward:         out[og, grid] = W[og, K] @ P[taps, grid]                (conv_fwd)
 * - weight gradient: dW^T[K, og] += P[taps, positions] @ dY^T[positions, og], a GEMM whose depth
 *                    is the output positions, taps read from P as they lie, dY packed in panels
 *                    of 8 channels (conv_wgrad, conv_pack_grad)
 * - input gradient:  the "full" convolution of dY with the weights flipped and transposed,
 *                    through the forward code: once for stride 1, once per stride phase of dX
 *                    otherwise (each phase written straight into its pixels of dX); with a
 *                    dilation and a stride at once, W^T @ dY is formed a block of im2col columns
 *                    at a time and summed back into dX (conv_uncols).
 * Padding is zeros in the buffer, so the micro-kernels have no bounds and no branch inside.
 * The weights are packed once per call and group, into panels of 8 output channels.
 *
 * Both micro-kernels are 4 x 8 tiles with eight f32x4 accumulators, as the matmul's (module.ts),
 * but turned so that the vectors run along the channels (8 of them, two aligned loads from a
 * packed panel) and the four values broadcast come straight from the padded input (4-byte
 * loads): the shifted tap rows are never read as unaligned vectors, and nothing but the
 * channel panels is packed. conv_fwd writes its rows straight into the output (the grid's extra
 * columns are skipped, a row's partial last tile is stored a lane at a time); conv_wgrad visits
 * the output's own positions only. Where 8-channel tiles would be mostly padding, or the depth
 * is a handful of taps, the forward falls back to conv_gemm (4 channels x 8 positions, B through
 * the offset table).
 *
 * Threads: the forward and the stride-1 input gradient split their (group, image, block of
 * output rows) units into a queue of parts for the backend's threads, each part with its own
 * padded buffer (PARTS_PER_THREAD); a strided input gradient splits (group, image) units, each
 * running all stride phases of its image; the weight gradient splits (chunk of images, 8-channel
 * tile) units, each chunk summed into its own accumulator and the chunks added in order
 * (WGRAD_CHUNKS, fixed by the shape). Either way every output element is computed by the same
 * micro-kernel over the same operands in the same order as on one thread: the result does not
 * depend on the thread count. A part is a list of export calls (Calls) that the backend's pool
 * runs on a worker (threads.ts). The dilated and strided input gradient (conv_uncols) stays on
 * one thread.
 */
import type { Conv2dLayout, Storage } from '../backend.js';
import { conv2dBackwardInputReference } from '../cpu/conv.js';
import { call, f32, f32x4, i32, select, v128, ValType, type FuncBuilder, type Local, type ModuleBuilder, type Operand } from './emit.js';
import { ceilDiv, elementwise, shuffle32, transpose4, type KernelExports } from './module.js';
import { CallList, splitRange } from './threads.js';
import type { WinogradExport } from './conv-winograd.js';

const { i32: I32, v128: V128 } = ValType;

/** Rows and columns of conv_gemm's tile (the fallback forms). */
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
 * conv_fwd(panel, depth, oTiles, b, offs, rows, cols, bRowBytes, c, ldcBytes, cRowBytes, channels)
 * and conv_fwd_strided(..., channels, cColBytes) (conv_fwd's cColBytes is 4):
 * C[o, y, x] = sum_p A(o, p) B[p, y, x] for o < channels (at most 8*oTiles), y < rows, x < cols,
 * with A packed by conv_pack_grad (panel q holds depth steps of 8 rows: the weights of 8 output
 * channels) and B read in place: B[p, y, x] at b + offs[p] + y*bRowBytes + 4x (a tap of the
 * padded input, as conv_gemm reads it; a row's last tile reads up to 3 columns past `cols`, and
 * writes none). C[o, y, x] is at c + o*ldcBytes + y*cRowBytes + x*cColBytes, so C may be the
 * output itself, rows of the padded-width grid landing on the output's rows without their extra
 * columns, or every sw-th pixel of them (a stride phase of an input gradient, cColBytes = 4*sw:
 * placed as it is stored, without a pass of its own). The tile is 4 columns by 8 channels: the
 * weights come as two aligned vectors per step, the four inputs as broadcasts (no unaligned
 * vector load of the shifted input rows), and the 4 x 8 result is transposed into C's rows on
 * the way out (a partial or strided tile a lane at a time).
 */
function emitForwardGemm(mb: ModuleBuilder, strided: boolean): void {
  // conv_fwd (cColBytes 4, not passed) and conv_fwd_strided: two functions, so that the strided
  // stores' branches and locals stay out of the forward's and dense input gradient's kernel.
  const params = Array<ValType>(strided ? 13 : 12).fill(I32);
  mb.func(strided ? 'conv_fwd_strided' : 'conv_fwd', params, [], (f, panel, depth, oTiles, b, offs, rows, cols, bRow, c, ldc, cRow, channels, colBytes) => {
    const [ot, y, x, pa, end, o, q, row, ch, rem, at] = f.localsOf(I32, 11);
    const [dense, pairs, lanePtr] = strided ? f.localsOf(I32, 3) : [];
    if (strided) {
      f.set(dense, i32.eq(colBytes, 4));
      // Every second pixel (a stride-2 phase): whole tiles as four lane stores at constant offsets.
      f.set(pairs, i32.eq(colBytes, 8));
    }
    const sums = Array.from({ length: 4 }, () => f.localsOf(V128, 2));
    const bv = f.localsOf(V128, 2);
    const a = f.local(V128);
    const tmp = f.localsOf(V128, 4);
    f.for(ot, 0, oTiles, 1, () =>
      f.for(y, 0, rows, 1, () =>
        f.for(x, 0, cols, 4, () => {
          for (const r of sums) for (const v of r) f.set(v, f32x4.splat(f32.const(0)));
          f.set(pa, i32.add(panel, i32.shl(i32.mul(ot, depth), 5)));
          f.set(end, i32.add(pa, i32.shl(depth, 5)));
          f.set(o, offs);
          f.set(at, i32.add(b, i32.add(i32.mul(y, bRow), i32.shl(x, 2))));
          f.block((exit) =>
            f.loop((top) => {
              f.brIf(exit, i32.geU(pa, end));
              f.set(q, i32.add(at, i32.load(o)));
              f.set(bv[0], v128.load(pa));
              f.set(bv[1], v128.load(pa, 16));
              for (let r = 0; r < 4; r++) {
                f.set(a, v128.load32Splat(q, 4 * r));
                for (let v = 0; v < 2; v++) f.set(sums[r][v], f32x4.add(sums[r][v], f32x4.mul(a, bv[v])));
              }
              f.inc(pa, 32);
              f.inc(o, 4);
              f.br(top);
            }),
          );
          // sums[r][v] holds channels 8ot + 4v .. + 3 of column x + r: transposed, each vector is
          // four columns of one channel.
          f.set(ch, i32.shl(ot, 3));
          f.set(rem, i32.sub(cols, x));
          f.set(row, i32.add(c, i32.add(i32.mul(ch, ldc), i32.add(i32.mul(y, cRow), strided ? i32.mul(x, colBytes) : i32.shl(x, 2)))));
          for (let v = 0; v < 2; v++) {
            const block = sums.map((r) => r[v]);
            transpose4(f, block, tmp);
            for (const vec of block) {
              f.if(i32.ltS(ch, channels), () =>
                f.if(
                  strided ? i32.and(dense, i32.geS(rem, 4)) : i32.geS(rem, 4),
                  () => f.exec(v128.store(row, vec)),
                  () => {
                    if (!strided) {
                      for (let lane = 0; lane < 3; lane++) f.if(i32.gtS(rem, lane), () => f.exec(f32.store(row, f32x4.extractLane(vec, lane), 4 * lane)));
                      return;
                    }
                    f.if(
                      i32.and(pairs, i32.geS(rem, 4)),
                      () => {
                        for (let lane = 0; lane < 4; lane++) f.exec(v128.store32Lane(row, vec, lane, 8 * lane));
                      },
                      () => {
                        f.set(lanePtr, row);
                        for (let lane = 0; lane < 4; lane++) {
                          f.if(i32.gtS(rem, lane), () => f.exec(f32.store(lanePtr, f32x4.extractLane(vec, lane))));
                          if (lane < 3) f.inc(lanePtr, colBytes);
                        }
                      },
                    );
                  },
                ),
              );
              f.inc(row, ldc);
              f.inc(ch, 1);
            }
          }
        }),
      ),
    );
  });
}

/**
 * conv_wgrad(p, offs, taps, panel, oTiles, rows, ow, wqBytes, acc, ldAccBytes): the weight
 * gradient of one block of output rows as a GEMM whose depth is the output positions:
 * acc[t, o] += sum over (y < rows, x < ow) of P[offs[t] + (y*wq + x)*4 bytes] * G(y*ow + x, o),
 * for t < taps (a multiple of 4) and o < 8*oTiles, G packed by conv_pack_grad (panel q holds
 * rows*ow steps of 8 channels). A 4 x 8 tile (four taps by eight channels, eight f32x4
 * accumulators) as conv_micro, with the four taps' values broadcast straight from the padded
 * input, so nothing is packed on that side; only the output's own positions are visited, so the
 * grid's extra columns are never multiplied (no 0 * inf) and nothing is summed across lanes.
 */
function emitWeightGemm(mb: ModuleBuilder): void {
  mb.func('conv_wgrad', Array<ValType>(10).fill(I32), [], (f, p, offs, taps, panel, oTiles, rows, ow, wq, acc, ldAcc) => {
    const [ot, t, y, pb, rowEnd, skip, cAt, at] = f.localsOf(I32, 8);
    const tap = f.localsOf(I32, 4);
    const sums = Array.from({ length: 4 }, () => f.localsOf(V128, 2));
    const bv = f.localsOf(V128, 2);
    const a = f.local(V128);
    f.set(skip, i32.sub(wq, i32.shl(ow, 2)));
    f.for(ot, 0, oTiles, 1, () =>
      f.for(t, 0, taps, 4, () => {
        for (const r of sums) for (const x of r) f.set(x, f32x4.splat(f32.const(0)));
        tap.forEach((ptr, r) => f.set(ptr, i32.add(p, i32.load(i32.add(offs, i32.shl(t, 2)), 4 * r))));
        f.set(pb, i32.add(panel, i32.shl(i32.mul(ot, i32.mul(rows, ow)), 5)));
        f.for(y, 0, rows, 1, () => {
          f.set(rowEnd, i32.add(pb, i32.shl(ow, 5)));
          f.block((exit) =>
            f.loop((top) => {
              f.brIf(exit, i32.geU(pb, rowEnd));
              f.set(bv[0], v128.load(pb));
              f.set(bv[1], v128.load(pb, 16));
              for (let r = 0; r < 4; r++) {
                f.set(a, v128.load32Splat(tap[r]));
                for (let v = 0; v < 2; v++) f.set(sums[r][v], f32x4.add(sums[r][v], f32x4.mul(a, bv[v])));
                f.inc(tap[r], 4);
              }
              f.inc(pb, 32);
              f.br(top);
            }),
          );
          // The grid's columns past the output: skipped, not multiplied.
          for (const ptr of tap) f.inc(ptr, skip);
        });
        f.set(cAt, i32.add(acc, i32.add(i32.mul(t, ldAcc), i32.shl(ot, 5))));
        for (let r = 0; r < 4; r++) {
          f.set(at, i32.add(cAt, i32.mul(ldAcc, r)));
          for (let v = 0; v < 2; v++) f.exec(v128.store(at, f32x4.add(v128.load(at, 16 * v), sums[r][v]), 16 * v));
        }
      }),
    );
  });
}

/**
 * conv_pack_grad(src, channelBytes, channels, depth, oTiles, dst): rows of a [channels, depth]
 * matrix (the weights, or one block of the output gradient) as panels of 8:
 * dst[(q*depth + j)*8 + r] = src[(8q + r)*channelBytes/4 + j] for j < depth, zero for the rows
 * 8q + r >= channels. Four whole rows at a time go through 4x4 transposes.
 */
function emitPackGrad(mb: ModuleBuilder): void {
  mb.func('conv_pack_grad', Array<ValType>(6).fill(I32), [], (f, src, chan, channels, depth, oTiles, dst) => {
    const [q, half, r, j, from, to, o, vecEnd] = f.localsOf(I32, 8);
    const block = f.localsOf(V128, 4);
    const tmp = f.localsOf(V128, 4);
    const rowOne = (row: Operand) => {
      // One row r of the panel, a float at a time (zeros past the matrix).
      f.set(o, i32.add(i32.shl(q, 3), row));
      f.set(from, i32.add(src, i32.add(i32.mul(o, chan), i32.shl(j, 2))));
      f.set(to, i32.add(dst, i32.shl(i32.add(i32.shl(i32.add(i32.mul(q, depth), j), 3), row), 2)));
      f.if(
        i32.ltS(o, channels),
        () =>
          f.for(r, j, depth, 1, () => {
            f.exec(f32.store(to, f32.load(from)));
            f.inc(from, 4);
            f.inc(to, 32);
          }),
        () =>
          f.for(r, j, depth, 1, () => {
            f.exec(f32.store(to, f32.const(0)));
            f.inc(to, 32);
          }),
      );
    };
    f.set(vecEnd, i32.and(depth, -4));
    f.for(q, 0, oTiles, 1, () =>
      f.for(half, 0, 8, 4, () => {
        f.set(j, 0);
        f.if(i32.leS(i32.add(i32.add(i32.shl(q, 3), half), 4), channels), () => {
          f.set(from, i32.add(src, i32.mul(i32.add(i32.shl(q, 3), half), chan)));
          f.set(to, i32.add(dst, i32.shl(i32.add(i32.shl(i32.mul(q, depth), 3), half), 2)));
          f.for(j, 0, vecEnd, 4, () => {
            block.forEach((x, k) => f.set(x, v128.load(i32.add(from, i32.mul(chan, k)))));
            transpose4(f, block, tmp);
            block.forEach((x, k) => f.exec(v128.store(to, x, 32 * k)));
            f.inc(from, 16);
            f.inc(to, 128);
          });
        });
        // What the vectors left: the last depth % 4 columns, or every column of a partial group.
        for (let k = 0; k < 4; k++) rowOne(i32.add(half, k));
      }),
    );
  });
}

/**
 * conv_copy_rows(src, srcOuterBytes, srcInnerBytes, srcStepBytes, dst, dstOuterBytes,
 * dstInnerBytes, dstStepBytes, outer, inner, len): copies outer x inner runs of `len` floats
 * between two strided layouts, consecutive elements of a run srcStepBytes / dstStepBytes apart
 * (an image into the interior of its padded copy or into one stride phase of it, a block of the
 * padded-width grid into the output, one stride phase of the input gradient into its place; the
 * weights flipped, with a negative source step, which the float-at-a-time loop takes).
 */
function emitCopyRows(mb: ModuleBuilder): void {
  mb.func('conv_copy_rows', Array<ValType>(11).fill(I32), [], (f, src, srcOuter, srcInner, srcStep, dst, dstOuter, dstInner, dstStep, outer, inner, len) => {
    const [i, j, from, to, end, vecEnd, vecs] = f.localsOf(I32, 7);
    const v = f.local(V128);
    f.for(i, 0, outer, 1, () => {
      f.for(j, 0, inner, 1, () => {
        f.set(from, i32.add(src, i32.add(i32.mul(i, srcOuter), i32.mul(j, srcInner))));
        f.set(to, i32.add(dst, i32.add(i32.mul(i, dstOuter), i32.mul(j, dstInner))));
        f.set(end, i32.add(to, i32.mul(len, dstStep)));
        // Contiguous runs go a vector at a time, and so do runs with a step of 2 floats on one
        // side (the stride-2 phases): what is left over goes one float at a time.
        f.if(
          i32.and(i32.eq(srcStep, 4), i32.eq(dstStep, 4)),
          () => {
            f.set(vecEnd, i32.add(to, i32.shl(i32.and(len, -4), 2)));
            f.block((exit) =>
              f.loop((top) => {
                f.brIf(exit, i32.geU(to, vecEnd));
                f.exec(v128.store(to, v128.load(from)));
                f.inc(to, 16);
                f.inc(from, 16);
                f.br(top);
              }),
            );
            // A ragged end of a run of at least 4 (the 7- and 14-wide rows of small images): one
            // vector over the run's last 4 floats, rewriting a few it already copied.
            f.if(i32.and(i32.geS(len, 4), i32.ltU(to, end)), () => {
              f.exec(v128.store(i32.sub(end, 16), v128.load(i32.sub(i32.add(from, i32.sub(end, to)), 16))));
              f.set(to, end);
            });
          },
          () => {
            // A vector of the strided side spans 8 floats, of which the run owns 2*(len-1)+1: only
            // the first floor((len-1)/4) vectors stay inside it, so nothing is read past the run.
            f.set(vecs, i32.shrS(i32.sub(len, 1), 2));
            f.if(i32.and(i32.eq(srcStep, 8), i32.eq(dstStep, 4)), () => {
              // Gather the even floats: one vector out of two in.
              f.set(vecEnd, i32.add(to, i32.shl(vecs, 4)));
              f.block((exit) =>
                f.loop((top) => {
                  f.brIf(exit, i32.geU(to, vecEnd));
                  f.exec(v128.store(to, shuffle32(v128.load(from), v128.load(from, 16), [0, 2, 4, 6])));
                  f.inc(to, 16);
                  f.inc(from, 32);
                  f.br(top);
                }),
              );
            });
            f.if(i32.and(i32.eq(srcStep, 4), i32.eq(dstStep, 8)), () => {
              // Scatter onto the even floats: the odd ones are read and written back unchanged.
              f.set(vecEnd, i32.add(to, i32.shl(vecs, 5)));
              f.block((exit) =>
                f.loop((top) => {
                  f.brIf(exit, i32.geU(to, vecEnd));
                  f.set(v, v128.load(from));
                  f.exec(v128.store(to, shuffle32(v, v128.load(to), [0, 5, 1, 7])));
                  f.exec(v128.store(to, shuffle32(v, v128.load(to, 16), [2, 5, 3, 7]), 16));
                  f.inc(to, 32);
                  f.inc(from, 16);
                  f.br(top);
                }),
              );
            });
          },
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

/**
 * conv_wgrad_out(acc, chunks, chunkBytes, ldAccBytes, taps, channels, out): the weight gradient
 * of one group from its per-chunk accumulators: out[o*taps + t] = sum over c < chunks, in order,
 * of acc[c*chunkBytes/4 + t*ldAcc + o] (dW^T as conv_wgrad leaves it, transposed on the way out),
 * four channels at a time.
 */
function emitWeightOut(mb: ModuleBuilder): void {
  mb.func('conv_wgrad_out', Array<ValType>(7).fill(I32), [], (f, acc, chunks, chunkBytes, ldAcc, taps, channels, out) => {
    const [t, o, c, from, to] = f.localsOf(I32, 5);
    const v = f.local(V128);
    f.for(t, 0, taps, 1, () =>
      f.for(o, 0, channels, 4, () => {
        f.set(from, i32.add(acc, i32.add(i32.mul(t, ldAcc), i32.shl(o, 2))));
        f.set(v, v128.load(from));
        f.for(c, 1, chunks, 1, () => {
          f.inc(from, chunkBytes);
          f.set(v, f32x4.add(v, v128.load(from)));
        });
        f.set(to, i32.add(out, i32.shl(i32.add(i32.mul(o, taps), t), 2)));
        // Channels past the group's last are padding of the accumulator's 8-channel tiles.
        for (let lane = 0; lane < 4; lane++) {
          f.if(i32.ltS(i32.add(o, lane), channels), () => f.exec(f32.store(to, f32x4.extractLane(v, lane))));
          f.inc(to, i32.shl(taps, 2));
        }
      }),
    );
  });
}

/** Adds the convolution kernels to the backend's module (called by buildKernelModule). */
export function emitConvKernels(mb: ModuleBuilder): void {
  emitCopyRows(mb);
  emitUncols(mb);
  emitGemm(mb);
  emitForwardGemm(mb, false);
  emitWeightGemm(mb);
  emitPackGrad(mb);
  emitForwardGemm(mb, true);
  emitWeightOut(mb);
}

// ---- the host side: blocking, padding and packing, per image and group ----

/** The exports a thread's share of a convolution calls. */
export type ConvExport = 'conv_fwd' | 'conv_fwd_strided' | 'conv_gemm' | 'conv_wgrad' | 'conv_pack_grad' | 'conv_copy_rows' | 'zero_bytes' | WinogradExport;

export interface WasmConvHost {
  exports: KernelExports;
  /** Byte address of a storage's first element. */
  ptr(s: Storage): number;
  /** Scratch memory for one call (reused between calls; asking again may move it). */
  scratch(bytes: number): number;
  /** The whole memory as floats (re-read after any scratch call: the memory may have grown). */
  f32(): Float32Array;
  i32(): Int32Array;
  /** Threads to split a convolution of `flops` floating-point operations over (1: unsplit). */
  threadsFor(flops: number): number;
  /**
   * Runs the parts, each part's calls in order on one thread (part t on thread t, or as a queue
   * when there are more parts than threads), and returns when all are done.
   */
  runParts(parts: CallList[]): void;
  /** The index a recorded call names the export `name` by (CallList). */
  callIndex(name: ConvExport): number;
}

/**
 * The calls of one thread's share: run at once when the convolution is not split, recorded for
 * the pool otherwise (scratch must then be carved before recording: the memory may not move).
 */
export class Calls {
  constructor(
    private readonly now: KernelExports | null,
    private readonly index: ((name: ConvExport) => number) | null = null,
    /** Where the calls are recorded (none when they run at once). */
    readonly list: CallList | null = null,
  ) {}
  run(name: ConvExport, ...args: number[]): void {
    if (this.now) this.now[name](...args);
    else this.list!.push(this.index!(name), args);
  }
}

const roundUp = (v: number, m: number) => Math.ceil(v / m) * m;

/** Parts per thread of a split convolution (a queue: see directForward). */
export const PARTS_PER_THREAD = 4;

/**
 * Chunks of images whose weight gradients are summed apart and then added (backwardWeight): the
 * units its threads share, so enough for 8 threads, and few enough that adding the chunks costs
 * next to nothing (chunks x taps x channels floats).
 */
const WGRAD_CHUNKS = 8;

/**
 * Int32s of recorded split calls a WasmConv keeps (split): 8 MB, a dozen times what the small
 * ResNet's SAM step at batch 128 records (about 0.7 MB per forward and backward).
 */
const RECORDED_INTS = 2 << 20;

/** The key of a split's recorded calls: a tag and every number they depend on (split). */
export function recordKey(tag: string, numbers: readonly number[]): string {
  return `${tag} ${numbers.join(' ')}`;
}

/** A convolution layout's numbers, in a fixed order (recordKey). */
const layoutNumbers = (l: Conv2dLayout) => [l.n, l.c, l.h, l.w, l.kh, l.kw, l.oh, l.ow, l.sh, l.sw, l.ph, l.pw, l.dh, l.dw, l.outChannels, l.groups];

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
export function carve(host: WasmConvHost, sizes: number[]): number[] {
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
  /**
   * The padding of the buffer: ph, pw, or wider (bph >= ph, bpw >= pw; stride 1 only): the
   * stride phases of an input gradient, whose paddings differ, then share one buffer, filled
   * once per image. The taps read it shifted by (bph - ph, bpw - pw).
   */
  bph: number;
  bpw: number;
}

/** The phase planes' geometry, each tap's byte offset into them, and the output blocking. */
function directGeometry(d: DirectConv) {
  const { cin, kh, kw, sh, sw, dh, dw, bph, bpw } = d;
  const [rowShift, colShift] = [bph - d.ph, bpw - d.pw];
  if ((rowShift || colShift) && (sh > 1 || sw > 1 || rowShift < 0 || colShift < 0)) throw new Error('conv: a wider buffer padding needs stride 1 and bph >= ph, bpw >= pw');
  const OH = Math.floor((d.H + 2 * d.ph - (kh - 1) * dh - 1) / sh) + 1;
  const OW = Math.floor((d.W + 2 * d.pw - (kw - 1) * dw - 1) / sw) + 1;
  const hq = Math.ceil((d.H + 2 * bph) / sh);
  const wq = Math.ceil((d.W + 2 * bpw) / sw);
  const K = cin * kh * kw;
  const offsets = new Int32Array(K);
  const phases = new Set<number>();
  for (let ki = 0; ki < kh; ki++)
    for (let kj = 0; kj < kw; kj++) {
      const phase = ((ki * dh) % sh) * sw + ((kj * dw) % sw);
      phases.add(phase);
      const row = Math.floor((ki * dh) / sh) + rowShift;
      const col = Math.floor((kj * dw) / sw) + colShift;
      for (let ci = 0; ci < cin; ci++) offsets[(ci * kh + ki) * kw + kj] = (((phase * cin + ci) * hq + row) * wq + col) * 4;
    }
  const rowsPerBlock = Math.max(1, Math.ceil(DIRECT_COLUMNS / wq));
  const nbPad = roundUp(rowsPerBlock * wq, NR);
  // Reads run past the last grid row by a row, a tile and the widest tap: zeros there.
  const paddedFloats = sh * sw * cin * hq * wq + wq + (kw - 1) * dw + colShift + 2 * NR;
  return { hq, wq, OH, OW, K, offsets, phases: [...phases], rowsPerBlock, nbPad, paddedFloats, bph, bpw };
}

/** Copies one image's group of channels into the phases of the padded buffer that the taps read. */
function fillPhases(k: Calls, d: DirectConv, gm: ReturnType<typeof directGeometry>, image: number, padded: number): void {
  for (const phase of gm.phases) {
    const a = Math.floor(phase / d.sw);
    const b = phase % d.sw;
    // Phase rows y' hold input rows y = sh*y' + a - bph; those inside [0, H) are copied.
    const { bph, bpw } = gm;
    const y0 = Math.max(0, Math.ceil((bph - a) / d.sh));
    const y1 = Math.floor((d.H - 1 + bph - a) / d.sh);
    const x0 = Math.max(0, Math.ceil((bpw - b) / d.sw));
    const x1 = Math.floor((d.W - 1 + bpw - b) / d.sw);
    if (y1 < y0 || x1 < x0) continue;
    const src = image + ((d.sh * y0 + a - bph) * d.W + (d.sw * x0 + b - bpw)) * 4;
    const dst = padded + (((phase * d.cin) * gm.hq + y0) * gm.wq + x0) * 4;
    k.run('conv_copy_rows', src, d.H * d.W * 4, d.sh * d.W * 4, d.sw * 4, dst, gm.hq * gm.wq * 4, gm.wq * 4, 4, d.cin, y1 - y0 + 1, x1 - x0 + 1);
  }
}

/**
 * Where directForward puts its output grid's pixels: (y, x) of channel ch of image n (channels
 * counted from the group's first) goes to dst + n*imageBytes + ch*channelBytes + y*rowBytes +
 * x*colBytes, for y0 <= y <= y1 and x0 <= x <= x1; the grid's other pixels are dropped.
 */
interface Placement {
  dst: number;
  imageBytes: number;
  channelBytes: number;
  rowBytes: number;
  colBytes: number;
  y0: number;
  y1: number;
  x0: number;
  x1: number;
}

/** The whole output grid as a dense [n, channels, oh, ow] tensor at `dst`. */
function dense(dst: number, channels: number, oh: number, ow: number): Placement {
  return { dst, imageBytes: channels * oh * ow * 4, channelBytes: oh * ow * 4, rowBytes: ow * 4, colBytes: 4, y0: 0, y1: oh - 1, x0: 0, x1: ow - 1 };
}

/** One stride-1 convolution of directRun: its geometry, kernel form, blocking and weights. */
interface DirectPlan {
  d: DirectConv;
  cout: number;
  place: Placement;
  gm: ReturnType<typeof directGeometry>;
  /** conv_gemm's 4-channel tiles instead of conv_fwd's 8-channel ones. */
  narrow: boolean;
  /** conv_fwd writes straight into the output (a dense placement). */
  direct: boolean;
  /**
   * A sparse placement stored pixel by pixel as computed (conv_fwd_strided), not through cBlock
   * and conv_copy_rows: taken where the phases cover dX (the 3x3 stride-2 input gradients, which
   * ran 5-14% faster so on one thread, batch 32, with the shared buffer); where dX is cleared
   * first (1x1 at stride 2) the copy stays, no gain having been measured there.
   */
  storeInPlace: boolean;
  oTiles: number;
  rowsPad: number;
  packedBytes: number;
  /** The blocks of output rows that hold placed rows: [firstBlock, firstBlock + blocks). */
  firstBlock: number;
  blocks: number;
  flops: number;
  weightBytes: number;
  /** Writes the plan's weights at `at` from the call's weight storage (plans are kept from call to call: WasmConv.plansFor). */
  writeWeights: (at: number, weight: Storage) => void;
  /** backwardWeight's recording key for (parts, scratch address) "parts offs" (the regions follow from these). */
  wgradKey?: [string, string];
}

function directPlan(d: DirectConv, cout: number, place: Placement, weightBytes: number, writeWeights: (at: number, weight: Storage) => void, storeInPlace = false): DirectPlan {
  const gm = directGeometry(d);
  const { OH, K, rowsPerBlock } = gm;
  // conv_fwd's tiles are 8 channels wide; where that would be mostly padding (1 to 4 channels
  // past a multiple of 8, e.g. the single input channel of a stem's input gradient), conv_gemm's
  // tiles of 4 channels. conv_gemm also where the depth is so short (a one-channel stem: 9
  // taps) that conv_fwd's transposed stores cost more than its aligned loads save (measured).
  const narrow = (cout % 8 > 0 && cout % 8 <= 4) || K < 16;
  const oTiles = Math.ceil(cout / 8);
  const rowsPad = narrow ? roundUp(cout, MR) : oTiles * 8;
  // A dense placement (the forward, a stride-1 input gradient) takes conv_fwd's rows straight
  // into the output: nothing to copy out.
  const direct = !narrow && place.colBytes === 4 && place.y0 === 0 && place.y1 === OH - 1 && place.x0 === 0 && place.x1 === gm.OW - 1;
  const firstBlock = Math.floor(place.y0 / rowsPerBlock);
  const blocks = Math.floor(place.y1 / rowsPerBlock) - firstBlock + 1;
  const placed = (place.y1 - place.y0 + 1) * (place.x1 - place.x0 + 1);
  const flops = 2 * d.groups * d.n * cout * K * placed;
  return { d, cout, place, gm, narrow, direct, storeInPlace, oTiles, rowsPad, packedBytes: rowsPad * K * 4, firstBlock, blocks, flops, weightBytes, writeWeights };
}

/**
 * The calls of block b (counted from p.firstBlock) of image n, group g of a plan, its input
 * already in `padded`: the block's output rows computed and placed.
 */
function directBlock(calls: Calls, p: DirectPlan, panel: number, offs: number, padded: number, cBlock: number, tile: number, g: number, n: number, b: number): void {
  const { place, gm, cout, oTiles } = p;
  const { wq, OH, K, rowsPerBlock, nbPad } = gm;
  const outImage = place.dst + n * place.imageBytes + g * cout * place.channelBytes;
  const oy = (p.firstBlock + b) * rowsPerBlock;
  const rows = Math.min(rowsPerBlock, OH - oy);
  const from = padded + oy * wq * 4;
  if (p.direct) {
    const to = outImage + oy * place.rowBytes;
    // Without extra columns (a pointwise convolution) the block is one run of rows*OW.
    if (wq === gm.OW && place.rowBytes === wq * 4) calls.run('conv_fwd', panel, K, oTiles, from, offs, 1, rows * wq, 0, to, place.channelBytes, 0, cout);
    else calls.run('conv_fwd', panel, K, oTiles, from, offs, rows, gm.OW, wq * 4, to, place.channelBytes, place.rowBytes, cout);
    return;
  }
  // The block's rows that are placed: [ya, yb], columns [x0, x1].
  const ya = Math.max(oy, place.y0);
  const yb = Math.min(oy + rows - 1, place.y1);
  const cols = place.x1 - place.x0 + 1;
  const to = outImage + ya * place.rowBytes + place.x0 * place.colBytes;
  if (p.narrow) {
    calls.run('conv_gemm', panel, K, cout, from, offs, roundUp(rows * wq, NR), cBlock, nbPad * 4, tile, 0);
    calls.run('conv_copy_rows', cBlock + ((ya - oy) * wq + place.x0) * 4, nbPad * 4, wq * 4, 4, to, place.channelBytes, place.rowBytes, place.colBytes, cout, yb - ya + 1, cols);
  } else {
    if (p.storeInPlace) {
      // Only the placed pixels are computed, each stored straight into its place.
      calls.run('conv_fwd_strided', panel, K, oTiles, padded + (ya * wq + place.x0) * 4, offs, yb - ya + 1, cols, wq * 4, to, place.channelBytes, place.rowBytes, cout, place.colBytes);
      return;
    }
    // Only the placed pixels are computed, rows of `cols` in cBlock, then spread out.
    calls.run('conv_fwd', panel, K, oTiles, padded + (ya * wq + place.x0) * 4, offs, yb - ya + 1, cols, wq * 4, cBlock, nbPad * 4, cols * 4, cout);
    calls.run('conv_copy_rows', cBlock, nbPad * 4, cols * 4, 4, to, place.channelBytes, place.rowBytes, place.colBytes, cout, yb - ya + 1, cols);
  }
}

/** directRun's layout of a list of plans over some threads (WasmConv.runLayout). */
interface RunLayout {
  parts: number;
  units: number;
  perImage: boolean;
  buffers: string[];
  bufferOf: number[];
  bufferFloats: number[];
  own: number[];
  shared: number[];
  sizes: number[];
  /** What carve takes for `sizes`. */
  bytes: number;
  /** The scratch address the regions and key below were made for (-1: none yet). */
  base: number;
  regions: number[] | null;
  key: string | undefined;
}

/** Convolutions whose plans a WasmConv keeps (plansFor): a few steps' worth of eager addresses. */
const PLANS_KEPT = 256;
/** Keys kept per layout object (keyOf): a layer's forward, input and weight gradient, a few kinds more. */
const KEYS_PER_LAYOUT = 8;

export class WasmConv {
  constructor(private readonly h: WasmConvHost) {}

  /** The recorded calls of each part of a split (split). */
  private readonly lists: CallList[] = [];
  /** The host's index of each export a recorded call names (looked up once per name). */
  private readonly indices = new Map<ConvExport, number>();
  private readonly indexOf = (name: ConvExport): number => {
    let i = this.indices.get(name);
    if (i === undefined) this.indices.set(name, (i = this.h.callIndex(name)));
    return i;
  };

  /**
   * The plans of a convolution, made once per kind, layout and addresses (the numbers they are
   * made of) and kept: a repeated call (every call of a captured step; an eager step's once its
   * allocations repeat) skips the planning. Bounded: cleared when PLANS_KEPT are kept.
   */
  private plansFor(kind: string, l: Conv2dLayout, src: number, dst: number, make: () => DirectPlan[]): DirectPlan[] {
    const key = this.keyOf(l, kind, [...layoutNumbers(l), src, dst]);
    let plans = this.plans.get(key);
    if (!plans) {
      this.planMisses++;
      if (this.plans.size >= PLANS_KEPT) this.plans.clear();
      this.plans.set(key, (plans = make()));
    }
    return plans;
  }
  private readonly plans = new Map<string, DirectPlan[]>();

  /**
   * recordKey(tag, numbers), found again without joining the numbers into a string where the
   * call passes a layout object it passed before (a captured step's replays pass the same
   * ones): the numbers are compared with those of the keys made for it (a few kept per layout).
   */
  keyOf(layout: object, tag: string, numbers: number[]): string {
    let made = this.keysByLayout.get(layout);
    if (!made) this.keysByLayout.set(layout, (made = []));
    for (const k of made) if (k.tag === tag && k.numbers.length === numbers.length && k.numbers.every((v, i) => v === numbers[i])) return k.key;
    const key = recordKey(tag, numbers);
    if (made.length >= KEYS_PER_LAYOUT) made.shift();
    made.push({ tag, numbers, key });
    return key;
  }
  private readonly keysByLayout = new WeakMap<object, { tag: string; numbers: number[]; key: string }[]>();
  /** Plans made (plansFor's misses) and direct runs laid out anew (directRun's): public for tests. */
  planMisses = 0;
  runMisses = 0;

  forward(x: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    const [src, dst] = [this.h.ptr(x), this.h.ptr(out)];
    const plans = this.plansFor('f', l, src, dst, () => {
      const d = this.directOf(l, src, l.c / l.groups, l.c, l.h, l.w, [l.kh, l.kw], [l.sh, l.sw], [l.ph, l.pw]);
      const weights = l.outChannels * d.cin * l.kh * l.kw;
      return [directPlan(d, l.outChannels / l.groups, dense(dst, l.outChannels, l.oh, l.ow), weights * 4, (at, w) => {
        const from = this.h.ptr(w) >>> 2;
        this.h.f32().copyWithin(at >>> 2, from, from + weights);
      })];
    });
    this.directRun(plans, weight);
  }

  backwardInput(grad: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    if (!this.finiteWeights(weight, l)) {
      // The forms below read dY through a zero border (the "full" convolution's, padding or not),
      // so an Inf or NaN weight times a border zero would put NaN where torch's input gradient
      // (which sums over real output positions only) has a number: such a call runs the
      // reference's sum instead (float64, rounded once).
      const f = this.h.f32();
      const view = (s: Storage, n: number) => f.subarray(this.h.ptr(s) >>> 2, (this.h.ptr(s) >>> 2) + n);
      conv2dBackwardInputReference(view(grad, l.n * l.outChannels * l.oh * l.ow), view(weight, l.outChannels * (l.c / l.groups) * l.kh * l.kw), view(out, l.n * l.c * l.h * l.w), l);
      return;
    }
    const phT = (l.kh - 1) * l.dh - l.ph;
    const pwT = (l.kw - 1) * l.dw - l.pw;
    if (l.sh === 1 && l.sw === 1 && phT >= 0 && pwT >= 0) {
      // The input gradient of a stride-1 convolution is the "full" convolution of the output
      // gradient with the weights flipped in space and transposed in channels.
      const [src, dst] = [this.h.ptr(grad), this.h.ptr(out)];
      const plans = this.plansFor('i', l, src, dst, () => {
        const cg = l.c / l.groups;
        const d = this.directOf(l, src, l.outChannels / l.groups, l.outChannels, l.oh, l.ow, [l.kh, l.kw], [1, 1], [phT, pwT]);
        return [directPlan(d, cg, dense(dst, l.c, l.h, l.w), l.outChannels * cg * l.kh * l.kw * 4, (at, w) => this.writeFlippedTaps(at, w, l, 0, 0, l.kh, l.kw))];
      });
      this.directRun(plans, weight);
      return;
    }
    if (l.dh === 1 && l.dw === 1) this.backwardInputByPhases(grad, weight, out, l);
    else this.backwardInputByColumns(grad, weight, out, l);
  }

  /** Whether every weight of `l` is finite (x - x is 0 for a finite x, NaN for Inf and NaN). */
  private finiteWeights(weight: Storage, l: Conv2dLayout): boolean {
    const f = this.h.f32();
    const from = this.h.ptr(weight) >>> 2;
    const to = from + l.outChannels * (l.c / l.groups) * l.kh * l.kw;
    for (let i = from; i < to; i++) if (f[i] - f[i] !== 0) return false;
    return true;
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
    const tapBytes = l.kh * l.kw * 4;
    // In wasm, a strided copy per group and flipped tap row m: runs over the tap's columns
    // (backwards, sw apart), for every (ci, o); not a JS loop over every weight on the main
    // thread before each input gradient's split.
    for (let g = 0; g < l.groups; g++)
      for (let m = 0; m < kha; m++) {
        const ki = a + (kha - 1 - m) * l.sh;
        const src = this.h.ptr(weight) + g * og * cg * tapBytes + (ki * l.kw + b + (kwb - 1) * l.sw) * 4;
        this.h.exports.conv_copy_rows(src, tapBytes, cg * tapBytes, -l.sw * 4, dst + (g * cg * og * taps + m * kwb) * 4, og * taps * 4, taps * 4, 4, cg, og, kwb);
      }
  }

  /**
   * The input gradient of a strided convolution, one stride phase of the input at a time: the
   * pixels y = sh*Y' + a - ph (and likewise in x) receive only the taps ki = a + m*sh, from
   * output row Y' - m, so each phase is a stride-1 "full" convolution of the output gradient with
   * those taps flipped, written straight into its places in dX. The phases partition dX: every
   * pixel is written once, or is zero. All phases run as one split (directRun), a thread taking
   * whole images: one split's overhead, not one per phase.
   */
  private backwardInputByPhases(grad: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    const dx = this.h.ptr(out);
    // A pixel that no phase writes (a residue the kernel has no tap for, as a 1x1 kernel at
    // stride 2, or rows past the last window) has gradient zero: only then is dX cleared first.
    // (The strided copies of conv_copy_rows read dX's other pixels and put them back unchanged.)
    let covered = l.kh >= l.sh && l.kw >= l.sw;
    for (let a = 0; a < l.sh; a++) covered &&= l.oh + Math.ceil((l.kh - a) / l.sh) - 2 >= Math.floor((l.h - 1 + l.ph - a) / l.sh);
    for (let b = 0; b < l.sw; b++) covered &&= l.ow + Math.ceil((l.kw - b) / l.sw) - 2 >= Math.floor((l.w - 1 + l.pw - b) / l.sw);
    // Cleared at once, before the split (an image at a time inside the parts measured slower on
    // one thread).
    if (!covered) this.h.exports.zero_bytes(dx, l.n * l.c * l.h * l.w * 4);
    const src = this.h.ptr(grad);
    const plans = this.plansFor('p', l, src, dx, () => this.phasePlans(l, src, dx, covered));
    if (plans.length > 0) this.directRun(plans, weight);
  }

  /** The plans of backwardInputByPhases: one per stride phase that lands inside dX. */
  private phasePlans(l: Conv2dLayout, src: number, dx: number, covered: boolean): DirectPlan[] {
    const cg = l.c / l.groups;
    const og = l.outChannels / l.groups;
    const plans: DirectPlan[] = [];
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
        // Every phase reads dY padded by its own kha - 1, kwb - 1: one buffer padded by the
        // largest of them (the first phase's) serves them all, filled once per image.
        const pads: [number, number] = [Math.ceil(l.kh / l.sh) - 1, Math.ceil(l.kw / l.sw) - 1];
        const d = this.directOf(l, src, og, l.outChannels, l.oh, l.ow, [kha, kwb], [1, 1], [kha - 1, kwb - 1], pads);
        // Phase pixel (y, x) is dX pixel (sh*y + a - ph, sw*x + b - pw): written there directly.
        const place: Placement = {
          dst: dx + ((a - l.ph) * l.w + (b - l.pw)) * 4,
          imageBytes: l.c * l.h * l.w * 4,
          channelBytes: l.h * l.w * 4,
          rowBytes: l.sh * l.w * 4,
          colBytes: l.sw * 4,
          y0,
          y1,
          x0,
          x1,
        };
        plans.push(directPlan(d, cg, place, l.outChannels * cg * kha * kwb * 4, (at, w) => this.writeFlippedTaps(at, w, l, a, b, kha, kwb), covered));
      }
    return plans;
  }

  /**
   * dW[o, tap] = sum over images and output positions of dY[o, pos] * P[off(tap) + grid(pos)]:
   * per image and block of output rows, dY packed into 8-channel panels (conv_pack_grad) and
   * conv_wgrad accumulating dW^T [taps, channels]. The images form WGRAD_CHUNKS chunks (fewer
   * for a small batch), each summed into an accumulator of its own, and conv_wgrad_out adds the
   * chunks in order and transposes the sum into `out`: the order of every sum depends on the
   * shape alone, so the result is the same on any number of threads.
   * Threads take (chunk, 8-channel tile of a group) units, chunk by chunk: a thread owns those
   * columns of that chunk's accumulator and copies only its chunk's images (a split of the
   * tiles alone made every thread copy every image; one of the taps was measured slower still,
   * 0.8x of one thread on 8 -> 8 channels at 28x28, batch 32, for the same reason).
   */
  backwardWeight(x: Storage, grad: Storage, out: Storage, l: Conv2dLayout): void {
    // No images: no chunk to add (conv_wgrad_out reads the first), and the sum over none is 0.
    if (l.n === 0) {
      this.h.exports.zero_bytes(this.h.ptr(out), l.outChannels * (l.c / l.groups) * l.kh * l.kw * 4);
      return;
    }
    const cg = l.c / l.groups;
    const og = l.outChannels / l.groups;
    const gp = this.h.ptr(grad);
    // A plan kept for its geometry alone (the weight gradient has a form of its own).
    const [plan] = this.plansFor('w', l, this.h.ptr(x), gp, () => {
      const d = this.directOf(l, this.h.ptr(x), cg, l.c, l.h, l.w, [l.kh, l.kw], [l.sh, l.sw], [l.ph, l.pw]);
      return [directPlan(d, og, dense(0, l.outChannels, l.oh, l.ow), 0, () => {})];
    });
    const { d, gm } = plan;
    const { wq, OH, OW, K, rowsPerBlock } = gm;
    const oTiles = Math.ceil(og / 8);
    const ldAcc = oTiles * 8;
    const kPad = roundUp(K, 4);
    const chunks = Math.min(l.n, WGRAD_CHUNKS);
    const tiles = l.groups * oTiles;
    const units = chunks * tiles;
    const threads = this.h.threadsFor(2 * l.n * l.outChannels * K * OH * OW);
    const parts = threads > 1 ? Math.min(units, threads * PARTS_PER_THREAD) : 1;
    // The accumulators: [chunk][group][kPad][ldAcc].
    const accFloats = kPad * ldAcc;
    const chunkFloats = l.groups * accFloats;
    const own = [gm.paddedFloats * 4, ldAcc * rowsPerBlock * OW * 4];
    const [offs, acc, ...scratch] = carve(this.h, [kPad * 4, chunks * chunkFloats * 4, ...Array.from({ length: parts }, () => own).flat()]);
    // The taps past K (a tile has 4) repeat the last one: their rows of acc are never read.
    const e = this.h.i32();
    e.set(gm.offsets, offs >>> 2);
    e.fill(gm.offsets[K - 1], (offs >>> 2) + K, (offs >>> 2) + kPad);
    // Cleared in wasm: a TypedArray fill over a shared memory is slow (module.ts zero_bytes).
    this.h.exports.zero_bytes(acc, chunks * chunkFloats * 4);
    // The recording's key, kept with the plan for its parts and scratch address.
    const keyFor = `${parts} ${offs}`;
    let key = plan.wgradKey?.[0] === keyFor ? plan.wgradKey[1] : undefined;
    if (parts > 1 && key === undefined) {
      key = recordKey('wgrad', [parts, ...layoutNumbers(l), d.src, gp, offs, acc, ...scratch]);
      plan.wgradKey = [keyFor, key];
    }
    this.split(parts, units, (calls, u0, u1, t) => {
      const [padded, panel] = scratch.slice(2 * t, 2 * t + 2);
      // The padded buffer's border stays zero for every image: cleared once, by the part's thread.
      calls.run('zero_bytes', padded, gm.paddedFloats * 4);
      for (let u = u0; u < u1; ) {
        // This share of chunk `chunk`: tiles [a, b) (of all groups), within one group at a time.
        const chunk = Math.floor(u / tiles);
        const a = u - chunk * tiles;
        const g = Math.floor(a / oTiles);
        const b = Math.min(u1 - chunk * tiles, (g + 1) * oTiles);
        u = chunk * tiles + b;
        const [c0, c1] = [a - g * oTiles, b - g * oTiles];
        const channels = Math.min(og, 8 * c1) - 8 * c0;
        const accAt = acc + (chunk * chunkFloats + g * accFloats + 8 * c0) * 4;
        const [n0, n1] = [Math.floor((chunk * l.n) / chunks), Math.floor(((chunk + 1) * l.n) / chunks)];
        for (let n = n0; n < n1; n++) {
          fillPhases(calls, d, gm, d.src + ((n * l.c + g * cg) * l.h * l.w) * 4, padded);
          const gImage = gp + ((n * l.outChannels + g * og + 8 * c0) * OH * OW) * 4;
          for (let oy = 0; oy < OH; oy += rowsPerBlock) {
            const rows = Math.min(rowsPerBlock, OH - oy);
            calls.run('conv_pack_grad', gImage + oy * OW * 4, OH * OW * 4, channels, rows * OW, c1 - c0, panel);
            calls.run('conv_wgrad', padded + oy * wq * 4, offs, kPad, panel, c1 - c0, rows, OW, wq * 4, accAt, ldAcc * 4);
          }
        }
      }
    }, key);
    const op = this.h.ptr(out);
    for (let g = 0; g < l.groups; g++) this.h.exports.conv_wgrad_out(acc + g * accFloats * 4, chunks, chunkFloats * 4, ldAcc * 4, K, og, op + g * og * K * 4);
  }

  /**
   * Runs `share(calls, u0, u1, t)` for each part t's range [u0, u1) of `units` (parts <= units):
   * at once when there is one part, else recorded and run by the backend's pool (part t on
   * thread t, or as a queue when there are more parts than threads). Also the Winograd form's
   * (conv-winograd.ts), which splits the same way.
   * `key`: every number the recorded calls depend on (recordKey): the lists recorded under it are
   * kept (recorded) and run again when the same key comes back, unrecorded.
   */
  split(parts: number, units: number, share: (calls: Calls, u0: number, u1: number, t: number) => void, key?: string): void {
    if (parts <= 1) {
      share(new Calls(this.h.exports), 0, units, 0);
      return;
    }
    if (!this.keepRecordings) key = undefined;
    const kept = key === undefined ? undefined : this.recorded.get(key);
    if (kept) {
      // The most recently used last: the oldest go first when the budget is spent.
      this.recorded.delete(key!);
      this.recorded.set(key!, kept);
      this.h.runParts(kept);
      return;
    }
    const lists = splitRange(units, parts).map(([u0, u1], t) => {
      // Reused from call to call (the pool has copied and run them all when runParts returns).
      const list = key === undefined ? (this.lists[t] ??= new CallList()) : new CallList();
      list.length = 0;
      share(new Calls(null, this.indexOf, list), u0, u1, t);
      return list;
    });
    if (key !== undefined) this.keep(key, lists);
    this.h.runParts(lists);
  }

  /**
   * Recorded parts by key (split), most recently used last. Recording is the caller's serial
   * work before the threads start: a thousand calls or more per convolution (per image the
   * padding copies, packings and micro-kernel sweeps): 1.3-2.6 ms of the small ResNet's 45-50 ms
   * SGD step at batch 128 on two threads (15,300 calls), every step, though the same convolutions
   * come back over the same buffers (a captured step's always; an eager step's once its
   * allocations repeat, after 5-7 steps). Run from here: 0.16 ms per step.
   */
  private readonly recorded = new Map<string, CallList[]>();
  /** Whether split keeps recordings (off: every split records anew): public for measurements (bench/threads-profile.ts). */
  keepRecordings = true;
  private recordedInts = 0;

  private keep(key: string, lists: CallList[]): void {
    for (const list of lists) list.ints = list.ints.slice(0, list.length);
    this.recorded.set(key, lists);
    this.recordedInts += lists.reduce((n, list) => n + list.length, 0);
    for (const [k, old] of this.recorded) {
      if (this.recordedInts <= RECORDED_INTS) break;
      this.recorded.delete(k);
      this.recordedInts -= old.reduce((n, list) => n + list.length, 0);
    }
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
    [bph, bpw]: [number, number] = [ph, pw],
  ): DirectConv {
    return { n: l.n, groups: l.groups, src, cin, srcChannels, H, W, kh, kw, sh, sw, dh: l.dh, dw: l.dw, ph, pw, bph, bpw };
  }

  /**
   * How directRun lays out `plans` split over `threads`: its units and parts, the padded input
   * buffers, the scratch sizes, and (once the scratch address is known) the regions and the
   * recording key. Kept per plans and threads: plans are kept per layout and addresses (plansFor).
   */
  private runLayout(plans: DirectPlan[], threads: number): RunLayout {
    let byThreads = this.runLayouts.get(plans);
    if (!byThreads) this.runLayouts.set(plans, (byThreads = new Map()));
    let r = byThreads.get(threads);
    if (r) return r;
    this.runMisses++;
    const { d } = plans[0];
    const perImage = plans.length > 1;
    const units = d.groups * d.n * (perImage ? 1 : plans[0].blocks);
    // Split, it is a queue of PARTS_PER_THREAD parts per thread (ThreadPool.run): a thread that
    // the scheduler holds back then delays the call by one part at most.
    const parts = threads > 1 ? Math.min(units, threads * PARTS_PER_THREAD) : 1;
    // Per part: its output block (cBlock has a row for every channel of the last tile; those
    // past cout are never copied out) and edge tile, and a padded input per buffer geometry
    // (plans of one geometry share it: the stride phases of an input gradient), whose border
    // then stays zero for every image of the part.
    const keys = plans.map((p) => `${p.d.src} ${p.d.cin} ${p.d.H} ${p.d.W} ${p.gm.hq} ${p.gm.wq} ${p.gm.bph} ${p.gm.bpw}`);
    const buffers = [...new Set(keys)];
    const bufferOf = keys.map((key) => buffers.indexOf(key));
    const bufferFloats = buffers.map((_, j) => Math.max(...plans.filter((_, i) => bufferOf[i] === j).map((p) => p.gm.paddedFloats)));
    const own = [...bufferFloats.map((floats) => floats * 4), Math.max(...plans.map((p) => p.rowsPad * p.gm.nbPad)) * 4, MR * NR * 4];
    const shared = plans.flatMap((p) => [p.weightBytes, d.groups * p.packedBytes, p.gm.K * 4]);
    const sizes = [...shared, ...Array.from({ length: parts }, () => own).flat()];
    r = { parts, units, perImage, buffers, bufferOf, bufferFloats, own, shared, sizes, bytes: sizes.reduce((a, b) => a + roundUp(b, 16), 0), base: -1, regions: null, key: undefined };
    byThreads.set(threads, r);
    return r;
  }
  private readonly runLayouts = new WeakMap<DirectPlan[], Map<number, RunLayout>>();

  /**
   * Runs the plans (stride-1 convolutions over the same images and groups) as one split call.
   * One plan is split in units of (group, image, block of output rows). Several plans (the
   * stride phases of an input gradient, whose pixels interleave in the same rows of dX, and
   * whose copied placement reads and writes back its neighbours) are split in units of
   * (group, image), each running every plan's blocks of that image in order: no two threads
   * touch the same rows, and the phases pay for one split, not one each.
   */
  private directRun(plans: DirectPlan[], weight: Storage): void {
    const k = this.h.exports;
    const { d } = plans[0];
    const threads = this.h.threadsFor(plans.reduce((sum, p) => sum + p.flops, 0));
    const r = this.runLayout(plans, threads);
    const { parts, units, perImage, buffers, bufferOf, bufferFloats, own, shared } = r;
    // The layout's scratch (the same address as before, unless the scratch has grown: then its
    // regions and the recording's key anew).
    const base = this.h.scratch(r.bytes);
    if (base !== r.base) {
      r.base = base;
      r.regions = carve(this.h, r.sizes);
      // Everything the parts' calls depend on: the plans' geometry, placement and form, the scratch regions.
      r.key = parts > 1 ? recordKey('direct', [parts, units, plans.length, r.regions.length, ...r.regions, ...plans.flatMap((p) => [...Object.values(p.d), p.cout, ...Object.values(p.place), p.storeInPlace ? 1 : 0])]) : undefined;
    }
    const regions = r.regions!;
    const scratch = regions.slice(shared.length);
    // The border, the slack and (below) the interior of each padded input: the border stays
    // zero for every image of the part.
    for (let t = 0; t < parts; t++) buffers.forEach((_, j) => k.zero_bytes(scratch[own.length * t + j], bufferFloats[j] * 4));
    const at = plans.map((p, i) => {
      const [weights, packed, offs] = regions.slice(3 * i, 3 * i + 3);
      p.writeWeights(weights, weight);
      this.h.i32().set(p.gm.offsets, offs >>> 2);
      // Packed once per call and group, before the threads start.
      for (let g = 0; g < d.groups; g++) {
        if (p.narrow) k.gemm_pack_a(weights + g * p.cout * p.gm.K * 4, p.gm.K * 4, 4, p.cout, p.gm.K, packed + g * p.packedBytes);
        else k.conv_pack_grad(weights + g * p.cout * p.gm.K * 4, p.gm.K * 4, p.cout, p.gm.K, p.oTiles, packed + g * p.packedBytes);
      }
      return { packed, offs };
    });
    const key = r.key;
    this.split(parts, units, (calls, u0, u1, t) => {
      const mine = scratch.slice(own.length * t, own.length * (t + 1));
      const [padded, [cBlock, tile]] = [mine.slice(0, buffers.length), mine.slice(buffers.length)];
      // Whose image (g * n + image) the interior of each padded input holds.
      const filled = buffers.map(() => -1);
      const block = (i: number, gn: number, b: number) => {
        const p = plans[i];
        const j = bufferOf[i];
        const g = Math.floor(gn / d.n);
        const n = gn % d.n;
        if (gn !== filled[j]) fillPhases(calls, p.d, p.gm, p.d.src + ((n * p.d.srcChannels + g * p.d.cin) * p.d.H * p.d.W) * 4, padded[j]);
        filled[j] = gn;
        directBlock(calls, p, at[i].packed + g * p.packedBytes, at[i].offs, padded[j], cBlock, tile, g, n, b);
      };
      for (let u = u0; u < u1; u++) {
        if (!perImage) {
          // Images in order g * n + image, as the group loop outside the image loop.
          block(0, Math.floor(u / plans[0].blocks), u % plans[0].blocks);
          continue;
        }
        plans.forEach((p, i) => {
          for (let b = 0; b < p.blocks; b++) block(i, u, b);
        });
      }
    }, key);
  }

  private backwardInputByColumns(grad: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    const { cg, og, K, L, nb, ldb } = plan(l);
    const k = this.h.exports;
    const [packed, gradBlock, block, offs, tile] = carve(this.h, [roundUp(K, MR) * og * 4, og * ldb, K * ldb, og * 4, MR * NR * 4]);
    this.h.i32().set(Int32Array.from({ length: og }, (_, p) => p * ldb), offs >>> 2);
    const [gp, wp, op] = [this.h.ptr(grad), this.h.ptr(weight), this.h.ptr(out)];
    const geo = geometry(l, cg);
    k.zero_bytes(op, l.n * l.c * l.h * l.w * 4);
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
