/**
 * 2-D window ops over NCHW: im2col / col2im (convolution lowered to matmul) and max/avg pooling
 * with their backwards. Every kernel is a gather: one thread per output element, so the
 * backwards (col2im, pooling gradients) walk the windows that cover their pixel instead of
 * scattering with atomics.
 */
import type { AvgPool2dLayout, Conv2dLayout, Window2d } from '../backend.js';
import type { Bind, GPUStorage, Runtime } from './runtime.js';
import { entry, INF_F32, type Param } from './wgsl.js';

const WG = 256;
const FIELDS = ['n', 'c', 'h', 'w', 'kh', 'kw', 'oh', 'ow', 'sh', 'sw', 'ph', 'pw', 'dh', 'dw'] as const;

/** The window geometry as i32 uniforms P.n, P.c, ..., P.dw, shared by every kernel of this file. */
const windowFields = (g: Window2d): Param[] => FIELDS.map((f) => ({ name: f, type: 'i32' as const, value: g[f] }));

function windowKernel(rt: Runtime, name: string, binds: Bind[], total: number, g: Window2d, main: string, helpers = '', extra: Param[] = []): void {
  if (total === 0) return;
  rt.dispatch({
    name,
    key: name,
    binds,
    params: [...windowFields(g), { name: 'total', type: 'u32', value: total }, ...extra],
    groups: Math.ceil(total / WG),
    wgsl: () => `${helpers}
${entry(WG)} {
  let t = fg_group(wg, nwg) * ${WG}u + lid;
  if (t >= P.total) { return; }
  let ti = i32(t);
  ${main}
}`,
  });
}

/**
 * Visits the input pixels (y, x) that output (oy, ox)'s window reads, the padding left out: runs
 * `body` with y, x, ki, kj for each kernel tap that lands inside the input.
 */
function forWindowTaps(body: string): string {
  return `for (var ki = 0i; ki < P.kh; ki++) {
    let y = oy * P.sh - P.ph + ki * P.dh;
    if (y < 0i || y >= P.h) { continue; }
    for (var kj = 0i; kj < P.kw; kj++) {
      let x = ox * P.sw - P.pw + kj * P.dw;
      if (x < 0i || x >= P.w) { continue; }
      ${body}
    }
  }`;
}

/**
 * Visits the windows that read input pixel (y, x): for each kernel tap (ki, kj) whose output
 * position (oy, ox) lands on the stride grid inside the output, runs `body` with oy, ox, ki, kj.
 */
function forWindowsCovering(body: string): string {
  return `for (var ki = 0i; ki < P.kh; ki++) {
    let ny = y + P.ph - ki * P.dh;
    if (ny < 0i || ny % P.sh != 0i || ny / P.sh >= P.oh) { continue; }
    let oy = ny / P.sh;
    for (var kj = 0i; kj < P.kw; kj++) {
      let nx = x + P.pw - kj * P.dw;
      if (nx < 0i || nx % P.sw != 0i || nx / P.sw >= P.ow) { continue; }
      let ox = nx / P.sw;
      ${body}
    }
  }`;
}

/** Splits the flat index of an [n*c, h, w] input pixel into plane p, y, x. */
const INPUT_PIXEL = `let x = ti % P.w;
  let y = (ti / P.w) % P.h;
  let p = ti / (P.w * P.h);`;

/** Splits the flat index of an [n*c, oh, ow] output into plane p, oy, ox. */
const OUTPUT_PIXEL = `let ox = ti % P.ow;
  let oy = (ti / P.ow) % P.oh;
  let p = ti / (P.ow * P.oh);`;

export function im2col(rt: Runtime, x: GPUStorage, cols: GPUStorage, g: Window2d): void {
  const L = g.oh * g.ow;
  windowKernel(rt, 'im2col', [{ name: 'src', s: x, access: 'read' }, { name: 'cols', s: cols, access: 'write' }], g.n * g.c * g.kh * g.kw * L, g, `
  let l = ti % (P.oh * P.ow);
  let row = ti / (P.oh * P.ow);
  let kj = row % P.kw;
  let ki = (row / P.kw) % P.kh;
  let plane = row / (P.kw * P.kh);
  let y = (l / P.ow) * P.sh - P.ph + ki * P.dh;
  let x = (l % P.ow) * P.sw - P.pw + kj * P.dw;
  var v = 0.0;
  if (y >= 0i && y < P.h && x >= 0i && x < P.w) { v = src[(plane * P.h + y) * P.w + x]; }
  cols[t] = v;`);
}

export function col2im(rt: Runtime, cols: GPUStorage, out: GPUStorage, g: Window2d): void {
  windowKernel(rt, 'col2im', [{ name: 'cols', s: cols, access: 'read' }, { name: 'dst', s: out, access: 'write' }], g.n * g.c * g.h * g.w, g, `
  ${INPUT_PIXEL}
  let L = P.oh * P.ow;
  var sum = 0.0;
  ${forWindowsCovering('sum += cols[((p * P.kh + ki) * P.kw + kj) * L + oy * P.ow + ox];')}
  dst[t] = sum;`);
}

/** The channel counts of a convolution, as uniforms next to the window fields. */
const convParams = (l: Conv2dLayout): Param[] => [
  { name: 'oc', type: 'i32', value: l.outChannels },
  { name: 'groups', type: 'i32', value: l.groups },
];

/**
 * Convolution in two forms, as the matmul (matmul.ts): on a CPU-emulated adapter (SwiftShader)
 * the direct kernels, one thread per output element with no barriers, which beat an im2col +
 * matmul there (that writes and reads back kh*kw times the input); on a GPU an implicit GEMM
 * tiled in workgroup memory (convTiled), whose tiles gather the im2col values as they load them.
 * The tiled form is checked for correctness on SwiftShader; its speed on real GPUs is untimed.
 */
export function conv2d(rt: Runtime, x: GPUStorage, weight: GPUStorage, out: GPUStorage, l: Conv2dLayout): void {
  if (rt.cpuEmulated) conv2dDirect(rt, x, weight, out, l);
  else convTiled(rt, 'conv2d', weight, x, out, l);
}

export function conv2dBackwardInput(rt: Runtime, grad: GPUStorage, weight: GPUStorage, out: GPUStorage, l: Conv2dLayout): void {
  if (rt.cpuEmulated) conv2dBackwardInputDirect(rt, grad, weight, out, l);
  else convTiled(rt, 'conv2dBackwardInput', grad, weight, out, l);
}

export function conv2dBackwardWeight(rt: Runtime, x: GPUStorage, grad: GPUStorage, out: GPUStorage, l: Conv2dLayout): void {
  if (rt.cpuEmulated) conv2dBackwardWeightDirect(rt, x, grad, out, l);
  else convTiled(rt, 'conv2dBackwardWeight', grad, x, out, l);
}

/** The direct convolution: one thread per output element, summing its group's channels times the kernel window. */
function conv2dDirect(rt: Runtime, x: GPUStorage, weight: GPUStorage, out: GPUStorage, l: Conv2dLayout): void {
  const binds: Bind[] = [{ name: 'src', s: x, access: 'read' }, { name: 'wt', s: weight, access: 'read' }, { name: 'dst', s: out, access: 'write' }];
  windowKernel(rt, 'conv2d', binds, l.n * l.outChannels * l.oh * l.ow, l, `
  let ox = ti % P.ow;
  let oy = (ti / P.ow) % P.oh;
  let o = (ti / (P.ow * P.oh)) % P.oc;
  let b = ti / (P.ow * P.oh * P.oc);
  let cg = P.c / P.groups;
  let c0 = (o / (P.oc / P.groups)) * cg;
  var sum = 0.0;
  for (var ci = 0i; ci < cg; ci++) {
    let plane = (b * P.c + c0 + ci) * P.h;
    let taps = (o * cg + ci) * P.kh;
    ${forWindowTaps('sum += wt[(taps + ki) * P.kw + kj] * src[(plane + y) * P.w + x];')}
  }
  dst[t] = sum;`, '', convParams(l));
}

/** The input gradient as a gather: one thread per input pixel, over the windows covering it. */
function conv2dBackwardInputDirect(rt: Runtime, grad: GPUStorage, weight: GPUStorage, out: GPUStorage, l: Conv2dLayout): void {
  const binds: Bind[] = [{ name: 'grad', s: grad, access: 'read' }, { name: 'wt', s: weight, access: 'read' }, { name: 'dst', s: out, access: 'write' }];
  windowKernel(rt, 'conv2dBackwardInput', binds, l.n * l.c * l.h * l.w, l, `
  let x = ti % P.w;
  let y = (ti / P.w) % P.h;
  let c = (ti / (P.w * P.h)) % P.c;
  let b = ti / (P.w * P.h * P.c);
  let cg = P.c / P.groups;
  let og = P.oc / P.groups;
  let o0 = (c / cg) * og;
  let ci = c % cg;
  var sum = 0.0;
  ${forWindowsCovering(`for (var o = o0; o < o0 + og; o++) {
        sum += wt[((o * cg + ci) * P.kh + ki) * P.kw + kj] * grad[((b * P.oc + o) * P.oh + oy) * P.ow + ox];
      }`)}
  dst[t] = sum;`, '', convParams(l));
}

const WEIGHT_GRAD_WG = 64;

/**
 * The weight gradient: one workgroup per weight element, whose threads stride over the batch and
 * the output positions and then add their partial sums in workgroup memory (a thread per weight
 * alone would leave most of the device idle: a layer has few weights and many positions).
 */
function conv2dBackwardWeightDirect(rt: Runtime, x: GPUStorage, grad: GPUStorage, out: GPUStorage, l: Conv2dLayout): void {
  const total = l.outChannels * (l.c / l.groups) * l.kh * l.kw;
  if (total === 0) return;
  const g = l as Window2d;
  rt.dispatch({
    name: 'conv2dBackwardWeight',
    key: 'conv2dBackwardWeight',
    binds: [{ name: 'src', s: x, access: 'read' }, { name: 'grad', s: grad, access: 'read' }, { name: 'dst', s: out, access: 'write' }],
    params: [...windowFields(g), { name: 'total', type: 'u32', value: total }, ...convParams(l)],
    groups: total,
    wgsl: () => `var<workgroup> partial: array<f32, ${WEIGHT_GRAD_WG}>;
${entry(WEIGHT_GRAD_WG)} {
  let t = fg_group(wg, nwg);
  if (t >= P.total) { return; }
  let ti = i32(t);
  let cg = P.c / P.groups;
  let kj = ti % P.kw;
  let ki = (ti / P.kw) % P.kh;
  let ci = (ti / (P.kw * P.kh)) % cg;
  let o = ti / (P.kw * P.kh * cg);
  let c = (o / (P.oc / P.groups)) * cg + ci;
  let positions = P.n * P.oh * P.ow;
  var sum = 0.0;
  for (var q = i32(lid); q < positions; q += ${WEIGHT_GRAD_WG}i) {
    let ox = q % P.ow;
    let oy = (q / P.ow) % P.oh;
    let b = q / (P.ow * P.oh);
    let y = oy * P.sh - P.ph + ki * P.dh;
    let x = ox * P.sw - P.pw + kj * P.dw;
    if (y >= 0i && y < P.h && x >= 0i && x < P.w) {
      sum += grad[((b * P.oc + o) * P.oh + oy) * P.ow + ox] * src[((b * P.c + c) * P.h + y) * P.w + x];
    }
  }
  partial[lid] = sum;
  workgroupBarrier();
  for (var half = ${WEIGHT_GRAD_WG / 2}u; half > 0u; half = half / 2u) {
    if (lid < half) { partial[lid] += partial[lid + half]; }
    workgroupBarrier();
  }
  if (lid == 0u) { dst[t] = partial[0]; }
}`,
  });
}

/** Rows and columns of C per workgroup of the tiled form, its depth step, and its 16 x 8 threads (4 x 4 outputs each). */
const TILE_M = 32;
const TILE_N = 64;
const TILE_K = 16;

/** The value of im2col column entry (tap p, image position q) of the group's input, 0 in the padding. */
const IM2COL_AT = `fn cols_at(p: i32, q: i32) -> f32 {
  let L = P.oh * P.ow;
  let b = q / L;
  let l = q % L;
  let taps = P.kh * P.kw;
  let ci = p / taps;
  let ki = (p % taps) / P.kw;
  let kj = p % P.kw;
  let y = (l / P.ow) * P.sh - P.ph + ki * P.dh;
  let x = (l % P.ow) * P.sw - P.pw + kj * P.dw;
  if (y < 0i || y >= P.h || x < 0i || x >= P.w) { return 0.0; }
  return srcb[((b * P.c + P.grp * (P.c / P.groups) + ci) * P.h + y) * P.w + x];
}`;

/**
 * The three convolution kernels as one tiled implicit GEMM per group, C[i, j] = sum_p A(i, p) B(p, j):
 * - conv2d:               i = output channel, j = (image, output position), p = tap; B is im2col of x
 * - conv2dBackwardWeight: i = output channel, j = tap, p = (image, output position); A is dY, B im2col^T
 * - conv2dBackwardInput:  i = input channel, j = (image, input pixel), p = (output channel, tap); B is
 *                         dY at the output whose window puts that tap on that pixel, 0 where none does
 * `a` and `b` are bound as `srca` and `srcb`. The operands are gathered into workgroup memory a
 * TILE_K-deep slice at a time, so each input value is read from memory once per tile, not per output.
 */
function convTiled(rt: Runtime, kernel: 'conv2d' | 'conv2dBackwardInput' | 'conv2dBackwardWeight', a: GPUStorage, b: GPUStorage, out: GPUStorage, l: Conv2dLayout): void {
  const cg = l.c / l.groups;
  const og = l.outChannels / l.groups;
  const taps = l.kh * l.kw;
  const K = cg * taps;
  const L = l.oh * l.ow;
  // [rows, cols, depth] of each group's product, and the WGSL of A, B and the store.
  const [M, N, D, fns] =
    kernel === 'conv2d'
      ? [og, l.n * L, K, `fn a_at(i: i32, p: i32) -> f32 { return srca[(P.grp * P.og + i) * P.kk + p]; }
fn b_at(p: i32, j: i32) -> f32 { return cols_at(p, j); }
fn store(i: i32, j: i32, v: f32) {
  let L = P.oh * P.ow;
  dst[((j / L) * P.oc + P.grp * P.og + i) * L + j % L] = v;
}`]
      : kernel === 'conv2dBackwardWeight'
        ? [og, K, l.n * L, `fn a_at(i: i32, q: i32) -> f32 {
  let L = P.oh * P.ow;
  return srca[((q / L) * P.oc + P.grp * P.og + i) * L + q % L];
}
fn b_at(q: i32, j: i32) -> f32 { return cols_at(j, q); }
fn store(i: i32, j: i32, v: f32) { dst[(P.grp * P.og + i) * P.kk + j] = v; }`]
        : [cg, l.n * l.h * l.w, og * taps, `fn a_at(i: i32, p: i32) -> f32 {
  let taps = P.kh * P.kw;
  return srcb[((P.grp * P.og + p / taps) * (P.c / P.groups) + i) * taps + p % taps];
}
fn b_at(p: i32, j: i32) -> f32 {
  let taps = P.kh * P.kw;
  let o = p / taps;
  let ki = (p % taps) / P.kw;
  let kj = p % P.kw;
  let b = j / (P.h * P.w);
  let y = (j / P.w) % P.h;
  let x = j % P.w;
  let ny = y + P.ph - ki * P.dh;
  let nx = x + P.pw - kj * P.dw;
  if (ny < 0i || nx < 0i || ny % P.sh != 0i || nx % P.sw != 0i || ny / P.sh >= P.oh || nx / P.sw >= P.ow) { return 0.0; }
  return srca[((b * P.oc + P.grp * P.og + o) * P.oh + ny / P.sh) * P.ow + nx / P.sw];
}
fn store(i: i32, j: i32, v: f32) {
  let hw = P.h * P.w;
  dst[((j / hw) * P.c + P.grp * (P.c / P.groups) + i) * hw + j % hw] = v;
}`];
  if (M === 0 || N === 0) return;
  const tilesM = Math.ceil(M / TILE_M);
  const tilesN = Math.ceil(N / TILE_N);
  const g = l as Window2d;
  for (let grp = 0; grp < l.groups; grp++) {
    rt.dispatch({
      name: `${kernel}.tiled`,
      key: `${kernel}.tiled`,
      binds: [{ name: 'srca', s: a, access: 'read' }, { name: 'srcb', s: b, access: 'read' }, { name: 'dst', s: out, access: 'write' }],
      params: [
        ...windowFields(g),
        ...convParams(l),
        ...(
          [
            ['grp', grp],
            ['og', og],
            ['kk', K],
            ['mm', M],
            ['nn', N],
            ['dd', D],
          ] as const
        ).map(([name, value]) => ({ name, type: 'i32' as const, value })),
        { name: 'tiles_n', type: 'u32', value: tilesN },
        { name: 'tiles', type: 'u32', value: tilesM * tilesN },
      ],
      groups: tilesM * tilesN,
      wgsl: () => `var<workgroup> As: array<f32, ${TILE_K * TILE_M}>;
var<workgroup> Bs: array<f32, ${TILE_K * TILE_N}>;
${IM2COL_AT}
${fns}
${entry(128)} {
  let g = fg_group(wg, nwg);
  if (g >= P.tiles) { return; }
  let tx = i32(lid % 16u);
  let ty = i32(lid / 16u);
  let n0 = i32(g % P.tiles_n) * ${TILE_N}i;
  let m0 = i32(g / P.tiles_n) * ${TILE_M}i;
  var acc: array<f32, 16>;
  for (var k0 = 0i; k0 < P.dd; k0 += ${TILE_K}i) {
    for (var e = i32(lid); e < ${TILE_K * TILE_M}i; e += 128i) {
      let i = m0 + e % ${TILE_M}i;
      let p = k0 + e / ${TILE_M}i;
      var v = 0.0;
      if (i < P.mm && p < P.dd) { v = a_at(i, p); }
      As[e] = v;
    }
    for (var e = i32(lid); e < ${TILE_K * TILE_N}i; e += 128i) {
      let j = n0 + e % ${TILE_N}i;
      let p = k0 + e / ${TILE_N}i;
      var v = 0.0;
      if (j < P.nn && p < P.dd) { v = b_at(p, j); }
      Bs[e] = v;
    }
    workgroupBarrier();
    for (var kk = 0i; kk < ${TILE_K}i; kk++) {
      for (var r = 0i; r < 4i; r++) {
        let av = As[kk * ${TILE_M}i + ty * 4i + r];
        for (var c = 0i; c < 4i; c++) { acc[r * 4i + c] += av * Bs[kk * ${TILE_N}i + tx * 4i + c]; }
      }
    }
    workgroupBarrier();
  }
  for (var r = 0i; r < 4i; r++) {
    for (var c = 0i; c < 4i; c++) {
      let i = m0 + ty * 4i + r;
      let j = n0 + tx * 4i + c;
      if (i < P.mm && j < P.nn) { store(i, j, acc[r * 4i + c]); }
    }
  }
}`,
    });
  }
}

export function maxPool2d(rt: Runtime, x: GPUStorage, out: GPUStorage, argOut: GPUStorage | null, g: Window2d): void {
  const binds: Bind[] = [{ name: 'src', s: x, access: 'read' }, { name: 'dst', s: out, access: 'write' }];
  if (argOut) binds.push({ name: 'arg_out', s: argOut, access: 'write' });
  // The first NaN in the window wins and sticks, as in the CPU backend; padding never wins.
  windowKernel(rt, argOut ? 'maxPool2d.arg' : 'maxPool2d', binds, g.n * g.c * g.oh * g.ow, g, `
  ${OUTPUT_PIXEL}
  var best = -${INF_F32};
  var arg = -1i;
  ${forWindowTaps(`let v = src[(p * P.h + y) * P.w + x];
      if (arg < 0i || v > best || (fg_isnan(v) && !fg_isnan(best))) { best = v; arg = y * P.w + x; }`)}
  dst[t] = best;
  ${argOut ? 'arg_out[t] = arg;' : ''}`);
}

export function maxPool2dBackward(rt: Runtime, grad: GPUStorage, arg: GPUStorage, out: GPUStorage, g: Window2d): void {
  windowKernel(
    rt,
    'maxPool2dBackward',
    [{ name: 'grad', s: grad, access: 'read' }, { name: 'arg', s: arg, access: 'read' }, { name: 'dst', s: out, access: 'write' }],
    g.n * g.c * g.h * g.w,
    g,
    `
  ${INPUT_PIXEL}
  let here = y * P.w + x;
  let o0 = p * P.oh * P.ow;
  var sum = 0.0;
  ${forWindowsCovering('let o = o0 + oy * P.ow + ox; if (arg[o] == here) { sum += grad[o]; }')}
  dst[t] = sum;`,
  );
}

/** The divisor options of an average pooling, as uniforms (0/1 and 0 = none). */
const avgPoolParams = (g: AvgPool2dLayout): Param[] => [
  { name: 'count_include_pad', type: 'i32', value: g.countIncludePad ? 1 : 0 },
  { name: 'divisor_override', type: 'i32', value: g.divisorOverride },
];

/**
 * PyTorch's avg_pool2d window of output (oy, ox), as avgPoolWindow in the CPU backend: the input
 * cells [y0, y1) x [x0, x1) it sums, and its divisor (the window cut at the far edge of the padded
 * input, which ceil mode can overhang, then counted with or without its padding, or overridden).
 */
const AVG_POOL_WINDOW = `
struct AvgWindow { y0: i32, y1: i32, x0: i32, x1: i32, divisor: f32 }
fn avg_window(oy: i32, ox: i32) -> AvgWindow {
  let ys = oy * P.sh - P.ph;
  let xs = ox * P.sw - P.pw;
  let ye = min(ys + P.kh, P.h + P.ph);
  let xe = min(xs + P.kw, P.w + P.pw);
  var win: AvgWindow;
  win.y0 = max(ys, 0i);
  win.x0 = max(xs, 0i);
  win.y1 = min(ye, P.h);
  win.x1 = min(xe, P.w);
  var cells = (ye - ys) * (xe - xs);
  if (P.count_include_pad == 0i) { cells = (win.y1 - win.y0) * (win.x1 - win.x0); }
  if (P.divisor_override != 0i) { cells = P.divisor_override; }
  win.divisor = f32(cells);
  return win;
}`;

export function avgPool2d(rt: Runtime, x: GPUStorage, out: GPUStorage, g: AvgPool2dLayout): void {
  windowKernel(
    rt,
    'avgPool2d',
    [{ name: 'src', s: x, access: 'read' }, { name: 'dst', s: out, access: 'write' }],
    g.n * g.c * g.oh * g.ow,
    g,
    `
  ${OUTPUT_PIXEL}
  let win = avg_window(oy, ox);
  var sum = 0.0;
  for (var y = win.y0; y < win.y1; y++) {
    for (var x = win.x0; x < win.x1; x++) { sum += src[(p * P.h + y) * P.w + x]; }
  }
  dst[t] = sum / win.divisor;`,
    AVG_POOL_WINDOW,
    avgPoolParams(g),
  );
}

export function avgPool2dBackward(rt: Runtime, grad: GPUStorage, out: GPUStorage, g: AvgPool2dLayout): void {
  windowKernel(
    rt,
    'avgPool2dBackward',
    [{ name: 'grad', s: grad, access: 'read' }, { name: 'dst', s: out, access: 'write' }],
    g.n * g.c * g.h * g.w,
    g,
    `
  ${INPUT_PIXEL}
  let o0 = p * P.oh * P.ow;
  // The windows covering (y, x): oy * sh - ph <= y < oy * sh - ph + kh (no dilation in average
  // pooling), likewise for x. The cut at the padded edge removes only padding cells.
  let ny = y + P.ph - P.kh;
  let nx = x + P.pw - P.kw;
  let oy0 = select(0i, ny / P.sh + 1i, ny >= 0i);
  let ox0 = select(0i, nx / P.sw + 1i, nx >= 0i);
  let oy1 = min((y + P.ph) / P.sh, P.oh - 1i);
  let ox1 = min((x + P.pw) / P.sw, P.ow - 1i);
  var sum = 0.0;
  for (var oy = oy0; oy <= oy1; oy++) {
    for (var ox = ox0; ox <= ox1; ox++) { sum += grad[o0 + oy * P.ow + ox] / avg_window(oy, ox).divisor; }
  }
  dst[t] = sum;`,
    AVG_POOL_WINDOW,
    avgPoolParams(g),
  );
}
