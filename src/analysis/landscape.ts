/**
 * Loss-landscape slices (Li et al., "Visualizing the Loss Landscape of Neural Nets", 2018):
 * L(w + a d1) and L(w + a d1 + b d2) along filter-normalized random directions, so that slices
 * of differently scaled networks can be compared.
 */
import { zerosLike } from '../tensor/creation.js';
import { noGrad } from '../tensor/graph.js';
import { randn } from '../tensor/random.js';
import { dispose, tidy, type Tensor } from '../tensor/tensor.js';
import { lossValue, moveTo, snapshot, type LossFn } from './vectors.js';

/** Keeps a zero norm from dividing by zero (a dead filter gets a zero direction, not NaN). */
const NORM_EPS = 1e-10;

/**
 * A Gaussian direction (seeded global generator) with each filter rescaled to the norm of the
 * same filter of the weight: a filter is a slice along the first dim (a conv output channel, a
 * row of a linear weight [out, in]). Parameters with fewer than 2 dims (biases, norm scales)
 * get a zero direction: the paper's "ignore biases and BN" setting.
 */
export function filterNormalizedDirection(params: Tensor[]): Tensor[] {
  return noGrad(() =>
    tidy(() =>
      params.map((p) => {
        if (p.ndim < 2) return zerosLike(p);
        const rows = p.shape[0];
        const w = p.detach().reshape(rows, p.size / rows);
        const d = randn([rows, p.size / rows], { dtype: p.dtype });
        const scale = w.square().sum(1, true).sqrt().div(d.square().sum(1, true).sqrt().add(NORM_EPS));
        return d.mul(scale).reshape(p.shape.slice());
      }),
    ),
  );
}

/** `points` evenly spaced values from range[0] to range[1] inclusive. */
export function linspace([from, to]: readonly [number, number], points: number): number[] {
  if (!(Number.isInteger(points) && points >= 2)) throw new RangeError(`linspace: points must be an integer >= 2, got ${points}`);
  return Array.from({ length: points }, (_, i) => from + ((to - from) * i) / (points - 1));
}

export interface Landscape1dOptions {
  /** Shaped like params; default: filterNormalizedDirection(params). */
  direction?: Tensor[];
  range?: [number, number];
  points?: number;
}

export interface Landscape1d {
  alphas: number[];
  losses: number[];
}

export interface Landscape2dOptions {
  directions?: [Tensor[], Tensor[]];
  range?: [number, number];
  /** Default: `range`. */
  yRange?: [number, number];
  points?: number;
}

export interface Landscape2d {
  xs: number[];
  ys: number[];
  /** losses[j][i] = L(w + xs[i] d1 + ys[j] d2). */
  losses: number[][];
}

/** Evaluates the loss at w + sum(c_k d_k) for each coefficient list, then puts w back exactly. */
async function lossesAround(loss: LossFn, params: Tensor[], directions: Tensor[][], coefficients: number[][]): Promise<number[]> {
  const origin = snapshot(params);
  try {
    const out: number[] = [];
    for (const cs of coefficients) {
      moveTo(params, origin, ...cs.map((c, k): [Tensor[], number] => [directions[k], c]));
      out.push(await lossValue(loss, params));
    }
    return out;
  } finally {
    moveTo(params, origin);
    dispose(origin);
  }
}

function checkDirection(params: Tensor[], d: Tensor[], what: string): void {
  if (d.length !== params.length || d.some((t, i) => t.size !== params[i].size)) {
    throw new RangeError(`landscape: ${what} must have one tensor per parameter, each of the parameter's size`);
  }
}

export async function landscape1d(loss: LossFn, params: Tensor[], opts: Landscape1dOptions = {}): Promise<Landscape1d> {
  const alphas = linspace(opts.range ?? [-1, 1], opts.points ?? 21);
  const direction = opts.direction ?? filterNormalizedDirection(params);
  checkDirection(params, direction, 'direction');
  try {
    return { alphas, losses: await lossesAround(loss, params, [direction], alphas.map((a) => [a])) };
  } finally {
    if (!opts.direction) dispose(direction);
  }
}

export async function landscape2d(loss: LossFn, params: Tensor[], opts: Landscape2dOptions = {}): Promise<Landscape2d> {
  const points = opts.points ?? 21;
  const xs = linspace(opts.range ?? [-1, 1], points);
  const ys = linspace(opts.yRange ?? opts.range ?? [-1, 1], points);
  const directions = opts.directions ?? [filterNormalizedDirection(params), filterNormalizedDirection(params)];
  directions.forEach((d, k) => checkDirection(params, d, `directions[${k}]`));
  try {
    const flat = await lossesAround(loss, params, directions, ys.flatMap((b) => xs.map((a) => [a, b])));
    return { xs, ys, losses: ys.map((_, j) => flat.slice(j * xs.length, (j + 1) * xs.length)) };
  } finally {
    if (!opts.directions) dispose(directions);
  }
}
