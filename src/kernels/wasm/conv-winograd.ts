/**
 * 3x3 stride-1 convolutions on the wasm backend by Winograd's minimal filtering F(2x2, 3x3)
 * (Lavin & Gray 2016): each 2x2 block of outputs ("tile") of an (out, in) channel pair costs 16
 * multiplies instead of the direct form's 36, so the GEMM at the heart of it is 2.25x smaller.
 * With d the 4x4 input patch of a tile (stride 2 over the zero-bordered input) and g a 3x3 filter:
 *   V = B^T d B  (per input channel and tile),   U = G g G^T  (per (out, in) pair, once per call),
 *   M[xi] = U[xi] @ V[xi]  for each of the 16 positions xi of the 4x4 transform (K x C @ C x tiles),
 *   Y = A^T M A  (the tile's 2x2 outputs, per output channel),
 * with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
 * A^T = [1 1 1 0; 0 1 -1 -1].
 *
 * Per image, the input is copied into a zero-bordered buffer (as conv.ts pads), and the tiles
 * are taken in blocks of whole tile rows, sized so that a block's V [16][C][tiles] stays in L2
 * (no whole-batch V or M). For each block:
 * - wino_input: V = B^T d B, f32x4 along 4 tiles of a tile row (their 4x4 patches are every
 *   other column of the same 4 input rows: two loads and two shuffles per input row and vector);
 *   the row combinations of B^T are taken on the loaded vectors first, so few stay live.
 * - wino_product: per 4 output channels x 8 tiles, the 16 products M[xi] in turn with a 4 x 8
 *   register tile as the matmul's micro-kernel (four output channels of U broadcast, eight tiles
 *   of V as two aligned vectors), left in 2 KiB of L1, then Y = A^T M A at once, f32x4 along 4
 *   tiles, each tile's two output pairs stored as 64-bit lanes straight into the output, at
 *   offsets from a table (partial tiles of an odd output size clipped through flags in the
 *   table's low bits). M never leaves L1: the same kernel with M [16][K][tiles] in L2 and a
 *   separate output pass ran 0.9-1.1x as fast (one thread, interleaved, batch 32: 16->32 28x28
 *   53.0 against 52.4 GFLOP/s, 32->32 7x7 42.6 against 38.9, 16->16 14x14 47.6 against 49.5),
 *   4 x 16 tiles per step (V's cache lines used whole at once) 0.96-1.05x, and the depth loop
 *   unrolled by two 0.75-0.85x.
 * U is made once per call by wino_weights in float64 (rounded once to float32), packed in panels
 * of 4 output channels.
 *
 * The input gradient of a stride-1 3x3 convolution (padding <= 2) is the "full" convolution of
 * dY with the weights flipped in space and transposed in channels, padding 2 - p: the same
 * forward, over dY, with U made from the flipped weights.
 *
 * Threads: units are (image, block of tile rows), split over the backend's threads as conv.ts
 * splits its own (WasmConv.split: a queue of PARTS_PER_THREAD parts per thread, each with its
 * own padded buffer, V and 2 KiB of M); a batch too small to give every part an image is cut
 * into more blocks. Every output element is computed by the same kernels over the same operands
 * in the same order whatever the split or the blocking: the result does not depend on the thread
 * count. Two threads against one (bench/conv-winograd.bench.ts --scaling, batch 32, wall time,
 * interleaved, the other core idle): forward / input gradient 1.64 / 1.61x on the issue case,
 * 1.66 / 1.75x at 8 -> 8 28x28, 1.81 / 1.82x at 16 -> 16 14x14, 1.68 / 1.50x at 32 -> 32 7x7 (the
 * stem, 1 -> 8, is too small for the cost model to split).
 *
 * Numerics (bench/conv-winograd.bench.ts --numerics: batch 4, N(0, 1) inputs, He-scaled weights,
 * against a float64 reference): the largest error over the output was 0.39-1.05x the direct
 * form's (conv.ts) on the issue case and the ResNet 3x3 shapes, forward and input gradient
 * (max abs 0.96e-6-2.3e-6 against 0.9e-6-4.3e-6; relative to the largest output 1.5e-7-2.7e-7
 * against 1.4e-7-6.2e-7): the sums over the input channels are 9x shorter, and U is made in
 * float64, which makes up for the transforms' extra roundings. Per element, against the sum of
 * |products| (test/conv-winograd.test.ts), the one-channel stem's worst output is 4x the direct
 * form's: an output takes its tile's transform errors, however small its own window.
 *
 * Infinities and NaNs: the results are conv.ts's, bit for bit, wherever a value is not finite.
 * Left to themselves the transforms would differ: they mix a tile's 16 inputs (an Inf or NaN
 * would reach the whole 2x2 output tile, not only the windows that hold it), take Inf - Inf (NaN
 * where the direct sum gives +-Inf), and add up to 4 inputs before any weight (overflow where the
 * direct form stays finite). So the kernels note the largest |value| they read, as int32 bits
 * (NaN's above +Inf's above every finite value's): wino_weights over all the weights, first,
 * wino_input over every input it reads (two SIMD instructions per vector, |x| and a max, taken
 * on the rows it loads for the row combinations anyway, plus each block's last columns and
 * rows), each part of a split in its own 16 bytes. Where a weight or an input is not finite, or
 * large enough that either form could overflow (`finite` below: one bound covers both forms'
 * sums, so no output needs checking), the whole call is handed to conv.ts, which writes the whole
 * output: for the weights before any Winograd work, for the inputs after it. So ordinary data
 * never falls back (cin max|x| max|w| up to about 2e36 passes), and an Inf or NaN costs one extra
 * convolution. The checks' cost, against the kernels without them (A/B/A interleaved in one
 * process, batch 32, 21 rounds, median of the per-round ratios, three runs at load average
 * 1.4-2.2 from other work, 2026-11-30): with the checks / without, one thread (process CPU time),
 * forward / input gradient, median of the runs: issue case 1.010 / 1.005, 1 -> 8 28x28 1.006 /
 * 0.982, 8 -> 8 28x28 0.966 / 0.991, 16 -> 16 14x14 1.008 / 1.000, 32 -> 32 7x7 1.005 / 0.999
 * (the A/A control, the unchecked kernels against themselves, 0.93-1.04 per run); two threads
 * (wall time, one run) 1.004-1.034, A/A 0.980-1.020 (the stem's, 0.76-0.91 in both, left out). A
 * call's host work grew by a few tenths of a microsecond (a 4x4 image: 1.05-1.17x of 2-3 us).
 *
 * Selection (WasmBackend.winogradConvs, 'auto'): useWinogradConv below, from the sweep in its
 * comment.
 */
import type { Conv2dLayout, Storage } from '../backend.js';
import { f32, f32x4, f64, i32, i32x4, select, v128, ValType, type FuncBuilder, type Local, type ModuleBuilder, type Operand } from './emit.js';
import { shuffle32 } from './module.js';
import { carve, PARTS_PER_THREAD, type WasmConv, type WasmConvHost } from './conv.js';

const { i32: I32, v128: V128 } = ValType;

/** The exports of this file (named by conv.ts's ConvExport, so that Calls can record them). */
export type WinogradExport = 'wino_input' | 'wino_product' | 'wino_weights';

/** The two kernels the form can run. */
export type WinogradKernel = 'forward' | 'backwardInput';

/** Flags in the low bits of an output-table entry (byte offsets are multiples of 4). */
const NO_RIGHT = 1;
const NO_BOTTOM = 2;

/** Bytes of a block's V, to stay in L2 (1 MiB per core here) next to U and the padded image. */
const BLOCK_BYTES = 320 * 1024;

const roundUp = (v: number, m: number) => Math.ceil(v / m) * m;

/**
 * wino_input(src, wpBytes, planeBytes, channels, rows, tw, v, ldvBytes, xiBytes, flag): for input
 * channel c < channels, tile row r < rows and tile x < tw, V[xi][c][r*tw + x] (at v + xi*xiBytes
 * + c*ldvBytes + 4*(r*tw + x)) = (B^T d B)[xi] of the 4x4 patch d at src + c*planeBytes +
 * 2r*wpBytes + 8x. Tiles go 4 at a time; a row's last vector may run up to 3 tiles past tw, into
 * the next row's first tiles (rewritten right after); past the last row, columns rows*tw ..
 * rows*tw + 7 are set to zero (the caller's ldv leaves them).
 * It also raises the 4 int32 lanes at `flag` to at least the bits of |x| of every input x it reads
 * (rows 0 .. 2*rows + 1 and columns 0 .. 2*roundUp(tw, 4) + 3 from src, each channel): as integers those
 * order as the magnitudes do, with +Inf above every finite value and NaN above +Inf (WinogradConv.run).
 */
function emitInput(mb: ModuleBuilder): void {
  mb.func('wino_input', Array<ValType>(10).fill(I32), [], (f, src, wp, plane, channels, rows, tw, v, ldv, xiBytes, flag) => {
    const [c, r, x, p, d, rowSrc, chanSrc, chanDst, q, end] = f.localsOf(I32, 10);
    const rp = f.localsOf(I32, 4);
    const off = f.localsOf(I32, 16);
    const w = f.localsOf(V128, 4);
    const dd = f.localsOf(V128, 4);
    // The largest |x| so far as int32 bits (abs clears the sign bit, so a signed max orders them).
    const seen = f.local(V128);
    const note = (x: Operand) => f.set(seen, i32x4.maxS(seen, f32x4.abs(x)));
    f.set(seen, v128.i32x4([0, 0, 0, 0]));
    // Input rows 0 and 1 of the 4 tiles, columns 0..7: loaded once, noted, and used by the combinations.
    const head = f.localsOf(V128, 4);
    off.forEach((o, xi) => f.set(o, i32.mul(xiBytes, xi)));
    // Row i of B^T d: the input rows it combines (B^T's nonzeros) as (row, sign) pairs.
    const combos: [number, number, number][] = [
      [0, 2, -1],
      [1, 2, 1],
      [2, 1, -1],
      [1, 3, -1],
    ];
    const comb = (a: Operand, b: Operand, sign: number) => (sign > 0 ? f32x4.add(a, b) : f32x4.sub(a, b));
    f.set(chanSrc, src);
    f.set(chanDst, v);
    f.for(c, 0, channels, 1, () => {
      f.set(rowSrc, chanSrc);
      f.for(r, 0, rows, 1, () => {
        f.set(p, rowSrc);
        f.set(d, i32.add(chanDst, i32.shl(i32.mul(r, tw), 2)));
        f.for(x, 0, tw, 4, () => {
          rp.forEach((q, i) => f.set(q, i32.add(p, i32.mul(wp, i))));
          // Rows 0 and 1, columns 0..7: what these tiles add to the inputs read (rows 2 and 3 are the
          // next tile row's 0 and 1, columns 8 and 9 the next 4 tiles' 0 and 1; the last ones below).
          head.forEach((h, k) => f.set(h, v128.load(rp[k >> 1], 16 * (k & 1))));
          // As a tree: one step of the chain through `seen` per 4 tiles.
          const [m0, m1, m2, m3] = head.map((h) => f32x4.abs(h));
          f.set(seen, i32x4.maxS(seen, i32x4.maxS(i32x4.maxS(m0, m1), i32x4.maxS(m2, m3))));
          const ld = (row: number, at: number) => (row < 2 && at % 16 === 0 ? head[2 * row + at / 16] : v128.load(rp[row], at));
          combos.forEach(([ra, rb, sign], i) => {
            // The four vectors of input columns 2x..2x+3, +4..+7, +2..+5, +6..+9 of this row of B^T d.
            [0, 16, 8, 24].forEach((at, k) => f.set(w[k], comb(ld(ra, at), ld(rb, at), sign)));
            // Column j of the 4 tiles' patches: every other column from 2x + j.
            f.set(dd[0], shuffle32(w[0], w[1], [0, 2, 4, 6]));
            f.set(dd[1], shuffle32(w[0], w[1], [1, 3, 5, 7]));
            f.set(dd[2], shuffle32(w[2], w[3], [0, 2, 4, 6]));
            f.set(dd[3], shuffle32(w[2], w[3], [1, 3, 5, 7]));
            const out = [f32x4.sub(dd[0], dd[2]), f32x4.add(dd[1], dd[2]), f32x4.sub(dd[2], dd[1]), f32x4.sub(dd[1], dd[3])];
            out.forEach((val, j) => f.exec(v128.store(i32.add(d, off[4 * i + j]), val)));
          });
          f.inc(p, 32);
          f.inc(d, 16);
        });
        // Columns 2*roundUp(tw, 4) .. + 3 of rows 0 and 1 (the last 4 tiles' columns 8 and 9).
        note(v128.load(p));
        note(v128.load(i32.add(p, wp)));
        f.inc(rowSrc, i32.shl(wp, 1));
      });
      // Rows 2*rows and 2*rows + 1 (the last tile row's 2 and 3), whole (a vector may run 3 floats
      // past them: into the next rows, or the padded buffer's 4 spare floats).
      f.set(q, rowSrc);
      f.set(end, i32.add(rowSrc, i32.shl(wp, 1)));
      f.block((exit) =>
        f.loop((top) => {
          f.brIf(exit, i32.geU(q, end));
          note(v128.load(q));
          f.inc(q, 16);
          f.br(top);
        }),
      );
      // Zeros over the 8 columns past the block's last tile: wino_product reads up to the end of
      // the last 8-tile panel, and so never meets a stale value (a NaN, or a slow subnormal).
      f.set(d, i32.add(chanDst, i32.shl(i32.mul(rows, tw), 2)));
      for (const o of off) for (const at of [0, 16]) f.exec(v128.store(i32.add(d, o), v128.i32x4([0, 0, 0, 0]), at));
      f.inc(chanSrc, plane);
      f.inc(chanDst, ldv);
    });
    f.exec(v128.store(flag, i32x4.maxS(v128.load(flag), seen)));
  });
}

/** The locals of one output transform (outputTiles). */
interface OutputLocals {
  e: Local;
  at: Local;
  flags: Local;
  col: Local[];
  s: Local[];
  y: Local[];
  rowsOut: Local[];
}

function outputLocals(f: FuncBuilder): OutputLocals {
  const [e, at, flags] = f.localsOf(I32, 3);
  return { e, at, flags, col: f.localsOf(V128, 4), s: f.localsOf(V128, 8), y: f.localsOf(V128, 4), rowsOut: f.localsOf(V128, 4) };
}

/**
 * Y = A^T M A for 4 tiles g..g+3 (of `tiles`) of one output channel, M[xi] (4 tiles) from
 * load(xi), written at dst + table entry (entry: the entries of the 4 tiles): whole tiles as two
 * 64-bit lanes each (one per output row), partial ones (NO_RIGHT, NO_BOTTOM) a float at a time.
 */
function outputTiles(f: FuncBuilder, o: OutputLocals, load: (xi: number) => Operand, dst: Operand, entry: Local, g: Operand, tiles: Operand, rowBytes: Operand): void {
  const { e, at, flags, col, s, y, rowsOut } = o;
  // A^T M: per column j, the two rows s0j = m0j + m1j + m2j, s1j = m1j - m2j - m3j.
  for (let j = 0; j < 4; j++) {
    col.forEach((x, i) => f.set(x, load(4 * i + j)));
    f.set(s[j], f32x4.add(f32x4.add(col[0], col[1]), col[2]));
    f.set(s[4 + j], f32x4.sub(f32x4.sub(col[1], col[2]), col[3]));
  }
  // (A^T M) A: y00, y01 from the top row, y10, y11 from the bottom.
  for (let i = 0; i < 2; i++) {
    const [s0, s1, s2, s3] = s.slice(4 * i, 4 * i + 4);
    f.set(y[2 * i], f32x4.add(f32x4.add(s0, s1), s2));
    f.set(y[2 * i + 1], f32x4.sub(f32x4.sub(s1, s2), s3));
  }
  // Each tile's pair of an output row as one 64-bit lane: tiles 0, 1 in the first vector, 2, 3 in the second.
  f.set(rowsOut[0], shuffle32(y[0], y[1], [0, 4, 1, 5]));
  f.set(rowsOut[1], shuffle32(y[0], y[1], [2, 6, 3, 7]));
  f.set(rowsOut[2], shuffle32(y[2], y[3], [0, 4, 1, 5]));
  f.set(rowsOut[3], shuffle32(y[2], y[3], [2, 6, 3, 7]));
  const tileAt = (q: number) => {
    f.set(e, i32.load(entry, 4 * q));
    f.set(at, i32.add(dst, i32.and(e, -4)));
  };
  const whole = (q: number) => {
    const [top, bottom] = [rowsOut[q >> 1], rowsOut[2 + (q >> 1)]];
    f.exec(v128.store64Lane(at, top, q & 1));
    f.exec(v128.store64Lane(i32.add(at, rowBytes), bottom, q & 1));
  };
  // Four whole tiles (the common case): no test per tile.
  f.set(flags, i32.or(i32.or(i32.load(entry), i32.load(entry, 4)), i32.or(i32.load(entry, 8), i32.load(entry, 12))));
  f.if(
    i32.and(i32.leS(i32.add(g, 4), tiles), i32.eqz(i32.and(flags, NO_RIGHT | NO_BOTTOM))),
    () => {
      for (let q = 0; q < 4; q++) {
        tileAt(q);
        whole(q);
      }
    },
    () => {
      for (let q = 0; q < 4; q++) {
        const [top, bottom] = [rowsOut[q >> 1], rowsOut[2 + (q >> 1)]];
        const lane = q & 1;
        f.if(i32.ltS(i32.add(g, q), tiles), () => {
          tileAt(q);
          f.if(
            i32.eqz(i32.and(e, NO_RIGHT | NO_BOTTOM)),
            () => whole(q),
            () => {
              f.exec(v128.store32Lane(at, top, 2 * lane));
              f.if(i32.eqz(i32.and(e, NO_RIGHT)), () => f.exec(v128.store32Lane(at, top, 2 * lane + 1, 4)));
              f.if(i32.eqz(i32.and(e, NO_BOTTOM)), () => f.exec(v128.store32Lane(i32.add(at, rowBytes), bottom, 2 * lane)));
            },
          );
        });
      }
    },
  );
}

/**
 * wino_product(u, v, channels, kPanels, tPanels, ldvBytes, vXiBytes, cout, tiles, table, out,
 * chanBytes, rowBytes, scratch): the 16 products and the output transform together, per block
 * of 4 output channels x 8 tiles: M[xi] = U[xi] @ V[xi] for the 16 xi in turn (a 4 x 8 register
 * tile each, as the matmul's micro-kernel: four values of U broadcast, the 8 tiles' values of V
 * as two aligned vectors; depth `channels`), left in `scratch` (2 KiB, in L1), then Y = A^T M A
 * of those 4 x 8 (outputTiles) for the channels below cout and tiles below `tiles`. U is packed as
 * [kPanels][16][channels][4], V[xi][c] lies at v + xi*vXiBytes + c*ldvBytes.
 */
function emitProduct(mb: ModuleBuilder): void {
  mb.func('wino_product', Array<ValType>(14).fill(I32), [], (f, u, v, channels, kPanels, tPanels, ldv, vXi, cout, tiles, table, out, chanBytes, rowBytes, scratch) => {
    const [j, kp, xi, pa, pb, end, bx, panelBytes, sp, idx, k, g, entry, p] = f.localsOf(I32, 14);
    const acc = Array.from({ length: 4 }, () => f.localsOf(V128, 2));
    const bv = f.localsOf(V128, 2);
    const a = f.local(V128);
    const o = outputLocals(f);
    f.set(panelBytes, i32.shl(channels, 4));
    f.for(j, 0, tPanels, 1, () => {
      f.set(pa, u);
      f.for(kp, 0, kPanels, 1, () => {
        f.set(bx, i32.add(v, i32.shl(j, 5)));
        f.set(sp, scratch);
        f.for(xi, 0, 16, 1, () => {
          f.set(pb, bx);
          f.set(end, i32.add(pa, panelBytes));
          // The first input channel sets the accumulators (channels >= 1), the others add to them.
          const step = (first: boolean) => {
            f.set(bv[0], v128.load(pb));
            f.set(bv[1], v128.load(pb, 16));
            for (let r = 0; r < 4; r++) {
              f.set(a, v128.load32Splat(pa, 4 * r));
              for (let q = 0; q < 2; q++) f.set(acc[r][q], first ? f32x4.mul(a, bv[q]) : f32x4.add(acc[r][q], f32x4.mul(a, bv[q])));
            }
            f.inc(pa, 16);
            f.inc(pb, ldv);
          };
          step(true);
          f.block((exit) =>
            f.loop((top) => {
              f.brIf(exit, i32.geU(pa, end));
              step(false);
              f.br(top);
            }),
          );
          // scratch[xi][r][8 tiles]
          for (let r = 0; r < 4; r++) for (let q = 0; q < 2; q++) f.exec(v128.store(sp, acc[r][q], 32 * r + 16 * q));
          f.inc(sp, 128);
          f.inc(bx, vXi);
        });
        // Output channel 4kp + (idx >> 1), tiles 8j + 4(idx & 1) .. + 3.
        f.for(idx, 0, 8, 1, () => {
          f.set(k, i32.add(i32.shl(kp, 2), i32.shrU(idx, 1)));
          f.set(g, i32.add(i32.shl(j, 3), i32.shl(i32.and(idx, 1), 2)));
          f.if(i32.and(i32.ltS(k, cout), i32.ltS(g, tiles)), () => {
            f.set(p, i32.add(scratch, i32.shl(idx, 4)));
            f.set(entry, i32.add(table, i32.shl(g, 2)));
            outputTiles(f, o, (x) => v128.load(p, 128 * x), i32.add(out, i32.mul(k, chanBytes)), entry, g, tiles, rowBytes);
          });
        });
      });
    });
  });
}

/**
 * wino_weights(w, cout, cin, oStride, iStride, flip, u, flag): U = G g G^T for every output channel
 * o < cout and input channel i < cin, in float64, rounded once to float32, packed as
 * [cout/4][16][cin][4] at u (channels past cout are not written: the caller clears them). The
 * filter g of (o, i) starts at float 9*(o*oStride + i*iStride) of w, its taps in order, or (flip
 * 1) in reverse order from its last float (the input gradient's flipped taps).
 * The 4 int32 lanes at `flag` are set so that their largest is the largest bits of |g| over the
 * weights (as wino_input's; the taps of every pair lie in the cout * cin * 9 floats from w).
 */
function emitWeights(mb: ModuleBuilder): void {
  mb.func('wino_weights', Array<ValType>(8).fill(I32), [], (f, w, cout, cin, oStride, iStride, flip, u, flag) => {
    const [o, i, src, dst, step, xiBytes, q, end] = f.localsOf(I32, 8);
    const seen = f.local(V128);
    // All the weights, 4 at a time, the last vector overlapping (there are 9 or more).
    f.set(seen, v128.i32x4([0, 0, 0, 0]));
    f.set(end, i32.sub(i32.add(w, i32.mul(i32.mul(cout, cin), 36)), 16));
    f.set(q, w);
    f.block((exit) =>
      f.loop((top) => {
        f.brIf(exit, i32.geU(q, end));
        f.set(seen, i32x4.maxS(seen, f32x4.abs(v128.load(q))));
        f.inc(q, 16);
        f.br(top);
      }),
    );
    f.exec(v128.store(flag, i32x4.maxS(seen, f32x4.abs(v128.load(end)))));
    const F64 = ValType.f64;
    const g = f.localsOf(F64, 3);
    const t = Array.from({ length: 4 }, () => f.localsOf(F64, 3));
    f.set(xiBytes, i32.shl(cin, 4));
    f.set(step, select(-4, 4, flip));
    f.for(o, 0, cout, 1, () =>
      f.for(i, 0, cin, 1, () => {
        f.set(src, i32.add(w, i32.mul(i32.add(i32.mul(o, oStride), i32.mul(i, iStride)), 36)));
        f.if(flip, () => f.inc(src, 32));
        // t = G g, a column b at a time: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2.
        for (let b = 0; b < 3; b++) {
          g.forEach((x, a) => f.set(x, f64.promoteF32(f32.load(i32.add(src, i32.mul(step, 3 * a + b))))));
          f.set(t[0][b], g[0]);
          f.set(t[1][b], f64.mul(f64.add(f64.add(g[0], g[1]), g[2]), 0.5));
          f.set(t[2][b], f64.mul(f64.add(f64.sub(g[0], g[1]), g[2]), 0.5));
          f.set(t[3][b], g[2]);
        }
        // U row r = t_r G^T, xi = 4r + j at dst + xi * 16 * cin bytes.
        f.set(dst, i32.add(u, i32.shl(i32.add(i32.mul(i32.shl(i32.shrU(o, 2), 4), cin), i), 4)));
        f.inc(dst, i32.shl(i32.and(o, 3), 2));
        for (let r = 0; r < 4; r++) {
          const [t0, t1, t2] = t[r];
          const row = [t0, f64.mul(f64.add(f64.add(t0, t1), t2), 0.5), f64.mul(f64.add(f64.sub(t0, t1), t2), 0.5), t2];
          row.forEach((v, j) => f.exec(f32.store(i32.add(dst, i32.mul(xiBytes, 4 * r + j)), f32.demoteF64(v))));
        }
      }),
    );
  });
}

/** Adds the Winograd kernels to the backend's module (called by buildKernelModule). */
export function emitWinogradKernels(mb: ModuleBuilder): void {
  emitInput(mb);
  emitProduct(mb);
  emitWeights(mb);
}

// ---- the host side ----

/** Whether the Winograd form can run `kernel` of `l`: 3x3, stride 1, dilation 1, one group, nonempty channels and output. */
export function isWinogradConv(l: Conv2dLayout, kernel: WinogradKernel): boolean {
  const shape = l.kh === 3 && l.kw === 3 && l.sh === 1 && l.sw === 1 && l.dh === 1 && l.dw === 1 && l.groups === 1;
  const sizes = l.c > 0 && l.outChannels > 0 && l.oh > 0 && l.ow > 0 && l.h > 0 && l.w > 0;
  // The input gradient as a full convolution needs a padding of 2 - p >= 0.
  return shape && sizes && (kernel === 'forward' || (l.ph <= 2 && l.pw <= 2));
}

/**
 * Whether 'auto' runs `kernel` of `l` by Winograd: where it was measured faster than conv.ts.
 * In terms of the convolution the form runs (cin input channels, an OH x OW output: the layer's
 * c and oh x ow for the forward, its outChannels and h x w for the input gradient), it takes
 * every layout but cin <= 2 with at most 64 outputs per channel.
 * The sweep (bench/conv-winograd.bench.ts --grid: batch 32, pad 1, layers of 1/3/8/16/32/64 ->
 * 8/16/32/64 channels at 7x7/14x14/28x28, forward and input gradient, so cin 1/3 (forwards) and
 * 8-64 (both); one thread, interleaved, process CPU time, conv.ts time / Winograd time; two runs,
 * load average 2.5 and 1.2-2.2 from the other engineers' work):
 * - cin >= 8: 1.20-2.33x at every size (120 cases per run);
 * - cin = 3: 1.24-1.55x at 14x14 and 28x28, 1.05-1.13x at 7x7;
 * - cin = 1 (a stem's forward): 1.07-1.22x at 14x14, 0.96-1.18x at 28x28, and at 7x7 0.76-0.97x
 *   in one run, 0.93-1.27x in the other (too few tiles and channels for the transforms to pay
 *   reliably): the one case left to conv.ts (with cin = 2, not measured, beside it).
 */
export function useWinogradConv(l: Conv2dLayout, kernel: WinogradKernel): boolean {
  if (!isWinogradConv(l, kernel)) return false;
  const [cin, outputs] = kernel === 'forward' ? [l.c, l.oh * l.ow] : [l.outChannels, l.h * l.w];
  return cin > 2 || outputs > 64;
}

/** One stride-1 3x3 convolution as the form runs it: cin -> cout channels, H x W -> OH x OW. */
interface Problem {
  n: number;
  src: number;
  cin: number;
  H: number;
  W: number;
  ph: number;
  pw: number;
  out: number;
  cout: number;
  OH: number;
  OW: number;
  /**
   * The weights: the 3x3 filter of output channel o and input channel i starts at float
   * 9*(o*oStride + i*iStride) of `weight`, its taps in order or (flip) reversed.
   */
  weight: number;
  oStride: number;
  iStride: number;
  flip: boolean;
}

/**
 * The largest of `lanes` floats from index `at` that hold the bits of a largest |x| (wino_input,
 * wino_weights): NaN where one is (NaN's bits order above +Inf's).
 */
function largest(f32: Float32Array, at: number, lanes: number): number {
  let m = 0;
  for (let i = at; i < at + lanes; i++) m = f32[i] > m || f32[i] !== f32[i] ? f32[i] : m;
  return m;
}

/** Half the largest float32: the slack covers the sums' rounding (a factor (1 + 2^-24) per term). */
const HALF_MAX = 2 ** 127;

/**
 * Whether a convolution over `cin` input channels with every |input| <= maxX and every |weight|
 * <= maxW (NaN where one was NaN) is finite throughout in both forms, so that neither meets an
 * infinity or a NaN: the direct form's partial sums are at most 9 cin maxX maxW in magnitude; in
 * this form |V| <= 4 maxX (each entry of B^T d B adds or subtracts 4 inputs), |U| <= 2.25 maxW (the
 * rows of G have |entries| summing to 1.5 at most), each M[xi] sums cin products of those, so
 * |M| <= 9 cin maxX maxW, and A^T M A adds up to 9 entries of M: every value of the form is at most
 * 81 cin maxX maxW. Within the bounds both forms give finite results, which differ only by
 * rounding; beyond them conv.ts runs (its infinities and NaNs, placed per window, are PyTorch's).
 * NaN fails every comparison, so a NaN weight or input always falls back.
 */
function finite(cin: number, maxX: number, maxW: number): boolean {
  return 4 * maxX < HALF_MAX && 2.25 * maxW < HALF_MAX && 81 * cin * maxX * maxW < HALF_MAX;
}

export class WinogradConv {
  constructor(
    private readonly h: WasmConvHost,
    private readonly conv: WasmConv,
  ) {}

  /** The forward; conv.ts's where a value is not finite (run). */
  forward(x: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    if (!this.run(this.problem(l, 'forward', x, weight, out), l)) this.conv.forward(x, weight, out, l);
  }

  /** dX as the "full" convolution of dY with the weights flipped and transposed (padding 2 - p); conv.ts's where a value is not finite. */
  backwardInput(grad: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    if (!this.run(this.problem(l, 'backwardInput', grad, weight, out), l)) this.conv.backwardInput(grad, weight, out, l);
  }

  /** The convolution the form runs for `kernel` of `l`, reading `src` (x or dY) and writing `out`. */
  private problem(l: Conv2dLayout, kernel: WinogradKernel, src: Storage, weight: Storage, out: Storage): Problem {
    // One literal: built by spreading a shared part, it cost about 8 us a call (a CPU profile of 4x4 images).
    const fwd = kernel === 'forward';
    return {
      n: l.n,
      src: this.h.ptr(src),
      cin: fwd ? l.c : l.outChannels,
      H: fwd ? l.h : l.oh,
      W: fwd ? l.w : l.ow,
      ph: fwd ? l.ph : 2 - l.ph,
      pw: fwd ? l.pw : 2 - l.pw,
      out: this.h.ptr(out),
      cout: fwd ? l.outChannels : l.c,
      OH: fwd ? l.oh : l.h,
      OW: fwd ? l.ow : l.w,
      weight: this.h.ptr(weight),
      oStride: fwd ? l.c : 1,
      iStride: fwd ? 1 : l.c,
      flip: !fwd,
    };
  }

  /**
   * Runs `p`, or returns false where its result might not be conv.ts's in which values are
   * infinite or NaN (the caller then runs conv.ts, which writes the whole output): where a weight
   * or an input is not finite, or so large that either form could overflow (see `finite`).
   * `l`: the call's layout object, by which its recording's key is found again (WasmConv.keyOf).
   */
  private run(p: Problem, l: Conv2dLayout): boolean {
    if (p.n === 0) return true;
    const { cin: C, cout: K, OH, OW } = p;
    const TH = Math.ceil(OH / 2);
    const TW = Math.ceil(OW / 2);
    // The padded image: every patch (and the overflow vectors of wino_input) inside, zeros around.
    const Hp = 2 * TH + 2;
    const Wp = Math.max(2 * roundUp(TW, 4) + 2, p.W + p.pw);
    const paddedFloats = C * Hp * Wp + 4;
    const kPanels = Math.ceil(K / 4);
    // The cost model counts time at the matmul's rate per flop: the form ran the direct form's
    // flops at about 1.4x that (transforms included, one thread), so 0.7x of them.
    const threads = this.h.threadsFor(0.7 * 2 * p.n * K * C * 9 * OH * OW);
    // Blocks of whole tile rows, V within BLOCK_BYTES, and at least enough units for the parts of
    // a split (a batch of one image splits by blocks). A tile's outputs do not depend on which
    // block it is in, so neither does the result on the blocking.
    const blocksWanted = threads > 1 ? Math.ceil((threads * PARTS_PER_THREAD) / p.n) : 1;
    const rowsPerBlock = Math.max(1, Math.min(Math.ceil(TH / blocksWanted), Math.floor(BLOCK_BYTES / (16 * 4 * C * TW))));
    const blocks = Math.ceil(TH / rowsPerBlock);
    const T = rowsPerBlock * TW;
    // wino_product reads V in panels of 8 tiles, which wino_input's zeros past a block's last tile cover.
    const ldv = roundUp(T + 8, 8);
    // The 16 planes of V an odd number of cache lines apart: at a multiple of 4 KiB (32 channels
    // of 160 tiles) they fell into the same L1 sets, and the 16 store streams of wino_input
    // thrashed (the input gradients of 32 -> 1..8 channels at 28x28 ran at 0.6x conv.ts's speed).
    const lines = Math.ceil((C * ldv * 4) / 64);
    const vXi = (lines % 2 === 0 ? lines + 1 : lines) * 64;
    const units = p.n * blocks;
    const parts = threads > 1 ? Math.min(units, threads * PARTS_PER_THREAD) : 1;
    // Per part: the padded image, V, and wino_product's 16 x 4 x 8 floats of M.
    const own = [paddedFloats * 4, 16 * vXi, 16 * 32 * 4];
    // Last, the largest |weight| (wino_weights) and each part's largest |input| (wino_input), 16
    // bytes each (last: the other buffers keep the addresses they had before there were checks).
    const [u, table, ...scratch] = carve(this.h, [16 * kPanels * 4 * C * 4, (TH * TW + 4) * 4, ...Array.from({ length: parts }, () => own).flat(), 16 * (1 + parts)]);
    const seen = scratch.pop()!;
    // Cleared in wasm: a TypedArray fill over a shared memory is slow (writeU).
    this.h.exports.zero_bytes(seen, 16 * (1 + parts));
    this.writeU(p, u, kPanels, seen);
    const maxW = largest(this.h.f32(), seen >>> 2, 4);
    // Nothing is run for weights that cannot pass (whatever the input).
    if (!finite(C, 0, maxW)) return false;
    this.writeTable(table, TH, TW, OH, OW);
    const [imageIn, imageOut] = [C * p.H * p.W * 4, K * OH * OW * 4];
    // Every number the recorded calls depend on (the rest follow from these): a split that comes
    // back over the same buffers runs its kept recording (WasmConv.split).
    const key = parts > 1 ? this.conv.keyOf(l, 'winograd', [parts, units, rowsPerBlock, p.n, p.src, C, p.H, p.W, p.ph, p.pw, p.out, K, OH, OW, u, table, seen, ...scratch]) : undefined;
    this.conv.split(parts, units, (calls, u0, u1, t) => {
      const [padded, v, m] = scratch.slice(3 * t, 3 * t + 3);
      // The border stays zero for every image of the part.
      calls.run('zero_bytes', padded, paddedFloats * 4);
      let filled = -1;
      for (let unit = u0; unit < u1; unit++) {
        const n = Math.floor(unit / blocks);
        const b = unit % blocks;
        if (n !== filled) {
          calls.run('conv_copy_rows', p.src + n * imageIn, p.H * p.W * 4, p.W * 4, 4, padded + (p.ph * Wp + p.pw) * 4, Hp * Wp * 4, Wp * 4, 4, C, p.H, p.W);
          filled = n;
        }
        const ty0 = b * rowsPerBlock;
        const rows = Math.min(rowsPerBlock, TH - ty0);
        calls.run('wino_input', padded + 2 * ty0 * Wp * 4, Wp * 4, Hp * Wp * 4, C, rows, TW, v, ldv * 4, vXi, seen + 16 * (1 + t));
        calls.run('wino_product', u, v, C, kPanels, Math.ceil((rows * TW) / 8), ldv * 4, vXi, K, rows * TW, table + ty0 * TW * 4, p.out + n * imageOut, OH * OW * 4, OW * 4, m);
      }
    }, key);
    return finite(C, largest(this.h.f32(), (seen >>> 2) + 4, 4 * parts), maxW);
  }

  /** U = G g G^T for every (out, in) pair (wino_weights), as [kPanel][xi][in][4 outs] (zeros past K). */
  private writeU(p: Problem, at: number, kPanels: number, seen: number): void {
    // Cleared in wasm: a TypedArray fill over a shared memory is slow (module.ts zero_bytes).
    this.h.exports.zero_bytes(at, 16 * kPanels * 4 * p.cin * 4);
    this.h.exports.wino_weights(p.weight, p.cout, p.cin, p.oStride, p.iStride, p.flip ? 1 : 0, at, seen);
  }

  /** Each tile's byte offset in an output channel, with NO_RIGHT / NO_BOTTOM where the output ends inside it. */
  private writeTable(at: number, TH: number, TW: number, OH: number, OW: number): void {
    const e = this.h.i32();
    const base = at >>> 2;
    for (let ty = 0; ty < TH; ty++)
      for (let tx = 0; tx < TW; tx++) {
        const flags = (2 * tx + 1 >= OW ? NO_RIGHT : 0) | (2 * ty + 1 >= OH ? NO_BOTTOM : 0);
        e[base + ty * TW + tx] = ((2 * ty * OW + 2 * tx) * 4) | flags;
      }
  }
}
