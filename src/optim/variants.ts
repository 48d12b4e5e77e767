/**
 * The rest of the sharpness-aware family, each written once against the engine (so each runs
 * fused over the flat arena or per tensor with `fused: false`):
 *
 * - MSAM: m-sharpness (Foret et al. 2021, sec. 4; Andriushchenko & Flammarion 2022).
 * - LookSAM (Liu et al. 2022): the SAM gradient every k steps, a reused orthogonal component between.
 * - ESAM (Du et al. 2022): stochastic weight perturbation and sharpness-sensitive data selection.
 * - RandomSAM: a random direction of norm rho instead of the gradient's.
 * - RWP (Li et al. 2024): filter-wise Gaussian weight noise, clean and noisy gradients mixed.
 * - GSAM (Zhuang et al. 2022): the surrogate-gap decomposition, rho tied to the learning rate.
 *
 * Every step keeps the family's guarantees: no readback, the non-finite check and skip counter,
 * BatchNorm running statistics frozen during perturbed passes, and rho = 0 reducing bit for bit
 * to the base optimizer (for MSAM with m = 1, ESAM with gamma = 1, and RWP with gamma = 0).
 */
import { COMMIT, S_CHECK, S_DOT, S_NORM, S_NORM2, S_NORMV, S_TMP0, S_TMP1, S_TMP2, slot, type SAssign, type SExpr } from '../kernels/fused.js';
import { isFloat } from '../tensor/dtype.js';
import { fmt, shapesEqual } from '../tensor/shape.js';
import { Tensor, tidy } from '../tensor/tensor.js';
import { noGrad, withGradMode } from '../tensor/graph.js';
import { generator } from '../tensor/random.js';
import { captureHooks } from '../compile/hooks.js';
import { add, cast, eq, gt, mul, sub } from '../tensor/ops/elementwise.js';
import { argmax, mean, sum } from '../tensor/ops/reduce.js';
import { reshape } from '../tensor/ops/shape.js';
import { checkFinite, type Closure, type OptimizerStateDict, type ParamsInput } from './optimizer.js';
import { copyInto } from '../nn/module.js';
import { SharpnessAware, type BaseOptimizerClass, type SharpnessOptions } from './sam.js';
import { followLr } from './lr_scheduler.js';

const SAM_GROUP = { rho: 0.05, adaptive: false, eta: 0.01, adaptiveBias: false };

function meanLoss(losses: (Tensor | number)[]): Tensor | number {
  if (losses.every((l) => typeof l === 'number')) return (losses as number[]).reduce((a, b) => a + b, 0) / losses.length;
  return noGrad(() =>
    tidy(() => {
      let acc: Tensor | null = null;
      for (const l of losses) {
        const t = l instanceof Tensor ? l.detach() : l;
        acc = acc === null ? (t as Tensor) : add(acc, t);
      }
      return mul(acc!, 1 / losses.length);
    }),
  );
}

function intOpt(name: string, what: string, v: unknown, min: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new RangeError(`${name}: ${what} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return v;
}

// ------------------------------------------------------------------------------------ m-SAM

export interface MSAMOptions extends SharpnessOptions {
  /** Number of micro-batches. Default 4. */
  m?: number;
}

/** Computes micro-batch `micro` of `m`: forward, backward, and returns the loss. */
export type MicroBatchClosure = (micro: number, m: number) => Tensor | number;

/**
 * m-sharpness: the batch is split into m micro-batches; each is perturbed by its own gradient's
 * SAM direction, the descent gradients at the m perturbed points are averaged, and the base
 * optimizer steps once with the average.
 */
export class MSAM extends SharpnessAware {
  constructor(params: ParamsInput, Base: BaseOptimizerClass, opts: MSAMOptions = {}) {
    super('MSAM', params, Base, opts, SAM_GROUP, { m: 4 });
    intOpt('MSAM', 'm', this.opts.m, 1);
  }

  override step(closure?: Closure | MicroBatchClosure): Tensor | number {
    if (!closure) throw new Error('MSAM.step: needs a closure (micro, m) => loss that computes micro-batch `micro` forward and backward');
    this.validateAll();
    const m = intOpt('MSAM', 'm', this.opts.m, 1);
    const e = this.engine;
    const adaptive = this.adaptiveGroups();
    const losses: (Tensor | number)[] = [];
    e.zeroGrads();
    for (let i = 0; i < m; i++) {
      const last = i === m - 1;
      losses.push(this.runClosure(() => (closure as MicroBatchClosure)(i, m)));
      e.prepare();
      e.norm('g', S_NORM, { adaptive, gate: this.gated ? (i === 0 ? 'set' : 'or') : undefined });
      e.perturb('g', { coef: this.rhos(), normSlot: S_NORM, eps: this.normEps, adaptive, mode: this.mode, gated: this.gated });
      e.zeroGrads();
      this.discardLoss(this.perturbedPass(() => this.runClosure(() => (closure as MicroBatchClosure)(i, m))));
      e.prepare();
      e.norm('g', S_CHECK, { gate: this.gated ? 'or' : undefined, then: last && this.gated ? COMMIT : undefined });
      if (!last) e.restore(this.mode);
      e.lincomb('acc', i === 0 ? { c: 0 } : { c: 1 }, [{ x: 'g', c: 1 / m }]);
      e.zeroGrads();
    }
    this.update('acc', true);
    return meanLoss(losses);
  }
}

// ---------------------------------------------------------------------------------- LookSAM

export interface LookSAMOptions extends SharpnessOptions {
  /** Compute the SAM gradient every k steps. Default 5. */
  k?: number;
  /** Weight of the reused component. Default 0.7. */
  alpha?: number;
}

/**
 * LookSAM: every k steps the full SAM gradient g_s and its component orthogonal to g,
 * g_v = g_s - (g.g_s / ||g||^2) g (global vectors, not per tensor); between them one pass and
 * g + alpha (||g|| / ||g_v||) g_v. With k = 1 it is SAM, bit for bit.
 */
export class LookSAM extends SharpnessAware {
  private iter = 0;
  constructor(params: ParamsInput, Base: BaseOptimizerClass, opts: LookSAMOptions = {}) {
    super('LookSAM', params, Base, opts, SAM_GROUP, { k: 5, alpha: 0.7 });
    intOpt('LookSAM', 'k', this.opts.k, 1);
    checkFinite('LookSAM', 'alpha', this.opts.alpha);
  }

  /**
   * Adds LookSAM's own state: the step counter (which step recomputes the SAM gradient) and the
   * stored orthogonal direction g_v (its squared norm lives in the device scalars). Without them a
   * resumed run would recompute or reuse at the wrong steps, with a zero direction.
   */
  override stateDict(): OptimizerStateDict & { looksam: { iter: number; gv: Tensor[] | null } } {
    return { ...super.stateDict(), looksam: { iter: this.iter, gv: this.engine.stateTensors('gv') } };
  }

  override loadStateDict(sd: OptimizerStateDict & { looksam?: { iter?: unknown; gv?: unknown } }): void {
    const own = sd?.looksam;
    if (own !== undefined) {
      if (!(typeof own.iter === 'number' && Number.isInteger(own.iter) && own.iter >= 0)) {
        throw new TypeError(`LookSAM.loadStateDict: looksam.iter must be a non-negative integer, got ${JSON.stringify(own.iter)}`);
      }
      if (own.gv != null && !(Array.isArray(own.gv) && own.gv.length === this.engine.params.length && own.gv.every((t) => t instanceof Tensor))) {
        throw new TypeError(`LookSAM.loadStateDict: looksam.gv must be ${this.engine.params.length} tensors (one per parameter)`);
      }
    }
    super.loadStateDict(sd);
    if (own === undefined) return;
    this.iter = own.iter as number;
    if (Array.isArray(own.gv)) {
      const dst = this.engine.ensureState('gv');
      (own.gv as Tensor[]).forEach((v, k) => {
        if (!shapesEqual(v.shape, dst[k].shape)) throw new RangeError(`LookSAM.loadStateDict: gv of parameter ${k} has shape ${fmt(v.shape)}, expected ${fmt(dst[k].shape)}`);
        copyInto(dst[k], v, `LookSAM.loadStateDict(${k}.gv)`);
      });
    }
  }

  override step(closure?: Closure): Tensor | number {
    if (!closure) throw new Error('LookSAM.step: needs a closure that does the forward and backward pass and returns the loss');
    this.validateAll();
    const k = intOpt('LookSAM', 'k', this.opts.k, 1);
    const alpha = this.opts.alpha as number;
    const e = this.engine;
    const gate = this.gated;
    e.zeroGrads();
    const loss = this.runClosure(closure);
    e.prepare();
    // Which branch runs is host state: a captured step keeps one plan per branch and advances iter.
    captureHooks.hostState?.('LookSAM.iter', () => this.iter % k === 0, () => { this.iter++; });
    const t = this.iter++;
    if (t % k === 0) {
      const adaptive = this.adaptiveGroups();
      const rhos = this.rhos();
      // rho = 0 takes another branch below: host state for a captured step (rho itself is live).
      captureHooks.hostState?.('LookSAM.rhoZero', () => this.rhoValues().every((r) => r === 0), null);
      e.norm('g', S_NORM, { adaptive, gate: gate ? 'set' : undefined });
      e.perturb('g', { coef: rhos, normSlot: S_NORM, eps: this.normEps, adaptive, mode: this.mode, gated: gate, save: 'g0' });
      e.zeroGrads();
      this.discardLoss(this.perturbedPass(() => this.runClosure(closure)));
      e.prepare();
      e.norm('g', S_NORM2, { gate: gate ? 'or' : undefined, then: gate ? COMMIT : undefined });
      if (rhos.every((r) => r === 0)) {
        // g_s = g exactly: no orthogonal component (and nothing to reuse).
        e.scalars([{ dst: S_NORMV, e: 0 }]);
      } else {
        let gn: SExpr = slot(S_NORM);
        if (adaptive) {
          e.norm('g0', S_TMP1);
          gn = slot(S_TMP1);
        }
        // <g0, g> / ||g0||^2, divided by the norm twice (its square could overflow).
        e.dot('g0', 'g', S_DOT, [{ dst: S_TMP0, e: ['select', ['>', gn, 0], ['/', ['/', slot(S_DOT), gn], gn], 0] }]);
        e.lincomb('gv', { c: 0 }, [
          { x: 'g', c: 1 },
          { x: 'g0', c: -1, slot: S_TMP0 },
        ]);
        e.norm('gv', S_NORMV);
      }
      this.update('g', true);
    } else {
      const then: SAssign[] = [
        ...(gate ? COMMIT : []),
        { dst: S_TMP2, e: ['select', ['>', slot(S_NORMV), 0], ['/', ['*', alpha, slot(S_TMP1)], slot(S_NORMV)], 0] },
      ];
      e.norm('g', S_TMP1, { gate: gate ? 'set' : undefined, then });
      e.lincomb('g', { c: 1 }, [{ x: 'gv', c: 1, slot: S_TMP2 }]);
      this.update('g', false);
    }
    return loss;
  }
}

// ------------------------------------------------------------------------------------- ESAM

export interface ESAMOptions extends SharpnessOptions {
  /** Stochastic weight perturbation: each parameter tensor is perturbed with probability beta (scaled by 1/beta). Default 0.6. */
  beta?: number;
  /** Sharpness-sensitive data selection: the second pass uses the round(gamma |B|) samples whose loss rises most. Default 0.5. */
  gamma?: number;
}

/**
 * Returns per-sample losses (reduction 'none') of the batch, or of the samples at `indices`
 * (int32, into the batch) when given. ESAM runs the backward passes itself.
 */
export type PerSampleClosure = (indices: Tensor | null) => Tensor;

/**
 * Indices (int32 [k]) of the k largest values of d (ties to the lower index), computed on the
 * device with tensor ops: each value's rank is the number of values above it (plus equal ones
 * before it), and rank r's index is picked by an argmax over a one-hot row.
 */
export function topkIndices(d: Tensor, k: number): Tensor {
  if (d.ndim !== 1) throw new RangeError(`topkIndices: need a 1-D tensor, got ${fmt(d.shape)}`);
  const B = d.shape[0];
  if (!(Number.isInteger(k) && k >= 1 && k <= B)) throw new RangeError(`topkIndices: k must be in [1, ${B}], got ${k}`);
  const b = d.backend;
  const dt = isFloat(d.dtype) ? d.dtype : 'float32';
  return noGrad(() =>
    tidy(() => {
      const row = reshape(d, [1, B]);
      const col = reshape(d, [B, 1]);
      const before = new Float32Array(B * B);
      for (let i = 0; i < B; i++) for (let j = 0; j < i; j++) before[i * B + j] = 1;
      const tril = cast(Tensor.fromStorage(b.upload(before, 'float32'), [B, B], b), dt);
      const rank = sum(add(cast(gt(row, col), dt), mul(cast(eq(row, col), dt), tril)), 1);
      const ranks = Tensor.fromStorage(b.upload(Float32Array.from({ length: k }, (_, r) => r), 'float32'), [k, 1], b);
      return argmax(cast(eq(reshape(rank, [1, B]), cast(ranks, dt)), dt), 1);
    }),
  );
}

/**
 * ESAM: SAM with stochastic weight perturbation (beta) and sharpness-sensitive data selection
 * (gamma): exactly k = max(1, round(gamma |B|)) samples, those with the largest loss increase at
 * the perturbed point, form the second pass. The closure returns per-sample losses.
 */
export class ESAM extends SharpnessAware {
  constructor(params: ParamsInput, Base: BaseOptimizerClass, opts: ESAMOptions = {}) {
    super('ESAM', params, Base, opts, SAM_GROUP, { beta: 0.6, gamma: 0.5 });
    this.checkOpts();
  }
  private checkOpts(): void {
    checkFinite('ESAM', 'beta', this.opts.beta, 0, 1);
    checkFinite('ESAM', 'gamma', this.opts.gamma, 0, 1);
    if ((this.opts.beta as number) === 0 || (this.opts.gamma as number) === 0) throw new RangeError('ESAM: beta and gamma must be in (0, 1]');
  }

  override step(closure?: Closure | PerSampleClosure): Tensor | number {
    if (!closure) throw new Error('ESAM.step: needs a closure (indices | null) => per-sample losses');
    this.validateAll();
    this.checkOpts();
    const beta = this.opts.beta as number;
    const gamma = this.opts.gamma as number;
    const f = closure as PerSampleClosure;
    const e = this.engine;
    const gate = this.gated;
    const adaptive = this.adaptiveGroups();
    e.zeroGrads();
    const lBefore = withGradMode(true, () => f(null));
    if (!(lBefore instanceof Tensor) || lBefore.ndim !== 1) throw new TypeError('ESAM.step: the closure must return per-sample losses (a 1-D tensor, reduction none)');
    const B = lBefore.shape[0];
    withGradMode(true, () => tidy(() => mean(lBefore).backward()));
    e.prepare();
    let select: { key0: number; key1: number; beta: number } | undefined;
    if (beta < 1) {
      const [key0, key1] = generator.nextKey();
      select = { key0, key1, beta };
    }
    e.norm('g', S_NORM, { adaptive, select, gate: gate ? 'set' : undefined });
    e.perturb('g', { coef: this.rhos().map((r) => r / beta), normSlot: S_NORM, eps: this.normEps, adaptive, select, mode: this.mode, gated: gate });
    this.freeze();
    try {
      const k = Math.max(1, Math.round(gamma * B));
      let idx: Tensor | null = null;
      if (k < B) {
        idx = noGrad(() =>
          tidy(() => {
            const lAfter = f(null);
            return topkIndices(sub(lAfter, lBefore.detach()), k);
          }),
        );
      }
      e.zeroGrads();
      withGradMode(true, () =>
        tidy(() => {
          const l2 = f(idx);
          mean(l2).backward();
        }),
      );
      idx?.dispose();
    } catch (err) {
      e.restore(this.mode);
      throw err;
    } finally {
      this.unfreeze();
    }
    e.prepare();
    this.checkAndCommit('g', S_NORM2);
    this.update('g', true);
    const loss = noGrad(() => mean(lBefore.detach()));
    return loss;
  }
}

// -------------------------------------------------------------------------------- RandomSAM

/**
 * SAM with a random direction: e = rho z / ||z|| with z ~ N(0, I) over all parameters (drawn by
 * the counter-based generator, so fused and unfused draw the same z). One forward-backward pass
 * per step, at w + e; its loss is returned.
 */
export class RandomSAM extends SharpnessAware {
  constructor(params: ParamsInput, Base: BaseOptimizerClass, opts: SharpnessOptions = {}) {
    super('RandomSAM', params, Base, opts, SAM_GROUP);
  }
  override step(closure?: Closure): Tensor | number {
    if (!closure) throw new Error('RandomSAM.step: needs a closure that does the forward and backward pass and returns the loss');
    this.validateAll();
    const e = this.engine;
    e.zeroGrads(false);
    e.prepare();
    const [key0, key1] = generator.nextKey();
    e.noise('z', { key0, key1, scale: this.paramGroups.map(() => 1), filterwise: false });
    e.norm('z', S_NORM, { gate: this.gated ? 'set' : undefined });
    e.perturb('z', { coef: this.rhos(), normSlot: S_NORM, eps: this.normEps, mode: this.mode, gated: false });
    let loss: Tensor | number;
    try {
      loss = this.runClosure(closure);
    } catch (err) {
      e.restore(this.mode);
      throw err;
    }
    e.prepare();
    this.checkAndCommit('g', S_NORM2);
    this.update('g', true);
    return loss;
  }
}

// -------------------------------------------------------------------------------------- RWP

export interface RWPOptions extends SharpnessOptions {
  /** Noise scale: each filter (output row) of a weight gets N(0, (gamma ||row||)^2); vectors use their whole norm. Default 0.01. */
  gamma?: number;
  /** Weight of the noisy gradient: d = (1 - alpha) g_clean + alpha g_noisy. Default 0.5. */
  alpha?: number;
}

/**
 * Random weight perturbation with the clean/noisy gradient mix (Li et al., "Revisiting random
 * weight perturbation for efficiently improving generalization"): a clean pass at w, then a pass
 * at w + eps with filter-wise Gaussian eps, d = (1 - alpha) g(w) + alpha g(w + eps). rho is unused.
 */
export class RWP extends SharpnessAware {
  constructor(params: ParamsInput, Base: BaseOptimizerClass, opts: RWPOptions = {}) {
    super('RWP', params, Base, opts, { ...SAM_GROUP, rho: 0, gamma: 0.01 }, { alpha: 0.5 });
    this.checkOpts();
  }
  private checkOpts(): void {
    checkFinite('RWP', 'alpha', this.opts.alpha, 0, 1);
    for (const g of this.paramGroups) checkFinite('RWP', 'gamma', g.gamma);
  }
  override step(closure?: Closure): Tensor | number {
    if (!closure) throw new Error('RWP.step: needs a closure that does the forward and backward pass and returns the loss');
    this.validateAll();
    this.checkOpts();
    const a = this.opts.alpha as number;
    const e = this.engine;
    const gate = this.gated;
    e.zeroGrads();
    const loss = this.runClosure(closure);
    e.prepare();
    // No noisy gradient in the mix (alpha = 0), or no noise (gamma = 0: g(w + 0) = g(w), while
    // ((1 - a)/a g + g) a below would round it): the base optimizer's step, bit for bit.
    if (a === 0 || this.paramGroups.every((g) => g.gamma === 0)) {
      e.norm('g', S_NORM, { gate: gate ? 'set' : undefined, then: gate ? COMMIT : undefined });
      this.update('g', false);
      return loss;
    }
    e.norm('g', S_NORM, { gate: gate ? 'set' : undefined });
    // Keep (1 - a)/a g(w) in the gradient; the noisy pass adds g(w + eps) to it, and a scales the sum.
    if (a === 1) e.zeroGrads(false);
    else e.lincomb('g', { c: (1 - a) / a }, []);
    e.prepare();
    const [key0, key1] = generator.nextKey();
    e.noise('z', { key0, key1, scale: this.paramGroups.map((g) => g.gamma as number), filterwise: true });
    e.perturb('z', { coef: this.paramGroups.map(() => 1), normSlot: null, eps: 0, mode: this.mode, gated: false });
    this.discardLoss(this.perturbedPass(() => this.runClosure(closure)));
    e.prepare();
    e.lincomb('g', { c: a }, []);
    this.checkAndCommit('g', S_NORM2);
    this.update('g', true);
    return loss;
  }
}

// ------------------------------------------------------------------------------------- GSAM

export interface GSAMOptions extends SharpnessOptions {
  /** Weight of the ascent along the surrogate gap's direction. Default 0.4. */
  alpha?: number;
  /** With rhoMin, rho follows the learning rate: rho_t = rhoMin + (rho - rhoMin)(lr - lrMin)/(lrMax - lrMin). */
  rhoMin?: number | null;
  /** Default: each group's lr when the optimizer was made (or its initial_lr from a scheduler). */
  lrMax?: number | null;
  lrMin?: number;
}

/**
 * GSAM: the perturbed gradient g_s minus alpha times the component of the clean gradient g
 * orthogonal to g_s (as the official implementation computes it), with rho optionally tied to the
 * learning-rate schedule (or scheduled by a ProportionScheduler on key 'rho').
 */
export class GSAM extends SharpnessAware {
  private readonly lrMax0: number[];
  constructor(params: ParamsInput, Base: BaseOptimizerClass, opts: GSAMOptions = {}) {
    super('GSAM', params, Base, opts, SAM_GROUP, { alpha: 0.4, rhoMin: null, lrMax: null, lrMin: 0 });
    checkFinite('GSAM', 'alpha', this.opts.alpha);
    if (this.opts.rhoMin !== null) checkFinite('GSAM', 'rhoMin', this.opts.rhoMin);
    this.lrMax0 = this.paramGroups.map((g) => (typeof g.lr === 'number' ? g.lr : 0));
  }

  /** This step's rho per group. */
  rhoT(): number[] {
    const rhoMin = this.opts.rhoMin as number | null;
    if (rhoMin === null) return this.rhoValues();
    const lrMin = this.opts.lrMin as number;
    return this.paramGroups.map((g, i) => {
      const lrMax = (this.opts.lrMax as number | null) ?? (typeof g.initial_lr === 'number' ? g.initial_lr : this.lrMax0[i]);
      return followLr(g.lr as number, lrMin, lrMax, rhoMin, g.rho as number);
    });
  }

  override step(closure?: Closure): Tensor | number {
    if (!closure) throw new Error('GSAM.step: needs a closure that does the forward and backward pass and returns the loss');
    this.validateAll();
    const alpha = this.opts.alpha as number;
    const peps = this.normEps;
    const e = this.engine;
    const gate = this.gated;
    const adaptive = this.adaptiveGroups();
    const rhos = this.live(this.rhoT(), () => this.rhoT());
    // rho = 0 takes another branch below: host state for a captured step (rho itself is live).
    captureHooks.hostState?.('GSAM.rhoZero', () => this.rhoT().every((r) => r === 0), null);
    e.zeroGrads();
    const loss = this.runClosure(closure);
    e.prepare();
    e.norm('g', S_NORM, { adaptive, gate: gate ? 'set' : undefined });
    e.perturb('g', { coef: rhos, normSlot: S_NORM, eps: this.normEps, adaptive, mode: this.mode, gated: gate, save: 'g0' });
    e.zeroGrads();
    this.discardLoss(this.perturbedPass(() => this.runClosure(closure)));
    e.prepare();
    if (rhos.every((r) => r === 0) || alpha === 0) {
      // g_s = g: no orthogonal part.
      this.checkAndCommit('g', S_NORM2);
    } else {
      e.norm('g', S_NORM2, { gate: gate ? 'or' : undefined });
      if (adaptive) e.norm('g0', S_NORM);
      const n = slot(S_NORM);
      const n2 = slot(S_NORM2);
      // cosine = <g, g_s> / (||g_s|| ||g|| + eps); vertical = g - cosine ||g|| g_s / (||g_s|| + eps);
      // d = g_s - alpha vertical = (1 + alpha c) g_s - alpha g, c = cosine ||g|| / (||g_s|| + eps).
      e.dot('g0', 'g', S_DOT, [
        { dst: S_TMP0, e: ['/', ['*', ['/', slot(S_DOT), ['+', ['*', n2, n], peps]], n], ['+', n2, peps]] },
        { dst: S_TMP1, e: ['+', 1, ['*', alpha, slot(S_TMP0)]] },
        ...(gate ? COMMIT : []),
      ]);
      e.lincomb('g', { c: 1, slot: S_TMP1 }, [{ x: 'g0', c: -alpha }]);
    }
    this.update('g', true);
    return loss;
  }
}
