/** Matrix products with PyTorch's matmul semantics, on a kernel with transpose flags. */
import { isGradEnabled, record } from '../graph.js';
import { broadcastShapes, fmt, numel, shapesEqual } from '../shape.js';
import { Tensor } from '../tensor.js';
import { requireFloat, sameBackend, cast, mul, scalarTensor, where } from './elementwise.js';
import { expand, reshape, squeeze } from './shape.js';
import { promoteTypes } from '../dtype.js';

/**
 * The primitive: op(a) @ op(b) over the last two dims, batch dims broadcast. With transA, a's last
 * two dims are [k, m]; with transB, b's are [n, k]. Gradients are mm's with other flags, so the
 * backward of a linear layer never materializes a transpose.
 *
 * `out`: write the product into this tensor (of exactly the result's shape and dtype) and return
 * it, unrecorded. Backward uses it to write a weight's gradient straight into its slot of the
 * optimizer's flat gradient arena; it is refused while grad mode would record the product.
 */
export function mm(a: Tensor, b: Tensor, transA = false, transB = false, out?: Tensor): Tensor {
  const backend = sameBackend('matmul', a, b);
  requireFloat('matmul', a, 'left operand');
  requireFloat('matmul', b, 'right operand');
  if (a.dtype !== b.dtype) {
    const d = promoteTypes(a.dtype, b.dtype);
    a = cast(a, d);
    b = cast(b, d);
  }
  if (a.ndim < 2 || b.ndim < 2) throw new RangeError(`matmul: mm needs rank >= 2 operands, got ${fmt(a.shape)} and ${fmt(b.shape)}`);
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const m = transA ? ac : ar;
  const k = transA ? ar : ac;
  const kb = transB ? bc : br;
  const n = transB ? br : bc;
  if (k !== kb) {
    const show = (s: number[], t: boolean) => fmt(s) + (t ? 'ᵀ' : '');
    throw new RangeError(`matmul: ${show(a.shape, transA)} @ ${show(b.shape, transB)}: inner dims ${k} and ${kb} differ`);
  }
  const aBatch = a.shape.slice(0, -2);
  const bBatch = b.shape.slice(0, -2);
  const batchShape = broadcastShapes('matmul (batch dims)', aBatch, bBatch);
  const batch = numel(batchShape);
  const batchOperand = (t: Tensor, own: number[]): [Tensor, number] => {
    if (numel(own) === 1) return [t, 0];
    if (shapesEqual(own, batchShape)) return [t, t.shape[t.ndim - 2] * t.shape[t.ndim - 1]];
    const e = expand(t, [...batchShape, ...t.shape.slice(-2)]);
    return [e, e.shape[e.ndim - 2] * e.shape[e.ndim - 1]];
  };
  const [aa, aStride] = batchOperand(a, aBatch);
  const [bb, bStride] = batchOperand(b, bBatch);
  const shape = [...batchShape, m, n];
  if (out) {
    if (!shapesEqual(out.shape, shape) || out.dtype !== a.dtype) {
      throw new RangeError(`matmul: out is ${out.dtype} ${fmt(out.shape)}, the product is ${a.dtype} ${fmt(shape)}`);
    }
    if (isGradEnabled() && (a.requiresGrad || b.requiresGrad)) throw new Error('matmul: out cannot be used where the product would be recorded for backward');
    if (out.backend !== backend) throw new Error(`matmul: out lives on ${out.backend.name}, the operands on ${backend.name}`);
  }
  // The kernel (or the k = 0 fill) writes every element: no zero fill at allocation.
  const res = out ?? Tensor.uninit(shape, a.dtype, backend);
  if (res.size > 0) {
    const dst = res.overwriteStorage();
    if (k === 0) backend.fill(dst, 0);
    else backend.matmul(aa.storage, bb.storage, dst, { batch, m, n, k, transA, transB, aBatchStride: aStride, bBatchStride: bStride });
  }
  return out ? out : record('mm', res, [a, b], { transA, transB });
}

/** torch.matmul: 1-D operands are promoted to matrices and the added dims removed again. */
export function matmul(a: Tensor, b: Tensor): Tensor {
  if (a.ndim === 0 || b.ndim === 0) throw new RangeError(`matmul: operands must have at least one dim, got ${fmt(a.shape)} and ${fmt(b.shape)}`);
  const a2 = a.ndim === 1 ? reshape(a, [1, a.shape[0]]) : a;
  const b2 = b.ndim === 1 ? reshape(b, [b.shape[0], 1]) : b;
  if (a2.shape[a2.ndim - 1] !== b2.shape[b2.ndim - 2]) {
    throw new RangeError(`matmul: ${fmt(a.shape)} @ ${fmt(b.shape)}: inner dims ${a2.shape[a2.ndim - 1]} and ${b2.shape[b2.ndim - 2]} differ`);
  }
  let out = mm(a2, b2);
  if (b.ndim === 1) out = squeeze(out, -1);
  if (a.ndim === 1) out = squeeze(out, out.ndim === 1 && b.ndim === 1 ? 0 : -2);
  return out;
}

/** y = x @ weightᵀ + bias with weight [out, in] (torch.nn.functional.linear); x may have batch dims. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  if (weight.ndim !== 2) throw new RangeError(`linear: weight must be [out, in], got ${fmt(weight.shape)}`);
  if (x.ndim === 0) throw new RangeError(`linear: input must have at least one dim (its features), got a 0-d tensor []`);
  const inF = weight.shape[1];
  if (x.shape[x.ndim - 1] !== inF) throw new RangeError(`linear: input ${fmt(x.shape)} has ${x.shape[x.ndim - 1]} features but weight ${fmt(weight.shape)} expects ${inF}`);
  const lead = x.shape.slice(0, -1);
  const x2 = x.ndim === 2 ? x : reshape(x, [numel(lead), inF]);
  let y = mm(x2, weight, false, true);
  if (bias) {
    if (bias.ndim !== 1 || bias.shape[0] !== weight.shape[0]) throw new RangeError(`linear: bias ${fmt(bias.shape)} does not match weight ${fmt(weight.shape)}`);
    y = y.add(bias);
  }
  return x.ndim === 2 ? y : reshape(y, [...lead, weight.shape[0]]);
}

/** torch.bmm: [b, n, m] @ [b, m, p] -> [b, n, p], with no broadcasting. */
export function bmm(a: Tensor, b: Tensor): Tensor {
  if (a.ndim !== 3 || b.ndim !== 3 || a.shape[0] !== b.shape[0] || a.shape[2] !== b.shape[1]) {
    throw new RangeError(`bmm: needs [b, n, m] and [b, m, p], got ${fmt(a.shape)} and ${fmt(b.shape)}`);
  }
  return mm(a, b);
}

/** torch.outer: a [n], b [m] -> [n, m] with out[i, j] = a[i] * b[j]. */
export function outer(a: Tensor, b: Tensor): Tensor {
  if (a.ndim !== 1 || b.ndim !== 1) throw new RangeError(`outer: needs two 1-D tensors, got ${fmt(a.shape)} and ${fmt(b.shape)}`);
  return mul(reshape(a, [a.shape[0], 1]), reshape(b, [1, b.shape[0]]));
}

/** Keeps the elements of the last two dims with column - row <= diagonal (lower) or >= diagonal (upper). */
function triangle(op: 'tril' | 'triu', x: Tensor, diagonal: number): Tensor {
  if (x.ndim < 2) throw new RangeError(`${op}: needs a tensor of rank >= 2, got ${fmt(x.shape)}`);
  if (!Number.isInteger(diagonal)) throw new RangeError(`${op}: diagonal must be an integer, got ${diagonal}`);
  const [rows, cols] = x.shape.slice(-2);
  const keep = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) keep[r * cols + c] = (op === 'tril' ? c - r <= diagonal : c - r >= diagonal) ? 1 : 0;
  const mask = Tensor.fromStorage(x.backend.upload(keep, 'bool'), [rows, cols], x.backend);
  // Filling with zero of x's own dtype keeps int and bool tensors in their dtype.
  return where(mask, x, scalarTensor(0, x.dtype, x.backend));
}

/** torch.tril: the lower triangle (column - row <= diagonal) of the last two dims, zeros elsewhere. */
export function tril(x: Tensor, diagonal = 0): Tensor {
  return triangle('tril', x, diagonal);
}

/** torch.triu: the upper triangle (column - row >= diagonal) of the last two dims, zeros elsewhere. */
export function triu(x: Tensor, diagonal = 0): Tensor {
  return triangle('triu', x, diagonal);
}
