/**
 * The fused optimizer kernels (src/kernels/fused.ts) in plain TypeScript, for backends whose
 * memory is on the host: the CPU reference backend, and the wasm backend through typed-array views
 * of its memory. Each call is one pass over the arena.
 *
 * The SGD and Adam updates round to float32 after every elementary operation in the same order as
 * the unfused per-tensor path (src/optim) computes them with tensor ops on this backend, so the two
 * paths agree bit for bit on the CPU; reductions accumulate in float64.
 */
import type { TypedArray } from '../../tensor/dtype.js';
import type { Backend, Storage } from '../backend.js';
import { normalAt, uniformAt } from '../rng.js';
import {
  evalSExpr,
  FLAG_ACTIVE,
  FLAG_DECAY,
  FLAG_VECTOR,
  FLAG_WEIGHT,
  registerFusedKernels,
  S_FLAG,
  type AdamGroup,
  type AdaptiveSpec,
  type ArenaLayout,
  type ArenaParamInfo,
  type Coef,
  type FusedKernels,
  type HostArrayOf,
  type NoiseOptions,
  type PerturbOptions,
  type RestoreMode,
  type SAssign,
  type SelectSpec,
  type SgdGroup,
  type NormOptions,
  type Term,
  type UpdateOptions,
} from '../fused.js';
import { CpuStorage } from './index.js';

const ident = (x: number) => x;

/**
 * Per-parameter Adam(W) coefficients at `step`: the weight decay that applies, the bias-corrected
 * step -lr / (1 - beta1^t) and 1 / sqrt(1 - beta2^t). Shared with the wasm SIMD kernels so that
 * both round the same float64 coefficients.
 */
export function adamCoefficients(g: AdamGroup, info: ArenaParamInfo, step: number): { wd: number; nStep: number; invBc2: number } {
  return {
    wd: info.flags & FLAG_DECAY ? g.weightDecay : 0,
    nStep: -(g.lr / (1 - Math.pow(g.beta1, step))),
    invBc2: 1 / Math.sqrt(1 - Math.pow(g.beta2, step)),
  };
}

export class HostFusedKernels implements FusedKernels {
  constructor(
    readonly backend: Backend,
    private readonly arr: HostArrayOf,
  ) {}

  private round(L: ArenaLayout): (x: number) => number {
    return L.dtype === 'float32' ? Math.fround : ident;
  }

  private selected(sel: SelectSpec | undefined, k: number): boolean {
    return !sel || uniformAt(sel.key0, sel.key1, k) < Math.fround(sel.beta);
  }

  /** T for parameter k, or null when T = 1. */
  protected adaptiveEta(ad: AdaptiveSpec | undefined, info: ArenaParamInfo): number | null {
    if (!ad) return null;
    const g = ad.groups[info.group];
    if (!g || !g.on) return null;
    if (!(info.flags & FLAG_WEIGHT) && !g.bias) return null;
    return g.eta;
  }

  protected runThen(S: TypedArray, prog: readonly SAssign[] | undefined): void {
    if (!prog) return;
    for (const a of prog) S[a.dst] = evalSExpr(a.e, S);
  }

  norm(L: ArenaLayout, xs: Storage, Ss: Storage, slot: number, o: NormOptions = {}): void {
    const x = this.arr(xs);
    const p = o.adaptive ? this.arr(o.adaptive.p) : null;
    const ranges: { start: number; end: number; eta: number | null }[] = [];
    L.params.forEach((info, k) => {
      if (!(info.flags & FLAG_ACTIVE) || !this.selected(o.select, k)) return;
      ranges.push({ start: info.offset, end: info.offset + info.numel, eta: this.adaptiveEta(o.adaptive, info) });
    });
    let norm: number;
    if (L.dtype === 'float32') {
      // Squares of float32 values summed in float64 cannot overflow (n 2^256 is far below 2^1024), so
      // the sum is finite exactly when every value is: it is the direct NaN/Inf test as well.
      let acc = 0;
      for (const r of ranges) acc += r.eta === null ? sumSq(x, r.start, r.end) : sumSqWeighted(x, p!, r.eta, r.start, r.end);
      norm = Math.sqrt(acc);
    } else norm = scaledNorm(x, p, ranges);
    this.storeNorm(Ss, slot, norm, o);
  }

  /** S[slot] = norm, the gate from its finiteness (a norm is finite exactly when every value is), then `then`. */
  protected storeNorm(Ss: Storage, slot: number, norm: number, o: NormOptions): void {
    const S = this.arr(Ss);
    S[slot] = norm;
    const bad = !Number.isFinite(norm);
    if (o.gate === 'set') S[S_FLAG] = bad ? 1 : 0;
    else if (o.gate === 'or') S[S_FLAG] = S[S_FLAG] !== 0 || bad ? 1 : 0;
    this.runThen(S, o.then);
  }

  dot(L: ArenaLayout, xs: Storage, ys: Storage, Ss: Storage, slot: number, then?: readonly SAssign[]): void {
    const x = this.arr(xs);
    const y = this.arr(ys);
    const S = this.arr(Ss);
    let acc = 0;
    for (const info of L.params) {
      if (!(info.flags & FLAG_ACTIVE)) continue;
      const end = info.offset + info.numel;
      for (let i = info.offset; i < end; i++) acc += x[i] * y[i];
    }
    S[slot] = acc;
    this.runThen(S, then);
  }

  scalars(Ss: Storage, prog: readonly SAssign[]): void {
    this.runThen(this.arr(Ss), prog);
  }

  perturb(L: ArenaLayout, ps: Storage, dirs: Storage, Ss: Storage, o: PerturbOptions): void {
    const f32 = L.dtype === 'float32';
    const fr = Math.fround;
    const p = this.arr(ps);
    const dir = this.arr(dirs);
    const S = this.arr(Ss);
    const aux = this.arr(o.aux);
    const save = o.save ? this.arr(o.save) : null;
    const skip = o.gated && S[S_FLAG] !== 0;
    const k = o.normSlot === null ? 1 : 1 / (S[o.normSlot] + o.eps);
    const delta = o.mode === 'delta';
    if (save) save.set(dir);
    for (let idx = 0; idx < L.params.length; idx++) {
      const info = L.params[idx];
      const start = info.offset;
      const end = info.offset + info.numel;
      const active = (info.flags & FLAG_ACTIVE) !== 0 && this.selected(o.select, idx);
      const c = skip || !active ? 0 : o.coef[info.group] * k;
      if (delta) {
        if (c === 0) aux.fill(0, start, end);
      } else aux.set(p.subarray(start, end), start);
      if (c === 0) continue; // nothing moves: the backup is p itself and the delta zero
      const eta = this.adaptiveEta(o.adaptive, info);
      if (eta === null) {
        if (f32) addScaled32(p, dir, delta ? aux : null, c, start, end);
        else addScaled64(p, dir, delta ? aux : null, c, start, end);
      } else {
        for (let i = start; i < end; i++) {
          const t = Math.abs(p[i]) + eta;
          const e = f32 ? fr(c * t * t * dir[i]) : c * t * t * dir[i];
          if (delta) aux[i] = e;
          p[i] = f32 ? fr(p[i] + e) : p[i] + e;
        }
      }
    }
  }

  restore(L: ArenaLayout, ps: Storage, auxs: Storage, mode: RestoreMode): void {
    this.restoreInto(L, ps, auxs, mode);
  }
  private restoreInto(L: ArenaLayout, ps: Storage, auxs: Storage, mode: RestoreMode): void {
    const r = this.round(L);
    const p = this.arr(ps);
    const aux = this.arr(auxs);
    if (mode === 'backup') p.set(aux);
    else for (let i = 0; i < p.length; i++) p[i] = r(p[i] - aux[i]);
  }

  lincomb(L: ArenaLayout, outs: Storage, self: Coef, terms: readonly Term[], Ss: Storage): void {
    const f32 = L.dtype === 'float32';
    const fr = Math.fround;
    const out = this.arr(outs);
    const S = this.arr(Ss);
    const coef = (c: Coef) => (c.slot === undefined ? c.c : c.c * S[c.slot]);
    const a = coef(self);
    const readSelf = !(self.c === 0 && self.slot === undefined);
    const xs = terms.map((t) => this.arr(t.x));
    const cs = terms.map(coef);
    for (const info of L.params) {
      const start = info.offset;
      const end = start + info.numel;
      if (xs.length === 1) {
        const x0 = xs[0];
        const c0 = cs[0];
        if (readSelf) for (let i = start; i < end; i++) out[i] = f32 ? fr(a * out[i] + c0 * x0[i]) : a * out[i] + c0 * x0[i];
        else for (let i = start; i < end; i++) out[i] = f32 ? fr(c0 * x0[i]) : c0 * x0[i];
      } else if (xs.length === 0) {
        if (readSelf) for (let i = start; i < end; i++) out[i] = f32 ? fr(a * out[i]) : a * out[i];
        else out.fill(0, start, end);
      } else {
        for (let i = start; i < end; i++) {
          let v = readSelf ? a * out[i] : 0;
          for (let j = 0; j < xs.length; j++) v += cs[j] * xs[j][i];
          out[i] = f32 ? fr(v) : v;
        }
      }
    }
  }

  noise(L: ArenaLayout, outs: Storage, o: NoiseOptions): void {
    const out = this.arr(outs);
    out.fill(0);
    let rowNorm: Float64Array | null = null;
    if (o.filterwise) {
      const p = this.arr(o.filterwise.p);
      const rn = this.arr(o.filterwise.rowNorms);
      rowNorm = new Float64Array(L.rows);
      for (const info of L.params) {
        const rows = info.rowLen > 0 ? info.numel / info.rowLen : 0;
        for (let q = 0; q < rows; q++) {
          let s = 0;
          const start = info.offset + q * info.rowLen;
          for (let i = start; i < start + info.rowLen; i++) s += p[i] * p[i];
          rowNorm[info.rowBase + q] = Math.sqrt(s) + (info.flags & FLAG_VECTOR ? 1e-16 : 0);
        }
      }
      rn.set(rowNorm);
      // Read back through the storage so float32 rounds the norms exactly as a GPU would store them.
      rowNorm = Float64Array.from(rn);
    }
    for (const info of L.params) {
      if (!(info.flags & FLAG_ACTIVE)) continue;
      const sc = o.scale[info.group];
      for (let j = 0; j < info.numel; j++) {
        const i = info.offset + j;
        const std = rowNorm ? sc * rowNorm[info.rowBase + Math.floor(j / info.rowLen)] : sc;
        out[i] = std * normalAt(o.key0, o.key1, i);
      }
    }
  }

  /** Adds one to the step count of every active parameter (an update is being taken) and returns the counts. */
  protected advanceSteps(L: ArenaLayout, stepsStorage: Storage): TypedArray {
    const steps = this.arr(stepsStorage);
    L.params.forEach((info, k) => {
      if (info.flags & FLAG_ACTIVE) steps[k] += 1;
    });
    return steps;
  }

  sgd(L: ArenaLayout, ps: Storage, ds: Storage, moms: Storage | null, Ss: Storage, groups: readonly SgdGroup[], o: UpdateOptions): void {
    const f32 = L.dtype === 'float32';
    const fr = Math.fround;
    const p = this.arr(ps);
    const d = this.arr(ds);
    const mom = moms ? this.arr(moms) : null;
    const S = this.arr(Ss);
    if (o.restore) this.restoreInto(L, ps, o.restore.aux, o.restore.mode);
    if (o.gated && S[S_FLAG] !== 0) return;
    const steps = this.advanceSteps(L, o.steps);
    for (const [k, info] of L.params.entries()) {
      if (!(info.flags & FLAG_ACTIVE)) continue;
      const first = steps[k] <= 1;
      const { lr, momentum, dampening, nesterov } = groups[info.group];
      const wd = info.flags & FLAG_DECAY ? groups[info.group].weightDecay : 0;
      const start = info.offset;
      const end = info.offset + info.numel;
      const nlr = -lr;
      const damp = 1 - dampening;
      if (f32) sgd32(p, d, mom, start, end, nlr, momentum, damp, nesterov, wd, first);
      else sgd64(p, d, mom, start, end, nlr, momentum, damp, nesterov, wd, first);
    }
  }

  adam(L: ArenaLayout, ps: Storage, ds: Storage, ms: Storage, vs: Storage, Ss: Storage, groups: readonly AdamGroup[], o: UpdateOptions): void {
    const f32 = L.dtype === 'float32';
    const fr = Math.fround;
    const p = this.arr(ps);
    const d = this.arr(ds);
    const m = this.arr(ms);
    const v = this.arr(vs);
    const S = this.arr(Ss);
    if (o.restore) this.restoreInto(L, ps, o.restore.aux, o.restore.mode);
    if (o.gated && S[S_FLAG] !== 0) return;
    const steps = this.advanceSteps(L, o.steps);
    for (const [k, info] of L.params.entries()) {
      if (!(info.flags & FLAG_ACTIVE)) continue;
      const { beta1, beta2, eps, decoupled } = groups[info.group];
      const { wd, nStep, invBc2 } = adamCoefficients(groups[info.group], info, steps[k]);
      const decay = 1 - groups[info.group].lr * wd;
      const c1 = 1 - beta1;
      const c2 = 1 - beta2;
      const start = info.offset;
      const end = info.offset + info.numel;
      if (f32) {
        for (let i = start; i < end; i++) {
          let dd = d[i];
          if (wd !== 0) {
            if (decoupled) p[i] = fr(decay * p[i]);
            else dd = fr(dd + fr(wd * p[i]));
          }
          const mi = fr(fr(beta1 * m[i]) + fr(c1 * dd));
          const vi = fr(fr(beta2 * v[i]) + fr(c2 * fr(dd * dd)));
          m[i] = mi;
          v[i] = vi;
          const denom = fr(fr(invBc2 * fr(Math.sqrt(vi))) + eps);
          p[i] = fr(p[i] + fr(nStep * fr(mi / denom)));
        }
      } else {
        for (let i = start; i < end; i++) {
          let dd = d[i];
          if (wd !== 0) {
            if (decoupled) p[i] = decay * p[i];
            else dd = dd + wd * p[i];
          }
          const mi = beta1 * m[i] + c1 * dd;
          const vi = beta2 * v[i] + c2 * (dd * dd);
          m[i] = mi;
          v[i] = vi;
          const denom = invBc2 * Math.sqrt(vi) + eps;
          p[i] = p[i] + nStep * (mi / denom);
        }
      }
    }
  }
}

/** SGD over [start, end), rounded to float32 after every operation in the unfused path's order. */
function sgd32(p: TypedArray, d: TypedArray, mom: TypedArray | null, start: number, end: number, nlr: number, momentum: number, damp: number, nesterov: boolean, wd: number, first: boolean): void {
  const fr = Math.fround;
  if (momentum === 0) {
    if (wd === 0) for (let i = start; i < end; i++) p[i] = fr(p[i] + fr(nlr * d[i]));
    else for (let i = start; i < end; i++) p[i] = fr(p[i] + fr(nlr * fr(d[i] + fr(wd * p[i]))));
    return;
  }
  const m = mom!;
  for (let i = start; i < end; i++) {
    const dd = wd === 0 ? d[i] : fr(d[i] + fr(wd * p[i]));
    const buf = first ? dd : fr(fr(momentum * m[i]) + fr(damp * dd));
    m[i] = buf;
    p[i] = fr(p[i] + fr(nlr * (nesterov ? fr(dd + fr(momentum * buf)) : buf)));
  }
}

function sgd64(p: TypedArray, d: TypedArray, mom: TypedArray | null, start: number, end: number, nlr: number, momentum: number, damp: number, nesterov: boolean, wd: number, first: boolean): void {
  if (momentum === 0) {
    if (wd === 0) for (let i = start; i < end; i++) p[i] = p[i] + nlr * d[i];
    else for (let i = start; i < end; i++) p[i] = p[i] + nlr * (d[i] + wd * p[i]);
    return;
  }
  const m = mom!;
  for (let i = start; i < end; i++) {
    const dd = wd === 0 ? d[i] : d[i] + wd * p[i];
    const buf = first ? dd : momentum * m[i] + damp * dd;
    m[i] = buf;
    p[i] = p[i] + nlr * (nesterov ? dd + momentum * buf : buf);
  }
}

/** p += e with e = c * dir rounded to float32 (stored in delta when given). */
function addScaled32(p: TypedArray, dir: TypedArray, delta: TypedArray | null, c: number, start: number, end: number): void {
  const fr = Math.fround;
  if (delta) {
    for (let i = start; i < end; i++) {
      const e = fr(c * dir[i]);
      delta[i] = e;
      p[i] = fr(p[i] + e);
    }
  } else for (let i = start; i < end; i++) p[i] = fr(p[i] + fr(c * dir[i]));
}

function addScaled64(p: TypedArray, dir: TypedArray, delta: TypedArray | null, c: number, start: number, end: number): void {
  if (delta) {
    for (let i = start; i < end; i++) {
      const e = c * dir[i];
      delta[i] = e;
      p[i] = p[i] + e;
    }
  } else for (let i = start; i < end; i++) p[i] = p[i] + c * dir[i];
}

function sumSq(x: TypedArray, start: number, end: number): number {
  let acc = 0;
  for (let i = start; i < end; i++) acc += x[i] * x[i];
  return acc;
}

/**
 * ||T x|| over the ranges of a float64 arena, where squares can overflow: the largest magnitude m
 * first, then m sqrt(sum((T x / m)^2)). NaN when a value is NaN, Inf when one is infinite.
 */
function scaledNorm(x: TypedArray, p: TypedArray | null, ranges: readonly { start: number; end: number; eta: number | null }[]): number {
  const term = (i: number, eta: number | null) => (eta === null ? x[i] : (Math.abs(p![i]) + eta) * x[i]);
  let m = 0;
  for (const r of ranges) {
    for (let i = r.start; i < r.end; i++) {
      const a = Math.abs(term(i, r.eta));
      if (a !== a) return NaN;
      if (a > m) m = a;
    }
  }
  if (m === 0 || m === Infinity) return m;
  let acc = 0;
  for (const r of ranges) {
    for (let i = r.start; i < r.end; i++) {
      const s = term(i, r.eta) / m;
      acc += s * s;
    }
  }
  return m * Math.sqrt(acc);
}

function sumSqWeighted(x: TypedArray, p: TypedArray, eta: number, start: number, end: number): number {
  let acc = 0;
  for (let i = start; i < end; i++) {
    const t = (Math.abs(p[i]) + eta) * x[i];
    acc += t * t;
  }
  return acc;
}

registerFusedKernels('cpu', (b) => new HostFusedKernels(b, (s) => (s as CpuStorage).data));
registerFusedKernels('wasm', (b) => {
  // The wasm backend keeps its memory on the host; its (TypeScript-private) `typed(storage)` gives
  // a typed array over a storage. Without it, the optimizers use the unfused path.
  const typed = (b as unknown as { typed?: (s: Storage) => TypedArray }).typed;
  // Dispatch hook: a backend may supply its own (faster) kernels, e.g. the wasm SIMD ones.
  const own = (b as unknown as { fusedKernels?: () => FusedKernels | null }).fusedKernels;
  const fast = typeof own === 'function' ? own.call(b) : null;
  if (fast) return fast;
  return typeof typed === 'function' ? new HostFusedKernels(b, (s) => typed.call(b, s)) : null;
});
