/** Tensor creation from host data and constants. */
import { convertArray, dtypeOfArray, getDefaultDtype, typedArrayFor, type DType, type TypedArray } from './dtype.js';
import { checkDtype } from './dtype.js';
import { checkShape, fmt, numel } from './shape.js';
import { Tensor, type NestedArray } from './tensor.js';
import { getBackend } from '../kernels/registry.js';

export interface TensorOptions {
  shape?: number[];
  dtype?: DType;
  requiresGrad?: boolean;
}

/** Int tensors up to this size keep their host copy, so label and index checks need no readback. */
const HOST_COPY_LIMIT = 1 << 20;

function inferShape(x: NestedArray, where: string): number[] {
  const shape: number[] = [];
  let cur: NestedArray = x;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    cur = cur[0];
  }
  const check = (v: NestedArray, dim: number, path: string): void => {
    if (dim === shape.length) {
      if (Array.isArray(v)) throw new RangeError(`${where}: ragged nested array at ${path}: expected a number`);
      if (typeof v !== 'number' && typeof v !== 'boolean') throw new TypeError(`${where}: element at ${path} is ${typeof v}, not a number`);
      return;
    }
    if (!Array.isArray(v) || v.length !== shape[dim]) {
      throw new RangeError(`${where}: ragged nested array at ${path}: expected ${shape[dim]} elements, found ${Array.isArray(v) ? v.length : 'a scalar'}`);
    }
    v.forEach((e, i) => check(e, dim + 1, `${path}[${i}]`));
  };
  check(x, 0, 'root');
  return shape;
}

/** Flattens nested data; returns true when every leaf is a boolean. */
function flattenNested(x: NestedArray, out: number[]): boolean {
  if (Array.isArray(x)) {
    let allBool = true;
    for (const v of x) allBool = flattenNested(v, out) && allBool;
    return allBool;
  }
  out.push(typeof x === 'boolean' ? (x ? 1 : 0) : x);
  return typeof x === 'boolean';
}

/** A tensor from nested arrays or a typed array (with `shape`), on the active backend. */
export function tensor(data: NestedArray | TypedArray | number[], opts: TensorOptions = {}): Tensor {
  let values: TypedArray;
  let shape: number[];
  let dtype: DType;
  if (ArrayBuffer.isView(data)) {
    const arr = data as TypedArray;
    dtype = opts.dtype ? checkDtype(opts.dtype, 'tensor') : arr instanceof Uint8Array ? getDefaultDtype() : dtypeOfArray(arr);
    values = dtypeOfArray(arr) === dtype && !(arr instanceof Uint8Array && dtype !== 'bool') ? arr : convertArray(arr, dtype);
    shape = opts.shape ? checkShape(opts.shape, 'tensor') : [arr.length];
  } else {
    const inferred = inferShape(data as NestedArray, 'tensor');
    const flat: number[] = [];
    const allBool = flattenNested(data as NestedArray, flat) && flat.length > 0;
    dtype = opts.dtype ? checkDtype(opts.dtype, 'tensor') : allBool ? 'bool' : getDefaultDtype();
    values = convertArray(flat, dtype);
    shape = opts.shape ? checkShape(opts.shape, 'tensor') : inferred;
  }
  if (numel(shape) !== values.length) throw new RangeError(`tensor: shape ${fmt(shape)} needs ${numel(shape)} values, got ${values.length}`);
  const b = getBackend();
  const t = Tensor.fromStorage(b.upload(values, dtype), shape, b);
  if (dtype === 'int32' && values.length <= HOST_COPY_LIMIT) t.hostData = values === data ? values.slice() : values;
  if (opts.requiresGrad) t.requiresGrad_();
  return t;
}

/** A tensor of `shape` filled with `value`; errors name `op`, the function the caller called. */
function filled(op: string, shape: number[], value: number, opts: Omit<TensorOptions, 'shape'>): Tensor {
  const dtype = opts.dtype ? checkDtype(opts.dtype, op) : getDefaultDtype();
  const t = Tensor.empty(checkShape(shape, op), dtype);
  if (value !== 0 && t.size > 0) t.backend.fill(t.storage, value);
  if (opts.requiresGrad) t.requiresGrad_();
  return t;
}

export const full = (shape: number[], value: number, opts: Omit<TensorOptions, 'shape'> = {}) => filled('full', shape, value, opts);
export const zeros = (shape: number[], opts: Omit<TensorOptions, 'shape'> = {}) => filled('zeros', shape, 0, opts);
export const ones = (shape: number[], opts: Omit<TensorOptions, 'shape'> = {}) => filled('ones', shape, 1, opts);
export const zerosLike = (t: Tensor, opts: Omit<TensorOptions, 'shape'> = {}) => full(t.shape.slice(), 0, { dtype: t.dtype, ...opts });
export const onesLike = (t: Tensor, opts: Omit<TensorOptions, 'shape'> = {}) => full(t.shape.slice(), 1, { dtype: t.dtype, ...opts });

/** start, start+step, ... < end (torch.arange); int32 when all arguments are integers. */
export function arange(start: number, end?: number, step = 1, opts: { dtype?: DType } = {}): Tensor {
  if (end === undefined) [start, end] = [0, start];
  if (step === 0 || !Number.isFinite(step)) throw new RangeError(`arange: step must be finite and nonzero, got ${step}`);
  if (!Number.isFinite(start) || !Number.isFinite(end)) throw new RangeError(`arange: start and end must be finite, got ${start} and ${end}`);
  // As PyTorch: a step pointing away from end is an error, not an empty range.
  if ((step > 0 && end < start) || (step < 0 && end > start)) {
    throw new RangeError(`arange: step ${step} points away from end ${end} (start ${start}): the range would be empty`);
  }
  const n = Math.max(0, Math.ceil((end - start) / step));
  const dtype = opts.dtype ?? ([start, end, step].every(Number.isInteger) ? 'int32' : getDefaultDtype());
  const v = typedArrayFor(dtype, n);
  for (let i = 0; i < n; i++) v[i] = start + i * step;
  return tensor(v, { dtype, shape: [n] });
}

/**
 * `steps` evenly spaced values from start to end inclusive (torch.linspace): start + i*step for
 * the first half and end - (steps-1-i)*step for the second, as torch's CPU kernel, so both ends
 * are exact. Each value is computed in float64 and rounded once; torch's own last bit depends on
 * its build's vector width and FMA contraction, so the middle values agree with it to an ulp.
 */
export function linspace(start: number, end: number, steps: number, opts: { dtype?: DType } = {}): Tensor {
  if (!Number.isInteger(steps) || steps < 0) throw new RangeError(`linspace: steps must be a non-negative integer, got ${steps}`);
  const dtype = opts.dtype ?? getDefaultDtype();
  const v = typedArrayFor(dtype, steps);
  const step = (end - start) / (steps - 1);
  const half = Math.floor(steps / 2);
  for (let i = 0; i < steps; i++) v[i] = steps === 1 ? start : i < half ? start + step * i : end - step * (steps - i - 1);
  return tensor(v, { dtype, shape: [steps] });
}

export function eye(n: number, m = n, opts: { dtype?: DType } = {}): Tensor {
  if (!Number.isInteger(n) || n < 0 || !Number.isInteger(m) || m < 0) throw new RangeError(`eye: n and m must be non-negative integers, got ${n} and ${m}`);
  const dtype = opts.dtype ?? getDefaultDtype();
  const v = typedArrayFor(dtype, n * m);
  for (let i = 0; i < Math.min(n, m); i++) v[i * m + i] = 1;
  return tensor(v, { dtype, shape: [n, m] });
}

/** A copy of t on another backend (reads back, then uploads; outside any graph). */
export async function toBackend(t: Tensor, backend: import('../kernels/backend.js').Backend): Promise<Tensor> {
  const data = await t.data();
  return Tensor.fromStorage(backend.upload(data, t.dtype), t.shape.slice(), backend);
}
