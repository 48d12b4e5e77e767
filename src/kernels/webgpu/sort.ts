/**
 * A stable argsort of every (outer, inner) column of [outer, size, inner], as a merge sort with
 * one invocation per element and one dispatch per doubling of the run width (ceil(log2 size)
 * passes). Each element finds its place in the merged run by binary search in the sibling run:
 * its position in its own run plus the number of sibling elements that go before it. Elements of
 * the left run win ties, so equal values keep their original order and the sort is stable without
 * carrying the index as a key. Only the permutation moves between passes; the values are read
 * from x through it, so nothing but indices is written.
 *
 * The order is torch's: NaN is larger than every number (last ascending, first descending).
 */
import type { SortLayout } from '../backend.js';
import { fill } from './copy.js';
import type { GPUStorage, Runtime } from './runtime.js';
import { computeOf, convert, entry, isNan, scalarOf } from './wgsl.js';

const WG = 256;

/**
 * `fg_before(u, v)`: whether value u goes strictly before value v, for a shader of compute type
 * T. Shared with the sorted scatterAdd in gather.ts.
 */
export function beforeFn(T: 'f32' | 'i32', descending: boolean): string {
  const body = descending
    ? `if (${isNan('v', T)}) { return false; } return ${isNan('u', T)} || u > v;`
    : `if (${isNan('u', T)}) { return false; } return ${isNan('v', T)} || u < v;`;
  return `fn fg_before(u: ${T}, v: ${T}) -> bool { ${body} }`;
}

export function argsort(rt: Runtime, x: GPUStorage, out: GPUStorage, l: SortLayout): void {
  const { outer, size, inner } = l;
  const total = outer * size * inner;
  if (out.numel !== total || x.numel !== total) throw new RangeError(`argsort: x has ${x.numel} and out ${out.numel} elements, layout needs ${total}`);
  if (total === 0) return;
  if (size === 1) {
    fill(rt, out, 0);
    return;
  }
  const passes = Math.ceil(Math.log2(size));
  const other = rt.temp(total, 'int32');
  // Pass k writes to `out` when (passes - 1 - k) is even, so that the last pass lands there.
  for (let k = 0, width = 1; k < passes; k++, width *= 2) {
    const toOut = (passes - 1 - k) % 2 === 0;
    mergePass(rt, x, toOut ? other : out, toOut ? out : other, l, width, k === 0);
  }
  rt.release(other);
}

/** Merges sorted runs of `width` into runs of 2 * width; the first pass starts from the identity. */
function mergePass(rt: Runtime, x: GPUStorage, src: GPUStorage, dst: GPUStorage, l: SortLayout, width: number, first: boolean): void {
  const T = computeOf(x.dtype);
  const xs = scalarOf(x.dtype);
  const total = l.outer * l.size * l.inner;
  rt.dispatch({
    name: 'argsort.merge',
    key: `argsort:${T}:${l.descending}:${first}`,
    binds: [
      { name: 'x', s: x, access: 'read' },
      { name: 'src', s: src, access: 'read' },
      { name: 'dst', s: dst, access: 'write' },
    ],
    params: [
      { name: 'size', type: 'u32', value: l.size },
      { name: 'inner', type: 'u32', value: l.inner },
      { name: 'total', type: 'u32', value: total },
      { name: 'width', type: 'u32', value: width },
    ],
    groups: Math.ceil(total / WG),
    wgsl: () => `${beforeFn(T, l.descending)}
${entry(WG)} {
  let t = fg_group(wg, nwg) * ${WG}u + lid;
  if (t >= P.total) { return; }
  let i = t % P.inner;
  let p = (t / P.inner) % P.size;
  let base = (t / (P.inner * P.size)) * P.size * P.inner + i;
  let e = ${first ? 'p' : 'u32(src[base + p * P.inner])'};
  let v = ${convert('x[base + e * P.inner]', xs, T)};
  let run = p / P.width;
  let start = run * P.width;
  let is_left = (run & 1u) == 0u;
  var lo = min(start + P.width, P.size);
  var hi = min(start + 2u * P.width, P.size);
  if (!is_left) { lo = start - P.width; hi = start; }
  // First sibling position whose element does not go before this one (left run: strictly
  // before; right run: before or equal, so that the left run wins ties).
  var a = lo;
  var b = hi;
  while (a < b) {
    let m = (a + b) / 2u;
    let s = ${convert(`x[base + ${first ? 'm' : 'u32(src[base + m * P.inner])'} * P.inner]`, xs, T)};
    var goes_before = fg_before(s, v);
    if (!is_left) { goes_before = !fg_before(v, s); }
    if (goes_before) { a = m + 1u; } else { b = m; }
  }
  let dest = min(start, lo) + (p - start) + (a - lo);
  dst[base + dest * P.inner] = i32(e);
}`,
  });
}
