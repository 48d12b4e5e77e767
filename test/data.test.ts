import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ArrayDataset,
  DataLoader,
  DEFAULT_FASHION_MNIST_DIR,
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_MEAN,
  FASHION_MNIST_STD,
  IdxFormatError,
  SeededRng,
  addSymmetricLabelNoise,
  cropAndFlip,
  decodeIdx,
  gunzip,
  gunzipWithDecompressionStream,
  encodeIdx,
  fashionMnistDataset,
  horizontalFlip,
  loadFashionMnist,
  loadShippedSubset,
  normalize,
  parseIdx,
  randomCrop,
  readIdxFile,
  selectClassBalanced,
  type Batch,
  type IdxArray,
} from '../src/data/index.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'flatgrad-data-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function classCounts(labels: ArrayLike<number>, numClasses = 10): number[] {
  const counts = new Array<number>(numClasses).fill(0);
  for (let i = 0; i < labels.length; i++) counts[labels[i]]++;
  return counts;
}

function expectThrows(fn: () => unknown, message: string | RegExp): void {
  expect(fn).toThrow(message);
}

describe('IDX reader', () => {
  it('parses a hand-built ubyte file', () => {
    const bytes = new Uint8Array([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 255]);
    const { dtype, shape, data } = parseIdx(bytes);
    expect(dtype).toBe('uint8');
    expect(shape).toEqual([2, 3]);
    expect(Array.from(data)).toEqual([1, 2, 3, 4, 5, 255]);
  });

  it('parses hand-built big-endian int32, float32 and int16 files', () => {
    const int32 = parseIdx(new Uint8Array([0, 0, 0x0c, 1, 0, 0, 0, 2, 0xff, 0xff, 0xff, 0xfe, 0, 0, 1, 0]));
    expect([int32.dtype, Array.from(int32.data)]).toEqual(['int32', [-2, 256]]);
    const float32 = parseIdx(new Uint8Array([0, 0, 0x0d, 1, 0, 0, 0, 1, 0x3f, 0xc0, 0, 0]));
    expect([float32.dtype, Array.from(float32.data)]).toEqual(['float32', [1.5]]);
    const int16 = parseIdx(new Uint8Array([0, 0, 0x0b, 1, 0, 0, 0, 1, 0x80, 0x00]));
    expect([int16.dtype, Array.from(int16.data)]).toEqual(['int16', [-32768]]);
  });

  it('round-trips every type through encodeIdx, plain and gzipped', async () => {
    const arrays: IdxArray[] = [
      { dtype: 'uint8', shape: [2, 2], data: new Uint8Array([0, 1, 128, 255]) },
      { dtype: 'int8', shape: [3], data: new Int8Array([-128, 0, 127]) },
      { dtype: 'int16', shape: [1, 2], data: new Int16Array([-300, 300]) },
      { dtype: 'int32', shape: [2], data: new Int32Array([-(2 ** 31), 2 ** 31 - 1]) },
      { dtype: 'float32', shape: [2, 1, 1], data: new Float32Array([0.1, -Infinity]) },
      { dtype: 'float64', shape: [2], data: new Float64Array([Math.PI, -0]) },
    ];
    for (const array of arrays) {
      const plain = encodeIdx(array);
      for (const bytes of [plain, gzipSync(plain)]) {
        const back = await decodeIdx(bytes);
        expect(back.dtype).toBe(array.dtype);
        expect(back.shape).toEqual(array.shape);
        expect(back.data).toEqual(array.data);
      }
    }
  });

  it('decompresses with DecompressionStream (the browser path) as with zlib', async () => {
    const plain = encodeIdx({ dtype: 'uint8', shape: [1000], data: Uint8Array.from({ length: 1000 }, (_, i) => i % 7) });
    const gz = gzipSync(plain);
    expect(await gunzipWithDecompressionStream(gz)).toEqual(plain);
    expect(await gunzip(gz)).toEqual(plain);
    await expect(gunzipWithDecompressionStream(gz.subarray(0, gz.length - 12))).rejects.toThrow();
    await expect(gunzip(plain, 'f.idx')).rejects.toThrow('gzip file f.idx: not gzip: expected magic 1f 8b, found 00 00');
  });

  it('reads gzipped and plain files from disk', async () => {
    const bytes = encodeIdx({ dtype: 'uint8', shape: [3], data: new Uint8Array([7, 8, 9]) });
    await writeFile(join(dir, 'plain-idx1-ubyte'), bytes);
    await writeFile(join(dir, 'gz-idx1-ubyte.gz'), gzipSync(bytes));
    expect(Array.from((await readIdxFile(join(dir, 'plain-idx1-ubyte'))).data)).toEqual([7, 8, 9]);
    expect(Array.from((await readIdxFile(join(dir, 'gz-idx1-ubyte.gz'))).data)).toEqual([7, 8, 9]);
  });

  it('reports a bad magic number with the bytes found and the file', async () => {
    const path = join(dir, 'not-idx.gz');
    await writeFile(path, gzipSync(new TextEncoder().encode('<html>404</html>')));
    await expect(readIdxFile(path)).rejects.toThrow(`IDX file ${path}: bad magic number: expected 00 00 <type> <ndims>, found 3c 68 74 6d`);
    expectThrows(() => parseIdx(gzipSync(new Uint8Array(4)), 'x.gz'), /found 1f 8b 08 00 \(this is gzip data/);
    expectThrows(() => parseIdx(new Uint8Array(0)), /found nothing \(empty file\)/);
  });

  it('reports an unknown type code', () => {
    expectThrows(() => parseIdx(new Uint8Array([0, 0, 0x0a, 1, 0, 0, 0, 0])), /unknown type code 0x0a; known codes: 0x08 \(uint8\)/);
  });

  it('reports truncated files: header, data and gzip stream', async () => {
    expectThrows(() => parseIdx(new Uint8Array([0, 0, 8, 3, 0, 0, 0, 1])), 'truncated header: 3 dimensions need 16 bytes, got 8');
    const images = encodeIdx({ dtype: 'uint8', shape: [2, 28, 28], data: new Uint8Array(2 * 784) });
    expectThrows(() => parseIdx(images.subarray(0, 1000), 'a-images'), 'IDX file a-images: truncated: shape [2, 28, 28] of uint8 needs 1568 bytes of data, got 984');
    expectThrows(() => parseIdx(new Uint8Array([...images, 0, 0])), /2 unexpected bytes after the data/);
    const path = join(dir, 'cut-idx3-ubyte.gz');
    const gz = gzipSync(images);
    await writeFile(path, gz.subarray(0, gz.length - 12));
    await expect(readIdxFile(path)).rejects.toThrow(`gzip file ${path}: corrupt or truncated gzip data`);
    await expect(readIdxFile(path)).rejects.toBeInstanceOf(IdxFormatError);
  });
});

describe('Fashion-MNIST', () => {
  async function writeSet(name: string, images: IdxArray, labels: IdxArray): Promise<string> {
    const setDir = join(dir, name);
    await import('node:fs/promises').then((fs) => fs.mkdir(setDir, { recursive: true }));
    await writeFile(join(setDir, 'train-images-idx3-ubyte.gz'), gzipSync(encodeIdx(images)));
    await writeFile(join(setDir, 'train-labels-idx1-ubyte.gz'), gzipSync(encodeIdx(labels)));
    return setDir;
  }
  const images = (n: number): IdxArray => ({ dtype: 'uint8', shape: [n, 28, 28], data: new Uint8Array(n * 784) });
  const labels = (values: number[]): IdxArray => ({ dtype: 'uint8', shape: [values.length], data: Uint8Array.from(values) });

  it('names the ten classes', () => {
    expect(FASHION_MNIST_CLASSES).toHaveLength(10);
    expect([FASHION_MNIST_CLASSES[0], FASHION_MNIST_CLASSES[9]]).toEqual(['T-shirt/top', 'Ankle boot']);
  });

  it('rejects mismatched image and label counts, naming both files', async () => {
    const setDir = await writeSet('mismatch', images(3), labels([1, 2]));
    await expect(loadFashionMnist({ dir: setDir, split: 'train' })).rejects.toThrow(
      `mismatched counts: ${join(setDir, 'train-images-idx3-ubyte.gz')} has 3 images but ${join(setDir, 'train-labels-idx1-ubyte.gz')} has 2 labels`,
    );
  });

  it('rejects labels outside the classes, wrong image shapes and bad options', async () => {
    const badLabel = await writeSet('bad-label', images(2), labels([1, 10]));
    await expect(loadFashionMnist({ dir: badLabel, split: 'train' })).rejects.toThrow(/label 10 at index 1 is not a class/);
    const setDir = join(dir, 'bad-shape');
    await writeSet('bad-shape', { dtype: 'uint8', shape: [1, 27, 28], data: new Uint8Array(27 * 28) }, labels([1]));
    await expect(loadFashionMnist({ dir: setDir, split: 'train' })).rejects.toThrow(/expected uint8 images of shape \[n, 28, 28\], got uint8 \[1, 27, 28\]/);
    await expect(loadFashionMnist({ dir: setDir, split: 'val' as 'train' })).rejects.toThrow(`split must be 'train' or 'test', got "val"`);
    await expect(loadFashionMnist({ dir: setDir, split: 'train', limt: 3 } as never)).rejects.toThrow(`unknown option "limt"`);
    await expect(loadFashionMnist({ dir: join(dir, 'missing'), split: 'train' })).rejects.toThrow(/ENOENT/);
  });

  it('loads the shipped subset: 6,000 + 1,000 images, class-balanced', async () => {
    const train = await loadShippedSubset({ split: 'train' });
    const test = await loadShippedSubset({ split: 'test' });
    expect([train.n, train.rows, train.cols, train.images.length, train.labels.length]).toEqual([6000, 28, 28, 6000 * 784, 6000]);
    expect(classCounts(train.labels)).toEqual(new Array(10).fill(600));
    expect([test.n, test.images.length]).toEqual([1000, 1000 * 784]);
    expect(classCounts(test.labels)).toEqual(new Array(10).fill(100));
    expect(train.classes).toBe(FASHION_MNIST_CLASSES);
    expect((await loadShippedSubset({ split: 'test', limit: 10 })).labels).toEqual(test.labels.subarray(0, 10));
  });

  it.skipIf(!existsSync(DEFAULT_FASHION_MNIST_DIR))('loads the full set from Debian\'s dataset-fashion-mnist, and the subset is its first 600/100 per class', async () => {
    const train = await loadFashionMnist({ split: 'train' });
    const test = await loadFashionMnist({ split: 'test' });
    expect([train.n, test.n]).toEqual([60000, 10000]);
    expect(classCounts(train.labels)).toEqual(new Array(10).fill(6000));
    expect(classCounts(test.labels)).toEqual(new Array(10).fill(1000));
    const subset = await loadShippedSubset({ split: 'train' });
    const keep = selectClassBalanced(train.labels, 600, 10);
    expect(subset.labels).toEqual(Uint8Array.from(keep, (i) => train.labels[i]));
    const last = keep[keep.length - 1];
    expect(subset.images.subarray(-784)).toEqual(train.images.subarray(last * 784, (last + 1) * 784));
  });

  it('builds a normalized [1, 28, 28] dataset', async () => {
    const set = fashionMnistDataset(await loadShippedSubset({ split: 'train' }));
    expect([set.length, ...set.featureShape]).toEqual([6000, 1, 28, 28]);
    let sum = 0;
    let sq = 0;
    for (const v of set.features) {
      sum += v;
      sq += v * v;
    }
    const mean = sum / set.features.length;
    expect(Math.abs(mean)).toBeLessThan(0.05);
    expect(Math.abs(Math.sqrt(sq / set.features.length - mean * mean) - 1)).toBeLessThan(0.05);
  });
});

describe('selectClassBalanced', () => {
  it('takes the first k of each class in file order', () => {
    expect(Array.from(selectClassBalanced([1, 0, 1, 1, 0, 0], 2, 2))).toEqual([0, 1, 2, 4]);
  });
  it('says which class is short', () => {
    expectThrows(() => selectClassBalanced([0, 0, 1], 2, 2), 'class 1 has only 1 examples, 2 requested');
    expectThrows(() => selectClassBalanced([0, 3], 1, 2), 'label 3 at index 1 is outside [0, 2)');
  });
});

describe('normalize', () => {
  it('scales to [0, 1] and standardizes', () => {
    const out = normalize(new Uint8Array([0, 255, 51]), FASHION_MNIST_MEAN, FASHION_MNIST_STD);
    expect(out[0]).toBeCloseTo(-0.286 / 0.353, 6);
    expect(out[1]).toBeCloseTo((1 - 0.286) / 0.353, 6);
    expect(out[2]).toBeCloseTo((0.2 - 0.286) / 0.353, 6);
    expect(Array.from(normalize(new Uint8Array([0, 255]), 0, 1))).toEqual([0, 1]);
  });
  it('rejects a non-positive or non-finite std', () => {
    expectThrows(() => normalize(new Uint8Array(1), 0, 0), 'normalize: std must be positive, got 0');
    expectThrows(() => normalize(new Uint8Array(1), NaN, 1), 'normalize: mean must be a finite number, got NaN');
  });
});

describe('SeededRng', () => {
  it('is deterministic, resumable and differs across seeds and streams', () => {
    const draw = (rng: SeededRng) => Array.from({ length: 5 }, () => rng.uniform());
    const a = draw(new SeededRng(1));
    expect(draw(new SeededRng(1))).toEqual(a);
    expect(draw(new SeededRng(2))).not.toEqual(a);
    expect(draw(new SeededRng(1, 0))).not.toEqual(a);
    expect(draw(new SeededRng(1, 0))).not.toEqual(draw(new SeededRng(1, 1)));
    const rng = new SeededRng(9);
    draw(rng);
    const state = rng.getState();
    const next = draw(rng);
    rng.setState(state);
    expect(draw(rng)).toEqual(next);
    for (const u of draw(new SeededRng(3))) expect(u >= 0 && u < 1).toBe(true);
    expectThrows(() => new SeededRng(-1), 'SeededRng: seed must be a non-negative integer, got -1');
  });
});

describe('DataLoader', () => {
  const n = 103;
  const featureShape = [2, 3];
  const features = Float32Array.from({ length: n * 6 }, (_, i) => i);
  const dataset = new ArrayDataset(features, featureShape, Int32Array.from({ length: n }, (_, i) => i % 10));
  const epochIndices = (batches: Iterable<Batch>) => Array.from(batches).flatMap((b) => Array.from(b.indices));

  it('yields batches of features and labels with their shape and indices', () => {
    const batches = Array.from(new DataLoader(dataset, { batchSize: 10 }));
    expect(batches).toHaveLength(11);
    expect(batches[10].xShape).toEqual([3, 2, 3]);
    const b = batches[3];
    expect(b.xShape).toEqual([10, 2, 3]);
    expect(Array.from(b.indices)).toEqual([30, 31, 32, 33, 34, 35, 36, 37, 38, 39]);
    expect(Array.from(b.x.subarray(0, 6))).toEqual([180, 181, 182, 183, 184, 185]);
    expect(Array.from(b.y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('visits every index exactly once per epoch when shuffled', () => {
    const loader = new DataLoader(dataset, { batchSize: 8, shuffle: true, seed: 5 });
    for (let epoch = 0; epoch < 3; epoch++) {
      const seen = epochIndices(loader);
      expect(seen).toHaveLength(n);
      expect([...seen].sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => i));
    }
    expect(loader.epoch).toBe(3);
  });

  it('drops the last partial batch with dropLast', () => {
    const loader = new DataLoader(dataset, { batchSize: 10, shuffle: true, dropLast: true });
    const batches = Array.from(loader);
    expect(loader.length).toBe(10);
    expect(batches).toHaveLength(10);
    expect(batches.every((b) => b.indices.length === 10)).toBe(true);
    expect(new Set(batches.flatMap((b) => Array.from(b.indices))).size).toBe(100);
    expect(new DataLoader(dataset, { batchSize: 200, dropLast: true }).length).toBe(0);
  });

  it('shuffles deterministically per (seed, epoch), differently across epochs and seeds', () => {
    const a = new DataLoader(dataset, { batchSize: 16, shuffle: true, seed: 42 });
    const b = new DataLoader(dataset, { batchSize: 16, shuffle: true, seed: 42 });
    const a0 = epochIndices(a);
    const a1 = epochIndices(a);
    expect(epochIndices(b)).toEqual(a0);
    expect(epochIndices(b)).toEqual(a1);
    expect(a1).not.toEqual(a0);
    expect(epochIndices(new DataLoader(dataset, { batchSize: 16, shuffle: true, seed: 43 }))).not.toEqual(a0);
    expect(a0).not.toEqual(Array.from({ length: n }, (_, i) => i));
  });

  it('resumes from its state, also mid-epoch', () => {
    const loader = new DataLoader(dataset, { batchSize: 16, shuffle: true, seed: 7 });
    epochIndices(loader);
    const state = loader.getState();
    const expected = epochIndices(loader);
    const resumed = new DataLoader(dataset, { batchSize: 16, shuffle: true, seed: 7 });
    resumed.setState(state);
    expect(epochIndices(resumed)).toEqual(expected);
    expect(epochIndices(resumed.batches(1, 2))).toEqual(expected.slice(32));
  });

  it('applies a seeded transform, the same in every run', () => {
    const images = new ArrayDataset(Float32Array.from({ length: 20 * 16 }, () => 1), [1, 4, 4], new Int32Array(20));
    const xs = () => Array.from(new DataLoader(images, { batchSize: 5, shuffle: true, seed: 1, transform: cropAndFlip(2) }), (b) => Array.from(b.x));
    const first = xs();
    expect(xs()).toEqual(first);
    expect(first.flat().some((v) => v === 0)).toBe(true);
    const bad = new DataLoader(images, { batchSize: 5, transform: () => new Float32Array(1) });
    expectThrows(() => Array.from(bad), 'DataLoader: transform must return a Float32Array of 80 values (shape [5, 1, 4, 4])');
  });

  it('names the bad argument and its value', () => {
    expectThrows(() => new DataLoader(dataset, { batchSize: 0 }), 'DataLoader: batchSize must be a positive integer, got 0');
    expectThrows(() => new DataLoader(dataset, { batchSize: 2.5 }), 'DataLoader: batchSize must be a positive integer, got 2.5');
    expectThrows(() => new DataLoader(dataset, { batchSize: 2, seed: -3 }), 'DataLoader: seed must be a non-negative integer, got -3');
    expectThrows(() => new DataLoader(dataset, { batchSize: 2, shuffle: 'yes' as never }), 'DataLoader: shuffle must be true or false, got "yes"');
    expectThrows(() => new DataLoader(dataset, { batchSize: 2, batch_size: 3 } as never), 'DataLoader: unknown option "batch_size"');
    expectThrows(() => new DataLoader(dataset, undefined as never), 'DataLoader: options must be an object with batchSize');
    expectThrows(() => new ArrayDataset(new Float32Array(5), [2], new Int32Array(3)), 'ArrayDataset: 3 labels with feature shape [2] need 6 feature values, got 5');
    expectThrows(() => dataset.gather([n]), `gatherRows: index ${n} at position 0 is out of range [0, ${n})`);
  });
});

describe('symmetric label noise', () => {
  const clean = Int32Array.from({ length: 10000 }, (_, i) => i % 10);

  it('flips exactly round(fraction * n) labels, always to another class', () => {
    const { labels, flipped } = addSymmetricLabelNoise(clean, 0.4, 10, 1);
    expect(flipped).toHaveLength(4000);
    expect(new Set(flipped).size).toBe(4000);
    const changed = labels.reduce((k, c, i) => k + (c !== clean[i] ? 1 : 0), 0);
    expect(changed).toBe(4000);
    for (const i of flipped) expect(labels[i]).not.toBe(clean[i]);
    expect(addSymmetricLabelNoise(clean.subarray(0, 7), 0.5, 10, 1).flipped).toHaveLength(4); // round(3.5)
    expect(Array.from(addSymmetricLabelNoise(clean, 0, 10, 1).labels)).toEqual(Array.from(clean));
  });

  it('is deterministic per seed', () => {
    const a = addSymmetricLabelNoise(clean, 0.2, 10, 5);
    expect(addSymmetricLabelNoise(clean, 0.2, 10, 5)).toEqual(a);
    expect(addSymmetricLabelNoise(clean, 0.2, 10, 6).flipped).not.toEqual(a.flipped);
  });

  it('spreads new labels uniformly over the other classes', () => {
    const labels = Int32Array.from({ length: 90000 }, (_, i) => i % 10);
    const noisy = addSymmetricLabelNoise(labels, 1, 10, 3).labels;
    // For each true class, 9 other classes expect 1000 each; allow 5 standard deviations.
    for (let c = 0; c < 10; c++) {
      const counts = classCounts(noisy.filter((_, i) => labels[i] === c));
      expect(counts[c]).toBe(0);
      for (let other = 0; other < 10; other++) if (other !== c) expect(Math.abs(counts[other] - 1000)).toBeLessThan(160);
    }
  });

  it('names the bad argument and its value', () => {
    expectThrows(() => addSymmetricLabelNoise(clean, 1.5, 10, 0), 'addSymmetricLabelNoise: fraction must be a number in [0, 1], got 1.5');
    expectThrows(() => addSymmetricLabelNoise(clean, -0.1, 10, 0), 'fraction must be a number in [0, 1], got -0.1');
    expectThrows(() => addSymmetricLabelNoise(clean, NaN, 10, 0), 'fraction must be a number in [0, 1], got NaN');
    expectThrows(() => addSymmetricLabelNoise(clean, 0.1, 0, 0), 'numClasses must be a positive integer, got 0');
    expectThrows(() => addSymmetricLabelNoise([0, 0], 0.5, 1, 0), 'numClasses must be at least 2 to flip labels, got 1');
    expectThrows(() => addSymmetricLabelNoise([0, 12], 0.1, 10, 0), 'label 12 at index 1 is not a class index in [0, 10)');
    expectThrows(() => addSymmetricLabelNoise([0, 1.5], 0.1, 10, 0), 'label 1.5 at index 1 is not a class index');
  });
});

describe('augmentation', () => {
  const shape = [6, 2, 5, 7];
  const batch = Float32Array.from({ length: 6 * 2 * 5 * 7 }, (_, i) => i + 1);

  /** The (dy, dx) shift that turns `input` into `output` for sample s, or undefined. */
  function findShift(output: Float32Array, s: number, padding: number): [number, number] | undefined {
    const [, c, h, w] = shape;
    for (let dy = -padding; dy <= padding; dy++) {
      for (let dx = -padding; dx <= padding; dx++) {
        let match = true;
        for (let ch = 0; ch < c && match; ch++) {
          for (let y = 0; y < h && match; y++) {
            for (let x = 0; x < w && match; x++) {
              const inside = y + dy >= 0 && y + dy < h && x + dx >= 0 && x + dx < w;
              const expected = inside ? batch[((s * c + ch) * h + y + dy) * w + x + dx] : 0;
              match = output[((s * c + ch) * h + y) * w + x] === expected;
            }
          }
        }
        if (match) return [dy, dx];
      }
    }
    return undefined;
  }

  it('randomCrop pads with zeros and shifts each sample, deterministically', () => {
    const out = randomCrop(batch, shape, 2, new SeededRng(4));
    expect(out).toHaveLength(batch.length);
    expect(randomCrop(batch, shape, 2, new SeededRng(4))).toEqual(out);
    const shifts = Array.from({ length: 6 }, (_, s) => findShift(out, s, 2));
    expect(shifts.every((d) => d !== undefined)).toBe(true);
    expect(new Set(shifts.map((d) => d!.join())).size).toBeGreaterThan(1);
    expect(randomCrop(batch, shape, 0, new SeededRng(4))).toEqual(batch);
    expect(randomCrop(batch, shape, 2, new SeededRng(5))).not.toEqual(out);
  });

  it('horizontalFlip mirrors samples with probability p, deterministically', () => {
    const twice = horizontalFlip(horizontalFlip(batch, shape, 1, new SeededRng(0)), shape, 1, new SeededRng(0));
    expect(twice).toEqual(batch);
    expect(horizontalFlip(batch, shape, 0, new SeededRng(0))).toEqual(batch);
    const flipped = horizontalFlip(batch, shape, 1, new SeededRng(0));
    expect(Array.from(flipped.subarray(0, 7))).toEqual([7, 6, 5, 4, 3, 2, 1]);
    const half = horizontalFlip(batch, shape, 0.5, new SeededRng(8));
    expect(horizontalFlip(batch, shape, 0.5, new SeededRng(8))).toEqual(half);
    const sample = 2 * 5 * 7;
    const flippedSamples = Array.from({ length: 6 }, (_, s) => half[s * sample] !== batch[s * sample]).filter(Boolean).length;
    expect(flippedSamples).toBeGreaterThan(0);
    expect(flippedSamples).toBeLessThan(6);
  });

  it('checks shapes and arguments', () => {
    expectThrows(() => randomCrop(batch, [6, 2, 5], 1, new SeededRng(0)), 'randomCrop: shape must be [n, c, h, w], got [6,2,5]');
    expectThrows(() => randomCrop(batch, [6, 2, 5, 6], 1, new SeededRng(0)), 'randomCrop: shape [6, 2, 5, 6] holds 360 values but the batch has 420');
    expectThrows(() => randomCrop(batch, shape, -1, new SeededRng(0)), 'randomCrop: padding must be a non-negative integer, got -1');
    expectThrows(() => horizontalFlip(batch, shape, 2, new SeededRng(0)), 'horizontalFlip: p must be a number in [0, 1], got 2');
  });
});
