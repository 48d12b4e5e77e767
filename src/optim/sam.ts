/**
 * Sharpness-Aware Minimization (Foret et al., 2021) with the API of davda54/sam, and ASAM (Kwon et
 * al., 2021) as its official implementation defines it, on the fused arena or the per-tensor loop.
 *
 *   const opt = new SAM(model.parameters(), SGD, { rho: 0.05, lr: 0.1, momentum: 0.9 });
 *   const loss = opt.step(() => { const l = lossFn(model.forward(x), y); l.backward(); return l; });
 *
 * A step's optimizer side is a constant handful of kernels whatever the number of parameter
 * tensors: the global gradient norm (with the non-finite check), the perturbation p += e (storing
 * the backup or e), the second gradient's check and the restore fused with the base update. No
 * value is read back to the host.
 */
import { COMMIT, S_FLAG, S_NORM, S_NORM2, S_SKIPPED, S_STEPS, type RestoreMode } from '../kernels/fused.js';
import { freezeRunningStats, unfreezeRunningStats } from '../nn/module.js';
import { Tensor } from '../tensor/tensor.js';
import { captureHooks } from '../compile/hooks.js';
import type { AdaptiveGroup } from './engine.js';
import { checkFinite, Optimizer, isGroupList, UnknownOptionError, type Closure, type GroupInput, type ParamGroup, type ParamsInput } from './optimizer.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type BaseOptimizerClass = new (params: ParamsInput, opts: any) => Optimizer;

/** Options every member of the family takes (besides its base optimizer's). */
export interface SharpnessOptions {
  /** Perturbation radius (per group). */
  rho?: number;
  /** ASAM: T_w = |w| + eta on weights (per group). */
  adaptive?: boolean;
  /** ASAM's eta (per group). Default 0.01. */
  eta?: number;
  /** ASAM: weight biases too (T = |b| + eta). Default false, as the official ASAM. */
  adaptiveBias?: boolean;
  /**
   * Added to the gradient norm (e = rho g / (||g|| + normEps)). Default 1e-12. Named apart from the
   * base optimizer's `eps` (Adam's), which reaches the base as every other base option does.
   */
  normEps?: number;
  /** 'copy' (exact, default) or 'subtract' (p -= e). */
  restore?: 'copy' | 'subtract';
  /** Skip (and count) a step whose gradients hold NaN or Inf. Default true. */
  skipNonFinite?: boolean;
  /** Freeze BatchNorm running statistics while the weights are perturbed. Default true. */
  freezeBatchNorm?: boolean;
  fused?: boolean;
  [baseOption: string]: unknown;
}

export interface SharpnessStats {
  /** Updates attempted, taken, and skipped for a non-finite gradient. */
  attempted: number;
  taken: number;
  skipped: number;
  /** Norm of the last first-pass gradient (T-weighted for ASAM), without eps. */
  gradNorm: number;
  /** Norm of the last second-pass gradient. */
  perturbedGradNorm: number;
  /** Whether the last step was skipped. */
  lastSkipped: boolean;
  /** All scalar slots, for the variants' own quantities. */
  scalars: Float64Array;
}

const GROUP_KEYS = ['rho', 'adaptive', 'eta', 'adaptiveBias'] as const;
const COMMON_GLOBALS: Record<string, unknown> = { normEps: 1e-12, restore: 'copy', skipNonFinite: true, freezeBatchNorm: true };

interface Setup {
  base: Optimizer;
  globals: Record<string, unknown>;
}

/**
 * Splits the options between the wrapper and the base optimizer, builds the base (which coalesces
 * the parameters into its arena), and adds the wrapper's per-group options to the shared groups.
 */
function setup(
  name: string,
  params: ParamsInput,
  Base: BaseOptimizerClass,
  opts: Record<string, unknown>,
  groupDefaults: Record<string, unknown>,
  globalDefaults: Record<string, unknown>,
): Setup {
  if (typeof Base !== 'function') throw new TypeError(`${name}: the second argument must be a base optimizer class such as SGD or AdamW`);
  const globalsAll = { ...COMMON_GLOBALS, ...globalDefaults };
  const samKeys = new Set<string>([...GROUP_KEYS, ...Object.keys(groupDefaults), ...Object.keys(globalsAll)]);
  const baseOpts: Record<string, unknown> = {};
  const samGroup: Record<string, unknown> = { ...groupDefaults };
  const globals: Record<string, unknown> = { ...globalsAll };
  for (const [k, v] of Object.entries(opts)) {
    if (k === 'fused') baseOpts.fused = v;
    else if (k in globalsAll) {
      if (v !== undefined) globals[k] = v;
    } else if ((GROUP_KEYS as readonly string[]).includes(k) || k in groupDefaults) {
      if (v !== undefined) samGroup[k] = v;
    } else baseOpts[k] = v;
  }
  const groupsIn: GroupInput[] = isGroupList(params) ? params : [{ params: params as Iterable<Tensor> }];
  const samPerGroup: Record<string, unknown>[] = [];
  const baseGroups: GroupInput[] = groupsIn.map((g) => {
    const own: Record<string, unknown> = {};
    const rest: GroupInput = { params: g.params };
    for (const [k, v] of Object.entries(g)) {
      if (k === 'params') continue;
      if (samKeys.has(k)) {
        if (k in globalsAll) throw new Error(`${name}: option ${JSON.stringify(k)} applies to the whole optimizer, not to one param group`);
        own[k] = v;
      } else rest[k] = v;
    }
    samPerGroup.push(own);
    return rest;
  });
  let base: Optimizer;
  try {
    base = new Base(baseGroups, baseOpts);
  } catch (e) {
    if (e instanceof UnknownOptionError) {
      const err = new UnknownOptionError(`${name} (base ${e.where})`, e.key, [...samKeys, ...e.known]);
      // davda54/sam passes every keyword to the base optimizer; flatgrad does too, so a SAM-style
      // `eps` meant for the norm reaches a base without one. Say where the norm's epsilon went.
      if (e.key === 'eps') err.message += `; the epsilon added to ${name}'s gradient norm is "normEps"`;
      throw err;
    }
    throw e;
  }
  if (!(base instanceof Optimizer)) throw new TypeError(`${name}: the base optimizer must be a flatgrad Optimizer`);
  // An option both the wrapper and its base know would be silently taken by one of them.
  const baseKeys = new Set(Object.keys(base.defaults));
  const given = [...Object.keys(opts), ...groupsIn.flatMap((g) => Object.keys(g))];
  for (const k of given) {
    if (samKeys.has(k) && baseKeys.has(k)) {
      throw new Error(`${name}: option ${JSON.stringify(k)} is ambiguous: both ${name} and its base optimizer ${base.name} take an option of that name`);
    }
  }
  base.paramGroups.forEach((g, i) => {
    for (const [k, v] of Object.entries(samGroup)) if (!(k in g) || samPerGroup[i][k] === undefined) g[k] = v;
    Object.assign(g, samPerGroup[i]);
  });
  return { base, globals };
}

/** The shared machinery of the sharpness-aware family: a base optimizer, options, gating, statistics. */
export abstract class SharpnessAware extends Optimizer {
  readonly base: Optimizer;
  protected readonly opts: Record<string, unknown>;
  /** True between firstStep and secondStep (the weights are perturbed). */
  protected perturbed = false;
  private frozeStats = false;

  constructor(name: string, params: ParamsInput, Base: BaseOptimizerClass, opts: Record<string, unknown>, groupDefaults: Record<string, unknown>, globalDefaults: Record<string, unknown> = {}) {
    const s = setup(name, params, Base, opts, groupDefaults, globalDefaults);
    super(name, [], groupDefaults, {}, { adopt: s.base });
    this.base = s.base;
    this.opts = s.globals;
    // rho reaches the kernels only through rhos() (a live value): with the base's live options it
    // is an input of a captured step. Both optimizers guard the same group objects.
    for (const k of this.base.liveHyper) this.liveHyper.add(k);
    this.liveHyper.add('rho');
    this.base.liveHyper.add('rho');
    this.validateAll();
  }

  protected validateGroup(g: ParamGroup): void {
    checkFinite(this.name, 'rho', g.rho);
    if (typeof g.adaptive !== 'boolean') throw new TypeError(`${this.name}: adaptive must be a boolean, got ${JSON.stringify(g.adaptive)}`);
    checkFinite(this.name, 'eta', g.eta);
    if (typeof g.adaptiveBias !== 'boolean') throw new TypeError(`${this.name}: adaptiveBias must be a boolean, got ${JSON.stringify(g.adaptiveBias)}`);
  }
  protected override validateAll(): void {
    super.validateAll();
    checkFinite(this.name, 'normEps', this.opts.normEps);
    if (this.opts.restore !== 'copy' && this.opts.restore !== 'subtract') throw new RangeError(`${this.name}: restore must be 'copy' or 'subtract', got ${JSON.stringify(this.opts.restore)}`);
    (this.base as unknown as { validateAll(): void }).validateAll();
  }
  protected stateNames(): string[] {
    return (this.base as unknown as { stateNames(): string[] }).stateNames();
  }
  applyUpdate(d: string, o: Parameters<Optimizer['applyUpdate']>[1]): void {
    this.base.applyUpdate(d, o);
  }
  override addParamGroup(): void {
    throw new Error(`${this.name}: add groups to the parameters before constructing the optimizer`);
  }
  override get stepCount(): number {
    return this.base?.stepCount ?? 0;
  }
  override set stepCount(v: number) {
    if (this.base) this.base.stepCount = v;
  }

  protected get gated(): boolean {
    return this.opts.skipNonFinite !== false;
  }
  protected get mode(): RestoreMode {
    return this.opts.restore === 'subtract' ? 'delta' : 'backup';
  }
  /** The epsilon added to the gradient norm (the base optimizer's own `eps` is the base's). */
  protected get normEps(): number {
    return this.opts.normEps as number;
  }
  /** rho per group, as a live value (an input of a captured step; see Optimizer.live). */
  protected rhos(): number[] {
    return this.live(this.rhoValues(), () => this.rhoValues());
  }
  /** rho per group, plain (for host decisions and getters, which must not declare live values). */
  protected rhoValues(): number[] {
    return this.paramGroups.map((g) => g.rho as number);
  }
  protected adaptiveGroups(): AdaptiveGroup[] | undefined {
    if (!this.paramGroups.some((g) => g.adaptive)) return undefined;
    return this.paramGroups.map((g) => ({ on: !!g.adaptive, eta: g.eta as number, bias: !!g.adaptiveBias }));
  }
  protected freeze(): void {
    if (this.opts.freezeBatchNorm !== false && !this.frozeStats) {
      freezeRunningStats();
      this.frozeStats = true;
    }
  }
  protected unfreeze(): void {
    if (this.frozeStats) {
      unfreezeRunningStats();
      this.frozeStats = false;
    }
  }
  /**
   * A forward-backward pass at the perturbed weights with BatchNorm statistics frozen; if the pass
   * throws, the weights are restored before the error propagates.
   */
  protected perturbedPass<T>(pass: () => T): T {
    this.freeze();
    try {
      return pass();
    } catch (err) {
      this.engine.restore(this.mode);
      throw err;
    } finally {
      this.unfreeze();
    }
  }
  /**
   * Disposes the loss of a pass the caller never sees (the perturbed pass): the closure hands its
   * loss tensor over, and nobody else could dispose it, so a loop without an outer tidy leaked one
   * tensor per step. `keep` (the loss returned to the caller) is left alone if it is the same tensor.
   */
  protected discardLoss(loss: Tensor | number | undefined, keep?: Tensor | number): void {
    if (loss instanceof Tensor && loss !== keep && !loss.isDisposed) loss.dispose();
  }
  /** The next update: counts it, runs the base update (fused with the restore when asked). */
  protected update(d: string, restore: boolean): void {
    captureHooks.hostState?.('Optimizer.stepCount', null, () => { this.base.stepCount++; });
    this.base.stepCount++;
    this.base.applyUpdate(d, { restore: restore ? this.mode : null, gated: this.gated });
  }
  /** The check of a later gradient: ORs its non-finite flag into the step's and commits the counters. */
  protected checkAndCommit(vec: string, slot: number): void {
    this.engine.norm(vec, slot, { gate: this.gated ? 'or' : undefined, then: this.gated ? COMMIT : undefined });
  }
  protected runLoss(closure: Closure): Tensor | number {
    return this.runClosure(closure);
  }

  /** Counters and the last step's norms, read from the device. */
  async stats(): Promise<SharpnessStats> {
    return this.makeStats(await this.engine.readScalars());
  }
  /** stats() without awaiting, on backends with synchronous reads (cpu, wasm). */
  statsSync(): SharpnessStats {
    const s = this.engine.readScalarsSync();
    if (!s) throw new Error(`${this.name}.statsSync: the ${this.engine.backend.name} backend reads asynchronously; use await stats()`);
    return this.makeStats(s);
  }
  private makeStats(s: Float64Array): SharpnessStats {
    const attempted = this.base.stepCount;
    const skipped = s[S_SKIPPED];
    return {
      attempted,
      taken: this.gated ? s[S_STEPS] : attempted,
      skipped,
      gradNorm: s[S_NORM],
      perturbedGradNorm: s[S_NORM2],
      lastSkipped: s[S_FLAG] !== 0,
      scalars: s,
    };
  }
  override async counters(): Promise<{ attempted: number; taken: number; skipped: number }> {
    const s = await this.stats();
    return { attempted: s.attempted, taken: s.taken, skipped: s.skipped };
  }
}

export interface SAMOptions extends SharpnessOptions {}

/**
 * SAM: e = rho * g / (||g|| + eps) with one global norm over all groups and rho per group (ASAM
 * with `adaptive: true`: e = rho * T^2 g / (||T g|| + eps)). The closure of `step` does the forward
 * and backward pass and returns the loss; `step` calls it twice (at w, then at w + e) and returns
 * the first loss.
 */
export class SAM extends SharpnessAware {
  constructor(params: ParamsInput, Base: BaseOptimizerClass, opts: SAMOptions = {}, name = 'SAM', groupDefaults?: Record<string, unknown>) {
    const adaptive = (opts.adaptive as boolean | undefined) ?? false;
    super(name, params, Base, opts, groupDefaults ?? { rho: adaptive ? 0.5 : 0.05, adaptive, eta: 0.01, adaptiveBias: false });
  }

  /** Moves to w + e (gradients must be computed at w). */
  firstStep(o: { zeroGrad?: boolean } = {}): void {
    if (this.perturbed) throw new Error(`${this.name}.firstStep: called twice without secondStep`);
    this.validateAll();
    const e = this.engine;
    e.prepare();
    const adaptive = this.adaptiveGroups();
    e.norm('g', S_NORM, { adaptive, gate: this.gated ? 'set' : undefined });
    e.perturb('g', { coef: this.rhos(), normSlot: S_NORM, eps: this.normEps, adaptive, mode: this.mode, gated: this.gated });
    this.perturbed = true;
    this.freeze();
    if (o.zeroGrad) e.zeroGrads();
  }

  /** Back to w and the base optimizer's step with the gradient computed at w + e. */
  secondStep(o: { zeroGrad?: boolean } = {}): void {
    if (!this.perturbed) throw new Error(`${this.name}.secondStep: call firstStep first`);
    const e = this.engine;
    e.prepare();
    this.checkAndCommit('g', S_NORM2);
    this.update('g', true);
    this.perturbed = false;
    this.unfreeze();
    if (o.zeroGrad) e.zeroGrads();
  }

  /** Both passes: closure at w (its loss is returned), then at w + e; the gradients are cleared first. */
  override step(closure?: Closure): Tensor | number {
    if (!closure) throw new Error(`${this.name}.step: needs a closure that does the forward and backward pass and returns the loss`);
    this.engine.zeroGrads();
    const loss = this.runLoss(closure);
    this.firstStep({ zeroGrad: true });
    try {
      this.discardLoss(this.runLoss(closure), loss);
    } catch (err) {
      this.engine.restore(this.mode);
      this.perturbed = false;
      this.unfreeze();
      throw err;
    }
    this.secondStep();
    return loss;
  }
}

/** ASAM (official implementation's definition): SAM with adaptive: true, default rho 0.5 and eta 0.01. */
export class ASAM extends SAM {
  constructor(params: ParamsInput, Base: BaseOptimizerClass, opts: SAMOptions = {}) {
    super(params, Base, { ...opts, adaptive: opts.adaptive ?? true }, 'ASAM', { rho: 0.5, adaptive: true, eta: 0.01, adaptiveBias: false });
  }
}
