/**
 * The Backend contract: everything an op front-end (src/tensor) may ask of a device.
 *
 * Rules that every implementation keeps:
 * - Storage is opaque outside its backend. Every tensor's data is contiguous, row-major, starting
 *   at the start of its storage; non-contiguous views (transpose, slice, expand) are made
 *   contiguous by `stridedCopy`, so kernels never see strides except where a layout says so.
 * - Kernels never allocate their outputs: the caller passes `out`, already allocated with the
 *   right number of elements and dtype. Every kernel writes every element of `out`.
 * - Kernels are fire-and-forget: on WebGPU they are encoded into the open command encoder and
 *   nothing waits. Only `read` waits, and it is async.
 * - `dtype` lives in the Storage; a kernel reads it from there. A backend that does not support a
 *   dtype says so in `alloc`/`upload` with an error naming the dtype and the backend.
 * - Errors that only the data can reveal (a label out of range on the GPU) cannot throw
 *   synchronously on an asynchronous device: those kernels write NaN, and the front-end checks
 *   the host copy where it has one.
 */
import type { DType, TypedArray } from '../tensor/dtype.js';
import type { BinaryOp, UnaryOp } from './optable.js';

export type BackendName = 'cpu' | 'wasm' | 'webgpu';

/** A backend's handle to device memory. Only `numel` and `dtype` are public. */
export interface Storage {
  readonly numel: number;
  readonly dtype: DType;
}

export interface BackendInfo {
  name: BackendName;
  /** Human-readable adapter or engine description, e.g. "SwiftShader Device (Subzero) via Vulkan". */
  adapter: string;
  /** Extra facts: vendor, architecture, limits, thread count. */
  details?: Record<string, unknown>;
}

export interface MemoryInfo {
  liveBuffers: number;
  liveBytes: number;
  /** Buffers held by the pool for reuse (not counted in live). */
  pooledBuffers?: number;
  pooledBytes?: number;
}

/** Elementwise binary op over broadcast operands: out[idx] = op(a[idx . aStrides], b[idx . bStrides]). */
export interface BroadcastLayout {
  shape: readonly number[];
  aStrides: readonly number[];
  bStrides: readonly number[];
}

export interface WhereLayout {
  shape: readonly number[];
  condStrides: readonly number[];
  aStrides: readonly number[];
  bStrides: readonly number[];
}

/**
 * Copies `shape` elements: dst[dstOffset + idx . dstStrides] = src[srcOffset + idx . srcStrides].
 * Serves transpose, permute, slice, expand, concat, pad and their backwards.
 */
export interface StridedCopyLayout {
  shape: readonly number[];
  srcStrides: readonly number[];
  srcOffset: number;
  dstStrides: readonly number[];
  dstOffset: number;
}

/** A tensor seen as [outer, size, inner], reduced over the middle dim into [outer, inner]. */
export interface ReduceLayout {
  outer: number;
  size: number;
  inner: number;
}

/** prod multiplies in the accumulation type (float64 on cpu, rounded once on store), as sum does. */
export type ReduceOp = 'sum' | 'max' | 'min' | 'prod';
export type ArgReduceOp = 'argmax' | 'argmin';

/**
 * out[b] = op(A[b]) @ op(B[b]) with A[b] of shape [m, k] ([k, m] stored when transA) and B[b] of
 * shape [k, n] ([n, k] stored when transB). Batch strides are in elements; 0 broadcasts one matrix
 * over the batch. out is [batch, m, n] contiguous.
 */
export interface MatmulLayout {
  batch: number;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  aBatchStride: number;
  bBatchStride: number;
}

/** Geometry of a 2-D window op over NCHW input (conv, im2col, pooling). */
export interface Window2d {
  n: number;
  c: number;
  h: number;
  w: number;
  kh: number;
  kw: number;
  oh: number;
  ow: number;
  sh: number;
  sw: number;
  ph: number;
  pw: number;
  dh: number;
  dw: number;
}

/**
 * A grouped 2-D convolution (cross-correlation, as PyTorch): input [n, c, h, w], weight
 * [outChannels, c/groups, kh, kw], output [n, outChannels, oh, ow]; the window fields as Window2d,
 * with oh and ow as the window formula gives them: floor((h + 2ph - dh*(kh-1) - 1) / sh) + 1.
 */
export interface Conv2dLayout extends Window2d {
  outChannels: number;
  groups: number;
}

/**
 * Average pooling: a window geometry (dh and dw are ignored: average pooling has no dilation)
 * plus PyTorch's divisor rules. A window is the
 * kh x kw block at (oy*sh - ph, ox*sw - pw), cut at the far edge of the padded input (which ceil
 * mode can overhang); the sum covers its cells inside the input.
 */
export interface AvgPool2dLayout extends Window2d {
  /** Divide by the cut window's cells, padding included (count_include_pad), or only those inside the input. */
  countIncludePad: boolean;
  /** When nonzero, every window divides by this instead (divisor_override). */
  divisorOverride: number;
}

/** Index-based selection along the middle dim of [outer, xDim, inner]. */
export interface GatherLayout {
  outer: number;
  inner: number;
  /** Size of the indexed dim in x (gather) or in out (scatterAdd). */
  xDim: number;
  /** Number of indices per (outer, inner) position. */
  idxDim: number;
  /**
   * true: idx is [outer, idxDim, inner] (torch.gather); false: idx is [idxDim], shared by every
   * position (torch.index_select).
   */
  perPosition: boolean;
}

/** A sort along the middle dim of [outer, size, inner]; descending puts NaN first, as torch does. */
export interface SortLayout extends ReduceLayout {
  descending: boolean;
}

export type RandomDist =
  | { kind: 'uniform'; low: number; high: number }
  | { kind: 'normal'; mean: number; std: number }
  | { kind: 'int'; low: number; high: number }
  /** 1 with probability 1 - p, else 0 (dropout's keep mask), in the dtype of out. */
  | { kind: 'bernoulliKeep'; p: number };

export interface SoftmaxLayout {
  rows: number;
  cols: number;
  log: boolean;
}

export interface CrossEntropyLayout {
  rows: number;
  cols: number;
  labelSmoothing: number;
  /** A row whose label equals this gives loss 0 and gradient 0 (PyTorch's ignore_index; it may be a class in [0, cols)). */
  ignoreIndex: number;
}

export interface Backend {
  readonly name: BackendName;
  info(): BackendInfo;
  supportsDtype(d: DType): boolean;

  // ---- memory ----
  /** Zero-filled storage. */
  alloc(numel: number, dtype: DType): Storage;
  /**
   * Storage whose contents are unspecified (a pooled buffer keeps its old values): only for an
   * output that the very next kernel writes in full, to skip alloc's zero fill. Optional;
   * Tensor.uninit falls back to alloc.
   */
  allocUninit?(numel: number, dtype: DType): Storage;
  upload(data: TypedArray, dtype: DType): Storage;
  /**
   * A storage sharing memory with `base`, `numel` elements starting at element `offset`. On WebGPU
   * the byte offset must be a multiple of 256 (the flat parameter arena keeps that). A view owns
   * nothing: releasing it is a no-op and it must not outlive its base.
   */
  view(base: Storage, offset: number, numel: number): Storage;
  /** Overwrites the whole storage from host data of the same length. */
  write(dst: Storage, data: TypedArray): void;
  read(s: Storage): Promise<TypedArray>;
  /** Synchronous read: only backends whose memory is on the host (cpu, wasm) have it. */
  readSync?(s: Storage): TypedArray;
  release(s: Storage): void;
  /** Submits pending work (no-op where work runs immediately). */
  flush(): void;
  /** Waits until all submitted work has finished. */
  sync(): Promise<void>;
  memory(): MemoryInfo;
  /** Returns pooled (free) device memory to the system; live buffers are untouched. */
  trim?(): void;
  /** Releases the device and every buffer; the backend is unusable afterwards. */
  destroy?(): void;

  // ---- kernels ----
  fill(out: Storage, value: number): void;
  /** Converts x's dtype into out's dtype (floats truncate toward zero into int32; bool is x != 0). */
  cast(x: Storage, out: Storage): void;
  /** out = op(x; p0, p1). x and out have the same numel; out's dtype may differ only for int -> float ops. */
  unary(op: UnaryOp, x: Storage, out: Storage, p0?: number, p1?: number): void;
  binary(op: BinaryOp, a: Storage, b: Storage, out: Storage, layout: BroadcastLayout): void;
  where(cond: Storage, a: Storage, b: Storage, out: Storage, layout: WhereLayout): void;
  /** In place: dst += alpha * src (same numel). Gradient accumulation and simple updates. */
  axpy(dst: Storage, src: Storage, alpha: number): void;
  stridedCopy(src: Storage, dst: Storage, layout: StridedCopyLayout): void;
  reduce(op: ReduceOp, x: Storage, out: Storage, layout: ReduceLayout): void;
  /** out (int32) holds the index of the first extreme along the middle dim. */
  argReduce(op: ArgReduceOp, x: Storage, out: Storage, layout: ReduceLayout): void;
  /** Softmax (or log-softmax) of each row of a [rows, cols] matrix. */
  softmax(x: Storage, out: Storage, layout: SoftmaxLayout): void;
  /**
   * Per-row loss of softmax cross-entropy with label smoothing s:
   * (1-s)(-log p[y]) + (s/C) sum_k(-log p[k]). labels are int32; a row labelled ignoreIndex gives 0
   * (whatever its logits), any other label outside [0, cols) gives NaN.
   */
  crossEntropy(logits: Storage, labels: Storage, out: Storage, layout: CrossEntropyLayout): void;
  /** d(loss_r)/d(logits) * gradRows[r] = (softmax - target) * gradRows[r], target smoothed; a row labelled ignoreIndex is 0. */
  crossEntropyBackward(logits: Storage, labels: Storage, gradRows: Storage, out: Storage, layout: CrossEntropyLayout): void;
  matmul(a: Storage, b: Storage, out: Storage, layout: MatmulLayout): void;
  /** x [n, c, h, w] -> cols [n, c*kh*kw, oh*ow] (zero where the window is in the padding). */
  im2col(x: Storage, cols: Storage, g: Window2d): void;
  /** The adjoint of im2col: sums cols [n, c*kh*kw, oh*ow] back into out [n, c, h, w]. */
  col2im(cols: Storage, out: Storage, g: Window2d): void;
  /** out [n, outChannels, oh, ow] = conv2d(x [n, c, h, w], weight [outChannels, c/groups, kh, kw]), no bias. */
  conv2d(x: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void;
  /** The gradient of conv2d with respect to its input: out [n, c, h, w] from grad [n, outChannels, oh, ow]. */
  conv2dBackwardInput(grad: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void;
  /** The gradient of conv2d with respect to its weight, summed over the batch: out [outChannels, c/groups, kh, kw]. */
  conv2dBackwardWeight(x: Storage, grad: Storage, out: Storage, l: Conv2dLayout): void;
  /**
   * Max pooling into out [n, c, oh, ow]; `argOut` (int32, may be null) receives the flat index
   * (y*w + x) within the input plane of each maximum. Padding never wins.
   */
  maxPool2d(x: Storage, out: Storage, argOut: Storage | null, g: Window2d): void;
  /** The gradient of maxPool2d: out [n, c, h, w] = sum of grad over the windows whose argmax is that pixel. */
  maxPool2dBackward(grad: Storage, arg: Storage, out: Storage, g: Window2d): void;
  /** Average pooling into out [n, c, oh, ow], each window divided as `g` says. */
  avgPool2d(x: Storage, out: Storage, g: AvgPool2dLayout): void;
  /** Its gradient: out [n, c, h, w] = sum over the windows covering a pixel of grad / that window's divisor. */
  avgPool2dBackward(grad: Storage, out: Storage, g: AvgPool2dLayout): void;
  /** out[o, j, i] = x[o, idx[o, j, i] (or idx[j]), i]; an index outside [0, xDim) gives NaN (0 for int data). */
  gather(x: Storage, idx: Storage, out: Storage, layout: GatherLayout): void;
  /** The adjoint of gather: out [outer, xDim, inner] = sum of src over the positions whose index hits it. */
  scatterAdd(src: Storage, idx: Storage, out: Storage, layout: GatherLayout): void;
  /**
   * Inclusive prefix sum along the middle dim of [outer, size, inner]: out[o, j, i] = sum of
   * x[o, 0..j, i], accumulated in order (float64 on cpu, rounded once on store, as torch's CPU cumsum).
   */
  cumsum(x: Storage, out: Storage, layout: ReduceLayout): void;
  /**
   * out (int32, the shape of x) holds, for each (outer, inner) column of [outer, size, inner], the
   * positions j that put the column in order: a stable sort (equal values keep their order, so the
   * lowest index comes first) where NaN counts as larger than every number (torch.sort, stable=True).
   */
  argsort(x: Storage, out: Storage, layout: SortLayout): void;
  /** Fills out from the counter-based generator (src/kernels/rng.ts) with key (key0, key1). */
  random(out: Storage, key0: number, key1: number, dist: RandomDist): void;
}
