/**
 * The fused primitives of the optimizers (the FusedKernels contract of src/kernels/fused.ts:
 * norm, dot, scalar programs, perturb, restore, lincomb, SGD, Adam(W) and the restore+update
 * fusions) as arena-kernel definitions: one definition per option combination, built on first use
 * and cached by its option key, rendered by the arena renderers for every backend. The same
 * definitions run over the flat arena (FlatEngine, through `ArenaFusedKernels`) and once per
 * parameter tensor (the per-tensor baseline, through `runPerTensor`), so the two agree bit for bit
 * on cpu and wasm by construction.
 *
 * A call is described backend-independently as a `KernelCall`: the definition, the binding of its
 * vectors (to arena storages, or to the per-tensor engine's named vectors) and the per-group
 * hyper-parameters.
 *
 * Gaussian noise (random-SAM's direction, RWP's filter-wise noise) is a definition too, over the
 * language's counter-based normal draw (k.normal). One primitive stays outside the language,
 * clearly bounded: RWP's per-row norms of the weights (`hostRowNorms`, and its WGSL in ./webgpu.ts),
 * a reduction per filter row where the language's reductions span the arena; it writes each
 * element's row norm, which the noise definition multiplies in.
 */
import type { TypedArray } from '../../tensor/dtype.js';
import { captureHooks } from '../../compile/hooks.js';
import type { Backend, Storage } from '../backend.js';
import {
  FLAG_ACTIVE,
  FLAG_DECAY,
  FLAG_VECTOR,
  FLAG_WEIGHT,
  S_FLAG,
  S_GATE,
  S_SLOTS,
  type AdamGroup,
  type ArenaLayout,
  type Coef,
  type FusedKernels,
  type NoiseOptions,
  type NormOptions,
  type PerturbOptions,
  type RestoreMode,
  type SAssign,
  type SExpr,
  type SgdGroup,
  type Term,
  type UpdateOptions,
  registerFusedKernels,
} from '../fused.js';
import { defineArenaKernel, type ArenaKernel, type ArenaKernelSpec, type Vectors } from './define.js';
import { k as K, type Node } from './expr.js';
import { arenaBackends } from './backends.js';
import { hostArrayOf, runArenaKernel, runScalarProgram, type GroupHyper } from './run.js';

/** A definition with its vectors bound (to storages, or to names) and its per-group hyper-parameters. */
export interface KernelCall<V> {
  readonly kernel: ArenaKernel;
  readonly vectors: Readonly<Record<string, V>>;
  readonly hyper: GroupHyper;
}

const defs = new Map<string, ArenaKernel>();
/** The definition of one option combination, defined once. */
function cached(key: string, spec: () => ArenaKernelSpec): ArenaKernel {
  let d = defs.get(key);
  if (!d) defs.set(key, (d = defineArenaKernel(spec())));
  return d;
}

/** The built-in definitions made so far (each option combination used, by its option key), for benchmarks and inspection. */
export function builtinKernels(): { key: string; kernel: ArenaKernel }[] {
  return [...defs].map(([key, kernel]) => ({ key, kernel }));
}

/** Every slot of S by index, s0 .. s15: the primitives address slots by number. */
const ALL_SLOTS: Record<string, number> = Object.fromEntries(Array.from({ length: S_SLOTS }, (_, i) => [`s${i}`, i]));
const sl = (s: Vectors, i: number): Node => s[`s${i}`];

/** Per-group hyper-parameters: `each(g)` for each of `groups` groups. */
function perGroup(groups: number, each: (g: number) => Record<string, number>): Record<string, number>[] {
  return Array.from({ length: Math.max(groups, 1) }, (_, g) => each(g));
}

const b01 = (c: Node): Node => K.where(c, 1, 0);

/** A scalar expression of src/kernels/fused.ts (SExpr) in the kernel language: booleans as 1 and 0. */
export function sexprNode(e: SExpr, s: Vectors): Node {
  if (typeof e === 'number') return K.c(e);
  if (!Array.isArray(e)) return sl(s, e.s);
  const [op, a0, b0, c0] = e;
  const a = sexprNode(a0, s);
  const b = () => sexprNode(b0!, s);
  switch (op) {
    case '+': return K.add(a, b());
    case '-': return K.sub(a, b());
    case '*': return K.mul(a, b());
    case '/': return K.div(a, b());
    case 'sqrt': return K.sqrt(a);
    case 'max': return K.max(a, b());
    case 'min': return K.min(a, b());
    case '>': return b01(K.gt(a, b()));
    case '==': return b01(K.eq(a, b()));
    case 'or': return b01(K.or(K.ne(a, 0), K.ne(b(), 0)));
    case 'select': return K.where(K.ne(a, 0), b(), sexprNode(c0!, s));
    case 'nonfinite': return b01(K.nonfinite(a));
    case 'pow': return K.pow(a, b());
  }
}

/** Stable text of a scalar program, for the definition cache. */
const progKey = (prog: readonly SAssign[] | undefined): string => (prog && prog.length ? JSON.stringify(prog) : '');

/** The scalar program `prog` as a kernel's `after`. */
function afterOf(prog: readonly SAssign[]): ArenaKernelSpec['after'] {
  return (s) => prog.map((a) => [`s${a.dst}`, sexprNode(a.e, s)] as const);
}

/** A scalar program alone (SAM's commit, LookSAM's coefficients). */
export function scalarProgram(prog: readonly SAssign[]): ArenaKernel {
  return cached(`scalars ${progKey(prog)}`, () => ({ name: 'scalars', vectors: {}, slots: ALL_SLOTS, after: afterOf(prog) }));
}

// --------------------------------------------------------------------------------- adaptive T

/** ASAM's per-group weighting as hyper-parameters: on (0/1), eta, bias (0/1). */
export interface AdaptiveGroupSpec {
  on: boolean;
  eta: number;
  bias: boolean;
}

const ADAPTIVE_HYPER = { adOn: 0, adEta: 0, adBias: 0 };
const adaptiveHyper = (a: readonly AdaptiveGroupSpec[] | undefined, g: number) => {
  const x = a?.[g];
  return x ? { adOn: x.on ? 1 : 0, adEta: x.eta, adBias: x.bias ? 1 : 0 } : { adOn: 0, adEta: 0, adBias: 0 };
};
/** T = |p| + eta where the group is adaptive and the parameter a weight (or biases too), else 1. */
function adaptiveT(p: Node, h: Vectors): Node {
  const on = K.and(K.ne(h.adOn, 0), K.or(K.flag(FLAG_WEIGHT), K.ne(h.adBias, 0)));
  return K.where(on, K.add(K.abs(p), h.adEta), 1);
}

/** ESAM's random choice of parameters: selected where uniformAt(key0, key1, k) < beta (beta rounded to float32, as the draws are). */
const SELECT_HYPER = { selKey0: 0, selKey1: 0, selBeta: 1 };
const selectHyper = (sel: { key0: number; key1: number; beta: number } | undefined): Record<string, number> => (sel ? { selKey0: sel.key0 >>> 0, selKey1: sel.key1 >>> 0, selBeta: Math.fround(sel.beta) } : {});
const selected = (h: Vectors): Node => K.lt(K.paramUniform(h.selKey0, h.selKey1), h.selBeta);

// ------------------------------------------------------------------------------- definitions

export interface NormCallOptions {
  adaptive?: readonly AdaptiveGroupSpec[];
  select?: { key0: number; key1: number; beta: number };
  gate?: 'set' | 'or';
  then?: readonly SAssign[];
}

/**
 * S[slot] = ||T x|| over the active (and selected) parameters, overflow-free (reduce.ts). The gate
 * tests the values for NaN and Inf directly: 'set' writes S_FLAG, 'or' ors it in through S_GATE.
 */
export function normCall<V>(x: V, p: V, slot: number, groups: number, o: NormCallOptions = {}): KernelCall<V> {
  const ad = !!o.adaptive;
  const sel = !!o.select;
  const kernel = cached(`norm ${slot} ${ad} ${sel} ${o.gate ?? '-'} ${progKey(o.then)}`, () => ({
    name: 'norm',
    vectors: (ad ? { x: 'read', p: 'read' } : { x: 'read' }) as Record<string, 'read'>,
    hyper: { ...(ad ? ADAPTIVE_HYPER : {}), ...(sel ? SELECT_HYPER : {}) },
    slots: ALL_SLOTS,
    reduce: (v, h, _s, k) => {
      let tx = ad ? k.mul(adaptiveT(v.p, h), v.x) : v.x;
      // An unselected parameter adds nothing, not even its NaNs.
      if (sel) tx = k.where(selected(h), tx, 0);
      const out: Record<string, ReturnType<typeof k.norm>> = { [`s${slot}`]: k.norm(tx) };
      if (o.gate) out[`s${o.gate === 'set' ? S_FLAG : S_GATE}`] = k.anyNonFinite(tx);
      return out;
    },
    after: o.gate === 'or' || o.then?.length
      ? (s, k) => [
          ...(o.gate === 'or' ? [[`s${S_FLAG}`, b01(k.or(k.ne(sl(s, S_FLAG), 0), k.ne(sl(s, S_GATE), 0)))] as const] : []),
          ...(o.then ?? []).map((a) => [`s${a.dst}`, sexprNode(a.e, s)] as const),
        ]
      : undefined,
  }));
  const vectors: Record<string, V> = ad ? { x, p } : { x };
  return { kernel, vectors, hyper: perGroup(groups, (g) => ({ ...adaptiveHyper(o.adaptive, g), ...selectHyper(o.select) })) };
}

/** S[slot] = sum of x y over the active parameters, then the scalar program. */
export function dotCall<V>(x: V, y: V, slot: number, then?: readonly SAssign[]): KernelCall<V> {
  const kernel = cached(`dot ${slot} ${progKey(then)}`, () => ({
    name: 'dot',
    vectors: { x: 'read', y: 'read' },
    slots: ALL_SLOTS,
    reduce: (v, _h, _s, k) => ({ [`s${slot}`]: k.dot(v.x, v.y) }),
    after: then?.length ? afterOf(then) : undefined,
  }));
  return { kernel, vectors: { x, y }, hyper: [] };
}

export interface PerturbCallOptions {
  coef: readonly number[];
  normSlot: number | null;
  eps: number;
  adaptive?: readonly AdaptiveGroupSpec[];
  select?: { key0: number; key1: number; beta: number };
  mode: RestoreMode;
  gated: boolean;
}

/**
 * p += e on the live parameters (active, selected, with a non-zero coefficient, and not gated
 * off), e = coef / (S[normSlot] + eps) T^2 dir; aux = the old p ('backup') or e ('delta', 0 where
 * nothing moves), on every parameter; save = dir when given.
 */
export function perturbCall<V>(p: V, dir: V, aux: V, save: V | null, groups: number, o: PerturbCallOptions): KernelCall<V> {
  const ad = !!o.adaptive;
  const sel = !!o.select;
  const ns = o.normSlot;
  const kernel = cached(`perturb ${ns} ${ad} ${sel} ${o.mode} ${o.gated} ${save !== null}`, () => ({
    name: 'perturb',
    vectors: { p: 'readwrite', dir: 'read', aux: 'write', ...(save !== null ? { save: 'write' as const } : {}) },
    hyper: { coef: 0, eps: 0, ...(ad ? ADAPTIVE_HYPER : {}), ...(sel ? SELECT_HYPER : {}) },
    slots: ALL_SLOTS,
    // Every parameter: the backup of an inactive one is its value, its delta zero.
    includeInactive: true,
    body: (v, h, s, k) => {
      const scale = ns === null ? h.coef : k.mul(h.coef, k.div(1, k.add(sl(s, ns), h.eps)));
      let live = k.and(k.flag(FLAG_ACTIVE), k.ne(scale, 0));
      if (o.gated) live = k.and(live, k.eq(sl(s, S_FLAG), 0));
      if (sel) live = k.and(live, selected(h));
      let e: Node;
      if (ad) {
        const t = adaptiveT(v.p, h);
        e = k.mul(k.mul(k.mul(scale, t), t), v.dir);
      } else e = k.mul(scale, v.dir);
      return {
        p: k.where(live, k.add(v.p, e), v.p),
        aux: o.mode === 'backup' ? v.p : k.where(live, e, 0),
        ...(save !== null ? { save: v.dir } : {}),
      };
    },
  }));
  const vectors: Record<string, V> = { p, dir, aux, ...(save !== null ? { save } : {}) };
  return { kernel, vectors, hyper: perGroup(groups, (g) => ({ coef: o.coef[g], eps: o.eps, ...adaptiveHyper(o.adaptive, g), ...selectHyper(o.select) })) };
}

/** p = aux ('backup') or p - aux ('delta'), on every parameter. */
export function restoreCall<V>(p: V, aux: V, mode: RestoreMode): KernelCall<V> {
  const kernel = cached(`restore ${mode}`, () => ({
    name: `restore_${mode}`,
    vectors: { p: 'readwrite', aux: 'read' },
    includeInactive: true,
    body: (v, _h, _s, k) => ({ p: mode === 'backup' ? v.aux : k.sub(v.p, v.aux) }),
  }));
  return { kernel, vectors: { p, aux }, hyper: [] };
}

/**
 * out = a out + sum of c_j x_j on every parameter, a and c_j constants or constant times a slot;
 * out is not read when a is the constant 0.
 */
export function lincombCall<V>(out: V, self: Coef, terms: readonly { x: V; c: number; slot?: number }[], groups: number): KernelCall<V> {
  const readSelf = !(self.c === 0 && self.slot === undefined);
  const key = `lincomb ${readSelf ? (self.slot ?? 'c') : '-'} ${terms.map((t) => t.slot ?? 'c').join(',')}`;
  const kernel = cached(key, () => ({
    name: `lincomb${terms.length}`,
    vectors: { out: readSelf ? 'readwrite' : 'write', ...Object.fromEntries(terms.map((_, j) => [`x${j}`, 'read' as const])) },
    hyper: { a: 0, ...Object.fromEntries(terms.map((_, j) => [`c${j}`, 0])) },
    slots: ALL_SLOTS,
    includeInactive: true,
    body: (v, h, s, k) => {
      const coef = (c: Node, slot: number | undefined) => (slot === undefined ? c : k.mul(c, sl(s, slot)));
      let acc: Node | null = readSelf ? k.mul(coef(h.a, self.slot), v.out) : null;
      terms.forEach((t, j) => {
        const term = k.mul(coef(h[`c${j}`], t.slot), v[`x${j}`]);
        acc = acc ? k.add(acc, term) : term;
      });
      return { out: acc ?? 0 };
    },
  }));
  const vectors: Record<string, V> = { out, ...Object.fromEntries(terms.map((t, j) => [`x${j}`, t.x])) };
  return { kernel, vectors, hyper: perGroup(groups, () => ({ a: self.c, ...Object.fromEntries(terms.map((t, j) => [`c${j}`, t.c])) })) };
}

/** out = x (every parameter). */
export function copyCall<V>(out: V, x: V): KernelCall<V> {
  const kernel = cached('copy', () => ({ name: 'copy', vectors: { out: 'write', x: 'read' }, includeInactive: true, body: (v) => ({ out: v.x }) }));
  return { kernel, vectors: { out, x }, hyper: [] };
}

/**
 * The shape every update shares: the parameter's value before the update (the restored one when
 * fused with a restore), the condition under which it moves, and how a kernel counts the step.
 * Without a restore a gated update is guarded (nothing written, no step counted); with one,
 * every parameter is restored and the update is applied through where(live, ...), counting the
 * step only where it is taken.
 */
function updateSpec(
  name: string,
  vectors: Record<string, 'read' | 'readwrite' | 'write'>,
  hyper: Record<string, number>,
  restore: RestoreMode | null,
  gated: boolean,
  update: (v: Vectors, h: Vectors, k: typeof K, pr: Node) => Record<string, Node>,
): ArenaKernelSpec {
  const taken = (s: Vectors, k: typeof K) => k.eq(sl(s, S_FLAG), 0);
  return {
    name: restore ? `${name}_restore_${restore}` : name,
    vectors: restore ? { ...vectors, aux: 'read' } : vectors,
    hyper,
    slots: ALL_SLOTS,
    includeInactive: restore !== null,
    guard: !restore && gated ? (_h, s, k) => taken(s, k) : undefined,
    countSteps: restore && gated ? (_h, s, k) => taken(s, k) : true,
    body: (v, h, s, k) => {
      if (!restore) return update(v, h, k, v.p);
      const pr = restore === 'backup' ? v.aux : k.sub(v.p, v.aux);
      let live = k.flag(FLAG_ACTIVE);
      if (gated) live = k.and(live, taken(s, k));
      const news = update(v, h, k, pr);
      const out: Record<string, Node> = {};
      for (const [name, val] of Object.entries(news)) out[name] = k.where(live, val, name === 'p' ? pr : v[name]);
      return out;
    },
  };
}

/**
 * torch.optim.SGD: d += wd p (decaying parameters), the momentum buffer (d on the parameter's
 * first step, then momentum buf + (1 - dampening) d; nesterov: d + momentum buf), p -= lr d.
 * Groups may differ in momentum and nesterov: both are uniform conditions.
 */
export function sgdCall<V>(p: V, d: V, mom: V | null, groups: readonly SgdGroup[], restore: { aux: V; mode: RestoreMode } | null, gated: boolean): KernelCall<V> {
  const hasMom = mom !== null;
  const kernel = cached(`sgd ${hasMom} ${restore?.mode ?? '-'} ${gated}`, () =>
    updateSpec(
      hasMom ? 'sgd_momentum' : 'sgd',
      hasMom ? { p: 'readwrite', d: 'read', momentum_buffer: 'readwrite' } : { p: 'readwrite', d: 'read' },
      { lr: 0, momentum: 0, dampening: 0, nesterov: 0, wd: 0 },
      restore?.mode ?? null,
      gated,
      (v, h, k, pr) => {
        const wd = k.where(k.flag(FLAG_DECAY), h.wd, 0);
        const dd = k.where(k.ne(wd, 0), k.add(v.d, k.mul(wd, pr)), v.d);
        const out: Record<string, Node> = {};
        let dir = dd;
        if (hasMom) {
          const on = k.ne(h.momentum, 0);
          const buf = k.where(k.le(k.step(), 1), dd, k.add(k.mul(h.momentum, v.momentum_buffer), k.mul(k.sub(1, h.dampening), dd)));
          out.momentum_buffer = k.where(on, buf, v.momentum_buffer);
          dir = k.where(on, k.where(k.ne(h.nesterov, 0), k.add(dd, k.mul(h.momentum, buf)), buf), dd);
        }
        out.p = k.add(pr, k.mul(k.neg(h.lr), dir));
        return out;
      },
    ),
  );
  const vectors: Record<string, V> = { p, d, ...(mom !== null ? { momentum_buffer: mom } : {}), ...(restore ? { aux: restore.aux } : {}) };
  const hyper = groups.map((g) => ({ lr: g.lr, momentum: g.momentum, dampening: g.dampening, nesterov: g.nesterov ? 1 : 0, wd: g.weightDecay }));
  return { kernel, vectors, hyper };
}

/**
 * torch.optim.Adam / AdamW (per group: decoupled), bias-corrected by each parameter's own step
 * count: m = beta1 m + (1 - beta1) d, v = beta2 v + (1 - beta2) d^2,
 * p += -(lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
 */
export function adamCall<V>(p: V, d: V, m: V, v2: V, groups: readonly AdamGroup[], restore: { aux: V; mode: RestoreMode } | null, gated: boolean): KernelCall<V> {
  const kernel = cached(`adam ${restore?.mode ?? '-'} ${gated}`, () =>
    updateSpec(
      'adam',
      { p: 'readwrite', d: 'read', exp_avg: 'readwrite', exp_avg_sq: 'readwrite' },
      { lr: 0, beta1: 0, beta2: 0, eps: 0, wd: 0, decoupled: 0 },
      restore?.mode ?? null,
      gated,
      (v, h, k, pr) => {
        const wd = k.where(k.flag(FLAG_DECAY), h.wd, 0);
        const decays = k.ne(wd, 0);
        const decoupled = k.ne(h.decoupled, 0);
        const p1 = k.where(k.and(decays, decoupled), k.mul(k.sub(1, k.mul(h.lr, wd)), pr), pr);
        const dd = k.where(k.and(decays, k.not(decoupled)), k.add(v.d, k.mul(wd, pr)), v.d);
        const m1 = k.add(k.mul(h.beta1, v.exp_avg), k.mul(k.sub(1, h.beta1), dd));
        const v1 = k.add(k.mul(h.beta2, v.exp_avg_sq), k.mul(k.sub(1, h.beta2), k.mul(dd, dd)));
        const negStep = k.neg(k.div(h.lr, k.sub(1, k.pow(h.beta1, k.step()))));
        const invBc2 = k.div(1, k.sqrt(k.sub(1, k.pow(h.beta2, k.step()))));
        const denom = k.add(k.mul(invBc2, k.sqrt(v1)), h.eps);
        return { exp_avg: m1, exp_avg_sq: v1, p: k.add(p1, k.mul(negStep, k.div(m1, denom))) };
      },
    ),
  );
  const vectors: Record<string, V> = { p, d, exp_avg: m, exp_avg_sq: v2, ...(restore ? { aux: restore.aux } : {}) };
  const hyper = groups.map((g) => ({ lr: g.lr, beta1: g.beta1, beta2: g.beta2, eps: g.eps, wd: g.weightDecay, decoupled: g.decoupled ? 1 : 0 }));
  return { kernel, vectors, hyper };
}

// ------------------------------------------------------------------------------------ noise

/**
 * out = s z on the active parameters and 0 on the others, z the standard normal of the element
 * (k.normal: normalAt(key0, key1, arena index) of src/kernels/normal.ts) and s the group's scale;
 * filter-wise (RWP), out holds each element's row norm on entry (FusedKernels.rowNorms) and
 * s = scale * that norm, as torch computes the filter's std before drawing.
 */
export function noiseCall<V>(out: V, key0: number, key1: number, scale: readonly number[], filterwise: boolean): KernelCall<V> {
  const kernel = cached(`noise ${filterwise}`, () => ({
    name: 'noise',
    vectors: { out: filterwise ? 'readwrite' : 'write' },
    hyper: { key0: 0, key1: 0, scale: 1 },
    includeInactive: true,
    body: (v, h, _s, k) => {
      const std = filterwise ? k.mul(h.scale, v.out) : h.scale;
      return { out: k.where(k.flag(FLAG_ACTIVE), k.mul(std, k.normal(h.key0, h.key1)), 0) };
    },
  }));
  return { kernel, vectors: { out }, hyper: scale.map((sc) => ({ key0: key0 >>> 0, key1: key1 >>> 0, scale: sc })) };
}

/**
 * RWP's filter-wise std on host memory: out[i] = the norm of p's row holding element i (plus 1e-16
 * for a vector), rounded to the arena's dtype, on active parameters. A reduction per row, which
 * the kernel language does not express (its reductions are over the whole arena); WebGPU's is in
 * ./webgpu.ts. Each parameter: `offset` into out and p, `numel`, `rowLen`, flags.
 */
export function hostRowNorms(params: readonly { out: TypedArray; p: TypedArray; offset: number; numel: number; flags: number; rowLen: number }[], round: (x: number) => number): void {
  for (const q of params) {
    if (!(q.flags & FLAG_ACTIVE) || q.rowLen === 0) continue;
    for (let start = q.offset; start < q.offset + q.numel; start += q.rowLen) {
      let s = 0;
      for (let i = start; i < start + q.rowLen; i++) s += q.p[i] * q.p[i];
      q.out.fill(round(Math.sqrt(s) + (q.flags & FLAG_VECTOR ? 1e-16 : 0)), start, start + q.rowLen);
    }
  }
}

// ------------------------------------------------------------------------------ the arena engine

/** The FusedKernels contract over a flat arena, every call one arena-kernel pass (RWP's row norms aside). */
export class ArenaFusedKernels implements FusedKernels {
  constructor(readonly backend: Backend) {}

  private run(L: ArenaLayout, c: KernelCall<Storage>, S?: Storage, steps?: Storage): void {
    runArenaKernel(c.kernel, this.backend, { layout: L, vectors: c.vectors, S, steps, hyper: c.hyper });
  }

  norm(L: ArenaLayout, x: Storage, S: Storage, slot: number, o: NormOptions = {}): void {
    this.run(L, normCall(x, o.adaptive?.p ?? x, slot, L.groups, { adaptive: o.adaptive?.groups, select: o.select, gate: o.gate, then: o.then }), S);
  }
  dot(L: ArenaLayout, x: Storage, y: Storage, S: Storage, slot: number, then?: readonly SAssign[]): void {
    this.run(L, dotCall(x, y, slot, then), S);
  }
  scalars(S: Storage, prog: readonly SAssign[]): void {
    runScalarProgram(scalarProgram(prog), this.backend, S);
  }
  perturb(L: ArenaLayout, p: Storage, dir: Storage, S: Storage, o: PerturbOptions): void {
    const ad = o.adaptive ? o.adaptive.groups : undefined;
    this.run(L, perturbCall(p, dir, o.aux, o.save ?? null, L.groups, { coef: o.coef, normSlot: o.normSlot, eps: o.eps, adaptive: ad, select: o.select, mode: o.mode, gated: o.gated }), S);
  }
  restore(L: ArenaLayout, p: Storage, aux: Storage, mode: RestoreMode): void {
    this.run(L, restoreCall(p, aux, mode));
  }
  lincomb(L: ArenaLayout, out: Storage, self: Coef, terms: readonly Term[], S: Storage): void {
    this.run(L, lincombCall(out, self, terms, L.groups), S);
  }
  noise(L: ArenaLayout, out: Storage, o: NoiseOptions): void {
    if (o.filterwise) this.rowNorms(L, o.filterwise.p, out, o.filterwise.rowNorms);
    this.run(L, noiseCall(out, o.key0, o.key1, o.scale, !!o.filterwise));
  }
  rowNorms(L: ArenaLayout, p: Storage, out: Storage, scratch: Storage): void {
    // Host memory written directly: a captured step (src/compile) records the call, as run.ts's passes.
    if (captureHooks.deviceCall) return void captureHooks.deviceCall('arena row norms', (pp: Storage, o: Storage, sc: Storage) => this.rowNormsNow(L, pp, o, sc), [p, out, scratch]);
    this.rowNormsNow(L, p, out, scratch);
  }
  private rowNormsNow(L: ArenaLayout, p: Storage, out: Storage, scratch: Storage): void {
    const arr = hostArrayOf(this.backend);
    if (arr) {
      const o = arr(out);
      const ph = arr(p);
      hostRowNorms(L.params.map((info) => ({ out: o, p: ph, offset: info.offset, numel: info.numel, flags: info.flags, rowLen: info.rowLen })), L.dtype === 'float32' ? Math.fround : (x) => x);
      return;
    }
    if (!arenaBackends.webgpuRowNorms) throw new Error(`fused row norms: no kernel for the ${this.backend.name} backend`);
    arenaBackends.webgpuRowNorms(this.backend, L, p, out, scratch);
  }
  sgd(L: ArenaLayout, p: Storage, d: Storage, mom: Storage | null, S: Storage, groups: readonly SgdGroup[], o: UpdateOptions): void {
    this.run(L, sgdCall(p, d, mom, groups, o.restore ?? null, o.gated), S, o.steps);
  }
  adam(L: ArenaLayout, p: Storage, d: Storage, m: Storage, v: Storage, S: Storage, groups: readonly AdamGroup[], o: UpdateOptions): void {
    this.run(L, adamCall(p, d, m, v, groups, o.restore ?? null, o.gated), S, o.steps);
  }

}

// The host backends run the arena kernels (cpu: the reference; wasm: f32x4 for float32 arenas).
// WebGPU registers its own (src/kernels/webgpu/fused.ts), loaded with that backend.
registerFusedKernels('cpu', (b) => new ArenaFusedKernels(b));
registerFusedKernels('wasm', (b) => (hostArrayOf(b) ? new ArenaFusedKernels(b) : null));
