/** Shape front-ends. reshape shares storage; everything that changes the layout is one stridedCopy. */
import { record } from '../graph.js';
import { broadcastShapes, contiguousStrides, fmt, normAxes, normAxis, numel, shapesEqual, type Shape } from '../shape.js';
import { Tensor } from '../tensor.js';
import { sameBackend } from './elementwise.js';

/** Accepts f(2, 3) and f([2, 3]). */
export function shapeArg(args: number[] | [number[]]): number[] {
  return Array.isArray(args[0]) ? (args[0] as number[]).slice() : (args as number[]).slice();
}

/** A new contiguous tensor of `shape` read from x through `strides` starting at `offset`. */
function gatherLayout(x: Tensor, shape: number[], strides: number[], offset = 0): Tensor {
  const out = Tensor.empty(shape, x.dtype, x.backend);
  if (out.size > 0) {
    x.backend.stridedCopy(x.storage, out.storage, { shape, srcStrides: strides, srcOffset: offset, dstStrides: contiguousStrides(shape), dstOffset: 0 });
  }
  return out;
}

/** A contiguous copy of x (any dtype), recording an identity gradient. */
export function copy(x: Tensor): Tensor {
  return record('clone', gatherLayout(x, x.shape.slice(), contiguousStrides(x.shape)), [x]);
}

export function reshape(x: Tensor, shape: Shape): Tensor {
  const target = shape.slice();
  const free = target.indexOf(-1);
  if (target.some((d, i) => !Number.isInteger(d) || d < -1 || (d === -1 && i !== free))) {
    throw new RangeError(`reshape: invalid shape ${fmt(shape)} (dims must be non-negative integers, with at most one -1)`);
  }
  if (free >= 0) {
    const known = numel(target.filter((_, i) => i !== free));
    if (known === 0 || x.size % known !== 0) throw new RangeError(`reshape: cannot infer the -1 in ${fmt(shape)} for a tensor of ${x.size} elements ${fmt(x.shape)}`);
    target[free] = x.size / known;
  }
  if (numel(target) !== x.size) throw new RangeError(`reshape: shape ${fmt(shape)} has ${numel(target)} elements but the tensor ${fmt(x.shape)} has ${x.size}`);
  if (shapesEqual(target, x.shape)) return x;
  return record('reshape', x.shareWithShape(target), [x], { from: x.shape.slice() });
}

export function flatten(x: Tensor, startDim = 0, endDim = -1): Tensor {
  if (x.ndim === 0) return reshape(x, [1]);
  const s = normAxis('flatten', startDim, x.ndim);
  const e = normAxis('flatten', endDim, x.ndim);
  if (s > e) throw new RangeError(`flatten: startDim ${startDim} comes after endDim ${endDim}`);
  return reshape(x, [...x.shape.slice(0, s), numel(x.shape.slice(s, e + 1)), ...x.shape.slice(e + 1)]);
}

export function squeeze(x: Tensor, dim?: number): Tensor {
  if (dim === undefined) return reshape(x, x.shape.filter((d) => d !== 1));
  const ax = normAxis('squeeze', dim, x.ndim);
  if (x.ndim === 0 || x.shape[ax] !== 1) return x;
  return reshape(x, x.shape.filter((_, i) => i !== ax));
}

export function unsqueeze(x: Tensor, dim: number): Tensor {
  const ax = normAxis('unsqueeze', dim, x.ndim + 1);
  const s = x.shape.slice();
  s.splice(ax, 0, 1);
  return reshape(x, s);
}

export function permute(x: Tensor, dims: number[]): Tensor {
  if (dims.length !== x.ndim) throw new RangeError(`permute: ${dims.length} dims ${JSON.stringify(dims)} for a tensor of rank ${x.ndim} ${fmt(x.shape)}`);
  const d = dims.map((a) => normAxis('permute', a, x.ndim));
  if (new Set(d).size !== d.length) throw new RangeError(`permute: dims ${JSON.stringify(dims)} repeat an axis`);
  if (d.every((a, i) => a === i)) return x;
  const st = contiguousStrides(x.shape);
  const out = gatherLayout(x, d.map((a) => x.shape[a]), d.map((a) => st[a]));
  return record('permute', out, [x], { dims: d });
}

export function transpose(x: Tensor, dim0: number, dim1: number): Tensor {
  if (x.ndim < 2 && dim0 === -2 && dim1 === -1) return x;
  const a = normAxis('transpose', dim0, x.ndim);
  const b = normAxis('transpose', dim1, x.ndim);
  // Swapping a dim with itself is the identity; for a 0-d tensor that is the only swap (PyTorch).
  if (a === b) return x;
  const d = Array.from({ length: x.ndim }, (_, i) => i);
  [d[a], d[b]] = [d[b], d[a]];
  return permute(x, d);
}

/** PyTorch's expand: -1 keeps a dim, size-1 dims stretch, new dims may be added in front. */
export function expand(x: Tensor, shape: Shape): Tensor {
  if (shape.length < x.ndim) throw new RangeError(`expand: target ${fmt(shape)} has fewer dims than the tensor ${fmt(x.shape)}`);
  const off = shape.length - x.ndim;
  const target = shape.map((s, i) => (s === -1 && i >= off ? x.shape[i - off] : s));
  const st = contiguousStrides(x.shape);
  const strides = target.map((s, i) => {
    if (i < off) return 0;
    const d = x.shape[i - off];
    if (d === s) return d === 1 ? 0 : st[i - off];
    if (d === 1) return 0;
    throw new RangeError(`expand: cannot expand ${fmt(x.shape)} to ${fmt(shape)} (dim ${i}: ${d} vs ${s})`);
  });
  if (target.some((s) => !Number.isInteger(s) || s < 0)) throw new RangeError(`expand: invalid target shape ${fmt(shape)}`);
  if (shapesEqual(target, x.shape)) return x;
  return record('expand', gatherLayout(x, target, strides), [x], { from: x.shape.slice() });
}

export function broadcastTo(x: Tensor, shape: Shape): Tensor {
  broadcastShapes('broadcastTo', x.shape, shape);
  return expand(x, shape);
}

/** Elements start, start+step, ... < end along dim (Python slice rules for negatives and clamping). */
/** slice, narrow and concat work along a dim: a 0-d tensor has none (PyTorch refuses it too). */
function requireDims(op: string, x: Tensor, what = 'the input'): void {
  if (x.ndim === 0) throw new RangeError(`${op}: ${what} is a 0-d tensor, which has no dim to work along (reshape it to [1] first)`);
}

export function slice(x: Tensor, dim: number, start?: number | null, end?: number | null, step = 1): Tensor {
  requireDims('slice', x);
  const ax = normAxis('slice', dim, x.ndim);
  if (!Number.isInteger(step) || step <= 0) throw new RangeError(`slice: step must be a positive integer, got ${step}`);
  const n = x.shape[ax];
  const norm = (v: number) => Math.min(Math.max(v < 0 ? v + n : v, 0), n);
  const s = norm(start ?? 0);
  const e = Math.max(norm(end ?? n), s);
  const len = Math.ceil((e - s) / step);
  if (s === 0 && len === n && step === 1) return x;
  const st = contiguousStrides(x.shape);
  const shape = x.shape.slice();
  shape[ax] = len;
  const strides = st.slice();
  strides[ax] *= step;
  const out = gatherLayout(x, shape, strides, s * st[ax]);
  return record('slice', out, [x], { dim: ax, start: s, step, inShape: x.shape.slice() });
}

export function narrow(x: Tensor, dim: number, start: number, length: number): Tensor {
  requireDims('narrow', x);
  const ax = normAxis('narrow', dim, x.ndim);
  const s = start < 0 ? start + x.shape[ax] : start;
  if (!Number.isInteger(length) || length < 0 || s < 0 || s + length > x.shape[ax]) {
    throw new RangeError(`narrow: start ${start} length ${length} is outside dim ${dim} of size ${x.shape[ax]} in ${fmt(x.shape)}`);
  }
  return slice(x, ax, s, s + length);
}

/** The adjoint of slice: g placed at positions start, start+step, ... of a zero tensor of inShape. */
export function sliceScatter(g: Tensor, inShape: number[], dim: number, start: number, step: number): Tensor {
  const out = Tensor.empty(inShape.slice(), g.dtype, g.backend);
  const st = contiguousStrides(inShape);
  const dstStrides = st.slice();
  dstStrides[dim] *= step;
  if (g.size > 0) {
    g.backend.stridedCopy(g.storage, out.storage, { shape: g.shape, srcStrides: contiguousStrides(g.shape), srcOffset: 0, dstStrides, dstOffset: start * st[dim] });
  }
  return record('sliceScatter', out, [g], { dim, start, step });
}

export function concat(ts: Tensor[], dim = 0): Tensor {
  if (ts.length === 0) throw new RangeError('concat: needs at least one tensor');
  ts.forEach((t, i) => requireDims('concat', t, `tensor ${i}`));
  // PyTorch's legacy rule: a 1-D empty tensor [0] may sit beside tensors of any rank and adds nothing.
  const legacyEmpty = (t: Tensor) => t.ndim === 1 && t.size === 0;
  if (ts.some(legacyEmpty) && !ts.every(legacyEmpty)) return concat(ts.filter((t) => !legacyEmpty(t)), dim);
  const first = ts[0];
  const ax = normAxis('concat', dim, first.ndim);
  const backend = sameBackend('concat', ...ts);
  for (const t of ts) {
    if (t.dtype !== first.dtype) throw new TypeError(`concat: dtypes differ (${first.dtype} and ${t.dtype})`);
    if (t.ndim !== first.ndim || t.shape.some((d, i) => i !== ax && d !== first.shape[i])) {
      throw new RangeError(`concat: shapes ${ts.map((x) => fmt(x.shape)).join(', ')} differ outside dim ${dim}`);
    }
  }
  const shape = first.shape.slice();
  shape[ax] = ts.reduce((a, t) => a + t.shape[ax], 0);
  const out = Tensor.empty(shape, first.dtype, backend);
  const ost = contiguousStrides(shape);
  let at = 0;
  for (const t of ts) {
    if (t.size > 0) {
      backend.stridedCopy(t.storage, out.storage, { shape: t.shape, srcStrides: contiguousStrides(t.shape), srcOffset: 0, dstStrides: ost, dstOffset: at * ost[ax] });
    }
    at += t.shape[ax];
  }
  return record('concat', out, ts, { dim: ax, sizes: ts.map((t) => t.shape[ax]) });
}

export function stack(ts: Tensor[], dim = 0): Tensor {
  if (ts.length === 0) throw new RangeError('stack: needs at least one tensor');
  for (const t of ts) {
    if (!shapesEqual(t.shape, ts[0].shape)) throw new RangeError(`stack: shapes ${ts.map((x) => fmt(x.shape)).join(', ')} differ`);
  }
  const ax = normAxis('stack', dim, ts[0].ndim + 1);
  return concat(ts.map((t) => unsqueeze(t, ax)), ax);
}

/**
 * Constant padding as torch.nn.functional.pad: `pads` lists (before, after) pairs starting from the
 * last dim. Padding is non-negative.
 */
export function pad(x: Tensor, pads: number[], value = 0): Tensor {
  if (pads.length % 2 !== 0 || pads.length / 2 > x.ndim) {
    throw new RangeError(`pad: pads ${JSON.stringify(pads)} must be (before, after) pairs for at most ${x.ndim} dims of ${fmt(x.shape)}`);
  }
  if (pads.some((p) => !Number.isInteger(p))) throw new RangeError(`pad: pads must be integers, got ${JSON.stringify(pads)}`);
  // A negative pad crops that side, as PyTorch's F.pad (constant_pad_nd): crop first (narrow
  // carries the gradient), then pad with the positive parts.
  if (pads.some((p) => p < 0)) {
    const inShape = x.shape;
    for (let i = 0; i < pads.length / 2; i++) {
      const ax = x.ndim - 1 - i;
      const cropBefore = -Math.min(pads[2 * i], 0);
      const kept = x.shape[ax] - cropBefore - -Math.min(pads[2 * i + 1], 0);
      if (kept < 0) throw new RangeError(`pad: pads ${JSON.stringify(pads)} crop more than dim ${ax} of ${fmt(inShape)} holds`);
      if (kept !== x.shape[ax]) x = narrow(x, ax, cropBefore, kept);
    }
    pads = pads.map((p) => Math.max(p, 0));
  }
  const before = new Array<number>(x.ndim).fill(0);
  const shape = x.shape.slice();
  for (let i = 0; i < pads.length / 2; i++) {
    const ax = x.ndim - 1 - i;
    before[ax] = pads[2 * i];
    shape[ax] += pads[2 * i] + pads[2 * i + 1];
  }
  const out = Tensor.empty(shape, x.dtype, x.backend);
  if (value !== 0) x.backend.fill(out.storage, value);
  const ost = contiguousStrides(shape);
  if (x.size > 0) {
    x.backend.stridedCopy(x.storage, out.storage, {
      shape: x.shape,
      srcStrides: contiguousStrides(x.shape),
      srcOffset: 0,
      dstStrides: ost,
      dstOffset: before.reduce((a, b, i) => a + b * ost[i], 0),
    });
  }
  return record('pad', out, [x], { before, inShape: x.shape.slice() });
}

/** Reverses x along `dims` (torch.flip): one stridedCopy reading with negative strides. */
export function flip(x: Tensor, dims: number | readonly number[]): Tensor {
  const axes = normAxes('flip', dims, x.ndim).filter((a) => a < x.ndim && x.shape[a] > 1);
  if (axes.length === 0) return x;
  const st = contiguousStrides(x.shape);
  const strides = st.map((s, i) => (axes.includes(i) ? -s : s));
  const offset = axes.reduce((o, a) => o + (x.shape[a] - 1) * st[a], 0);
  return record('flip', gatherLayout(x, x.shape.slice(), strides, offset), [x], { dims: axes });
}

/**
 * Splits x along `dim` (torch.split): into pieces of `sizeOrSections` elements (the last one
 * smaller), or into pieces of the listed sizes, which must add up to the dim.
 */
export function split(x: Tensor, sizeOrSections: number | readonly number[], dim = 0): Tensor[] {
  const ax = normAxis('split', dim, x.ndim);
  if (x.ndim === 0) throw new RangeError('split: a 0-d tensor has no dim to split');
  const n = x.shape[ax];
  let sizes: number[];
  if (typeof sizeOrSections === 'number') {
    const s = sizeOrSections;
    if (!Number.isInteger(s) || s < 0 || (s === 0 && n > 0)) throw new RangeError(`split: split size must be a positive integer, got ${s} for dim ${dim} of ${fmt(x.shape)}`);
    const count = n === 0 ? 1 : Math.ceil(n / s);
    sizes = Array.from({ length: count }, (_, i) => Math.min(s, n - i * s));
  } else {
    sizes = sizeOrSections.slice();
    const total = sizes.reduce((a, b) => a + b, 0);
    if (sizes.some((s) => !Number.isInteger(s) || s < 0) || total !== n) {
      throw new RangeError(`split: sections ${JSON.stringify(sizes)} must be non-negative integers adding up to ${n} (dim ${dim} of ${fmt(x.shape)})`);
    }
  }
  let at = 0;
  return sizes.map((s) => {
    const part = narrow(x, ax, at, s);
    at += s;
    return part;
  });
}

/**
 * Splits x into `chunks` pieces of ceil(size / chunks) along `dim` (torch.chunk): fewer pieces
 * when the last ones would be empty, except that an empty dim gives `chunks` empty pieces, as torch.
 */
export function chunk(x: Tensor, chunks: number, dim = 0): Tensor[] {
  if (!Number.isInteger(chunks) || chunks <= 0) throw new RangeError(`chunk: chunks must be a positive integer, got ${chunks}`);
  const ax = normAxis('chunk', dim, x.ndim);
  if (x.ndim === 0) throw new RangeError('chunk: a 0-d tensor has no dim to split');
  const n = x.shape[ax];
  if (n === 0) return Array.from({ length: chunks }, () => narrow(x, ax, 0, 0));
  return split(x, Math.ceil(n / chunks), ax);
}
