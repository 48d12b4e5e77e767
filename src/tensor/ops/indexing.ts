/**
 * Index-driven updates with PyTorch's out-of-place semantics: scatterAdd (torch.scatter_add),
 * indexAdd (torch.index_add) and maskedFill. The scatters are the adjoint kernel of gather
 * (backend.scatterAdd) added to the input, so their gradients are gather's and the identity.
 */
import { fmt } from '../shape.js';
import { Tensor } from '../tensor.js';
import { add, cast, mul, sameBackend, scalarTensor, where } from './elementwise.js';
import { gatherLayout, scatterAdd as scatterInto } from './nn.js';
import { narrow } from './shape.js';
import { broadcastShapes, shapesEqual } from '../shape.js';

function sameDtype(op: string, input: Tensor, src: Tensor, what: string): void {
  if (src.dtype !== input.dtype) throw new TypeError(`${op}: ${what} dtype ${src.dtype} differs from the input's ${input.dtype}`);
}

/**
 * out = input, then out[..., index[p], ...] += src[p] along `dim` for every position p of index
 * (torch.scatter_add). index is int32 with input's shape except along dim; src may be larger
 * than index (only its leading part is used, as torch). Repeated indices accumulate. The
 * scattered sum is formed first and then added to input, so float results may differ from
 * torch's in-order additions by rounding.
 */
export function scatterAdd(input: Tensor, dim: number, index: Tensor, src: Tensor): Tensor {
  sameBackend('scatterAdd', input, index, src);
  sameDtype('scatterAdd', input, src, 'src');
  const { ax } = gatherLayout('scatterAdd', input, dim, index, true);
  if (src.ndim !== index.ndim || src.shape.some((d, i) => d < index.shape[i])) {
    throw new RangeError(`scatterAdd: src ${fmt(src.shape)} must be at least as large as index ${fmt(index.shape)} in every dim`);
  }
  let used = src;
  for (let d = 0; d < src.ndim; d++) if (used.shape[d] !== index.shape[d]) used = narrow(used, d, 0, index.shape[d]);
  return add(input, scatterInto(used, ax, index, input.shape.slice(), true));
}

/**
 * out = input, then out[..., index[i], ...] += alpha * source[..., i, ...] along `dim`
 * (torch.index_add). index is 1-D int32; source has input's shape with dim replaced by index's
 * length. Repeated indices accumulate.
 */
export function indexAdd(input: Tensor, dim: number, index: Tensor, source: Tensor, alpha = 1): Tensor {
  sameBackend('indexAdd', input, index, source);
  sameDtype('indexAdd', input, source, 'source');
  const { ax, outShape } = gatherLayout('indexAdd', input, dim, index, false);
  if (!shapesEqual(source.shape, outShape)) {
    throw new RangeError(`indexAdd: source ${fmt(source.shape)} must be ${fmt(outShape)} (input ${fmt(input.shape)} with dim ${ax} of the index's length)`);
  }
  const scaled = alpha === 1 ? source : mul(source, alpha);
  return add(input, scatterInto(scaled, ax, index, input.shape.slice(), false));
}

/**
 * x with `value` where the bool mask (broadcast to x's shape) is true (torch.masked_fill). The
 * result keeps x's dtype; a tensor value must be 0-d, and receives the gradient of the filled places.
 */
export function maskedFill(x: Tensor, mask: Tensor, value: number | Tensor): Tensor {
  if (mask.dtype !== 'bool') throw new TypeError(`maskedFill: mask must be bool, got ${mask.dtype} ${fmt(mask.shape)}`);
  // The mask and the input broadcast together, a mask larger than the input included, as
  // PyTorch's out-of-place masked_fill (the result takes the broadcast shape).
  broadcastShapes('maskedFill', mask.shape, x.shape);
  if (value instanceof Tensor && value.ndim !== 0) throw new RangeError(`maskedFill: a tensor value must be 0-d, got ${fmt(value.shape)}`);
  const fill = value instanceof Tensor ? cast(value, x.dtype) : scalarTensor(value, x.dtype, x.backend);
  return where(mask, fill, x);
}
