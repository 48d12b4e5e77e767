import type { Dataset } from './dataset.js';
import { SeededRng, randomPermutation } from './random.js';
import { checkBoolean, checkNonNegativeInt, checkOptionNames, checkPositiveInt } from './validate.js';

export interface Batch {
  /** Features, row-major with shape `xShape` = [batch, ...featureShape]. */
  x: Float32Array;
  xShape: number[];
  y: Int32Array;
  /** Dataset indices of the examples in this batch. */
  indices: Int32Array;
}

/** Rewrites a batch's features, e.g. augmentation; `rng` is seeded by (seed, epoch, batch). */
export type BatchTransform = (x: Float32Array, xShape: readonly number[], rng: SeededRng) => Float32Array;

export interface DataLoaderOptions {
  batchSize: number;
  shuffle?: boolean;
  /** Seeds the shuffle and the transform's random numbers. */
  seed?: number;
  /** Skip the last batch when it is smaller than batchSize. */
  dropLast?: boolean;
  transform?: BatchTransform;
}

const OPTION_NAMES = ['batchSize', 'shuffle', 'seed', 'dropLast', 'transform'] as const;

// Stream ids keep the shuffle and transform draws independent for the same seed and epoch.
const SHUFFLE_STREAM = 0;
const TRANSFORM_STREAM = 1;

/**
 * Batches over a dataset. Each `for...of` is one epoch and advances `epoch`; the order of epoch e
 * is a pure function of (seed, e), so a run resumed from `getState()` sees the same batches.
 */
export class DataLoader implements Iterable<Batch> {
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly seed: number;
  readonly dropLast: boolean;
  private readonly transform?: BatchTransform;
  /** The epoch that the next `for...of` iterates. */
  epoch = 0;

  constructor(
    readonly dataset: Dataset,
    options: DataLoaderOptions,
  ) {
    checkOptionNames('DataLoader', options, OPTION_NAMES);
    this.batchSize = checkPositiveInt('DataLoader', 'batchSize', options.batchSize);
    this.seed = checkNonNegativeInt('DataLoader', 'seed', options.seed ?? 0);
    this.shuffle = checkBoolean('DataLoader', 'shuffle', options.shuffle ?? false);
    this.dropLast = checkBoolean('DataLoader', 'dropLast', options.dropLast ?? false);
    if (options.transform !== undefined && typeof options.transform !== 'function') {
      throw new TypeError(`DataLoader: transform must be a function, got ${typeof options.transform}`);
    }
    this.transform = options.transform;
  }

  /** Batches per epoch. */
  get length(): number {
    const n = this.dataset.length;
    return this.dropLast ? Math.floor(n / this.batchSize) : Math.ceil(n / this.batchSize);
  }

  /** The order in which epoch `epoch` visits the examples. */
  order(epoch: number): Int32Array {
    checkNonNegativeInt('DataLoader.order', 'epoch', epoch);
    const n = this.dataset.length;
    if (this.shuffle) return randomPermutation(n, new SeededRng(this.seed, SHUFFLE_STREAM, epoch));
    return Int32Array.from({ length: n }, (_, i) => i);
  }

  /** The batches of one epoch, from batch `fromBatch` on (for resuming mid-epoch); does not move `epoch`. */
  *batches(epoch: number = this.epoch, fromBatch = 0): Generator<Batch> {
    checkNonNegativeInt('DataLoader.batches', 'fromBatch', fromBatch);
    const order = this.order(epoch);
    for (let b = fromBatch; b < this.length; b++) {
      const indices = order.subarray(b * this.batchSize, Math.min(order.length, (b + 1) * this.batchSize)).slice();
      const { x, y } = this.dataset.gather(indices);
      const xShape = [indices.length, ...this.dataset.featureShape];
      const rng = new SeededRng(this.seed, TRANSFORM_STREAM, epoch, b);
      yield { x: this.transform ? this.applyTransform(this.transform, x, xShape, rng) : x, xShape, y, indices };
    }
  }

  private applyTransform(transform: BatchTransform, x: Float32Array, xShape: number[], rng: SeededRng): Float32Array {
    const out = transform(x, xShape, rng);
    if (!(out instanceof Float32Array) || out.length !== x.length) {
      throw new TypeError(`DataLoader: transform must return a Float32Array of ${x.length} values (shape [${xShape.join(', ')}])`);
    }
    return out;
  }

  [Symbol.iterator](): Iterator<Batch> {
    return this.batches(this.epoch++);
  }

  getState(): { epoch: number } {
    return { epoch: this.epoch };
  }

  setState(state: { epoch: number }): void {
    this.epoch = checkNonNegativeInt('DataLoader.setState', 'epoch', state.epoch);
  }
}
