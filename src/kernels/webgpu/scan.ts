/**
 * cumsum along the middle dim of [outer, size, inner]: one invocation per (outer, inner) column
 * walks it in order, so each prefix is the same left-to-right sum the CPU reference computes
 * (in f32 here, so float32 results differ from its float64 accumulation by rounding only).
 */
import type { ReduceLayout } from '../backend.js';
import type { GPUStorage, Runtime } from './runtime.js';
import { computeOf, convert, entry, scalarOf } from './wgsl.js';

const WG = 256;

export function cumsum(rt: Runtime, x: GPUStorage, out: GPUStorage, l: ReduceLayout): void {
  const { outer, size, inner } = l;
  if (out.numel !== outer * size * inner || x.numel !== out.numel) throw new RangeError(`cumsum: x has ${x.numel} and out ${out.numel} elements, layout needs ${outer * size * inner}`);
  const columns = outer * inner;
  if (out.numel === 0) return;
  const T = computeOf(out.dtype);
  rt.dispatch({
    name: 'cumsum',
    key: `cumsum:${T}`,
    binds: [
      { name: 'x', s: x, access: 'read' },
      { name: 'dst', s: out, access: 'write' },
    ],
    params: [
      { name: 'size', type: 'u32', value: size },
      { name: 'inner', type: 'u32', value: inner },
      { name: 'columns', type: 'u32', value: columns },
    ],
    groups: Math.ceil(columns / WG),
    wgsl: () => `${entry(WG)} {
  let c = fg_group(wg, nwg) * ${WG}u + lid;
  if (c >= P.columns) { return; }
  var p = (c / P.inner) * P.size * P.inner + c % P.inner;
  var acc = ${T}(0);
  for (var j = 0u; j < P.size; j++) {
    acc += ${convert('x[p]', scalarOf(x.dtype), T)};
    dst[p] = ${convert('acc', T, scalarOf(out.dtype))};
    p += P.inner;
  }
}`,
  });
}
