/**
 * Tracing: runs a step eagerly once while a recording layer sits at the Backend boundary. The
 * Backend contract (src/kernels/backend.ts) plus the fused arena kernels (src/kernels/fused.ts) are
 * everything a step can do to a device, so the list of calls they receive, with their storages
 * and layouts, is the whole step as far as the device is concerned.
 *
 * The layer shadows the methods of the one backend instance (and of its fused-kernel object) with
 * own properties for the duration of the trace, and deletes them afterwards: no edit to any
 * backend, and nothing left behind. Calls a kernel makes to its own backend while running (scratch
 * buffers, reference fallbacks) are not recorded: only the outermost call is part of the step.
 */
import type { AttentionLayout, Backend, Storage, StridedCopyLayout } from '../kernels/backend.js';
import { fusedKernelsFor } from '../kernels/fused.js';
import { generator } from '../tensor/random.js';
import { captureHooks } from './hooks.js';

/** A storage placeholder in a recorded argument list. */
export interface SlotRef {
  $s: number;
}
/** Whether a recorded argument is a storage placeholder, and its slot. */
export const isSlot = (x: unknown): x is SlotRef => typeof x === 'object' && x !== null && '$s' in x;
export const slotOf = (x: unknown): number => (x as SlotRef).$s;
/** A random key placeholder: part 0 or 1 of the generator draw number `$k` of this trace. */
export interface KeyRef {
  $k: number;
  part: 0 | 1;
}
/** A host value placeholder (captureHooks.hostValue): filled with `hostValues[$h].get()` on each replay. */
export interface HostRef {
  $h: number;
}

export type StorageOrigin =
  /** Existed before the step (parameters, arena, optimizer state, constants): used as is. */
  | 'pre'
  /** One of the compiled function's tensor arguments. */
  | 'input'
  /** Made during the step. */
  | 'made';

export interface StorageRecord {
  id: number;
  storage: Storage;
  origin: StorageOrigin;
  inputIndex: number;
  numel: number;
  dtype: Storage['dtype'];
  /** For a view made during the step: what it views. */
  viewOf: { base: number; offset: number } | null;
  released: boolean;
  /** Index of the first and last call that touched it (through a view too); -1 when none. */
  firstUse: number;
  lastUse: number;
  /** Whether the first call that touched it wrote every element without reading it. */
  firstUseWritesAll: boolean;
}

/** One recorded device operation. Memory events keep their place in the order, kernels have args. */
export type TraceEvent =
  | { kind: 'call'; target: 'backend' | 'fused' | 'extern'; method: string; args: unknown[]; fn?: (...a: unknown[]) => unknown }
  | { kind: 'write'; slot: number; data: ArrayLike<number> };

/** A host state declared through captureHooks.hostState. */
export interface HostState {
  name: string;
  guard: (() => unknown) | null;
  value: unknown;
  advance: (() => void) | null;
}

/** A kernel argument declared through captureHooks.hostValue. */
export interface HostValue {
  get: () => object;
  /** Its JSON when traced (the guard of a value that no kernel received as is). */
  value: string;
  /** Whether a recorded call received the object itself (then it is a plan input, not a guard). */
  consumed: boolean;
}

export interface HostCheck {
  inputIndex: number;
  check: (t: unknown) => void;
}

export interface Trace {
  backend: Backend;
  events: TraceEvent[];
  storages: StorageRecord[];
  /** Generator draws made by the step, in order. */
  draws: number;
  hostStates: HostState[];
  hostChecks: HostCheck[];
  hostValues: HostValue[];
  /** old storage -> new storage, for state tensors that the step pointed at new storage (Tensor.rebind). */
  rebinds: Map<Storage, Storage>;
  /** Why this step cannot be replayed (the first reason found), or null. */
  unsupported: string | null;
}

/**
 * Argument positions that a backend kernel overwrites in full without reading (the Backend
 * contract: "every kernel writes every element of out"). Everything else that a call passes counts
 * as read, which is the safe assumption: a planned buffer first touched by a read is zeroed first,
 * as a fresh allocation would be.
 */
const WRITES_ALL: Record<string, number[]> = {
  fill: [0], cast: [1], unary: [2], binary: [3], where: [3], reduce: [2], argReduce: [2], softmax: [1],
  crossEntropy: [2], crossEntropyBackward: [3], matmul: [2], im2col: [1], col2im: [1], maxPool2d: [1, 2],
  maxPool2dBackward: [2], avgPool2d: [1], avgPool2dBackward: [1], gather: [2], scatterAdd: [2], cumsum: [1],
  argsort: [1], random: [0], conv2d: [2], conv2dBackwardInput: [2], conv2dBackwardWeight: [2],
  layerNorm: [3, 4, 5], layerNormBackward: [5, 6, 7], batchNorm: [3, 4, 5, 6], batchNormEval: [5], batchNormRunning: [5, 6], batchNormBackward: [5, 6, 7],
  // out and probs in full; attentionBackward: see attentionGradsWritten.
  attention: [3, 4],
};

/**
 * attentionBackward writes the head slices of dq, dk and dv (args 5-7): all of a gradient whose
 * rows are its heads side by side (a separate q, k or v), and all of a packed one (one storage
 * three times, q, k and v its thirds). Anything else (a gradient that is a view into a wider
 * storage) keeps the elements it does not write.
 */
function attentionGradsWritten(args: unknown[]): number[] {
  const l = args[8] as AttentionLayout;
  const e = l.heads * l.d;
  const grads = args.slice(5, 8) as Storage[];
  const ops = [l.q, l.k, l.v];
  if (grads[0] === grads[1] && grads[1] === grads[2]) {
    const packed = l.l === l.s && ops.every((o, i) => o.offset === i * e && o.row === 3 * e) && grads[0].numel === l.n * l.l * 3 * e;
    return packed ? [5, 6, 7] : [];
  }
  const rows = [l.l, l.s, l.s];
  return [5, 6, 7].filter((_, i) => grads[i] !== grads[(i + 1) % 3] && grads[i] !== grads[(i + 2) % 3] && ops[i].offset === 0 && ops[i].row === e && grads[i].numel === l.n * rows[i] * e);
}

/**
 * Whether a strided copy writes every element of its destination: a row-major walk of the whole
 * storage from offset 0 (a `.contiguous()` copy), as opposed to the pieces of a concat or a pad.
 */
function copiesOverAll(l: StridedCopyLayout, numel: number): boolean {
  if (l.dstOffset !== 0) return false;
  let stride = 1;
  for (let i = l.shape.length - 1; i >= 0; i--) {
    if (l.shape[i] !== 1 && l.dstStrides[i] !== stride) return false;
    stride *= l.shape[i];
  }
  return stride === numel;
}

export function writesAllAt(method: string, args: unknown[]): readonly number[] {
  if (method === 'stridedCopy') return copiesOverAll(args[2] as StridedCopyLayout, (args[1] as Storage).numel) ? [1] : [];
  if (method === 'attentionBackward') return attentionGradsWritten(args);
  return WRITES_ALL[method] ?? [];
}

/** Notes a use of a storage by call `callIndex` (a view's use is a use of the storage it views). */
function touchRecord(storages: StorageRecord[], r: StorageRecord, callIndex: number, writesAll: boolean): void {
  let root = r;
  while (root.viewOf) root = storages[root.viewOf.base];
  for (const x of root === r ? [r] : [r, root]) {
    if (x.firstUse < 0) {
      x.firstUse = callIndex;
      x.firstUseWritesAll = writesAll && x === r;
    } else if (x.firstUse === callIndex && !writesAll) x.firstUseWritesAll = false;
    x.lastUse = callIndex;
  }
}

/**
 * Recomputes every storage's first and last use from the trace's events, after a pass rewrote
 * them (src/compile/fuse.ts). `writesAll` gives the argument positions a call overwrites in full
 * without reading (WRITES_ALL for backend calls).
 */
export function relive(trace: Trace, writesAll: (e: Extract<TraceEvent, { kind: 'call' }>) => readonly number[]): void {
  const recs = trace.storages;
  for (const r of recs) {
    r.firstUse = -1;
    r.lastUse = -1;
    r.firstUseWritesAll = false;
  }
  const walk = (x: unknown, i: number): void => {
    if (typeof x !== 'object' || x === null || ArrayBuffer.isView(x)) return;
    if ('$s' in x) touchRecord(recs, recs[(x as SlotRef).$s], i, false);
    else if (Array.isArray(x)) for (const v of x) walk(v, i);
    else if (Object.getPrototypeOf(x) === Object.prototype && !('blockParam' in x)) for (const v of Object.values(x)) walk(v, i);
  };
  trace.events.forEach((e, i) => {
    if (e.kind === 'write') {
      touchRecord(recs, recs[e.slot], i, true);
      return;
    }
    const outs = writesAll(e);
    e.args.forEach((a, k) => {
      if (outs.includes(k) && typeof a === 'object' && a !== null && '$s' in a) touchRecord(recs, recs[(a as SlotRef).$s], i, true);
      else walk(a, i);
    });
  });
}

/** Backend methods that are not device work: they pass through unrecorded. */
const PASS_THROUGH = new Set([
  'info', 'supportsDtype', 'memory', 'flush', 'sync', 'trim', 'destroy', 'constructor',
  // Backend internals (allocator, module set-up) that its own methods call.
  'heap', 'bump', 'reserve', 'attachPool', 'dispose', 'fusedKernels', 'scratch', 'checkAlive',
]);
/**
 * Backend methods that hand out the memory itself (wasm's typed view of a storage): code that
 * writes through them outside a kernel call does device work the recorder cannot see.
 */
const DIRECT_ACCESS = new Set(['typed']);
const MEMORY_METHODS = new Set(['alloc', 'allocUninit', 'upload', 'view', 'write', 'read', 'readSync', 'release']);

function isStorage(x: unknown): x is Storage {
  return typeof x === 'object' && x !== null && typeof (x as Storage).numel === 'number' && typeof (x as Storage).dtype === 'string' && 'isView' in x;
}
function isView(s: Storage): boolean {
  return !!(s as { isView?: boolean }).isView;
}

function methodNames(obj: object): string[] {
  const names = new Set<string>();
  for (let o: object | null = obj; o && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
    for (const k of Object.getOwnPropertyNames(o)) {
      if (PASS_THROUGH.has(k)) continue;
      const d = Object.getOwnPropertyDescriptor(o, k);
      if (d && typeof d.value === 'function') names.add(k);
    }
  }
  return [...names];
}

/** The function frames of the current stack outside the recorder, for messages naming the op. */
function callers(): string {
  const lines = (new Error().stack ?? '').split('\n').slice(1);
  const frames = lines
    .map((l) => l.trim().replace(/^at /, ''))
    .filter((l) => !/[\\/]compile[\\/]trace\.[tj]s/.test(l) && !/[\\/]kernels[\\/]/.test(l));
  return frames
    .slice(0, 3)
    .map((f) => f.replace(/\s*\(.*[\\/]([^\\/]+:\d+):\d+\)$/, ' ($1)'))
    .join(' <- ');
}

/**
 * Runs `fn` eagerly with the recorder installed on `backend` and returns its result and the trace.
 * `inputs` are the storages of the compiled function's tensor arguments, in order.
 */
export function traceStep<R>(backend: Backend, inputs: Storage[], fn: () => R): { result: R; trace: Trace } {
  const trace: Trace = { backend, events: [], storages: [], draws: 0, hostStates: [], hostChecks: [], hostValues: [], rebinds: new Map(), unsupported: null };
  const byStorage = new Map<Storage, StorageRecord>();
  const note = (why: string): void => {
    if (!trace.unsupported) trace.unsupported = why;
  };
  const register = (s: Storage, origin: StorageOrigin, inputIndex = -1, viewOf: StorageRecord['viewOf'] = null): StorageRecord => {
    const r: StorageRecord = {
      id: trace.storages.length, storage: s, origin, inputIndex, numel: s.numel, dtype: s.dtype, viewOf,
      released: false, firstUse: -1, lastUse: -1, firstUseWritesAll: false,
    };
    trace.storages.push(r);
    byStorage.set(s, r);
    return r;
  };
  const recordOf = (s: Storage): StorageRecord => byStorage.get(s) ?? register(s, 'pre');
  inputs.forEach((s, i) => {
    const r = byStorage.get(s);
    // The same tensor passed twice is one input (its first position).
    if (!r) register(s, 'input', i);
  });

  // Random keys handed out during the step: numbers in kernel arguments that equal one of them
  // become placeholders, refilled with fresh draws on each replay.
  const keys = new Map<number, { draw: number; part: 0 | 1 }>();
  const nextKey = generator.nextKey;
  const ownNextKey = Object.prototype.hasOwnProperty.call(generator, 'nextKey');
  generator.nextKey = function (this: typeof generator): [number, number] {
    const k = nextKey.call(this);
    if (depth === 0) {
      keys.set(k[0], { draw: trace.draws, part: 0 });
      keys.set(k[1], { draw: trace.draws, part: 1 });
      trace.draws++;
    }
    return k;
  };

  const outerRebound = captureHooks.rebound;
  captureHooks.rebound = (from, to) => {
    trace.rebinds.set(from as Storage, to as Storage);
    outerRebound?.(from, to);
  };

  let allowedRead: Storage | null = null;
  const hostValueIndex = new Map<object, number>();
  const hostValueParent: number[] = [];
  captureHooks.hostValue = (value, get, from) => {
    if (hostValueIndex.has(value)) return;
    let getNow = get as () => object;
    let parent = -1;
    if (from) {
      // Derived from a value the step did not declare: a constant of the plan, as any other.
      parent = hostValueIndex.get(from) ?? -2;
      if (parent === -2) return;
      const parentGet = trace.hostValues[parent].get;
      getNow = () => get(parentGet());
    }
    hostValueIndex.set(value, trace.hostValues.length);
    hostValueParent.push(parent);
    trace.hostValues.push({ get: getNow, value: JSON.stringify(value), consumed: false });
  };
  captureHooks.hostState = (name, guard, advance) => {
    trace.hostStates.push({ name, guard, value: guard ? guard() : undefined, advance });
  };
  captureHooks.deviceCall = (name, fn, args) => recordCall('extern', name, fn as (...a: unknown[]) => unknown, null, args);
  captureHooks.hostCheck = (s, check) => {
    const r = byStorage.get(s as Storage);
    if (r && r.origin === 'input') {
      trace.hostChecks.push({ inputIndex: r.inputIndex, check });
      allowedRead = s as Storage;
    }
  };

  // Replaces each argument by its template: storages by slots, random keys by key refs.
  // Objects are copied (host code may change a layout or a group's hyper-parameters after the
  // call); an object without storages or keys inside that is frozen, or is passed to an external
  // device call (captureHooks.deviceCall), is kept by reference, as its identity may matter.
  let placeholders = 0;
  let byReference = false;
  const template = (x: unknown, callIndex: number, writesAll: boolean): unknown => {
    if (typeof x === 'number') {
      const k = keys.get(x);
      if (!k) return x;
      placeholders++;
      return { $k: k.draw, part: k.part } satisfies KeyRef;
    }
    if (typeof x !== 'object' || x === null) return x;
    const hv = hostValueIndex.get(x);
    if (hv !== undefined) {
      trace.hostValues[hv].consumed = true;
      placeholders++;
      return { $h: hv } satisfies HostRef;
    }
    if (isStorage(x)) {
      const r = recordOf(x);
      touch(r, callIndex, writesAll);
      placeholders++;
      return { $s: r.id } satisfies SlotRef;
    }
    if (ArrayBuffer.isView(x)) return (x as unknown as { slice(): unknown }).slice();
    // The arena layout is a constant of the optimizer: kept by reference.
    if ('blockParam' in x && 'paramTable' in x) return x;
    const before = placeholders;
    let copy: unknown;
    if (Array.isArray(x)) copy = x.map((v) => template(v, callIndex, false));
    else if (Object.getPrototypeOf(x) !== Object.prototype) {
      if (!byReference) note(`a kernel argument of class ${(x as object).constructor?.name ?? '?'} cannot be recorded`);
      return x;
    } else {
      const o: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(x)) o[k] = template(v, callIndex, false);
      copy = o;
    }
    return placeholders === before && (byReference || Object.isFrozen(x)) ? x : copy;
  };
  const touch = (r: StorageRecord, callIndex: number, writesAll: boolean): void => touchRecord(trace.storages, r, callIndex, writesAll);

  let depth = 0;
  const restores: (() => void)[] = [];
  const shadow = (obj: Record<string, unknown>, name: string, wrapper: (orig: (...a: unknown[]) => unknown) => (...a: unknown[]) => unknown): void => {
    const orig = obj[name] as (...a: unknown[]) => unknown;
    // An optional method the backend lacks (readSync on WebGPU) stays absent: callers test for it.
    if (typeof orig !== 'function') return;
    const own = Object.getOwnPropertyDescriptor(obj, name);
    obj[name] = wrapper(orig);
    restores.push(() => {
      if (own) Object.defineProperty(obj, name, own);
      else delete obj[name];
    });
  };
  const recordCall = (target: 'backend' | 'fused' | 'extern', method: string, orig: (...a: unknown[]) => unknown, self: object | null, args: unknown[]): unknown => {
    if (depth > 0) return orig.apply(self, args);
    const callIndex = trace.events.length;
    const outs = target === 'backend' ? writesAllAt(method, args) : [];
    byReference = target === 'extern';
    const tmpl = args.map((a, i) => template(a, callIndex, outs.includes(i)));
    trace.events.push({ kind: 'call', target, method, args: tmpl, fn: target === 'extern' ? orig : undefined });
    depth++;
    try {
      return orig.apply(self, args);
    } finally {
      depth--;
    }
  };

  /** Runs a backend original with the recorder off: whatever it calls on its own is internal. */
  const inner = (orig: (...a: unknown[]) => unknown, self: object, args: unknown[]): unknown => {
    depth++;
    try {
      return orig.apply(self, args);
    } finally {
      depth--;
    }
  };
  const b = backend as unknown as Record<string, unknown>;
  for (const name of methodNames(backend)) {
    if (DIRECT_ACCESS.has(name)) {
      shadow(b, name, (orig) => function (this: object, ...args: unknown[]) {
        if (depth === 0) note(`the step reaches device memory directly (${name} in ${callers()}), which a plan cannot replay`);
        return orig.apply(this, args);
      });
    } else if (!MEMORY_METHODS.has(name)) {
      shadow(b, name, (orig) => function (this: object, ...args: unknown[]) { return recordCall('backend', name, orig, this, args); });
    }
  }
  shadow(b, 'alloc', (orig) => function (this: object, ...args: unknown[]) {
    const s = inner(orig, this, args) as Storage;
    if (depth === 0) register(s, 'made');
    return s;
  });
  // Recorded like alloc: a plan that treats the slot as zero-filled is only more careful than needed.
  if (typeof b.allocUninit === 'function') {
    shadow(b, 'allocUninit', (orig) => function (this: object, ...args: unknown[]) {
      const s = inner(orig, this, args) as Storage;
      if (depth === 0) register(s, 'made');
      return s;
    });
  }
  shadow(b, 'upload', (orig) => function (this: object, ...args: unknown[]) {
    const s = inner(orig, this, args) as Storage;
    if (depth === 0) {
      const r = register(s, 'made');
      const callIndex = trace.events.length;
      touch(r, callIndex, true);
      trace.events.push({ kind: 'write', slot: r.id, data: (args[0] as { slice(): ArrayLike<number> }).slice() });
    }
    return s;
  });
  shadow(b, 'write', (orig) => function (this: object, ...args: unknown[]) {
    if (depth === 0) {
      const r = recordOf(args[0] as Storage);
      if (r.origin === 'input') note('the step overwrites one of its input tensors from the host');
      touch(r, trace.events.length, true);
      trace.events.push({ kind: 'write', slot: r.id, data: (args[1] as { slice(): ArrayLike<number> }).slice() });
    }
    return inner(orig, this, args);
  });
  shadow(b, 'view', (orig) => function (this: object, ...args: unknown[]) {
    const s = inner(orig, this, args) as Storage;
    if (depth === 0) {
      const base = recordOf(args[0] as Storage);
      register(s, 'made', -1, { base: base.id, offset: args[1] as number });
    }
    return s;
  });
  shadow(b, 'release', (orig) => function (this: object, ...args: unknown[]) {
    const s = args[0] as Storage;
    if (depth === 0 && !isView(s)) {
      const r = recordOf(s);
      r.released = true;
      // State that existed before the step and is replaced during it: the plan keeps the old
      // storage alive (it is the state the next replay reads) and copies the new value back.
      if (r.origin === 'pre') return undefined;
      if (r.origin === 'input') note('the step disposes one of its input tensors');
    }
    return inner(orig, this, args);
  });
  const readCheck = (orig: (...a: unknown[]) => unknown, method: string) =>
    function (this: object, ...args: unknown[]) {
      const s = args[0] as Storage;
      if (depth === 0) {
        if (allowedRead === s) allowedRead = null;
        else note(`the step reads a ${s.dtype} tensor of ${s.numel} element${s.numel === 1 ? '' : 's'} back to the host (${method} in ${callers()}), so what it does may depend on the data`);
      }
      return inner(orig, this, args);
    };
  shadow(b, 'readSync', (orig) => readCheck(orig, 'readSync'));
  shadow(b, 'read', (orig) => readCheck(orig, 'read'));

  const fused = fusedKernelsFor(backend) as unknown as Record<string, unknown> | null;
  if (fused) {
    for (const name of methodNames(fused)) {
      shadow(fused, name, (orig) => function (this: object, ...args: unknown[]) { return recordCall('fused', name, orig, this, args); });
    }
  }

  try {
    const result = fn();
    // A derived value that a kernel received stands for its source (children come after parents).
    for (let i = trace.hostValues.length - 1; i >= 0; i--) {
      if (trace.hostValues[i].consumed && hostValueParent[i] >= 0) trace.hostValues[hostValueParent[i]].consumed = true;
    }
    return { result, trace };
  } finally {
    for (let i = restores.length - 1; i >= 0; i--) restores[i]();
    if (ownNextKey) generator.nextKey = nextKey;
    else delete (generator as unknown as Record<string, unknown>).nextKey;
    captureHooks.rebound = outerRebound;
    captureHooks.hostState = null;
    captureHooks.hostCheck = null;
    captureHooks.deviceCall = null;
    captureHooks.hostValue = null;
  }
}
