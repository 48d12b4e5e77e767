/**
 * Schedulers, as torch.optim.lr_scheduler defines them (closed forms), for any group option: the
 * learning rate by default, or `key: 'rho'` to schedule the perturbation radius of every member
 * of the sharpness-aware family. `ProportionScheduler` ties a value (rho) to the current learning
 * rate, as GSAM does.
 *
 * Like torch, constructing a scheduler sets the values for step 0, and `step()` advances one epoch
 * (or iteration) and sets the next values.
 */
import type { Optimizer } from './optimizer.js';

export interface SchedulerOptions {
  /** The group option to schedule. Default 'lr'. */
  key?: string;
  /** Resume: the index of the last step taken (-1: start). */
  lastEpoch?: number;
}

export abstract class Scheduler {
  readonly key: string;
  lastEpoch: number;
  /** Each group's value when the scheduler was made (torch's initial_lr). */
  readonly baseValues: number[];
  private last: number[] = [];

  constructor(
    readonly optimizer: Optimizer,
    opts: SchedulerOptions = {},
  ) {
    this.key = opts.key ?? 'lr';
    const initialKey = `initial_${this.key}`;
    this.baseValues = optimizer.paramGroups.map((g, i) => {
      if (opts.lastEpoch !== undefined && opts.lastEpoch >= 0 && typeof g[initialKey] !== 'number') {
        throw new Error(`${this.constructor.name}: resuming (lastEpoch ${opts.lastEpoch}) needs ${initialKey} in param group ${i}`);
      }
      g[initialKey] ??= g[this.key];
      const v = g[initialKey];
      if (typeof v !== 'number') throw new TypeError(`${this.constructor.name}: param group ${i} has no numeric option ${JSON.stringify(this.key)}`);
      return v;
    });
    this.lastEpoch = opts.lastEpoch ?? -1;
  }

  /** Call at the end of the constructor of each subclass (torch's _initial_step). */
  protected init(): void {
    this.step();
  }

  /** The value of group i at epoch t. */
  protected abstract valueAt(t: number, base: number, i: number): number;

  step(): void {
    this.lastEpoch++;
    this.last = this.optimizer.paramGroups.map((g, i) => {
      const v = this.valueAt(this.lastEpoch, this.baseValues[i], i);
      g[this.key] = v;
      return v;
    });
  }

  /** The values set by the last step (torch's get_last_lr). */
  getLastValues(): number[] {
    return this.last.slice();
  }
  getLastLr(): number[] {
    return this.getLastValues();
  }

  /** torch's state_dict: last_epoch, base_lrs and _last_lr (the values themselves live in the optimizer's groups). */
  stateDict(): { lastEpoch: number; baseValues: number[]; lastValues: number[]; key: string } {
    return { lastEpoch: this.lastEpoch, baseValues: this.baseValues.slice(), lastValues: this.last.slice(), key: this.key };
  }
  loadStateDict(sd: { lastEpoch: number; baseValues?: number[]; lastValues?: number[] }): void {
    this.lastEpoch = sd.lastEpoch;
    if (sd.baseValues) sd.baseValues.forEach((v, i) => (this.baseValues[i] = v));
    if (sd.lastValues) this.last = sd.lastValues.slice();
  }
}

function posInt(name: string, what: string, v: number): void {
  if (!Number.isInteger(v) || v <= 0) throw new RangeError(`${name}: ${what} must be a positive integer, got ${v}`);
}

/** value = base * gamma^floor(t / stepSize). */
export class StepLR extends Scheduler {
  readonly stepSize: number;
  readonly gamma: number;
  constructor(optimizer: Optimizer, opts: SchedulerOptions & { stepSize: number; gamma?: number }) {
    super(optimizer, opts);
    posInt('StepLR', 'stepSize', opts.stepSize);
    this.stepSize = opts.stepSize;
    this.gamma = opts.gamma ?? 0.1;
    this.init();
  }
  protected valueAt(t: number, base: number): number {
    return base * Math.pow(this.gamma, Math.floor(t / this.stepSize));
  }
}

/** value = etaMin + (base - etaMin)(1 + cos(pi t / tMax)) / 2 (torch's closed form). */
export class CosineAnnealingLR extends Scheduler {
  readonly tMax: number;
  readonly etaMin: number;
  constructor(optimizer: Optimizer, opts: SchedulerOptions & { tMax: number; etaMin?: number }) {
    super(optimizer, opts);
    posInt('CosineAnnealingLR', 'tMax', opts.tMax);
    this.tMax = opts.tMax;
    this.etaMin = opts.etaMin ?? 0;
    this.init();
  }
  protected valueAt(t: number, base: number): number {
    return this.etaMin + ((base - this.etaMin) * (1 + Math.cos((Math.PI * t) / this.tMax))) / 2;
  }
}

/**
 * Linear warmup from startFactor * base to base over warmupSteps steps, then constant (torch's
 * LinearLR with end_factor 1); `then` hands over to another schedule's closed form after warmup.
 */
export class LinearWarmup extends Scheduler {
  readonly warmupSteps: number;
  readonly startFactor: number;
  readonly then: ((t: number, base: number) => number) | null;
  constructor(optimizer: Optimizer, opts: SchedulerOptions & { warmupSteps: number; startFactor?: number; then?: (t: number, base: number) => number }) {
    super(optimizer, opts);
    posInt('LinearWarmup', 'warmupSteps', opts.warmupSteps);
    this.warmupSteps = opts.warmupSteps;
    this.startFactor = opts.startFactor ?? 1 / 3;
    if (!(this.startFactor > 0 && this.startFactor <= 1)) throw new RangeError(`LinearWarmup: startFactor must be in (0, 1], got ${this.startFactor}`);
    this.then = opts.then ?? null;
    this.init();
  }
  protected valueAt(t: number, base: number): number {
    if (t >= this.warmupSteps) return this.then ? this.then(t - this.warmupSteps, base) : base;
    return base * (this.startFactor + ((1 - this.startFactor) * t) / this.warmupSteps);
  }
}

export interface OneCycleOptions extends SchedulerOptions {
  maxLr: number | number[];
  totalSteps: number;
  pctStart?: number;
  annealStrategy?: 'cos' | 'linear';
  divFactor?: number;
  finalDivFactor?: number;
  threePhase?: boolean;
  /** Cycle SGD momentum or Adam's beta1 inversely to the learning rate (default true, as torch). */
  cycleMomentum?: boolean;
  baseMomentum?: number;
  maxMomentum?: number;
}

/** torch.optim.lr_scheduler.OneCycleLR (learning rate only: `key` is ignored). */
export class OneCycleLR extends Scheduler {
  private readonly phases: { end: number; startLr: 'initial' | 'max' | 'min'; endLr: 'initial' | 'max' | 'min'; startM: 'max' | 'base'; endM: 'max' | 'base' }[];
  private readonly maxLrs: number[];
  private readonly o: Required<Omit<OneCycleOptions, keyof SchedulerOptions | 'maxLr'>>;
  constructor(optimizer: Optimizer, opts: OneCycleOptions) {
    super(optimizer, { ...opts, key: 'lr' });
    posInt('OneCycleLR', 'totalSteps', opts.totalSteps);
    this.o = {
      totalSteps: opts.totalSteps,
      pctStart: opts.pctStart ?? 0.3,
      annealStrategy: opts.annealStrategy ?? 'cos',
      divFactor: opts.divFactor ?? 25,
      finalDivFactor: opts.finalDivFactor ?? 1e4,
      threePhase: opts.threePhase ?? false,
      cycleMomentum: opts.cycleMomentum ?? true,
      baseMomentum: opts.baseMomentum ?? 0.85,
      maxMomentum: opts.maxMomentum ?? 0.95,
    };
    if (!(this.o.pctStart > 0 && this.o.pctStart < 1)) throw new RangeError(`OneCycleLR: pctStart must be in (0, 1), got ${this.o.pctStart}`);
    this.maxLrs = optimizer.paramGroups.map((_, i) => (Array.isArray(opts.maxLr) ? opts.maxLr[i] : opts.maxLr));
    const T = this.o.totalSteps;
    const p = this.o.pctStart;
    this.phases = this.o.threePhase
      ? [
          { end: p * T - 1, startLr: 'initial', endLr: 'max', startM: 'max', endM: 'base' },
          { end: 2 * p * T - 2, startLr: 'max', endLr: 'initial', startM: 'base', endM: 'max' },
          { end: T - 1, startLr: 'initial', endLr: 'min', startM: 'max', endM: 'max' },
        ]
      : [
          { end: p * T - 1, startLr: 'initial', endLr: 'max', startM: 'max', endM: 'base' },
          { end: T - 1, startLr: 'max', endLr: 'min', startM: 'base', endM: 'max' },
        ];
    optimizer.paramGroups.forEach((g, i) => {
      g.initial_lr = this.maxLrs[i] / this.o.divFactor;
      g.max_lr = this.maxLrs[i];
      g.min_lr = (g.initial_lr as number) / this.o.finalDivFactor;
      this.baseValues[i] = g.initial_lr as number;
    });
    this.init();
  }
  private anneal(start: number, end: number, pct: number): number {
    if (this.o.annealStrategy === 'linear') return (end - start) * pct + start;
    return end + ((start - end) / 2) * (Math.cos(Math.PI * pct) + 1);
  }
  protected valueAt(t: number, _base: number, i: number): number {
    if (t > this.o.totalSteps) throw new RangeError(`OneCycleLR: stepped ${t} times, more than totalSteps ${this.o.totalSteps}`);
    const g = this.optimizer.paramGroups[i];
    const lrs = { initial: g.initial_lr as number, max: g.max_lr as number, min: g.min_lr as number };
    let start = 0;
    for (let k = 0; k < this.phases.length; k++) {
      const ph = this.phases[k];
      if (t <= ph.end || k === this.phases.length - 1) {
        const pct = (t - start) / (ph.end - start);
        if (this.o.cycleMomentum) {
          const ms = { max: this.o.maxMomentum, base: this.o.baseMomentum };
          const m = this.anneal(ms[ph.startM], ms[ph.endM], pct);
          if (typeof g.momentum === 'number') g.momentum = m;
          else if (Array.isArray(g.betas)) g.betas = [m, (g.betas as number[])[1]];
        }
        return this.anneal(lrs[ph.startLr], lrs[ph.endLr], pct);
      }
      start = ph.end;
    }
    return lrs.min;
  }
}

/** value = fn(t) * base (torch's LambdaLR). */
export class LambdaLR extends Scheduler {
  constructor(
    optimizer: Optimizer,
    private readonly fn: (t: number, i: number) => number,
    opts: SchedulerOptions = {},
  ) {
    super(optimizer, opts);
    this.init();
  }
  protected valueAt(t: number, base: number, i: number): number {
    return base * this.fn(t, i);
  }
}

/**
 * A value proportional to the current learning rate (GSAM's rho schedule):
 * value = minValue + (maxValue - minValue) * (lr - minLr) / (maxLr - minLr). Step it after the
 * learning-rate scheduler. maxLr defaults to each group's lr at construction, minLr to 0,
 * maxValue to the group's current value.
 */
/**
 * A value tied linearly to the learning rate: minValue at lr = minLr, maxValue at lr = maxLr
 * (GSAM's rho_t; with minValue 0 and minLr 0, rho * lr / lrMax). maxValue when the lr range is empty.
 * The one formula behind ProportionScheduler and GSAM's built-in rho schedule.
 */
export function followLr(lr: number, minLr: number, maxLr: number, minValue: number, maxValue: number): number {
  if (maxLr === minLr) return maxValue;
  return minValue + ((maxValue - minValue) * (lr - minLr)) / (maxLr - minLr);
}

export class ProportionScheduler extends Scheduler {
  private readonly maxLr: number[];
  private readonly minLr: number;
  private readonly maxValue: number[];
  private readonly minValue: number;
  constructor(optimizer: Optimizer, opts: SchedulerOptions & { maxLr?: number; minLr?: number; maxValue?: number; minValue?: number } = {}) {
    super(optimizer, { key: 'rho', ...opts });
    this.maxLr = optimizer.paramGroups.map((g) => opts.maxLr ?? (g.lr as number));
    this.minLr = opts.minLr ?? 0;
    this.maxValue = this.baseValues.map((b) => opts.maxValue ?? b);
    this.minValue = opts.minValue ?? 0;
    this.init();
  }
  protected valueAt(_t: number, _base: number, i: number): number {
    return followLr(this.optimizer.paramGroups[i].lr as number, this.minLr, this.maxLr[i], this.minValue, this.maxValue[i]);
  }
}
