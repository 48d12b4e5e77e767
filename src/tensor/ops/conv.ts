/**
 * Convolutions built on conv2d's pieces: conv1d (conv2d over a height of 1) and convTranspose2d
 * (a matmul into columns, then col2im: the adjoint of conv2d's im2col). No kernels of their own,
 * so every backend runs them and their gradients come from the ops they are made of.
 */
import type { Window2d } from '../../kernels/backend.js';
import { fmt } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { add, requireFloat, sameBackend } from './elementwise.js';
import { mm } from './linalg.js';
import { col2im, conv2d, pair, type Pair } from './window.js';
import { concat, narrow, reshape, squeeze, unsqueeze } from './shape.js';

function checkGroups(op: string, groups: number, inChannels: number, outChannels: number): void {
  if (!Number.isInteger(groups) || groups < 1 || inChannels % groups !== 0 || outChannels % groups !== 0) {
    throw new RangeError(`${op}: groups ${groups} must divide the input channels ${inChannels} and the output channels ${outChannels}`);
  }
}

function checkBias(op: string, bias: Tensor | null | undefined, outChannels: number): void {
  if (bias && (bias.ndim !== 1 || bias.shape[0] !== outChannels)) throw new RangeError(`${op}: bias ${fmt(bias.shape)} does not match ${outChannels} output channels`);
}

export interface Conv1dOptions {
  stride?: number;
  /** Zero padding per side, or 'same' (stride 1 only) or 'valid', as PyTorch. */
  padding?: number | 'same' | 'valid';
  dilation?: number;
  groups?: number;
}

/** 1-D convolution of x [N, C, L] with weight [O, C/groups, k] (torch.nn.functional.conv1d). */
export function conv1d(x: Tensor, weight: Tensor, bias?: Tensor | null, opts: Conv1dOptions = {}): Tensor {
  requireFloat('conv1d', x);
  requireFloat('conv1d', weight, 'weight');
  if (x.ndim !== 3) throw new RangeError(`conv1d: input must be [N, C, L] (rank 3), got ${fmt(x.shape)}`);
  if (weight.ndim !== 3) throw new RangeError(`conv1d: weight must be [out, in/groups, k], got ${fmt(weight.shape)}`);
  const groups = opts.groups ?? 1;
  checkGroups('conv1d', groups, x.shape[1], weight.shape[0]);
  if (x.shape[1] / groups !== weight.shape[1]) {
    throw new RangeError(`conv1d: input ${fmt(x.shape)} has ${x.shape[1]} channels but weight ${fmt(weight.shape)} expects ${weight.shape[1] * groups} (groups ${groups})`);
  }
  checkBias('conv1d', bias, weight.shape[0]);
  const one = (v: number | undefined, def: number, what: string, min: number): [number, number] => [1, pair(v ?? def, what, 'conv1d', min)[0]];
  const padding = opts.padding ?? 0;
  if (padding === 'same' && (opts.stride ?? 1) !== 1) throw new RangeError(`conv1d: padding='same' needs stride 1 (as PyTorch), got stride ${opts.stride}`);
  const y = conv2d(unsqueeze(x, 2), unsqueeze(weight, 2), bias, {
    stride: one(opts.stride, 1, 'stride', 1),
    padding: typeof padding === 'string' ? padding : [0, pair(padding, 'padding', 'conv1d', 0)[0]],
    dilation: one(opts.dilation, 1, 'dilation', 1),
    groups,
  });
  return squeeze(y, 2);
}

export interface ConvTranspose2dOptions {
  stride?: Pair;
  padding?: Pair;
  /** Extra rows/columns on the bottom/right of the output; each must be below the stride or the dilation. */
  outputPadding?: Pair;
  dilation?: Pair;
  groups?: number;
}

/**
 * 2-D transposed convolution of x [N, Cin, H, W] with weight [Cin, Cout/groups, kh, kw]
 * (torch.nn.functional.conv_transpose2d): the gradient of conv2d with respect to its input.
 * Output size (H-1)*stride - 2*padding + dilation*(k-1) + outputPadding + 1.
 */
export function convTranspose2d(x: Tensor, weight: Tensor, bias?: Tensor | null, opts: ConvTranspose2dOptions = {}): Tensor {
  const op = 'convTranspose2d';
  requireFloat(op, x);
  requireFloat(op, weight, 'weight');
  sameBackend(op, x, weight);
  if (x.ndim !== 4) throw new RangeError(`${op}: input must be NCHW (rank 4), got ${fmt(x.shape)}`);
  if (weight.ndim !== 4) throw new RangeError(`${op}: weight must be [in, out/groups, kh, kw], got ${fmt(weight.shape)}`);
  const [n, cin, h, w] = x.shape;
  const [wIn, outPerGroup, kh, kw] = weight.shape;
  const groups = opts.groups ?? 1;
  if (wIn !== cin) throw new RangeError(`${op}: input ${fmt(x.shape)} has ${cin} channels but weight ${fmt(weight.shape)} expects ${wIn}`);
  checkGroups(op, groups, cin, outPerGroup * groups);
  const cout = outPerGroup * groups;
  checkBias(op, bias, cout);
  const [sh, sw] = pair(opts.stride ?? 1, 'stride', op, 1);
  const [ph, pw] = pair(opts.padding ?? 0, 'padding', op, 0);
  const [dh, dw] = pair(opts.dilation ?? 1, 'dilation', op, 1);
  const [oph, opw] = pair(opts.outputPadding ?? 0, 'outputPadding', op, 0);
  if ((oph >= sh && oph >= dh) || (opw >= sw && opw >= dw)) {
    throw new RangeError(`${op}: outputPadding ${oph},${opw} must be smaller than either the stride ${sh},${sw} or the dilation ${dh},${dw}`);
  }
  const oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1;
  const ow = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1;
  if (oh <= 0 || ow <= 0) throw new RangeError(`${op}: input ${fmt(x.shape)} with kernel ${kh}x${kw}, stride ${sh},${sw} and padding ${ph},${pw} gives an empty output ${oh}x${ow}`);
  // col2im sums columns [N, Cout*kh*kw, H*W] into the output, reading H x W as the window grid.
  const g: Window2d = { n, c: outPerGroup, h: oh, w: ow, kh, kw, oh: h, ow: w, sh, sw, ph, pw, dh, dw };
  const cinPerGroup = cin / groups;
  const group = (xg: Tensor, wg: Tensor): Tensor => {
    const cols = mm(reshape(wg, [cinPerGroup, outPerGroup * kh * kw]), reshape(xg, [n, cinPerGroup, h * w]), true, false);
    return col2im(cols, g);
  };
  let y: Tensor;
  if (groups === 1) y = group(x, weight);
  else {
    const parts: Tensor[] = [];
    for (let i = 0; i < groups; i++) parts.push(group(narrow(x, 1, i * cinPerGroup, cinPerGroup), narrow(weight, 0, i * cinPerGroup, cinPerGroup)));
    y = concat(parts, 1);
  }
  return bias ? add(y, reshape(bias, [1, cout, 1, 1])) : y;
}
