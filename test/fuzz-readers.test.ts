/**
 * Mutation fuzzing (fast-check, seeded) of every reader of outside input: safetensors, IDX (plain
 * and gzip), checkpoints and the CLI's command lines. A valid input is built, then damaged (bits
 * flipped, bytes cut, inserted or overwritten, length fields and headers replaced, JSON state
 * swapped for arbitrary JSON); each reader must either accept the result, consistently, or refuse
 * it with its named error (SafetensorsError, IdxFormatError, CheckpointError, UsageError): never
 * a TypeError, a RangeError from an allocation, a hang or a crash. Inputs that claim terabytes are
 * refused before anything is allocated for them (an allocation that large would throw a
 * RangeError instead of the named error).
 */
import fc from 'fast-check';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { init, tensor } from '../src/index.js';
import { decodeSafetensors, encodeSafetensors, SafetensorsError, type SafetensorsDtype, type SafetensorsInput } from '../src/io/safetensors.js';
import { CheckpointError, decodeCheckpoint, disposeCheckpoint, saveCheckpoint } from '../src/io/checkpoint.js';
import { decodeIdx, encodeIdx, IdxFormatError, parseIdx, type IdxArray, type IdxDtype } from '../src/data/idx.js';
import { UsageError, kebab, parseFlags } from '../src/cli/args.js';
import { COMMANDS } from '../src/cli/commands/index.js';
import { TRAIN_FLAGS, resolveTrainConfig } from '../src/cli/config.js';

const SEED = 20261129;
const RUNS = 2000;

// ------------------------------------------------------------------------------ byte mutations

type Mutation =
  | { kind: 'flip'; at: number[]; bits: number[] }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'overwrite'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; count: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.array(fc.nat(), { minLength: 1, maxLength: 8 }), bits: fc.array(fc.integer({ min: 0, max: 7 }), { minLength: 8, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ kind: fc.constant('overwrite' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 16 }) }),
);

function mutate(input: Uint8Array, m: Mutation): Uint8Array {
  const n = Math.max(1, input.length);
  const out = input.slice();
  switch (m.kind) {
    case 'flip':
      m.at.forEach((a, i) => {
        if (out.length) out[a % out.length] ^= 1 << m.bits[i];
      });
      return out;
    case 'truncate':
      return out.subarray(0, m.at % n);
    case 'insert': {
      const at = m.at % (input.length + 1);
      return Uint8Array.from([...input.subarray(0, at), ...m.bytes, ...input.subarray(at)]);
    }
    case 'overwrite': {
      const at = m.at % n;
      m.bytes.forEach((b, i) => {
        if (at + i < out.length) out[at + i] = b;
      });
      return out;
    }
    case 'delete': {
      const at = m.at % n;
      return Uint8Array.from([...input.subarray(0, at), ...input.subarray(at + m.count)]);
    }
  }
}

/** Runs `read`; a throw must be an instance of `named`. Returns the result, or null when refused. */
function acceptOrRefuse<T>(read: () => T, ...named: (abstract new (...a: never[]) => Error)[]): T | null {
  try {
    return read();
  } catch (e) {
    if (!named.some((N) => e instanceof N)) throw new Error(`expected ${named.map((N) => N.name).join(' or ')}, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`, { cause: e });
    return null;
  }
}

async function acceptOrRefuseAsync<T>(read: () => Promise<T>, ...named: (abstract new (...a: never[]) => Error)[]): Promise<T | null> {
  try {
    return await read();
  } catch (e) {
    if (!named.some((N) => e instanceof N)) throw new Error(`expected ${named.map((N) => N.name).join(' or ')}, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`, { cause: e });
    return null;
  }
}

const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

// ---------------------------------------------------------------------------------- safetensors

const ST_DTYPES: SafetensorsDtype[] = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL'];
const shapeArb = fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 });
const safetensorsArb = fc
  .dictionary(fc.string({ minLength: 1, maxLength: 6 }), fc.record({ dtype: fc.constantFrom(...ST_DTYPES), shape: shapeArb }), { maxKeys: 4 })
  .map((spec) => {
    const tensors: Record<string, SafetensorsInput> = {};
    for (const [name, { dtype, shape }] of Object.entries(spec)) {
      tensors[name] = { dtype, shape, data: Array.from({ length: numel(shape) }, (_, i) => (dtype === 'BOOL' ? i % 2 : i % 100)) };
    }
    return encodeSafetensors(tensors, { note: 'fuzz' });
  });

/** A header replaced by another JSON text (arbitrary values, or entries with wild fields). */
const wildEntry = fc.record({
  dtype: fc.oneof(fc.constantFrom(...ST_DTYPES), fc.string()),
  shape: fc.oneof(fc.array(fc.oneof(fc.nat(), fc.constantFrom(2 ** 32, 2 ** 53, -1, 1.5, 1e300)), { maxLength: 4 }), fc.jsonValue()),
  data_offsets: fc.oneof(fc.tuple(fc.nat(), fc.nat()), fc.tuple(fc.constant(0), fc.constantFrom(2 ** 40, 2 ** 53, 2 ** 64, 8e18)), fc.jsonValue()),
});
const headerArb = fc.oneof(fc.jsonValue(), fc.dictionary(fc.string({ maxLength: 6 }), fc.oneof(wildEntry, fc.jsonValue()), { maxKeys: 4 }));

function withHeader(header: string, data: Uint8Array, claimedLength?: bigint): Uint8Array {
  const json = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, claimedLength ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function checkDecoded(bytes: Uint8Array): void {
  const file = acceptOrRefuse(() => decodeSafetensors(bytes), SafetensorsError);
  if (!file) return;
  for (const [name, t] of Object.entries(file.tensors)) {
    if (t.data.length !== numel(t.shape)) throw new Error(`accepted tensor '${name}' holds ${t.data.length} values for shape [${t.shape}]`);
  }
}

describe('safetensors reader', () => {
  it('accepts or refuses (SafetensorsError) every mutation of a valid file', () => {
    fc.assert(fc.property(safetensorsArb, fc.array(mutation, { minLength: 1, maxLength: 3 }), (file, ms) => checkDecoded(ms.reduce(mutate, file))), { seed: SEED, numRuns: RUNS });
  });

  it('refuses arbitrary headers and header lengths with SafetensorsError', () => {
    fc.assert(
      fc.property(headerArb, fc.uint8Array({ maxLength: 64 }), fc.option(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })), (header, data, claimed) => {
        checkDecoded(withHeader(JSON.stringify(header), data, claimed ?? undefined));
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it('refuses headers that claim terabytes before allocating', () => {
    const huge = [
      withHeader('{}', new Uint8Array(8), 2n ** 63n),
      withHeader(JSON.stringify({ t: { dtype: 'F64', shape: [1e6, 1e6, 1e6], data_offsets: [0, 8e18] } }), new Uint8Array(8)),
      withHeader(JSON.stringify({ t: { dtype: 'F64', shape: [2 ** 40], data_offsets: [0, 2 ** 43] } }), new Uint8Array(8)),
    ];
    for (const bytes of huge) expect(() => decodeSafetensors(bytes)).toThrow(SafetensorsError);
  });
});

// ------------------------------------------------------------------------------------------ IDX

const IDX_DTYPES: IdxDtype[] = ['uint8', 'int8', 'int16', 'int32', 'float32', 'float64'];
const idxArb = fc.record({ dtype: fc.constantFrom(...IDX_DTYPES), shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 }) }).map(({ dtype, shape }) => {
  const n = numel(shape);
  const Array_ = { uint8: Uint8Array, int8: Int8Array, int16: Int16Array, int32: Int32Array, float32: Float32Array, float64: Float64Array }[dtype] as new (n: number) => IdxArray['data'];
  const data = new Array_(n);
  for (let i = 0; i < n; i++) data[i] = i % 100;
  return encodeIdx({ dtype, shape, data } as IdxArray);
});

function checkIdx(bytes: Uint8Array): void {
  const a = acceptOrRefuse(() => parseIdx(bytes), IdxFormatError);
  if (a && a.data.length !== numel(a.shape)) throw new Error(`accepted IDX holds ${a.data.length} values for shape [${a.shape}]`);
}

describe('IDX reader', () => {
  it('accepts or refuses (IdxFormatError) every mutation of a valid file', () => {
    fc.assert(fc.property(idxArb, fc.array(mutation, { minLength: 1, maxLength: 3 }), (file, ms) => checkIdx(ms.reduce(mutate, file))), { seed: SEED, numRuns: RUNS });
  });

  it('refuses arbitrary headers with IdxFormatError', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }), fc.array(fc.oneof(fc.nat(), fc.constant(0xffffffff)), { maxLength: 6 }), fc.uint8Array({ maxLength: 32 }), (code, dims, data) => {
        const head = new Uint8Array(4 + 4 * dims.length);
        head[2] = code;
        head[3] = dims.length;
        dims.forEach((d, i) => new DataView(head.buffer).setUint32(4 + 4 * i, d >>> 0));
        checkIdx(Uint8Array.from([...head, ...data]));
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it('accepts or refuses damaged gzip files', async () => {
    await fc.assert(
      fc.asyncProperty(idxArb, fc.array(mutation, { maxLength: 2 }), fc.array(mutation, { maxLength: 2 }), async (file, inner, outer) => {
        const gz = outer.reduce(mutate, new Uint8Array(gzipSync(inner.reduce(mutate, file))));
        await acceptOrRefuseAsync(() => decodeIdx(gz), IdxFormatError);
      }),
      { seed: SEED, numRuns: 300 },
    );
  });

  it('refuses a header that claims terabytes, and a gzip bomb past the limit', async () => {
    const claim = new Uint8Array(4 + 12);
    claim[2] = 0x0e;
    claim[3] = 3;
    for (let i = 0; i < 3; i++) new DataView(claim.buffer).setUint32(4 + 4 * i, 0xffffffff);
    expect(() => parseIdx(claim)).toThrow(IdxFormatError);
    // 4 MB of zeros compress to about 4 KB; with a 1 MB limit decompression stops there.
    const bomb = new Uint8Array(gzipSync(new Uint8Array(4 << 20)));
    await expect(decodeIdx(bomb, 'bomb.gz', 1 << 20)).rejects.toThrow(/decompresses to more than 1048576 bytes/);
    await expect(decodeIdx(bomb, 'bomb.gz', 1 << 20)).rejects.toBeInstanceOf(IdxFormatError);
  });
});

// ---------------------------------------------------------------------------------- checkpoints

describe('checkpoint reader', () => {
  let valid: Uint8Array;
  let dir: string;

  beforeAll(async () => {
    await init({ backend: 'cpu' });
    dir = await mkdtemp(join(tmpdir(), 'flatgrad-fuzz-'));
    const path = join(dir, 'c.safetensors');
    await saveCheckpoint(path, {
      model: { 'fc.weight': tensor([[1, 2], [3, 4]]), 'fc.bias': tensor([0.5, -0.5]) },
      optimizer: { step: 3, state: { momentum: tensor([1, 2, 3, 4]) }, groups: [{ lr: 0.1, initial_lr: Infinity }] },
      rng: { seed: 1, draws: 7 },
      meta: { config: { model: 'mlp' }, history: { epochs: [] }, counts: new Float64Array([1, 2]) },
    });
    valid = new Uint8Array(await readFile(path));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const read = (bytes: Uint8Array): void => {
    const c = acceptOrRefuse(() => decodeCheckpoint(bytes, 'fuzz.safetensors'), CheckpointError, SafetensorsError);
    if (c) disposeCheckpoint(c);
  };

  it('reads the valid file', () => {
    const c = decodeCheckpoint(valid);
    expect(Object.keys(c.model).sort()).toEqual(['fc.bias', 'fc.weight']);
    expect((c.optimizer as { groups: { initial_lr: number }[] }).groups[0].initial_lr).toBe(Infinity);
    disposeCheckpoint(c);
  });

  it('accepts or refuses (CheckpointError, SafetensorsError) every mutation of a valid file', () => {
    fc.assert(fc.property(fc.array(mutation, { minLength: 1, maxLength: 3 }), (ms) => read(ms.reduce(mutate, valid))), { seed: SEED, numRuns: RUNS });
  });

  it('accepts or refuses arbitrary state JSON, references to missing or odd entries included', () => {
    const ref = fc.oneof(
      fc.record({ $tensor: fc.oneof(fc.constantFrom('model.fc.weight', 'optimizer.state.momentum', 'meta.counts', 'nope'), fc.string()) }),
      fc.record({ $array: fc.constantFrom('meta.counts', 'model.fc.bias', 'missing'), type: fc.oneof(fc.constantFrom('Float32Array', 'Int32Array', 'Uint8Array', 'Map'), fc.string()) }),
      fc.record({ $number: fc.oneof(fc.constantFrom('Infinity', '-Infinity', 'NaN'), fc.string()) }),
    );
    const { tree } = fc.letrec((tie) => ({
      tree: fc.oneof({ depthSize: 'small' }, fc.jsonValue({ maxDepth: 2 }), ref, fc.array(tie('tree'), { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 5 }), tie('tree'), { maxKeys: 3 })),
    }));
    const entries = decodeSafetensors(valid);
    fc.assert(
      fc.property(fc.oneof(tree, fc.record({ optimizer: tree, rng: tree, meta: tree })), fc.constantFrom('1', '2', 'x'), (state, version) => {
        const inputs: Record<string, SafetensorsInput> = {};
        for (const [k, t] of Object.entries(entries.tensors)) inputs[k] = { dtype: t.dtype, shape: t.shape, data: t.data as SafetensorsInput['data'] };
        read(encodeSafetensors(inputs, { format: 'flatgrad-checkpoint', version, state: JSON.stringify(state) ?? 'null' }));
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it('refuses state nested deeper than the stack allows with CheckpointError', () => {
    const deep = '['.repeat(100_000) + ']'.repeat(100_000);
    const file = decodeSafetensors(valid);
    const inputs = Object.fromEntries(Object.entries(file.tensors).map(([k, t]) => [k, { dtype: t.dtype, shape: t.shape, data: t.data as SafetensorsInput['data'] }]));
    expect(() => decodeCheckpoint(encodeSafetensors(inputs, { format: 'flatgrad-checkpoint', version: '1', state: `{"meta":${deep}}` }))).toThrow(CheckpointError);
  });
});

// ------------------------------------------------------------------------------------------ CLI

describe('command-line parsing', () => {
  const names = [...new Set(COMMANDS.flatMap((c) => Object.keys(c.flags).map(kebab)))];
  const token = fc.oneof(
    fc.constantFrom(...names.map((n) => `--${n}`)),
    fc.tuple(fc.constantFrom(...names), fc.string({ maxLength: 8 })).map(([n, v]) => `--${n}=${v}`),
    fc.constantFrom('--help', '-h', '--', '-', '--=', '---x', '-1', '0', '1', '1e309', 'NaN', '-0', '0x10', '2.5', '', ' ', 'sgd,sam', 'sam:rho=0.1', ':::', 'a=b=c'),
    fc.string({ maxLength: 10 }),
  );

  it('parses or refuses (UsageError) arbitrary command lines for every command', () => {
    fc.assert(
      fc.property(fc.constantFrom(...COMMANDS), fc.array(token, { maxLength: 10 }), (cmd, argv) => {
        const parsed = acceptOrRefuse(() => parseFlags(argv, cmd.flags), UsageError);
        if (parsed && cmd.name === 'train') {
          acceptOrRefuse(() => resolveTrainConfig(parsed.flags as Parameters<typeof resolveTrainConfig>[0], parsed.given as Set<string>), UsageError);
        }
      }),
      { seed: SEED, numRuns: 3000 },
    );
  });

  it('refuses every train flag given a value of the wrong kind with UsageError', () => {
    fc.assert(
      fc.property(fc.constantFrom(...Object.keys(TRAIN_FLAGS).map(kebab)), fc.string({ maxLength: 12 }), (name, value) => {
        const parsed = acceptOrRefuse(() => parseFlags([`--${name}=${value}`], TRAIN_FLAGS), UsageError);
        if (parsed) acceptOrRefuse(() => resolveTrainConfig(parsed.flags, parsed.given as Set<string>), UsageError);
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });
});
