/**
 * Layer normalization forward and backward over a [rows, cols] matrix. Forward is one dispatch:
 * each row's mean, its variance about that mean (a second pass, not E[x^2] - mean^2, which
 * cancels), and the normalized, scaled and shifted row. The mean is summed about the row's first
 * element and kept as the pair hi + lo of the Backend contract, so float32 keeps the deviations of
 * a row far from 0. Backward is a row pass for dx (two sums
 * per row) and, when dweight or dbias is wanted, a column pass that sums over the rows.
 *
 * As in softmax.ts, a short row (or any row on a CPU-emulated adapter, where every barrier costs
 * a coroutine switch per invocation) gets one thread; a long row gets one workgroup and tree
 * reductions in workgroup memory.
 */
import type { BlockSum, LayerNormLayout } from '../backend.js';
import { shareBuffers } from './fused-common.js';
import type { Bind, GPUStorage, Runtime } from './runtime.js';
import { itemReduceKernel } from './workgroup-reduce.js';
import { entry } from './wgsl.js';

/** Rows at most this long are handled by one thread each. */
const THREAD_ROW_MAX_COLS = 64;
const ROWS_PER_GROUP = 64;
const COLS_PER_GROUP = 64;

/**
 * Dispatches a row kernel over the [rows, cols] matrix of `l`: `body(total)` is the WGSL after
 * the invocation has its row `r`, first column `j0`, column step `dj`, row start `base` and
 * `n` = f32(cols); `total(v)` sums an invocation's partial over the row (over the workgroup when
 * a workgroup has the row). `variant` completes the kernel's label.
 */
function rowKernel(rt: Runtime, name: string, variant: string, binds: Bind[], l: LayerNormLayout, body: (total: (v: string) => string) => string): void {
  const perThread = l.cols <= THREAD_ROW_MAX_COLS || rt.cpuEmulated;
  itemReduceKernel(rt, {
    name,
    variant,
    binds,
    params: rowParams(l),
    count: l.rows,
    countParam: 'rows',
    perThread,
    wg: perThread ? ROWS_PER_GROUP : l.cols < 1024 ? 64 : 256,
    names: { item: 'r', first: 'j0', step: 'dj' },
    body: (total) => `let base = r * P.cols;
  let n = f32(P.cols);
  ${body(total)}`,
  });
}

const rowParams = (l: LayerNormLayout) => [
  { name: 'rows', type: 'u32' as const, value: l.rows },
  { name: 'cols', type: 'u32' as const, value: l.cols },
  { name: 'eps', type: 'f32' as const, value: l.eps },
];

function checkFloat32(op: string, ...s: (GPUStorage | null)[]): void {
  for (const t of s) if (t && t.dtype !== 'float32') throw new TypeError(`${op}: webgpu supports float32, got ${t.dtype}`);
}

export function layerNorm(
  rt: Runtime,
  x: GPUStorage,
  weight: GPUStorage | null,
  bias: GPUStorage | null,
  out: GPUStorage,
  mean: GPUStorage,
  rstd: GPUStorage,
  l: LayerNormLayout,
): void {
  checkFloat32('layerNorm', x, weight, bias, out, mean, rstd);
  if (l.rows === 0 || l.cols === 0) return;
  const binds: Bind[] = [{ name: 'x', s: x, access: 'read' }];
  if (weight) binds.push({ name: 'weight', s: weight, access: 'read' });
  if (bias) binds.push({ name: 'bias', s: bias, access: 'read' });
  binds.push({ name: 'dst', s: out, access: 'write' }, { name: 'mean_out', s: mean, access: 'write' }, { name: 'rstd_out', s: rstd, access: 'write' });
  const affine = `${weight ? ' * weight[j]' : ''}${bias ? ' + bias[j]' : ''}`;
  rowKernel(
    rt,
    'layerNorm',
    `${weight ? 'w' : ''}${bias ? 'b' : ''}`,
    binds,
    l,
    (total) => `// The sum runs about the row's first element: offset rows (all near 1000, say) would otherwise
  // lose the low bits of every term to the float32 running sum.
  let x0 = x[base];
  var s = 0.0;
  for (var j = j0; j < P.cols; j += dj) { s += x[base + j] - x0; }
  let m = ${total('s')} / n;
  // The mean x0 + m as the pair hi + lo of the Backend contract (an exact two-sum).
  let hi = x0 + m;
  let bb = hi - x0;
  let lo = (x0 - (hi - bb)) + (m - bb);
  var ss = 0.0;
  for (var j = j0; j < P.cols; j += dj) { let d = (x[base + j] - hi) - lo; ss += d * d; }
  // A NaN or an infinity in the row makes ss NaN (inf - inf), and so the whole row, as PyTorch.
  let rs = 1.0 / sqrt(${total('ss')} / n + P.eps);
  if (j0 == 0u) {
    mean_out[2u * r] = hi;
    mean_out[2u * r + 1u] = lo;
    rstd_out[r] = rs;
  }
  for (var j = j0; j < P.cols; j += dj) { dst[base + j] = ((x[base + j] - hi) - lo) * rs${affine}; }`,
  );
}

/**
 * What a captured step folds into layerNormBackward (Backend.layerNormBackwardFused's contract;
 * src/compile/fuse-reduce.ts): dx written as res + dx (or dx + res, `resFirst` false), the
 * residual add's bits, and block sums of dx as written (the bias gradients that reduce would sum
 * after it), taken in the column pass. Both passes stay one call of the plan.
 */
export interface LayerNormBackwardFolds {
  res: GPUStorage | null;
  resFirst: boolean;
  sums: { s: GPUStorage; b: BlockSum }[];
}

export function layerNormBackward(
  rt: Runtime,
  grad: GPUStorage,
  x: GPUStorage,
  mean: GPUStorage,
  rstd: GPUStorage,
  weight: GPUStorage | null,
  dx: GPUStorage | null,
  dweight: GPUStorage | null,
  dbias: GPUStorage | null,
  l: LayerNormLayout,
  folds: LayerNormBackwardFolds = { res: null, resFirst: false, sums: [] },
): void {
  checkFloat32('layerNormBackward', grad, x, mean, rstd, weight, dx, dweight, dbias, folds.res, ...folds.sums.map((f) => f.s));
  if (l.cols === 0) return;
  const { res, resFirst, sums } = folds;
  if (sums.length && !dx) throw new TypeError('layerNormBackward: block sums of dx need dx');
  const stats: Bind[] = [
    { name: 'grad', s: grad, access: 'read' },
    { name: 'x', s: x, access: 'read' },
    { name: 'mean_in', s: mean, access: 'read' },
    { name: 'rstd_in', s: rstd, access: 'read' },
  ];
  if (dx && l.rows > 0) {
    const gw = weight ? 'grad[base + j] * weight[j]' : 'grad[base + j]';
    const binds: Bind[] = [...stats, ...(weight ? [{ name: 'weight', s: weight, access: 'read' as const }] : []), ...(res ? [{ name: 'res', s: res, access: 'read' as const }] : []), { name: 'dx', s: dx, access: 'write' }];
    rowKernel(
      rt,
      'layerNormBackward',
      `${weight ? 'w' : ''}${res ? (resFirst ? 'r+' : '+r') : ''}`,
      shareBuffers(binds),
      l,
      (total) => `let hi = mean_in[2u * r];
  let lo = mean_in[2u * r + 1u];
  let rs = rstd_in[r];
  var a = 0.0;
  var b = 0.0;
  for (var j = j0; j < P.cols; j += dj) {
    let gw = ${gw};
    a += gw;
    b += gw * (((x[base + j] - hi) - lo) * rs);
  }
  let mean_gw = ${total('a')} / n;
  let mean_gw_xhat = ${total('b')} / n;
  for (var j = j0; j < P.cols; j += dj) {
    let v = rs * ((${gw}) - mean_gw - (((x[base + j] - hi) - lo) * rs) * mean_gw_xhat);
    dx[base + j] = ${res ? (resFirst ? 'res[base + j] + v' : 'v + res[base + j]') : 'v'};
  }`,
    );
  }
  const params = dweight || dbias;
  if (!params && !sums.length) return;
  // One thread per column, down the rows: neighbouring threads read neighbouring columns. The
  // parameter sums take threads [0, cols), block sum k the next sums[k].width.
  const outs: Bind[] = [];
  if (dweight) outs.push({ name: 'dweight', s: dweight, access: 'write' });
  if (dbias) outs.push({ name: 'dbias', s: dbias, access: 'write' });
  const jobs: string[] = [];
  let first = 0;
  if (params) {
    jobs.push(`if (t < P.cols) {
    let j = t;
    var sw = 0.0;
    var sb = 0.0;
    for (var r = 0u; r < P.rows; r++) {
      let g = grad[r * P.cols + j];
      sw += g * (((x[r * P.cols + j] - mean_in[2u * r]) - mean_in[2u * r + 1u]) * rstd_in[r]);
      sb += g;
    }
    ${dweight ? 'dweight[j] = sw;' : ''}
    ${dbias ? 'dbias[j] = sb;' : ''}
    return;
  }`);
    first = l.cols;
  }
  sums.forEach(({ s, b }, k) => {
    outs.push({ name: `sum${k}`, s, access: 'write' });
    jobs.push(`if (t < ${first + b.width}u) {
    let j = t - ${first}u;
    var s = 0.0;
    for (var i = 0u; i < ${b.count}u; i++) { s += dx_in[${b.offset}u + i * ${b.period}u + j]; }
    sum${k}[j] = s;
    return;
  }`);
    first += b.width;
  });
  rt.dispatch({
    name: 'layerNormBackwardParams',
    key: `layerNormBackwardParams:${dweight ? 'w' : ''}${dbias ? 'b' : ''}${sums.length ? `+${sums.length} sums` : ''}`,
    binds: shareBuffers([...(params ? stats : []), ...(sums.length ? [{ name: 'dx_in', s: dx!, access: 'read' as const }] : []), ...outs]),
    params: rowParams(l),
    groups: Math.ceil(first / COLS_PER_GROUP),
    wgsl: () => `${entry(COLS_PER_GROUP)} {
  let t = fg_group(wg, nwg) * ${COLS_PER_GROUP}u + lid;
  ${jobs.join('\n  ')}
}`,
  });
}
