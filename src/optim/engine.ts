/**
 * The engines that run the optimizer programs, all from the same arena-kernel definitions
 * (src/kernels/arena/fused.ts):
 *
 * - FlatEngine (fused): the parameters live in one flat arena and every vector operation is one
 *   pass over it (the FusedKernels of src/kernels/fused.ts).
 * - LoopEngine (unfused): the same definitions once per parameter tensor (one dispatch each), in
 *   place, with no temporaries: the fair per-tensor baseline (PyTorch's foreach-free loop), equal
 *   to the fused engine bit for bit.
 *
 * Vectors are named: 'p' (parameters), 'g' (gradients) and state vectors allocated on first use
 * ('aux', 'g0', 'momentum_buffer', ...). Scalars live in the slots of S on the device (see
 * src/kernels/fused.ts), so neither engine reads back during a step.
 */
// The host (cpu, wasm) fused kernels (arena kernels, src/kernels/arena/fused.ts) register
// themselves with fusedKernelsFor() when loaded; the WebGPU ones load when the WebGPU backend is
// created (a loader that src/kernels/arena/run.ts registers and src/kernels/webgpu/device.ts
// awaits), so an app that never chooses WebGPU does not ship them.
import '../kernels/arena/fused.js';
import type { Backend, Storage } from '../kernels/backend.js';
import {
  BLOCK,
  FLAG_ACTIVE,
  FLAG_DECAY,
  FLAG_VECTOR,
  FLAG_WEIGHT,
  fusedKernelsFor,
  PARAM_FIELDS,
  S_SLOTS,
  type AdamGroup,
  type ArenaLayout,
  type Coef,
  type FusedKernels,
  type RestoreMode,
  type SAssign,
  type SelectSpec,
  type SgdGroup,
} from '../kernels/fused.js';
import { adamCall, copyCall, dotCall, hostRowNorms, lincombCall, noiseCall, normCall, perturbCall, restoreCall, scalarProgram, sgdCall, type KernelCall } from '../kernels/arena/fused.js';
import { hostArrayOf, runPerTensor, runScalarProgram } from '../kernels/arena/run.js';
import { captureHooks } from '../compile/hooks.js';
import type { DType } from '../tensor/dtype.js';
import { Tensor } from '../tensor/tensor.js';
import { copyInto } from '../nn/module.js';
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
  paramSteps(): (number | Tensor)[] {
    this.stepCopies ??= this.backend.readSync ? null : this.params.map(() => Tensor.empty([], this.dtype, this.backend).keep());
    return readStepCounts(this.backend, this.arena.stepCounts, this.params.length, this.stepCopies);
  }
  setParamStep(k: number, v: number | Tensor): void {
    writeStepCount(this.backend, this.dtype, this.arena.stepCounts, k, v);
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

// --------------------------------------------------------------------------------- per tensor

/**
 * The per-tensor baseline, on every backend: every operation is the same arena
 * kernel definition as the fused engine's (src/kernels/arena/fused.ts), run once per parameter
 * tensor over that tensor's own storages, in place and with no temporaries, as PyTorch's
 * foreach-free loop over parameters. Reductions combine the per-tensor partials in the arena's
 * order, so this engine and FlatEngine agree bit for bit.
 */
export class LoopEngine implements Engine {
  readonly fused = false;
  readonly backend: Backend;
  readonly dtype: DType;
  readonly S: Storage;
  private readonly steps: Storage;
  private readonly state = new Map<string, Tensor[]>();
  private readonly offsets: number[];
  private readonly flagsBase: number[];
  private readonly groups: number;
  private sTensor: Tensor | null = null;
  /** Which parameters had a gradient at the last prepare() (torch skips those with grad None). */
  private act: boolean[];

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
    this.offsets = arenaOffsets(params);
    this.flagsBase = params.map((p) => {
      const weight = isWeightParam(p);
      return (weight ? FLAG_WEIGHT : 0) | (decay === 'all' || weight ? FLAG_DECAY : 0) | (p.ndim < 2 ? FLAG_VECTOR : 0);
    });
    this.groups = Math.max(0, ...groupOf) + 1;
    this.S = this.backend.alloc(S_SLOTS, this.dtype);
    this.steps = this.backend.alloc(params.length, this.dtype);
    this.act = params.map(() => true);
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

  /**
   * Runs a call once per parameter. A parameter without a gradient binds a zero stand-in for 'g'
   * (kernels that run on every parameter read it under a where and never keep what they write
   * there; torch leaves such a parameter's grad None).
   */
  private run(c: KernelCall<string>): void {
    const stand: Tensor[] = [];
    try {
      const params = this.params.map((p, k) => {
        const vectors: Record<string, Storage> = {};
        for (const [kn, name] of Object.entries(c.vectors)) vectors[kn] = this.storageOf(name, k, stand);
        return { vectors, numel: p.size, group: this.groupOf[k], flags: this.flagsBase[k] | (this.act[k] ? FLAG_ACTIVE : 0), index: this.offsets[k] };
      });
      runPerTensor(c.kernel, this.backend, { dtype: this.dtype as 'float32' | 'float64', params, S: this.S, steps: this.steps, hyper: c.hyper });
    } finally {
      for (const t of stand) t.dispose();
    }
  }
  private storageOf(name: string, k: number, stand: Tensor[]): Storage {
    const p = this.params[k];
    if (name === 'p') return p.storage;
    if (name === 'g') {
      if (p.grad && !p.grad.isDisposed) return p.grad.storage;
      const z = Tensor.empty(p.shape.slice(), this.dtype, this.backend);
      stand.push(z);
      return z.storage;
    }
    return this.ensureState(name)[k].storage;
  }
  norm(x: string, slot: number, o: EngineNorm = {}): void {
    this.run(normCall(x, 'p', slot, this.groups, { adaptive: o.adaptive, select: o.select, gate: o.gate, then: o.then }));
  }
  dot(x: string, y: string, slot: number, then?: readonly SAssign[]): void {
    this.run(dotCall(x, y, slot, then));
  }
  scalars(prog: readonly SAssign[]): void {
    runScalarProgram(scalarProgram(prog), this.backend, this.S);
  }
  perturb(dir: string, o: EnginePerturb): void {
    this.run(perturbCall('p', dir, 'aux', o.save ?? null, this.groups, { coef: o.coef, normSlot: o.normSlot, eps: o.eps, adaptive: o.adaptive, select: o.select, mode: o.mode, gated: o.gated }));
  }
  restore(mode: RestoreMode): void {
    this.run(restoreCall('p', 'aux', mode));
  }
  lincomb(out: string, self: Coef, terms: readonly EngineTerm[]): void {
    this.run(lincombCall(out, self, terms, this.groups));
  }
  copy(dst: string, src: string): void {
    this.run(copyCall(dst, src));
  }
  noise(out: string, o: { key0: number; key1: number; scale: readonly number[]; filterwise: boolean }): void {
    if (o.filterwise) this.rowNormsInto(out);
    // Each tensor draws at its arena offset (PerTensorParam.index): the numbers the arena draws.
    this.run(noiseCall(out, o.key0, o.key1, o.scale, o.filterwise));
  }
  /** RWP's filter-wise std: each element's row norm of p into `out`, tensor by tensor. */
  private rowNormsInto(out: string): void {
    const outs = this.ensureState(out).map((t) => t.storage);
    const ps = this.params.map((p) => p.storage);
    // Host memory written directly, or the device's row-norm kernel over one-parameter layouts:
    // neither is a call a captured step (src/compile) can replay as recorded, so it is one recorded call.
    if (captureHooks.deviceCall) return void captureHooks.deviceCall('per-tensor row norms', (os: Storage[], pss: Storage[]) => this.rowNormsNow(os, pss), [outs, ps]);
    this.rowNormsNow(outs, ps);
  }
  private rowNormsNow(outs: Storage[], ps: Storage[]): void {
    const arr = hostArrayOf(this.backend);
    const flagsOf = (k: number) => this.flagsBase[k] | (this.act[k] ? FLAG_ACTIVE : 0);
    if (arr) {
      const round = this.dtype === 'float32' ? Math.fround : (x: number) => x;
      hostRowNorms(this.params.map((p, k) => ({ out: arr(outs[k]), p: arr(ps[k]), offset: 0, numel: p.size, flags: flagsOf(k), rowLen: rowLenOf(p) })), round);
      return;
    }
    const fk = fusedKernelsFor(this.backend);
    if (!fk) throw new Error(`optimizer: the ${this.backend.name} backend has no row-norm kernel`);
    const b = this.backend;
    this.rowLayouts ??= this.params.map((p, k) => {
      const rowLen = rowLenOf(p);
      const blocks = Math.max(Math.ceil(p.size / BLOCK), 1);
      const info = { offset: 0, numel: p.size, group: this.groupOf[k], flags: this.flagsBase[k], rowLen, rowBase: 0 };
      const bp = new Int32Array(blocks);
      return { dtype: this.dtype, numel: blocks * BLOCK, blocks, groups: this.groups, params: [info], rows: rowLen > 0 ? p.size / rowLen : 0, blockParam: b.upload(bp, 'int32'), paramTable: b.upload(new Int32Array(PARAM_FIELDS), 'int32'), blockParamHost: bp };
    });
    this.rowNorms ??= Tensor.empty([Math.max(1, ...this.rowLayouts.map((l) => l.rows))], this.dtype, b).keep();
    this.params.forEach((p, k) => {
      const base = this.rowLayouts![k];
      // The active flag changes from step to step: the table row is rewritten with it.
      const flags = flagsOf(k);
      b.write(base.paramTable, Int32Array.from([0, p.size, this.groupOf[k], flags, base.params[0].rowLen, 0, 0, 0]));
      fk.rowNorms({ ...base, params: [{ ...base.params[0], flags }] }, ps[k], outs[k], this.rowNorms!.storage);
    });
  }
  /** One-parameter layouts (a device's row-norm kernel works on a layout) and its row scratch. */
  private rowLayouts: ArenaLayout[] | null = null;
  private rowNorms: Tensor | null = null;
  sgd(d: string, groups: readonly SgdGroup[], o: EngineUpdate): void {
    const mom = groups.some((g) => g.momentum !== 0) ? 'momentum_buffer' : null;
    const call = (gs: readonly SgdGroup[]) => sgdCall('p', d, mom, gs, o.restore ? { aux: 'aux', mode: o.restore } : null, o.gated);
    this.run(derivedHyper(call(groups), groups, call));
  }
  adam(d: string, groups: readonly AdamGroup[], o: EngineUpdate): void {
    const call = (gs: readonly AdamGroup[]) => adamCall('p', d, 'exp_avg', 'exp_avg_sq', gs, o.restore ? { aux: 'aux', mode: o.restore } : null, o.gated);
    this.run(derivedHyper(call(groups), groups, call));
  }

  stateTensors(name: string): Tensor[] | null {
    return this.state.get(name) ?? null;
  }
  ensureState(name: string): Tensor[] {
    let ts = this.state.get(name);
    if (!ts) {
      ts = this.params.map((p) => Tensor.empty(p.shape.slice(), this.dtype, this.backend).keep());
      this.state.set(name, ts);
    }
    return ts;
  }
  hasState(name: string): boolean {
    return this.state.has(name);
  }
  private stepCopies: Tensor[] | null = null;
  paramSteps(): (number | Tensor)[] {
    this.stepCopies ??= this.backend.readSync ? null : this.params.map(() => Tensor.empty([], this.dtype, this.backend).keep());
    return readStepCounts(this.backend, this.steps, this.params.length, this.stepCopies);
  }
  setParamStep(k: number, v: number | Tensor): void {
    writeStepCount(this.backend, this.dtype, this.steps, k, v);
  }
  scalarsTensor(): Tensor {
    this.sTensor ??= Tensor.fromStorage(this.S, [S_SLOTS], this.backend).keep();
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
    for (const l of this.rowLayouts ?? []) {
      this.backend.release(l.blockParam);
      this.backend.release(l.paramTable);
    }
    this.rowNorms?.dispose();
    if (!this.sTensor) this.backend.release(this.S);
    else this.sTensor.dispose();
    this.backend.release(this.steps);
    for (const ts of this.state.values()) for (const t of ts) t.dispose();
    this.state.clear();
  }
}

// ------------------------------------------------------------------------------- helpers

/** A parameter's filter row: its last dimensions (the whole of a vector), as the arena's layout. */
function rowLenOf(p: Tensor): number {
  return p.size === 0 ? 0 : p.ndim < 2 ? p.size : p.size / p.shape[0];
}

/** Offsets the flat arena would give each parameter: the per-tensor noise draws the same numbers. */
function arenaOffsets(params: readonly Tensor[]): number[] {
  let off = 0;
  return params.map((p) => {
    const o = off;
    off += Math.ceil(p.size / BLOCK) * BLOCK;
    return o;
  });
}

/**
 * Per-parameter step counts from their storage: numbers where the backend reads synchronously,
 * else `copies` (0-d tensors, refreshed on the device: WebGPU binds views only at 256-byte
 * offsets, so the counts are copied out rather than viewed).
 */
function readStepCounts(b: Backend, counts: Storage, n: number, copies: Tensor[] | null): (number | Tensor)[] {
  if (b.readSync) {
    const host = b.readSync(counts);
    return Array.from({ length: n }, (_, k) => host[k]);
  }
  copies!.forEach((t, k) => b.stridedCopy(counts, t.storage, { shape: [1], srcStrides: [1], srcOffset: k, dstStrides: [1], dstOffset: 0 }));
  return copies!;
}

/** Sets count k: a one-element tensor of this backend and dtype is copied on the device; anything else goes through a number. */
function writeStepCount(b: Backend, dtype: DType, counts: Storage, k: number, v: number | Tensor): void {
  const onDevice = v instanceof Tensor && v.backend === b && v.dtype === dtype;
  const src = onDevice ? v : Tensor.empty([], dtype, b);
  if (!onDevice) copyInto(src, Float64Array.of(typeof v === 'number' ? v : hostNumber(v, `optimizer.loadStateDict(${k}.step)`)));
  b.stridedCopy(src.storage, counts, { shape: [1], srcStrides: [1], srcOffset: 0, dstStrides: [1], dstOffset: k });
  if (!onDevice) src.dispose();
}

/** The value of a one-element tensor read synchronously (a state dict from another backend). */
function hostNumber(t: Tensor, where: string): number {
  if (!t.backend.readSync) throw new Error(`${where}: a step count on the ${t.backend.name} backend, which reads asynchronously; read it first`);
  return t.backend.readSync(t.storage)[0];
}

/**
 * The kernel call's hyper-parameters are computed from the optimizer's groups: a captured step
 * (src/compile) derives them again from the groups of each replay (a scheduled lr stays live).
 */
function derivedHyper<G extends object>(c: KernelCall<string>, groups: G, call: (g: G) => KernelCall<string>): KernelCall<string> {
  captureHooks.hostValue?.(c.hyper, (g) => call(g as G).hyper, groups);
  return c;
}

/** The fused engine where the backend has fused kernels (and `fused` is not false), else the loop. */
export function makeEngine(params: readonly Tensor[], groupOf: readonly number[], groups: number, fused: boolean | undefined, decay: 'all' | 'weights' = 'all'): Engine {
  const k = fused === false || params.length === 0 ? null : fusedKernelsFor(params[0].backend);
  if (fused === true && !k) throw new Error(`optimizer: fused: true, but the ${params[0].backend.name} backend has no fused optimizer kernels`);
  if (k) return new FlatEngine(params, groupOf, groups, k, decay);
  return new LoopEngine(params, groupOf, decay);
}

