/**
 * Training checkpoints: model weights, optimizer state, RNG state and run metadata in ONE
 * safetensors file. Tensors (and typed arrays anywhere in the state) are stored as safetensors
 * entries, so `model.*` loads in PyTorch as a plain state dict; the rest of the state is JSON in
 * the header's __metadata__, where each tensor is a reference to its entry. One file written
 * atomically means a crash leaves either the old checkpoint or the new one, never weights from
 * one save next to optimizer state from another (which a JSON sidecar file would allow).
 */
import type { DType, TypedArray } from '../tensor/dtype.js';
import { tensor } from '../tensor/creation.js';
import { Tensor } from '../tensor/tensor.js';
import { decodeSafetensors, SafetensorsError, writeSafetensorsFile, type SafetensorsDtype, type SafetensorsInput } from './safetensors.js';

export const CHECKPOINT_FORMAT = 'flatgrad-checkpoint';
export const CHECKPOINT_VERSION = 1;

/** JSON values with tensors and typed arrays allowed as leaves. */
export type StateTree = Tensor | TypedArray | number | string | boolean | null | undefined | StateTree[] | { [key: string]: StateTree };

export interface Checkpoint {
  /** Parameter and buffer tensors by their dotted names (a model's state dict). */
  model: Record<string, Tensor>;
  optimizer?: StateTree;
  rng?: StateTree;
  /** Anything else JSON-able: the run's config, epoch, step, metrics. */
  meta?: Record<string, StateTree>;
}

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

const STORED_DTYPE: Record<DType, SafetensorsDtype> = { float32: 'F32', float64: 'F64', int32: 'I32', bool: 'BOOL' };
const TENSOR_DTYPE: Partial<Record<SafetensorsDtype, DType>> = { F32: 'float32', F16: 'float32', BF16: 'float32', F64: 'float64', I32: 'int32', I64: 'int32', BOOL: 'bool' };
const ARRAY_DTYPE = (a: TypedArray): SafetensorsDtype =>
  a instanceof Float64Array ? 'F64' : a instanceof Float32Array ? 'F32' : a instanceof Int32Array ? 'I32' : 'U8';

type Ref = { $tensor: string } | { $array: string; type: string } | { $number: string };

function isPlainObject(x: unknown): x is Record<string, unknown> {
  return !!x && typeof x === 'object' && Object.getPrototypeOf(x) === Object.prototype;
}

/** Replaces tensor and typed-array leaves by references to entries named `${prefix}.${path}`. */
async function encodeTree(tree: StateTree, prefix: string, entries: Record<string, SafetensorsInput>): Promise<unknown> {
  if (tree instanceof Tensor) {
    entries[prefix] = { dtype: STORED_DTYPE[tree.dtype], shape: tree.shape.slice(), data: (await tree.data()) as SafetensorsInput['data'] };
    return { $tensor: prefix } satisfies Ref;
  }
  if (ArrayBuffer.isView(tree)) {
    const a = tree as TypedArray;
    entries[prefix] = { dtype: ARRAY_DTYPE(a), shape: [a.length], data: a as SafetensorsInput['data'] };
    return { $array: prefix, type: a.constructor.name } satisfies Ref;
  }
  if (typeof tree === 'number' && !Number.isFinite(tree)) return { $number: String(tree) } satisfies Ref;
  if (Array.isArray(tree)) return Promise.all(tree.map((v, i) => encodeTree(v, `${prefix}.${i}`, entries)));
  if (isPlainObject(tree)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(tree)) if (v !== undefined) out[k] = await encodeTree(v as StateTree, `${prefix}.${k}`, entries);
    return out;
  }
  if (tree === undefined || tree === null) return null;
  if (['number', 'string', 'boolean'].includes(typeof tree)) return tree;
  throw new CheckpointError(`checkpoint: cannot store ${Object.prototype.toString.call(tree)} at '${prefix}'`);
}

export async function saveCheckpoint(path: string, state: Checkpoint): Promise<void> {
  const entries: Record<string, SafetensorsInput> = {};
  for (const [name, t] of Object.entries(state.model)) await encodeTree(t, `model.${name}`, entries);
  const rest = {
    optimizer: await encodeTree(state.optimizer, 'optimizer', entries),
    rng: await encodeTree(state.rng, 'rng', entries),
    meta: await encodeTree(state.meta ?? {}, 'meta', entries),
  };
  await writeSafetensorsFile(path, entries, {
    format: CHECKPOINT_FORMAT,
    version: String(CHECKPOINT_VERSION),
    state: JSON.stringify(rest),
  });
}

export interface LoadedCheckpoint {
  /** Tensors on the active backend; the caller owns (and disposes) them. */
  model: Record<string, Tensor>;
  optimizer: StateTree;
  rng: StateTree;
  meta: Record<string, StateTree>;
}

const ARRAY_TYPES: Record<string, new (a: ArrayLike<number>) => TypedArray> = { Float32Array, Float64Array, Int32Array, Uint8Array };

/** State nested deeper than this is refused (a crafted file must not exhaust the stack). */
const MAX_STATE_DEPTH = 256;

export async function loadCheckpoint(path: string): Promise<LoadedCheckpoint> {
  const { readFile } = await import('node:fs/promises');
  const bytes = await readFile(path);
  return decodeCheckpoint(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), path);
}

/**
 * Decodes checkpoint bytes (`path` names them in errors). A damaged or crafted file fails with a
 * SafetensorsError (the container) or a CheckpointError (the state in it), never another error;
 * nothing is allocated beyond what the file's own bytes hold.
 */
export function decodeCheckpoint(bytes: Uint8Array, path = 'checkpoint'): LoadedCheckpoint {
  let file;
  try {
    file = decodeSafetensors(bytes);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new SafetensorsError(`${path}: ${e.message}`, { cause: e });
    throw e;
  }
  if (file.metadata.format !== CHECKPOINT_FORMAT) {
    throw new CheckpointError(`${path}: not a flatgrad checkpoint (its safetensors metadata has no format '${CHECKPOINT_FORMAT}')`);
  }
  if (Number(file.metadata.version) !== CHECKPOINT_VERSION) {
    throw new CheckpointError(`${path}: checkpoint version ${file.metadata.version}; this flatgrad reads version ${CHECKPOINT_VERSION}`);
  }
  const created: Tensor[] = [];
  const entry = (name: string) => {
    const e = file.tensors[name];
    if (!e) throw new CheckpointError(`${path}: the state refers to tensor '${name}', which the file does not hold`);
    return e;
  };
  const toTensor = (name: string): Tensor => {
    const e = entry(name);
    const dtype = TENSOR_DTYPE[e.dtype];
    if (!dtype) throw new CheckpointError(`${path}: tensor '${name}' has dtype ${e.dtype}, which flatgrad tensors do not hold`);
    const t = tensor(e.data as TypedArray, { shape: e.shape, dtype });
    created.push(t);
    return t;
  };
  const decode = (x: unknown, depth = 0): StateTree => {
    if (depth > MAX_STATE_DEPTH) throw new CheckpointError(`${path}: the checkpoint state is nested more than ${MAX_STATE_DEPTH} levels deep`);
    if (Array.isArray(x)) return x.map((v) => decode(v, depth + 1));
    if (!isPlainObject(x)) return x as StateTree;
    if (typeof x.$tensor === 'string') return toTensor(x.$tensor);
    if (typeof x.$array === 'string') return new (ARRAY_TYPES[String(x.type)] ?? Float64Array)(entry(x.$array).data);
    if (typeof x.$number === 'string') return Number(x.$number);
    return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, decode(v, depth + 1)]));
  };
  try {
    const rest = JSON.parse(file.metadata.state ?? '{}') as unknown;
    if (!isPlainObject(rest)) throw new CheckpointError(`${path}: the checkpoint state must be a JSON object, got ${JSON.stringify(rest)?.slice(0, 40)}`);
    const model: Record<string, Tensor> = {};
    for (const name of Object.keys(file.tensors)) if (name.startsWith('model.')) model[name.slice('model.'.length)] = toTensor(name);
    const meta = decode(rest.meta) ?? {};
    if (!isPlainObject(meta)) throw new CheckpointError(`${path}: the checkpoint's meta must be an object`);
    return { model, optimizer: decode(rest.optimizer), rng: decode(rest.rng), meta: meta as Record<string, StateTree> };
  } catch (e) {
    for (const t of created) t.dispose();
    if (e instanceof SyntaxError) throw new CheckpointError(`${path}: the checkpoint state is not valid JSON (${e.message})`);
    throw e;
  }
}

/** Disposes every tensor a loaded checkpoint holds (after they were copied into a model and optimizer). */
export function disposeCheckpoint(c: LoadedCheckpoint): void {
  const visit = (x: unknown): void => {
    if (x instanceof Tensor) x.dispose();
    else if (x && typeof x === 'object' && !ArrayBuffer.isView(x)) Object.values(x).forEach(visit);
  };
  visit(c.model);
  visit(c.optimizer);
  visit(c.rng);
  visit(c.meta);
}
