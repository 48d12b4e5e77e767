/**
 * Row-wise softmax / log-softmax and the fused softmax cross-entropy forward and backward over a
 * [rows, cols] matrix. Each needs the row's max and log-sum-exp (and, with label smoothing, the
 * row sum): short rows get one thread each, long rows one workgroup each with tree reductions.
 */
import type { CrossEntropyLayout, SoftmaxLayout } from '../backend.js';
import { fill } from './copy.js';
import type { Bind, GPUStorage, Runtime } from './runtime.js';
import { convert, entry, INF_F32, NAN_F32, scalarMathPrelude, scalarOf } from './wgsl.js';
import { MATH_CORE } from './wgsl-math-core.js';
import { workgroupReduce } from './workgroup-reduce.js';

/** Rows at most this long are handled by one thread each. */
const THREAD_ROW_MAX_COLS = 64;
const ROWS_PER_GROUP = 64;

type RowKind = 'softmax' | 'logSoftmax' | 'ce' | 'ceBackward';

/**
 * `fg_row_stats(base, lid)` -> (max, log-sum-exp, sum, sum of exp(x - max)) of x[base .. base + cols).
 * The edge cases follow the CPU: a NaN anywhere makes max and lse NaN (the max alone would skip
 * it); a row of -inf has lse -inf; a +inf entry makes lse NaN (and so the whole row).
 */
function statsThread(): string {
  return `fn fg_row_stats(base: u32, lid: u32) -> vec4<f32> {
  var mx = -${INF_F32};
  var has_nan = false;
  for (var j = 0u; j < P.cols; j++) { let v = x[base + j]; mx = select(mx, v, v > mx); has_nan = has_nan | fg_isnan(v); }
  mx = select(mx, ${NAN_F32}, has_nan);
  var se = 0.0;
  var sx = 0.0;
  for (var j = 0u; j < P.cols; j++) { let v = x[base + j]; se += fg_exp(v - mx); sx += v; }
  return vec4<f32>(mx, fg_lse(mx, se), sx, se);
}`;
}

function statsWorkgroup(wg: number): string {
  return `${workgroupReduce(wg)}
fn fg_row_stats(base: u32, lid: u32) -> vec4<f32> {
  var mx = -${INF_F32};
  var has_nan = 0.0;
  for (var j = lid; j < P.cols; j += ${wg}u) { let v = x[base + j]; mx = select(mx, v, v > mx); has_nan = select(has_nan, 1.0, fg_isnan(v)); }
  mx = fg_wg_reduce(mx, lid, true);
  mx = select(mx, ${NAN_F32}, fg_wg_reduce(has_nan, lid, true) != 0.0);
  var se = 0.0;
  var sx = 0.0;
  for (var j = lid; j < P.cols; j += ${wg}u) { let v = x[base + j]; se += fg_exp(v - mx); sx += v; }
  se = fg_wg_reduce(se, lid, false);
  sx = fg_wg_reduce(sx, lid, false);
  return vec4<f32>(mx, fg_lse(mx, se), sx, se);
}`;
}

const LSE = `fn fg_lse(mx: f32, se: f32) -> f32 {
  if (fg_isnan(mx)) { return mx; }
  if (mx == -${INF_F32}) { return mx; }
  // A +inf entry: PyTorch's x - max is inf - inf = NaN there, which makes the whole row NaN.
  if (mx == ${INF_F32}) { return ${NAN_F32}; }
  return mx + fg_log(se);
}
// Whether the row max is finite (not NaN): only then are the shifted forms below defined.
fn fg_finite_row(st: vec4<f32>) -> bool { return !fg_isnan(st.x) && abs(st.x) < ${INF_F32}; }
// x - lse as (x - max) - log(sum) (PyTorch's log_softmax): subtracting a float32 lse would carry
// lse's rounding (an ulp of the max, 6e-5 near 1000) into every result. Non-finite rows keep
// the CPU rule x - lse.
fn fg_log_prob(v: f32, st: vec4<f32>) -> f32 {
  if (fg_finite_row(st)) { return (v - st.x) - fg_log(st.w); }
  return v - st.y;
}
// The probability as exp of that, for the same reason; not exp(x - max) / sum, whose quotient
// would flush the subnormal probabilities that fg_exp makes.
fn fg_prob(v: f32, st: vec4<f32>) -> f32 { return fg_exp(fg_log_prob(v, st)); }`;

/** The per-element or per-row body, given `base` (row start), `r` (row), `st` (stats), `j0`/`dj` (column walk). */
function body(kind: RowKind, labelScalar: string | null): string {
  // An ignored label is tested apart from the range: ignoreIndex may name a real class.
  const label = labelScalar ? `let y = ${convert('labels[r]', labelScalar as 'i32', 'i32')};
  let ignored = y == P.ignore_index;
  let valid = y >= 0i && y < i32(P.cols);` : '';
  switch (kind) {
    case 'softmax':
      return `for (var j = j0; j < P.cols; j += dj) { dst[base + j] = fg_prob(x[base + j], st); }`;
    case 'logSoftmax':
      return `for (var j = j0; j < P.cols; j += dj) { dst[base + j] = fg_log_prob(x[base + j], st); }`;
    case 'ce':
      return `${label}
  if (j0 == 0u) {
    let lse = st.y;
    var loss = ${NAN_F32};
    if (valid) {
      loss = -(1.0 - P.smoothing) * fg_log_prob(x[base + u32(y)], st);
      if (P.smoothing != 0.0) { loss += P.smoothing * (lse - st.z / f32(P.cols)); }
    }
    dst[r] = select(loss, 0.0, ignored);
  }`;
    case 'ceBackward':
      return `${label}
  let g = grad_rows[r];
  let off = P.smoothing / f32(P.cols);
  for (var j = j0; j < P.cols; j += dj) {
    let tgt = select(0.0, 1.0 - P.smoothing, i32(j) == y) + off;
    dst[base + j] = select(select(${NAN_F32}, (fg_prob(x[base + j], st) - tgt) * g, valid), 0.0, ignored);
  }`;
  }
}

function rowKernel(
  rt: Runtime,
  kind: RowKind,
  x: GPUStorage,
  out: GPUStorage,
  rows: number,
  cols: number,
  extra: { labels?: GPUStorage; gradRows?: GPUStorage; smoothing?: number; ignoreIndex?: number },
): void {
  if (x.dtype !== 'float32') throw new TypeError(`${kind}: webgpu supports float32 logits, got ${x.dtype}`);
  if (rows === 0 || out.numel === 0) return;
  if (cols === 0) {
    // No class can match a label, so every loss is NaN (the gradient of nothing is empty).
    if (kind === 'ce') fill(rt, out, NaN);
    return;
  }
  // CPU-emulated adapters pay a coroutine switch per invocation at each barrier: one thread per row.
  const perThread = cols <= THREAD_ROW_MAX_COLS || rt.cpuEmulated;
  const wg = perThread ? ROWS_PER_GROUP : cols < 1024 ? 64 : 256;
  const binds: Bind[] = [{ name: 'x', s: x, access: 'read' }];
  if (extra.labels) binds.push({ name: 'labels', s: extra.labels, access: 'read' });
  if (extra.gradRows) binds.push({ name: 'grad_rows', s: extra.gradRows, access: 'read' });
  binds.push({ name: 'dst', s: out, access: 'write' });
  const labelScalar = extra.labels ? scalarOf(extra.labels.dtype) : null;
  rt.dispatch({
    name: kind,
    key: `${kind}:${perThread ? 't' : `w${wg}`}`,
    binds,
    params: [
      { name: 'rows', type: 'u32', value: rows },
      { name: 'cols', type: 'u32', value: cols },
      { name: 'smoothing', type: 'f32', value: extra.smoothing ?? 0 },
      { name: 'ignore_index', type: 'i32', value: extra.ignoreIndex ?? 0 },
    ],
    groups: perThread ? Math.ceil(rows / wg) : rows,
    // exp and log from the prelude: the builtins lose ulps (and flush subnormal probabilities).
    wgsl: () => `${scalarMathPrelude('fg_exp( fg_log(', MATH_CORE)}
${LSE}
${perThread ? statsThread() : statsWorkgroup(wg)}
${entry(wg)} {
  ${
    perThread
      ? `let r = fg_group(wg, nwg) * ${wg}u + lid;
  if (r >= P.rows) { return; }
  let j0 = 0u;
  let dj = 1u;`
      : `let r = fg_group(wg, nwg);
  if (r >= P.rows) { return; }
  let j0 = lid;
  let dj = ${wg}u;`
  }
  let base = r * P.cols;
  let st = fg_row_stats(base, lid);
  ${body(kind, labelScalar)}
}`,
  });
}

export function softmax(rt: Runtime, x: GPUStorage, out: GPUStorage, l: SoftmaxLayout): void {
  rowKernel(rt, l.log ? 'logSoftmax' : 'softmax', x, out, l.rows, l.cols, {});
}

export function crossEntropy(rt: Runtime, logits: GPUStorage, labels: GPUStorage, out: GPUStorage, l: CrossEntropyLayout): void {
  rowKernel(rt, 'ce', logits, out, l.rows, l.cols, { labels, smoothing: l.labelSmoothing, ignoreIndex: l.ignoreIndex });
}

export function crossEntropyBackward(
  rt: Runtime,
  logits: GPUStorage,
  labels: GPUStorage,
  gradRows: GPUStorage,
  out: GPUStorage,
  l: CrossEntropyLayout,
): void {
  rowKernel(rt, 'ceBackward', logits, out, l.rows, l.cols, { labels, gradRows, smoothing: l.labelSmoothing, ignoreIndex: l.ignoreIndex });
}
