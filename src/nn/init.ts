/**
 * Initializers, as torch.nn.init computes them, drawing from flatgrad's seeded generator (so
 * `manualSeed(s)` then the same model gives the same weights on every backend). Each returns a
 * new tensor; layers wrap it in a Parameter.
 */
import { getDefaultDtype, type DType } from '../tensor/dtype.js';
import { full } from '../tensor/creation.js';
import { randn, uniform as uniformDraw } from '../tensor/random.js';
import type { Tensor } from '../tensor/tensor.js';

export type Nonlinearity = 'linear' | 'conv2d' | 'sigmoid' | 'tanh' | 'relu' | 'leaky_relu' | 'selu';

/** torch.nn.init.calculate_gain. */
export function calculateGain(nonlinearity: Nonlinearity, param?: number): number {
  switch (nonlinearity) {
    case 'linear':
    case 'conv2d':
    case 'sigmoid':
      return 1;
    case 'tanh':
      return 5 / 3;
    case 'relu':
      return Math.SQRT2;
    case 'leaky_relu': {
      const slope = param ?? 0.01;
      return Math.sqrt(2 / (1 + slope * slope));
    }
    case 'selu':
      return 3 / 4;
  }
}

/** (fan_in, fan_out) of a weight shape in PyTorch's layouts: [out, in, ...kernel]. */
export function fans(shape: readonly number[]): [number, number] {
  if (shape.length < 2) throw new RangeError(`fans: need a weight with at least 2 dims, got [${shape.join(',')}]`);
  const receptive = shape.slice(2).reduce((a, b) => a * b, 1);
  return [shape[1] * receptive, shape[0] * receptive];
}

export interface InitOptions {
  dtype?: DType;
}

export function uniform(shape: number[], low: number, high: number, opts: InitOptions = {}): Tensor {
  return uniformDraw(shape, low, high, { dtype: opts.dtype ?? getDefaultDtype() });
}

export function normal(shape: number[], mean = 0, std = 1, opts: InitOptions = {}): Tensor {
  return randn(shape, { mean, std, dtype: opts.dtype ?? getDefaultDtype() });
}

export function constant(shape: number[], value: number, opts: InitOptions = {}): Tensor {
  return full(shape, value, { dtype: opts.dtype ?? getDefaultDtype() });
}

/** torch.nn.init.kaiming_uniform_(w, a, mode='fan_in', nonlinearity='leaky_relu'). */
export function kaimingUniform(shape: number[], opts: InitOptions & { a?: number; mode?: 'fan_in' | 'fan_out'; nonlinearity?: Nonlinearity } = {}): Tensor {
  const [fanIn, fanOut] = fans(shape);
  const fan = (opts.mode ?? 'fan_in') === 'fan_in' ? fanIn : fanOut;
  const gain = calculateGain(opts.nonlinearity ?? 'leaky_relu', opts.a ?? 0);
  const bound = fan === 0 ? 0 : Math.sqrt(3) * (gain / Math.sqrt(fan));
  return uniform(shape, -bound, bound, opts);
}

/** torch.nn.init.kaiming_normal_. */
export function kaimingNormal(shape: number[], opts: InitOptions & { a?: number; mode?: 'fan_in' | 'fan_out'; nonlinearity?: Nonlinearity } = {}): Tensor {
  const [fanIn, fanOut] = fans(shape);
  const fan = (opts.mode ?? 'fan_in') === 'fan_in' ? fanIn : fanOut;
  const gain = calculateGain(opts.nonlinearity ?? 'leaky_relu', opts.a ?? 0);
  return normal(shape, 0, fan === 0 ? 0 : gain / Math.sqrt(fan), opts);
}

/** torch.nn.init.xavier_uniform_. */
export function xavierUniform(shape: number[], opts: InitOptions & { gain?: number } = {}): Tensor {
  const [fanIn, fanOut] = fans(shape);
  const a = (opts.gain ?? 1) * Math.sqrt(6 / (fanIn + fanOut));
  return uniform(shape, -a, a, opts);
}

/** torch.nn.init.trunc_normal_ would need rejection sampling; this is normal clamped at +-2 std (ViT embeddings). */
export function truncNormal(shape: number[], std = 0.02, opts: InitOptions = {}): Tensor {
  const t = normal(shape, 0, std, opts);
  const c = t.clamp(-2 * std, 2 * std);
  t.dispose();
  return c;
}

/** The default weight init of Linear and Conv: kaiming_uniform(a = sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
export function defaultWeight(shape: number[], opts: InitOptions = {}): Tensor {
  return kaimingUniform(shape, { ...opts, a: Math.sqrt(5) });
}

/** The default bias init of Linear and Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
export function defaultBias(n: number, fanIn: number, opts: InitOptions = {}): Tensor {
  const bound = fanIn > 0 ? 1 / Math.sqrt(fanIn) : 0;
  return uniform([n], -bound, bound, opts);
}
