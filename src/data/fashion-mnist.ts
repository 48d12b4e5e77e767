import { ArrayDataset } from './dataset.js';
import { IdxFormatError, readIdxFile, type IdxArray } from './idx.js';
import { normalize } from './augment.js';
import { checkNonNegativeInt, checkOptionNames } from './validate.js';

/** Where Debian's `dataset-fashion-mnist` package installs the full data set. */
export const DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';

/** Label i names class i (Zalando Research's list). */
export const FASHION_MNIST_CLASSES: readonly string[] = Object.freeze([
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
]);

/** Per-pixel mean and standard deviation of the training images scaled to [0, 1]. */
export const FASHION_MNIST_MEAN = 0.286;
export const FASHION_MNIST_STD = 0.353;

export type FashionMnistSplit = 'train' | 'test';

export interface FashionMnist {
  /** n * rows * cols pixels, 0 (background) to 255. */
  images: Uint8Array;
  /** n class indices into `classes`. */
  labels: Uint8Array;
  n: number;
  rows: 28;
  cols: 28;
  classes: readonly string[];
}

export interface FashionMnistOptions {
  split: FashionMnistSplit;
  /** Directory holding the four `*-ubyte.gz` files (plain IDX files are read too). */
  dir?: string;
  /** Keep only the first `limit` examples. */
  limit?: number;
}

const SUBSET_DIR_NAME = 'data/fashion-mnist-subset/';
const OPTION_NAMES = ['split', 'dir', 'limit'] as const;

/** The file names the original distribution (and Debian) use: `train-*` and `t10k-*`. */
export function fashionMnistFiles(split: FashionMnistSplit): { images: string; labels: string } {
  if (split !== 'train' && split !== 'test') {
    throw new RangeError(`Fashion-MNIST: split must be 'train' or 'test', got ${JSON.stringify(split)}`);
  }
  const prefix = split === 'train' ? 'train' : 't10k';
  return { images: `${prefix}-images-idx3-ubyte.gz`, labels: `${prefix}-labels-idx1-ubyte.gz` };
}

/**
 * Checks a decoded image/label pair and returns it as Fashion-MNIST. For callers that fetch the
 * files themselves (the browser); `sources` name the files in errors.
 */
export function fashionMnistFromIdx(
  images: IdxArray,
  labels: IdxArray,
  sources: { images: string; labels: string },
  limit?: number,
): FashionMnist {
  const [n, rows, cols] = images.shape;
  if (images.dtype !== 'uint8' || images.shape.length !== 3 || rows !== 28 || cols !== 28) {
    throw new IdxFormatError(
      `${sources.images}: expected uint8 images of shape [n, 28, 28], got ${images.dtype} [${images.shape.join(', ')}]`,
    );
  }
  if (labels.dtype !== 'uint8' || labels.shape.length !== 1) {
    throw new IdxFormatError(`${sources.labels}: expected uint8 labels of shape [n], got ${labels.dtype} [${labels.shape.join(', ')}]`);
  }
  if (labels.shape[0] !== n) {
    throw new IdxFormatError(
      `mismatched counts: ${sources.images} has ${n} images but ${sources.labels} has ${labels.shape[0]} labels`,
    );
  }
  const labelData = labels.data as Uint8Array;
  const bad = labelData.findIndex((c) => c >= FASHION_MNIST_CLASSES.length);
  if (bad >= 0) {
    throw new IdxFormatError(`${sources.labels}: label ${labelData[bad]} at index ${bad} is not a class (0-${FASHION_MNIST_CLASSES.length - 1})`);
  }
  const kept = limit === undefined ? n : Math.min(n, checkNonNegativeInt('Fashion-MNIST', 'limit', limit));
  return {
    images: (images.data as Uint8Array).subarray(0, kept * rows * cols),
    labels: labelData.subarray(0, kept),
    n: kept,
    rows: 28,
    cols: 28,
    classes: FASHION_MNIST_CLASSES,
  };
}

/** Loads one split of Fashion-MNIST from a directory (by default Debian's, the full set). */
export async function loadFashionMnist(options: FashionMnistOptions): Promise<FashionMnist> {
  checkOptionNames('loadFashionMnist', options, OPTION_NAMES);
  const { split, dir = DEFAULT_FASHION_MNIST_DIR, limit } = options;
  const files = fashionMnistFiles(split);
  const { join } = await import('node:path');
  const sources = { images: join(dir, files.images), labels: join(dir, files.labels) };
  const [images, labels] = await Promise.all([readIdxFile(sources.images), readIdxFile(sources.labels)]);
  return fashionMnistFromIdx(images, labels, sources, limit);
}

/**
 * The class-balanced subset shipped in the repository's data/ folder (6,000 training and 1,000
 * test images), so training works on a machine without the full set. The folder is found by
 * walking up from this module, which works from src/ and from a bundle in dist/.
 */
export async function loadShippedSubset(options: FashionMnistOptions): Promise<FashionMnist> {
  checkOptionNames('loadShippedSubset', options, OPTION_NAMES);
  return loadFashionMnist({ ...options, dir: options.dir ?? (await shippedSubsetDir()) });
}

export async function shippedSubsetDir(): Promise<string> {
  const { access } = await import('node:fs/promises');
  const { fileURLToPath } = await import('node:url');
  const tried: string[] = [];
  for (let up = 1; up <= 4; up++) {
    const dir = fileURLToPath(new URL('../'.repeat(up) + SUBSET_DIR_NAME, import.meta.url));
    try {
      await access(dir + fashionMnistFiles('train').labels);
      return dir;
    } catch {
      tried.push(dir);
    }
  }
  // The npm package leaves the subset out (3 MB that an app embedding training does not need).
  throw new Error(
    `Fashion-MNIST subset not found; looked in ${tried.join(', ')}. The npm package does not ship it: ` +
      `run from a clone of the repository, or pass a directory with the four IDX files (or the full set) instead`,
  );
}

/** Images normalized with the Fashion-MNIST statistics as features [1, 28, 28], labels as int32. */
export function fashionMnistDataset(set: FashionMnist, mean = FASHION_MNIST_MEAN, std = FASHION_MNIST_STD): ArrayDataset {
  return new ArrayDataset(normalize(set.images, mean, std), [1, set.rows, set.cols], Int32Array.from(set.labels));
}
