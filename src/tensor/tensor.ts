/**
 * Tensor: a shape, a dtype and a reference-counted storage on one backend, plus the autograd
 * fields. Data is always contiguous and row-major; ops that change the layout copy (see
 * src/kernels/backend.ts). Every op is a function in ./ops and a method here.
 */
import type { Backend, Storage } from '../kernels/backend.js';
import { getBackend } from '../kernels/registry.js';
import type { DType, TypedArray } from './dtype.js';
import { hooks, type Node } from './graph.js';
import { fmt, numel, type Shape } from './shape.js';
import * as E from './ops/elementwise.js';
import * as R from './ops/reduce.js';
import * as S from './ops/shape.js';
import * as L from './ops/linalg.js';
import * as N from './ops/nn.js';
import * as O from './ops/sort.js';
import * as X from './ops/indexing.js';
import { captureHooks } from '../compile/hooks.js';

// `[Symbol.dispose]` below needs Symbol.dispose in the consumer's types, which only lib
// esnext.disposable (or @types/node) declares. Declared here the way @types/node does, so that the
// published tensor.d.ts compiles with the default libs of TypeScript 5.x and later, and merges
// with the lib's own declaration where the consumer has it.
declare global {
  interface SymbolConstructor {
    readonly dispose: unique symbol;
  }
}

/** Shared ownership of one backend storage: reshapes and detaches share it. */
export class StorageRef {
  refs = 0;
  /**
   * Lazy zeroing: the contents are logically zero but the memory was not written (an optimizer's
   * zeroGrad marks its gradient views so instead of filling them). Tensor.storage fills it on first
   * use; a kernel that overwrites every element takes it through Tensor.overwriteStorage() and
   * skips the fill (backward writing a parameter's first gradient straight into its view).
   */
  zeroPending = false;
  constructor(
    readonly backend: Backend,
    readonly storage: Storage,
    /** For a view into another storage (a parameter inside the flat arena): keeps the base alive. */
    readonly base: StorageRef | null = null,
  ) {
    if (base) base.refs++;
  }
  retain(): void {
    this.refs++;
  }
  release(): void {
    if (--this.refs > 0) return;
    this.backend.release(this.storage);
    this.base?.release();
  }
}

type Scope = Set<Tensor>;
const scopes: Scope[] = [];
let nextId = 1;

const leakReporter =
  typeof FinalizationRegistry !== 'undefined'
    ? new FinalizationRegistry<[shape: readonly number[], dtype: DType, backend: string]>(([shape, dtype, backend]) => {
        leaks.count++;
        if (leaks.report) leaks.report(`flatgrad: a ${dtype} tensor of shape ${fmt(shape)} on ${backend} was garbage-collected without dispose(); its memory leaked until now`);
      })
    : null;

/** Registers a live tensor that no tidy scope holds with the leak reporter. */
const watch = (t: Tensor) => {
  // The shape is formatted only for a report: formatting it here cost every tensor of an eager
  // step about half of its registration's time (bench/eager-host.ts).
  leakReporter?.register(t, [t.shape, t.dtype, t.backend.name], t);
};

/** Counts tensors collected without dispose(); set `report` to log each one. */
export const leaks: { count: number; report: ((msg: string) => void) | null } = { count: 0, report: null };

export type NestedArray = number | boolean | NestedArray[];

export class Tensor {
  readonly id = nextId++;
  shape: number[];
  dtype: DType;
  requiresGrad = false;
  grad: Tensor | null = null;
  gradFn: Node | null = null;
  /** A copy of the host data this tensor was made from, kept for small int tensors so that label and index checks cost no readback. */
  hostData: TypedArray | null = null;
  /** Never disposed by tidy(). */
  kept = false;
  private ref: StorageRef | null;

  constructor(ref: StorageRef, shape: number[], dtype: DType) {
    if (ref.storage.dtype !== dtype) throw new Error(`internal: storage dtype ${ref.storage.dtype} != tensor dtype ${dtype}`);
    if (ref.storage.numel !== numel(shape)) throw new Error(`internal: storage of ${ref.storage.numel} elements for shape ${fmt(shape)}`);
    this.ref = ref;
    ref.retain();
    this.shape = shape;
    this.dtype = dtype;
    // A tensor made inside tidy() is held by its scope until the scope disposes it, so it is
    // registered with the leak reporter only if it leaves the scopes alive (keep(), or returned
    // from the outermost tidy): registering and unregistering every tensor of an eager step was
    // about a quarter of the step's host time (bench/eager-host.ts).
    scopes[scopes.length - 1]?.add(this) ?? watch(this);
  }

  /** A new tensor on `backend` (default: the active one) owning freshly allocated zeroed storage. */
  static empty(shape: number[], dtype: DType, backend: Backend = getBackend()): Tensor {
    return new Tensor(new StorageRef(backend, backend.alloc(numel(shape), dtype)), shape, dtype);
  }

  /** Like empty, but not zero-filled where the backend can skip it: only for an output the next kernel writes in full. */
  static uninit(shape: number[], dtype: DType, backend: Backend = getBackend()): Tensor {
    const n = numel(shape);
    return new Tensor(new StorageRef(backend, backend.allocUninit ? backend.allocUninit(n, dtype) : backend.alloc(n, dtype)), shape, dtype);
  }

  static fromStorage(storage: Storage, shape: number[], backend: Backend, base?: StorageRef | null): Tensor {
    return new Tensor(new StorageRef(backend, storage, base), shape, storage.dtype);
  }

  get size(): number {
    return numel(this.shape);
  }
  get ndim(): number {
    return this.shape.length;
  }
  get isDisposed(): boolean {
    return this.ref === null;
  }
  get backend(): Backend {
    return this.storageRef.backend;
  }
  /** The storage, for op front-ends and backends. Throws on a disposed tensor. */
  get storage(): Storage {
    const r = this.storageRef;
    if (r.zeroPending) {
      r.zeroPending = false;
      if (r.storage.numel > 0) r.backend.fill(r.storage, 0);
    }
    return r.storage;
  }
  /**
   * The storage for a kernel that writes every element before anything reads it: a pending lazy
   * zero (StorageRef.zeroPending) is dropped instead of filled.
   */
  overwriteStorage(): Storage {
    const r = this.storageRef;
    r.zeroPending = false;
    return r.storage;
  }
  get storageRef(): StorageRef {
    if (!this.ref) {
      throw new Error(
        `tensor #${this.id} (${this.dtype} ${fmt(this.shape)}) was disposed and cannot be used` +
          (this.gradFn || this.requiresGrad ? ' (a tensor saved for backward was disposed: call backward() inside the same tidy() as the forward pass)' : ''),
      );
    }
    return this.ref;
  }

  /** A tensor sharing this one's storage, with another shape of the same size (no copy). */
  shareWithShape(shape: number[]): Tensor {
    return new Tensor(this.storageRef, shape, this.dtype);
  }

  /** Points this tensor at another storage of the same size (used to move parameters into the flat arena). */
  rebind(ref: StorageRef): void {
    if (ref.storage.numel !== this.size || ref.storage.dtype !== this.dtype) {
      throw new Error(`rebind: storage of ${ref.storage.numel} ${ref.storage.dtype} for a ${this.dtype} tensor of ${this.size}`);
    }
    const old = this.storageRef;
    ref.retain();
    this.ref = ref;
    // Captured steps (src/compile) follow state that moves to new storage (BatchNorm's statistics).
    if (old.storage !== ref.storage) captureHooks.rebound?.(old.storage, ref.storage);
    old.release();
  }

  dispose(): void {
    if (!this.ref) return;
    const r = this.ref;
    this.ref = null;
    // In a scope (at most one): never registered with the leak reporter (see the constructor).
    if (!scopes.some((s) => s.delete(this))) leakReporter?.unregister(this);
    r.release();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
  /** Exempts this tensor from disposal by enclosing tidy() scopes. */
  keep(): this {
    this.kept = true;
    for (const s of scopes) if (s.delete(this)) watch(this);
    return this;
  }

  // ---- readback ----
  async data(): Promise<TypedArray> {
    return this.backend.read(this.storage);
  }
  /** Synchronous read, on backends whose memory is on the host (cpu, wasm). */
  dataSync(): TypedArray {
    const b = this.backend;
    if (!b.readSync) throw new Error(`dataSync: the ${b.name} backend reads asynchronously; use await tensor.data()`);
    return b.readSync(this.storage);
  }
  async item(): Promise<number> {
    if (this.size !== 1) throw new RangeError(`item: tensor of shape ${fmt(this.shape)} has ${this.size} elements, not 1`);
    return (await this.data())[0];
  }
  itemSync(): number {
    if (this.size !== 1) throw new RangeError(`itemSync: tensor of shape ${fmt(this.shape)} has ${this.size} elements, not 1`);
    return this.dataSync()[0];
  }
  async array(): Promise<NestedArray> {
    return toNested(await this.data(), this.shape, this.dtype);
  }
  arraySync(): NestedArray {
    return toNested(this.dataSync(), this.shape, this.dtype);
  }
  toString(): string {
    return `Tensor(${this.dtype} ${fmt(this.shape)}${this.requiresGrad ? ', requiresGrad' : ''})`;
  }

  // ---- autograd ----
  backward(grad?: Tensor, opts?: { retainGraph?: boolean; createGraph?: boolean }): void {
    if (!hooks.backward) throw new Error('backward: the autograd module is not loaded (import from the flatgrad package entry)');
    hooks.backward(this, grad, opts);
  }
  /** A tensor sharing this storage, cut from the graph. */
  detach(): Tensor {
    return this.shareWithShape(this.shape.slice());
  }
  requiresGrad_(flag = true): this {
    if (flag && this.dtype !== 'float32' && this.dtype !== 'float64') {
      throw new TypeError(`requiresGrad: only floating tensors can require gradients, this one is ${this.dtype}`);
    }
    this.requiresGrad = flag;
    return this;
  }

  // ---- elementwise ----
  add(o: Tensor | number): Tensor { return E.add(this, o); }
  sub(o: Tensor | number): Tensor { return E.sub(this, o); }
  mul(o: Tensor | number): Tensor { return E.mul(this, o); }
  div(o: Tensor | number): Tensor { return E.div(this, o); }
  pow(o: Tensor | number): Tensor { return E.pow(this, o); }
  maximum(o: Tensor | number): Tensor { return E.maximum(this, o); }
  minimum(o: Tensor | number): Tensor { return E.minimum(this, o); }
  eq(o: Tensor | number): Tensor { return E.eq(this, o); }
  ne(o: Tensor | number): Tensor { return E.ne(this, o); }
  lt(o: Tensor | number): Tensor { return E.lt(this, o); }
  le(o: Tensor | number): Tensor { return E.le(this, o); }
  gt(o: Tensor | number): Tensor { return E.gt(this, o); }
  ge(o: Tensor | number): Tensor { return E.ge(this, o); }
  neg(): Tensor { return E.neg(this); }
  exp(): Tensor { return E.exp(this); }
  log(): Tensor { return E.log(this); }
  sqrt(): Tensor { return E.sqrt(this); }
  rsqrt(): Tensor { return E.rsqrt(this); }
  abs(): Tensor { return E.abs(this); }
  sign(): Tensor { return E.sign(this); }
  square(): Tensor { return E.square(this); }
  reciprocal(): Tensor { return E.reciprocal(this); }
  relu(): Tensor { return E.relu(this); }
  gelu(approximate: 'none' | 'tanh' = 'none'): Tensor { return E.gelu(this, approximate); }
  tanh(): Tensor { return E.tanh(this); }
  sigmoid(): Tensor { return E.sigmoid(this); }
  softplus(): Tensor { return E.softplus(this); }
  sin(): Tensor { return E.sin(this); }
  cos(): Tensor { return E.cos(this); }
  erf(): Tensor { return E.erf(this); }
  expm1(): Tensor { return E.expm1(this); }
  log1p(): Tensor { return E.log1p(this); }
  floor(): Tensor { return E.floor(this); }
  ceil(): Tensor { return E.ceil(this); }
  round(): Tensor { return E.round(this); }
  isnan(): Tensor { return E.isnan(this); }
  isinf(): Tensor { return E.isinf(this); }
  isfinite(): Tensor { return E.isfinite(this); }
  logicalNot(): Tensor { return E.logicalNot(this); }
  logicalAnd(o: Tensor | number): Tensor { return E.logicalAnd(this, o); }
  logicalOr(o: Tensor | number): Tensor { return E.logicalOr(this, o); }
  logicalXor(o: Tensor | number): Tensor { return E.logicalXor(this, o); }
  leakyRelu(negativeSlope = 0.01): Tensor { return E.leakyRelu(this, negativeSlope); }
  elu(alpha = 1): Tensor { return E.elu(this, alpha); }
  silu(): Tensor { return E.silu(this); }
  clamp(min?: number | null, max?: number | null): Tensor { return E.clamp(this, min, max); }
  where(cond: Tensor, other: Tensor | number): Tensor { return E.where(cond, this, other); }
  to(dtype: DType): Tensor { return E.cast(this, dtype); }
  float(): Tensor { return E.cast(this, 'float32'); }
  double(): Tensor { return E.cast(this, 'float64'); }
  int(): Tensor { return E.cast(this, 'int32'); }
  bool(): Tensor { return E.cast(this, 'bool'); }
  clone(): Tensor { return S.copy(this); }

  // ---- reductions ----
  sum(dim?: number | number[] | null, keepdim = false): Tensor { return R.sum(this, dim, keepdim); }
  mean(dim?: number | number[] | null, keepdim = false): Tensor { return R.mean(this, dim, keepdim); }
  max(dim?: number | number[] | null, keepdim = false): Tensor { return R.max(this, dim, keepdim); }
  min(dim?: number | number[] | null, keepdim = false): Tensor { return R.min(this, dim, keepdim); }
  argmax(dim?: number | null, keepdim = false): Tensor { return R.argmax(this, dim, keepdim); }
  argmin(dim?: number | null, keepdim = false): Tensor { return R.argmin(this, dim, keepdim); }
  var(dim?: number | number[] | null, opts?: { correction?: number; keepdim?: boolean }): Tensor { return R.variance(this, dim, opts); }
  logsumexp(dim: number | number[], keepdim = false): Tensor { return R.logsumexp(this, dim, keepdim); }
  softmax(dim: number): Tensor { return R.softmax(this, dim); }
  logSoftmax(dim: number): Tensor { return R.logSoftmax(this, dim); }
  norm(): Tensor { return R.norm(this); }
  prod(dim?: number | number[] | null, keepdim = false): Tensor { return R.prod(this, dim, keepdim); }
  std(dim?: number | number[] | null, opts?: { correction?: number; keepdim?: boolean }): Tensor { return R.std(this, dim, opts); }
  any(dim?: number | number[] | null, keepdim = false): Tensor { return R.any(this, dim, keepdim); }
  all(dim?: number | number[] | null, keepdim = false): Tensor { return R.all(this, dim, keepdim); }
  cumsum(dim: number): Tensor { return R.cumsum(this, dim); }
  /** torch's x.max(dim): values and indices (see maxWithIndices; max(dims) is the values-only reduction). */
  maxWithIndices(dim: number, keepdim = false): O.ValuesIndices { return O.maxWithIndices(this, dim, keepdim); }
  minWithIndices(dim: number, keepdim = false): O.ValuesIndices { return O.minWithIndices(this, dim, keepdim); }
  sort(dim = -1, descending = false): O.ValuesIndices { return O.sort(this, dim, descending); }
  argsort(dim = -1, descending = false): Tensor { return O.argsort(this, dim, descending); }
  topk(k: number, dim = -1, largest = true, sorted = true): O.ValuesIndices { return O.topk(this, k, dim, largest, sorted); }

  // ---- shape ----
  reshape(...shape: number[] | [number[]]): Tensor { return S.reshape(this, S.shapeArg(shape)); }
  view(...shape: number[] | [number[]]): Tensor { return S.reshape(this, S.shapeArg(shape)); }
  flatten(startDim = 0, endDim = -1): Tensor { return S.flatten(this, startDim, endDim); }
  squeeze(dim?: number): Tensor { return S.squeeze(this, dim); }
  unsqueeze(dim: number): Tensor { return S.unsqueeze(this, dim); }
  transpose(dim0: number, dim1: number): Tensor { return S.transpose(this, dim0, dim1); }
  get T(): Tensor { return S.transpose(this, -2, -1); }
  permute(...dims: number[] | [number[]]): Tensor { return S.permute(this, S.shapeArg(dims)); }
  expand(...shape: number[] | [number[]]): Tensor { return S.expand(this, S.shapeArg(shape)); }
  broadcastTo(shape: Shape): Tensor { return S.broadcastTo(this, shape); }
  slice(dim: number, start?: number | null, end?: number | null, step = 1): Tensor { return S.slice(this, dim, start, end, step); }
  narrow(dim: number, start: number, length: number): Tensor { return S.narrow(this, dim, start, length); }
  pad(pads: number[], value = 0): Tensor { return S.pad(this, pads, value); }
  gather(dim: number, index: Tensor): Tensor { return N.gather(this, dim, index); }
  indexSelect(dim: number, index: Tensor): Tensor { return N.indexSelect(this, dim, index); }
  flip(...dims: number[] | [number[]]): Tensor { return S.flip(this, S.shapeArg(dims)); }
  split(sizeOrSections: number | number[], dim = 0): Tensor[] { return S.split(this, sizeOrSections, dim); }
  chunk(chunks: number, dim = 0): Tensor[] { return S.chunk(this, chunks, dim); }
  scatterAdd(dim: number, index: Tensor, src: Tensor): Tensor { return X.scatterAdd(this, dim, index, src); }
  indexAdd(dim: number, index: Tensor, source: Tensor, alpha = 1): Tensor { return X.indexAdd(this, dim, index, source, alpha); }
  maskedFill(mask: Tensor, value: number | Tensor): Tensor { return X.maskedFill(this, mask, value); }

  // ---- linear algebra and nn ----
  matmul(o: Tensor): Tensor { return L.matmul(this, o); }
  bmm(o: Tensor): Tensor { return L.bmm(this, o); }
  outer(o: Tensor): Tensor { return L.outer(this, o); }
  tril(diagonal = 0): Tensor { return L.tril(this, diagonal); }
  triu(diagonal = 0): Tensor { return L.triu(this, diagonal); }
}

function toNested(data: TypedArray, shape: readonly number[], dtype: DType): NestedArray {
  const conv = dtype === 'bool' ? (v: number) => v !== 0 : (v: number) => v;
  if (shape.length === 0) return conv(data[0]);
  const rec = (dim: number, off: number): NestedArray => {
    const n = shape[dim];
    const stride = shape.slice(dim + 1).reduce((a, b) => a * b, 1);
    const out: NestedArray[] = [];
    for (let i = 0; i < n; i++) out.push(dim === shape.length - 1 ? conv(data[off + i]) : rec(dim + 1, off + i * stride));
    return out;
  };
  return rec(0, 0);
}

// ---- memory scopes ----

type TensorContainer = Tensor | TensorContainer[] | { [k: string]: TensorContainer } | number | string | boolean | null | undefined | void;

function collect(x: unknown, into: Set<Tensor>): void {
  if (x instanceof Tensor) into.add(x);
  else if (Array.isArray(x)) for (const v of x) collect(v, into);
  else if (x && typeof x === 'object' && Object.getPrototypeOf(x) === Object.prototype) for (const v of Object.values(x)) collect(v, into);
}

/**
 * Runs fn synchronously and disposes every tensor it created except those it returns (in an
 * array or plain object too) and those marked with keep(). Returned tensors move to the enclosing
 * scope. Use it around a training step: forward, backward and the optimizer step all inside.
 */
export function tidy<T extends TensorContainer>(fn: () => T): T {
  const scope: Scope = new Set();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
    if (result && typeof (result as { then?: unknown }).then === 'function') {
      throw new TypeError('tidy: the function returned a Promise; tidy scopes are synchronous (await outside the tidy)');
    }
  } catch (e) {
    // Disposed while the scope is still open, so that dispose() finds them in it (unregistered).
    for (const t of scope) t.dispose();
    scopes.pop();
    throw e;
  }
  const survivors = new Set<Tensor>();
  collect(result, survivors);
  for (const t of scope) if (!survivors.has(t)) t.dispose();
  scopes.pop();
  // What is left are the survivors (dispose() took the rest out of the scope). A tensor is in one
  // scope at a time and never registered while in one: a survivor moves to the parent scope, or
  // out of all scopes into the leak reporter's watch.
  const parent = scopes[scopes.length - 1];
  for (const t of scope) parent?.add(t) ?? watch(t);
  return result;
}

/** Exempts a tensor (or several) from disposal by tidy(). */
export function keep<T extends Tensor | Tensor[]>(t: T): T {
  if (Array.isArray(t)) t.forEach((x) => x.keep());
  else t.keep();
  return t;
}

export function dispose(x: TensorContainer): void {
  const all = new Set<Tensor>();
  collect(x, all);
  for (const t of all) t.dispose();
}
