/**
 * The IDX format of MNIST and Fashion-MNIST: magic bytes 00 00 <type code> <number of dims>,
 * then each dimension as a big-endian u32, then the values, row-major and big-endian.
 */

export type IdxDtype = 'uint8' | 'int8' | 'int16' | 'int32' | 'float32' | 'float64';
export type IdxData = Uint8Array | Int8Array | Int16Array | Int32Array | Float32Array | Float64Array;

export interface IdxArray {
  dtype: IdxDtype;
  shape: number[];
  data: IdxData;
}

export class IdxFormatError extends Error {
  override name = 'IdxFormatError';
}

interface IdxType {
  code: number;
  dtype: IdxDtype;
  bytes: number;
  read(view: DataView, offset: number): number;
  write(view: DataView, offset: number, value: number): void;
  alloc(n: number): IdxData;
}

const IDX_TYPES: readonly IdxType[] = [
  { code: 0x08, dtype: 'uint8', bytes: 1, read: (v, o) => v.getUint8(o), write: (v, o, x) => v.setUint8(o, x), alloc: (n) => new Uint8Array(n) },
  { code: 0x09, dtype: 'int8', bytes: 1, read: (v, o) => v.getInt8(o), write: (v, o, x) => v.setInt8(o, x), alloc: (n) => new Int8Array(n) },
  { code: 0x0b, dtype: 'int16', bytes: 2, read: (v, o) => v.getInt16(o), write: (v, o, x) => v.setInt16(o, x), alloc: (n) => new Int16Array(n) },
  { code: 0x0c, dtype: 'int32', bytes: 4, read: (v, o) => v.getInt32(o), write: (v, o, x) => v.setInt32(o, x), alloc: (n) => new Int32Array(n) },
  { code: 0x0d, dtype: 'float32', bytes: 4, read: (v, o) => v.getFloat32(o), write: (v, o, x) => v.setFloat32(o, x), alloc: (n) => new Float32Array(n) },
  { code: 0x0e, dtype: 'float64', bytes: 8, read: (v, o) => v.getFloat64(o), write: (v, o, x) => v.setFloat64(o, x), alloc: (n) => new Float64Array(n) },
];

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}

function label(source: string | undefined): string {
  return source ? `IDX file ${source}` : 'IDX data';
}

export function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

/** Decodes an uncompressed IDX buffer. One-byte types are returned as views into `bytes`. */
export function parseIdx(bytes: Uint8Array, source?: string): IdxArray {
  const where = label(source);
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 0) {
    const hint = isGzip(bytes) ? ' (this is gzip data: decompress it first, or use decodeIdx)' : '';
    throw new IdxFormatError(
      `${where}: bad magic number: expected 00 00 <type> <ndims>, found ${hex(bytes.subarray(0, 4)) || 'nothing (empty file)'}${hint}`,
    );
  }
  const type = IDX_TYPES.find((t) => t.code === bytes[2]);
  if (!type) {
    const known = IDX_TYPES.map((t) => `0x${t.code.toString(16).padStart(2, '0')} (${t.dtype})`).join(', ');
    throw new IdxFormatError(`${where}: unknown type code 0x${bytes[2].toString(16).padStart(2, '0')}; known codes: ${known}`);
  }
  const ndims = bytes[3];
  const headerBytes = 4 + 4 * ndims;
  if (bytes.length < headerBytes) {
    throw new IdxFormatError(`${where}: truncated header: ${ndims} dimensions need ${headerBytes} bytes, got ${bytes.length}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const shape: number[] = [];
  for (let i = 0; i < ndims; i++) shape.push(view.getUint32(4 + 4 * i));
  const count = shape.reduce((a, b) => a * b, 1);
  const dataBytes = count * type.bytes;
  const got = bytes.length - headerBytes;
  if (got < dataBytes) {
    throw new IdxFormatError(
      `${where}: truncated: shape [${shape.join(', ')}] of ${type.dtype} needs ${dataBytes} bytes of data, got ${got}`,
    );
  }
  if (got > dataBytes) {
    throw new IdxFormatError(
      `${where}: ${got - dataBytes} unexpected bytes after the data of shape [${shape.join(', ')}] (${type.dtype}, ${dataBytes} bytes)`,
    );
  }
  if (type.bytes === 1) {
    const start = bytes.byteOffset + headerBytes;
    const data = type.dtype === 'uint8' ? new Uint8Array(bytes.buffer, start, count) : new Int8Array(bytes.buffer, start, count);
    return { dtype: type.dtype, shape, data };
  }
  const data = type.alloc(count);
  for (let i = 0; i < count; i++) data[i] = type.read(view, headerBytes + i * type.bytes);
  return { dtype: type.dtype, shape, data };
}

/** Encodes an array as uncompressed IDX. */
export function encodeIdx(array: IdxArray): Uint8Array {
  const type = IDX_TYPES.find((t) => t.dtype === array.dtype);
  if (!type) throw new TypeError(`encodeIdx: unknown dtype ${JSON.stringify(array.dtype)}; known: ${IDX_TYPES.map((t) => t.dtype).join(', ')}`);
  const { shape, data } = array;
  if (shape.length > 255) throw new RangeError(`encodeIdx: IDX holds at most 255 dimensions, got ${shape.length}`);
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0 || d > 0xffffffff) throw new RangeError(`encodeIdx: bad dimension ${d} in shape [${shape.join(', ')}]`);
  }
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== data.length) throw new RangeError(`encodeIdx: shape [${shape.join(', ')}] holds ${count} values but data has ${data.length}`);
  const headerBytes = 4 + 4 * shape.length;
  const out = new Uint8Array(headerBytes + count * type.bytes);
  const view = new DataView(out.buffer);
  out[2] = type.code;
  out[3] = shape.length;
  shape.forEach((d, i) => view.setUint32(4 + 4 * i, d));
  for (let i = 0; i < count; i++) type.write(view, headerBytes + i * type.bytes, data[i]);
  return out;
}

function isNode(): boolean {
  return typeof process !== 'undefined' && typeof process.versions?.node === 'string';
}

/**
 * The most decompressed bytes accepted (1 GiB; the full Fashion-MNIST training images are 47 MB):
 * a small gzip file can claim gigabytes (a "gzip bomb"), and decompression stops at this limit.
 */
export const MAX_DECOMPRESSED_BYTES = 2 ** 30;

/**
 * Decompresses gzip data: node:zlib in Node (three times faster there than the web stream),
 * DecompressionStream elsewhere. Output beyond `maxBytes` is refused, not allocated.
 */
export async function gunzip(bytes: Uint8Array, source?: string, maxBytes = MAX_DECOMPRESSED_BYTES): Promise<Uint8Array> {
  const where = source ? `gzip file ${source}` : 'gzip data';
  if (!isGzip(bytes)) throw new IdxFormatError(`${where}: not gzip: expected magic 1f 8b, found ${hex(bytes.subarray(0, 2)) || 'nothing'}`);
  let out: Uint8Array | null;
  try {
    out = await (isNode() ? gunzipWithZlib(bytes, maxBytes) : gunzipWithDecompressionStream(bytes, maxBytes));
  } catch (e) {
    throw new IdxFormatError(`${where}: corrupt or truncated gzip data (${(e as Error).message})`, { cause: e });
  }
  if (!out) throw new IdxFormatError(`${where}: decompresses to more than ${maxBytes} bytes, the limit`);
  return out;
}

/** null when the output would pass `maxBytes`. */
async function gunzipWithZlib(bytes: Uint8Array, maxBytes: number): Promise<Uint8Array | null> {
  const zlib = await import('node:zlib');
  return new Promise((resolve, reject) =>
    zlib.gunzip(bytes, { maxOutputLength: maxBytes }, (err, out) =>
      err ? ((err as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE' ? resolve(null) : reject(err)) : resolve(new Uint8Array(out.buffer, out.byteOffset, out.byteLength)),
    ),
  );
}

/** The browser's path; exported so that Node tests can check it too. null when the output would pass `maxBytes`. */
export async function gunzipWithDecompressionStream(bytes: Uint8Array, maxBytes = MAX_DECOMPRESSED_BYTES): Promise<Uint8Array | null> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(new DecompressionStream('gzip'));
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > maxBytes) {
      await reader.cancel();
      return null;
    }
    chunks.push(value);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/**
 * Decodes IDX bytes that may be gzip-compressed (detected by the gzip magic number); decompressed
 * data past `maxBytes` is refused.
 */
export async function decodeIdx(bytes: Uint8Array, source?: string, maxBytes = MAX_DECOMPRESSED_BYTES): Promise<IdxArray> {
  return parseIdx(isGzip(bytes) ? await gunzip(bytes, source, maxBytes) : bytes, source);
}

/**
 * Reads an IDX file, gzip-compressed or not (Node only). A file: URL is typed by the fields used,
 * not as the global URL, so that the declarations compile in a project without DOM or Node types.
 */
export async function readIdxFile(path: string | { readonly href: string; readonly pathname: string }): Promise<IdxArray> {
  const { readFile } = await import('node:fs/promises');
  const bytes = await readFile(typeof path === 'string' ? path : new URL(path.href));
  const source = typeof path === 'string' ? path : decodeURIComponent(path.pathname);
  return decodeIdx(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), source);
}
