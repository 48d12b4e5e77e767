/** torch.nn.MultiheadAttention: packed input projection, scaled dot-product attention per head, output projection. */
import { getDefaultDtype } from '../tensor/dtype.js';
import { full } from '../tensor/creation.js';
import { fmt } from '../tensor/shape.js';
import type { Tensor } from '../tensor/tensor.js';
import { add, cast, mul, where } from '../tensor/ops/elementwise.js';
import { mean, softmax } from '../tensor/ops/reduce.js';
import { narrow, permute, reshape, transpose } from '../tensor/ops/shape.js';
import { linear, mm, matmul } from '../tensor/ops/linalg.js';
import { dropout } from '../tensor/ops/nn.js';
import { xavierUniform } from './init.js';
import { Linear } from './layers.js';
import { Module, param, type ModuleOptions, type Parameter } from './module.js';

export interface MultiheadAttentionOptions extends ModuleOptions {
  dropout?: number;
  bias?: boolean;
  /** Inputs are [N, L, E] instead of [L, N, E]. Default false, as torch. */
  batchFirst?: boolean;
}

export interface AttentionCallOptions {
  /** [L, S] bool (true = may not attend) or float (added to the scores). */
  attnMask?: Tensor | null;
  /** [N, S] bool: true marks padding keys to ignore. */
  keyPaddingMask?: Tensor | null;
  needWeights?: boolean;
  averageAttnWeights?: boolean;
}

export class MultiheadAttention extends Module {
  inProjWeight: Parameter;
  inProjBias: Parameter | null;
  outProj: Linear;
  readonly headDim: number;
  readonly dropoutP: number;
  readonly batchFirst: boolean;

  constructor(
    readonly embedDim: number,
    readonly numHeads: number,
    opts: MultiheadAttentionOptions = {},
  ) {
    super();
    if (!Number.isInteger(embedDim) || !Number.isInteger(numHeads) || numHeads <= 0 || embedDim % numHeads !== 0) {
      throw new RangeError(`MultiheadAttention: embedDim ${embedDim} must be divisible by numHeads ${numHeads}`);
    }
    const dtype = opts.dtype ?? getDefaultDtype();
    const bias = opts.bias ?? true;
    this.headDim = embedDim / numHeads;
    this.dropoutP = opts.dropout ?? 0;
    this.batchFirst = opts.batchFirst ?? false;
    this.inProjWeight = this.registerParameter('in_proj_weight', param(xavierUniform([3 * embedDim, embedDim], { dtype })));
    this.inProjBias = this.registerParameter('in_proj_bias', bias ? param(full([3 * embedDim], 0, { dtype })) : null);
    this.outProj = this.registerModule('out_proj', new Linear(embedDim, embedDim, { bias, dtype }));
    if (this.outProj.bias) this.outProj.bias.backend.fill(this.outProj.bias.storage, 0);
  }

  /** Returns [output, averaged attention weights (or per head), or null when needWeights is false]. */
  forward(query: Tensor, key: Tensor, value: Tensor, opts: AttentionCallOptions = {}): [Tensor, Tensor | null] {
    const E = this.embedDim;
    const H = this.numHeads;
    const d = this.headDim;
    for (const [n, t] of [['query', query], ['key', key], ['value', value]] as const) {
      if (t.ndim !== 3 || t.shape[2] !== E) throw new RangeError(`MultiheadAttention: ${n} must be ${this.batchFirst ? '[N, L, E]' : '[L, N, E]'} with E = ${E}, got ${fmt(t.shape)}`);
    }
    const bf = (t: Tensor) => (this.batchFirst ? t : transpose(t, 0, 1));
    const q0 = bf(query);
    const k0 = bf(key);
    const v0 = bf(value);
    const [N, L] = q0.shape;
    const S = k0.shape[1];
    let q: Tensor;
    let k: Tensor;
    let v: Tensor;
    const w = this.inProjWeight;
    const b = this.inProjBias;
    if (query === key && key === value) {
      const qkv = linear(q0, w, b); // [N, L, 3E]
      q = narrow(qkv, 2, 0, E);
      k = narrow(qkv, 2, E, E);
      v = narrow(qkv, 2, 2 * E, E);
    } else {
      const part = (x: Tensor, i: number) => linear(x, narrow(w, 0, i * E, E), b ? narrow(b, 0, i * E, E) : null);
      q = part(q0, 0);
      k = part(k0, 1);
      v = part(v0, 2);
    }
    const heads = (t: Tensor, len: number) => permute(reshape(t, [N, len, H, d]), [0, 2, 1, 3]); // [N, H, len, d]
    const qh = heads(q, L);
    const kh = heads(k, S);
    const vh = heads(v, S);
    let scores = mul(mm(qh, kh, false, true), 1 / Math.sqrt(d)); // [N, H, L, S]
    if (opts.attnMask) {
      const m = opts.attnMask;
      scores = m.dtype === 'bool' ? where(m, -Infinity, scores) : add(scores, cast(m, scores.dtype));
    }
    if (opts.keyPaddingMask) {
      const m = opts.keyPaddingMask;
      if (m.dtype !== 'bool' || m.ndim !== 2 || m.shape[0] !== N || m.shape[1] !== S) {
        throw new RangeError(`MultiheadAttention: keyPaddingMask must be bool [${N}, ${S}], got ${m.dtype} ${fmt(m.shape)}`);
      }
      scores = where(reshape(m, [N, 1, 1, S]), -Infinity, scores);
    }
    let attn = softmax(scores, -1);
    const weightsOut = opts.needWeights ?? true ? ((opts.averageAttnWeights ?? true) ? mean(attn, 1) : attn) : null;
    if (this.dropoutP > 0) attn = dropout(attn, this.dropoutP, this.training);
    const ctx = matmul(attn, vh); // [N, H, L, d]
    const merged = reshape(permute(ctx, [0, 2, 1, 3]), [N, L, E]);
    const out = this.outProj.forward(merged);
    return [this.batchFirst ? out : transpose(out, 0, 1), weightsOut];
  }
}
