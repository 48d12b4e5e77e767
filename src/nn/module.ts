/**
 * Module and Parameter: the PyTorch containers. A Module owns named parameters, buffers and child
 * modules; `namedParameters()` walks them with dotted names (`layers.0.weight`), and
 * `stateDict()`/`loadStateDict()` use the same names, so a state dict written by PyTorch (in its
 * layouts and names) loads into the matching flatgrad model.
 */
import type { DType, TypedArray } from '../tensor/dtype.js';
import { convertArray, isFloat } from '../tensor/dtype.js';
import { fmt, shapesEqual } from '../tensor/shape.js';
import { Tensor, type NestedArray } from '../tensor/tensor.js';
import { noGrad } from '../tensor/graph.js';
import { cast } from '../tensor/ops/elementwise.js';
import { contiguousStrides } from '../tensor/shape.js';

/**
 * A tensor that a Module registers as learnable: requiresGrad, never disposed by tidy(). It shares
 * the storage of the tensor it was made from (which may then be disposed).
 */
export class Parameter extends Tensor {
  /**
   * The attribute name it was registered under in its module ('weight', 'bias', 'in_proj_weight'...),
   * used by ASAM to tell weights from biases. null until a module registers it.
   */
  paramName: string | null = null;

  constructor(data: Tensor, requiresGrad = true) {
    super(data.storageRef, data.shape.slice(), data.dtype);
    if (requiresGrad) this.requiresGrad_();
    this.keep();
  }

  override toString(): string {
    return `Parameter(${this.dtype} ${fmt(this.shape)})`;
  }
}

/** Makes a Parameter from a freshly created tensor and disposes the temporary. */
export function param(t: Tensor, requiresGrad = true): Parameter {
  const p = new Parameter(t, requiresGrad);
  if (t !== p) t.dispose();
  return p;
}

/** Makes a kept buffer (a non-learnable tensor owned by a module). */
export function buffer(t: Tensor): Tensor {
  return t.keep();
}

/** Options every layer with parameters accepts. */
export interface ModuleOptions {
  /** Parameter dtype (default: the global default dtype); 'float64' needs the CPU backend. */
  dtype?: DType;
}

export type StateDict = Record<string, Tensor>;
export type StateDictInput = Record<string, Tensor | TypedArray | NestedArray>;

export interface LoadStateDictResult {
  missingKeys: string[];
  unexpectedKeys: string[];
}

/** Overwrites `dst`'s values (in place, keeping its storage and identity) from `src`. */
export function copyInto(dst: Tensor, src: Tensor | TypedArray | NestedArray, what = 'copyInto'): void {
  if (src instanceof Tensor) {
    if (!shapesEqual(src.shape, dst.shape)) throw new RangeError(`${what}: shape ${fmt(src.shape)} does not match ${fmt(dst.shape)}`);
    const srcT = src;
    if (srcT.backend === dst.backend) {
      noGrad(() => {
        const s = srcT.dtype === dst.dtype ? srcT : cast(srcT, dst.dtype);
        if (dst.size > 0) {
          const st = contiguousStrides(dst.shape);
          dst.backend.stridedCopy(s.storage, dst.storage, { shape: dst.shape, srcStrides: st, srcOffset: 0, dstStrides: st, dstOffset: 0 });
        }
        if (s !== srcT) s.dispose();
      });
      return;
    }
    if (!src.backend.readSync) throw new Error(`${what}: the source lives on ${src.backend.name}, which reads asynchronously; copy it to the host first (await t.data())`);
    src = src.backend.readSync(src.storage);
  }
  const host: TypedArray = ArrayBuffer.isView(src) ? (src as TypedArray) : convertArray(flattenNested(src as NestedArray), dst.dtype);
  if (host.length !== dst.size) throw new RangeError(`${what}: ${host.length} values for a tensor of shape ${fmt(dst.shape)}`);
  const conv = dst.dtype === 'float32' && host instanceof Float32Array ? host : dst.dtype === 'float64' && host instanceof Float64Array ? host : convertArray(host, dst.dtype);
  dst.backend.write(dst.storage, conv);
}

export abstract class Module {
  training = true;
  private readonly _params = new Map<string, Parameter | null>();
  private readonly _buffers = new Map<string, Tensor | null>();
  private readonly _modules = new Map<string, Module | null>();

  /** Registers (or replaces) a parameter under `name` and returns it. */
  registerParameter<P extends Parameter | null>(name: string, p: P): P {
    checkName(name);
    if (p) p.paramName ??= name;
    this._params.set(name, p);
    return p;
  }
  registerBuffer<T extends Tensor | null>(name: string, t: T): T {
    checkName(name);
    if (t) t.keep();
    this._buffers.set(name, t);
    return t;
  }
  registerModule<M extends Module | null>(name: string, m: M): M {
    checkName(name);
    this._modules.set(name, m);
    return m;
  }
  /** The registered parameter, buffer or child called `name` (undefined when none). */
  getRegistered(name: string): Parameter | Tensor | Module | null | undefined {
    if (this._params.has(name)) return this._params.get(name);
    if (this._buffers.has(name)) return this._buffers.get(name);
    return this._modules.get(name);
  }
  /** Replaces a registered buffer's tensor (running statistics are updated this way). */
  protected setBuffer(name: string, t: Tensor): void {
    const old = this._buffers.get(name);
    if (old === undefined) throw new Error(`setBuffer: no buffer named ${name}`);
    if (old && old !== t) {
      // Keep the identity of the buffer tensor: point it at the new storage.
      old.rebind(t.storageRef);
      if (!t.kept) t.dispose();
    } else this._buffers.set(name, t.keep());
  }

  abstract forward(...args: never[]): unknown;

  *namedChildren(): IterableIterator<[string, Module]> {
    for (const [k, m] of this._modules) if (m) yield [k, m];
  }
  children(): Module[] {
    return [...this.namedChildren()].map(([, m]) => m);
  }
  /** This module and every descendant, with dotted names ('' for this one); each module once. */
  namedModules(prefix = '', seen = new Set<Module>()): [string, Module][] {
    if (seen.has(this)) return [];
    seen.add(this);
    const out: [string, Module][] = [[prefix, this]];
    for (const [k, m] of this.namedChildren()) out.push(...m.namedModules(prefix ? `${prefix}.${k}` : k, seen));
    return out;
  }
  modules(): Module[] {
    return this.namedModules().map(([, m]) => m);
  }
  /** Parameters with dotted names, in registration order; a parameter shared by two modules appears once. */
  namedParameters(prefix = '', recurse = true): [string, Parameter][] {
    const out: [string, Parameter][] = [];
    const seen = new Set<Tensor>();
    const mods: [string, Module][] = recurse ? this.namedModules(prefix) : [[prefix, this]];
    for (const [mp, m] of mods) {
      for (const [k, p] of m._params) {
        if (!p || seen.has(p)) continue;
        seen.add(p);
        out.push([mp ? `${mp}.${k}` : k, p]);
      }
    }
    return out;
  }
  parameters(recurse = true): Parameter[] {
    return this.namedParameters('', recurse).map(([, p]) => p);
  }
  namedBuffers(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [mp, m] of this.namedModules(prefix)) {
      for (const [k, b] of m._buffers) if (b) out.push([mp ? `${mp}.${k}` : k, b]);
    }
    return out;
  }
  buffers(): Tensor[] {
    return this.namedBuffers().map(([, b]) => b);
  }
  /** Number of scalar parameters. */
  numParameters(): number {
    return this.parameters().reduce((a, p) => a + p.size, 0);
  }

  train(mode = true): this {
    for (const m of this.modules()) m.training = mode;
    return this;
  }
  eval(): this {
    return this.train(false);
  }
  apply(fn: (m: Module) => void): this {
    for (const m of this.modules()) fn(m);
    return this;
  }
  /**
   * Zeroes every parameter's gradient in place (a gradient that is a view into an optimizer's flat
   * arena stays one), or clears the .grad fields with setToNone: true (torch 2's default).
   */
  zeroGrad(opts: { setToNone?: boolean } = {}): void {
    for (const p of this.parameters()) {
      if (!p.grad) continue;
      if (opts.setToNone ?? false) {
        p.grad.dispose();
        p.grad = null;
      } else if (!p.grad.isDisposed) p.grad.backend.fill(p.grad.storage, 0);
    }
  }

  /**
   * Parameters and buffers by dotted name. The values are the module's own tensors (no copy):
   * treat them as read-only, or clone them to keep a snapshot.
   */
  stateDict(): StateDict {
    const out: StateDict = {};
    for (const [mp, m] of this.namedModules()) {
      for (const [k, p] of m._params) if (p) out[mp ? `${mp}.${k}` : k] ??= p;
      for (const [k, b] of m._buffers) if (b) out[mp ? `${mp}.${k}` : k] ??= b;
    }
    return out;
  }

  /**
   * Copies values into the existing parameters and buffers (their storage and identity stay, so an
   * optimizer's flat arena keeps them). Values may be tensors on any backend (a synchronous one
   * when it differs), typed arrays or nested arrays; dtypes are converted. With `strict` (default),
   * missing or unexpected keys are an error listing them.
   */
  loadStateDict(sd: StateDictInput, opts: { strict?: boolean } = {}): LoadStateDictResult {
    const strict = opts.strict ?? true;
    const own = this.stateDict();
    const missingKeys = Object.keys(own).filter((k) => !(k in sd));
    const unexpectedKeys = Object.keys(sd).filter((k) => !(k in own));
    if (strict && (missingKeys.length || unexpectedKeys.length)) {
      const parts: string[] = [];
      if (missingKeys.length) parts.push(`missing keys: ${missingKeys.join(', ')}`);
      if (unexpectedKeys.length) parts.push(`unexpected keys: ${unexpectedKeys.join(', ')}`);
      throw new Error(`loadStateDict: ${parts.join('; ')}`);
    }
    for (const [k, dst] of Object.entries(own)) {
      if (!(k in sd)) continue;
      const src = sd[k];
      if (src instanceof Tensor && !shapesEqual(src.shape, dst.shape)) {
        throw new RangeError(`loadStateDict: ${k} has shape ${fmt(src.shape)} in the state dict but ${fmt(dst.shape)} in the model`);
      }
      if (!isFloat(dst.dtype) && src instanceof Tensor && isFloat(src.dtype)) {
        throw new TypeError(`loadStateDict: ${k} is ${dst.dtype} in the model but ${src.dtype} in the state dict`);
      }
      copyInto(dst, src, `loadStateDict(${k})`);
    }
    return { missingKeys, unexpectedKeys };
  }

  toString(): string {
    const name = this.constructor.name;
    const kids = [...this.namedChildren()];
    const extra = this.extraRepr();
    if (kids.length === 0) return `${name}(${extra})`;
    const lines = kids.map(([k, m]) => `  (${k}): ${m.toString().split('\n').join('\n  ')}`);
    return `${name}(${extra}\n${lines.join('\n')}\n)`;
  }
  protected extraRepr(): string {
    return '';
  }
}

function flattenNested(x: NestedArray, out: number[] = []): number[] {
  if (Array.isArray(x)) for (const v of x) flattenNested(v, out);
  else out.push(typeof x === 'boolean' ? (x ? 1 : 0) : x);
  return out;
}

function checkName(name: string): void {
  if (typeof name !== 'string' || name === '' || name.includes('.')) throw new RangeError(`Module: invalid name ${JSON.stringify(name)} (non-empty, no dots)`);
}

// ---- running statistics context ----

let frozenDepth = 0;

/**
 * True while an optimizer holds the weights perturbed (between a sharpness-aware first and second
 * step) or inside `withFrozenRunningStats`: BatchNorm layers then normalize with batch statistics
 * in training mode but leave their running statistics alone.
 */
export function runningStatsFrozen(): boolean {
  return frozenDepth > 0;
}

/** Runs fn with BatchNorm running-statistic updates suppressed. */
export function withFrozenRunningStats<T>(fn: () => T): T {
  frozenDepth++;
  try {
    return fn();
  } finally {
    frozenDepth--;
  }
}

/** Suppresses running-statistic updates until the matching `unfreezeRunningStats()` (used by SAM's first/second step). */
export function freezeRunningStats(): void {
  frozenDepth++;
}
export function unfreezeRunningStats(): void {
  if (frozenDepth > 0) frozenDepth--;
}
