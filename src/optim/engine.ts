/**
 * Two engines that run the same optimizer programs:
 *
 * - FlatEngine (fused): the parameters live in one flat arena and every vector operation is one
 *   fused kernel over it (src/kernels/fused.ts).
 * - LoopEngine (unfused): a per-parameter loop of ordinary tensor ops, the way the PyTorch
 *   implementations of SAM and its variants are written. It is the benchmark baseline and a second
 *   oracle for the fused kernels.
 *
 * Vectors are named: 'p' (parameters), 'g' (gradients) and state vectors allocated on first use
 * ('aux', 'g0', 'momentum_buffer', ...). Scalars live in the slots of S on the device (see
 * src/kernels/fused.ts), so neither engine reads back during a step (except the unfused engine's
 * non-finite check on host-memory backends, which is a free synchronous read there).
 */
// The host (cpu, wasm) fused kernels register themselves with fusedKernelsFor() when loaded; the
// WebGPU ones are loaded with the WebGPU backend (src/kernels/webgpu/device.ts), so an app that
// never chooses WebGPU does not ship them.
import '../kernels/cpu/fused.js';
import type { Backend, Storage } from '../kernels/backend.js';
import {
  BLOCK,
  fusedKernelsFor,
  S_FLAG,
  S_SLOTS,
  type AdamGroup,
  type Coef,
  type FusedKernels,
  type RestoreMode,
  type SAssign,
  type SelectSpec,
  type SExpr,
  type SgdGroup,
} from '../kernels/fused.js';
import { uniformAt } from '../kernels/rng.js';
import type { DType } from '../tensor/dtype.js';
import { Tensor, tidy } from '../tensor/tensor.js';
import { copyInto } from '../nn/module.js';
import { abs, add, cast, div, eq, exp, gt, lt, maximum, minimum, mul, ne, pow, reciprocal, sqrt, sub, where } from '../tensor/ops/elementwise.js';
import { max, sum } from '../tensor/ops/reduce.js';
import { copy as cloneT, reshape, stack } from '../tensor/ops/shape.js';
import { noGrad } from '../tensor/graph.js';
import { FlatArena, isWeightParam } from './arena.js';

export interface AdaptiveGroup {
  on: boolean;
  eta: number;
  bias: boolean;
}

export interface EngineNorm {
  adaptive?: readonly AdaptiveGroup[];
  select?: SelectSpec;
  gate?: 'set' | 'or';
  then?: readonly SAssign[];
}

export interface EnginePerturb {
  coef: readonly number[];
  normSlot: number | null;
  eps: number;
  adaptive?: readonly AdaptiveGroup[];
  select?: SelectSpec;
  mode: RestoreMode;
  /** Also keep a copy of dir in this vector. */
  save?: string;
  gated: boolean;
}

export interface EngineTerm extends Coef {
  x: string;
}

export interface EngineUpdate {
  restore?: RestoreMode | null;
  gated: boolean;
}

export interface Engine {
  readonly fused: boolean;
  readonly backend: Backend;
  readonly dtype: DType;
  readonly params: readonly Tensor[];
  /** Per-step: takes in replaced gradients, marks parameters without one inactive. */
  prepare(): void;
  /**
   * Clears gradients between passes, as torch's default set_to_none: the next update leaves a
   * parameter that receives no gradient alone (flat: one fill, the .grad views stay; loop: .grad = null).
   */
  zeroGrads(setToNone?: boolean): void;
  /** S[slot] = ||T x|| without overflow; `gate` tests the values for NaN/Inf directly (see NormOptions). */
  norm(x: string, slot: number, o?: EngineNorm): void;
  dot(x: string, y: string, slot: number, then?: readonly SAssign[]): void;
  scalars(prog: readonly SAssign[]): void;
  perturb(dir: string, o: EnginePerturb): void;
  restore(mode: RestoreMode): void;
  lincomb(out: string, self: Coef, terms: readonly EngineTerm[]): void;
  copy(dst: string, src: string): void;
  noise(out: string, o: { key0: number; key1: number; scale: readonly number[]; filterwise: boolean }): void;
  sgd(d: string, groups: readonly SgdGroup[], o: EngineUpdate): void;
  adam(d: string, groups: readonly AdamGroup[], o: EngineUpdate): void;
  /** Per-parameter tensors of a state vector (views into the arena when fused); null when it was never made. */
  stateTensors(name: string): Tensor[] | null;
  /** Per-parameter tensors of a state vector, creating it (zeros) when needed. */
  ensureState(name: string): Tensor[];
  hasState(name: string): boolean;
  /**
   * Per-parameter counts of updates taken (torch's state[p]['step']): numbers where the backend
   * reads synchronously, else 0-d tensors holding the device counts at the time of the call.
   */
  paramSteps(): (number | Tensor)[];
  /** Sets parameter k's count of updates taken (loading a state dict). */
  setParamStep(k: number, v: number | Tensor): void;
  /** The scalar slots as a tensor (flat) or a list of 0-d tensors (loop), for state dicts. */
  scalarsTensor(): Tensor;
  loadScalars(values: ArrayLike<number>): void;
  readScalars(): Promise<Float64Array>;
  readScalarsSync(): Float64Array | null;
  dispose(): void;
}

// ------------------------------------------------------------------------------------- fused

export class FlatEngine implements Engine {
  readonly fused = true;
  readonly backend: Backend;
  readonly dtype: DType;
  readonly arena: FlatArena;
  readonly S: Storage;
  private readonly k: FusedKernels;
  private sTensor: Tensor | null = null;

  constructor(
    readonly params: readonly Tensor[],
    readonly groupOf: readonly number[],
    groups: number,
    kernels: FusedKernels,
    decay: 'all' | 'weights' = 'all',
  ) {
    this.arena = new FlatArena(params.slice(), groupOf.slice(), groups, decay);
    this.backend = this.arena.backend;
    this.dtype = this.arena.dtype;
    this.k = kernels;
    this.S = this.backend.alloc(S_SLOTS, this.dtype);
  }

  private get L() {
    return this.arena.layout;
  }
  private v(name: string): Storage {
    return this.arena.vec(name);
  }
  private adaptive(a: readonly AdaptiveGroup[] | undefined) {
    return a ? { p: this.arena.P, groups: a } : undefined;
  }

  prepare(): void {
    this.arena.syncGrads();
  }
  zeroGrads(setToNone?: boolean): void {
    this.arena.zeroGrads(setToNone);
  }
  norm(x: string, slot: number, o: EngineNorm = {}): void {
    this.k.norm(this.L, this.v(x), this.S, slot, { adaptive: this.adaptive(o.adaptive), select: o.select, gate: o.gate, then: o.then });
  }
  dot(x: string, y: string, slot: number, then?: readonly SAssign[]): void {
    this.k.dot(this.L, this.v(x), this.v(y), this.S, slot, then);
  }
  scalars(prog: readonly SAssign[]): void {
    this.k.scalars(this.S, prog);
  }
  perturb(dir: string, o: EnginePerturb): void {
    this.k.perturb(this.L, this.arena.P, this.v(dir), this.S, {
      coef: o.coef,
      normSlot: o.normSlot,
      eps: o.eps,
      adaptive: this.adaptive(o.adaptive),
      select: o.select,
      mode: o.mode,
      aux: this.v('aux'),
      save: o.save ? this.v(o.save) : null,
      gated: o.gated,
    });
  }
  restore(mode: RestoreMode): void {
    this.k.restore(this.L, this.arena.P, this.v('aux'), mode);
  }
  lincomb(out: string, self: Coef, terms: readonly EngineTerm[]): void {
    this.k.lincomb(this.L, this.v(out), self, terms.map((t) => ({ x: this.v(t.x), c: t.c, slot: t.slot })), this.S);
  }
  copy(dst: string, src: string): void {
    this.k.lincomb(this.L, this.v(dst), { c: 0 }, [{ x: this.v(src), c: 1 }], this.S);
  }
  noise(out: string, o: { key0: number; key1: number; scale: readonly number[]; filterwise: boolean }): void {
    this.k.noise(this.L, this.v(out), {
      key0: o.key0,
      key1: o.key1,
      scale: o.scale,
      filterwise: o.filterwise ? { p: this.arena.P, rowNorms: this.arena.scratch('rowNorms', this.L.rows) } : null,
    });
  }
  sgd(d: string, groups: readonly SgdGroup[], o: EngineUpdate): void {
    const mom = groups.some((g) => g.momentum !== 0) ? this.v('momentum_buffer') : null;
    this.k.sgd(this.L, this.arena.P, this.v(d), mom, this.S, groups, {
      restore: o.restore ? { aux: this.v('aux'), mode: o.restore } : null,
      gated: o.gated,
      steps: this.arena.stepCounts,
    });
  }
  adam(d: string, groups: readonly AdamGroup[], o: EngineUpdate): void {
    this.k.adam(this.L, this.arena.P, this.v(d), this.v('exp_avg'), this.v('exp_avg_sq'), this.S, groups, {
      restore: o.restore ? { aux: this.v('aux'), mode: o.restore } : null,
      gated: o.gated,
      steps: this.arena.stepCounts,
    });
  }
  stateTensors(name: string): Tensor[] | null {
    return this.arena.hasVec(name) ? this.arena.viewsOf(name) : null;
  }
  ensureState(name: string): Tensor[] {
    return this.arena.viewsOf(name);
  }
  hasState(name: string): boolean {
    return this.arena.hasVec(name);
  }
  /** 0-d copies of the step counts for state dicts on asynchronous backends (kept, refreshed on each call). */
  private stepCopies: Tensor[] | null = null;
  private static one(offset: number) {
    return { shape: [1], srcStrides: [1], srcOffset: offset, dstStrides: [1], dstOffset: 0 };
  }
  paramSteps(): (number | Tensor)[] {
    const counts = this.arena.stepCounts;
    const rs = this.backend.readSync;
    if (rs) {
      const host = rs.call(this.backend, counts);
      return this.params.map((_, k) => host[k]);
    }
    // WebGPU binds views only at 256-byte offsets, so the counts are copied out rather than viewed.
    this.stepCopies ??= this.params.map(() => Tensor.empty([], this.dtype, this.backend).keep());
    this.stepCopies.forEach((t, k) => this.backend.stridedCopy(counts, t.storage, FlatEngine.one(k)));
    return this.stepCopies;
  }
  setParamStep(k: number, v: number | Tensor): void {
    // A one-element tensor of this backend and dtype is copied on the device; anything else goes through a number.
    const onDevice = v instanceof Tensor && v.backend === this.backend && v.dtype === this.dtype;
    const src = onDevice ? v : Tensor.empty([], this.dtype, this.backend);
    if (!onDevice) copyInto(src, Float64Array.of(typeof v === 'number' ? v : hostNumber(v, `optimizer.loadStateDict(${k}.step)`)));
    this.backend.stridedCopy(src.storage, this.arena.stepCounts, { shape: [1], srcStrides: [1], srcOffset: 0, dstStrides: [1], dstOffset: k });
    if (!onDevice) src.dispose();
  }
  scalarsTensor(): Tensor {
    this.sTensor ??= Tensor.fromStorage(this.S, [S_SLOTS], this.backend).keep();
    // The tensor owns nothing extra: S is released by dispose() below, not through it.
    return this.sTensor;
  }
  loadScalars(values: ArrayLike<number>): void {
    const a = this.dtype === 'float64' ? new Float64Array(S_SLOTS) : new Float32Array(S_SLOTS);
    for (let i = 0; i < Math.min(values.length, S_SLOTS); i++) a[i] = values[i];
    this.backend.write(this.S, a);
  }
  async readScalars(): Promise<Float64Array> {
    return Float64Array.from(await this.backend.read(this.S));
  }
  readScalarsSync(): Float64Array | null {
    return this.backend.readSync ? Float64Array.from(this.backend.readSync(this.S)) : null;
  }
  dispose(): void {
    for (const t of this.stepCopies ?? []) t.dispose();
    if (!this.sTensor) this.backend.release(this.S);
    else this.sTensor.dispose();
    this.arena.dispose();
  }
}

// -------------------------------------------------------------------------------------- loop

type Vec = (Tensor | null)[];

/** Offsets the flat arena would give each parameter: the unfused noise draws the same numbers. */
function arenaOffsets(params: readonly Tensor[]): number[] {
  let off = 0;
  return params.map((p) => {
    const o = off;
    off += Math.ceil(p.size / BLOCK) * BLOCK;
    return o;
  });
}

export class LoopEngine implements Engine {
  readonly fused = false;
  readonly backend: Backend;
  readonly dtype: DType;
  private readonly vecs = new Map<string, Vec>();
  private readonly S: Tensor[];
  private readonly offsets: number[];
  private readonly weight: boolean[];
  private readonly selIndex: number[];

  private readonly decays: boolean[];
  /** Per-parameter counts of updates taken (torch's state[p]['step']), 0-d tensors on the device. */
  private readonly steps: Tensor[];

  constructor(
    readonly params: readonly Tensor[],
    readonly groupOf: readonly number[],
    decay: 'all' | 'weights' = 'all',
  ) {
    if (params.length === 0) throw new RangeError('optimizer: got an empty parameter list');
    this.backend = params[0].backend;
    this.dtype = params[0].dtype;
    for (const p of params) {
      if (p.backend !== this.backend) throw new Error(`optimizer: parameters live on different backends (${this.backend.name} and ${p.backend.name})`);
      if (p.dtype !== 'float32' && p.dtype !== 'float64') throw new TypeError(`optimizer: parameters must be floating, got ${p.dtype}`);
    }
    this.S = Array.from({ length: S_SLOTS }, () => this.zero0());
    this.offsets = arenaOffsets(params);
    this.weight = params.map(isWeightParam);
    this.decays = this.weight.map((w) => decay === 'all' || w);
    this.selIndex = params.map((_, k) => k);
    this.steps = params.map(() => this.zero0());
  }

  private zero0(): Tensor {
    return Tensor.empty([], this.dtype, this.backend).keep();
  }
  /** A 0-d tensor holding v on this engine's backend. */
  private num(v: number): Tensor {
    const a = this.dtype === 'float64' ? new Float64Array([v]) : new Float32Array([v]);
    return Tensor.fromStorage(this.backend.upload(a, this.dtype), [], this.backend);
  }
  private setS(slot: number, t: Tensor): void {
    if (this.S[slot] === t) return;
    this.S[slot].dispose();
    this.S[slot] = t.keep();
  }
  private vec(name: string): Vec {
    if (name === 'p') return this.params.slice();
    if (name === 'g') return this.params.map((p) => p.grad);
    let v = this.vecs.get(name);
    if (!v) {
      v = this.params.map(() => null);
      this.vecs.set(name, v);
    }
    return v;
  }
  /** Replaces entry k of a vector (a parameter's values are rebound, keeping its identity). */
  private put(name: string, k: number, t: Tensor | null): void {
    if (name === 'p') {
      if (!t) throw new Error('internal: cannot clear a parameter');
      if (t !== this.params[k]) this.params[k].rebind(t.storageRef);
      return;
    }
    if (name === 'g') {
      const p = this.params[k];
      if (p.grad && p.grad !== t) p.grad.dispose();
      p.grad = t ? t.keep() : null;
      return;
    }
    const v = this.vec(name);
    if (v[k] && v[k] !== t) v[k]!.dispose();
    v[k] = t ? t.keep() : null;
  }
  /** Which parameters had a gradient at the last prepare() (torch skips those with grad None). */
  private act: boolean[] = [];
  private active(k: number): boolean {
    return this.act[k] ?? true;
  }
  prepare(): void {
    this.act = this.params.map((p) => !!p.grad && !p.grad.isDisposed);
  }
  /** setToNone (default): clear the .grad fields, as torch; false: zero them in place, creating missing ones. */
  zeroGrads(setToNone = true): void {
    for (const p of this.params) {
      if (setToNone) {
        if (p.grad) p.grad.dispose();
        p.grad = null;
      } else if (p.grad && !p.grad.isDisposed) p.backend.fill(p.grad.storage, 0);
      else p.grad = Tensor.empty(p.shape.slice(), p.dtype, p.backend).keep();
    }
  }

  private etaOf(ad: readonly AdaptiveGroup[] | undefined, k: number): number | null {
    if (!ad) return null;
    const g = ad[this.groupOf[k]];
    if (!g || !g.on || (!this.weight[k] && !g.bias)) return null;
    return g.eta;
  }
  private selected(sel: SelectSpec | undefined, k: number): boolean {
    return !sel || uniformAt(sel.key0, sel.key1, this.selIndex[k]) < Math.fround(sel.beta);
  }

  /** A scalar expression as a 0-d tensor (or a host number when it is constant). */
  private evalT(e: SExpr): Tensor | number {
    if (typeof e === 'number') return e;
    if (!Array.isArray(e)) return this.S[e.s];
    const [op, a0, b0, c0] = e;
    const a = this.evalT(a0);
    const b = b0 === undefined ? 0 : this.evalT(b0);
    const T = (x: Tensor | number): Tensor => (x instanceof Tensor ? x : this.num(x));
    const f = (x: Tensor) => cast(x, this.dtype);
    switch (op) {
      case '+': return typeof a === 'number' && typeof b === 'number' ? a + b : add(a, b);
      case '-': return typeof a === 'number' && typeof b === 'number' ? a - b : sub(a, b);
      case '*': return typeof a === 'number' && typeof b === 'number' ? a * b : mul(a, b);
      case '/': return typeof a === 'number' && typeof b === 'number' ? a / b : div(a, b);
      case 'sqrt': return typeof a === 'number' ? Math.sqrt(a) : sqrt(a);
      case 'max': return maximum(T(a), b);
      case 'min': return minimum(T(a), b);
      case '>': return f(gt(T(a), b));
      case '==': return f(eq(T(a), b));
      case 'or': return f(gt(maximum(abs(T(a)), abs(T(b))), 0));
      case 'select': return where(ne(T(a), 0), T(b), T(this.evalT(c0!)));
      case 'nonfinite': return this.nonfinite(T(a));
      case 'pow': return pow(T(a), b);
    }
  }
  /**
   * 1 where t is NaN or +-Inf, else 0. Written as 1 - (|t| < Inf): an ordered comparison is false
   * for NaN on every backend, while `t != t` is not reliable on GPUs (ordered != is false for NaN).
   */
  private nonfinite(t: Tensor): Tensor {
    return sub(1, cast(lt(abs(t), Infinity), this.dtype));
  }
  private runProg(prog: readonly SAssign[] | undefined): void {
    if (!prog) return;
    for (const a of prog) {
      const r = tidy(() => {
        const v = this.evalT(a.e);
        return v instanceof Tensor ? (this.S.includes(v) ? cloneT(v) : v) : this.num(v);
      });
      this.setS(a.dst, r);
    }
  }

  norm(x: string, slot: number, o: EngineNorm = {}): void {
    noGrad(() => {
      const xs = this.vec(x);
      const [total, bad] = tidy(() => {
        const ts: Tensor[] = [];
        this.params.forEach((p, k) => {
          const xk = xs[k];
          if (!this.active(k) || !xk || !this.selected(o.select, k)) return;
          const eta = this.etaOf(o.adaptive, k);
          ts.push(eta === null ? xk : mul(add(abs(p), eta), xk));
        });
        const zero = Tensor.empty([], this.dtype, this.backend);
        if (!ts.length) return [zero, cast(zero, this.dtype)];
        // NaN and Inf are counted directly: a sum of squares overflows on finite values (1e20).
        const nonfinite = gt(sum(stack(ts.map((t) => sum(this.nonfinite(t))))), 0);
        // ||x|| = m sqrt(sum((x / m)^2)) with m = max |x| over the finite values: no overflow.
        const finite = ts.map((t) => where(lt(abs(t), Infinity), t, 0));
        const m = max(stack(finite.map((t) => max(abs(t)))));
        const safe = where(gt(m, 0), m, 1);
        const n = mul(sqrt(sum(stack(finite.map((t) => sum(div(t, safe).square()))))), m);
        return [where(nonfinite, Infinity, n), cast(nonfinite, this.dtype)];
      });
      this.setS(slot, total);
      if (o.gate === 'set') this.setS(S_FLAG, bad);
      else if (o.gate === 'or') this.setS(S_FLAG, tidy(() => maximum(this.S[S_FLAG], bad)));
      if (o.gate !== 'set') bad.dispose();
      this.runProg(o.then);
    });
  }
  dot(x: string, y: string, slot: number, then?: readonly SAssign[]): void {
    noGrad(() => {
      const xs = this.vec(x);
      const ys = this.vec(y);
      const total = tidy(() => {
        const parts: Tensor[] = [];
        this.params.forEach((_, k) => {
          if (this.active(k) && xs[k] && ys[k]) parts.push(sum(mul(xs[k]!, ys[k]!)));
        });
        return parts.length ? sum(stack(parts)) : Tensor.empty([], this.dtype, this.backend);
      });
      this.setS(slot, total);
      this.runProg(then);
    });
  }
  scalars(prog: readonly SAssign[]): void {
    noGrad(() => this.runProg(prog));
  }

  perturb(dir: string, o: EnginePerturb): void {
    noGrad(() => {
      const ds = this.vec(dir);
      // k = 1 / (||.|| + eps), zeroed when the step is gated off.
      const kT = tidy(() => {
        let k: Tensor | null = o.normSlot === null ? null : reciprocal(add(this.S[o.normSlot], o.eps));
        if (o.gated) k = where(ne(this.S[S_FLAG], 0), 0, k ?? this.num(1));
        return k ?? this.num(1);
      });
      const scaleOf = new Map<number, Tensor>();
      this.params.forEach((p, k) => {
        const dk = ds[k];
        if (o.save) this.put(o.save, k, dk ? noGrad(() => cloneT(dk)) : null);
        const moving = this.active(k) && !!dk && this.selected(o.select, k) && o.coef[this.groupOf[k]] !== 0;
        if (!moving) {
          this.put('aux', k, o.mode === 'backup' ? p.detach() : null);
          return;
        }
        const g = this.groupOf[k];
        let c = scaleOf.get(g);
        if (!c) {
          c = mul(kT, o.coef[g]).keep();
          scaleOf.set(g, c);
        }
        const cc = c;
        const e = tidy(() => {
          const eta = this.etaOf(o.adaptive, k);
          if (eta === null) return mul(dk!, cc);
          const t = add(abs(p), eta);
          return mul(mul(mul(t, t), dk!), cc);
        });
        const np = add(p, e);
        this.put('aux', k, o.mode === 'backup' ? p.detach() : e);
        this.put('p', k, np);
        np.dispose();
        if (o.mode === 'backup') e.dispose();
      });
      for (const c of scaleOf.values()) c.dispose();
      kT.dispose();
    });
  }
  restore(mode: RestoreMode): void {
    noGrad(() => {
      const aux = this.vec('aux');
      this.params.forEach((p, k) => {
        const a = aux[k];
        if (!a) return;
        if (mode === 'backup') this.put('p', k, a);
        else {
          const np = sub(p, a);
          this.put('p', k, np);
          np.dispose();
        }
        this.put('aux', k, null);
      });
    });
  }
  lincomb(out: string, self: Coef, terms: readonly EngineTerm[]): void {
    noGrad(() => {
      const o = this.vec(out);
      const ts = terms.map((t) => ({ x: this.vec(t.x), c: t.c, slot: t.slot }));
      const coef = (c: Coef): Tensor | number => (c.slot === undefined ? c.c : mul(this.S[c.slot], c.c));
      tidy(() => {
        const selfC = self.c === 0 && self.slot === undefined ? null : coef(self);
        const tc = ts.map((t) => coef(t));
        this.params.forEach((_, k) => {
          let v: Tensor | null = selfC !== null && o[k] ? mul(o[k]!, selfC) : null;
          ts.forEach((t, j) => {
            const x = t.x[k];
            if (!x) return;
            const term = mul(x, tc[j]);
            v = v ? add(v, term) : term;
          });
          if (v) this.put(out, k, (v as Tensor).keep());
        });
      });
    });
  }
  copy(dst: string, src: string): void {
    noGrad(() => {
      const s = this.vec(src);
      this.params.forEach((_, k) => this.put(dst, k, s[k] ? cloneT(s[k]!) : null));
    });
  }
  noise(out: string, o: { key0: number; key1: number; scale: readonly number[]; filterwise: boolean }): void {
    noGrad(() => {
      this.params.forEach((p, k) => {
        if (!this.active(k) || p.size === 0) {
          this.put(out, k, null);
          return;
        }
        const z = tidy(() => {
          const raw = Tensor.empty(p.shape.slice(), this.dtype, this.backend);
          // The flat engine draws element i of the arena with (key0, key1); element j of this
          // parameter is arena element offset + j, i.e. element j with key0 + 2*offset (normals use
          // the bits of 2i and 2i+1).
          this.backend.random(raw.storage, (o.key0 + 2 * this.offsets[k]) >>> 0, o.key1, { kind: 'normal', mean: 0, std: 1 });
          const sc = o.scale[this.groupOf[k]];
          if (!o.filterwise) return mul(raw, sc);
          if (p.ndim < 2) return mul(raw, mul(add(sqrt(sum(p.square())), 1e-16), sc));
          const rows = p.shape[0];
          const rn = sqrt(sum(reshape(p, [rows, p.size / rows]).square(), 1, true));
          return reshape(mul(reshape(raw, [rows, p.size / rows]), mul(rn, sc)), p.shape.slice());
        });
        this.put(out, k, z);
      });
    });
  }

  /** The gate on the host: true when the step must be skipped (sync read on host backends). */
  private gateHost(): { skip: boolean; onDevice: boolean } {
    const rs = this.backend.readSync;
    if (!rs) return { skip: false, onDevice: true };
    const flag = rs.call(this.backend, this.S[S_FLAG].storage)[0];
    return { skip: flag !== 0, onDevice: false };
  }

  /**
   * Applies `body` to every active parameter with its own step number (its count of updates taken,
   * this one included: a host number where the backend reads synchronously, else a 0-d tensor).
   * With a device-side gate every new value, state created on this step included (from zeros), and
   * the step count pass through where(flag, old, new): a skipped step changes nothing.
   */
  private updateLoop(o: EngineUpdate, body: (k: number, p: Tensor, d: Tensor, step: number | Tensor) => Record<string, Tensor>, d: string): void {
    noGrad(() => {
      if (o.restore) this.restore(o.restore);
      let deviceGate = false;
      if (o.gated) {
        const g = this.gateHost();
        if (!g.onDevice) {
          if (g.skip) return;
        } else deviceGate = true;
      }
      const ds = this.vec(d);
      this.params.forEach((p, k) => {
        const dk = ds[k];
        if (!this.active(k) || !dk) return;
        tidy(() => {
          const skipped = deviceGate ? ne(this.S[S_FLAG], 0) : null;
          const taken = add(this.steps[k], 1);
          const nextCount = skipped ? where(skipped, this.steps[k], taken) : taken;
          const news = body(k, p, dk, this.backend.readSync ? taken.itemSync() : taken);
          for (const [name, t] of Object.entries(news)) {
            const old = name === 'p' ? p : (this.vec(name)[k] ?? (skipped ? Tensor.empty(p.shape.slice(), this.dtype, this.backend) : null));
            const val = skipped && old ? where(skipped, old, t) : t;
            this.put(name, k, name === 'p' ? val : val.keep());
          }
          this.steps[k].dispose();
          this.steps[k] = nextCount.keep();
        });
      });
    });
  }

  sgd(d: string, groups: readonly SgdGroup[], o: EngineUpdate): void {
    this.updateLoop(o, (k, p, dIn, step) => {
      const { lr, momentum, dampening, nesterov } = groups[this.groupOf[k]];
      const wd = this.decays[k] ? groups[this.groupOf[k]].weightDecay : 0;
      const out: Record<string, Tensor> = {};
      let dd = dIn;
      if (wd !== 0) dd = add(dd, mul(p, wd));
      if (momentum !== 0) {
        const old = this.vec('momentum_buffer')[k];
        // torch starts the buffer at d on a parameter's first step (its own count, not the optimizer's).
        const later = old ? add(mul(old, momentum), mul(dd, 1 - dampening)) : null;
        const buf = !later ? cloneT(dd) : typeof step === 'number' ? (step <= 1 ? cloneT(dd) : later) : where(eq(step, 1), dd, later);
        out.momentum_buffer = buf;
        dd = nesterov ? add(dd, mul(buf, momentum)) : buf;
      }
      out.p = add(p, mul(dd, -lr));
      return out;
    }, d);
  }
  adam(d: string, groups: readonly AdamGroup[], o: EngineUpdate): void {
    this.updateLoop(o, (k, p, dIn, step) => {
      const { lr, beta1, beta2, eps, decoupled } = groups[this.groupOf[k]];
      const wd = this.decays[k] ? groups[this.groupOf[k]].weightDecay : 0;
      let dd = dIn;
      let pp = p;
      if (wd !== 0) {
        if (decoupled) pp = mul(p, 1 - lr * wd);
        else dd = add(dd, mul(p, wd));
      }
      const m0 = this.vec('exp_avg')[k] ?? Tensor.empty(p.shape.slice(), this.dtype, this.backend);
      const v0 = this.vec('exp_avg_sq')[k] ?? Tensor.empty(p.shape.slice(), this.dtype, this.backend);
      const m = add(mul(m0, beta1), mul(dd, 1 - beta1));
      const v = add(mul(v0, beta2), mul(mul(dd, dd), 1 - beta2));
      // Bias correction by this parameter's own step count (on the device when it is a tensor).
      // On the device beta^t is exp(t ln beta): t is a whole number of steps and t ln beta is small.
      const negStepSize = typeof step === 'number' ? -(lr / (1 - Math.pow(beta1, step))) : div(-lr, sub(1, exp(mul(step, Math.log(beta1)))));
      const invBc2 = typeof step === 'number' ? 1 / Math.sqrt(1 - Math.pow(beta2, step)) : reciprocal(sqrt(sub(1, exp(mul(step, Math.log(beta2))))));
      const denom = add(mul(sqrt(v), invBc2), eps);
      return { exp_avg: m, exp_avg_sq: v, p: add(pp, mul(div(m, denom), negStepSize)) };
    }, d);
  }

  stateTensors(name: string): Tensor[] | null {
    const v = this.vecs.get(name);
    if (!v) return null;
    return v.map((t, k) => t ?? this.fillState(name, k));
  }
  ensureState(name: string): Tensor[] {
    this.vec(name);
    return this.stateTensors(name)!;
  }
  private fillState(name: string, k: number): Tensor {
    const z = Tensor.empty(this.params[k].shape.slice(), this.dtype, this.backend);
    this.put(name, k, z);
    return this.vec(name)[k]!;
  }
  hasState(name: string): boolean {
    return this.vecs.has(name);
  }
  paramSteps(): (number | Tensor)[] {
    return this.backend.readSync ? this.steps.map((t) => t.itemSync()) : this.steps.slice();
  }
  setParamStep(k: number, v: number | Tensor): void {
    // A copy: the state dict's tensor stays the caller's.
    const t =
      v instanceof Tensor && v.backend === this.backend
        ? noGrad(() => tidy(() => cloneT(reshape(cast(v, this.dtype), []))))
        : this.num(typeof v === 'number' ? v : hostNumber(v, `optimizer.loadStateDict(${k}.step)`));
    this.steps[k].dispose();
    this.steps[k] = t.keep();
  }
  scalarsTensor(): Tensor {
    return stack(this.S).keep();
  }
  loadScalars(values: ArrayLike<number>): void {
    for (let i = 0; i < S_SLOTS; i++) this.setS(i, this.num(i < values.length ? values[i] : 0));
  }
  async readScalars(): Promise<Float64Array> {
    const out = new Float64Array(S_SLOTS);
    for (let i = 0; i < S_SLOTS; i++) out[i] = (await this.S[i].data())[0];
    return out;
  }
  readScalarsSync(): Float64Array | null {
    if (!this.backend.readSync) return null;
    return Float64Array.from(this.S, (t) => t.itemSync());
  }
  dispose(): void {
    for (const t of this.S) t.dispose();
    for (const t of this.steps) t.dispose();
    for (const v of this.vecs.values()) for (const t of v) t?.dispose();
    this.vecs.clear();
  }
}

/** The value of a one-element tensor read synchronously (a state dict from another backend). */
function hostNumber(t: Tensor, where: string): number {
  if (!t.backend.readSync) throw new Error(`${where}: a step count on the ${t.backend.name} backend, which reads asynchronously; read it first`);
  return t.backend.readSync(t.storage)[0];
}

/** The fused engine where the backend has fused kernels (and `fused` is not false), else the loop. */
export function makeEngine(params: readonly Tensor[], groupOf: readonly number[], groups: number, fused: boolean | undefined, decay: 'all' | 'weights' = 'all'): Engine {
  const k = fused === false || params.length === 0 ? null : fusedKernelsFor(params[0].backend);
  if (fused === true && !k) throw new Error(`optimizer: fused: true, but the ${params[0].backend.name} backend has no fused optimizer kernels`);
  return k ? new FlatEngine(params, groupOf, groups, k, decay) : new LoopEngine(params, groupOf, decay);
}

