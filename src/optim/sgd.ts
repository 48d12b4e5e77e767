/** torch.optim.SGD and torch.optim.Adam / AdamW, on the fused arena or the per-tensor loop. */
import type { AdamGroup, SgdGroup } from '../kernels/fused.js';
import type { CommonOptions } from './optimizer.js';
import type { EngineUpdate } from './engine.js';
import { checkFinite, Optimizer, type ParamGroup, type ParamsInput } from './optimizer.js';

export interface SGDOptions extends CommonOptions {
  lr?: number;
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
  weightDecay?: number;
}

export const SGD_DEFAULTS = { lr: 1e-3, momentum: 0, dampening: 0, nesterov: false, weightDecay: 0 };

/**
 * Stochastic gradient descent exactly as torch.optim.SGD: d = g + wd*p; buf = d on the first step,
 * then momentum*buf + (1 - dampening)*d; d = nesterov ? d + momentum*buf : buf; p -= lr*d.
 */
export class SGD extends Optimizer {
  constructor(params: ParamsInput, opts: SGDOptions = {}, internal?: { extraKeys?: readonly string[] }) {
    super('SGD', params, SGD_DEFAULTS, opts as Record<string, unknown>, internal);
    // momentum and nesterov steer host code (whether a momentum buffer exists): they stay guards.
    for (const k of ['lr', 'dampening', 'weightDecay']) this.liveHyper.add(k);
  }
  protected validateGroup(g: ParamGroup): void {
    checkFinite('SGD', 'lr', g.lr);
    checkFinite('SGD', 'momentum', g.momentum);
    checkFinite('SGD', 'dampening', g.dampening);
    checkFinite('SGD', 'weightDecay', g.weightDecay);
    if (typeof g.nesterov !== 'boolean') throw new TypeError(`SGD: nesterov must be a boolean, got ${JSON.stringify(g.nesterov)}`);
    if (g.nesterov && (g.momentum === 0 || g.dampening !== 0)) throw new RangeError('SGD: nesterov momentum requires a momentum and zero dampening');
  }
  protected stateNames(): string[] {
    return ['momentum_buffer'];
  }
  groups(): SgdGroup[] {
    return this.paramGroups.map((g) => ({
      lr: g.lr as number,
      momentum: g.momentum as number,
      dampening: g.dampening as number,
      nesterov: g.nesterov as boolean,
      weightDecay: g.weightDecay as number,
    }));
  }
  applyUpdate(d: string, o: EngineUpdate): void {
    this.engine.sgd(d, this.live(this.groups(), () => this.groups()), o);
  }
}

export interface AdamOptions extends CommonOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

abstract class AdamBase extends Optimizer {
  protected abstract readonly decoupled: boolean;
  protected validateGroup(g: ParamGroup): void {
    checkFinite(this.name, 'lr', g.lr);
    checkFinite(this.name, 'eps', g.eps);
    checkFinite(this.name, 'weightDecay', g.weightDecay);
    const b = g.betas as [number, number];
    if (!Array.isArray(b) || b.length !== 2) throw new TypeError(`${this.name}: betas must be [beta1, beta2], got ${JSON.stringify(b)}`);
    checkFinite(this.name, 'betas[0]', b[0], 0, 1);
    checkFinite(this.name, 'betas[1]', b[1], 0, 1);
    if (b[0] >= 1 || b[1] >= 1) throw new RangeError(`${this.name}: betas must be below 1, got ${JSON.stringify(b)}`);
  }
  protected stateNames(): string[] {
    return ['exp_avg', 'exp_avg_sq'];
  }
  groups(): AdamGroup[] {
    return this.paramGroups.map((g) => {
      const [beta1, beta2] = g.betas as [number, number];
      return { lr: g.lr as number, beta1, beta2, eps: g.eps as number, weightDecay: g.weightDecay as number, decoupled: this.decoupled };
    });
  }
  applyUpdate(d: string, o: EngineUpdate): void {
    this.engine.adam(d, this.live(this.groups(), () => this.groups()), o);
  }
}

/** Adam's options that only the update kernel reads (inputs of a captured step: see Optimizer.liveHyper). */
const ADAM_LIVE = ['lr', 'betas', 'eps', 'weightDecay'];

/** torch.optim.Adam (L2 weight decay added to the gradient). */
export class Adam extends AdamBase {
  protected readonly decoupled = false;
  constructor(params: ParamsInput, opts: AdamOptions = {}, internal?: { extraKeys?: readonly string[] }) {
    super('Adam', params, { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 }, opts as Record<string, unknown>, internal);
    for (const k of ADAM_LIVE) this.liveHyper.add(k);
  }
}

/** torch.optim.AdamW (decoupled weight decay: p *= 1 - lr*wd before the Adam step). Default weightDecay 0.01. */
export class AdamW extends AdamBase {
  protected readonly decoupled = true;
  constructor(params: ParamsInput, opts: AdamOptions = {}, internal?: { extraKeys?: readonly string[] }) {
    super('AdamW', params, { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 1e-2 }, opts as Record<string, unknown>, internal);
    for (const k of ADAM_LIVE) this.liveHyper.add(k);
  }
}
