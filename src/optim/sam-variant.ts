/**
 * defineSamVariant: a new member of the sharpness-aware family from arena kernels, in one file.
 *
 * Most published SAM variants change only where the ascent step points: Friendly-SAM subtracts an
 * EMA of past gradients, VaSSO follows a variance-suppressed average, ... . A variant here is
 * SAM's two passes (src/optim/sam.ts: the closure at w, then at w + e, BatchNorm statistics frozen
 * in between, the restore fused with the base optimizer's update, a step with a NaN or Inf gradient
 * skipped and counted) with the ascent direction computed by the researcher's own arena kernels:
 *
 *   1. S[S_FLAG] = (the first gradient holds a NaN or Inf)   (so that kernels can guard on it)
 *   2. each kernel of `ascent`, in order, over the arena (per-group hyper-parameters from the groups)
 *   3. S[S_NORM] = ||d||, d the vector named `direction`
 *   4. p += rho d / (||d|| + normEps), the backup kept for the exact restore
 *
 * The second pass, the restore and the base update are SAM's. With rho = 0 the step is the base
 * optimizer's (the perturbation is zero), which fg.testing.checkOptimizer holds a variant to.
 */
import { FLAG_ACTIVE, FLAG_DECAY, FLAG_VECTOR, FLAG_WEIGHT, S_FLAG, S_NORM } from '../kernels/fused.js';
import type { Storage } from '../kernels/backend.js';
import type { ArenaKernel } from '../kernels/arena/define.js';
import { runArenaKernel, runPerTensor, type RunOptions } from '../kernels/arena/run.js';
import { isWeightParam } from './arena.js';
import { FlatEngine, LoopEngine, type Engine } from './engine.js';
import type { ParamsInput } from './optimizer.js';
import { SAM, type BaseOptimizerClass, type SAMOptions } from './sam.js';

export interface SamVariantSpec {
  /** Names the optimizer in errors and stats. */
  name: string;
  /** The variant's own per-group options and their defaults (rho's default too, if not 0.05). */
  hyper?: Readonly<Record<string, number>>;
  /**
   * Kernels run after the first gradient, before the perturbation. They see 'p', 'g' and any state
   * vector by name (zeros at first); their hyper-parameters are read from the parameter groups.
   */
  ascent: readonly ArenaKernel[];
  /** The vector the perturbation follows (written by an ascent kernel, or 'g'). */
  direction: string;
}

export type SamVariantClass = new (params: ParamsInput, Base: BaseOptimizerClass, opts?: SAMOptions & Record<string, unknown>) => SAM;

const SAM_GROUP = { rho: 0.05, adaptive: false, eta: 0.01, adaptiveBias: false };

export function defineSamVariant(spec: SamVariantSpec): SamVariantClass {
  const name = spec?.name;
  if (typeof name !== 'string' || !name) throw new TypeError('defineSamVariant: a variant needs a non-empty name');
  const ascent: readonly ArenaKernel[] = spec.ascent;
  if (!Array.isArray(ascent as unknown) || ascent.some((k) => k?.kind !== 'arena-kernel')) throw new TypeError(`defineSamVariant "${name}": ascent must be a list of kernels from defineArenaKernel`);
  if (typeof spec.direction !== 'string' || !spec.direction) throw new TypeError(`defineSamVariant "${name}": direction must name an arena vector`);
  const groupDefaults = { ...SAM_GROUP, ...(spec.hyper ?? {}) };
  for (const kernel of ascent) {
    for (const h of Object.keys(kernel.hyper)) {
      if (!(h in groupDefaults)) throw new TypeError(`defineSamVariant "${name}": kernel "${kernel.name}" reads hyper-parameter '${h}', which the variant does not declare in hyper`);
    }
  }
  // A writable vector is always written (defineArenaKernel rejects one that is not).
  const written = new Set(['g', ...ascent.flatMap((k) => k.vectors.filter((v) => v.access !== 'read').map((v) => v.name))]);
  if (!written.has(spec.direction)) throw new TypeError(`defineSamVariant "${name}": direction '${spec.direction}' is neither 'g' nor written by an ascent kernel (${[...written].join(', ')})`);

  const Variant = class extends SAM {
    constructor(params: ParamsInput, Base: BaseOptimizerClass, opts: SAMOptions & Record<string, unknown> = {}) {
      super(params, Base, opts, name, { ...groupDefaults, adaptive: (opts.adaptive as boolean | undefined) ?? false });
    }

    override firstStep(o: { zeroGrad?: boolean } = {}): void {
      if (this.perturbed) throw new Error(`${this.name}.firstStep: called twice without secondStep`);
      this.validateAll();
      const e = this.engine;
      e.prepare();
      e.norm('g', S_NORM, { gate: this.gated ? 'set' : undefined });
      for (const kernel of ascent) {
        const hyperNow = () => this.paramGroups.map((g) => Object.fromEntries(Object.keys(kernel.hyper).map((h) => [h, g[h] as number])));
        runOnEngine(kernel, e, this.live(hyperNow(), hyperNow));
      }
      const adaptive = this.adaptiveGroups();
      // 'or': a NaN that only the direction shows (an overflow in the kernels) also skips the step.
      e.norm(spec.direction, S_NORM, { adaptive, gate: this.gated ? 'or' : undefined });
      e.perturb(spec.direction, { coef: this.rhos(), normSlot: S_NORM, eps: this.normEps, adaptive, mode: this.mode, gated: this.gated });
      this.perturbed = true;
      this.freeze();
      if (o.zeroGrad) e.zeroGrads();
    }
  };
  // The class is named after the variant (reports, stack traces and `flatgrad bench` labels use it).
  Object.defineProperty(Variant, 'name', { value: name });
  return Variant;
}

/**
 * Runs an arena kernel over an optimizer's engine: one pass over the flat arena (fused), or the
 * per-tensor baseline over the parameters' own storages (fused: false).
 */
export function runOnEngine(kernel: ArenaKernel, engine: Engine, hyper: readonly Record<string, number>[], opts: RunOptions = {}): void {
  if (engine instanceof FlatEngine) {
    const a = engine.arena;
    const vectors = Object.fromEntries(kernel.vectors.map((v) => [v.name, a.vec(v.name)]));
    runArenaKernel(kernel, a.backend, { layout: a.layout, vectors, S: engine.S, steps: a.stepCounts, hyper }, opts);
    return;
  }
  if (!(engine instanceof LoopEngine)) throw new Error(`arena kernel "${kernel.name}": runOnEngine takes the flat or the per-tensor engine`);
  const b = engine.backend;
  const dtype = engine.dtype as 'float32' | 'float64';
  // The loop engine's scalar slots are used in place (no host round trip: the pass runs on every
  // backend, and a captured step can replay it). Its step counts belong to the base optimizer: a
  // kernel that counts steps counts into a scratch storage here.
  const steps = b.alloc(engine.params.length, dtype);
  const groupOf = engine.groupOf;
  try {
    const state = kernel.vectors.filter((v) => v.name !== 'p' && v.name !== 'g').map((v) => [v.name, engine.ensureState(v.name)] as const);
    const params = engine.params.map((p, k) => {
      if (p.storage.numel !== p.size) throw new Error(`arena kernel "${kernel.name}": parameter ${k} is a view; the per-tensor path needs parameters that own their storage`);
      const g = p.grad && !p.grad.isDisposed ? p.grad : null;
      const weight = isWeightParam(p);
      const vectors: Record<string, Storage> = { p: p.storage, g: g ? g.storage : p.storage };
      for (const [n, ts] of state) vectors[n] = ts[k].storage;
      return { vectors, numel: p.size, group: groupOf[k], flags: (g ? FLAG_ACTIVE : 0) | (weight ? FLAG_WEIGHT : 0) | FLAG_DECAY | (p.ndim < 2 ? FLAG_VECTOR : 0) };
    });
    runPerTensor(kernel, b, { dtype, params, S: engine.S, steps, hyper }, opts);
  } finally {
    b.release(steps);
  }
}
