/**
 * gather (torch.gather / index_select) and its adjoint scatterAdd over [outer, xDim, inner].
 * scatterAdd has no float atomics to lean on, and scanning every index for every output costs
 * O(xDim * idxDim) per column (an embedding's backward: vocabulary x tokens x width). Instead the
 * index column is stably sorted once (sort.ts), and each output element binary-searches its index
 * there and sums only the sources that hit it, in ascending source order: deterministic, and the
 * same order of additions as the CPU reference.
 */
import type { GatherLayout } from '../backend.js';
import type { GPUStorage, Runtime } from './runtime.js';
import { fill } from './copy.js';
import { argsort } from './sort.js';
import { convert, entry, NAN_F32, scalarOf } from './wgsl.js';

const WG = 256;

function layoutParams(l: GatherLayout) {
  return [
    { name: 'outer', type: 'u32' as const, value: l.outer },
    { name: 'inner', type: 'u32' as const, value: l.inner },
    { name: 'x_dim', type: 'i32' as const, value: l.xDim },
    { name: 'idx_dim', type: 'u32' as const, value: l.idxDim },
  ];
}

/** The WGSL expression of the index for position (o, j, i) whose flat position is `pos`. */
function indexAt(idx: GPUStorage, perPosition: boolean): string {
  return convert(`idx[${perPosition ? 'pos' : 'j'}]`, scalarOf(idx.dtype), 'i32');
}

export function gather(rt: Runtime, x: GPUStorage, idx: GPUStorage, out: GPUStorage, l: GatherLayout): void {
  const total = l.outer * l.idxDim * l.inner;
  if (total === 0) return;
  const xs = scalarOf(x.dtype);
  const bad = xs === 'f32' ? NAN_F32 : `${xs}(0)`;
  rt.dispatch({
    name: 'gather',
    key: `gather:${l.perPosition}`,
    binds: [
      { name: 'x', s: x, access: 'read' },
      { name: 'idx', s: idx, access: 'read' },
      { name: 'dst', s: out, access: 'write' },
    ],
    params: [...layoutParams(l), { name: 'total', type: 'u32', value: total }],
    groups: Math.ceil(total / WG),
    wgsl: () => `${entry(WG)} {
  let pos = fg_group(wg, nwg) * ${WG}u + lid;
  if (pos >= P.total) { return; }
  let i = pos % P.inner;
  let j = (pos / P.inner) % P.idx_dim;
  let o = pos / (P.inner * P.idx_dim);
  let k = ${indexAt(idx, l.perPosition)};
  var v = ${bad};
  if (k >= 0i && k < P.x_dim) { v = ${convert(`x[(o * u32(P.x_dim) + u32(k)) * P.inner + i]`, xs, scalarOf(out.dtype))}; }
  dst[pos] = v;
}`,
  });
}

export function scatterAdd(rt: Runtime, src: GPUStorage, idx: GPUStorage, out: GPUStorage, l: GatherLayout): void {
  const total = l.outer * l.xDim * l.inner;
  if (total === 0) return;
  if (l.idxDim === 0) return fill(rt, out, 0);
  // The index columns, stably sorted: one column per (outer, inner) position, or the one shared
  // index of index_select.
  const columns = l.perPosition ? { outer: l.outer, inner: l.inner } : { outer: 1, inner: 1 };
  const order = rt.temp(columns.outer * l.idxDim * columns.inner, 'int32');
  argsort(rt, idx, order, { ...columns, size: l.idxDim, descending: false });
  const os = scalarOf(out.dtype);
  const acc = os === 'f32' ? 'f32' : 'i32';
  const key = (q: string) => convert(`idx[col + u32(order[col + (${q}) * stride]) * stride]`, scalarOf(idx.dtype), 'i32');
  rt.dispatch({
    name: 'scatterAdd',
    key: `scatterAdd:${l.perPosition}`,
    binds: [
      { name: 'src', s: src, access: 'read' },
      { name: 'idx', s: idx, access: 'read' },
      { name: 'order', s: order, access: 'read' },
      { name: 'dst', s: out, access: 'write' },
    ],
    params: [...layoutParams(l), { name: 'total', type: 'u32', value: total }],
    groups: Math.ceil(total / WG),
    wgsl: () => `${entry(WG)} {
  let t = fg_group(wg, nwg) * ${WG}u + lid;
  if (t >= P.total) { return; }
  let i = t % P.inner;
  let k = i32((t / P.inner) % u32(P.x_dim));
  let o = t / (P.inner * u32(P.x_dim));
  let col = ${l.perPosition ? 'o * P.idx_dim * P.inner + i' : '0u'};
  let stride = ${l.perPosition ? 'P.inner' : '1u'};
  // Lower bound of k in the sorted column, then its run of equal indices in ascending j.
  var a = 0u;
  var b = P.idx_dim;
  while (a < b) {
    let m = (a + b) / 2u;
    if (${key('m')} < k) { a = m + 1u; } else { b = m; }
  }
  var sum = ${acc}(0);
  for (var q = a; q < P.idx_dim; q++) {
    if (${key('q')} != k) { break; }
    let j = u32(order[col + q * stride]);
    sum += ${convert('src[(o * P.idx_dim + j) * P.inner + i]', scalarOf(src.dtype), acc)};
  }
  dst[t] = ${convert('sum', acc, os)};
}`,
  });
  rt.release(order);
}
