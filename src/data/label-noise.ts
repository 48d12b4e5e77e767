import { SeededRng, randomPermutation } from './random.js';
import { checkNonNegativeInt, checkPositiveInt, checkProbability } from './validate.js';

export interface NoisyLabels {
  labels: Int32Array;
  /** Indices whose label was changed, ascending. */
  flipped: Int32Array;
}

/**
 * Symmetric label noise: exactly round(fraction * n) examples, the first ones of a seeded
 * permutation, each get a different class drawn uniformly from the other numClasses - 1.
 *
 * This is the symmetric noise of the label-noise experiments in the SAM paper (Foret et al.,
 * 2021, section 3.3). Some papers instead redraw the label uniformly from all classes, so only
 * about fraction * (1 - 1/numClasses) of the labels end up wrong; we always change the label so
 * that `fraction` is exactly the fraction of wrong labels, and a 40% run means 40% wrong.
 */
export function addSymmetricLabelNoise(
  labels: ArrayLike<number>,
  fraction: number,
  numClasses: number,
  seed: number,
): NoisyLabels {
  checkProbability('addSymmetricLabelNoise', 'fraction', fraction);
  checkPositiveInt('addSymmetricLabelNoise', 'numClasses', numClasses);
  checkNonNegativeInt('addSymmetricLabelNoise', 'seed', seed);
  const n = labels.length;
  const noisy = Int32Array.from(labels);
  const bad = noisy.findIndex((c, i) => c < 0 || c >= numClasses || c !== labels[i]);
  if (bad >= 0) {
    throw new RangeError(`addSymmetricLabelNoise: label ${labels[bad]} at index ${bad} is not a class index in [0, ${numClasses})`);
  }
  const count = Math.round(fraction * n);
  if (count > 0 && numClasses < 2) {
    throw new RangeError(`addSymmetricLabelNoise: numClasses must be at least 2 to flip labels, got ${numClasses}`);
  }
  const rng = new SeededRng(seed);
  const flipped = randomPermutation(n, rng).slice(0, count).sort();
  for (const i of flipped) {
    const r = rng.int(numClasses - 1);
    noisy[i] = r >= noisy[i] ? r + 1 : r;
  }
  return { labels: noisy, flipped };
}
