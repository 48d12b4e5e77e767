/**
 * The fused optimizer kernels of the wasm backend: the host (TypeScript) kernels of
 * src/kernels/cpu/fused.ts over typed-array views of wasm memory, with the common float32 passes
 * (sums of squares, dot products, perturb, restore, lincomb, SGD and Adam(W) updates, Gaussian
 * noise) routed to the SIMD kernels of fusedsimd.ts, which agree with the host ones bit for bit
 * (sums and normals: to the last bits of a float64 before rounding to float32). Rare variants
 * (ESAM's selection, lincombs of 4+ terms, float64 arenas) keep the host path.
 */
import type { TypedArray } from '../../tensor/dtype.js';
import type { Backend, Storage } from '../backend.js';
import { adamCoefficients, HostFusedKernels } from '../cpu/fused.js';
import {
  FLAG_ACTIVE,
  FLAG_DECAY,
  FLAG_VECTOR,
  S_FLAG,
  type AdamGroup,
  type ArenaLayout,
  type Coef,
  type NoiseOptions,
  type PerturbOptions,
  type RestoreMode,
  type SAssign,
  type SgdGroup,
  type NormOptions,
  type Term,
  type UpdateOptions,
} from '../fused.js';
import { adamExport, lincombExport, sgdExport } from './fusedsimd.js';
import type { KernelExports } from './module.js';

export interface WasmFusedHost {
  backend: Backend;
  exports: KernelExports;
  typed(s: Storage): TypedArray;
  /** Byte address of a storage. */
  ptr(s: Storage): number;
}

export class WasmFusedKernels extends HostFusedKernels {
  private readonly k: KernelExports;
  private readonly h: WasmFusedHost;

  constructor(h: WasmFusedHost) {
    super(h.backend, (s) => h.typed(s));
    this.h = h;
    this.k = h.exports;
  }

  override norm(L: ArenaLayout, xs: Storage, Ss: Storage, slot: number, o: NormOptions = {}): void {
    if (L.dtype !== 'float32' || o.select) return super.norm(L, xs, Ss, slot, o);
    const x = this.h.ptr(xs);
    const p = o.adaptive ? this.h.ptr(o.adaptive.p) : 0;
    // float32 squares summed in float64: no overflow, finite exactly when every value is (as the host kernel).
    let acc = 0;
    for (const info of L.params) {
      if (!(info.flags & FLAG_ACTIVE)) continue;
      const eta = this.adaptiveEta(o.adaptive, info);
      const end = info.offset + info.numel;
      acc += (eta === null ? this.k.fz_sumsq(x, info.offset, end) : this.k.fz_sumsq_w(x, p, info.offset, end, eta)) as number;
    }
    this.storeNorm(Ss, slot, Math.sqrt(acc), o);
  }

  override dot(L: ArenaLayout, xs: Storage, ys: Storage, Ss: Storage, slot: number, then?: readonly SAssign[]): void {
    if (L.dtype !== 'float32') return super.dot(L, xs, ys, Ss, slot, then);
    const x = this.h.ptr(xs);
    const y = this.h.ptr(ys);
    let acc = 0;
    for (const info of L.params) {
      if (info.flags & FLAG_ACTIVE) acc += this.k.fz_dot(x, y, info.offset, info.offset + info.numel) as number;
    }
    const S = this.h.typed(Ss);
    S[slot] = acc;
    this.runThen(S, then);
  }

  override perturb(L: ArenaLayout, ps: Storage, dirs: Storage, Ss: Storage, o: PerturbOptions): void {
    if (L.dtype !== 'float32' || o.select) return super.perturb(L, ps, dirs, Ss, o);
    const p = this.h.typed(ps);
    const aux = this.h.typed(o.aux);
    const S = this.h.typed(Ss);
    if (o.save) this.h.typed(o.save).set(this.h.typed(dirs));
    const pp = this.h.ptr(ps);
    const dp = this.h.ptr(dirs);
    const ap = this.h.ptr(o.aux);
    const skip = o.gated && S[S_FLAG] !== 0;
    const kk = o.normSlot === null ? 1 : 1 / (S[o.normSlot] + o.eps);
    const delta = o.mode === 'delta';
    for (const info of L.params) {
      const start = info.offset;
      const end = start + info.numel;
      const active = (info.flags & FLAG_ACTIVE) !== 0;
      const c = skip || !active ? 0 : o.coef[info.group] * kk;
      if (delta) {
        if (c === 0) aux.fill(0, start, end);
      } else aux.set(p.subarray(start, end), start);
      if (c === 0) continue;
      const eta = this.adaptiveEta(o.adaptive, info);
      if (eta === null) this.k[delta ? 'fz_perturb_1' : 'fz_perturb_0'](pp, dp, ap, start, end, c);
      else this.k[delta ? 'fz_perturb_ad_1' : 'fz_perturb_ad_0'](pp, dp, ap, start, end, c, eta);
    }
  }

  override restore(L: ArenaLayout, ps: Storage, auxs: Storage, mode: RestoreMode): void {
    if (L.dtype !== 'float32') return super.restore(L, ps, auxs, mode);
    this.restoreF32(ps, auxs, mode);
  }
  /** The restore of a float32 arena (not through `restore`: the fused updates are one kernel each). */
  private restoreF32(ps: Storage, auxs: Storage, mode: RestoreMode): void {
    if (mode === 'backup') this.h.typed(ps).set(this.h.typed(auxs));
    else this.k.fz_sub(this.h.ptr(ps), this.h.ptr(auxs), 0, this.h.typed(ps).length);
  }

  override lincomb(L: ArenaLayout, outs: Storage, self: Coef, terms: readonly Term[], Ss: Storage): void {
    if (L.dtype !== 'float32' || terms.length > 3) return super.lincomb(L, outs, self, terms, Ss);
    const S = this.h.typed(Ss);
    const coef = (c: Coef) => (c.slot === undefined ? c.c : c.c * S[c.slot]);
    const readSelf = !(self.c === 0 && self.slot === undefined);
    if (!readSelf && terms.length === 0) {
      const out = this.h.typed(outs);
      for (const info of L.params) out.fill(0, info.offset, info.offset + info.numel);
      return;
    }
    const fn = this.k[lincombExport(terms.length, readSelf)];
    const op = this.h.ptr(outs);
    const xs = terms.map((t) => this.h.ptr(t.x));
    const cs = terms.map(coef);
    const a = coef(self);
    for (const info of L.params) fn(op, ...xs, info.offset, info.offset + info.numel, a, ...cs);
  }

  override sgd(L: ArenaLayout, ps: Storage, ds: Storage, moms: Storage | null, Ss: Storage, groups: readonly SgdGroup[], o: UpdateOptions): void {
    if (L.dtype !== 'float32') return super.sgd(L, ps, ds, moms, Ss, groups, o);
    if (o.restore) this.restoreF32(ps, o.restore.aux, o.restore.mode);
    const S = this.h.typed(Ss);
    if (o.gated && S[S_FLAG] !== 0) return;
    const steps = this.advanceSteps(L, o.steps);
    const pp = this.h.ptr(ps);
    const dp = this.h.ptr(ds);
    const mp = moms ? this.h.ptr(moms) : 0;
    for (const [k, info] of L.params.entries()) {
      if (!(info.flags & FLAG_ACTIVE)) continue;
      const first = steps[k] <= 1;
      const { lr, momentum, dampening, nesterov } = groups[info.group];
      const wd = info.flags & FLAG_DECAY ? groups[info.group].weightDecay : 0;
      const mom = momentum !== 0;
      this.k[sgdExport(mom, mom && nesterov, mom && first, wd !== 0)](pp, dp, mp, info.offset, info.offset + info.numel, -lr, momentum, 1 - dampening, wd);
    }
  }

  override adam(L: ArenaLayout, ps: Storage, ds: Storage, ms: Storage, vs: Storage, Ss: Storage, groups: readonly AdamGroup[], o: UpdateOptions): void {
    if (L.dtype !== 'float32') return super.adam(L, ps, ds, ms, vs, Ss, groups, o);
    if (o.restore) this.restoreF32(ps, o.restore.aux, o.restore.mode);
    const S = this.h.typed(Ss);
    if (o.gated && S[S_FLAG] !== 0) return;
    const steps = this.advanceSteps(L, o.steps);
    const [pp, dp, mp, vp] = [ps, ds, ms, vs].map((s) => this.h.ptr(s));
    for (const [k, info] of L.params.entries()) {
      if (!(info.flags & FLAG_ACTIVE)) continue;
      const { lr, beta1, beta2, eps, decoupled } = groups[info.group];
      const { wd, nStep, invBc2 } = adamCoefficients(groups[info.group], info, steps[k]);
      const mode = wd === 0 ? 0 : decoupled ? 1 : 2;
      this.k[adamExport(mode)](pp, dp, mp, vp, info.offset, info.offset + info.numel, 1 - lr * wd, wd, beta1, 1 - beta1, beta2, 1 - beta2, invBc2, eps, nStep);
    }
  }

  override noise(L: ArenaLayout, outs: Storage, o: NoiseOptions): void {
    if (L.dtype !== 'float32') return super.noise(L, outs, o);
    const out = this.h.typed(outs);
    const op = this.h.ptr(outs);
    let rowNorm: Float64Array | null = null;
    if (o.filterwise) {
      for (const info of L.params) {
        if (info.rowLen <= 0 || info.numel % info.rowLen !== 0) return super.noise(L, outs, o);
      }
      const pp = this.h.ptr(o.filterwise.p);
      const rn = this.h.typed(o.filterwise.rowNorms);
      rowNorm = new Float64Array(L.rows);
      for (const info of L.params) {
        const rows = info.numel / info.rowLen;
        for (let q = 0; q < rows; q++) {
          const start = info.offset + q * info.rowLen;
          const s = this.k.fz_sumsq(pp, start, start + info.rowLen) as number;
          rowNorm[info.rowBase + q] = Math.sqrt(s) + (info.flags & FLAG_VECTOR ? 1e-16 : 0);
        }
      }
      rn.set(rowNorm);
      rowNorm = Float64Array.from(rn);
    }
    out.fill(0);
    for (const info of L.params) {
      if (!(info.flags & FLAG_ACTIVE)) continue;
      const sc = o.scale[info.group];
      if (!rowNorm) {
        this.k.rng_normal_0(op + 4 * info.offset, info.numel, info.offset, o.key0, o.key1, 0, sc);
        continue;
      }
      const rows = info.numel / info.rowLen;
      for (let q = 0; q < rows; q++) {
        const start = info.offset + q * info.rowLen;
        this.k.rng_normal_0(op + 4 * start, info.rowLen, start, o.key0, o.key1, 0, sc * rowNorm[info.rowBase + q]);
      }
    }
  }
}
