/**
 * Window ops: convolution (conv2d and its two gradients), im2col/col2im and pooling, with their
 * gradient rules. The rules register when this module loads rather than in src/autograd/vjps.ts,
 * so that a program that never convolves or pools (an MLP) ships none of this: vjps.ts is loaded
 * by every program, and would keep these ops alive.
 */
import type { AvgPool2dLayout, Conv2dLayout, Window2d } from '../../kernels/backend.js';
import { promoteTypes } from '../dtype.js';
import { record, vjpRegistry } from '../graph.js';
import { fmt } from '../shape.js';
import { Tensor } from '../tensor.js';
import { add, cast, requireFloat, sameBackend } from './elementwise.js';
import { gather } from './nn.js';
import { mean } from './reduce.js';
import { pad, reshape } from './shape.js';

export type Pair = number | [number, number];
/** A number or pair as [h, w], checked to be integers >= min. */
export const pair = (v: Pair, what: string, op: string, min: number): [number, number] => {
  const p: [number, number] = typeof v === 'number' ? [v, v] : [v[0], v[1]];
  if (!p.every((x) => Number.isInteger(x) && x >= min)) throw new RangeError(`${op}: ${what} must be integers >= ${min}, got ${JSON.stringify(v)}`);
  return p;
};

function windowOf(op: string, x: Tensor, k: [number, number], stride: [number, number], padding: [number, number], dilation: [number, number], ceilMode = false): Window2d {
  if (x.ndim !== 4) throw new RangeError(`${op}: input must be NCHW (rank 4), got ${fmt(x.shape)}`);
  const [n, c, h, w] = x.shape;
  const span = (size: number, kk: number, s: number, p: number, d: number) => {
    const eff = d * (kk - 1) + 1;
    const raw = (size + 2 * p - eff) / s;
    let o = (ceilMode ? Math.ceil(raw) : Math.floor(raw)) + 1;
    // PyTorch: with ceil mode the last window must start inside the input or left padding.
    if (ceilMode && (o - 1) * s >= size + p) o--;
    return o;
  };
  const oh = span(h, k[0], stride[0], padding[0], dilation[0]);
  const ow = span(w, k[1], stride[1], padding[1], dilation[1]);
  if (oh <= 0 || ow <= 0) {
    throw new RangeError(`${op}: input ${fmt(x.shape)} is too small for kernel ${k.join('x')} with padding ${padding.join(',')} and dilation ${dilation.join(',')}`);
  }
  return { n, c, h, w, kh: k[0], kw: k[1], oh, ow, sh: stride[0], sw: stride[1], ph: padding[0], pw: padding[1], dh: dilation[0], dw: dilation[1] };
}

/** Unfolds NCHW windows into columns [n, c*kh*kw, oh*ow]; its adjoint is col2im. */
export function im2col(x: Tensor, g: Window2d): Tensor {
  const out = Tensor.empty([g.n, g.c * g.kh * g.kw, g.oh * g.ow], x.dtype, x.backend);
  if (out.size > 0) x.backend.im2col(x.storage, out.storage, g);
  return record('im2col', out, [x], { g });
}

export function col2im(cols: Tensor, g: Window2d): Tensor {
  const out = Tensor.empty([g.n, g.c, g.h, g.w], cols.dtype, cols.backend);
  if (out.size > 0) cols.backend.col2im(cols.storage, out.storage, g);
  return record('col2im', out, [cols], { g });
}

export interface Conv2dOptions {
  stride?: Pair;
  /** Zero padding per side, or 'same' (output size = input size; stride 1 only) or 'valid' (none), as PyTorch. */
  padding?: Pair | 'same' | 'valid';
  dilation?: Pair;
  groups?: number;
}

/**
 * Resolves PyTorch's string paddings: 'valid' is none; 'same' pads dilation*(k-1) in total per
 * spatial dim, half before, and when that total is odd the extra unit goes after (bottom/right),
 * by padding the input itself, as PyTorch does.
 */
function paddingMode(op: string, mode: string, x: Tensor, kernel: [number, number], stride: [number, number], dilation: [number, number]): { x: Tensor; padding: [number, number] } {
  if (mode === 'valid') return { x, padding: [0, 0] };
  if (mode !== 'same') throw new RangeError(`${op}: padding must be a number, a pair, 'same' or 'valid', got ${JSON.stringify(mode)}`);
  if (stride[0] !== 1 || stride[1] !== 1) throw new RangeError(`${op}: padding='same' needs stride 1 (as PyTorch), got stride ${stride.join(',')}`);
  const total = [dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)];
  const before: [number, number] = [Math.floor(total[0] / 2), Math.floor(total[1] / 2)];
  const extraH = total[0] - 2 * before[0];
  const extraW = total[1] - 2 * before[1];
  return { x: extraH || extraW ? pad(x, [0, extraW, 0, extraH]) : x, padding: before };
}

/** 2-D convolution (cross-correlation, as PyTorch) of x [N, C, H, W] with weight [O, C/groups, kh, kw]. */
export function conv2d(x: Tensor, weight: Tensor, bias?: Tensor | null, opts: Conv2dOptions = {}): Tensor {
  requireFloat('conv2d', x);
  requireFloat('conv2d', weight, 'weight');
  const groups = opts.groups ?? 1;
  if (weight.ndim !== 4) throw new RangeError(`conv2d: weight must be [out, in/groups, kh, kw], got ${fmt(weight.shape)}`);
  if (x.ndim !== 4) throw new RangeError(`conv2d: input must be NCHW (rank 4), got ${fmt(x.shape)}`);
  const [o, cg, kh, kw] = weight.shape;
  if (!Number.isInteger(groups) || groups < 1 || x.shape[1] % groups !== 0 || o % groups !== 0) {
    throw new RangeError(`conv2d: groups ${groups} must divide the input channels ${x.shape[1]} and the output channels ${o}`);
  }
  if (x.shape[1] / groups !== cg) {
    throw new RangeError(`conv2d: input ${fmt(x.shape)} has ${x.shape[1]} channels but weight ${fmt(weight.shape)} expects ${cg * groups} (groups ${groups})`);
  }
  if (bias && (bias.ndim !== 1 || bias.shape[0] !== o)) throw new RangeError(`conv2d: bias ${fmt(bias.shape)} does not match ${o} output channels`);
  const stride = pair(opts.stride ?? 1, 'stride', 'conv2d', 1);
  const dilation = pair(opts.dilation ?? 1, 'dilation', 'conv2d', 1);
  let padding: [number, number];
  if (typeof opts.padding === 'string') ({ x, padding } = paddingMode('conv2d', opts.padding, x, [kh, kw], stride, dilation));
  else padding = pair(opts.padding ?? 0, 'padding', 'conv2d', 0);
  sameBackend('conv2d', x, weight);
  // Mixed float dtypes promote, as in matmul (and PyTorch's type promotion).
  if (x.dtype !== weight.dtype) {
    const d = promoteTypes(x.dtype, weight.dtype);
    x = cast(x, d);
    weight = cast(weight, d);
  }
  // The geometry extended in place: an object spread of its 14 fields cost each call about 3 us
  // (and made an object slower to read in the kernels).
  const l = windowOf('conv2d', x, [kh, kw], stride, padding, dilation) as Conv2dLayout;
  l.outChannels = o;
  l.groups = groups;
  const y = conv2dWithLayout(x, weight, l);
  return bias ? add(y, reshape(bias, [1, o, 1, 1])) : y;
}

/** Runs one of the three convolution kernels into a new tensor and records it (they are each other's vjps). */
function convKernel(op: 'conv2d' | 'conv2dBackwardInput' | 'conv2dBackwardWeight', shape: number[], a: Tensor, b: Tensor, l: Conv2dLayout): Tensor {
  // Every convolution kernel writes each output element (the pixels of an input gradient that no
  // window reads are written as zero by the kernel): no zero fill first, which on wasm was one
  // thread's pass over the output on every eager call (about 1.4 ms of the small ResNet's SGD
  // step at batch 128, whatever the thread count).
  const out = Tensor.uninit(shape, a.dtype, a.backend);
  if (out.size > 0) {
    const be = a.backend;
    if (op === 'conv2d') be.conv2d(a.storage, b.storage, out.storage, l);
    else if (op === 'conv2dBackwardInput') be.conv2dBackwardInput(a.storage, b.storage, out.storage, l);
    else be.conv2dBackwardWeight(a.storage, b.storage, out.storage, l);
  }
  return record(op, out, [a, b], { l });
}

/** conv2d over a layout already checked (no bias): the adjoint of both of its gradients. */
export function conv2dWithLayout(x: Tensor, weight: Tensor, l: Conv2dLayout): Tensor {
  return convKernel('conv2d', [l.n, l.outChannels, l.oh, l.ow], x, weight, l);
}

/** The gradient of conv2d with respect to its input x [n, c, h, w], from grad [n, O, oh, ow] and weight. */
export function conv2dBackwardInput(grad: Tensor, weight: Tensor, l: Conv2dLayout): Tensor {
  return convKernel('conv2dBackwardInput', [l.n, l.c, l.h, l.w], grad, weight, l);
}

/** The gradient of conv2d with respect to its weight [O, c/groups, kh, kw], from x and grad. */
export function conv2dBackwardWeight(x: Tensor, grad: Tensor, l: Conv2dLayout): Tensor {
  return convKernel('conv2dBackwardWeight', [l.outChannels, l.c / l.groups, l.kh, l.kw], x, grad, l);
}

export interface Pool2dOptions {
  stride?: Pair | null;
  padding?: Pair;
  dilation?: Pair;
  ceilMode?: boolean;
}

export function maxPool2d(x: Tensor, kernelSize: Pair, opts: Pool2dOptions = {}): Tensor {
  requireFloat('maxPool2d', x);
  const k = pair(kernelSize, 'kernelSize', 'maxPool2d', 1);
  const padding = pair(opts.padding ?? 0, 'padding', 'maxPool2d', 0);
  if (padding[0] * 2 > k[0] || padding[1] * 2 > k[1]) throw new RangeError(`maxPool2d: padding ${padding.join(',')} must be at most half the kernel ${k.join('x')}`);
  const g = windowOf('maxPool2d', x, k, pair(opts.stride ?? k, 'stride', 'maxPool2d', 1), padding, pair(opts.dilation ?? 1, 'dilation', 'maxPool2d', 1), opts.ceilMode);
  const out = Tensor.empty([g.n, g.c, g.oh, g.ow], x.dtype, x.backend);
  const arg = Tensor.empty([g.n, g.c, g.oh, g.ow], 'int32', x.backend);
  if (out.size > 0) x.backend.maxPool2d(x.storage, out.storage, arg.storage, g);
  return record('maxPool2d', out, [x], { g }, [arg]);
}

/** Routes each window's gradient to its argmax; recorded so that double backward works. */
export function maxPool2dBackward(grad: Tensor, arg: Tensor, g: Window2d): Tensor {
  const out = Tensor.empty([g.n, g.c, g.h, g.w], grad.dtype, grad.backend);
  if (out.size > 0) grad.backend.maxPool2dBackward(grad.storage, arg.storage, out.storage, g);
  return record('maxPool2dBackward', out, [grad], { g }, [arg]);
}

export interface AvgPool2dOptions extends Omit<Pool2dOptions, 'dilation'> {
  /** Padding cells count in each window's divisor (default true, as PyTorch's count_include_pad). */
  countIncludePad?: boolean;
  /** Divide every window's sum by this nonzero integer instead (PyTorch's divisor_override). */
  divisorOverride?: number | null;
}

/**
 * torch.nn.functional.avg_pool2d. A window that ceil mode lets overhang the padded input is cut
 * there; its divisor then counts the cut window's cells, padding included (countIncludePad) or
 * only those inside the input, unless divisorOverride replaces it.
 */
export function avgPool2d(x: Tensor, kernelSize: Pair, opts: AvgPool2dOptions = {}): Tensor {
  requireFloat('avgPool2d', x);
  const k = pair(kernelSize, 'kernelSize', 'avgPool2d', 1);
  const padding = pair(opts.padding ?? 0, 'padding', 'avgPool2d', 0);
  if (padding[0] * 2 > k[0] || padding[1] * 2 > k[1]) throw new RangeError(`avgPool2d: padding ${padding.join(',')} must be at most half the kernel ${k.join('x')}`);
  const divisorOverride = opts.divisorOverride ?? 0;
  if (!Number.isInteger(divisorOverride) || (opts.divisorOverride != null && divisorOverride === 0)) {
    throw new RangeError(`avgPool2d: divisorOverride must be a nonzero integer, got ${opts.divisorOverride}`);
  }
  const g = windowOf('avgPool2d', x, k, pair(opts.stride ?? k, 'stride', 'avgPool2d', 1), padding, [1, 1], opts.ceilMode) as AvgPool2dLayout;
  // Extended in place, as conv2d's (no spread).
  g.countIncludePad = opts.countIncludePad ?? true;
  g.divisorOverride = divisorOverride;
  return avgPool2dWindow(x, g);
}

/** Average pooling over a window geometry already checked (also the adjoint of avgPool2dBackward). */
export function avgPool2dWindow(x: Tensor, g: AvgPool2dLayout): Tensor {
  const out = Tensor.empty([g.n, g.c, g.oh, g.ow], x.dtype, x.backend);
  if (out.size > 0) x.backend.avgPool2d(x.storage, out.storage, g);
  return record('avgPool2d', out, [x], { g });
}

export function avgPool2dBackward(grad: Tensor, g: AvgPool2dLayout): Tensor {
  const out = Tensor.empty([g.n, g.c, g.h, g.w], grad.dtype, grad.backend);
  if (out.size > 0) grad.backend.avgPool2dBackward(grad.storage, out.storage, g);
  return record('avgPool2dBackward', out, [grad], { g });
}

/** Mean over H and W to an output of 1x1 (or a size that divides the input evenly). */
export function adaptiveAvgPool2d(x: Tensor, outputSize: Pair): Tensor {
  const [oh, ow] = pair(outputSize, 'outputSize', 'adaptiveAvgPool2d', 1);
  if (x.ndim !== 4) throw new RangeError(`adaptiveAvgPool2d: input must be NCHW (rank 4), got ${fmt(x.shape)}`);
  const [, , h, w] = x.shape;
  if (oh === 1 && ow === 1) return mean(x, [2, 3], true);
  if (h % oh !== 0 || w % ow !== 0) throw new RangeError(`adaptiveAvgPool2d: output ${oh}x${ow} must divide the input ${h}x${w}`);
  return avgPool2d(x, [h / oh, w / ow]);
}

// ---- gradient rules ----

// conv2d(x, w) is bilinear, and its two gradients are the adjoints of it in each argument, so the
// three ops are each other's vjps (which gives double backward through a convolution).
vjpRegistry.set('conv2d', (g, { inputs: [x, w], attrs }) => {
  const l = attrs.l as Conv2dLayout;
  return [x.requiresGrad ? conv2dBackwardInput(g, w, l) : null, w.requiresGrad ? conv2dBackwardWeight(x, g, l) : null];
});
vjpRegistry.set('conv2dBackwardInput', (g, { inputs: [grad, w], attrs }) => {
  const l = attrs.l as Conv2dLayout;
  return [grad.requiresGrad ? conv2dWithLayout(g, w, l) : null, w.requiresGrad ? conv2dBackwardWeight(g, grad, l) : null];
});
vjpRegistry.set('conv2dBackwardWeight', (g, { inputs: [x, grad], attrs }) => {
  const l = attrs.l as Conv2dLayout;
  return [x.requiresGrad ? conv2dBackwardInput(grad, g, l) : null, grad.requiresGrad ? conv2dWithLayout(x, g, l) : null];
});
vjpRegistry.set('im2col', (g, n) => [col2im(g, n.attrs.g as Window2d)]);
vjpRegistry.set('col2im', (g, n) => [im2col(g, n.attrs.g as Window2d)]);
vjpRegistry.set('maxPool2d', (g, n) => [maxPool2dBackward(g, n.saved[0], n.attrs.g as Window2d)]);
vjpRegistry.set('maxPool2dBackward', (g, n) => {
  // The forward routed each window's gradient to its argmax; the adjoint reads it back from there.
  const w = n.attrs.g as Window2d;
  const planes = w.n * w.c;
  const picked = gather(reshape(g, [planes, w.h * w.w]), 1, reshape(n.saved[0], [planes, w.oh * w.ow]));
  return [reshape(picked, [w.n, w.c, w.oh, w.ow])];
});
vjpRegistry.set('avgPool2d', (g, n) => [avgPool2dBackward(g, n.attrs.g as AvgPool2dLayout)]);
vjpRegistry.set('avgPool2dBackward', (g, n) => [avgPool2dWindow(g, n.attrs.g as AvgPool2dLayout)]);
