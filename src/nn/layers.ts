/**
 * Layers with PyTorch's parameter layouts, names and default initializations.
 */
import { getDefaultDtype, type DType } from '../tensor/dtype.js';
import { full, tensor } from '../tensor/creation.js';
import { noGrad } from '../tensor/graph.js';
import { captureHooks } from '../compile/hooks.js';
import { fmt } from '../tensor/shape.js';
import { Tensor, tidy } from '../tensor/tensor.js';
import { add, gelu, mul, relu, sigmoid, tanh, where } from '../tensor/ops/elementwise.js';
import { softmax } from '../tensor/ops/reduce.js';
import { flatten } from '../tensor/ops/shape.js';
import { linear } from '../tensor/ops/linalg.js';
import { dropout, embedding } from '../tensor/ops/nn.js';
import { batchNormEval, batchNormRunning, batchNormTrain, layerNorm } from '../tensor/ops/normalization.js';
import { adaptiveAvgPool2d, avgPool2d, conv2d, maxPool2d, type AvgPool2dOptions } from '../tensor/ops/window.js';
import { conv1d, convTranspose2d } from '../tensor/ops/conv.js';
import { interpolate, type InterpolateOptions } from '../tensor/ops/interpolate.js';
import { groupNorm } from '../tensor/ops/normalization.js';
import { defaultBias, defaultWeight, normal } from './init.js';
import { Module, param, runningStatsFrozen, type ModuleOptions, type Parameter } from './module.js';

type Pair = number | [number, number];

/** A module whose forward maps one tensor to one tensor (what Sequential chains). */
export abstract class Layer extends Module {
  abstract override forward(x: Tensor): Tensor;
}

function dtypeOf(opts: ModuleOptions): DType {
  return opts.dtype ?? getDefaultDtype();
}

export class Identity extends Layer {
  forward(x: Tensor): Tensor {
    return x;
  }
}

/** y = x Wᵀ + b with weight [out, in] (torch.nn.Linear). */
export class Linear extends Layer {
  weight: Parameter;
  bias: Parameter | null;
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: ModuleOptions & { bias?: boolean } = {},
  ) {
    super();
    positiveInt('Linear', 'inFeatures', inFeatures);
    positiveInt('Linear', 'outFeatures', outFeatures);
    const dtype = dtypeOf(opts);
    this.weight = this.registerParameter('weight', param(defaultWeight([outFeatures, inFeatures], { dtype })));
    this.bias = this.registerParameter('bias', opts.bias ?? true ? param(defaultBias(outFeatures, inFeatures, { dtype })) : null);
  }
  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }
  protected override extraRepr(): string {
    return `inFeatures=${this.inFeatures}, outFeatures=${this.outFeatures}, bias=${this.bias !== null}`;
  }
}

export interface Conv2dOptions extends ModuleOptions {
  stride?: Pair;
  /** Zero padding per side, or 'same' (stride 1 only) or 'valid', as PyTorch. */
  padding?: Pair | 'same' | 'valid';
  dilation?: Pair;
  groups?: number;
  bias?: boolean;
}

/** 2-D convolution with weight [out, in/groups, kh, kw] (torch.nn.Conv2d). */
export class Conv2d extends Layer {
  weight: Parameter;
  bias: Parameter | null;
  readonly kernelSize: [number, number];
  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    kernelSize: Pair,
    readonly opts: Conv2dOptions = {},
  ) {
    super();
    const groups = convGroups('Conv2d', inChannels, outChannels, opts.groups);
    this.kernelSize = kernelPair(kernelSize);
    const dtype = dtypeOf(opts);
    const shape = [outChannels, inChannels / groups, ...this.kernelSize];
    const fanIn = (inChannels / groups) * this.kernelSize[0] * this.kernelSize[1];
    this.weight = this.registerParameter('weight', param(defaultWeight(shape, { dtype })));
    this.bias = this.registerParameter('bias', opts.bias ?? true ? param(defaultBias(outChannels, fanIn, { dtype })) : null);
  }
  forward(x: Tensor): Tensor {
    const { stride, padding, dilation, groups } = this.opts;
    return conv2d(x, this.weight, this.bias, { stride, padding, dilation, groups });
  }
  protected override extraRepr(): string {
    return `${this.inChannels}, ${this.outChannels}, kernelSize=${this.kernelSize.join('x')}`;
  }
}

export interface Conv1dOptions extends ModuleOptions {
  stride?: number;
  padding?: number | 'same' | 'valid';
  dilation?: number;
  groups?: number;
  bias?: boolean;
}

/** 1-D convolution with weight [out, in/groups, k] (torch.nn.Conv1d). */
export class Conv1d extends Layer {
  weight: Parameter;
  bias: Parameter | null;
  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernelSize: number,
    readonly opts: Conv1dOptions = {},
  ) {
    super();
    const groups = convGroups('Conv1d', inChannels, outChannels, opts.groups);
    positiveInt('Conv1d', 'kernelSize', kernelSize);
    const dtype = dtypeOf(opts);
    this.weight = this.registerParameter('weight', param(defaultWeight([outChannels, inChannels / groups, kernelSize], { dtype })));
    this.bias = this.registerParameter('bias', opts.bias ?? true ? param(defaultBias(outChannels, (inChannels / groups) * kernelSize, { dtype })) : null);
  }
  forward(x: Tensor): Tensor {
    const { stride, padding, dilation, groups } = this.opts;
    return conv1d(x, this.weight, this.bias, { stride, padding, dilation, groups });
  }
  protected override extraRepr(): string {
    return `${this.inChannels}, ${this.outChannels}, kernelSize=${this.kernelSize}`;
  }
}

export interface ConvTranspose2dOptions extends ModuleOptions {
  stride?: Pair;
  padding?: Pair;
  outputPadding?: Pair;
  dilation?: Pair;
  groups?: number;
  bias?: boolean;
}

/** 2-D transposed convolution with weight [in, out/groups, kh, kw] (torch.nn.ConvTranspose2d). */
export class ConvTranspose2d extends Layer {
  weight: Parameter;
  bias: Parameter | null;
  readonly kernelSize: [number, number];
  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    kernelSize: Pair,
    readonly opts: ConvTranspose2dOptions = {},
  ) {
    super();
    const groups = convGroups('ConvTranspose2d', inChannels, outChannels, opts.groups);
    this.kernelSize = kernelPair(kernelSize);
    const dtype = dtypeOf(opts);
    // PyTorch takes fan_in from dim 1 of this layout too: out/groups * kh * kw.
    const fanIn = (outChannels / groups) * this.kernelSize[0] * this.kernelSize[1];
    this.weight = this.registerParameter('weight', param(defaultWeight([inChannels, outChannels / groups, ...this.kernelSize], { dtype })));
    this.bias = this.registerParameter('bias', opts.bias ?? true ? param(defaultBias(outChannels, fanIn, { dtype })) : null);
  }
  forward(x: Tensor): Tensor {
    const { stride, padding, outputPadding, dilation, groups } = this.opts;
    return convTranspose2d(x, this.weight, this.bias, { stride, padding, outputPadding, dilation, groups });
  }
  protected override extraRepr(): string {
    return `${this.inChannels}, ${this.outChannels}, kernelSize=${this.kernelSize.join('x')}`;
  }
}

/** A lookup table [numEmbeddings, embeddingDim] drawn from N(0, 1), the padding row zero (torch.nn.Embedding). */
export class Embedding extends Layer {
  weight: Parameter;
  readonly paddingIdx: number | null;
  constructor(
    readonly numEmbeddings: number,
    readonly embeddingDim: number,
    opts: ModuleOptions & { paddingIdx?: number | null } = {},
  ) {
    super();
    positiveInt('Embedding', 'numEmbeddings', numEmbeddings);
    positiveInt('Embedding', 'embeddingDim', embeddingDim);
    const dtype = dtypeOf(opts);
    const pad = opts.paddingIdx ?? null;
    if (pad !== null && (!Number.isInteger(pad) || pad < -numEmbeddings || pad >= numEmbeddings)) {
      throw new RangeError(`Embedding: paddingIdx ${pad} must be an integer in [-${numEmbeddings}, ${numEmbeddings})`);
    }
    this.paddingIdx = pad === null ? null : pad < 0 ? pad + numEmbeddings : pad;
    let w = normal([numEmbeddings, embeddingDim], 0, 1, { dtype });
    if (this.paddingIdx !== null) {
      // PyTorch fills the padding row with zeros (+0: a multiply by 0 would leave -0 where the draw was negative).
      const keep = new Uint8Array(numEmbeddings).fill(1);
      keep[this.paddingIdx] = 0;
      w = noGrad(() => tidy(() => where(tensor(keep, { shape: [numEmbeddings, 1], dtype: 'bool' }), w, 0)));
    }
    this.weight = this.registerParameter('weight', param(w));
  }
  forward(indices: Tensor): Tensor {
    return embedding(indices, this.weight, this.paddingIdx);
  }
  protected override extraRepr(): string {
    return `${this.numEmbeddings}, ${this.embeddingDim}${this.paddingIdx === null ? '' : `, paddingIdx=${this.paddingIdx}`}`;
  }
}

/** Group normalization over [N, C, *] with per-channel weight and bias (torch.nn.GroupNorm). */
export class GroupNorm extends Layer {
  weight: Parameter | null;
  bias: Parameter | null;
  constructor(
    readonly numGroups: number,
    readonly numChannels: number,
    readonly opts: ModuleOptions & { eps?: number; affine?: boolean } = {},
  ) {
    super();
    positiveInt('GroupNorm', 'numGroups', numGroups);
    positiveInt('GroupNorm', 'numChannels', numChannels);
    if (numChannels % numGroups !== 0) throw new RangeError(`GroupNorm: numGroups ${numGroups} must divide numChannels ${numChannels}`);
    const dtype = dtypeOf(opts);
    const affine = opts.affine ?? true;
    this.weight = this.registerParameter('weight', affine ? param(full([numChannels], 1, { dtype })) : null);
    this.bias = this.registerParameter('bias', affine ? param(full([numChannels], 0, { dtype })) : null);
  }
  forward(x: Tensor): Tensor {
    return groupNorm(x, this.numGroups, this.weight, this.bias, this.opts.eps ?? 1e-5);
  }
  protected override extraRepr(): string {
    return `${this.numGroups}, ${this.numChannels}, eps=${this.opts.eps ?? 1e-5}`;
  }
}

/** Resizes NCHW input (torch.nn.Upsample): nearest or bilinear, to a size or by a scale factor. */
export class Upsample extends Layer {
  constructor(readonly opts: InterpolateOptions) {
    super();
  }
  forward(x: Tensor): Tensor {
    return interpolate(x, this.opts);
  }
}

export class MaxPool2d extends Layer {
  constructor(
    readonly kernelSize: Pair,
    readonly opts: { stride?: Pair | null; padding?: Pair; dilation?: Pair; ceilMode?: boolean } = {},
  ) {
    super();
  }
  forward(x: Tensor): Tensor {
    return maxPool2d(x, this.kernelSize, this.opts);
  }
}

export class AvgPool2d extends Layer {
  constructor(
    readonly kernelSize: Pair,
    readonly opts: AvgPool2dOptions = {},
  ) {
    super();
  }
  forward(x: Tensor): Tensor {
    return avgPool2d(x, this.kernelSize, this.opts);
  }
}

export class AdaptiveAvgPool2d extends Layer {
  constructor(readonly outputSize: Pair) {
    super();
  }
  forward(x: Tensor): Tensor {
    return adaptiveAvgPool2d(x, this.outputSize);
  }
}

export class Flatten extends Layer {
  constructor(
    readonly startDim = 1,
    readonly endDim = -1,
  ) {
    super();
  }
  forward(x: Tensor): Tensor {
    return flatten(x, this.startDim, this.endDim);
  }
}

export class ReLU extends Layer {
  forward(x: Tensor): Tensor {
    return relu(x);
  }
}

export class GELU extends Layer {
  constructor(readonly approximate: 'none' | 'tanh' = 'none') {
    super();
  }
  forward(x: Tensor): Tensor {
    return gelu(x, this.approximate);
  }
}

export class Tanh extends Layer {
  forward(x: Tensor): Tensor {
    return tanh(x);
  }
}

export class Sigmoid extends Layer {
  forward(x: Tensor): Tensor {
    return sigmoid(x);
  }
}

export class Softmax extends Layer {
  constructor(readonly dim = -1) {
    super();
  }
  forward(x: Tensor): Tensor {
    return softmax(x, this.dim);
  }
}

/** Inverted dropout in training mode, identity in eval mode; masks come from the seeded generator. */
export class Dropout extends Layer {
  constructor(readonly p = 0.5) {
    super();
    if (!(p >= 0 && p <= 1)) throw new RangeError(`Dropout: p must be in [0, 1], got ${p}`);
  }
  forward(x: Tensor): Tensor {
    return dropout(x, this.p, this.training);
  }
}

export class LayerNorm extends Layer {
  weight: Parameter | null;
  bias: Parameter | null;
  readonly normalizedShape: number[];
  constructor(
    normalizedShape: number | number[],
    readonly opts: ModuleOptions & { eps?: number; elementwiseAffine?: boolean; bias?: boolean } = {},
  ) {
    super();
    this.normalizedShape = typeof normalizedShape === 'number' ? [normalizedShape] : normalizedShape.slice();
    const dtype = dtypeOf(opts);
    const affine = opts.elementwiseAffine ?? true;
    this.weight = this.registerParameter('weight', affine ? param(full(this.normalizedShape, 1, { dtype })) : null);
    this.bias = this.registerParameter('bias', affine && (opts.bias ?? true) ? param(full(this.normalizedShape, 0, { dtype })) : null);
  }
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.normalizedShape, this.weight, this.bias, this.opts.eps ?? 1e-5);
  }
}

export interface BatchNormOptions extends ModuleOptions {
  eps?: number;
  /** Weight of the new batch statistic in the running average; null for a cumulative average. Default 0.1. */
  momentum?: number | null;
  affine?: boolean;
  trackRunningStats?: boolean;
}

/**
 * Batch normalization over the channel dim 1 (torch.nn.BatchNorm1d/2d). In training mode it
 * normalizes with the batch statistics (biased variance) and updates the running statistics
 * (unbiased variance) unless they are frozen: sharpness-aware optimizers freeze them while the
 * weights are perturbed, so only the first (clean) forward pass of a step updates them.
 */
abstract class BatchNormBase extends Layer {
  weight: Parameter | null;
  bias: Parameter | null;
  runningMean: Tensor | null;
  runningVar: Tensor | null;
  numBatchesTracked: Tensor | null;
  readonly eps: number;
  readonly momentum: number | null;
  private batches = 0;

  constructor(
    readonly numFeatures: number,
    opts: BatchNormOptions,
  ) {
    super();
    positiveInt(this.constructor.name, 'numFeatures', numFeatures);
    const dtype = dtypeOf(opts);
    this.eps = opts.eps ?? 1e-5;
    this.momentum = opts.momentum === undefined ? 0.1 : opts.momentum;
    const affine = opts.affine ?? true;
    this.weight = this.registerParameter('weight', affine ? param(full([numFeatures], 1, { dtype })) : null);
    this.bias = this.registerParameter('bias', affine ? param(full([numFeatures], 0, { dtype })) : null);
    const track = opts.trackRunningStats ?? true;
    this.runningMean = this.registerBuffer('running_mean', track ? full([numFeatures], 0, { dtype }) : null);
    this.runningVar = this.registerBuffer('running_var', track ? full([numFeatures], 1, { dtype }) : null);
    this.numBatchesTracked = this.registerBuffer('num_batches_tracked', track ? full([], 0, { dtype: 'int32' }) : null);
  }

  protected abstract checkInput(x: Tensor): void;

  forward(x: Tensor): Tensor {
    this.checkInput(x);
    const c = this.numFeatures;
    if (!this.training && this.runningMean && this.runningVar) return batchNormEval(x, this.runningMean, this.runningVar, this.weight, this.bias, this.eps);
    const n = x.size / c;
    const stats = batchNormTrain(x, this.weight, this.bias, this.eps, this.training);
    // An empty batch leaves the running statistics as they are (as PyTorch).
    if (this.training && n > 0 && this.runningMean && this.runningVar && !runningStatsFrozen()) this.updateRunning(stats, n);
    return stats.y;
  }

  private updateRunning(stats: { pairs: Tensor; variance: Tensor }, n: number): void {
    noGrad(() => tidy(() => {
      // Captured steps advance the count on replay; the cumulative average (momentum null) depends on it.
      captureHooks.hostState?.('BatchNorm.batches', this.momentum == null ? () => this.batches : null, () => { this.batches++; });
      this.batches++;
      // The running variance is the unbiased one, as PyTorch's.
      const [newMean, newVar, count] = batchNormRunning(this.runningMean!, this.runningVar!, this.numBatchesTracked, stats, n, this.momentum ?? 1 / this.batches);
      this.setBuffer('running_mean', newMean);
      this.setBuffer('running_var', newVar);
      if (count) this.setBuffer('num_batches_tracked', count);
    }));
  }

  protected override extraRepr(): string {
    return `${this.numFeatures}, eps=${this.eps}, momentum=${this.momentum}`;
  }
}

/** BatchNorm over [N, C] or [N, C, L]. */
export class BatchNorm1d extends BatchNormBase {
  constructor(numFeatures: number, opts: BatchNormOptions = {}) {
    super(numFeatures, opts);
  }
  protected checkInput(x: Tensor): void {
    if ((x.ndim !== 2 && x.ndim !== 3) || x.shape[1] !== this.numFeatures) {
      throw new RangeError(`BatchNorm1d: expected input [N, ${this.numFeatures}] or [N, ${this.numFeatures}, L], got ${fmt(x.shape)}`);
    }
  }
}

/** BatchNorm over [N, C, H, W]. */
export class BatchNorm2d extends BatchNormBase {
  constructor(numFeatures: number, opts: BatchNormOptions = {}) {
    super(numFeatures, opts);
  }
  protected checkInput(x: Tensor): void {
    if (x.ndim !== 4 || x.shape[1] !== this.numFeatures) throw new RangeError(`BatchNorm2d: expected input [N, ${this.numFeatures}, H, W], got ${fmt(x.shape)}`);
  }
}

/** Children named '0', '1', ... applied in order. */
export class Sequential extends Layer {
  private readonly layers: Layer[] = [];
  constructor(...layers: Layer[]) {
    super();
    for (const l of layers) this.append(l);
  }
  append(l: Layer): this {
    this.registerModule(String(this.layers.length), l);
    this.layers.push(l);
    return this;
  }
  at(i: number): Layer {
    const l = this.layers[i < 0 ? i + this.layers.length : i];
    if (!l) throw new RangeError(`Sequential: no layer ${i} (length ${this.layers.length})`);
    return l;
  }
  get length(): number {
    return this.layers.length;
  }
  [Symbol.iterator](): IterableIterator<Layer> {
    return this.layers[Symbol.iterator]();
  }
  forward(x: Tensor): Tensor {
    for (const l of this.layers) x = l.forward(x);
    return x;
  }
}

/** A list of modules registered under '0', '1', ... (torch.nn.ModuleList); it has no forward of its own. */
export class ModuleList<M extends Module = Module> extends Module {
  private readonly items: M[] = [];
  constructor(items: M[] = []) {
    super();
    for (const m of items) this.append(m);
  }
  append(m: M): this {
    this.registerModule(String(this.items.length), m);
    this.items.push(m);
    return this;
  }
  at(i: number): M {
    return this.items[i < 0 ? i + this.items.length : i];
  }
  get length(): number {
    return this.items.length;
  }
  [Symbol.iterator](): IterableIterator<M> {
    return this.items[Symbol.iterator]();
  }
  forward(): never {
    throw new Error('ModuleList has no forward; call its items');
  }
}

function positiveInt(layer: string, what: string, v: number): void {
  if (!Number.isInteger(v) || v <= 0) throw new RangeError(`${layer}: ${what} must be a positive integer, got ${v}`);
}

/** A convolution layer's channel counts checked as torch.nn's _ConvNd does; returns the groups (default 1). */
function convGroups(layer: string, inChannels: number, outChannels: number, groups = 1): number {
  positiveInt(layer, 'inChannels', inChannels);
  positiveInt(layer, 'outChannels', outChannels);
  if (inChannels % groups !== 0 || outChannels % groups !== 0) throw new RangeError(`${layer}: groups ${groups} must divide inChannels ${inChannels} and outChannels ${outChannels}`);
  return groups;
}

/** A kernel size given as one number or [kh, kw], as [kh, kw]. */
function kernelPair(k: Pair): [number, number] {
  return typeof k === 'number' ? [k, k] : [k[0], k[1]];
}
