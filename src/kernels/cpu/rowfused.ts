/**
 * The references of the row kernels with sums that a captured step folds calls into
 * (src/compile/fuse-reduce.ts): Backend.layerNormBackwardFused (layerNormBackward, then the
 * residual add and block sums), crossEntropyWithSum, crossEntropyBackwardWithSums and
 * attentionBackwardWithSums, each
 * computed as the CPU backend's own binary add and reduce compute it. Results are stored
 * (rounded to float32) before the add or a sum reads them back, as the separate calls would; the
 * sums add float32 values into float64 accumulators in row order and round once, as
 * CpuBackend.reduce does.
 */
import type { AttentionLayout, BlockSum, CrossEntropyLayout, LayerNormBackwardFusedLayout, Storage } from '../backend.js';
import type { TypedArray } from '../../tensor/dtype.js';

type LayerNormBackward = (
  grad: Storage, x: Storage, mean: Storage, rstd: Storage, weight: Storage | null,
  dx: Storage | null, dweight: Storage | null, dbias: Storage | null, layout: LayerNormBackwardFusedLayout,
) => void;

/** Checks what the contract asks of the fused call's operands; the message names the values. */
export function checkLayerNormBackwardFused(add: Storage | null, dx: Storage, sums: readonly Storage[], l: LayerNormBackwardFusedLayout): void {
  const n = l.rows * l.cols;
  if (dx.numel !== n || (add && add.numel !== n)) {
    throw new RangeError(`layerNormBackwardFused: dx (${dx.numel} elements)${add ? ` and add (${add.numel})` : ''} must hold rows * cols = ${l.rows} * ${l.cols} = ${n} elements`);
  }
  if (sums.length !== l.sums.length) throw new RangeError(`layerNormBackwardFused: ${sums.length} sum outputs for ${l.sums.length} sums in the layout`);
  sums.forEach((s, k) => {
    const { offset, period, width, count } = l.sums[k];
    const rowsOf = (v: number) => Number.isInteger(v) && v >= 0 && v % l.cols === 0;
    if (!rowsOf(offset) || !rowsOf(period) || !rowsOf(width) || !(width > 1) || width > period || !(count >= 0) || (count > 0 && offset + (count - 1) * period + width > n) || s.numel !== width) {
      throw new RangeError(
        `layerNormBackwardFused: sum ${k} (offset ${offset}, period ${period}, width ${width}, count ${count}, ${s.numel} elements) must cover whole rows of ${l.cols} ` +
          `(offset, period and width multiples of cols, 1 < width <= period, width its output's length) inside dx's ${n} elements`,
      );
    }
  });
}

export function layerNormBackwardFusedReference(
  layerNormBackward: LayerNormBackward,
  data: (s: Storage) => TypedArray,
  grad: Storage, x: Storage, mean: Storage, rstd: Storage, weight: Storage | null,
  add: Storage | null, dx: Storage, dweight: Storage | null, dbias: Storage | null,
  sums: readonly Storage[], l: LayerNormBackwardFusedLayout,
): void {
  checkLayerNormBackwardFused(add, dx, sums, l);
  layerNormBackward(grad, x, mean, rstd, weight, dx, dweight, dbias, l);
  const D = data(dx);
  const n = l.rows * l.cols;
  if (add) {
    const A = data(add);
    // The typed array's store rounds the float64 sum of two float32 values: the float32 add.
    if (l.addFirst) for (let i = 0; i < n; i++) D[i] = A[i] + D[i];
    else for (let i = 0; i < n; i++) D[i] = D[i] + A[i];
  }
  sums.forEach((s, k) => data(s).set(blockSum(D, l.sums[k])));
}

/** A BlockSum of x, in float64 (the caller's store rounds it once). */
function blockSum(x: TypedArray, { offset, period, width, count }: BlockSum): Float64Array {
  const acc = new Float64Array(width);
  for (let j = 0; j < count; j++) for (let c = 0, base = offset + j * period; c < width; c++) acc[c] += x[base + c];
  return acc;
}
/** The column sums of x [rows, cols] (a reduce over the middle dim of [1, rows, cols]). */
const columnSums = (x: TypedArray, rows: number, cols: number) => blockSum(x, { offset: 0, period: cols, width: cols, count: rows });

/** The sum of the float32 values x[0..n) as CpuBackend.reduce sums them: float64, in order. */
function sumInOrder(x: TypedArray, n: number): number {
  let acc = 0;
  for (let i = 0; i < n; i++) acc += x[i];
  return acc;
}

export function crossEntropyWithSumReference(
  crossEntropy: (logits: Storage, labels: Storage, out: Storage, l: CrossEntropyLayout) => void,
  data: (s: Storage) => TypedArray,
  logits: Storage, labels: Storage, out: Storage, total: Storage, l: CrossEntropyLayout,
): void {
  if (out.numel !== l.rows || total.numel !== 1) throw new RangeError(`crossEntropyWithSum: out must hold rows = ${l.rows} elements and total 1, got ${out.numel} and ${total.numel}`);
  crossEntropy(logits, labels, out, l);
  data(total)[0] = sumInOrder(data(out), l.rows);
}

export function crossEntropyBackwardWithSumsReference(
  crossEntropyBackward: (logits: Storage, labels: Storage, gradRows: Storage, out: Storage, l: CrossEntropyLayout) => void,
  data: (s: Storage) => TypedArray,
  logits: Storage, labels: Storage, gradRows: Storage, out: Storage, sums: Storage, l: CrossEntropyLayout,
): void {
  if (out.numel !== l.rows * l.cols || sums.numel !== l.cols || l.cols < 2) {
    throw new RangeError(`crossEntropyBackwardWithSums: out must hold rows * cols = ${l.rows} * ${l.cols} elements and sums cols = ${l.cols} (more than 1), got ${out.numel} and ${sums.numel}`);
  }
  crossEntropyBackward(logits, labels, gradRows, out, l);
  data(sums).set(columnSums(data(out), l.rows, l.cols));
}

/** Checks attentionBackwardWithSums' packed operand (the message names the values); returns its width. */
export function checkAttentionBackwardWithSums(x: Storage, sums: Storage, l: AttentionLayout): number {
  const width = sums.numel;
  const rows = l.n * l.l;
  const fits = (o: AttentionLayout['q']) => o.row === width && o.offset >= 0 && o.offset + l.heads * l.d <= width;
  if (l.l !== l.s || width < 2 || x.numel !== rows * width || !fits(l.q) || !fits(l.k) || !fits(l.v)) {
    throw new RangeError(
      `attentionBackwardWithSums: x (${x.numel} elements) must be [n * l, width] = [${l.n} * ${l.l}, ${width}] (width: the sums' length, more than 1) with l = s (${l.l}, ${l.s}) ` +
        `and q, k and v (offsets ${l.q.offset}, ${l.k.offset}, ${l.v.offset}; rows ${l.q.row}, ${l.k.row}, ${l.v.row}) rows of it: row stride width, offset + heads * d <= width`,
    );
  }
  return width;
}

export function attentionBackwardWithSumsReference(
  attentionBackward: (grad: Storage, q: Storage, k: Storage, v: Storage, probs: Storage, dq: Storage, dk: Storage, dv: Storage, l: AttentionLayout) => void,
  data: (s: Storage) => TypedArray,
  grad: Storage, q: Storage, k: Storage, v: Storage, probs: Storage, x: Storage, sums: Storage, l: AttentionLayout,
): void {
  const width = checkAttentionBackwardWithSums(x, sums, l);
  attentionBackward(grad, q, k, v, probs, x, x, x, l);
  data(sums).set(columnSums(data(x), l.n * l.l, width));
}
