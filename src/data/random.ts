import { hashBits, pcgHash } from '../kernels/rng.js';
import { checkNonNegativeInt } from './validate.js';

const GOLDEN = 0x9e3779b9;

/**
 * A seeded stream of random numbers for data handling (shuffling, augmentation, label noise).
 *
 * Counter-based: draw k is a pure hash of (key, k), built on the same PCG hash as the tensor
 * RNG, so results are identical on every platform and a stream is resumed from its counter alone.
 * `streams` derive independent keys from one seed, e.g. `new SeededRng(seed, epoch)`.
 */
export class SeededRng {
  private readonly key0: number;
  private readonly key1: number;
  private counter = 0;

  constructor(seed: number, ...streams: number[]) {
    checkNonNegativeInt('SeededRng', 'seed', seed);
    streams.forEach((s, i) => checkNonNegativeInt('SeededRng', `streams[${i}]`, s));
    // Mixing the seed (instead of using it as the key directly) keeps seed s+1 from being
    // seed s's stream shifted by one draw.
    let k0 = pcgHash(seed >>> 0);
    let k1 = pcgHash((Math.floor(seed / 2 ** 32) ^ pcgHash((k0 ^ GOLDEN) >>> 0)) >>> 0);
    for (const s of streams) {
      k0 = pcgHash((k0 ^ pcgHash((s + k1) >>> 0) ^ Math.floor(s / 2 ** 32)) >>> 0);
      k1 = pcgHash((k1 ^ pcgHash((k0 ^ GOLDEN) >>> 0)) >>> 0);
    }
    this.key0 = k0;
    this.key1 = k1;
  }

  nextUint32(): number {
    return hashBits(this.key0, this.key1, this.counter++);
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Integer in [0, n); the bias of scaling 53 bits is below n / 2^53. */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** For checkpoints: the counter is the whole state once the seed and streams are known. */
  getState(): { counter: number } {
    return { counter: this.counter };
  }

  setState(state: { counter: number }): void {
    checkNonNegativeInt('SeededRng.setState', 'counter', state.counter);
    this.counter = state.counter;
  }
}

/** A uniformly random permutation of 0..n-1 (Fisher-Yates). */
export function randomPermutation(n: number, rng: SeededRng): Int32Array {
  checkNonNegativeInt('randomPermutation', 'n', n);
  const perm = new Int32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  return perm;
}
