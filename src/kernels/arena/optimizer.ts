/**
 * defineOptimizer: an optimizer from one arena-kernel definition. The kernel reads the gradients
 * 'g' and writes the parameters 'p'; every other vector it declares is optimizer state (zeros at
 * first, torch's state[p][name]). Per-group hyper-parameters come from the options and parameter
 * groups, as in torch. With fused (the default) the parameters are coalesced into one FlatArena
 * (src/optim/arena.ts) and a step is one pass over it; with fused: false the same kernel runs once
 * per parameter tensor (the per-tensor baseline).
 */
import { S_SLOTS, S_FLAG, FLAG_ACTIVE, FLAG_DECAY, FLAG_VECTOR, FLAG_WEIGHT } from '../fused.js';
import type { Storage } from '../backend.js';
import { Tensor } from '../../tensor/tensor.js';
import { FlatArena, isWeightParam } from '../../optim/arena.js';
import { isGroupList, type ParamsInput } from '../../optim/optimizer.js';
import { defineArenaKernel, type ArenaKernel, type ArenaKernelSpec } from './define.js';
import { ArenaDefinitionError } from './expr.js';
import { runArenaKernel, runPerTensor, type RunOptions } from './run.js';

export interface ArenaOptimizerOptions {
  /** One pass over a flat arena (default), or the kernel once per tensor. */
  fused?: boolean;
  /** Which parameters have FLAG_DECAY: 'all' (default, as torch) or 'weights'. */
  decay?: 'all' | 'weights';
  /** Host code on cpu/wasm (tests): see RunOptions. */
  path?: RunOptions['path'];
  /** Hyper-parameters (defaults of every group). */
  [hyper: string]: unknown;
}

export interface OptimizerDefinition {
  readonly name: string;
  readonly kernel: ArenaKernel;
  /** Builds the optimizer over parameters (a list, or torch-style groups with their own hyper-parameters). */
  create(params: ParamsInput, opts?: ArenaOptimizerOptions): ArenaOptimizer;
}

/** Sets S[S_FLAG] when an active gradient holds a NaN or Inf; run before every update. */
const NONFINITE_CHECK = defineArenaKernel({
  name: 'arena-optimizer-nonfinite-check',
  vectors: { g: 'read' },
  slots: { flag: S_FLAG },
  reduce: ({ g }, _h, _s, k) => ({ flag: k.anyNonFinite(g) }),
});

export function defineOptimizer(spec: ArenaKernelSpec): OptimizerDefinition {
  // A step whose gradients hold a NaN or Inf is skipped whole (nothing written, no step counted),
  // as the library's own optimizers skip it: the update is guarded on the flag NONFINITE_CHECK sets.
  const own = spec?.guard;
  const kernel = defineArenaKernel({
    ...spec,
    slots: { ...spec?.slots, nonfinite_gradient: S_FLAG },
    guard: (h, s, k) => (own ? k.and(own(h, s, k), k.eq(s.nonfinite_gradient, 0)) : k.eq(s.nonfinite_gradient, 0)),
  });
  const access = Object.fromEntries(kernel.vectors.map((v) => [v.name, v.access]));
  if (access.p !== 'readwrite' && access.p !== 'write') throw new ArenaDefinitionError(`arena optimizer "${kernel.name}": vectors: 'p' (the parameters) must be declared 'readwrite'`);
  if (access.g !== 'read') throw new ArenaDefinitionError(`arena optimizer "${kernel.name}": vectors: 'g' (the gradients) must be declared 'read'`);
  return { name: kernel.name, kernel, create: (params, opts) => new ArenaOptimizer(kernel, params, opts) };
}

const GLOBAL = ['fused', 'decay', 'path'];

export class ArenaOptimizer {
  readonly params: Tensor[];
  /** Hyper-parameters per group (mutable, like torch's param_groups; read at every step). */
  readonly groups: Record<string, number>[];
  private readonly groupOf: number[];
  private readonly arena: FlatArena | null;
  private readonly S: Storage;
  private readonly steps: Storage;
  private readonly state = new Map<string, Tensor[]>();
  private readonly path: RunOptions['path'];
  private readonly decayAll: boolean;

  constructor(
    readonly kernel: ArenaKernel,
    paramsIn: ParamsInput,
    opts: ArenaOptimizerOptions = {},
  ) {
    const name = kernel.name;
    const known = Object.keys(kernel.hyper);
    const hyperOpts = (o: Record<string, unknown>, where: string, skip: readonly string[]) => {
      const out: Record<string, number> = {};
      for (const [key, v] of Object.entries(o)) {
        if (skip.includes(key)) continue;
        if (!known.includes(key)) throw new RangeError(`${name}: unknown option '${key}'${where} (hyper-parameters: ${known.join(', ') || 'none'})`);
        if (typeof v !== 'number' || Number.isNaN(v)) throw new RangeError(`${name}: ${key}${where} must be a number, got ${JSON.stringify(v)}`);
        out[key] = v;
      }
      return out;
    };
    const base = { ...kernel.hyper, ...hyperOpts(opts, '', GLOBAL) };
    const groupsIn = isGroupList(paramsIn) ? paramsIn : [{ params: paramsIn }];
    this.params = [];
    this.groupOf = [];
    this.groups = groupsIn.map((g, gi) => {
      for (const p of g.params) {
        this.params.push(p as Tensor);
        this.groupOf.push(gi);
      }
      return { ...base, ...hyperOpts(g, ` in group ${gi}`, ['params']) };
    });
    if (this.params.length === 0) throw new RangeError(`${name}: got an empty parameter list`);
    this.path = opts.path;
    this.decayAll = (opts.decay ?? 'all') === 'all';
    const b = this.params[0].backend;
    const dtype = this.params[0].dtype;
    this.arena = opts.fused === false ? null : new FlatArena(this.params, this.groupOf, this.groups.length, opts.decay ?? 'all');
    this.S = b.alloc(S_SLOTS, dtype);
    this.steps = this.arena ? this.arena.stepCounts : b.alloc(this.params.length, dtype);
  }

  get fused(): boolean {
    return this.arena !== null;
  }

  /** One update from the current gradients. */
  step(): void {
    const kernel = this.kernel;
    const state = kernel.vectors.filter((v) => v.name !== 'p' && v.name !== 'g');
    if (this.arena) {
      const a = this.arena;
      a.syncGrads();
      const vectors = Object.fromEntries(kernel.vectors.map((v) => [v.name, a.vec(v.name)]));
      runArenaKernel(NONFINITE_CHECK, a.backend, { layout: a.layout, vectors: { g: a.G }, S: this.S }, { path: this.path });
      runArenaKernel(kernel, a.backend, { layout: a.layout, vectors, S: this.S, steps: this.steps, hyper: this.groups }, { path: this.path });
      return;
    }
    const params = this.params.map((p, k) => {
      if (p.storage.numel !== p.size) throw new Error(`${kernel.name}: parameter ${k} is a view; the per-tensor path needs parameters that own their storage`);
      const g = p.grad && !p.grad.isDisposed ? p.grad : null;
      const weight = isWeightParam(p);
      const flags = (g ? FLAG_ACTIVE : 0) | (weight ? FLAG_WEIGHT : 0) | (this.decayAll || weight ? FLAG_DECAY : 0) | (p.ndim < 2 ? FLAG_VECTOR : 0);
      const vectors: Record<string, Storage> = { p: p.storage, g: g ? g.storage : p.storage };
      for (const v of state) vectors[v.name] = this.stateTensors(v.name)[k].storage;
      return { vectors, numel: p.size, group: this.groupOf[k], flags };
    });
    const perTensor = { dtype: this.params[0].dtype as 'float32' | 'float64', S: this.S, steps: this.steps, hyper: this.groups };
    runPerTensor(NONFINITE_CHECK, this.params[0].backend, { ...perTensor, params: params.map((p) => ({ ...p, vectors: { g: p.vectors.g } })) }, { path: this.path });
    runPerTensor(kernel, this.params[0].backend, { ...perTensor, params }, { path: this.path });
  }

  /** Clears the gradients (torch's set_to_none by default). */
  zeroGrad(setToNone = true): void {
    if (this.arena) return this.arena.zeroGrads(setToNone);
    for (const p of this.params) {
      if (setToNone) {
        p.grad?.dispose();
        p.grad = null;
      } else if (p.grad) p.backend.fill(p.grad.storage, 0);
    }
  }

  /** Per-parameter tensors of a state vector (views into the arena when fused). */
  stateTensors(name: string): Tensor[] {
    if (!this.kernel.vectors.some((v) => v.name === name) || name === 'p' || name === 'g') throw new RangeError(`${this.kernel.name}: no state vector '${name}'`);
    if (this.arena) return this.arena.viewsOf(name);
    let ts = this.state.get(name);
    if (!ts) {
      ts = this.params.map((p) => Tensor.empty(p.shape.slice(), p.dtype, p.backend).keep());
      this.state.set(name, ts);
    }
    return ts;
  }

  dispose(): void {
    const b = this.params[0].backend;
    b.release(this.S);
    if (this.arena) this.arena.dispose();
    else {
      b.release(this.steps);
      for (const ts of this.state.values()) for (const t of ts) t.dispose();
    }
  }
}
