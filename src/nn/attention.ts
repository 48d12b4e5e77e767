/** torch.nn.MultiheadAttention: packed input projection, scaled dot-product attention per head, output projection. */
import { getDefaultDtype, isFloat } from '../tensor/dtype.js';
import { full } from '../tensor/creation.js';
import { fmt } from '../tensor/shape.js';
import { Tensor } from '../tensor/tensor.js';
import { isGradEnabled, record, vjpRegistry } from '../tensor/graph.js';
import type { AttentionLayout } from '../kernels/backend.js';
import { add, cast, mul, sub, where } from '../tensor/ops/elementwise.js';
import { mean, softmax, sum } from '../tensor/ops/reduce.js';
import { concat, narrow, permute, reshape, transpose } from '../tensor/ops/shape.js';
import { linear, mm, matmul } from '../tensor/ops/linalg.js';
import { dropout } from '../tensor/ops/nn.js';
import { xavierUniform } from './init.js';
import { Linear } from './layers.js';
import { Module, param, type ModuleOptions, type Parameter } from './module.js';

/** [N, len, H * d] -> [N, H, len, d]: each head's rows as a matrix. */
function splitHeads(t: Tensor, heads: number): Tensor {
  const [n, len, e] = t.shape;
  return permute(reshape(t, [n, len, heads, e / heads]), [0, 2, 1, 3]);
}
/** The inverse of splitHeads: [N, H, len, d] -> [N, len, H * d]. */
function mergeHeads(t: Tensor): Tensor {
  const [n, heads, len, d] = t.shape;
  return reshape(permute(t, [0, 2, 1, 3]), [n, len, heads * d]);
}
/** q, k and v [N, len, E] of attention's inputs: [q, k, v] as given, or the thirds of a packed qkv [N, L, 3E]. */
function unpack(inputs: readonly Tensor[]): Tensor[] {
  if (inputs.length === 3) return inputs.slice();
  const e = inputs[0].shape[2] / 3;
  return [0, 1, 2].map((i) => narrow(inputs[0], 2, i * e, e));
}

/**
 * Scaled dot-product attention, softmax(scale * Q K^T) V per head, with the heads side by side
 * along the feature dim (as MultiheadAttention's projections leave them): `inputs` is [q, k, v]
 * with q [N, L, E] and k, v [N, S, E], or [qkv], one packed self-attention projection
 * [N, L, 3E] holding q, k and v side by side; the result is [N, L, E], heads side by side.
 * scale defaults to 1 / sqrt(E / heads).
 *
 * Where the backend has the attention kernels (cpu, wasm, and WebGPU on a CPU-emulated adapter,
 * whose emulated-GPU family installs them) it is one fused op: each head is read in place through
 * its row stride (no head permutes, no slicing of a packed projection) and its gradient is one
 * kernel over the saved probabilities. Elsewhere (WebGPU on a real GPU, untimed so far) it is the
 * composition of head permutes, matmuls and softmax, with the same values up to rounding.
 */
export function scaledDotProductAttention(inputs: readonly Tensor[], heads: number, scale?: number): Tensor {
  if (inputs.length !== 1 && inputs.length !== 3) throw new RangeError(`scaledDotProductAttention: expected [q, k, v] or [qkv], got ${inputs.length} tensors`);
  const [first] = inputs;
  const packed = inputs.length === 1;
  const e = packed ? first.shape[2] / 3 : first.shape[2];
  for (const t of inputs) {
    if (t.ndim !== 3) throw new RangeError(`scaledDotProductAttention: inputs must be [N, len, E], got ${fmt(t.shape)}`);
    if (!isFloat(t.dtype) || t.dtype !== first.dtype) throw new TypeError(`scaledDotProductAttention: inputs must share one float dtype, got ${inputs.map((x) => x.dtype).join(', ')}`);
    if (t.backend !== first.backend) throw new Error(`scaledDotProductAttention: inputs live on different backends`);
  }
  if (!Number.isInteger(heads) || heads <= 0 || !Number.isInteger(e) || e % heads !== 0) {
    throw new RangeError(`scaledDotProductAttention: ${packed ? `the packed width ${first.shape[2]} must be 3 * E and ` : ''}E = ${e} must be divisible by heads = ${heads}`);
  }
  const [n, l] = first.shape;
  const s = packed ? l : inputs[1].shape[1];
  if (!packed) {
    const [, k, v] = inputs;
    if (k.shape[0] !== n || v.shape[0] !== n || k.shape[1] !== v.shape[1] || k.shape[2] !== e || v.shape[2] !== e) {
      throw new RangeError(`scaledDotProductAttention: q ${fmt(first.shape)}, k ${fmt(k.shape)} and v ${fmt(v.shape)} must be [N, L, E], [N, S, E], [N, S, E]`);
    }
  }
  const d = e / heads;
  const sc = scale ?? 1 / Math.sqrt(d);
  const backend = first.backend;
  if (!backend.attention || !backend.attentionBackward || n * l * s * d === 0) {
    const [q, k, v] = unpack(inputs).map((t) => splitHeads(t, heads));
    return mergeHeads(mm(softmax(mul(mm(q, k, false, true), sc), -1), v));
  }
  const row = packed ? 3 * e : e;
  const layout: AttentionLayout = { n, heads, l, s, d, scale: sc, q: { offset: 0, row }, k: { offset: packed ? e : 0, row }, v: { offset: packed ? 2 * e : 0, row } };
  const [qs, ks, vs] = packed ? [first.storage, first.storage, first.storage] : inputs.map((t) => t.storage);
  const out = Tensor.uninit([n, l, e], first.dtype, backend);
  const probs = Tensor.uninit([n, heads, l, s], first.dtype, backend);
  backend.attention(qs, ks, vs, out.overwriteStorage(), probs.overwriteStorage(), layout);
  const res = record('attention', out, inputs.slice(), { layout }, [probs]);
  // Not recorded (no gradient wanted): nothing will read the probabilities.
  if (!res.gradFn) probs.dispose();
  return res;
}

/**
 * The gradient of the fused attention. Without graph recording, one kernel over the saved
 * probabilities writes dq, dk and dv (into one tensor for a packed input). When recording
 * (double backward), the same formulas in tensor ops with the probabilities recomputed from q
 * and k, so that their dependence on q and k is differentiated too:
 * dP = dO V^T, dS = P * (dP - rowsum(dP * P)), dq = scale dS K, dk = scale dS^T Q, dv = P^T dO.
 */
vjpRegistry.set('attention', (g, { inputs, saved: [probs], attrs }) => {
  const layout = attrs.layout as AttentionLayout;
  const backend = g.backend;
  if (isGradEnabled()) {
    const [q, k, v] = unpack(inputs).map((t) => splitHeads(t, layout.heads));
    const go = splitHeads(g, layout.heads);
    const p = softmax(mul(mm(q, k, false, true), layout.scale), -1);
    const dp = mm(go, v, false, true);
    const ds = mul(mul(p, sub(dp, sum(mul(dp, p), -1, true))), layout.scale);
    const grads = [mm(ds, k), mm(ds, q, true, false), mm(p, go, true, false)].map(mergeHeads);
    return inputs.length === 1 ? [concat(grads, 2)] : grads.map((t, i) => (inputs[i].requiresGrad ? t : null));
  }
  const grads = inputs.map((t) => Tensor.uninit(t.shape.slice(), t.dtype, backend));
  const [dq, dk, dv] = grads.length === 1 ? [grads[0], grads[0], grads[0]] : grads;
  const st = inputs.length === 1 ? [inputs[0].storage, inputs[0].storage, inputs[0].storage] : inputs.map((t) => t.storage);
  // Every element of each gradient is written (the head slices cover the features, a packed
  // input's thirds are q, k and v): no zero fill.
  const out = [dq, dk, dv].map((t) => t.overwriteStorage());
  backend.attentionBackward!(g.storage, st[0], st[1], st[2], probs.storage, out[0], out[1], out[2], layout);
  return grads.map((t, i) => {
    if (inputs[i].requiresGrad) return t;
    t.dispose();
    return null;
  });
});

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
    const w = this.inProjWeight;
    const b = this.inProjBias;
    const packed = query === key && key === value;
    const part = (x: Tensor, i: number) => linear(x, narrow(w, 0, i * E, E), b ? narrow(b, 0, i * E, E) : null);
    const needWeights = opts.needWeights ?? true;
    let weightsOut: Tensor | null = null;
    let merged: Tensor;
    if (!opts.attnMask && !opts.keyPaddingMask && !needWeights && !(this.dropoutP > 0 && this.training)) {
      // Plain attention: the fused op where the backend has it (no head permutes at all).
      merged = scaledDotProductAttention(packed ? [linear(q0, w, b)] : [part(q0, 0), part(k0, 1), part(v0, 2)], H);
    } else {
      let q: Tensor;
      let k: Tensor;
      let v: Tensor;
      if (packed) {
        const qkv = linear(q0, w, b); // [N, L, 3E]
        [q, k, v] = [0, 1, 2].map((i) => narrow(qkv, 2, i * E, E));
      } else [q, k, v] = [part(q0, 0), part(k0, 1), part(v0, 2)];
      const qh = splitHeads(q, H);
      const kh = splitHeads(k, H);
      const vh = splitHeads(v, H);
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
      weightsOut = needWeights ? ((opts.averageAttnWeights ?? true) ? mean(attn, 1) : attn) : null;
      if (this.dropoutP > 0) attn = dropout(attn, this.dropoutP, this.training);
      merged = mergeHeads(matmul(attn, vh)); // [N, L, E]
    }
    const out = this.outProj.forward(merged);
    return [this.batchFirst ? out : transpose(out, 0, 1), weightsOut];
  }
}
