import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { writeFileAtomic } from '../src/io/atomic.js';
import {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensorsFile,
  writeSafetensorsFile,
  SafetensorsError,
  type SafetensorsDtype,
  type SafetensorsInput,
} from '../src/io/safetensors.js';

const GOLDEN = new URL('./fixtures/safetensors/golden.safetensors', import.meta.url);

/** The tensors of fixtures/safetensors/make-golden.py, as flatgrad would write them. */
const GOLDEN_INPUT: Record<string, SafetensorsInput> = {
  'layer.weight': { dtype: 'F32', shape: [2, 3], data: new Float32Array([1.5, -2.25, 0, -0, 0.1, 3.4028234663852886e38]) },
  'layer.bias': { dtype: 'F32', shape: [3], data: new Float32Array([Infinity, -Infinity, NaN]) },
  f64: { dtype: 'F64', shape: [2], data: new Float64Array([Math.PI, -1e300]) },
  half: { dtype: 'F16', shape: [2, 2], data: new Float32Array([1, -2, 65504, 2 ** -24]) },
  half_rounded: { dtype: 'F16', shape: [7], data: new Float32Array([0.1, 1 / 3, 1e5, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 3e-6, -7e-8]) },
  bf16: { dtype: 'BF16', shape: [3], data: new Float32Array([1, -2.5, 3.140625]) },
  steps: { dtype: 'I64', shape: [4], data: new Int32Array([0, -3, 2147483647, -2147483648]) },
  counts: { dtype: 'I32', shape: [3], data: new Int32Array([-2147483648, 0, 2147483647]) },
  i16: { dtype: 'I16', shape: [2], data: new Int16Array([-32768, 32767]) },
  i8: { dtype: 'I8', shape: [2], data: new Int8Array([-128, 127]) },
  pixels: { dtype: 'U8', shape: [2, 2], data: new Uint8Array([0, 1, 128, 255]) },
  mask: { dtype: 'BOOL', shape: [3], data: new Uint8Array([1, 0, 1]) },
  '0': { dtype: 'F32', shape: [], data: new Float32Array([42]) },
  empty: { dtype: 'F32', shape: [2, 0], data: new Float32Array(0) },
};

/** A file with the given header (JSON text or an object) and data buffer. */
function fileWith(header: string | object, data: Uint8Array = new Uint8Array(0), headerLength?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLength ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

const f32 = (begin: number, end: number, shape = [(end - begin) / 4]) => ({ dtype: 'F32', shape, data_offsets: [begin, end] });

function decodeError(bytes: Uint8Array): string {
  try {
    decodeSafetensors(bytes);
  } catch (e) {
    expect(e).toBeInstanceOf(SafetensorsError);
    return (e as Error).message;
  }
  throw new Error('expected decodeSafetensors to throw');
}

describe('safetensors against the reference implementation', () => {
  it('reads the golden file written by Hugging Face safetensors', async () => {
    const { tensors, metadata } = decodeSafetensors(new Uint8Array(await readFile(GOLDEN)));
    expect({ ...metadata }).toEqual({ format: 'pt' });
    expect(Object.keys(tensors).sort()).toEqual(Object.keys(GOLDEN_INPUT).sort());
    for (const [name, input] of Object.entries(GOLDEN_INPUT)) {
      expect(tensors[name].dtype, name).toBe(input.dtype);
      expect(tensors[name].shape, name).toEqual(input.shape);
    }
    const exact = Object.keys(GOLDEN_INPUT).filter((n) => n !== 'half_rounded');
    for (const name of exact) expect(Array.from(tensors[name].data), name).toEqual(Array.from(GOLDEN_INPUT[name].data as ArrayLike<number>));
    expect(tensors['layer.weight'].data).toBeInstanceOf(Float32Array);
    expect(tensors.half.data).toBeInstanceOf(Float32Array);
    expect(tensors.steps.data).toBeInstanceOf(Int32Array);
    expect(Object.is(tensors['layer.weight'].data[3], -0)).toBe(true);
    // numpy's float32 -> float16 conversion of GOLDEN_INPUT.half_rounded.
    expect(Array.from(tensors.half_rounded.data)).toEqual([
      0.0999755859375, 0.333251953125, Infinity, 1, 1.001953125, 2.9802322387695312e-6, -5.960464477539063e-8,
    ]);
  });

  it('writes the golden file byte for byte (order, header padding, float16 rounding)', async () => {
    const golden = new Uint8Array(await readFile(GOLDEN));
    expect(encodeSafetensors(GOLDEN_INPUT, { format: 'pt' })).toEqual(golden);
  });
});

describe('safetensors round trip', () => {
  const cases: [SafetensorsDtype, ArrayLike<number>][] = [
    ['F64', [0.1, -1e-310, 1e308, NaN]],
    ['F32', [Math.fround(0.1), -0, Infinity, 3]],
    ['F16', [0.5, -65504, 6.103515625e-5, 2 ** -24]],
    ['BF16', [1, -0.0078125, 3.3895313892515355e38, 2 ** -133]],
    ['I64', [0, -1, 2 ** 31 - 1, -(2 ** 31)]],
    ['I32', [5, -5, 2 ** 31 - 1, -(2 ** 31)]],
    ['I16', [1, -1, 32767, -32768]],
    ['I8', [1, -1, 127, -128]],
    ['U8', [0, 1, 200, 255]],
    ['BOOL', [0, 1, 1, 0]],
  ];
  it.each(cases)('%s', (dtype, values) => {
    const back = decodeSafetensors(encodeSafetensors({ t: { dtype, shape: [2, 2], data: Array.from(values) } }));
    expect(back.tensors.t.dtype).toBe(dtype);
    expect(back.tensors.t.shape).toEqual([2, 2]);
    expect(Array.from(back.tensors.t.data)).toEqual(Array.from(values));
  });

  it('keeps every float16 and bfloat16 bit pattern through decode and encode (NaN stays NaN)', () => {
    const formats = { F16: { exponent: 0x7c00, mantissa: 0x03ff }, BF16: { exponent: 0x7f80, mantissa: 0x007f } } as const;
    for (const [dtype, mask] of Object.entries(formats) as [SafetensorsDtype, { exponent: number; mantissa: number }][]) {
      const isNaNBits = (b: number) => (b & mask.exponent) === mask.exponent && (b & mask.mantissa) !== 0;
      const raw = new Uint8Array(new Uint16Array(Array.from({ length: 65536 }, (_, i) => i)).buffer);
      const decoded = decodeSafetensors(encodeSafetensors({ t: { dtype, shape: [65536], data: raw } })).tensors.t.data;
      const again = new Uint16Array(encodeSafetensors({ t: { dtype, shape: [65536], data: decoded } }).slice(-131072).buffer);
      for (let bits = 0; bits < 65536; bits++) {
        const ok = isNaNBits(bits) ? Number.isNaN(decoded[bits]) && isNaNBits(again[bits]) : again[bits] === bits;
        if (!ok) throw new Error(`${dtype} bits 0x${bits.toString(16)} came back as 0x${again[bits].toString(16)}`);
      }
    }
  });

  it('rounds float32 to float16 and bfloat16 to nearest even, overflowing to infinity', () => {
    const roundTrip = (dtype: SafetensorsDtype, values: number[]) =>
      Array.from(decodeSafetensors(encodeSafetensors({ t: { dtype, shape: [values.length], data: values } })).tensors.t.data);
    expect(roundTrip('F16', [1 + 2 ** -11, 1 + 3 * 2 ** -11, 65520, 65519, 2 ** -25, 3 * 2 ** -26])).toEqual([1, 1 + 2 ** -9, Infinity, 65504, 0, 2 ** -24]);
    expect(roundTrip('BF16', [1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20])).toEqual([1, 1 + 2 ** -6, 1 + 2 ** -7]);
  });

  it('writes I64 from a BigInt64Array and metadata, and keeps integer-like names', () => {
    const bytes = encodeSafetensors(
      { '10': { dtype: 'I64', shape: [2], data: new BigInt64Array([7n, -7n]) }, '2': { dtype: 'U8', shape: [1], data: [3] } },
      { b: '1', a: '2' },
    );
    const { tensors, metadata } = decodeSafetensors(bytes);
    expect(Array.from(tensors['10'].data)).toEqual([7, -7]);
    expect({ ...metadata }).toEqual({ b: '1', a: '2' });
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(headerLength % 8).toBe(0);
    expect(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength))).toMatch(/^\{"__metadata__":\{"b":"1","a":"2"\},"10":.*,"2":.*\} *$/);
  });

  it('reads tensors listed in any order and from an unaligned buffer', () => {
    const header = { b: f32(4, 8), a: f32(0, 4) };
    const file = fileWith(header, new Uint8Array(new Float32Array([1, 2]).buffer));
    const shifted = new Uint8Array(file.length + 1).subarray(1);
    shifted.set(file);
    const { tensors } = decodeSafetensors(shifted);
    expect([tensors.a.data[0], tensors.b.data[0]]).toEqual([1, 2]);
  });

  it('writes and reads files atomically', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'flatgrad-st-'));
    try {
      const path = join(dir, 'model.safetensors');
      await writeSafetensorsFile(path, GOLDEN_INPUT, { format: 'pt' });
      expect(new Uint8Array(await readFile(path))).toEqual(new Uint8Array(await readFile(GOLDEN)));
      expect(Array.from((await readSafetensorsFile(path)).tensors.counts.data)).toEqual([-2147483648, 0, 2147483647]);
      await writeFile(path, new Uint8Array(4));
      await expect(readSafetensorsFile(path)).rejects.toThrow(`${path}: file is 4 bytes`);
      expect(await readdir(dir)).toEqual(['model.safetensors']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('malformed safetensors files', () => {
  const data8 = new Uint8Array(8);

  it('rejects a file shorter than the length prefix', () => {
    expect(decodeError(new Uint8Array(3))).toMatch(/file is 3 bytes/);
  });

  it('rejects a header length larger than the file', () => {
    expect(decodeError(fileWith({}, data8, 1000n))).toMatch(/header length 1000 is larger than the file \(10 bytes after the length\)/);
    expect(decodeError(fileWith({}, data8, 2n ** 63n))).toMatch(/larger than the file/);
  });

  it('rejects a header that is not JSON, not an object or not UTF-8', () => {
    expect(decodeError(fileWith('{"a": '))).toMatch(/header is not valid JSON/);
    expect(decodeError(fileWith('[1, 2]'))).toMatch(/must be a JSON object starting with '\{'/);
    const bad = fileWith('{"\u00e9":1}');
    bad[10] = 0xff;
    expect(decodeError(bad)).toMatch(/not valid UTF-8/);
  });

  it('rejects entries with missing fields', () => {
    for (const field of ['dtype', 'shape', 'data_offsets']) {
      const entry: Record<string, unknown> = { ...f32(0, 8) };
      delete entry[field];
      expect(decodeError(fileWith({ w: entry }, data8))).toBe(`tensor 'w': missing field '${field}'`);
    }
    expect(decodeError(fileWith({ w: 3 }, data8))).toMatch(/tensor 'w': header entry must be an object/);
    expect(decodeError(fileWith({ w: { ...f32(0, 8), shape: [-2] } }, data8))).toMatch(/tensor 'w': shape must be an array of non-negative integers/);
    expect(decodeError(fileWith({ w: { ...f32(0, 8), data_offsets: [8, 0] } }, data8))).toMatch(/tensor 'w': data_offsets must be \[begin, end\]/);
  });

  it('rejects an unknown dtype, naming the tensor and the dtype', () => {
    expect(decodeError(fileWith({ w: { ...f32(0, 8), dtype: 'F8_E4M3' } }, data8))).toMatch(/tensor 'w': unknown dtype "F8_E4M3"/);
  });

  it('rejects a shape that does not match the offsets, with both sizes', () => {
    expect(decodeError(fileWith({ w: f32(0, 8, [3]) }, data8))).toBe(
      "tensor 'w': shape [3] of F32 needs 12 bytes, but data_offsets [0, 8] span 8",
    );
  });

  it('rejects out-of-bounds offsets', () => {
    expect(decodeError(fileWith({ w: f32(0, 16) }, data8))).toMatch(/tensor 'w': data_offsets \[0, 16\] are out of bounds of the 8-byte data buffer/);
  });

  it('rejects overlapping tensors, naming both', () => {
    expect(decodeError(fileWith({ a: f32(0, 8), b: f32(4, 8) }, data8))).toMatch(/tensors 'a' \[0, 8\] and 'b' \[4, 8\] overlap/);
    expect(decodeError(fileWith({ a: f32(0, 8), b: f32(0, 8) }, data8))).toMatch(/tensors 'a' .* and 'b' .* overlap/);
  });

  it('rejects gaps and uncovered trailing bytes', () => {
    expect(decodeError(fileWith({ a: f32(0, 4), b: f32(8, 12) }, new Uint8Array(12)))).toMatch(/bytes \[4, 8\) of the data buffer belong to no tensor \(gap before 'b'\)/);
    expect(decodeError(fileWith({ a: f32(0, 4) }, data8))).toMatch(/bytes \[4, 8\) at the end of the data buffer belong to no tensor/);
  });

  it('rejects duplicate names', () => {
    expect(decodeError(fileWith(`{"a":${JSON.stringify(f32(0, 4))},"a":${JSON.stringify(f32(4, 8))}}`, data8))).toBe("duplicate name 'a' in header");
  });

  it('rejects metadata that is not a map of strings', () => {
    expect(decodeError(fileWith({ __metadata__: { epoch: 3 } }))).toMatch(/metadata 'epoch' must be a string, got 3/);
    expect(decodeError(fileWith({ __metadata__: [] }))).toMatch(/'__metadata__' must be an object of strings/);
  });

  it('rejects I64 values that do not fit in int32, naming the tensor', () => {
    const bytes = encodeSafetensors({ steps: { dtype: 'I64', shape: [2], data: new BigInt64Array([1n, 5000000000n]) } });
    expect(decodeError(bytes)).toBe("tensor 'steps' (I64): value 5000000000 at index 1 does not fit in int32");
  });

  it('accepts the empty file that the reference writes for no tensors', () => {
    const empty = encodeSafetensors({});
    expect(Array.from(empty)).toEqual([8, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x7d, 32, 32, 32, 32, 32, 32]);
    expect(Object.keys(decodeSafetensors(empty).tensors)).toEqual([]);
  });
});

describe('encodeSafetensors argument errors', () => {
  const encodeError = (tensors: Record<string, unknown>, metadata?: Record<string, unknown>) =>
    expect(() => encodeSafetensors(tensors as Record<string, SafetensorsInput>, metadata as Record<string, string>));

  it('names the tensor and the problem', () => {
    encodeError({ w: { dtype: 'F12', shape: [1], data: [1] } }).toThrow(`tensor 'w': unknown dtype "F12"`);
    encodeError({ w: { dtype: 'F32', shape: [2, 2], data: [1, 2, 3] } }).toThrow(`tensor 'w': shape [2, 2] holds 4 values, data has 3`);
    encodeError({ w: { dtype: 'F32', shape: [2], data: new Uint8Array(7) } }).toThrow(`tensor 'w': shape [2] of F32 needs 8 bytes, the raw data has 7`);
    encodeError({ w: { dtype: 'I32', shape: [2], data: new Float32Array([1, 1.5]) } }).toThrow(`tensor 'w': value 1.5 at index 1 is not an integer`);
    encodeError({ w: { dtype: 'U8', shape: [1], data: new Int32Array([256]) } }).toThrow(`tensor 'w': value 256 at index 0 is not an integer in [0, 255]`);
    encodeError({ w: { dtype: 'BOOL', shape: [1], data: new Uint8Array([2]) } }).toThrow(`tensor 'w': value 2 at index 0 is not 0 or 1`);
    encodeError({ w: { dtype: 'F32', shape: [1.5], data: [1] } }).toThrow(`tensor 'w': shape must be an array of non-negative integers`);
    encodeError({ w: { dtype: 'F32', shape: [1], data: new BigInt64Array(1) } }).toThrow(`tensor 'w': a BigInt64Array can only be written as I64`);
    encodeError({ __metadata__: { dtype: 'F32', shape: [], data: [1] } }).toThrow(`reserved for metadata`);
    encodeError({}, { step: 3 }).toThrow(`metadata 'step' must be a string, got number`);
  });
});

describe('writeFileAtomic', () => {
  let dir: string;
  let target: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'flatgrad-atomic-'));
    target = join(dir, 'checkpoint.safetensors');
    await writeFileAtomic(target, new TextEncoder().encode('previous'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('replaces the file and leaves nothing else behind', async () => {
    await writeFileAtomic(target, [new Uint8Array([1, 2]), new Uint8Array([3])]);
    expect(Array.from(await readFile(target))).toEqual([1, 2, 3]);
    expect(await readdir(dir)).toEqual(['checkpoint.safetensors']);
  });

  it('keeps the previous file and removes its temporary file when the data source fails midway', async () => {
    async function* failing(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array(1 << 16).fill(1);
      throw new Error('disk on fire');
    }
    await expect(writeFileAtomic(target, failing())).rejects.toThrow('disk on fire');
    expect(await readFile(target, 'utf8')).toBe('previous');
    expect(await readdir(dir)).toEqual(['checkpoint.safetensors']);
  });

  it('keeps the previous file and removes its temporary file when the rename fails', async () => {
    const blocked = join(dir, 'occupied');
    await mkdir(join(blocked, 'child'), { recursive: true });
    await expect(writeFileAtomic(blocked, new Uint8Array(3))).rejects.toThrow();
    expect((await readdir(dir)).sort()).toEqual(['checkpoint.safetensors', 'occupied']);
  });

  it('keeps the previous file when the writing process is killed mid-write', async () => {
    const bundle = join(dir, 'atomic.mjs');
    await build({ entryPoints: [new URL('../src/io/atomic.ts', import.meta.url).pathname], bundle: true, platform: 'node', format: 'esm', outfile: bundle, logLevel: 'error' });
    const child = join(dir, 'child.mjs');
    await writeFile(
      child,
      `import { writeFileAtomic } from './atomic.mjs';
       async function* stalls() {
         yield new Uint8Array(1 << 20).fill(7);
         console.log('first chunk written');
         await new Promise(() => setInterval(() => {}, 1000));
       }
       await writeFileAtomic(process.argv[2], stalls());`,
    );
    const proc = spawn(process.execPath, [child, target], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((resolve) => proc.on('exit', resolve));
    await new Promise<void>((resolve, reject) => {
      proc.stdout.on('data', (d: Buffer) => d.toString().includes('first chunk written') && resolve());
      proc.on('exit', () => reject(new Error('child exited before writing')));
    });
    const temporary = (await readdir(dir)).filter((f) => f.endsWith('.tmp'));
    expect(temporary).toHaveLength(1);
    expect((await readFile(join(dir, temporary[0]))).length).toBe(1 << 20);
    proc.kill('SIGKILL');
    await exited;
    expect(await readFile(target, 'utf8')).toBe('previous');
  });
});
