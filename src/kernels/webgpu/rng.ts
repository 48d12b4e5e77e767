/**
 * The counter-based generator of src/kernels/rng.ts on the GPU: element i depends only on
 * (key0, key1, i), so the numbers equal the CPU backend's. uniform, int and bernoulliKeep are
 * bit-exact; normal goes through f32 log/cos and agrees to float tolerance.
 *
 * The CPU computes uniform as fround(low + (high - low) * u) in float64. To round the same way
 * in f32 the GPU evaluates low + d * u as an unevaluated sum of f32 terms that are each exact:
 * d is split on the host into 12-bit pieces and u's 24-bit integer numerator into two 12-bit
 * halves, so every piece product fits f32's 24-bit significand; the terms are added with TwoSum
 * and rounded once at the end. The result is exact whenever low + d * u has at most ~48
 * significant bits, and otherwise differs from the CPU's double rounding only within 2^-48 of
 * an f32 rounding tie.
 */
import type { RandomDist } from '../backend.js';
import type { GPUStorage, Runtime } from './runtime.js';
import { convert, entry, scalarOf, WGSL_RNG, type Param } from './wgsl.js';
import { WGSL_TRIG } from './wgsl-math-core.js';

const WG = 256;
const D_PIECES = 5;
const LOW_PIECES = 3;

/** Splits a double into `parts` numbers of at most `bits` significant bits each, summing to it exactly. */
export function splitBits(x: number, bits: number, parts: number): number[] {
  const out: number[] = [];
  let r = x;
  for (let k = 0; k < parts; k++) {
    if (r === 0) {
      out.push(0);
      continue;
    }
    let e = Math.floor(Math.log2(Math.abs(r)));
    while (2 ** e > Math.abs(r)) e--;
    while (2 ** (e + 1) <= Math.abs(r)) e++;
    const scale = 2 ** (bits - 1 - e);
    const piece = Math.trunc(r * scale) / scale; // truncation keeps r - piece exact
    out.push(piece);
    r -= piece;
  }
  return out;
}

const TWO_SUM = `fn fg_acc(acc: vec2<f32>, t: f32) -> vec2<f32> {
  let s = acc.x + t;
  let bb = s - acc.x;
  let err = (acc.x - (s - bb)) + (t - bb);
  return vec2<f32>(s, acc.y + err);
}`;

function distParams(dist: RandomDist): { kind: string; params: Param[] } {
  switch (dist.kind) {
    case 'uniform': {
      const d = splitBits(dist.high - dist.low, 12, D_PIECES);
      const low = splitBits(dist.low, 24, LOW_PIECES);
      return {
        kind: 'uniform',
        params: [
          ...d.map((v, k) => ({ name: `d${k}`, type: 'f32' as const, value: v })),
          ...low.map((v, k) => ({ name: `low${k}`, type: 'f32' as const, value: v })),
        ],
      };
    }
    case 'normal':
      return {
        kind: 'normal',
        params: [
          { name: 'mean', type: 'f32', value: dist.mean },
          { name: 'stddev', type: 'f32', value: dist.std },
        ],
      };
    case 'int': {
      const range = dist.high - dist.low;
      if (!Number.isInteger(range) || range < 1 || range > 0xffffffff) {
        throw new RangeError(`random int: high - low must be an integer in [1, 2^32), got ${range}`);
      }
      return {
        kind: 'int',
        params: [
          { name: 'low', type: 'i32', value: dist.low },
          { name: 'range', type: 'u32', value: range },
        ],
      };
    }
    case 'bernoulliKeep':
      return { kind: 'bernoulliKeep', params: [{ name: 'p', type: 'f32', value: dist.p }] };
  }
}

function valueExpr(kind: string): string {
  switch (kind) {
    case 'uniform': {
      const terms: string[] = [];
      for (let k = 1; k < LOW_PIECES; k++) terms.push(`acc = fg_acc(acc, P.low${k});`);
      for (let k = 0; k < D_PIECES; k++) {
        terms.push(`acc = fg_acc(acc, P.d${k} * bh * 5.9604644775390625e-8);`);
        terms.push(`acc = fg_acc(acc, P.d${k} * bl * 5.9604644775390625e-8);`);
      }
      return `let b = fg_bits(P.key0, P.key1, i) >> 8u;
  let bh = f32(b >> 12u) * 4096.0;
  let bl = f32(b & 0xfffu);
  var acc = vec2<f32>(P.low0, 0.0);
  ${terms.join('\n  ')}
  let value = acc.x + acc.y;`;
    }
    case 'normal':
      // Box-Muller as in WGSL_RNG's fg_normal, with the prelude's accurate cosine.
      return `let u1 = f32((fg_bits(P.key0, P.key1, 2u * i) >> 8u) + 1u) * 5.9604644775390625e-8;
  let u2 = f32(fg_bits(P.key0, P.key1, 2u * i + 1u) >> 8u) * 5.9604644775390625e-8;
  let value = P.mean + P.stddev * (sqrt(-2.0 * log(u1)) * fg_cos(6.283185307179586 * u2));`;
    case 'int':
      return 'let value = bitcast<i32>(bitcast<u32>(P.low) + fg_bits(P.key0, P.key1, i) % P.range);';
    default:
      // Keep when the uniform is >= p, compared in f32 as the CPU does.
      return 'let value = select(0i, 1i, f32(fg_bits(P.key0, P.key1, i) >> 8u) * 5.9604644775390625e-8 >= P.p);';
  }
}

export function random(rt: Runtime, out: GPUStorage, key0: number, key1: number, dist: RandomDist): void {
  if (out.numel === 0) return;
  const { kind, params } = distParams(dist);
  const valueType = kind === 'uniform' || kind === 'normal' ? 'f32' : 'i32';
  rt.dispatch({
    name: `random.${kind}`,
    key: `random:${kind}`,
    binds: [{ name: 'dst', s: out, access: 'write' }],
    params: [
      { name: 'n', type: 'u32', value: out.numel },
      { name: 'key0', type: 'u32', value: key0 >>> 0 },
      { name: 'key1', type: 'u32', value: key1 >>> 0 },
      ...params,
    ],
    groups: Math.ceil(out.numel / WG),
    wgsl: () => `alias T = f32;
${WGSL_RNG}
${kind === 'uniform' ? TWO_SUM : ''}
${kind === 'normal' ? WGSL_TRIG : ''}
${entry(WG)} {
  let i = fg_group(wg, nwg) * ${WG}u + lid;
  if (i >= P.n) { return; }
  ${valueExpr(kind)}
  dst[i] = ${convert('value', valueType, scalarOf(out.dtype))};
}`,
  });
}
