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
import type { FusedMapKernels } from './fusedmap.js';
import type { DType, TypedArray } from '../tensor/dtype.js';
import type { BinaryOp, UnaryOp } from './optable.js';

export type BackendName = 'cpu' | 'wasm' | 'webgpu';

/** A backend's handle to device memory. Only `numel` and `dtype` are public. */
export interface Storage {
  readonly numel: number;
  readonly dtype: DType;
}

/**
 * Records the device commands that a stretch of kernel calls encodes and encodes them again later
 * (WebGPU), for captured steps (src/compile/plan.ts): a replay then skips each call's host work
 * (shader text, pipeline lookup, bind groups, uniform data) and the step submits once.
 */
export interface CommandReplay {
  /** Starts recording the commands of the calls that follow; false when it cannot now (the calls just run). */
  begin(): boolean;
  /** Ends the recording: an opaque handle, or null when the recording missed commands. */
  end(): object | null;
  /** Encodes a recording again; false when it is stale (a buffer it binds was released): run and record the calls again. */
  replay(recording: object): boolean;
  /** Gives back what a recording holds. */
  release(recording: object): void;
  /** While on, work is submitted once, when it is turned off (a replayed step is one submit). */
  holdSubmits(on: boolean): void;
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

/**
 * Layer normalization of each row of a [rows, cols] matrix, as PyTorch's: biased variance, eps
 * inside the square root.
 */
export interface LayerNormLayout {
  rows: number;
  cols: number;
  eps: number;
}

/**
 * A sum over blocks of a flat tensor: out[i] = sum over j < count of x[offset + j * period + i],
 * i < width, j increasing, in float64 rounded once at the end. A reduce over the middle dim of
 * [1, count, width] is { offset: 0, period: width }; a strided copy of a slice then reduced (a
 * ViT's class-token gradient, token 0 of every image) has the slice's offset and row stride.
 */
export interface BlockSum {
  offset: number;
  period: number;
  width: number;
  count: number;
}

/**
 * layerNormBackwardFused's layout: layerNorm's, plus the operand order of the residual add and
 * the column sums (see Backend.layerNormBackwardFused).
 */
export interface LayerNormBackwardFusedLayout extends LayerNormLayout {
  /** dx = add + dx (true) or dx + add (false): the operand order of the binary add it replaces. */
  addFirst: boolean;
  sums: readonly BlockSum[];
}

/** Where one of attention's operands lies: element offset of row 0's first element, and the row stride. */
export interface AttentionOperand {
  offset: number;
  row: number;
}

/**
 * Scaled dot-product attention with the heads side by side along the feature dim, as a packed
 * input projection leaves them: head h of row i of batch b of q is the d elements at
 * q.offset + (b * l + i) * q.row + h * d (k and v likewise with s rows). q, k and v may be views
 * of one storage (a packed [n, l, 3 * heads * d] projection).
 */
export interface AttentionLayout {
  n: number;
  heads: number;
  l: number;
  s: number;
  d: number;
  scale: number;
  q: AttentionOperand;
  k: AttentionOperand;
  v: AttentionOperand;
}

/**
 * Batch normalization of x [n, c, hw] (NCHW with hw = H*W, or [N, C, L]) per channel c over its
 * n * hw values, as PyTorch's: biased variance, eps inside the square root.
 */
export interface BatchNormLayout {
  n: number;
  c: number;
  hw: number;
  eps: number;
}

/** The running statistics update of training-mode batch norm (batchNormRunning): c channels and its three factors. */
export interface BatchNormRunningLayout {
  c: number;
  /** 1 - momentum: what the running mean and variance keep. */
  keep: number;
  /** momentum: the share of the batch mean. */
  take: number;
  /** momentum * m / (m - 1): the share of the biased batch variance, made unbiased (m values per channel). */
  takeVar: number;
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
  /** Optional (WebGPU): recorded command streams for captured steps (see CommandReplay). */
  readonly commandReplay?: CommandReplay;
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
  /**
   * Per row r of x [rows, cols]: its mean, rstd[r] = 1 / sqrt(var + eps) (biased variance), and
   * out = (x - mean) * rstd * weight + bias, with weight and bias [cols] (either may be null: 1 and
   * 0). A row holding NaN or an infinity is NaN throughout out (its variance is NaN), as PyTorch.
   * `mean` [rows, 2] holds each mean as an unevaluated sum hi + lo: hi the mean rounded to the
   * dtype, lo the rest rounded (0 in float64), so that the backward pass's (x - hi) - lo keeps the
   * low bits of the deviations of a row far from 0 (all near 1000, say), which x - hi would lose
   * to hi's rounding. cols > 0.
   */
  layerNorm(x: Storage, weight: Storage | null, bias: Storage | null, out: Storage, mean: Storage, rstd: Storage, layout: LayerNormLayout): void;
  /**
   * Optional (cpu, wasm; without it the front-end composes matmuls and softmax): per batch b and
   * head h, probs[b, h] = softmax(scale * Q K^T) ([l, s], rows of [n, heads, l, s]) and
   * out[b, :, h*d:(h+1)*d] = probs[b, h] V, out contiguous [n, l, heads * d]. l, s, d > 0.
   */
  attention?(q: Storage, k: Storage, v: Storage, out: Storage, probs: Storage, layout: AttentionLayout): void;
  /**
   * Optional (cpu, wasm): the generated elementwise kernels that a captured step's fusion pass
   * (src/compile/fuse.ts) puts in place of a chain of calls. A method of the backend so that
   * capturing never imports another backend's code; WebGPU's generator lives in fuse.ts itself,
   * loaded with compile, so that browser programs that never capture do not ship it.
   */
  fusedMap?(): FusedMapKernels;
  /**
   * Its gradient from the upstream grad [n, l, heads * d] and the saved probs P: with
   * dP = dO V^T and dS = P * (dP - rowsum(dP * P)), dq = scale * dS K, dk = scale * dS^T Q,
   * dv = P^T dO, each written (every element of its head slices) with the layout of its input
   * (offset and row stride): dq, dk and dv may be views of one storage, as q, k and v.
   */
  attentionBackward?(grad: Storage, q: Storage, k: Storage, v: Storage, probs: Storage, dq: Storage, dk: Storage, dv: Storage, layout: AttentionLayout): void;
  /**
   * The gradient of layerNorm from its saved mean (the pairs above) and rstd, with
   * xhat = ((x - hi) - lo) * rstd and
   * gw = grad * weight (grad where weight is null), per row:
   *   dx = rstd * (gw - mean_j(gw) - xhat * mean_j(gw * xhat)),
   * and over all rows dweight = sum_r grad * xhat, dbias = sum_r grad (0 when rows = 0). Any of
   * dx, dweight and dbias may be null: not wanted. cols > 0.
   */
  layerNormBackward(
    grad: Storage,
    x: Storage,
    mean: Storage,
    rstd: Storage,
    weight: Storage | null,
    dx: Storage | null,
    dweight: Storage | null,
    dbias: Storage | null,
    layout: LayerNormLayout,
  ): void;
  /**
   * Optional (cpu, wasm): layerNormBackward with the calls after it that a captured step folds
   * in (src/compile/fuse-reduce.ts), each giving the bits of the call it replaces. float32 only.
   * - add (may be null): dx is written as the float32 sum of add and the gradient (binary add's
   *   operands in the order layout.addFirst says); add is [rows, cols] and apart from the others.
   * - sums[k], of layout.sums[k].width elements: block sums of dx as written (BlockSum), the
   *   order of the reduce kernel's sum over a middle dim. offset, period and width are multiples
   *   of cols (whole rows), width <= period, width > 1, and the blocks lie inside dx.
   * dx is required (the sums read it); dweight and dbias may be null as in layerNormBackward.
   */
  /**
   * Optional (cpu, wasm): crossEntropy, and in `total` (one element) the sum of its per-row
   * losses as reduce sums them over one row ({ outer: 1, size: rows, inner: 1 }). float32 logits.
   */
  crossEntropyWithSum?(logits: Storage, labels: Storage, out: Storage, total: Storage, layout: CrossEntropyLayout): void;
  /**
   * Optional (cpu, wasm): crossEntropyBackward, and in `sums` (cols elements) the column sums of
   * out as reduce sums them ({ outer: 1, size: rows, inner: cols }): the bias gradient of the
   * linear layer that made the logits. float32 logits; cols > 1 (one column's sum takes the
   * reduce kernel's other path).
   */
  crossEntropyBackwardWithSums?(logits: Storage, labels: Storage, gradRows: Storage, out: Storage, sums: Storage, layout: CrossEntropyLayout): void;
  /**
   * Optional (cpu, wasm): attentionBackward whose dq, dk and dv are one storage x (the gradient
   * of a packed [n * l, width] projection: each operand's row stride is width and its offset +
   * heads * d <= width; l = s), and in `sums` (width elements) the column sums of x after it, as
   * reduce sums them ({ outer: 1, size: n * l, inner: width }, width > 1): the projection's bias
   * gradient. float32.
   */
  attentionBackwardWithSums?(grad: Storage, q: Storage, k: Storage, v: Storage, probs: Storage, x: Storage, sums: Storage, layout: AttentionLayout): void;
  layerNormBackwardFused?(
    grad: Storage,
    x: Storage,
    mean: Storage,
    rstd: Storage,
    weight: Storage | null,
    add: Storage | null,
    dx: Storage,
    dweight: Storage | null,
    dbias: Storage | null,
    sums: readonly Storage[],
    layout: LayerNormBackwardFusedLayout,
  ): void;
  /**
   * Training-mode batch norm: per channel c of x [n, c, hw] its mean over the n * hw values (as
   * the pair hi + lo of layerNorm's contract, `mean` [c, 2]), `variance` [c] (biased, about that
   * mean: two passes, not E[x^2] - mean^2) for the running statistics, rstd[c] =
   * 1 / sqrt(variance + eps), and out = ((x - hi) - lo) * (rstd * weight) + bias, with weight and
   * bias [c] (either may be null: 1 and 0). A channel holding NaN or an infinity is NaN throughout.
   * n * hw > 0.
   */
  batchNorm(x: Storage, weight: Storage | null, bias: Storage | null, out: Storage, mean: Storage, variance: Storage, rstd: Storage, layout: BatchNormLayout): void;
  /**
   * Eval-mode batch norm with given statistics, one affine pass:
   * out = (x - runningMean) * (weight / sqrt(runningVar + eps)) + bias per channel.
   */
  batchNormEval(x: Storage, runningMean: Storage, runningVar: Storage, weight: Storage | null, bias: Storage | null, out: Storage, layout: BatchNormLayout): void;
  /**
   * The running statistics after one training batch norm, in one call for both, exactly as the
   * unfused ops computed them (the state PyTorch users compare): outMean = runningMean * keep +
   * hi * take and outVar = runningVar * keep + variance * takeVar, each product as the affine
   * unary kernel computes it (x * p + 0: p as that kernel takes it, its rounding, +0 for -0),
   * then the binary add; hi is the first of each channel's mean pair (batchNorm's `mean`, [c, 2]).
   * With a batch count (num_batches_tracked, one int32), outCount = count + 1 as well.
   */
  batchNormRunning(
    runningMean: Storage,
    runningVar: Storage,
    meanPairs: Storage,
    variance: Storage,
    count: Storage | null,
    outMean: Storage,
    outVar: Storage,
    outCount: Storage | null,
    layout: BatchNormRunningLayout,
  ): void;
  /**
   * The gradient of batchNorm from its saved mean pairs and rstd: with xhat = ((x - hi) - lo) * rstd,
   * per channel over its n * hw values (m of them)
   *   dx = weight * rstd * (grad - sum(grad) / m - xhat * sum(grad * xhat) / m),
   *   dweight = sum(grad * xhat), dbias = sum(grad)
   * (weight null: 1). Any of dx, dweight and dbias may be null: not wanted. n * hw > 0.
   */
  batchNormBackward(
    grad: Storage,
    x: Storage,
    mean: Storage,
    rstd: Storage,
    weight: Storage | null,
    dx: Storage | null,
    dweight: Storage | null,
    dbias: Storage | null,
    layout: BatchNormLayout,
  ): void;
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
