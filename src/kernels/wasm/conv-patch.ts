/**
 * Convolutions whose windows tile the input (stride == kernel, no padding, dilation 1, one group,
 * and the image a whole number of windows: a ViT's patch embedding) on the wasm backend, as
 * gemms over the patch matrix P[(n, oy, ox), (c, ki, kj)] = x[n, c, oy*kh + ki, ox*kw + kj].
 * Each input pixel is in exactly one window, so P is a permutation of x, made (and undone) by
 * one strided copy (copy.ts), and every product is one gemm over the windows of all images at
 * once, the matmul's (module.ts), which takes any strides for its operands (the transposes below
 * are only strides); the gradient and output go through a transposing copy where the gemm wants
 * the windows of all images along one stride:
 * - forward:         Y^T [(n, l), co] = P @ W^T, then [n, l, co] -> out [n, co, l]
 * - input gradient:  dP [(n, l), K]   = dY^T @ W (dY^T: dY [n, co, l] -> [n, l, co]), then dX = unpatchify(dP)
 * - weight gradient: dW [co, K]       = dY' @ P (dY': dY -> [co, n, l]; depth n*l)
 * One gemm over all images ran the ViT's 7x7 forward and input gradient 1.08x faster than a
 * batched gemm per image straight into the output (bench/conv-patch.bench.ts, interleaved), whose
 * 32 x 16 products per image are mostly packing.
 * The convolution kernels of conv.ts read the input through a padded buffer and a table of tap
 * offsets, which suits overlapping 3x3 windows; a 7x7 stride-7 patch embedding has 49 taps, each
 * read once, and ran there at a few GFLOP/s (usePatchConv: where each form is faster).
 *
 * Threads: the gemm splits as matmul's does (splitGemm, along the longer of its rows and columns);
 * every element is computed by the same micro-kernel in the same order on any split, so the result
 * does not depend on the thread count. The copies run on this thread.
 */
import type { Conv2dLayout } from '../backend.js';
import { copyDescriptorBytes, planStridedCopy, stridedCopyArgs, stridedCopyExport, writeCopyDescriptor, type StridedCopyPlan } from './copy.js';
import type { GemmJob } from './index.js';
import type { KernelExports } from './module.js';

/** What the patch convolutions need of the backend. */
export interface PatchConvHost {
  exports: KernelExports;
  /** Scratch bytes for one call (the backend's one reused region: take it once per call). */
  scratch(bytes: number): number;
  /** The heap as i32 (fresh after scratch, which may grow memory). */
  i32(): Int32Array;
  /** The gemm export over as many threads as its size pays for. */
  gemm(job: GemmJob): void;
}

/** Whether the windows of `l` tile its input exactly: the layouts the patch form takes. */
export function isPatchConv(l: Conv2dLayout): boolean {
  return (
    l.groups === 1 &&
    l.sh === l.kh &&
    l.sw === l.kw &&
    l.ph === 0 &&
    l.pw === 0 &&
    l.dh === 1 &&
    l.dw === 1 &&
    l.h === l.oh * l.kh &&
    l.w === l.ow * l.kw &&
    l.n * l.c * l.h * l.w * l.outChannels > 0
  );
}

/** The three convolution kernels, as usePatchConv tells them apart. */
export type ConvKernel = 'forward' | 'backwardInput' | 'backwardWeight';

/**
 * The fewest taps (kh * kw) for which the patch form runs a kernel in place of conv.ts's, from
 * bench/conv-patch.bench.ts (one thread, interleaved, CPU time; conv.ts time / patch time, over
 * 1-8 input channels and two runs): at 4x4, 7x7 and 16x16 windows every kernel of every shape
 * measured ran faster as patches (forward 1.02-2.2x, input gradient 1.9-7.5x, weight gradient
 * 1.07-2.4x; the ViT's 7x7 patch embedding 2.2x, 7.5x and 2.4x). Below, the gather copies runs of
 * 2 or 3 floats and the weight gradient's gemm is 4 or 9 columns wide: at 3x3 the weight gradient
 * ran 0.71-0.73x and the forward 0.84-1.43x, at 2x2 the weight gradient 0.43-0.54x and the forward
 * 0.51-1.2x; the input gradient, which conv.ts runs as a full convolution, still gained at 3x3
 * (1.4-2.4x) but was mixed at 2x2 (0.71-1.7x).
 */
const PATCH_MIN_TAPS: Record<ConvKernel, number> = { forward: 16, backwardInput: 9, backwardWeight: 16 };

/** Whether the patch form runs this kernel of this convolution instead of conv.ts's (WasmBackend.patchConvs 'auto'). */
export function usePatchConv(l: Conv2dLayout, kernel: ConvKernel): boolean {
  return isPatchConv(l) && l.kh * l.kw >= PATCH_MIN_TAPS[kernel];
}

/** Taps per window K, windows per image L, rows of P (every image's windows) NL, output channels co. */
function sizes(l: Conv2dLayout): { K: number; L: number; NL: number; co: number } {
  const L = l.oh * l.ow;
  return { K: l.c * l.kh * l.kw, L, NL: l.n * L, co: l.outChannels };
}

/** The element shape and x strides of the patch gather, and the contiguous strides of P. */
function patchLayout(l: Conv2dLayout): { shape: number[]; xStrides: number[]; pStrides: number[] } {
  const { K, L } = sizes(l);
  return {
    shape: [l.n, l.oh, l.ow, l.c, l.kh, l.kw],
    xStrides: [l.c * l.h * l.w, l.kh * l.w, l.kw, l.h * l.w, l.w, 1],
    pStrides: [L * K, l.ow * K, K, l.kh * l.kw, l.kw, 1],
  };
}

export class PatchConv {
  constructor(private readonly host: PatchConvHost) {}

  /** out [n, co, oh, ow] = conv2d(x, weight): Y^T [(n, l), co] = P @ W^T, then each image transposed into place. */
  forward(x: number, weight: number, out: number, l: Conv2dLayout): void {
    const { K, L, NL, co } = sizes(l);
    const outPlan = planStridedCopy([l.n, L, co], [L * co, co, 1], [co * L, 1, L], 4);
    const { p, end } = this.patchify(x, l, NL * co * 4 + copyDescriptorBytes(outPlan));
    this.gemm([p, K * 4, 4], [weight, 4, K * 4], [end, co * 4], NL, co, K);
    this.copy(end, out, outPlan, end + NL * co * 4);
  }

  /** dX [n, c, h, w] from dY [n, co, oh, ow]: dP = dY^T @ W (dY^T: each image transposed), then scattered back to its pixels. */
  backwardInput(grad: number, weight: number, out: number, l: Conv2dLayout): void {
    const { K, L, NL, co } = sizes(l);
    const { shape, xStrides, pStrides } = patchLayout(l);
    const plan = planStridedCopy(shape, pStrides, xStrides, 4);
    // dY [n, co, l] -> dY^T [n, l, co].
    const gradPlan = planStridedCopy([l.n, co, L], [co * L, L, 1], [L * co, 1, co], 4);
    const dp = this.host.scratch((NL * K + NL * co) * 4 + copyDescriptorBytes(gradPlan) + copyDescriptorBytes(plan));
    const gradT = dp + NL * K * 4;
    const desc = gradT + NL * co * 4;
    this.copy(grad, gradT, gradPlan, desc);
    this.gemm([gradT, co * 4, 4], [weight, K * 4, 4], [dp, K * 4], NL, K, co);
    this.copy(dp, out, plan, desc + copyDescriptorBytes(gradPlan));
  }

  /** dW [co, c, kh, kw] = dY' @ P over every image and window at once (dY' = dY channel-major). */
  backwardWeight(x: number, grad: number, out: number, l: Conv2dLayout): void {
    const { K, L, NL, co } = sizes(l);
    // dY [n, co, l] -> dY' [co, n, l].
    const gradPlan = planStridedCopy([l.n, co, L], [co * L, L, 1], [L, NL, 1], 4);
    const { p, end } = this.patchify(x, l, NL * co * 4 + copyDescriptorBytes(gradPlan));
    this.copy(grad, end, gradPlan, end + NL * co * 4);
    this.gemm([end, NL * 4, 4], [p, K * 4, 4], [out, K * 4], co, K, NL);
  }

  /**
   * Gathers x into P [n*L, K] at the start of the scratch, which is taken with `extra` bytes
   * after P (from `end`) for the caller; the copy's descriptor lies past those.
   */
  private patchify(x: number, l: Conv2dLayout, extra: number): { p: number; end: number } {
    const { K, NL } = sizes(l);
    const { shape, xStrides, pStrides } = patchLayout(l);
    const plan = planStridedCopy(shape, xStrides, pStrides, 4);
    const bytes = NL * K * 4;
    const p = this.host.scratch(bytes + extra + copyDescriptorBytes(plan));
    this.copy(x, p, plan, p + bytes + extra);
    return { p, end: p + bytes };
  }

  /** C = A @ B, one matrix of each: operands as [pointer, row stride, column stride] in bytes, C as [pointer, row stride]. */
  private gemm([a, aRow, aCol]: number[], [b, bRow, bCol]: number[], [c, ldc]: number[], m: number, n: number, k: number): void {
    this.host.gemm({ a, aRow, aCol, b, bRow, bCol, c, ldc, m, n, k, batch: 1, aBatch: 0, bBatch: 0, cBatch: 0 });
  }

  /** One strided copy of float32s with its descriptor at `desc` (inside this call's scratch). */
  private copy(src: number, dst: number, plan: StridedCopyPlan, desc: number): void {
    writeCopyDescriptor(this.host.i32(), desc, plan, 4);
    this.host.exports[stridedCopyExport(4)](src, dst, ...stridedCopyArgs(plan, 4, desc));
  }
}
