/**
 * The reference backend: plain TypeScript loops over typed arrays. It is the oracle that every
 * other backend is tested against, so clarity wins over speed here; float32 results are computed
 * in float64 and rounded once on store.
 */
import { typedArrayFor, type DType, type TypedArray } from '../../tensor/dtype.js';
import type {
  ArgReduceOp,
  AttentionLayout,
  AvgPool2dLayout,
  Backend,
  BackendInfo,
  BroadcastLayout,
  Conv2dLayout,
  CrossEntropyLayout,
  GatherLayout,
  LayerNormLayout,
  LayerNormBackwardFusedLayout,
  BatchNormLayout,
  BatchNormRunningLayout,
  MatmulLayout,
  MemoryInfo,
  RandomDist,
  ReduceLayout,
  ReduceOp,
  SoftmaxLayout,
  SortLayout,
  Storage,
  StridedCopyLayout,
  WhereLayout,
  Window2d,
} from '../backend.js';
import { BINARY_OPS, UNARY_OPS, type BinaryOp, type BinaryOpDef, type UnaryOp, type UnaryOpDef } from '../optable.js';
import { hashBits, intAt, uniformAt } from '../rng.js';
import { normalAt } from '../normal.js';
import { conv2dBackwardInputReference, conv2dBackwardWeightReference, conv2dReference } from './conv.js';
import { attentionBackwardReference, attentionReference } from './attention.js';
import { cpuFusedMap } from './fusedmap.js';
import { attentionBackwardWithSumsReference, crossEntropyBackwardWithSumsReference, crossEntropyWithSumReference, layerNormBackwardFusedReference } from './rowfused.js';
import type { FusedMapKernels } from '../fusedmap.js';
import { arenaBackends } from '../arena/backends.js';
import { arenaHost } from '../arena/host.js';

// The arena kernels' host passes (their generated reference): the fused optimizer passes run in
// them on this backend. Registered here, not imported by src/optim, so a WebGPU page never fetches them.
arenaBackends.host = arenaHost;

export class CpuStorage implements Storage {
  constructor(
    readonly data: TypedArray,
    readonly dtype: DType,
    readonly isView = false,
  ) {}
  get numel(): number {
    return this.data.length;
  }
}

function d(s: Storage): TypedArray {
  return (s as CpuStorage).data;
}

/** Calls f(outIndex, offsets...) for each element of `shape`, walking several stride sets at once. */
function forEachStrided(shape: readonly number[], strides: (readonly number[])[], f: (i: number, offs: number[]) => void): void {
  const rank = shape.length;
  const n = shape.reduce((a, b) => a * b, 1);
  const idx = new Array<number>(rank).fill(0);
  const offs = strides.map(() => 0);
  for (let i = 0; i < n; i++) {
    f(i, offs);
    for (let ax = rank - 1; ax >= 0; ax--) {
      idx[ax]++;
      for (let s = 0; s < strides.length; s++) offs[s] += strides[s][ax];
      if (idx[ax] < shape[ax]) break;
      for (let s = 0; s < strides.length; s++) offs[s] -= strides[s][ax] * shape[ax];
      idx[ax] = 0;
    }
  }
}

/**
 * Stable log-sum-exp of a row of a [rows, cols] matrix, as softmax, logSoftmax and crossEntropy
 * shift by it: NaN for a row holding NaN or +inf, so that all their results in it are NaN as in
 * PyTorch (logsumexp itself, where +inf wins, is in src/tensor/ops/reduce.ts).
 */
function rowLogSumExp(x: TypedArray, base: number, cols: number): number {
  let mx = -Infinity;
  for (let j = 0; j < cols; j++) {
    const v = x[base + j];
    // A NaN anywhere makes the whole row NaN, as in PyTorch (a -inf entry would otherwise give 0).
    if (v !== v) return NaN;
    if (v > mx) mx = v;
  }
  if (mx === -Infinity) return -Infinity;
  // A +inf entry: PyTorch's x - max is inf - inf = NaN there, which makes the whole row NaN.
  if (mx === Infinity) return NaN;
  let s = 0;
  for (let j = 0; j < cols; j++) s += Math.exp(x[base + j] - mx);
  return mx + Math.log(s);
}

/** Whether u comes strictly before v in a sort: NaN is larger than every number (torch's order). */
export function sortsBefore(u: number, v: number, descending: boolean): boolean {
  if (descending) return v !== v ? false : u !== u || u > v;
  return u !== u ? false : v !== v || u < v;
}

/**
 * The input cells [y0, y1) x [x0, x1) that average-pooling output (oy, ox) sums, and what it
 * divides by: PyTorch's avg_pool2d rules (the window is cut at the far edge of the padded input,
 * which ceil mode can overhang, before its padded cells are counted).
 */
export function avgPoolWindow(g: AvgPool2dLayout, oy: number, ox: number): { y0: number; y1: number; x0: number; x1: number; divisor: number } {
  const ys = oy * g.sh - g.ph;
  const xs = ox * g.sw - g.pw;
  const ye = Math.min(ys + g.kh, g.h + g.ph);
  const xe = Math.min(xs + g.kw, g.w + g.pw);
  const y0 = Math.max(ys, 0);
  const x0 = Math.max(xs, 0);
  const y1 = Math.min(ye, g.h);
  const x1 = Math.min(xe, g.w);
  const divisor = g.divisorOverride || (g.countIncludePad ? (ye - ys) * (xe - xs) : (y1 - y0) * (x1 - x0));
  return { y0, y1, x0, x1, divisor };
}

/**
 * The index (y*w + x within its plane, which starts at X[plane]) of max-pooling output (oy, ox)'s
 * maximum, or -1 for a window with no cell inside the input. The first maximum wins ties, and the
 * first NaN wins and sticks (as torch's max_pool2d); padding never wins.
 */
export function maxPoolAt(X: ArrayLike<number>, plane: number, g: Window2d, oy: number, ox: number): number {
  let best = -Infinity;
  let arg = -1;
  for (let ki = 0; ki < g.kh; ki++) {
    const y = oy * g.sh - g.ph + ki * g.dh;
    if (y < 0 || y >= g.h) continue;
    for (let kj = 0; kj < g.kw; kj++) {
      const xx = ox * g.sw - g.pw + kj * g.dw;
      if (xx < 0 || xx >= g.w) continue;
      const v = X[plane + y * g.w + xx];
      if (v > best || arg < 0 || v !== v) {
        best = v;
        arg = y * g.w + xx;
        if (v !== v) return arg;
      }
    }
  }
  return arg;
}

/** Average-pooling output (oy, ox) of the plane starting at X[plane]: its window's sum (in float64) over its divisor. */
export function avgPoolAt(X: ArrayLike<number>, plane: number, g: AvgPool2dLayout, oy: number, ox: number): number {
  const { y0, y1, x0, x1, divisor } = avgPoolWindow(g, oy, ox);
  let s = 0;
  for (let y = y0; y < y1; y++) for (let xx = x0; xx < x1; xx++) s += X[plane + y * g.w + xx];
  return s / divisor;
}

export class CpuBackend implements Backend {
  readonly name = 'cpu' as const;
  private live = 0;
  private liveBytes = 0;

  info(): BackendInfo {
    return { name: 'cpu', adapter: 'plain TypeScript reference kernels' };
  }
  supportsDtype(_d: DType): boolean {
    return true;
  }

  alloc(numel: number, dtype: DType): Storage {
    const a = typedArrayFor(dtype, numel);
    this.live++;
    this.liveBytes += a.byteLength;
    return new CpuStorage(a, dtype);
  }
  upload(data: TypedArray, dtype: DType): Storage {
    const s = this.alloc(data.length, dtype);
    d(s).set(data);
    return s;
  }
  view(base: Storage, offset: number, numel: number): Storage {
    if (offset < 0 || offset + numel > base.numel) {
      throw new RangeError(`view: elements [${offset}, ${offset + numel}) are outside a storage of ${base.numel}`);
    }
    return new CpuStorage(d(base).subarray(offset, offset + numel), base.dtype, true);
  }
  write(dst: Storage, data: TypedArray): void {
    if (data.length !== dst.numel) throw new RangeError(`write: ${data.length} values into a storage of ${dst.numel}`);
    d(dst).set(data);
  }
  read(s: Storage): Promise<TypedArray> {
    return Promise.resolve(this.readSync(s));
  }
  readSync(s: Storage): TypedArray {
    return d(s).slice();
  }
  release(s: Storage): void {
    const c = s as CpuStorage;
    if (c.isView) return;
    this.live--;
    this.liveBytes -= c.data.byteLength;
  }
  flush(): void {}
  sync(): Promise<void> {
    return Promise.resolve();
  }
  memory(): MemoryInfo {
    return { liveBuffers: this.live, liveBytes: this.liveBytes };
  }

  fill(out: Storage, value: number): void {
    d(out).fill(out.dtype === 'bool' ? (value ? 1 : 0) : value);
  }
  cast(x: Storage, out: Storage): void {
    const xs = d(x);
    const o = d(out);
    if (out.dtype === 'bool') for (let i = 0; i < xs.length; i++) o[i] = xs[i] !== 0 ? 1 : 0;
    else if (out.dtype === 'int32') for (let i = 0; i < xs.length; i++) o[i] = Math.trunc(xs[i]);
    else o.set(xs);
  }
  unary(op: UnaryOp, x: Storage, out: Storage, p0 = 0, p1 = 0): void {
    const def: UnaryOpDef = UNARY_OPS[op];
    const f = (out.dtype === 'int32' && def.cpuInt) || def.cpu;
    const xs = d(x);
    const o = d(out);
    for (let i = 0; i < xs.length; i++) o[i] = f(xs[i], p0, p1);
  }
  binary(op: BinaryOp, a: Storage, b: Storage, out: Storage, layout: BroadcastLayout): void {
    const def: BinaryOpDef = BINARY_OPS[op];
    // int32 products wrap like int32 (Math.imul); float64 arithmetic would lose their low bits.
    const f = (out.dtype === 'int32' && def.cpuInt) || def.cpu;
    const as = d(a);
    const bs = d(b);
    const o = d(out);
    forEachStrided(layout.shape, [layout.aStrides, layout.bStrides], (i, [ia, ib]) => {
      o[i] = f(as[ia], bs[ib]);
    });
  }
  where(cond: Storage, a: Storage, b: Storage, out: Storage, layout: WhereLayout): void {
    const cs = d(cond);
    const as = d(a);
    const bs = d(b);
    const o = d(out);
    forEachStrided(layout.shape, [layout.condStrides, layout.aStrides, layout.bStrides], (i, [ic, ia, ib]) => {
      o[i] = cs[ic] ? as[ia] : bs[ib];
    });
  }
  axpy(dst: Storage, src: Storage, alpha: number): void {
    const o = d(dst);
    const s = d(src);
    if (o.length !== s.length) throw new RangeError(`axpy: ${s.length} values into ${o.length}`);
    for (let i = 0; i < o.length; i++) o[i] += alpha * s[i];
  }
  stridedCopy(src: Storage, dst: Storage, l: StridedCopyLayout): void {
    const s = d(src);
    const o = d(dst);
    forEachStrided(l.shape, [l.srcStrides, l.dstStrides], (_i, [is, id]) => {
      o[l.dstOffset + id] = s[l.srcOffset + is];
    });
  }
  reduce(op: ReduceOp, x: Storage, out: Storage, { outer, size, inner }: ReduceLayout): void {
    const xs = d(x);
    const o = d(out);
    for (let a = 0; a < outer; a++) {
      for (let c = 0; c < inner; c++) {
        const base = a * size * inner + c;
        let acc = op === 'sum' ? 0 : op === 'prod' ? 1 : op === 'max' ? -Infinity : Infinity;
        for (let j = 0; j < size; j++) {
          const v = xs[base + j * inner];
          if (op === 'sum') acc += v;
          else if (op === 'prod') acc *= v;
          else if (v !== v) acc = NaN;
          else if (op === 'max' ? v > acc : v < acc) acc = v;
          if (acc !== acc && op !== 'sum') break;
        }
        o[a * inner + c] = acc;
      }
    }
  }
  argReduce(op: ArgReduceOp, x: Storage, out: Storage, { outer, size, inner }: ReduceLayout): void {
    const xs = d(x);
    const o = d(out);
    for (let a = 0; a < outer; a++) {
      for (let c = 0; c < inner; c++) {
        const base = a * size * inner + c;
        let best = 0;
        let bv = xs[base];
        for (let j = 1; j < size && bv === bv; j++) {
          const v = xs[base + j * inner];
          if (v !== v || (op === 'argmax' ? v > bv : v < bv)) {
            best = j;
            bv = v;
          }
        }
        o[a * inner + c] = best;
      }
    }
  }
  softmax(x: Storage, out: Storage, { rows, cols, log }: SoftmaxLayout): void {
    const xs = d(x);
    const o = d(out);
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      const lse = rowLogSumExp(xs, base, cols);
      for (let j = 0; j < cols; j++) o[base + j] = log ? xs[base + j] - lse : Math.exp(xs[base + j] - lse);
    }
  }
  crossEntropy(logits: Storage, labels: Storage, out: Storage, { rows, cols, labelSmoothing: s, ignoreIndex }: CrossEntropyLayout): void {
    const x = d(logits);
    const y = d(labels);
    const o = d(out);
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      const label = y[r];
      // Checked first: ignoreIndex may name a real class, and an ignored row's logits are never read.
      if (label === ignoreIndex) {
        o[r] = 0;
        continue;
      }
      if (!(label >= 0 && label < cols)) {
        o[r] = NaN;
        continue;
      }
      const lse = rowLogSumExp(x, base, cols);
      let loss = (1 - s) * (lse - x[base + label]);
      if (s !== 0) {
        let sumNll = 0;
        for (let j = 0; j < cols; j++) sumNll += lse - x[base + j];
        loss += (s / cols) * sumNll;
      }
      o[r] = loss;
    }
  }
  crossEntropyBackward(logits: Storage, labels: Storage, gradRows: Storage, out: Storage, { rows, cols, labelSmoothing: s, ignoreIndex }: CrossEntropyLayout): void {
    const x = d(logits);
    const y = d(labels);
    const g = d(gradRows);
    const o = d(out);
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      const label = y[r];
      if (label === ignoreIndex) {
        o.fill(0, base, base + cols);
        continue;
      }
      const lse = rowLogSumExp(x, base, cols);
      const valid = label >= 0 && label < cols;
      for (let j = 0; j < cols; j++) {
        const target = (j === label ? 1 - s : 0) + s / cols;
        o[base + j] = valid ? (Math.exp(x[base + j] - lse) - target) * g[r] : NaN;
      }
    }
  }
  fusedMap(): FusedMapKernels {
    return (this.fusedMapKernels ??= cpuFusedMap((a, b, out, l) => this.matmul(a, b, out, l)));
  }
  private fusedMapKernels: FusedMapKernels | undefined;
  attention(q: Storage, k: Storage, v: Storage, out: Storage, probs: Storage, layout: AttentionLayout): void {
    attentionReference(d(q), d(k), d(v), d(out), d(probs), layout);
  }
  attentionBackward(grad: Storage, q: Storage, k: Storage, v: Storage, probs: Storage, dq: Storage, dk: Storage, dv: Storage, layout: AttentionLayout): void {
    attentionBackwardReference(d(grad), d(q), d(k), d(v), d(probs), d(dq), d(dk), d(dv), layout);
  }
  layerNorm(x: Storage, weight: Storage | null, bias: Storage | null, out: Storage, mean: Storage, rstd: Storage, { rows, cols, eps }: LayerNormLayout): void {
    const X = d(x);
    const W = weight && d(weight);
    const B = bias && d(bias);
    const O = d(out);
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      let s = 0;
      for (let j = 0; j < cols; j++) s += X[base + j];
      const mu = s / cols;
      // Two passes (the deviations, then their squares) rather than E[x^2] - E[x]^2, which cancels.
      let ss = 0;
      for (let j = 0; j < cols; j++) ss += (X[base + j] - mu) ** 2;
      const rs = 1 / Math.sqrt(ss / cols + eps);
      const M = d(mean);
      // hi as the dtype rounds it (read back), lo the rest.
      M[2 * r] = mu;
      M[2 * r + 1] = mu - M[2 * r];
      d(rstd)[r] = rs;
      for (let j = 0; j < cols; j++) O[base + j] = (X[base + j] - mu) * rs * (W ? W[j] : 1) + (B ? B[j] : 0);
    }
  }
  layerNormBackward(
    grad: Storage,
    x: Storage,
    mean: Storage,
    rstd: Storage,
    weight: Storage | null,
    dx: Storage | null,
    dweight: Storage | null,
    dbias: Storage | null,
    { rows, cols }: LayerNormLayout,
  ): void {
    const G = d(grad);
    const X = d(x);
    const W = weight && d(weight);
    const DX = dx && d(dx);
    const dw = new Float64Array(cols);
    const db = new Float64Array(cols);
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      const [hi, lo] = [d(mean)[2 * r], d(mean)[2 * r + 1]];
      const rs = d(rstd)[r];
      let sumGw = 0;
      let sumGwXhat = 0;
      for (let j = 0; j < cols; j++) {
        const g = G[base + j];
        const xhat = (X[base + j] - hi - lo) * rs;
        const gw = W ? g * W[j] : g;
        sumGw += gw;
        sumGwXhat += gw * xhat;
        dw[j] += g * xhat;
        db[j] += g;
      }
      if (!DX) continue;
      for (let j = 0; j < cols; j++) {
        const xhat = (X[base + j] - hi - lo) * rs;
        const gw = W ? G[base + j] * W[j] : G[base + j];
        DX[base + j] = rs * (gw - sumGw / cols - xhat * (sumGwXhat / cols));
      }
    }
    if (dweight) d(dweight).set(dw);
    if (dbias) d(dbias).set(db);
  }
  crossEntropyWithSum(logits: Storage, labels: Storage, out: Storage, total: Storage, l: CrossEntropyLayout): void {
    crossEntropyWithSumReference((...a) => this.crossEntropy(...a), d, logits, labels, out, total, l);
  }
  crossEntropyBackwardWithSums(logits: Storage, labels: Storage, gradRows: Storage, out: Storage, sums: Storage, l: CrossEntropyLayout): void {
    crossEntropyBackwardWithSumsReference((...a) => this.crossEntropyBackward(...a), d, logits, labels, gradRows, out, sums, l);
  }
  attentionBackwardWithSums(grad: Storage, q: Storage, k: Storage, v: Storage, probs: Storage, x: Storage, sums: Storage, l: AttentionLayout): void {
    attentionBackwardWithSumsReference((...a) => this.attentionBackward(...a), d, grad, q, k, v, probs, x, sums, l);
  }
  layerNormBackwardFused(
    grad: Storage, x: Storage, mean: Storage, rstd: Storage, weight: Storage | null,
    add: Storage | null, dx: Storage, dweight: Storage | null, dbias: Storage | null,
    sums: readonly Storage[], l: LayerNormBackwardFusedLayout,
  ): void {
    layerNormBackwardFusedReference((...a) => this.layerNormBackward(...a), d, grad, x, mean, rstd, weight, add, dx, dweight, dbias, sums, l);
  }
  batchNorm(x: Storage, weight: Storage | null, bias: Storage | null, out: Storage, mean: Storage, variance: Storage, rstd: Storage, l: BatchNormLayout): void {
    const { n, c, hw, eps } = l;
    const X = d(x);
    const M = d(mean);
    const m = n * hw;
    for (let ch = 0; ch < c; ch++) {
      let s = 0;
      for (let i = 0; i < n; i++) for (let j = 0, o = (i * c + ch) * hw; j < hw; j++) s += X[o + j];
      const mu = s / m;
      // Two passes (the deviations, then their squares) rather than E[x^2] - E[x]^2, which cancels.
      let ss = 0;
      for (let i = 0; i < n; i++) for (let j = 0, o = (i * c + ch) * hw; j < hw; j++) ss += (X[o + j] - mu) ** 2;
      // hi as the dtype rounds it (read back), lo the rest.
      M[2 * ch] = mu;
      M[2 * ch + 1] = mu - M[2 * ch];
      d(variance)[ch] = ss / m;
      d(rstd)[ch] = 1 / Math.sqrt(ss / m + eps);
    }
    this.batchNormApply(x, weight, bias, out, l, (ch) => [M[2 * ch], M[2 * ch + 1], d(rstd)[ch]]);
  }
  batchNormEval(x: Storage, runningMean: Storage, runningVar: Storage, weight: Storage | null, bias: Storage | null, out: Storage, l: BatchNormLayout): void {
    const RM = d(runningMean);
    const RV = d(runningVar);
    this.batchNormApply(x, weight, bias, out, l, (ch) => [RM[ch], 0, 1 / Math.sqrt(RV[ch] + l.eps)]);
  }
  batchNormRunning(runningMean: Storage, runningVar: Storage, meanPairs: Storage, variance: Storage, count: Storage | null, outMean: Storage, outVar: Storage, outCount: Storage | null, l: BatchNormRunningLayout): void {
    if (count && outCount) d(outCount)[0] = d(count)[0] + 1;
    const [RM, RV, MP, V, OM, OV] = [runningMean, runningVar, meanPairs, variance, outMean, outVar].map(d);
    // Each product stored in the dtype before the sum, as the affine and add kernels store theirs.
    const t = typedArrayFor(outMean.dtype, 2);
    for (let ch = 0; ch < l.c; ch++) {
      t[0] = l.keep * RM[ch] + 0;
      t[1] = l.take * MP[2 * ch] + 0;
      OM[ch] = t[0] + t[1];
      t[0] = l.keep * RV[ch] + 0;
      t[1] = l.takeVar * V[ch] + 0;
      OV[ch] = t[0] + t[1];
    }
  }
  /** out = ((x - hi) - lo) * (rstd * weight) + bias per channel, with [hi, lo, rstd] = stats(channel). */
  private batchNormApply(x: Storage, weight: Storage | null, bias: Storage | null, out: Storage, { n, c, hw }: BatchNormLayout, stats: (ch: number) => number[]): void {
    const X = d(x);
    const O = d(out);
    const W = weight && d(weight);
    const B = bias && d(bias);
    for (let ch = 0; ch < c; ch++) {
      const [hi, lo, rs] = stats(ch);
      const k = rs * (W ? W[ch] : 1);
      const b = B ? B[ch] : 0;
      for (let i = 0; i < n; i++) for (let j = 0, o = (i * c + ch) * hw; j < hw; j++) O[o + j] = (X[o + j] - hi - lo) * k + b;
    }
  }
  batchNormBackward(
    grad: Storage,
    x: Storage,
    mean: Storage,
    rstd: Storage,
    weight: Storage | null,
    dx: Storage | null,
    dweight: Storage | null,
    dbias: Storage | null,
    { n, c, hw }: BatchNormLayout,
  ): void {
    const G = d(grad);
    const X = d(x);
    const M = d(mean);
    const W = weight && d(weight);
    const DX = dx && d(dx);
    const m = n * hw;
    for (let ch = 0; ch < c; ch++) {
      const [hi, lo, rs] = [M[2 * ch], M[2 * ch + 1], d(rstd)[ch]];
      let sumG = 0;
      let sumGXhat = 0;
      for (let i = 0; i < n; i++) {
        for (let j = 0, o = (i * c + ch) * hw; j < hw; j++) {
          sumG += G[o + j];
          sumGXhat += G[o + j] * (X[o + j] - hi - lo) * rs;
        }
      }
      if (dweight) d(dweight)[ch] = sumGXhat;
      if (dbias) d(dbias)[ch] = sumG;
      if (!DX) continue;
      const k = rs * (W ? W[ch] : 1);
      for (let i = 0; i < n; i++) {
        for (let j = 0, o = (i * c + ch) * hw; j < hw; j++) DX[o + j] = k * (G[o + j] - sumG / m - (X[o + j] - hi - lo) * rs * (sumGXhat / m));
      }
    }
  }
  matmul(a: Storage, b: Storage, out: Storage, l: MatmulLayout): void {
    const A = d(a);
    const B = d(b);
    const O = d(out);
    const { m, n, k } = l;
    const acc = new Float64Array(n);
    for (let bt = 0; bt < l.batch; bt++) {
      const ao = bt * l.aBatchStride;
      const bo = bt * l.bBatchStride;
      for (let i = 0; i < m; i++) {
        acc.fill(0);
        for (let p = 0; p < k; p++) {
          const av = l.transA ? A[ao + p * m + i] : A[ao + i * k + p];
          if (av === 0) continue;
          if (l.transB) for (let j = 0; j < n; j++) acc[j] += av * B[bo + j * k + p];
          else {
            const row = bo + p * n;
            for (let j = 0; j < n; j++) acc[j] += av * B[row + j];
          }
        }
        // A zero in A skipped its products; NaN and Inf in B must still reach the output.
        O.set(acc, bt * m * n + i * n);
      }
    }
    if (!this.allFinite(A) || !this.allFinite(B)) this.matmulNonFinite(A, B, O, l);
  }
  private allFinite(x: TypedArray): boolean {
    for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i])) return false;
    return true;
  }
  /** The exact (unskipped) product, for inputs holding NaN or Inf where 0 * Inf must be NaN. */
  private matmulNonFinite(A: TypedArray, B: TypedArray, O: TypedArray, l: MatmulLayout): void {
    const { m, n, k } = l;
    for (let bt = 0; bt < l.batch; bt++) {
      for (let i = 0; i < m; i++)
        for (let j = 0; j < n; j++) {
          let s = 0;
          for (let p = 0; p < k; p++) {
            const av = l.transA ? A[bt * l.aBatchStride + p * m + i] : A[bt * l.aBatchStride + i * k + p];
            const bv = l.transB ? B[bt * l.bBatchStride + j * k + p] : B[bt * l.bBatchStride + p * n + j];
            s += av * bv;
          }
          O[bt * m * n + i * n + j] = s;
        }
    }
  }
  im2col(x: Storage, cols: Storage, g: Window2d): void {
    const X = d(x);
    const C = d(cols);
    const L = g.oh * g.ow;
    const K = g.c * g.kh * g.kw;
    for (let n = 0; n < g.n; n++)
      for (let c = 0; c < g.c; c++)
        for (let ki = 0; ki < g.kh; ki++)
          for (let kj = 0; kj < g.kw; kj++) {
            const row = (n * K + (c * g.kh + ki) * g.kw + kj) * L;
            for (let oy = 0; oy < g.oh; oy++) {
              const y = oy * g.sh - g.ph + ki * g.dh;
              for (let ox = 0; ox < g.ow; ox++) {
                const xx = ox * g.sw - g.pw + kj * g.dw;
                const inside = y >= 0 && y < g.h && xx >= 0 && xx < g.w;
                C[row + oy * g.ow + ox] = inside ? X[((n * g.c + c) * g.h + y) * g.w + xx] : 0;
              }
            }
          }
  }
  col2im(cols: Storage, out: Storage, g: Window2d): void {
    const C = d(cols);
    const O = d(out);
    O.fill(0);
    const L = g.oh * g.ow;
    const K = g.c * g.kh * g.kw;
    for (let n = 0; n < g.n; n++)
      for (let c = 0; c < g.c; c++)
        for (let ki = 0; ki < g.kh; ki++)
          for (let kj = 0; kj < g.kw; kj++) {
            const row = (n * K + (c * g.kh + ki) * g.kw + kj) * L;
            for (let oy = 0; oy < g.oh; oy++) {
              const y = oy * g.sh - g.ph + ki * g.dh;
              if (y < 0 || y >= g.h) continue;
              for (let ox = 0; ox < g.ow; ox++) {
                const xx = ox * g.sw - g.pw + kj * g.dw;
                if (xx < 0 || xx >= g.w) continue;
                O[((n * g.c + c) * g.h + y) * g.w + xx] += C[row + oy * g.ow + ox];
              }
            }
          }
  }
  conv2d(x: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    conv2dReference(d(x), d(weight), d(out), l);
  }
  conv2dBackwardInput(grad: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    conv2dBackwardInputReference(d(grad), d(weight), d(out), l);
  }
  conv2dBackwardWeight(x: Storage, grad: Storage, out: Storage, l: Conv2dLayout): void {
    conv2dBackwardWeightReference(d(x), d(grad), d(out), l);
  }
  maxPool2d(x: Storage, out: Storage, argOut: Storage | null, g: Window2d): void {
    const X = d(x);
    const O = d(out);
    const A = argOut ? d(argOut) : null;
    for (let p = 0; p < g.n * g.c; p++)
      for (let oy = 0; oy < g.oh; oy++)
        for (let ox = 0; ox < g.ow; ox++) {
          const o = (p * g.oh + oy) * g.ow + ox;
          const arg = maxPoolAt(X, p * g.h * g.w, g, oy, ox);
          O[o] = arg < 0 ? -Infinity : X[p * g.h * g.w + arg];
          if (A) A[o] = arg;
        }
  }
  maxPool2dBackward(grad: Storage, arg: Storage, out: Storage, g: Window2d): void {
    const G = d(grad);
    const A = d(arg);
    const O = d(out);
    O.fill(0);
    const plane = g.oh * g.ow;
    for (let p = 0; p < g.n * g.c; p++)
      for (let i = 0; i < plane; i++) O[p * g.h * g.w + A[p * plane + i]] += G[p * plane + i];
  }
  avgPool2d(x: Storage, out: Storage, g: AvgPool2dLayout): void {
    const X = d(x);
    const O = d(out);
    for (let p = 0; p < g.n * g.c; p++)
      for (let oy = 0; oy < g.oh; oy++)
        for (let ox = 0; ox < g.ow; ox++) {
          O[(p * g.oh + oy) * g.ow + ox] = avgPoolAt(X, p * g.h * g.w, g, oy, ox);
        }
  }
  avgPool2dBackward(grad: Storage, out: Storage, g: AvgPool2dLayout): void {
    const G = d(grad);
    const O = d(out);
    O.fill(0);
    for (let p = 0; p < g.n * g.c; p++)
      for (let oy = 0; oy < g.oh; oy++)
        for (let ox = 0; ox < g.ow; ox++) {
          const { y0, y1, x0, x1, divisor } = avgPoolWindow(g, oy, ox);
          const gv = G[(p * g.oh + oy) * g.ow + ox] / divisor;
          for (let y = y0; y < y1; y++) for (let xx = x0; xx < x1; xx++) O[(p * g.h + y) * g.w + xx] += gv;
        }
  }
  gather(x: Storage, idx: Storage, out: Storage, l: GatherLayout): void {
    const X = d(x);
    const I = d(idx);
    const O = d(out);
    const bad = x.dtype === 'float32' || x.dtype === 'float64' ? NaN : 0;
    for (let o = 0; o < l.outer; o++)
      for (let j = 0; j < l.idxDim; j++)
        for (let i = 0; i < l.inner; i++) {
          const pos = (o * l.idxDim + j) * l.inner + i;
          const k = l.perPosition ? I[pos] : I[j];
          O[pos] = k >= 0 && k < l.xDim ? X[(o * l.xDim + k) * l.inner + i] : bad;
        }
  }
  scatterAdd(src: Storage, idx: Storage, out: Storage, l: GatherLayout): void {
    const S = d(src);
    const I = d(idx);
    const O = d(out);
    O.fill(0);
    for (let o = 0; o < l.outer; o++)
      for (let j = 0; j < l.idxDim; j++)
        for (let i = 0; i < l.inner; i++) {
          const pos = (o * l.idxDim + j) * l.inner + i;
          const k = l.perPosition ? I[pos] : I[j];
          if (k >= 0 && k < l.xDim) O[(o * l.xDim + k) * l.inner + i] += S[pos];
        }
  }
  cumsum(x: Storage, out: Storage, { outer, size, inner }: ReduceLayout): void {
    const xs = d(x);
    const o = d(out);
    for (let a = 0; a < outer; a++)
      for (let c = 0; c < inner; c++) {
        let acc = 0;
        for (let j = 0; j < size; j++) {
          const p = (a * size + j) * inner + c;
          acc += xs[p];
          o[p] = acc;
        }
      }
  }
  argsort(x: Storage, out: Storage, { outer, size, inner, descending }: SortLayout): void {
    const xs = d(x);
    const o = d(out);
    const order = Array.from({ length: size }, (_, j) => j);
    for (let a = 0; a < outer; a++)
      for (let c = 0; c < inner; c++) {
        const at = (j: number) => xs[(a * size + j) * inner + c];
        for (let j = 0; j < size; j++) order[j] = j;
        // Array.prototype.sort is stable (ES2019): ties keep ascending j.
        order.sort((p, q) => sortsBefore(at(p), at(q), descending) ? -1 : sortsBefore(at(q), at(p), descending) ? 1 : 0);
        for (let j = 0; j < size; j++) o[(a * size + j) * inner + c] = order[j];
      }
  }
  random(out: Storage, key0: number, key1: number, dist: RandomDist): void {
    const o = d(out);
    const n = o.length;
    switch (dist.kind) {
      case 'uniform':
        for (let i = 0; i < n; i++) o[i] = dist.low + (dist.high - dist.low) * uniformAt(key0, key1, i);
        break;
      case 'normal':
        for (let i = 0; i < n; i++) o[i] = dist.mean + dist.std * normalAt(key0, key1, i);
        break;
      case 'int':
        for (let i = 0; i < n; i++) o[i] = intAt(key0, key1, i, dist.low, dist.high);
        break;
      case 'bernoulliKeep': {
        // keep when the uniform is >= p; compared in float32 so that every backend agrees.
        const p = Math.fround(dist.p);
        for (let i = 0; i < n; i++) o[i] = (hashBits(key0, key1, i) >>> 8) * 5.9604644775390625e-8 >= p ? 1 : 0;
        break;
      }
    }
  }
}
