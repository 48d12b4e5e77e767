export * from './idx.js';
export * from './fashion-mnist.js';
export * from './dataset.js';
export * from './loader.js';
export * from './augment.js';
export * from './label-noise.js';
export { SeededRng, randomPermutation } from './random.js';
