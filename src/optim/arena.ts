/**
 * The flat parameter arena: an optimizer's parameters coalesced into one storage, each a view at a
 * 64-element (256-byte) aligned offset with zero padding, and their gradients views of one flat
 * gradient storage of the same layout, so that backward accumulates straight into it (the engine
 * adds into an existing .grad in place). Optimizer state and SAM buffers are further storages of
 * the layout, allocated by name on first use.
 */
import type { Backend, Storage } from '../kernels/backend.js';
import {
  BLOCK,
  F_FLAGS,
  F_GROUP,
  F_NUMEL,
  F_OFFSET,
  F_ROWBASE,
  F_ROWLEN,
  FLAG_ACTIVE,
  FLAG_DECAY,
  FLAG_VECTOR,
  FLAG_WEIGHT,
  PARAM_FIELDS,
  type ArenaLayout,
  type ArenaParamInfo,
} from '../kernels/fused.js';
import type { DType } from '../tensor/dtype.js';
import { fmt } from '../tensor/shape.js';
import { StorageRef, Tensor } from '../tensor/tensor.js';
import { onGradAccumulated } from '../autograd/engine.js';

/** A weight for ASAM: 2 or more dims, or registered under a name containing 'weight'. */
export function isWeightParam(p: Tensor): boolean {
  const name = (p as { paramName?: string | null }).paramName;
  return p.ndim >= 2 || (typeof name === 'string' && name.includes('weight'));
}

class Layout implements ArenaLayout {
  constructor(
    readonly dtype: DType,
    readonly numel: number,
    readonly blocks: number,
    readonly groups: number,
    readonly params: ArenaParamInfo[],
    readonly rows: number,
    readonly blockParam: Storage,
    readonly paramTable: Storage,
    readonly blockParamHost: Int32Array,
  ) {}
}

export class FlatArena {
  readonly backend: Backend;
  readonly dtype: DType;
  readonly layout: Layout;
  readonly params: Tensor[];
  private readonly pRef: StorageRef;
  private readonly gRef: StorageRef;
  private readonly pViews: Storage[] = [];
  private readonly gViews: Storage[] = [];
  /** The gradient view tensor of each parameter (what p.grad is while it stays in the arena). */
  readonly gradTensors: Tensor[] = [];
  private readonly vecs = new Map<string, Storage>();
  private readonly viewTensors = new Map<string, Tensor[]>();
  private tableHost: Int32Array;
  private disposed = false;
  /**
   * Whether parameter k received a gradient since the last zeroGrads(): torch's `p.grad is not
   * None` under set_to_none, while the .grad view itself stays. Backward's in-place accumulation
   * sets it (onGradAccumulated), assigning p.grad sets it (syncGrads), zeroGrads clears it. At
   * construction the views hold the old gradients or zeros, as torch's zero-filled .grad would.
   */
  private readonly received: boolean[] = [];
  /** Per-parameter counts of updates taken (torch's state[p]['step']), one element per parameter. */
  readonly stepCounts: Storage;

  constructor(params: Tensor[], groupOf: number[], groups: number, decay: 'all' | 'weights' = 'all') {
    if (params.length === 0) throw new RangeError('optimizer: got an empty parameter list');
    const b = params[0].backend;
    const dtype = params[0].dtype;
    for (const p of params) {
      if (p.backend !== b) throw new Error(`optimizer: parameters live on different backends (${b.name} and ${p.backend.name})`);
      if (p.dtype !== dtype) throw new TypeError(`optimizer: the flat arena needs one dtype, got ${dtype} and ${p.dtype} (use fused: false, or one optimizer per dtype)`);
      if (dtype !== 'float32' && dtype !== 'float64') throw new TypeError(`optimizer: parameters must be floating, got ${dtype}`);
    }
    this.backend = b;
    this.dtype = dtype;
    this.params = params.slice();
    const infos: ArenaParamInfo[] = [];
    let off = 0;
    let rows = 0;
    for (let k = 0; k < params.length; k++) {
      const p = params[k];
      const vector = p.ndim < 2;
      const rowLen = p.size === 0 ? 0 : vector ? p.size : p.size / p.shape[0];
      const weight = isWeightParam(p);
      const flags = (weight ? FLAG_WEIGHT : 0) | (decay === 'all' || weight ? FLAG_DECAY : 0) | FLAG_ACTIVE | (vector ? FLAG_VECTOR : 0);
      infos.push({ offset: off, numel: p.size, group: groupOf[k], flags, rowLen, rowBase: rows });
      rows += rowLen > 0 ? p.size / rowLen : 0;
      off += Math.ceil(p.size / BLOCK) * BLOCK;
    }
    const numel = Math.max(off, BLOCK);
    const blocks = numel / BLOCK;
    const blockParam = new Int32Array(blocks);
    infos.forEach((info, k) => {
      for (let bl = info.offset / BLOCK; bl < (info.offset + info.numel) / BLOCK; bl++) blockParam[bl] = k;
    });
    // Blocks past the last parameter (the minimum one-block arena) belong to no parameter.
    if (off < numel) for (let bl = off / BLOCK; bl < blocks; bl++) blockParam[bl] = -1;
    this.tableHost = new Int32Array(infos.length * PARAM_FIELDS);
    this.fillTable(infos);
    this.layout = new Layout(dtype, numel, blocks, groups, infos, rows, b.upload(blockParam, 'int32'), b.upload(this.tableHost, 'int32'), blockParam);

    // Coalesce: copy each parameter in and point it at its view.
    const P = b.alloc(numel, dtype);
    const G = b.alloc(numel, dtype);
    this.pRef = new StorageRef(b, P);
    this.gRef = new StorageRef(b, G);
    this.pRef.retain();
    this.gRef.retain();
    params.forEach((p, k) => {
      const { offset, numel: n } = infos[k];
      const pv = b.view(P, offset, n);
      const gv = b.view(G, offset, n);
      this.pViews.push(pv);
      this.gViews.push(gv);
      if (n > 0) b.stridedCopy(p.storage, P, { shape: [n], srcStrides: [1], srcOffset: 0, dstStrides: [1], dstOffset: offset });
      p.rebind(new StorageRef(b, pv, this.pRef));
      const gt = Tensor.fromStorage(gv, p.shape.slice(), b, this.gRef).keep();
      this.gradTensors.push(gt);
      onGradAccumulated(gt, () => (this.received[k] = true));
      const old = p.grad;
      if (old && !old.isDisposed && n > 0) {
        if (old.size !== n) throw new RangeError(`optimizer: parameter ${k} ${fmt(p.shape)} has a gradient of ${old.size} elements`);
        b.stridedCopy(old.storage, G, { shape: [n], srcStrides: [1], srcOffset: 0, dstStrides: [1], dstOffset: offset });
        old.dispose();
      }
      // A frozen parameter (requiresGrad false) keeps grad null, so it stays inactive as in torch.
      if (p.requiresGrad || p.grad) p.grad = gt;
      this.received.push(p.grad === gt);
    });
    this.stepCounts = b.alloc(Math.max(params.length, 1), dtype);
  }

  /** The gradient view tensor of parameter k (made again if someone disposed it). */
  gradView(k: number): Tensor {
    let t = this.gradTensors[k];
    if (t.isDisposed) {
      t = Tensor.fromStorage(this.gViews[k], this.params[k].shape.slice(), this.backend, this.gRef).keep();
      // Whatever the memory holds belonged to the disposed .grad (and may be a pending zero's
      // stale values): the new view starts as zeros.
      t.storageRef.zeroPending = true;
      this.gradTensors[k] = t;
      onGradAccumulated(t, () => (this.received[k] = true));
    }
    return t;
  }

  private fillTable(infos: readonly ArenaParamInfo[]): void {
    infos.forEach((info, k) => {
      const o = k * PARAM_FIELDS;
      this.tableHost[o + F_OFFSET] = info.offset;
      this.tableHost[o + F_NUMEL] = info.numel;
      this.tableHost[o + F_GROUP] = info.group;
      this.tableHost[o + F_FLAGS] = info.flags;
      this.tableHost[o + F_ROWLEN] = info.rowLen;
      this.tableHost[o + F_ROWBASE] = info.rowBase;
    });
  }

  get P(): Storage {
    return this.pRef.storage;
  }
  get G(): Storage {
    return this.gRef.storage;
  }

  /** The arena-shaped storage called `name` (zero-filled when first asked for). */
  vec(name: string): Storage {
    if (name === 'p') return this.P;
    if (name === 'g') return this.G;
    let s = this.vecs.get(name);
    if (!s) {
      s = this.backend.alloc(this.layout.numel, this.dtype);
      this.vecs.set(name, s);
    }
    return s;
  }
  hasVec(name: string): boolean {
    return name === 'p' || name === 'g' || this.vecs.has(name);
  }
  /** Scratch storage of any size owned by the arena (row norms). */
  scratch(name: string, numel: number): Storage {
    const key = `#${name}`;
    let s = this.vecs.get(key);
    if (!s || s.numel !== numel) {
      if (s) this.backend.release(s);
      s = this.backend.alloc(Math.max(numel, 1), this.dtype);
      this.vecs.set(key, s);
    }
    return s;
  }

  /** Per-parameter view tensors of a named vector (kept; made once), for state dicts. */
  viewsOf(name: string): Tensor[] {
    let ts = this.viewTensors.get(name);
    if (!ts) {
      const base = this.vec(name);
      const ref = new StorageRef(this.backend, base);
      ref.retain(); // owned by the arena's vecs map, never released through the views
      ts = this.params.map((p, k) => Tensor.fromStorage(this.backend.view(base, this.layout.params[k].offset, p.size), p.shape.slice(), this.backend, ref).keep());
      this.viewTensors.set(name, ts);
    }
    return ts;
  }

  /**
   * Brings the gradients back into the arena before a step: a parameter whose .grad was replaced
   * (setToNone, or assigned) has it copied in; one without a gradient becomes inactive (zeroed, and
   * skipped by the kernels as torch skips grad None). Rewrites the device table when activity changed.
   */
  syncGrads(): void {
    const b = this.backend;
    let changed = false;
    this.params.forEach((p, k) => {
      const info = this.layout.params[k];
      const g = p.grad;
      const view = this.gradView(k);
      // The kernels read the flat storage: a lazily zeroed view gets its zeros now (the fill that
      // zeroGrads skipped), unless an assigned gradient is about to overwrite it.
      const pending = view.storageRef.zeroPending;
      let active = true;
      if (g === view) {
        if (pending) void view.storage;
        active = this.received[k];
      } else if (g && !g.isDisposed) {
        if (g.size !== p.size) throw new RangeError(`optimizer: parameter ${k} ${fmt(p.shape)} has a gradient of shape ${fmt(g.shape)}`);
        if (g.backend !== b) throw new Error(`optimizer: parameter ${k}'s gradient lives on ${g.backend.name}, the parameter on ${b.name}`);
        const src = g.dtype === this.dtype ? g : castTo(g, this.dtype);
        view.overwriteStorage();
        if (info.numel > 0) b.stridedCopy(src.storage, this.G, { shape: [info.numel], srcStrides: [1], srcOffset: 0, dstStrides: [1], dstOffset: info.offset });
        if (src !== g) src.dispose();
        g.dispose();
        p.grad = view;
        this.received[k] = true;
      } else {
        active = false;
        if (pending) void view.storage;
        else if (info.flags & FLAG_ACTIVE && info.numel > 0) b.fill(this.gViews[k], 0);
      }
      const flags = active ? info.flags | FLAG_ACTIVE : info.flags & ~FLAG_ACTIVE;
      if (flags !== info.flags) {
        info.flags = flags;
        changed = true;
      }
    });
    if (changed) {
      this.fillTable(this.layout.params);
      b.write(this.layout.paramTable, this.tableHost);
    }
  }

  /**
   * Zeroes the flat gradient lazily: each .grad view is marked as zeros (StorageRef.zeroPending)
   * and not written, so that backward writes a parameter's first gradient straight into its view
   * (no fill, no add); a view still marked when it is read, or when syncGrads hands the flat
   * storage to the kernels, is filled then. By default (setToNone undefined) the .grad views stay
   * but count as torch's None until backward accumulates into them: the next update leaves a
   * parameter without a new gradient alone. setToNone: true also clears the .grad fields; false
   * keeps them as gradients of zeros that the update uses (torch's set_to_none=False).
   */
  zeroGrads(setToNone?: boolean): void {
    this.params.forEach((p, k) => {
      const view = this.gradView(k);
      view.storageRef.zeroPending = true;
      this.received[k] = setToNone === false && (p.requiresGrad || !!p.grad);
      if (setToNone) {
        if (p.grad && p.grad !== view) p.grad.dispose();
        p.grad = null;
      } else if (p.grad !== view && (p.requiresGrad || p.grad)) {
        if (p.grad && !p.grad.isDisposed) p.grad.dispose();
        p.grad = view;
      }
    });
  }

  /** Whether every parameter still lives in this arena. */
  owns(p: Tensor, k: number): boolean {
    return !p.isDisposed && p.storage === this.pViews[k];
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const [, s] of this.vecs) this.backend.release(s);
    this.vecs.clear();
    this.viewTensors.clear();
    this.backend.release(this.stepCounts);
    this.backend.release(this.layout.blockParam);
    this.backend.release(this.layout.paramTable);
    this.pRef.release();
    this.gRef.release();
  }
}

function castTo(t: Tensor, dtype: DType): Tensor {
  const out = Tensor.empty(t.shape.slice(), dtype, t.backend);
  t.backend.cast(t.storage, out.storage);
  return out;
}
