/** Ready models: an MLP, a small ResNet-style CNN and a small Vision Transformer. */
import { getDefaultDtype, type DType } from '../tensor/dtype.js';
import type { Tensor } from '../tensor/tensor.js';
import { add, relu } from '../tensor/ops/elementwise.js';
import { concat, expand, flatten, narrow, reshape, transpose } from '../tensor/ops/shape.js';
import { dropout } from '../tensor/ops/nn.js';
import { MultiheadAttention } from './attention.js';
import { truncNormal } from './init.js';
import {
  AdaptiveAvgPool2d,
  BatchNorm2d,
  Conv2d,
  Dropout,
  Flatten,
  GELU,
  Identity,
  Layer,
  LayerNorm,
  Linear,
  ModuleList,
  ReLU,
  Sequential,
  Tanh,
} from './layers.js';
import { param, type Parameter } from './module.js';

export interface MlpOptions {
  activation?: 'relu' | 'tanh' | 'gelu';
  bias?: boolean;
  dropout?: number;
  dtype?: DType;
}

/**
 * Linear layers of the given sizes with an activation between them (none after the last):
 * `mlp([784, 256, 256, 10])`. A Sequential, so parameters are named `0.weight`, `2.weight`, ...
 */
export function mlp(sizes: number[], opts: MlpOptions = {}): Sequential {
  if (sizes.length < 2) throw new RangeError(`mlp: need at least [in, out], got ${JSON.stringify(sizes)}`);
  const seq = new Sequential();
  for (let i = 0; i + 1 < sizes.length; i++) {
    seq.append(new Linear(sizes[i], sizes[i + 1], { bias: opts.bias ?? true, dtype: opts.dtype }));
    if (i + 2 < sizes.length) {
      const act = opts.activation ?? 'relu';
      seq.append(act === 'relu' ? new ReLU() : act === 'tanh' ? new Tanh() : new GELU());
      if (opts.dropout) seq.append(new Dropout(opts.dropout));
    }
  }
  return seq;
}

/** conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (1x1 conv + BN when the shape changes), then ReLU. */
export class BasicBlock extends Layer {
  conv1: Conv2d;
  bn1: BatchNorm2d;
  conv2: Conv2d;
  bn2: BatchNorm2d;
  shortcut: Layer;
  constructor(inC: number, outC: number, stride = 1, dtype?: DType) {
    super();
    this.conv1 = this.registerModule('conv1', new Conv2d(inC, outC, 3, { stride, padding: 1, bias: false, dtype }));
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(outC, { dtype }));
    this.conv2 = this.registerModule('conv2', new Conv2d(outC, outC, 3, { padding: 1, bias: false, dtype }));
    this.bn2 = this.registerModule('bn2', new BatchNorm2d(outC, { dtype }));
    this.shortcut = this.registerModule(
      'shortcut',
      stride !== 1 || inC !== outC ? new Sequential(new Conv2d(inC, outC, 1, { stride, bias: false, dtype }), new BatchNorm2d(outC, { dtype })) : new Identity(),
    );
  }
  forward(x: Tensor): Tensor {
    const h = relu(this.bn1.forward(this.conv1.forward(x)));
    const y = this.bn2.forward(this.conv2.forward(h));
    return relu(add(y, this.shortcut.forward(x)));
  }
}

export interface ResNetSmallOptions {
  inChannels?: number;
  numClasses?: number;
  /** Channels of each stage; every stage after the first halves the resolution. Default [16, 32, 64]. */
  widths?: number[];
  blocksPerStage?: number;
  dtype?: DType;
}

/** A small ResNet for 28x28 or 32x32 images: stem conv, residual stages, global average pool, linear head. */
export function resnetSmall(opts: ResNetSmallOptions = {}): Sequential {
  const widths = opts.widths ?? [16, 32, 64];
  const dtype = opts.dtype;
  const inC = opts.inChannels ?? 1;
  const blocks = opts.blocksPerStage ?? 1;
  const stem = new Sequential(new Conv2d(inC, widths[0], 3, { padding: 1, bias: false, dtype }), new BatchNorm2d(widths[0], { dtype }), new ReLU());
  const net = new Sequential(stem);
  let c = widths[0];
  widths.forEach((w, s) => {
    for (let b = 0; b < blocks; b++) {
      net.append(new BasicBlock(c, w, s > 0 && b === 0 ? 2 : 1, dtype));
      c = w;
    }
  });
  net.append(new AdaptiveAvgPool2d(1));
  net.append(new Flatten());
  net.append(new Linear(c, opts.numClasses ?? 10, { dtype }));
  return net;
}

export interface VitOptions {
  imageSize?: number;
  patchSize?: number;
  inChannels?: number;
  numClasses?: number;
  dim?: number;
  depth?: number;
  heads?: number;
  /** Hidden size of each block's MLP as a multiple of dim. */
  mlpRatio?: number;
  dropout?: number;
  dtype?: DType;
}

/** Image [N, C, H, W] -> patch tokens [N, P, dim] by a strided convolution. */
export class PatchEmbedding extends Layer {
  proj: Conv2d;
  constructor(inChannels: number, dim: number, patchSize: number, dtype?: DType) {
    super();
    this.proj = this.registerModule('proj', new Conv2d(inChannels, dim, patchSize, { stride: patchSize, dtype }));
  }
  forward(x: Tensor): Tensor {
    return transpose(flatten(this.proj.forward(x), 2), 1, 2);
  }
}

export class VitMlp extends Layer {
  fc1: Linear;
  act: GELU;
  fc2: Linear;
  constructor(
    dim: number,
    hidden: number,
    readonly p: number,
    dtype?: DType,
  ) {
    super();
    this.fc1 = this.registerModule('fc1', new Linear(dim, hidden, { dtype }));
    this.act = this.registerModule('act', new GELU());
    this.fc2 = this.registerModule('fc2', new Linear(hidden, dim, { dtype }));
  }
  forward(x: Tensor): Tensor {
    const h = dropout(this.act.forward(this.fc1.forward(x)), this.p, this.training);
    return dropout(this.fc2.forward(h), this.p, this.training);
  }
}

/** Pre-norm transformer encoder block: x + attn(norm1(x)), then x + mlp(norm2(x)). */
export class EncoderBlock extends Layer {
  norm1: LayerNorm;
  attn: MultiheadAttention;
  norm2: LayerNorm;
  mlp: VitMlp;
  constructor(dim: number, heads: number, mlpRatio: number, p: number, dtype?: DType) {
    super();
    this.norm1 = this.registerModule('norm1', new LayerNorm(dim, { dtype }));
    this.attn = this.registerModule('attn', new MultiheadAttention(dim, heads, { batchFirst: true, dropout: p, dtype }));
    this.norm2 = this.registerModule('norm2', new LayerNorm(dim, { dtype }));
    this.mlp = this.registerModule('mlp', new VitMlp(dim, Math.round(dim * mlpRatio), p, dtype));
  }
  forward(x: Tensor): Tensor {
    const h = this.norm1.forward(x);
    x = add(x, this.attn.forward(h, h, h, { needWeights: false })[0]);
    return add(x, this.mlp.forward(this.norm2.forward(x)));
  }
}

/** A small Vision Transformer: patch embedding, class token, learned positions, encoder blocks, head on the class token. */
export class VisionTransformer extends Layer {
  patchEmbed: PatchEmbedding;
  clsToken: Parameter;
  posEmbed: Parameter;
  blocks: ModuleList<EncoderBlock>;
  norm: LayerNorm;
  head: Linear;
  readonly numPatches: number;
  readonly dim: number;
  readonly p: number;

  constructor(opts: VitOptions = {}) {
    super();
    const imageSize = opts.imageSize ?? 28;
    const patch = opts.patchSize ?? 7;
    if (imageSize % patch !== 0) throw new RangeError(`vit: patchSize ${patch} must divide imageSize ${imageSize}`);
    const dim = (this.dim = opts.dim ?? 64);
    const dtype = opts.dtype ?? getDefaultDtype();
    this.p = opts.dropout ?? 0;
    this.numPatches = (imageSize / patch) ** 2;
    this.patchEmbed = this.registerModule('patch_embed', new PatchEmbedding(opts.inChannels ?? 1, dim, patch, dtype));
    this.clsToken = this.registerParameter('cls_token', param(truncNormal([1, 1, dim], 0.02, { dtype })));
    this.posEmbed = this.registerParameter('pos_embed', param(truncNormal([1, this.numPatches + 1, dim], 0.02, { dtype })));
    const blocks: EncoderBlock[] = [];
    for (let i = 0; i < (opts.depth ?? 12); i++) blocks.push(new EncoderBlock(dim, opts.heads ?? 4, opts.mlpRatio ?? 2, this.p, dtype));
    this.blocks = this.registerModule('blocks', new ModuleList(blocks));
    this.norm = this.registerModule('norm', new LayerNorm(dim, { dtype }));
    this.head = this.registerModule('head', new Linear(dim, opts.numClasses ?? 10, { dtype }));
  }

  forward(x: Tensor): Tensor {
    const tokens = this.patchEmbed.forward(x); // [N, P, dim]
    const n = tokens.shape[0];
    const cls = expand(this.clsToken, [n, 1, this.dim]);
    let h = add(concat([cls, tokens], 1), this.posEmbed);
    h = dropout(h, this.p, this.training);
    for (const b of this.blocks) h = b.forward(h);
    h = this.norm.forward(h);
    return this.head.forward(reshape(narrow(h, 1, 0, 1), [n, this.dim]));
  }
}

export function vit(opts: VitOptions = {}): VisionTransformer {
  return new VisionTransformer(opts);
}
