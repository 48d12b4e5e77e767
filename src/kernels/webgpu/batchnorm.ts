/**
 * Batch normalization over x [n, c, hw] (channel ch is n rows of hw floats, c * hw apart).
 * Training forward is one dispatch: each channel's mean (summed about its first element and kept
 * as the pair hi + lo of the Backend contract), its biased variance about that mean (a second
 * pass, not E[x^2] - mean^2, which cancels), rstd, and the normalized, scaled and shifted
 * channel. Backward is one dispatch too: per channel the sums of grad and grad * xhat (dbias and
 * dweight), then dx. Eval is one elementwise pass with the running statistics.
 *
 * A channel gets one workgroup and tree reductions in workgroup memory, or one thread when it is
 * short or the adapter is CPU-emulated (where every barrier costs a coroutine switch per
 * invocation), as layernorm.ts does for rows. Channels are few (8-512), so on a real GPU the
 * per-channel dispatch is narrow; a split of each channel over several workgroups is the next
 * step there (untimed: no real GPU at hand).
 */
import type { Backend, BatchNormLayout, BatchNormRunningLayout } from '../backend.js';
import type { Bind, GPUStorage, Runtime } from './runtime.js';
import { itemReduceKernel } from './workgroup-reduce.js';
import { entry } from './wgsl.js';

/** Channels of at most this many values are handled by one thread each. */
const THREAD_CHANNEL_MAX = 64;
const CHANNELS_PER_GROUP = 64;
const EVAL_GROUP = 256;

const params = (l: BatchNormLayout) => [
  { name: 'n', type: 'u32' as const, value: l.n },
  { name: 'c', type: 'u32' as const, value: l.c },
  { name: 'hw', type: 'u32' as const, value: l.hw },
  { name: 'eps', type: 'f32' as const, value: l.eps },
];

/**
 * Dispatches a channel kernel: `body(total, each)` is the WGSL after the invocation has its
 * channel `ch` and `m` = f32(n * hw); `each(stmt)` loops over the invocation's share of the
 * channel with `k` the flat index of the value, `total(v)` sums a partial over the channel.
 */
function channelKernel(
  rt: Runtime,
  name: string,
  variant: string,
  binds: Bind[],
  l: BatchNormLayout,
  body: (total: (v: string) => string, each: (stmt: string) => string) => string,
): void {
  const perThread = l.n * l.hw <= THREAD_CHANNEL_MAX || rt.cpuEmulated;
  const each = (stmt: string) => `for (var e = e0; e < P.n * P.hw; e += de) {
    let k = ((e / P.hw) * P.c + ch) * P.hw + e % P.hw;
    ${stmt}
  }`;
  itemReduceKernel(rt, {
    name,
    variant,
    binds,
    params: params(l),
    count: l.c,
    countParam: 'c',
    perThread,
    wg: perThread ? CHANNELS_PER_GROUP : 256,
    names: { item: 'ch', first: 'e0', step: 'de' },
    body: (total) => `let m = f32(P.n * P.hw);
  ${body(total, each)}`,
  });
}

function checkFloat32(op: string, ...s: (GPUStorage | null)[]): void {
  for (const t of s) if (t && t.dtype !== 'float32') throw new TypeError(`${op}: webgpu supports float32, got ${t.dtype}`);
}

/** The WGSL of the per-channel factor k = rs * weight and shift bb = bias (1 and 0 when absent). */
const affine = (weight: boolean, bias: boolean) => `let kk = rs${weight ? ' * weight[ch]' : ''};
  let bb = ${bias ? 'bias[ch]' : '0.0'};`;

export function batchNorm(
  rt: Runtime,
  x: GPUStorage,
  weight: GPUStorage | null,
  bias: GPUStorage | null,
  out: GPUStorage,
  mean: GPUStorage,
  variance: GPUStorage,
  rstd: GPUStorage,
  l: BatchNormLayout,
): void {
  checkFloat32('batchNorm', x, weight, bias, out, mean, variance, rstd);
  if (l.n * l.hw === 0 || l.c === 0) return;
  const binds: Bind[] = [{ name: 'x', s: x, access: 'read' }];
  if (weight) binds.push({ name: 'weight', s: weight, access: 'read' });
  if (bias) binds.push({ name: 'bias', s: bias, access: 'read' });
  binds.push(
    { name: 'dst', s: out, access: 'write' },
    { name: 'mean_out', s: mean, access: 'write' },
    { name: 'var_out', s: variance, access: 'write' },
    { name: 'rstd_out', s: rstd, access: 'write' },
  );
  channelKernel(
    rt,
    'batchNorm',
    `${weight ? 'w' : ''}${bias ? 'b' : ''}`,
    binds,
    l,
    (total, each) => `// The sum runs about the channel's first element: an offset channel (all near 1000, say)
  // would otherwise lose the low bits of every term to the float32 running sum.
  let x0 = x[ch * P.hw];
  var s = 0.0;
  ${each('s += x[k] - x0;')}
  let mm = ${total('s')} / m;
  // The mean x0 + mm as the pair hi + lo of the Backend contract (an exact two-sum).
  let hi = x0 + mm;
  let hb = hi - x0;
  let lo = (x0 - (hi - hb)) + (mm - hb);
  var ss = 0.0;
  ${each('let d = (x[k] - hi) - lo; ss += d * d;')}
  // A NaN or an infinity in the channel makes ss NaN (inf - inf), and so the whole channel, as PyTorch.
  let v = ${total('ss')} / m;
  let rs = 1.0 / sqrt(v + P.eps);
  if (e0 == 0u) {
    mean_out[2u * ch] = hi;
    mean_out[2u * ch + 1u] = lo;
    var_out[ch] = v;
    rstd_out[ch] = rs;
  }
  ${affine(!!weight, !!bias)}
  ${each('dst[k] = ((x[k] - hi) - lo) * kk + bb;')}`,
  );
}

export function batchNormEval(
  rt: Runtime,
  x: GPUStorage,
  runningMean: GPUStorage,
  runningVar: GPUStorage,
  weight: GPUStorage | null,
  bias: GPUStorage | null,
  out: GPUStorage,
  l: BatchNormLayout,
): void {
  checkFloat32('batchNormEval', x, runningMean, runningVar, weight, bias, out);
  const total = l.n * l.c * l.hw;
  if (total === 0) return;
  const binds: Bind[] = [
    { name: 'x', s: x, access: 'read' },
    { name: 'rmean', s: runningMean, access: 'read' },
    { name: 'rvar', s: runningVar, access: 'read' },
  ];
  if (weight) binds.push({ name: 'weight', s: weight, access: 'read' });
  if (bias) binds.push({ name: 'bias', s: bias, access: 'read' });
  binds.push({ name: 'dst', s: out, access: 'write' });
  rt.dispatch({
    name: 'batchNormEval',
    key: `batchNormEval:${weight ? 'w' : ''}${bias ? 'b' : ''}`,
    binds,
    params: params(l),
    groups: Math.ceil(total / EVAL_GROUP),
    wgsl: () => `${entry(EVAL_GROUP)} {
  let k = fg_group(wg, nwg) * ${EVAL_GROUP}u + lid;
  if (k >= P.n * P.c * P.hw) { return; }
  let ch = (k / P.hw) % P.c;
  let rs = 1.0 / sqrt(rvar[ch] + P.eps);
  ${affine(!!weight, !!bias)}
  dst[k] = (x[k] - rmean[ch]) * kk + bb;
}`,
  });
}

/**
 * Backend.batchNormRunning: one thread per channel (the first also counts the batch). The
 * products are `x * factor + zero`, the affine kernel's form with its factor and zero (0) from
 * the uniforms, so a compiler that fuses a multiply and an add does it as it does in that
 * kernel, and the mean and variance come out as the unfused calls made them.
 */
export function batchNormRunning(rt: Runtime, args: Parameters<Backend['batchNormRunning']>): void {
  // The Backend call's arguments as they came (the index's bytes are the browser program's):
  // storages of this backend, as the tensor ops that make them check (sameBackend).
  const [rm, rv, mp, v, count, om, ov, outCount] = args as unknown as (GPUStorage | null)[];
  const l = args[8];
  const s = [rm, rv, mp, v, om, ov] as GPUStorage[];
  checkFloat32('batchNormRunning', ...s);
  const counted = !!(count && outCount);
  const binds: Bind[] = ['rm', 'rv', 'mp', 'v', 'om', 'ov'].map((name, i) => ({ name, s: s[i], access: i < 4 ? 'read' : 'write' }));
  if (counted) binds.push({ name: 'cnt', s: count!, access: 'read' }, { name: 'oc', s: outCount!, access: 'write' });
  const f32 = (name: string, value: number) => ({ name, type: 'f32' as const, value });
  rt.dispatch({
    name: 'batchNormRunning',
    key: `batchNormRunning:${counted}`,
    binds,
    params: [{ name: 'c', type: 'u32', value: l.c }, f32('keep', l.keep), f32('take', l.take), f32('tv', l.takeVar), f32('zero', 0)],
    groups: Math.ceil(l.c / EVAL_GROUP),
    wgsl: () => `${entry(EVAL_GROUP)} {
  let ch = fg_group(wg, nwg) * ${EVAL_GROUP}u + lid;
  ${counted ? 'if (ch == 0u) { oc[0] = cnt[0] + 1; }' : ''}
  if (ch >= P.c) { return; }
  let a = rm[ch] * P.keep + P.zero;
  let b = mp[2u * ch] * P.take + P.zero;
  om[ch] = a + b;
  let d = rv[ch] * P.keep + P.zero;
  let e = v[ch] * P.tv + P.zero;
  ov[ch] = d + e;
}`,
  });
}

export function batchNormBackward(
  rt: Runtime,
  grad: GPUStorage,
  x: GPUStorage,
  mean: GPUStorage,
  rstd: GPUStorage,
  weight: GPUStorage | null,
  dx: GPUStorage | null,
  dweight: GPUStorage | null,
  dbias: GPUStorage | null,
  l: BatchNormLayout,
): void {
  checkFloat32('batchNormBackward', grad, x, mean, rstd, weight, dx, dweight, dbias);
  if (l.n * l.hw === 0 || l.c === 0 || (!dx && !dweight && !dbias)) return;
  const binds: Bind[] = [
    { name: 'grad', s: grad, access: 'read' },
    { name: 'x', s: x, access: 'read' },
    { name: 'mean_in', s: mean, access: 'read' },
    { name: 'rstd_in', s: rstd, access: 'read' },
  ];
  if (weight && dx) binds.push({ name: 'weight', s: weight, access: 'read' });
  if (dx) binds.push({ name: 'dx', s: dx, access: 'write' });
  if (dweight) binds.push({ name: 'dweight', s: dweight, access: 'write' });
  if (dbias) binds.push({ name: 'dbias', s: dbias, access: 'write' });
  channelKernel(
    rt,
    'batchNormBackward',
    `${weight && dx ? 'w' : ''}${dx ? 'x' : ''}${dweight ? 'W' : ''}${dbias ? 'B' : ''}`,
    binds,
    l,
    (total, each) => `let hi = mean_in[2u * ch];
  let lo = mean_in[2u * ch + 1u];
  let rs = rstd_in[ch];
  var a = 0.0;
  var b = 0.0;
  ${each('a += grad[k]; b += grad[k] * (((x[k] - hi) - lo) * rs);')}
  let sum_g = ${total('a')};
  let sum_gx = ${total('b')};
  if (e0 == 0u) {
    ${dweight ? 'dweight[ch] = sum_gx;' : ''}
    ${dbias ? 'dbias[ch] = sum_g;' : ''}
  }
  ${
    dx
      ? `// dx = kk * (g - mean(g) - xhat * mean(g * xhat)) = kk * g - c1 - xhat * c2.
  let kk = rs${weight ? ' * weight[ch]' : ''};
  let c1 = kk * sum_g / m;
  let c2 = kk * sum_gx / m;
  ${each('dx[k] = kk * grad[k] - c1 - (((x[k] - hi) - lo) * rs) * c2;')}`
      : ''
  }`,
  );
}
