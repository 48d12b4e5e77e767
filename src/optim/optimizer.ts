/**
 * The Optimizer base: parameter groups with per-group options (validated by name: an unknown
 * option is an error that names it), zeroGrad, state and state dicts, and the engine (fused over
 * a flat arena, or an unfused per-tensor loop) that every update runs on.
 */
import { COMMIT, S_CHECK, S_SKIPPED, S_SLOTS } from '../kernels/fused.js';
import { shapesEqual, fmt } from '../tensor/shape.js';
import { Tensor } from '../tensor/tensor.js';
import { withGradMode } from '../tensor/graph.js';
import { captureHooks } from '../compile/hooks.js';
import { copyInto } from '../nn/module.js';
import { makeEngine, type Engine, type EngineUpdate } from './engine.js';

export interface ParamGroup {
  params: Tensor[];
  [option: string]: unknown;
}

export type GroupInput = { params: Iterable<Tensor> | Tensor[] } & Record<string, unknown>;
/** A list of tensors (model.parameters()), or parameter groups with their own options. */
export type ParamsInput = Iterable<Tensor> | GroupInput[];

export interface CommonOptions {
  /**
   * Run over one flat arena with fused kernels (default where the backend has them), or per tensor
   * with ordinary ops (fused: false), as the PyTorch implementations do.
   */
  fused?: boolean;
  /**
   * Which parameters get weight decay: 'all' (default, as torch) or 'weights' (not biases and
   * norm scales: vectors not named weight), a per-parameter fact of the arena's table.
   */
  decay?: 'all' | 'weights';
}

export interface OptimizerStateDict {
  /** Per parameter index: state tensors by torch's names (momentum_buffer, exp_avg, ...) and numbers. */
  state: Record<number, Record<string, Tensor | number>>;
  param_groups: (Record<string, unknown> & { params: number[] })[];
  /** flatgrad's device scalars (norms, the non-finite flag, steps taken and skipped). */
  scalars?: Tensor;
  /** Host count of update calls. */
  step_count?: number;
}

export type Closure = () => Tensor | number;

/** Options that configure the optimizer as a whole, never a group. */
const GLOBAL_OPTIONS = ['fused', 'decay'];

export function isGroupList(p: ParamsInput): p is GroupInput[] {
  return Array.isArray(p) && p.length > 0 && !(p[0] instanceof Tensor) && typeof p[0] === 'object' && p[0] !== null && 'params' in (p[0] as object);
}

export function checkFinite(opt: string, name: string, v: unknown, min = 0, max = Infinity): void {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    const range = max === Infinity ? `a finite number >= ${min}` : `in [${min}, ${max}]`;
    throw new RangeError(`${opt}: ${name} must be ${range}, got ${typeof v === 'number' ? v : JSON.stringify(v)}`);
  }
}

export abstract class Optimizer {
  readonly paramGroups: ParamGroup[] = [];
  readonly defaults: Record<string, unknown>;
  /** The engine every update runs on; shared with a sharpness-aware wrapper. */
  engine!: Engine;
  private _stepCount = 0;
  /** Number of update calls (steps attempted); the device count of steps taken is in the scalars. */
  get stepCount(): number {
    return this._stepCount;
  }
  set stepCount(v: number) {
    this._stepCount = v;
  }
  protected readonly fusedOpt: boolean | undefined;
  protected readonly decayOpt: 'all' | 'weights';
  /**
   * Group options that reach the kernels only inside objects declared through
   * captureHooks.hostValue (see `live`): a captured step takes them as inputs and does not trace
   * again when a scheduler changes them. Every other option guards the plan. A subclass adds an
   * option here only when no host code of its step reads it other than through such an object.
   */
  readonly liveHyper = new Set<string>();

  /**
   * @param defaults every option this optimizer knows, with its default value.
   * @param opts the user's options; names outside `defaults` (and `fused`) are an error.
   */
  constructor(
    readonly name: string,
    params: ParamsInput,
    defaults: Record<string, unknown>,
    opts: Record<string, unknown>,
    internal: { extraKeys?: readonly string[]; defer?: boolean; adopt?: Optimizer } = {},
  ) {
    if (internal.adopt) {
      // A wrapper (the sharpness-aware family) shares its base optimizer's groups and engine.
      const base = internal.adopt;
      this.defaults = { ...base.defaults, ...defaults };
      this.fusedOpt = base.fusedOpt;
      this.decayOpt = base.decayOpt;
      this.paramGroups.push(...base.paramGroups);
      this.engine = base.engine;
      return;
    }
    const known = new Set([...Object.keys(defaults), ...(internal.extraKeys ?? [])]);
    for (const k of Object.keys(opts)) {
      if (!known.has(k) && !GLOBAL_OPTIONS.includes(k)) throw unknownOption(name, k, [...known, ...GLOBAL_OPTIONS]);
    }
    this.defaults = { ...defaults };
    for (const [k, v] of Object.entries(opts)) if (k in defaults && v !== undefined) this.defaults[k] = v;
    this.fusedOpt = opts.fused as boolean | undefined;
    this.decayOpt = (opts.decay as 'all' | 'weights' | undefined) ?? 'all';
    if (this.decayOpt !== 'all' && this.decayOpt !== 'weights') throw new RangeError(`${name}: decay must be 'all' or 'weights', got ${JSON.stringify(opts.decay)}`);
    const groups: GroupInput[] = isGroupList(params) ? params : [{ params: params as Iterable<Tensor> }];
    if (groups.length === 0) throw new RangeError(`${name}: got an empty parameter list`);
    const seen = new Set<Tensor>();
    for (const g of groups) this.addGroupInternal(g, known, seen);
    for (const g of this.paramGroups) this.validateGroup(g);
    if (!internal.defer) this.buildEngine();
  }

  private addGroupInternal(g: GroupInput, known: Set<string>, seen: Set<Tensor>): void {
    for (const k of Object.keys(g)) {
      if (k !== 'params' && !known.has(k)) throw unknownOption(`${this.name} (param group ${this.paramGroups.length})`, k, [...known]);
    }
    const ps = [...g.params];
    if (ps.length === 0) throw new RangeError(`${this.name}: param group ${this.paramGroups.length} has no parameters`);
    for (const p of ps) {
      if (!(p instanceof Tensor)) throw new TypeError(`${this.name}: parameters must be Tensors, got ${typeof p}`);
      if (seen.has(p)) throw new Error(`${this.name}: a parameter appears in more than one group (or twice)`);
      seen.add(p);
    }
    const group: ParamGroup = { ...this.defaults, ...g, params: ps };
    this.paramGroups.push(group);
  }

  /** Builds the engine over the current groups (the flat arena coalesces the parameters now). */
  protected buildEngine(): void {
    const params: Tensor[] = [];
    const groupOf: number[] = [];
    this.paramGroups.forEach((g, gi) => {
      for (const p of g.params) {
        params.push(p);
        groupOf.push(gi);
      }
    });
    this.engine = makeEngine(params, groupOf, this.paramGroups.length, this.fusedOpt, this.decayOpt);
  }

  /** Whether this optimizer runs on fused kernels over a flat arena. */
  get fused(): boolean {
    return this.engine.fused;
  }

  /** Adds a group (before the first step: the arena is rebuilt). */
  addParamGroup(g: GroupInput): void {
    if (this.stepCount > 0) throw new Error(`${this.name}: addParamGroup after the first step is not supported`);
    const known = new Set(Object.keys(this.defaults));
    const seen = new Set(this.paramGroups.flatMap((x) => x.params));
    this.addGroupInternal(g, known, seen);
    this.validateGroup(this.paramGroups[this.paramGroups.length - 1]);
    this.engine.dispose();
    this.buildEngine();
  }

  /** Checks a group's values (called at construction and before every step: schedulers change them). */
  protected abstract validateGroup(g: ParamGroup): void;

  protected validateAll(): void {
    for (const g of this.paramGroups) this.validateGroup(g);
    // The kernels get the hyper-parameters as host numbers: a captured step (src/compile) replays
    // only while the ones that steer host code are what they were when it was traced; the live
    // ones (a scheduler's lr) are inputs of the plan.
    const live = this.liveHyper;
    captureHooks.hostState?.(`${this.name}.paramGroups`, () => this.paramGroups.map(({ params: _p, ...h }) => Object.fromEntries(Object.entries(h).filter(([k]) => !live.has(k)))), null);
  }

  /**
   * Declares `value` (about to be passed to the engine) as recomputed by `get` on each replay of a
   * captured step, and returns it: the way a live hyper-parameter reaches the kernels.
   */
  protected live<T extends object>(value: T, get: () => T): T {
    captureHooks.hostValue?.(value, get);
    return value;
  }

  /** The base update with descent direction `d` (a vector name), optionally fused with SAM's restore. */
  abstract applyUpdate(d: string, o: EngineUpdate): void;

  /** Names of the per-parameter state vectors, as torch names them. */
  protected abstract stateNames(): string[];

  /** Runs the closure (with grad mode on) and returns its loss. */
  protected runClosure(closure: Closure): Tensor | number {
    return withGradMode(true, closure);
  }

  /** One update with the current gradients; with a closure, runs it first and returns its loss. */
  step(closure?: Closure): Tensor | number | undefined {
    const loss = closure ? this.runClosure(closure) : undefined;
    this.validateAll();
    this.engine.prepare();
    // A captured step (src/compile) replays device work only: it counts the step through this hook.
    captureHooks.hostState?.('Optimizer.stepCount', null, () => { this.stepCount++; });
    this.stepCount++;
    // A non-finite gradient (NaN or Inf anywhere) skips the whole step and counts it, as in the
    // sharpness-aware family: one reduction on the device sets the flag, no readback.
    this.engine.norm('g', S_CHECK, { gate: 'set', then: COMMIT });
    this.applyUpdate('g', { restore: null, gated: true });
    return loss;
  }

  /**
   * Clears the gradients with torch's default (set_to_none) meaning: until backward accumulates
   * into it (or .grad is assigned), a parameter has no gradient and the next update leaves it
   * alone. The fused engine zeroes the flat gradient in one fill and keeps the .grad views (writing
   * into a view's storage directly does not count as a gradient: assign p.grad instead); the
   * unfused one sets them to null. `setToNone: true` nulls them on both; `false` keeps zero
   * gradients that the update uses, as torch's set_to_none=False.
   */
  zeroGrad(opts: { setToNone?: boolean } = {}): void {
    this.engine.zeroGrads(opts.setToNone);
  }

  /** State tensors of one parameter, by torch's names. */
  stateOf(p: Tensor): Record<string, Tensor> {
    const k = this.engine.params.indexOf(p);
    if (k < 0) throw new Error(`${this.name}: that tensor is not one of this optimizer's parameters`);
    const out: Record<string, Tensor> = {};
    for (const n of this.stateNames()) {
      const ts = this.engine.stateTensors(n);
      if (ts) out[n] = ts[k];
    }
    return out;
  }

  /** torch's `optimizer.state`: a map from parameter to its state. */
  get state(): Map<Tensor, Record<string, Tensor>> {
    return new Map(this.engine.params.map((p) => [p, this.stateOf(p)]));
  }

  /**
   * The state in torch's layout (parameters by index), plus flatgrad's device scalars. Tensors are
   * the optimizer's own (views into the arena when fused), not copies.
   */
  stateDict(): OptimizerStateDict {
    const state: Record<number, Record<string, Tensor | number>> = {};
    for (const n of this.stateNames()) {
      const ts = this.engine.stateTensors(n);
      if (!ts) continue;
      ts.forEach((t, k) => ((state[k] ??= {})[n] = t));
    }
    // torch keeps a step per parameter (state[p]['step']): one that went without gradients has fewer.
    if (this.stepCount > 0) this.engine.paramSteps().forEach((n, k) => ((state[k] ??= {}).step = n));
    let idx = 0;
    const param_groups = this.paramGroups.map((g) => {
      const { params, ...rest } = g;
      return { ...rest, params: params.map(() => idx++) };
    });
    return { state, param_groups, scalars: this.engine.scalarsTensor(), step_count: this.stepCount };
  }

  /** Copies a state dict's values into this optimizer (same group structure); the arena stays. */
  loadStateDict(sd: OptimizerStateDict): void {
    if (!sd || !Array.isArray(sd.param_groups)) throw new TypeError(`${this.name}.loadStateDict: not an optimizer state dict`);
    if (sd.param_groups.length !== this.paramGroups.length) {
      throw new RangeError(`${this.name}.loadStateDict: ${sd.param_groups.length} param groups in the state dict, ${this.paramGroups.length} here`);
    }
    sd.param_groups.forEach((g, i) => {
      if (g.params.length !== this.paramGroups[i].params.length) {
        throw new RangeError(`${this.name}.loadStateDict: group ${i} has ${g.params.length} parameters in the state dict, ${this.paramGroups[i].params.length} here`);
      }
    });
    sd.param_groups.forEach((g, i) => {
      for (const [k, v] of Object.entries(g)) if (k !== 'params') this.paramGroups[i][k] = v;
    });
    const params = this.engine.params;
    const stepsGiven = new Set<number>();
    for (const [ks, entry] of Object.entries(sd.state ?? {})) {
      const k = Number(ks);
      if (!(k >= 0 && k < params.length)) throw new RangeError(`${this.name}.loadStateDict: state for parameter ${ks}, which does not exist`);
      for (const [name, v] of Object.entries(entry)) {
        if (name === 'step') {
          if (typeof v !== 'number' && !(v instanceof Tensor && v.size === 1)) throw new TypeError(`${this.name}.loadStateDict: step of parameter ${k} must be a number or a one-element tensor`);
          this.engine.setParamStep(k, v);
          stepsGiven.add(k);
          continue;
        }
        if (!(v instanceof Tensor)) continue;
        if (!this.stateNames().includes(name)) throw new Error(`${this.name}.loadStateDict: unknown state ${JSON.stringify(name)} for parameter ${k}`);
        if (!shapesEqual(v.shape, params[k].shape)) throw new RangeError(`${this.name}.loadStateDict: ${name} of parameter ${k} has shape ${fmt(v.shape)}, expected ${fmt(params[k].shape)}`);
        copyInto(this.engine.ensureState(name)[k], v, `${this.name}.loadStateDict(${k}.${name})`);
      }
    }
    if (typeof sd.step_count === 'number') {
      this.stepCount = sd.step_count;
      // A state dict without per-parameter steps: every parameter took every update.
      for (let k = 0; k < params.length; k++) if (!stepsGiven.has(k)) this.engine.setParamStep(k, sd.step_count);
    }
    if (sd.scalars) {
      const s = sd.scalars;
      if (s.size !== S_SLOTS) throw new RangeError(`${this.name}.loadStateDict: scalars must have ${S_SLOTS} elements`);
      if (this.engine.fused) copyInto(this.engine.scalarsTensor(), s, `${this.name}.loadStateDict(scalars)`);
      else {
        if (!s.backend.readSync) throw new Error(`${this.name}.loadStateDict: scalars on an asynchronous backend; read them first`);
        this.engine.loadScalars(s.backend.readSync(s.storage));
      }
    }
  }

  /** Steps taken and skipped (non-finite gradients), read from the device. */
  async counters(): Promise<{ attempted: number; taken: number; skipped: number }> {
    const s = await this.engine.readScalars();
    return { attempted: this.stepCount, taken: this.stepCount - s[S_SKIPPED], skipped: s[S_SKIPPED] };
  }

  /** Releases the arena's extra storages (the parameters keep their values). */
  dispose(): void {
    this.engine.dispose();
  }
}

export class UnknownOptionError extends Error {
  constructor(
    readonly where: string,
    readonly key: string,
    readonly known: readonly string[],
  ) {
    super(`${where}: unknown option ${JSON.stringify(key)}; known options: ${[...new Set(known)].join(', ')}`);
    this.name = 'UnknownOptionError';
  }
}

export function unknownOption(where: string, key: string, known: readonly string[]): Error {
  return new UnknownOptionError(where, key, known);
}
