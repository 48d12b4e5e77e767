import { checkNonNegativeInt, checkPositiveInt } from './validate.js';

type NumericArray = Uint8Array | Int8Array | Int16Array | Int32Array | Float32Array | Float64Array;

/** A finite set of (features, label) examples that can be gathered into batches. */
export interface Dataset {
  readonly length: number;
  /** Shape of one example's features, e.g. [1, 28, 28]. */
  readonly featureShape: readonly number[];
  /** Features of the examples at `indices` ([k, ...featureShape], row-major) and their labels. */
  gather(indices: ArrayLike<number>): { x: Float32Array; y: Int32Array };
}

/** Copies rows `indices` of a row-major [n, rowLength] array into `out` (a new array by default). */
export function gatherRows<T extends NumericArray>(src: T, rowLength: number, indices: ArrayLike<number>, out?: T): T {
  const rows = rowLength === 0 ? 0 : src.length / rowLength;
  const dst = out ?? (new (src.constructor as new (n: number) => T)(indices.length * rowLength));
  if (dst.length !== indices.length * rowLength) {
    throw new RangeError(`gatherRows: out has ${dst.length} values, expected ${indices.length} rows of ${rowLength}`);
  }
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k];
    if (!Number.isInteger(i) || i < 0 || i >= rows) throw new RangeError(`gatherRows: index ${i} at position ${k} is out of range [0, ${rows})`);
    dst.set(src.subarray(i * rowLength, (i + 1) * rowLength), k * rowLength);
  }
  return dst;
}

/** A dataset held in memory: features [n, ...featureShape] as float32 and integer labels. */
export class ArrayDataset implements Dataset {
  readonly length: number;
  readonly featureShape: readonly number[];
  private readonly rowLength: number;

  constructor(
    readonly features: Float32Array,
    featureShape: readonly number[],
    readonly labels: Int32Array,
  ) {
    if (!(features instanceof Float32Array)) throw new TypeError('ArrayDataset: features must be a Float32Array');
    if (!(labels instanceof Int32Array)) throw new TypeError('ArrayDataset: labels must be an Int32Array');
    featureShape.forEach((d, i) => checkPositiveInt('ArrayDataset', `featureShape[${i}]`, d));
    this.featureShape = [...featureShape];
    this.rowLength = featureShape.reduce((a, b) => a * b, 1);
    this.length = labels.length;
    if (features.length !== this.length * this.rowLength) {
      throw new RangeError(
        `ArrayDataset: ${this.length} labels with feature shape [${featureShape.join(', ')}] need ${this.length * this.rowLength} feature values, got ${features.length}`,
      );
    }
  }

  gather(indices: ArrayLike<number>): { x: Float32Array; y: Int32Array } {
    return { x: gatherRows(this.features, this.rowLength, indices), y: gatherRows(this.labels, 1, indices) };
  }
}

/**
 * Indices of the first `perClass` examples of each class, in their original order, for a
 * class-balanced subset that keeps the file's order.
 */
export function selectClassBalanced(labels: ArrayLike<number>, perClass: number, numClasses: number): Int32Array {
  checkNonNegativeInt('selectClassBalanced', 'perClass', perClass);
  checkPositiveInt('selectClassBalanced', 'numClasses', numClasses);
  const taken = new Array<number>(numClasses).fill(0);
  const picked: number[] = [];
  for (let i = 0; i < labels.length && picked.length < perClass * numClasses; i++) {
    const c = labels[i];
    if (!Number.isInteger(c) || c < 0 || c >= numClasses) {
      throw new RangeError(`selectClassBalanced: label ${c} at index ${i} is outside [0, ${numClasses})`);
    }
    if (taken[c] < perClass) {
      taken[c]++;
      picked.push(i);
    }
  }
  const short = taken.findIndex((t) => t < perClass);
  if (short >= 0) {
    throw new RangeError(`selectClassBalanced: class ${short} has only ${taken[short]} examples, ${perClass} requested`);
  }
  return Int32Array.from(picked);
}
