/**
 * Reductions over the middle dim of [outer, size, inner]: sum/prod/max/min, argmax/argmin, and the
 * two-pass global sum of squares. Two kernel shapes:
 * - tree: one workgroup per contiguous row (inner == 1), threads stride over the row and meet in a
 *   workgroup-memory tree; long rows with few of them are split into chunks whose partials are
 *   reduced by another pass;
 * - loop: one thread per output, walking the reduced dim with stride `inner` (coalesced across
 *   threads); few outputs over a long dim split the dim into chunks the same way.
 * On CPU-emulated adapters a barrier switches every invocation's coroutine, which makes the tree
 * some fifty times slower than threads that each sum a contiguous chunk: there the loop kernel does
 * everything.
 * max/min propagate NaN as the CPU backend does; argmax/argmin return the first extreme.
 */
import type { ArgReduceOp, ReduceLayout, ReduceOp } from '../backend.js';
import { fill } from './copy.js';
import type { GPUStorage, Runtime } from './runtime.js';
import { computeOf, convert, entry, INF_F32, isNan, scalarOf, type Scalar } from './wgsl.js';

const WG = 256;
/** Elements one tree workgroup reduces before its partial goes to the next pass. */
const TREE_CHUNK = 4096;
/** Rows at or above which the tree kernel has enough workgroups not to split rows. */
const TREE_ROWS_ENOUGH = 64;
/** Outputs below which the loop kernel splits the reduced dim into chunks. */
const LOOP_OUTPUTS_ENOUGH = 4096;

type AnyReduce = ReduceOp | 'sumsq';

function identity(op: AnyReduce | ArgReduceOp, T: 'f32' | 'i32'): string {
  const big = T === 'f32' ? INF_F32 : '2147483647i';
  const small = T === 'f32' ? `-${INF_F32}` : 'bitcast<i32>(0x80000000u)';
  if (op === 'max' || op === 'argmax') return small;
  if (op === 'min' || op === 'argmin') return big;
  if (op === 'prod') return `${T}(1)`;
  return `${T}(0)`;
}

/** `fg_comb(a, b)`: the reduction's combine; max/min let a NaN on either side win. */
function combineFn(op: AnyReduce, T: 'f32' | 'i32'): string {
  if (op === 'sum' || op === 'sumsq') return `fn fg_comb(a: ${T}, b: ${T}) -> ${T} { return a + b; }`;
  if (op === 'prod') return `fn fg_comb(a: ${T}, b: ${T}) -> ${T} { return a * b; }`;
  const cmp = op === 'max' ? '>' : '<';
  return `fn fg_comb(a: ${T}, b: ${T}) -> ${T} { if (${isNan('b', T)}) { return b; } return select(a, b, b ${cmp} a); }`;
}

/**
 * `fg_better(va, ia, vb, ib)`: whether candidate b replaces a. The first NaN wins, then the
 * extreme, then the lower index, so partial results may be combined in any order.
 */
function betterFn(op: ArgReduceOp, T: 'f32' | 'i32'): string {
  const cmp = op === 'argmax' ? '>' : '<';
  return `const NONE = 0xffffffffu;
fn fg_better(va: ${T}, ia: u32, vb: ${T}, ib: u32) -> bool {
  if (ib == NONE) { return false; }
  if (ia == NONE) { return true; }
  if (${isNan('va', T)}) { return ${isNan('vb', T)} && ib < ia; }
  if (${isNan('vb', T)}) { return true; }
  return vb ${cmp} va || (vb == va && ib < ia);
}`;
}

interface Pass {
  op: AnyReduce | ArgReduceOp;
  x: GPUStorage;
  /** Value output (omitted for arg reductions, which only write indices). */
  out: GPUStorage | null;
  argOut: GPUStorage | null;
  outer: number;
  size: number;
  inner: number;
  nchunks: number;
}

function isArg(op: AnyReduce | ArgReduceOp): op is ArgReduceOp {
  return op === 'argmax' || op === 'argmin';
}

/** The value load of element `p` of x, converted to the compute type (squared for sumsq). */
function loadExpr(op: AnyReduce | ArgReduceOp, xs: Scalar, T: 'f32' | 'i32', p: string): string {
  const v = convert(`x[${p}]`, xs, T);
  return op === 'sumsq' ? `fg_sq(${v})` : v;
}

function prelude(op: AnyReduce | ArgReduceOp, T: 'f32' | 'i32'): string {
  const sq = op === 'sumsq' ? `fn fg_sq(v: ${T}) -> ${T} { return v * v; }\n` : '';
  return sq + (isArg(op) ? betterFn(op, T) : combineFn(op, T));
}

/** The storage of the pass's result: value or index, converted to its dtype. */
function storeLines(p: Pass, T: 'f32' | 'i32', at: string, value: string, index: string): string {
  if (p.argOut) return `arg_out[${at}] = i32(${index});`;
  return `dst[${at}] = ${convert(value, T, scalarOf(p.out!.dtype))};`;
}

function binds(p: Pass) {
  const list = [{ name: 'x', s: p.x, access: 'read' as const }];
  if (p.argOut) return [...list, { name: 'arg_out', s: p.argOut, access: 'write' as const }];
  return [...list, { name: 'dst', s: p.out!, access: 'write' as const }];
}

function params(p: Pass, chunk: number) {
  return [
    { name: 'outer', type: 'u32' as const, value: p.outer },
    { name: 'size', type: 'u32' as const, value: p.size },
    { name: 'inner', type: 'u32' as const, value: p.inner },
    { name: 'nchunks', type: 'u32' as const, value: p.nchunks },
    { name: 'chunk', type: 'u32' as const, value: chunk },
  ];
}

/** One workgroup per (row, chunk) of a contiguous row; writes out[row * nchunks + chunk]. */
function treePass(rt: Runtime, p: Pass, T: 'f32' | 'i32'): void {
  const chunk = Math.ceil(p.size / p.nchunks);
  const arg = isArg(p.op);
  const xs = scalarOf(p.x.dtype);
  rt.dispatch({
    name: `reduce.tree.${p.op}`,
    key: `rtree:${p.op}:${T}`,
    binds: binds(p),
    params: params(p, chunk),
    groups: p.outer * p.nchunks,
    wgsl: () => `${prelude(p.op, T)}
var<workgroup> sv: array<${T}, ${WG}>;
${arg ? `var<workgroup> si: array<u32, ${WG}>;` : ''}
${entry(WG)} {
  let g = fg_group(wg, nwg);
  if (g >= P.outer * P.nchunks) { return; }
  let ch = g % P.nchunks;
  let row = (g / P.nchunks) * P.size;
  let j1 = min(P.size, ch * P.chunk + P.chunk);
  var acc = ${identity(p.op, T)};
  ${arg ? 'var best = NONE;' : ''}
  for (var j = ch * P.chunk + lid; j < j1; j += ${WG}u) {
    let v = ${loadExpr(p.op, xs, T, 'row + j')};
    ${arg ? 'if (fg_better(acc, best, v, j)) { acc = v; best = j; }' : 'acc = fg_comb(acc, v);'}
  }
  sv[lid] = acc;
  ${arg ? 'si[lid] = best;' : ''}
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      ${arg ? 'if (fg_better(sv[lid], si[lid], sv[lid + s], si[lid + s])) { sv[lid] = sv[lid + s]; si[lid] = si[lid + s]; }' : 'sv[lid] = fg_comb(sv[lid], sv[lid + s]);'}
    }
    workgroupBarrier();
  }
  if (lid == 0u) { ${storeLines(p, T, 'g', 'sv[0]', 'si[0]')} }
}`,
  });
}

/** One thread per (outer, chunk, inner) output, looping over its chunk of the reduced dim. */
function loopPass(rt: Runtime, p: Pass, T: 'f32' | 'i32'): void {
  const chunk = Math.ceil(p.size / p.nchunks);
  const arg = isArg(p.op);
  const xs = scalarOf(p.x.dtype);
  const total = p.outer * p.nchunks * p.inner;
  rt.dispatch({
    name: `reduce.loop.${p.op}`,
    key: `rloop:${p.op}:${T}`,
    binds: binds(p),
    params: params(p, chunk),
    groups: Math.ceil(total / WG),
    wgsl: () => `${prelude(p.op, T)}
${entry(WG)} {
  let t = fg_group(wg, nwg) * ${WG}u + lid;
  if (t >= P.outer * P.nchunks * P.inner) { return; }
  let i = t % P.inner;
  let rest = t / P.inner;
  let j0 = (rest % P.nchunks) * P.chunk;
  let j1 = min(P.size, j0 + P.chunk);
  var p = ((rest / P.nchunks) * P.size + j0) * P.inner + i;
  var acc = ${identity(p.op, T)};
  ${arg ? 'var best = NONE;' : ''}
  for (var j = j0; j < j1; j++) {
    let v = ${loadExpr(p.op, xs, T, 'p')};
    ${arg ? 'if (fg_better(acc, best, v, j)) { acc = v; best = j; }' : 'acc = fg_comb(acc, v);'}
    p += P.inner;
  }
  ${storeLines(p, T, 't', 'acc', 'best')}
}`,
  });
}

function computeType(x: GPUStorage, out: GPUStorage): 'f32' | 'i32' {
  return x.dtype === 'float32' || out.dtype === 'float32' ? 'f32' : computeOf(out.dtype);
}

function partialDtype(T: 'f32' | 'i32') {
  return T === 'f32' ? ('float32' as const) : ('int32' as const);
}

export function reduce(rt: Runtime, op: ReduceOp, x: GPUStorage, out: GPUStorage, l: ReduceLayout): void {
  if (out.numel !== l.outer * l.inner) throw new RangeError(`reduce: out has ${out.numel} elements, layout needs ${l.outer * l.inner}`);
  if (out.numel === 0) return;
  if (l.size === 0) {
    fill(rt, out, op === 'sum' ? 0 : op === 'prod' ? 1 : op === 'max' ? -Infinity : Infinity);
    return;
  }
  reduceInto(rt, op, x, out, l, computeType(x, out));
}

/** Whether a contiguous-row reduction goes to the workgroup tree. */
function useTree(rt: Runtime, l: ReduceLayout): boolean {
  return !rt.cpuEmulated && l.inner === 1 && l.size >= 128;
}

function reduceInto(rt: Runtime, op: AnyReduce, x: GPUStorage, out: GPUStorage, l: ReduceLayout, T: 'f32' | 'i32'): void {
  const { outer, size, inner } = l;
  const tree = useTree(rt, l);
  const nchunks = tree
    ? outer >= TREE_ROWS_ENOUGH ? 1 : Math.ceil(size / TREE_CHUNK)
    : outer * inner >= LOOP_OUTPUTS_ENOUGH || size <= 256 ? 1 : Math.min(Math.ceil(size / 64), Math.ceil(LOOP_OUTPUTS_ENOUGH / (outer * inner)));
  const target = nchunks === 1 ? out : rt.temp(outer * nchunks * inner, partialDtype(T));
  const pass: Pass = { op, x, out: target, argOut: null, outer, size, inner, nchunks };
  if (tree) treePass(rt, pass, T);
  else loopPass(rt, pass, T);
  if (nchunks === 1) return;
  // The partials combine with the same op (a sum of squares continues as a plain sum).
  reduceInto(rt, op === 'sumsq' ? 'sum' : op, target, out, { outer, size: nchunks, inner }, T);
  rt.release(target);
}

export function argReduce(rt: Runtime, op: ArgReduceOp, x: GPUStorage, out: GPUStorage, l: ReduceLayout): void {
  if (out.numel !== l.outer * l.inner) throw new RangeError(`argReduce: out has ${out.numel} elements, layout needs ${l.outer * l.inner}`);
  if (out.numel === 0) return;
  if (l.size === 0) throw new RangeError(`${op}: cannot reduce over an empty dim`);
  const T = computeOf(x.dtype);
  const pass: Pass = { op, x, out: null, argOut: out, ...l, nchunks: 1 };
  if (useTree(rt, l)) treePass(rt, pass, T);
  else loopPass(rt, pass, T);
}

/**
 * out[0] = sum of x^2 over a flat float32 storage, always in two passes: at most 1024 workgroup
 * partials, then one workgroup over those.
 */
export function sumSquares(rt: Runtime, x: GPUStorage, out: GPUStorage): void {
  if (x.dtype !== 'float32' || out.dtype !== 'float32') throw new TypeError('sumSquares: x and out must be float32');
  if (out.numel !== 1) throw new RangeError(`sumSquares: out must have 1 element, got ${out.numel}`);
  if (x.numel === 0) {
    fill(rt, out, 0);
    return;
  }
  const nchunks = Math.min(1024, Math.ceil(x.numel / (rt.cpuEmulated ? 256 : TREE_CHUNK)));
  const partials = rt.temp(nchunks, 'float32');
  const pass = rt.cpuEmulated ? loopPass : treePass;
  pass(rt, { op: 'sumsq', x, out: partials, argOut: null, outer: 1, size: x.numel, inner: 1, nchunks }, 'f32');
  pass(rt, { op: 'sum', x: partials, out, argOut: null, outer: 1, size: nchunks, inner: 1, nchunks: 1 }, 'f32');
  rt.release(partials);
}
