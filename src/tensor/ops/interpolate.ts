/**
 * Resizing of NCHW images (torch.nn.functional.interpolate, modes 'nearest' and 'bilinear').
 * The source indices and weights are computed on the host exactly as PyTorch's CPU kernels
 * compute them (in float32 arithmetic for float32 input), then applied with indexSelect and
 * multiplies, one spatial dim at a time; so every backend runs it and the gradient (scatterAdd)
 * comes with it.
 */
import { typedArrayFor } from '../dtype.js';
import { fmt } from '../shape.js';
import { Tensor } from '../tensor.js';
import { add, mul, requireFloat } from './elementwise.js';
import { indexSelect } from './nn.js';
import { copy } from './shape.js';

export interface InterpolateOptions {
  /** Output [H, W] (a number for both); give this or scaleFactor. */
  size?: number | [number, number];
  /** Output = floor(input * scaleFactor) per dim; the source positions use 1/scaleFactor, as PyTorch. */
  scaleFactor?: number | [number, number];
  mode?: 'nearest' | 'bilinear';
  /** bilinear only: map the corner pixels' centres onto each other (default false). */
  alignCorners?: boolean;
}

type Round = (v: number) => number;

/** PyTorch's compute_scales_value: 1/scaleFactor when one was given, else in/out. */
function sourceScale(f: Round, inSize: number, outSize: number, scaleFactor: number | null): number {
  return scaleFactor !== null && scaleFactor > 0 ? f(1 / scaleFactor) : f(inSize / outSize);
}

/** Source index of each output index for mode 'nearest' (PyTorch's nearest_idx). */
function nearestIndices(inSize: number, outSize: number, scaleFactor: number | null): Int32Array {
  const idx = new Int32Array(outSize);
  const scale = sourceScale(Math.fround, inSize, outSize, scaleFactor);
  for (let o = 0; o < outSize; o++) {
    // PyTorch shortcuts a factor of exactly 2 with a shift; otherwise floorf(o * scale) in float32.
    idx[o] = outSize === 2 * inSize ? o >> 1 : Math.min(Math.floor(Math.fround(o * scale)), inSize - 1);
  }
  return idx;
}

/** The two source indices and weights of each output index for mode 'bilinear'. */
function linearTaps(f: Round, inSize: number, outSize: number, scaleFactor: number | null, alignCorners: boolean) {
  const i0 = new Int32Array(outSize);
  const i1 = new Int32Array(outSize);
  const w0 = new Float64Array(outSize);
  const w1 = new Float64Array(outSize);
  const scale = alignCorners ? (outSize > 1 ? f((inSize - 1) / (outSize - 1)) : 0) : sourceScale(f, inSize, outSize, scaleFactor);
  for (let o = 0; o < outSize; o++) {
    // area_pixel_compute_source_index: align corners maps o to scale*o; otherwise pixel centres, clamped at 0.
    const real = alignCorners ? f(scale * o) : Math.max(f(f(scale * f(o + 0.5)) - 0.5), 0);
    const lo = Math.min(Math.floor(real), inSize - 1);
    const lambda = Math.min(Math.max(f(real - lo), 0), 1);
    i0[o] = lo;
    i1[o] = lo + (lo < inSize - 1 ? 1 : 0);
    w1[o] = lambda;
    w0[o] = f(1 - lambda);
  }
  return { i0, i1, w0, w1 };
}

function pairOf(v: number | [number, number]): [number, number] {
  return typeof v === 'number' ? [v, v] : [v[0], v[1]];
}

export function interpolate(x: Tensor, opts: InterpolateOptions = {}): Tensor {
  const op = 'interpolate';
  const mode = opts.mode ?? 'nearest';
  requireFloat(op, x);
  if (x.ndim !== 4) throw new RangeError(`${op}: input must be NCHW (rank 4), got ${fmt(x.shape)}`);
  if (mode !== 'nearest' && mode !== 'bilinear') throw new RangeError(`${op}: mode must be 'nearest' or 'bilinear', got ${JSON.stringify(mode)}`);
  if (opts.alignCorners !== undefined && mode === 'nearest') throw new RangeError(`${op}: alignCorners can only be set with mode 'bilinear'`);
  if ((opts.size === undefined) === (opts.scaleFactor === undefined)) throw new RangeError(`${op}: give exactly one of size and scaleFactor`);
  const inSizes: [number, number] = [x.shape[2], x.shape[3]];
  let outSizes: [number, number];
  let factors: [number | null, number | null] = [null, null];
  if (opts.size !== undefined) {
    outSizes = pairOf(opts.size);
    if (!outSizes.every((s) => Number.isInteger(s) && s > 0)) throw new RangeError(`${op}: size must be positive integers, got ${JSON.stringify(opts.size)}`);
  } else {
    factors = pairOf(opts.scaleFactor!);
    if (!factors.every((s) => s !== null && s > 0 && Number.isFinite(s))) throw new RangeError(`${op}: scaleFactor must be positive and finite, got ${JSON.stringify(opts.scaleFactor)}`);
    outSizes = [Math.floor(inSizes[0] * factors[0]!), Math.floor(inSizes[1] * factors[1]!)];
    if (!outSizes.every((s) => s > 0)) throw new RangeError(`${op}: scaleFactor ${JSON.stringify(opts.scaleFactor)} makes input ${fmt(x.shape)} empty (${outSizes.join('x')})`);
  }
  const f: Round = x.dtype === 'float32' ? Math.fround : (v) => v;
  const ints = (a: Int32Array) => Tensor.fromStorage(x.backend.upload(a, 'int32'), [a.length], x.backend);
  const floats = (a: Float64Array, shape: number[]) => {
    const data = typedArrayFor(x.dtype, a.length);
    data.set(a);
    return Tensor.fromStorage(x.backend.upload(data, x.dtype), shape, x.backend);
  };
  let y = x;
  // Width first, then height: the same order of operations as PyTorch's bilinear kernel.
  for (const dim of [3, 2]) {
    const k = dim - 2;
    const inSize = inSizes[k];
    const outSize = outSizes[k];
    if (outSize === inSize) continue; // PyTorch copies such a dim, whatever the weights would be
    if (mode === 'nearest') {
      y = indexSelect(y, dim, ints(nearestIndices(inSize, outSize, factors[k])));
      continue;
    }
    const taps = linearTaps(f, inSize, outSize, factors[k], opts.alignCorners ?? false);
    const shape = dim === 3 ? [1, 1, 1, outSize] : [1, 1, outSize, 1];
    y = add(mul(indexSelect(y, dim, ints(taps.i0)), floats(taps.w0, shape)), mul(indexSelect(y, dim, ints(taps.i1)), floats(taps.w1, shape)));
  }
  return y === x ? copy(x) : y; // a new tensor even when nothing changes, as PyTorch
}
