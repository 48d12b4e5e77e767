/**
 * The safetensors format (https://github.com/huggingface/safetensors), as PyTorch and Hugging Face
 * exchange weights: an 8-byte little-endian u64 N, N bytes of UTF-8 JSON header (padded with
 * spaces), then the data buffer. The header maps each tensor name to
 * {dtype, shape, data_offsets: [begin, end]} (offsets relative to the data buffer), plus an
 * optional "__metadata__" map of strings. Data is little-endian and row-major, and the tensors
 * must cover the buffer exactly: no gaps, no overlaps.
 */

import { writeFileAtomic } from './atomic.js';

export type SafetensorsDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export type SafetensorsData = Float64Array | Float32Array | Int32Array | Int16Array | Int8Array | Uint8Array;

export interface SafetensorsTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  /** F16 and BF16 are widened to Float32Array, I64 narrowed to Int32Array, BOOL is 0/1 bytes. */
  data: SafetensorsData;
}

export interface SafetensorsInput {
  dtype: SafetensorsDtype;
  shape: readonly number[];
  /**
   * The values, converted to `dtype` (F16/BF16 rounded to nearest even; integers must be whole
   * and in range). A Uint8Array is taken as the raw little-endian bytes of any dtype.
   */
  data: SafetensorsData | Uint16Array | Uint32Array | BigInt64Array | readonly number[];
}

export interface SafetensorsFile {
  tensors: Record<string, SafetensorsTensor>;
  metadata: Record<string, string>;
}

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

/** The reference implementation refuses larger headers; so do we, before allocating for one. */
const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = '__metadata__';

interface Codec {
  bytes: number;
  /** Inclusive value range that integer dtypes accept when encoding numbers. */
  integerRange?: [number, number];
  alloc(n: number): SafetensorsData;
  read(view: DataView, offset: number): number;
  write(view: DataView, offset: number, value: number): void;
}

const scratch = new DataView(new ArrayBuffer(4));

/** float32 -> IEEE binary16 bits, rounding to nearest even; overflow gives infinity. */
function toHalfBits(value: number): number {
  scratch.setFloat32(0, value);
  const x = scratch.getUint32(0);
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 | (mantissa >>> 13) : 0);
  const e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    const rest = mantissa & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    let half = mantissa >>> shift;
    if (rest > halfway || (rest === halfway && half & 1)) half++;
    return sign | half;
  }
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  let half = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++;
  return sign | half;
}

function fromHalfBits(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >>> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** float32 -> bfloat16 bits (the top half of the float32), rounding to nearest even. */
function toBfloat16Bits(value: number): number {
  scratch.setFloat32(0, value);
  const x = scratch.getUint32(0);
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return (x >>> 16) | 0x40; // keep NaN a NaN
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

function fromBfloat16Bits(b: number): number {
  scratch.setUint32(0, b << 16);
  return scratch.getFloat32(0);
}

const CODECS: Record<SafetensorsDtype, Codec> = {
  F64: { bytes: 8, alloc: (n) => new Float64Array(n), read: (v, o) => v.getFloat64(o, true), write: (v, o, x) => v.setFloat64(o, x, true) },
  F32: { bytes: 4, alloc: (n) => new Float32Array(n), read: (v, o) => v.getFloat32(o, true), write: (v, o, x) => v.setFloat32(o, x, true) },
  F16: {
    bytes: 2,
    alloc: (n) => new Float32Array(n),
    read: (v, o) => fromHalfBits(v.getUint16(o, true)),
    write: (v, o, x) => v.setUint16(o, toHalfBits(x), true),
  },
  BF16: {
    bytes: 2,
    alloc: (n) => new Float32Array(n),
    read: (v, o) => fromBfloat16Bits(v.getUint16(o, true)),
    write: (v, o, x) => v.setUint16(o, toBfloat16Bits(x), true),
  },
  I64: {
    bytes: 8,
    integerRange: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
    alloc: (n) => new Int32Array(n),
    read: (v, o) => Number(v.getBigInt64(o, true)),
    write: (v, o, x) => v.setBigInt64(o, BigInt(x), true),
  },
  I32: { bytes: 4, integerRange: [-(2 ** 31), 2 ** 31 - 1], alloc: (n) => new Int32Array(n), read: (v, o) => v.getInt32(o, true), write: (v, o, x) => v.setInt32(o, x, true) },
  I16: { bytes: 2, integerRange: [-(2 ** 15), 2 ** 15 - 1], alloc: (n) => new Int16Array(n), read: (v, o) => v.getInt16(o, true), write: (v, o, x) => v.setInt16(o, x, true) },
  I8: { bytes: 1, integerRange: [-128, 127], alloc: (n) => new Int8Array(n), read: (v, o) => v.getInt8(o), write: (v, o, x) => v.setInt8(o, x) },
  U8: { bytes: 1, integerRange: [0, 255], alloc: (n) => new Uint8Array(n), read: (v, o) => v.getUint8(o), write: (v, o, x) => v.setUint8(o, x) },
  BOOL: { bytes: 1, integerRange: [0, 1], alloc: (n) => new Uint8Array(n), read: (v, o) => v.getUint8(o), write: (v, o, x) => v.setUint8(o, x) },
};

const KNOWN_DTYPES = Object.keys(CODECS) as SafetensorsDtype[];

/**
 * The order the reference writer lays tensors out in: larger dtypes first (its Dtype enum,
 * descending), then by name. Readers accept any order; matching it makes our files byte-identical.
 */
const WRITE_ORDER: readonly SafetensorsDtype[] = ['I64', 'F64', 'F32', 'I32', 'BF16', 'F16', 'I16', 'I8', 'U8', 'BOOL'];

function isDtype(d: unknown): d is SafetensorsDtype {
  return typeof d === 'string' && Object.hasOwn(CODECS, d);
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Rust compares names as UTF-8 bytes, which orders like code points (not UTF-16 units). */
function compareCodePoints(a: string, b: string): number {
  const x = Array.from(a, (c) => c.codePointAt(0)!);
  const y = Array.from(b, (c) => c.codePointAt(0)!);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/** A JSON object with its keys in the given order (JSON.stringify would move integer-like keys first). */
function jsonObject(entries: [string, string][]): string {
  return `{${entries.map(([key, json]) => `${JSON.stringify(key)}:${json}`).join(',')}}`;
}

function checkShape(where: string, shape: unknown): number[] {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsError(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  return shape as number[];
}

function tensorBytes(name: string, input: SafetensorsInput, codec: Codec): Uint8Array {
  const count = numel(input.shape);
  const { data } = input;
  if (data instanceof Uint8Array) {
    if (data.length !== count * codec.bytes) {
      throw new SafetensorsError(
        `tensor '${name}': shape [${input.shape.join(', ')}] of ${input.dtype} needs ${count * codec.bytes} bytes, the raw data has ${data.length}`,
      );
    }
    if (input.dtype === 'BOOL') checkValues(name, input.dtype, codec, data);
    return data;
  }
  if (data.length !== count) {
    throw new SafetensorsError(`tensor '${name}': shape [${input.shape.join(', ')}] holds ${count} values, data has ${data.length}`);
  }
  const out = new Uint8Array(count * codec.bytes);
  const view = new DataView(out.buffer);
  if (data instanceof BigInt64Array) {
    if (input.dtype !== 'I64') throw new SafetensorsError(`tensor '${name}': a BigInt64Array can only be written as I64, not ${input.dtype}`);
    data.forEach((v, i) => view.setBigInt64(i * 8, v, true));
    return out;
  }
  if (codec.integerRange) checkValues(name, input.dtype, codec, data);
  for (let i = 0; i < count; i++) codec.write(view, i * codec.bytes, data[i]);
  return out;
}

function checkValues(name: string, dtype: SafetensorsDtype, codec: Codec, values: ArrayLike<number>): void {
  const [min, max] = codec.integerRange!;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isInteger(v) || v < min || v > max) {
      throw new SafetensorsError(`tensor '${name}': value ${v} at index ${i} is not ${dtype === 'BOOL' ? '0 or 1' : `an integer in [${min}, ${max}]`} (${dtype})`);
    }
  }
}

/** Serializes tensors (and string metadata) in the safetensors format. */
export function encodeSafetensors(tensors: Record<string, SafetensorsInput>, metadata?: Record<string, string>): Uint8Array {
  const entries = Object.entries(tensors).map(([name, input]) => {
    if (name === METADATA_KEY) throw new SafetensorsError(`tensor name '${METADATA_KEY}' is reserved for metadata`);
    if (!isDtype(input?.dtype)) {
      throw new SafetensorsError(`tensor '${name}': unknown dtype ${JSON.stringify(input?.dtype)}; known: ${KNOWN_DTYPES.join(', ')}`);
    }
    checkShape(`tensor '${name}'`, input.shape);
    return { name, dtype: input.dtype, shape: [...input.shape], bytes: tensorBytes(name, input, CODECS[input.dtype]) };
  });
  entries.sort((a, b) => WRITE_ORDER.indexOf(a.dtype) - WRITE_ORDER.indexOf(b.dtype) || compareCodePoints(a.name, b.name));

  const headerEntries: [string, string][] = [];
  if (metadata !== undefined) {
    const pairs = Object.entries(metadata);
    const bad = pairs.find(([, v]) => typeof v !== 'string');
    if (bad) throw new SafetensorsError(`metadata '${bad[0]}' must be a string, got ${typeof bad[1]}`);
    headerEntries.push([METADATA_KEY, jsonObject(pairs.map(([k, v]) => [k, JSON.stringify(v)]))]);
  }
  let offset = 0;
  for (const e of entries) {
    const info = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + e.bytes.length] };
    headerEntries.push([e.name, JSON.stringify(info)]);
    offset += e.bytes.length;
  }
  const json = new TextEncoder().encode(jsonObject(headerEntries));
  // Padding the header to 8 bytes keeps every tensor's data aligned for zero-copy readers.
  const headerLength = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + headerLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLength), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLength);
  let position = 8 + headerLength;
  for (const e of entries) {
    out.set(e.bytes, position);
    position += e.bytes.length;
  }
  return out;
}

/** The keys of the top-level object of valid JSON text, duplicates included (JSON.parse keeps only the last). */
function topLevelKeys(json: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < json.length; i++) {
    const c = json[i];
    if (c === '"') {
      let end = i + 1;
      while (json[end] !== '"') end += json[end] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) keys.push(JSON.parse(json.slice(i, end + 1)) as string);
      expectKey = false;
      i = end;
    } else if (c === '{' || c === '[') {
      depth++;
      expectKey = depth === 1;
    } else if (c === '}' || c === ']') {
      depth--;
    } else if (c === ',' && depth === 1) {
      expectKey = true;
    }
  }
  return keys;
}

interface HeaderEntry {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  begin: number;
  end: number;
}

function parseHeader(bytes: Uint8Array): { entries: HeaderEntry[]; metadata: Record<string, string>; dataStart: number } {
  if (bytes.length < 8) {
    throw new SafetensorsError(`file is ${bytes.length} bytes; a safetensors file starts with an 8-byte header length`);
  }
  const length = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(0, true);
  if (length > BigInt(bytes.length - 8)) {
    throw new SafetensorsError(`header length ${length} is larger than the file (${bytes.length - 8} bytes after the length)`);
  }
  if (length > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(`header length ${length} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const headerLength = Number(length);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + headerLength));
  } catch {
    throw new SafetensorsError('header is not valid UTF-8');
  }
  if (!text.startsWith('{')) throw new SafetensorsError(`header must be a JSON object starting with '{', found ${JSON.stringify(text.slice(0, 20))}`);
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new SafetensorsError('header must be a JSON object');
  }
  const seen = new Set<string>();
  for (const key of topLevelKeys(text)) {
    if (seen.has(key)) throw new SafetensorsError(`duplicate name '${key}' in header`);
    seen.add(key);
  }

  const metadata: Record<string, string> = Object.create(null);
  const entries: HeaderEntry[] = [];
  for (const [name, info] of Object.entries(header as Record<string, unknown>)) {
    if (name === METADATA_KEY) {
      if (typeof info !== 'object' || info === null || Array.isArray(info)) throw new SafetensorsError(`'${METADATA_KEY}' must be an object of strings`);
      for (const [k, v] of Object.entries(info)) {
        if (typeof v !== 'string') throw new SafetensorsError(`metadata '${k}' must be a string, got ${JSON.stringify(v)}`);
        metadata[k] = v;
      }
      continue;
    }
    entries.push(parseEntry(name, info));
  }
  return { entries, metadata, dataStart: 8 + headerLength };
}

function parseEntry(name: string, info: unknown): HeaderEntry {
  const where = `tensor '${name}'`;
  if (typeof info !== 'object' || info === null || Array.isArray(info)) {
    throw new SafetensorsError(`${where}: header entry must be an object with dtype, shape and data_offsets`);
  }
  const fields = info as Record<string, unknown>;
  for (const field of ['dtype', 'shape', 'data_offsets']) {
    if (!(field in fields)) throw new SafetensorsError(`${where}: missing field '${field}'`);
  }
  const { dtype, data_offsets: offsets } = fields;
  if (!isDtype(dtype)) {
    throw new SafetensorsError(`${where}: unknown dtype ${JSON.stringify(dtype)}; flatgrad reads ${KNOWN_DTYPES.join(', ')}`);
  }
  const shape = checkShape(where, fields.shape);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1]) {
    throw new SafetensorsError(`${where}: data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as number[];
  const expected = numel(shape) * CODECS[dtype].bytes;
  if (end - begin !== expected) {
    throw new SafetensorsError(
      `${where}: shape [${shape.join(', ')}] of ${dtype} needs ${expected} bytes, but data_offsets [${begin}, ${end}] span ${end - begin}`,
    );
  }
  return { name, dtype, shape, begin, end };
}

/** The spec requires the tensors to tile the data buffer exactly. */
function checkCoverage(entries: HeaderEntry[], bufferLength: number): void {
  for (const e of entries) {
    if (e.end > bufferLength) {
      throw new SafetensorsError(`tensor '${e.name}': data_offsets [${e.begin}, ${e.end}] are out of bounds of the ${bufferLength}-byte data buffer`);
    }
  }
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  let previous: HeaderEntry | undefined;
  for (const e of sorted) {
    if (e.begin < covered) {
      throw new SafetensorsError(
        `tensors '${previous!.name}' [${previous!.begin}, ${previous!.end}] and '${e.name}' [${e.begin}, ${e.end}] overlap`,
      );
    }
    if (e.begin > covered) {
      throw new SafetensorsError(`bytes [${covered}, ${e.begin}) of the data buffer belong to no tensor (gap before '${e.name}')`);
    }
    covered = e.end;
    previous = e;
  }
  if (covered !== bufferLength) {
    throw new SafetensorsError(`bytes [${covered}, ${bufferLength}) at the end of the data buffer belong to no tensor`);
  }
}

/** Parses a safetensors file, checking the header strictly. */
export function decodeSafetensors(bytes: Uint8Array): SafetensorsFile {
  const { entries, metadata, dataStart } = parseHeader(bytes);
  checkCoverage(entries, bytes.length - dataStart);
  const view = new DataView(bytes.buffer, bytes.byteOffset + dataStart, bytes.length - dataStart);
  const tensors: Record<string, SafetensorsTensor> = Object.create(null);
  for (const { name, dtype, shape, begin } of entries) {
    const codec = CODECS[dtype];
    const count = numel(shape);
    const data = codec.alloc(count);
    for (let i = 0; i < count; i++) {
      const offset = begin + i * codec.bytes;
      const value = codec.read(view, offset);
      if (dtype === 'I64' && (value < -(2 ** 31) || value > 2 ** 31 - 1)) {
        throw new SafetensorsError(`tensor '${name}' (I64): value ${view.getBigInt64(offset, true)} at index ${i} does not fit in int32`);
      }
      data[i] = value;
    }
    tensors[name] = { dtype, shape, data };
  }
  return { tensors, metadata };
}

export async function readSafetensorsFile(path: string): Promise<SafetensorsFile> {
  const { readFile } = await import('node:fs/promises');
  const bytes = await readFile(path);
  try {
    return decodeSafetensors(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (e) {
    if (e instanceof SafetensorsError) throw new SafetensorsError(`${path}: ${e.message}`, { cause: e });
    throw e;
  }
}

/** Writes atomically: a crash mid-write leaves any previous file at `path` intact. */
export async function writeSafetensorsFile(
  path: string,
  tensors: Record<string, SafetensorsInput>,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}
