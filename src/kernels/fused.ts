/**
 * Fused optimizer kernels over one flat parameter arena: the contract that the sharpness-aware
 * family (src/optim) runs on, and how a backend's implementation is found.
 *
 * The arena (built by src/optim/arena.ts) lays every parameter of an optimizer out in one storage,
 * each at a 64-element (256-byte for float32) aligned offset with zero padding between them; the
 * gradients, optimizer state and SAM buffers are storages of the same layout. A kernel here is one
 * pass (one dispatch, two for a global reduction on a GPU) over the whole arena, whatever the
 * number of parameter tensors. Per-parameter facts live in two small int32 tables:
 *
 * - `blockParam[b]`: the parameter that owns 64-element block b.
 * - `paramTable[k * PARAM_FIELDS + f]`: offset, numel, group, flags, rowLen, rowBase of parameter k.
 *
 * Scalars that a step computes (norms, dot products, the non-finite flag, the step counters) stay
 * in a small device storage `S` of the arena's dtype; kernels read their coefficients from it, so
 * a step never reads back to the host. Per-group hyperparameters (lr, rho, ...) are host numbers
 * passed with each call (uniforms on a GPU).
 */
import type { DType, TypedArray } from '../tensor/dtype.js';
import type { Backend, Storage } from './backend.js';

/** Elements per block: 256 bytes of float32. Every parameter starts on a block boundary. */
export const BLOCK = 64;
export const PARAM_FIELDS = 8;
export const F_OFFSET = 0;
export const F_NUMEL = 1;
export const F_GROUP = 2;
export const F_FLAGS = 3;
/** Elements per filter row (RWP): numel / shape[0] for weights, numel for vectors. */
export const F_ROWLEN = 4;
/** Index of the parameter's first row in the arena-wide row list. */
export const F_ROWBASE = 5;

/** ASAM's T = |w| + eta applies (a weight: 2+ dims or named `weight`). */
export const FLAG_WEIGHT = 1;
/** Weight decay applies. */
export const FLAG_DECAY = 2;
/** Has a gradient this step: inactive parameters are neither perturbed nor updated (torch skips grad None). */
export const FLAG_ACTIVE = 4;
/** A vector (fewer than 2 dims): RWP's filter-wise noise uses the whole tensor's norm plus 1e-16. */
export const FLAG_VECTOR = 8;

/** Scalar slots of S. The norm slots (S_NORM, S_NORM2, S_NORMV, S_CHECK) hold norms, not their squares: a squared norm overflows float32 from 1.8e19. */
export const S_NORM = 0;
export const S_FLAG = 1;
export const S_STEPS = 2;
export const S_SKIPPED = 3;
export const S_NORM2 = 4;
export const S_DOT = 5;
export const S_NORMV = 6;
export const S_TMP0 = 7;
export const S_TMP1 = 8;
export const S_TMP2 = 9;
export const S_TMP3 = 10;
export const S_CHECK = 11;
/** Scratch of a norm's 'or' gate: the pass's own non-finite flag, or-ed into S_FLAG after it. */
export const S_GATE = 12;
export const S_SLOTS = 16;

export interface ArenaParamInfo {
  offset: number;
  numel: number;
  group: number;
  flags: number;
  rowLen: number;
  rowBase: number;
}

export interface ArenaLayout {
  readonly dtype: DType;
  /** Elements including padding: a multiple of BLOCK (at least one block). */
  readonly numel: number;
  readonly blocks: number;
  readonly groups: number;
  /** Host copy of the parameter table. */
  readonly params: readonly ArenaParamInfo[];
  /** Total filter rows over all parameters. */
  readonly rows: number;
  /** int32 [blocks]. */
  readonly blockParam: Storage;
  /** int32 [params * PARAM_FIELDS]. */
  readonly paramTable: Storage;
  /** Host copy of blockParam. */
  readonly blockParamHost: Int32Array;
}

/** A scalar expression over S: a constant, a slot, or an operation. */
export type SExpr = number | { s: number } | [SOp, SExpr] | [SOp, SExpr, SExpr] | [SOp, SExpr, SExpr, SExpr];
export type SOp = '+' | '-' | '*' | '/' | 'sqrt' | 'max' | 'min' | '>' | '==' | 'select' | 'nonfinite' | 'pow' | 'or';
/** S[dst] = e, evaluated in order by one invocation. */
export interface SAssign {
  dst: number;
  e: SExpr;
}

export const slot = (s: number): { s: number } => ({ s });

/** Evaluates a scalar expression on the host (the CPU kernels, and tests). */
export function evalSExpr(e: SExpr, S: ArrayLike<number>, round: (x: number) => number = (x) => x): number {
  if (typeof e === 'number') return round(e);
  if (!Array.isArray(e)) return S[e.s];
  const [op, a0, b0, c0] = e;
  const a = evalSExpr(a0, S, round);
  const b = b0 === undefined ? 0 : evalSExpr(b0, S, round);
  switch (op) {
    case '+': return round(a + b);
    case '-': return round(a - b);
    case '*': return round(a * b);
    case '/': return round(a / b);
    case 'sqrt': return round(Math.sqrt(a));
    case 'max': return a !== a || b !== b ? NaN : Math.max(a, b);
    case 'min': return a !== a || b !== b ? NaN : Math.min(a, b);
    case '>': return a > b ? 1 : 0;
    case '==': return a === b ? 1 : 0;
    case 'or': return a !== 0 || b !== 0 ? 1 : 0;
    case 'select': return a !== 0 ? b : evalSExpr(c0!, S, round);
    case 'nonfinite': return Number.isFinite(a) ? 0 : 1;
    case 'pow': return round(Math.pow(a, b));
  }
}

/** The commit program of a gated step: count it as taken or skipped from S[S_FLAG]. */
export const COMMIT: SAssign[] = [
  { dst: S_STEPS, e: ['+', slot(S_STEPS), ['select', slot(S_FLAG), 0, 1]] },
  { dst: S_SKIPPED, e: ['+', slot(S_SKIPPED), ['select', slot(S_FLAG), 1, 0]] },
];

/** ASAM's per-group weighting: T = |p| + eta on weights (and on biases when `bias`) of groups with `on`. */
export interface AdaptiveSpec {
  p: Storage;
  groups: readonly { on: boolean; eta: number; bias: boolean }[];
}

/** ESAM's stochastic weight perturbation: parameter k takes part when uniform(key, k) < beta. */
export interface SelectSpec {
  key0: number;
  key1: number;
  beta: number;
}

export interface NormOptions {
  adaptive?: AdaptiveSpec;
  select?: SelectSpec;
  /**
   * 'set': S[S_FLAG] = (a NaN or Inf among the values); 'or': S[S_FLAG] = S[S_FLAG] or that. Tested
   * directly, not through the norm: a finite 1e20 is no reason to skip a step.
   */
  gate?: 'set' | 'or';
  /** Runs after the sum is stored (in the same final pass on a GPU). */
  then?: readonly SAssign[];
}

export type RestoreMode = 'backup' | 'delta';

export interface PerturbOptions {
  /**
   * e = coef[group] * k * T^2 * dir (T = 1 unless adaptive), k = 1 / (S[normSlot] + eps) when
   * normSlot is given, else 1.
   */
  coef: readonly number[];
  normSlot: number | null;
  eps: number;
  adaptive?: AdaptiveSpec;
  select?: SelectSpec;
  /** 'backup': aux = p (restore by copy); 'delta': aux = e (restore by p -= aux). */
  mode: RestoreMode;
  aux: Storage;
  /** Also copy dir here (the gradient before the second pass overwrites it). */
  save?: Storage | null;
  /** e = 0 when S[S_FLAG] is set. */
  gated: boolean;
}

/** A coefficient: c, or c * S[slot]. */
export interface Coef {
  c: number;
  slot?: number;
}

export interface Term extends Coef {
  x: Storage;
}

export interface NoiseOptions {
  key0: number;
  key1: number;
  /** Per-group standard deviation (RWP's gamma, or 1). */
  scale: readonly number[];
  /** Multiply by each filter row's norm of p (RWP); `rowNorms` is scratch of layout.rows elements. */
  filterwise?: { p: Storage; rowNorms: Storage } | null;
}

export interface SgdGroup {
  lr: number;
  momentum: number;
  dampening: number;
  nesterov: boolean;
  weightDecay: number;
}

export interface AdamGroup {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** AdamW: decay the weights directly (p *= 1 - lr*wd) instead of adding wd*p to the gradient. */
  decoupled: boolean;
}

export interface UpdateOptions {
  /** Restore p from aux first (SAM's fused restore + step). */
  restore?: { aux: Storage; mode: RestoreMode } | null;
  /** Skip the update (p restored, state and step counts untouched) when S[S_FLAG] is set. */
  gated: boolean;
  /**
   * Per-parameter counts of updates taken (torch's state[p]['step']), one element per parameter in
   * the arena's dtype. An update that is taken adds one to the count of every active parameter
   * first; Adam's bias correction and SGD's first momentum step use that parameter's own count, so
   * a parameter that went without a gradient for some steps is corrected as torch corrects it.
   */
  steps: Storage;
}

export interface FusedKernels {
  readonly backend: Backend;
  /**
   * S[slot] = the L2 norm of T x over the active (and selected) parameters, computed so that it does
   * not overflow while it is representable (scaled by the largest magnitude, in the fixed order of
   * src/kernels/arena/reduce.ts). Not finite when a value is NaN or Inf.
   */
  norm(L: ArenaLayout, x: Storage, S: Storage, slot: number, o?: NormOptions): void;
  /** S[slot] = sum of x*y over the active parameters. */
  dot(L: ArenaLayout, x: Storage, y: Storage, S: Storage, slot: number, then?: readonly SAssign[]): void;
  /** Runs a scalar program over S in one invocation. */
  scalars(S: Storage, prog: readonly SAssign[]): void;
  /** p += e (see PerturbOptions) on active parameters, storing the backup or e in aux. */
  perturb(L: ArenaLayout, p: Storage, dir: Storage, S: Storage, o: PerturbOptions): void;
  /** p = aux (backup) or p -= aux (delta). */
  restore(L: ArenaLayout, p: Storage, aux: Storage, mode: RestoreMode): void;
  /** out = self * out + sum of terms (self.c === 0 without a slot: out is not read). */
  lincomb(L: ArenaLayout, out: Storage, self: Coef, terms: readonly Term[], S: Storage): void;
  /** out = Gaussian noise (see NoiseOptions) on active parameters, 0 elsewhere. */
  noise(L: ArenaLayout, out: Storage, o: NoiseOptions): void;
  /**
   * out = the norm of p's filter row holding each element (plus 1e-16 for a vector), on active
   * parameters (RWP's filter-wise std; `scratch` holds layout.rows elements).
   */
  rowNorms(L: ArenaLayout, p: Storage, out: Storage, scratch: Storage): void;
  /** torch.optim.SGD over the arena, optionally fused with the restore. */
  sgd(L: ArenaLayout, p: Storage, d: Storage, mom: Storage | null, S: Storage, groups: readonly SgdGroup[], o: UpdateOptions): void;
  /** torch.optim.Adam / AdamW over the arena, optionally fused with the restore. */
  adam(L: ArenaLayout, p: Storage, d: Storage, m: Storage, v: Storage, S: Storage, groups: readonly AdamGroup[], o: UpdateOptions): void;
}

type Factory = (b: Backend) => FusedKernels | null;
const factories = new Map<string, Factory>();
const cache = new WeakMap<Backend, FusedKernels | null>();

const loaders = new Map<string, { load: () => Promise<unknown>; done: Promise<unknown> | null }>();

/**
 * Registers how to load the code that runs fused and arena kernels on a device backend (by
 * Backend.name): src/kernels/arena/run.ts registers the WebGPU one, a dynamic import, so that the
 * WGSL renderer ships only with an app that has both the optimizers and the WebGPU backend.
 */
export function registerFusedLoader(name: string, load: () => Promise<unknown>): void {
  if (!loaders.has(name)) loaders.set(name, { load, done: null });
}

/** Loads what registerFusedLoader registered for a backend kind, once (createWebGPUBackend awaits it). */
export async function loadFusedKernels(name: string): Promise<void> {
  const l = loaders.get(name);
  if (l) await (l.done ??= l.load());
}

/** Registers the fused kernels of a backend kind (by Backend.name). */
export function registerFusedKernels(name: string, f: Factory): void {
  factories.set(name, f);
}

/**
 * The fused kernels for a backend, or null when it has none (the optimizers then fall back to the
 * unfused per-tensor path). Implementations register themselves when their module is imported;
 * src/optim imports the CPU one; the WebGPU one loads through registerFusedLoader when the WebGPU
 * backend is created after the optimizers were imported.
 */
export function fusedKernelsFor(b: Backend): FusedKernels | null {
  if (cache.has(b)) return cache.get(b)!;
  const f = factories.get(b.name);
  if (!f && loaders.has(b.name)) {
    // A loader was registered after this backend was created: falling back to the unfused path
    // here would be silently different (slower, and a different summation order).
    throw new Error(`fused optimizer kernels for ${b.name}: not loaded, because this ${b.name} backend was created before the optimizers were imported; import flatgrad/optim before init() creates the backend (or call init() again)`);
  }
  const k = f ? f(b) : null;
  cache.set(b, k);
  return k;
}

/** A typed array over a host-memory storage (cpu, wasm), for the CPU kernels. */
export type HostArrayOf = (s: Storage) => TypedArray;
