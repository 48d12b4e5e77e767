/** The global counter-based generator and the random creation functions. */
import type { RandomDist } from '../kernels/backend.js';
import { Generator } from '../kernels/rng.js';
import { getDefaultDtype, isFloat, type DType } from './dtype.js';
import { checkShape } from './shape.js';
import { Tensor } from './tensor.js';

export const generator = new Generator();

/** Seeds the global generator: the same seed and calls give the same numbers on every backend. */
export function manualSeed(seed: number): void {
  generator.manualSeed(seed);
}

interface RandOpts {
  dtype?: DType;
  requiresGrad?: boolean;
}

function draw(shape: number[], dtype: DType, dist: RandomDist, requiresGrad = false): Tensor {
  const t = Tensor.empty(checkShape(shape, 'random'), dtype);
  if (t.size > 0) {
    const [k0, k1] = generator.nextKey();
    t.backend.random(t.storage, k0, k1, dist);
  }
  return requiresGrad ? t.requiresGrad_() : t;
}

function floatDtype(op: string, d: DType | undefined): DType {
  const dt = d ?? getDefaultDtype();
  if (!isFloat(dt)) throw new TypeError(`${op}: dtype must be floating, got ${dt}`);
  return dt;
}

/** Uniform on [0, 1). */
export function rand(shape: number[], opts: RandOpts = {}): Tensor {
  return draw(shape, floatDtype('rand', opts.dtype), { kind: 'uniform', low: 0, high: 1 }, opts.requiresGrad);
}

/** Uniform on [low, high). */
export function uniform(shape: number[], low: number, high: number, opts: RandOpts = {}): Tensor {
  if (!(low <= high)) throw new RangeError(`uniform: low ${low} must not exceed high ${high}`);
  return draw(shape, floatDtype('uniform', opts.dtype), { kind: 'uniform', low, high }, opts.requiresGrad);
}

/** Standard normal (or N(mean, std^2)). */
export function randn(shape: number[], opts: RandOpts & { mean?: number; std?: number } = {}): Tensor {
  return draw(shape, floatDtype('randn', opts.dtype), { kind: 'normal', mean: opts.mean ?? 0, std: opts.std ?? 1 }, opts.requiresGrad);
}

/** Integers in [low, high), int32 by default. */
export function randint(low: number, high: number, shape: number[], opts: { dtype?: DType } = {}): Tensor {
  if (!Number.isInteger(low) || !Number.isInteger(high) || high <= low) {
    throw new RangeError(`randint: need integers low < high, got low ${low}, high ${high}`);
  }
  return draw(shape, opts.dtype ?? 'int32', { kind: 'int', low, high });
}
