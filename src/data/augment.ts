import type { SeededRng } from './random.js';
import type { BatchTransform } from './loader.js';
import { checkFinite, checkImageBatch, checkNonNegativeInt, checkProbability } from './validate.js';

/** Pixels 0..255 scaled to [0, 1], then standardized: (v / 255 - mean) / std. */
export function normalize(images: Uint8Array, mean: number, std: number): Float32Array {
  checkFinite('normalize', 'mean', mean);
  checkFinite('normalize', 'std', std);
  if (std <= 0) throw new RangeError(`normalize: std must be positive, got ${std}`);
  const table = new Float32Array(256);
  for (let v = 0; v < 256; v++) table[v] = (v / 255 - mean) / std;
  const out = new Float32Array(images.length);
  for (let i = 0; i < images.length; i++) out[i] = table[images[i]];
  return out;
}

/**
 * Pads each image of an [n, c, h, w] batch with `padding` zeros on every side and crops an
 * h x w window at a random offset (one offset per sample, shared by its channels).
 * Zero is the padding value in whatever space the batch is in, as in torchvision's RandomCrop.
 */
export function randomCrop(batch: Float32Array, shape: readonly number[], padding: number, rng: SeededRng): Float32Array {
  const [n, c, h, w] = checkImageBatch('randomCrop', batch, shape);
  checkNonNegativeInt('randomCrop', 'padding', padding);
  const out = new Float32Array(batch.length);
  const plane = h * w;
  for (let s = 0; s < n; s++) {
    const dy = rng.int(2 * padding + 1) - padding;
    const dx = rng.int(2 * padding + 1) - padding;
    // Output pixel (y, x) reads input (y + dy, x + dx) where that lies inside the image.
    const y0 = Math.max(0, -dy);
    const y1 = Math.min(h, h - dy);
    const x0 = Math.max(0, -dx);
    const x1 = Math.min(w, w - dx);
    if (x0 >= x1) continue;
    for (let ch = 0; ch < c; ch++) {
      const base = (s * c + ch) * plane;
      for (let y = y0; y < y1; y++) {
        const src = base + (y + dy) * w + dx;
        out.set(batch.subarray(src + x0, src + x1), base + y * w + x0);
      }
    }
  }
  return out;
}

/** Mirrors each image of an [n, c, h, w] batch left-right with probability p. */
export function horizontalFlip(batch: Float32Array, shape: readonly number[], p: number, rng: SeededRng): Float32Array {
  const [n, c, h, w] = checkImageBatch('horizontalFlip', batch, shape);
  checkProbability('horizontalFlip', 'p', p);
  const out = batch.slice();
  for (let s = 0; s < n; s++) {
    if (rng.uniform() >= p) continue;
    for (let row = s * c * h; row < (s + 1) * c * h; row++) {
      const base = row * w;
      for (let x = 0; x < w; x++) out[base + x] = batch[base + w - 1 - x];
    }
  }
  return out;
}

/** The usual training augmentation as a DataLoader transform, for [c, h, w] features. */
export function cropAndFlip(padding: number, flipProbability = 0.5): BatchTransform {
  checkNonNegativeInt('cropAndFlip', 'padding', padding);
  checkProbability('cropAndFlip', 'flipProbability', flipProbability);
  return (x, xShape, rng) => horizontalFlip(randomCrop(x, xShape, padding, rng), xShape, flipProbability, rng);
}
