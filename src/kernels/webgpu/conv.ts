/**
 * 2-D window ops over NCHW: im2col / col2im, convolution and its two gradients (register-tiled
 * direct forms for CPU-emulated adapters, a tiled implicit GEMM for GPUs), max/avg pooling with
 * their backwards. Every kernel is a gather (each output written by one thread), so the backwards
 * (col2im, pooling and input gradients) walk the windows that cover their pixel instead of
 * scattering with atomics; the weight gradient adds per-chunk partial sums in a second pass.
 */
import type { AvgPool2dLayout, Conv2dLayout, Window2d } from '../backend.js';
import type { Bind, GPUStorage, Runtime } from './runtime.js';
import type { fill } from './copy.js';
import type { reduce } from './reduce.js';
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
 * the direct kernels, a 4 x 4 register tile of outputs per invocation with no barriers, which beat
 * an im2col + matmul there (that writes and reads back kh*kw times the input); on a GPU an implicit GEMM
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

/**
 * Kernels of the backend's core that the weight gradient builds on, handed in by the backend
 * rather than imported: a static import from this lazily loaded family would move those core
 * modules into chunks of their own in every program's bundle (bench/size.bench.ts measured +0.4 KB).
 */
export interface CoreKernels {
  fill: typeof fill;
  reduce: typeof reduce;
}

export function conv2dBackwardWeight(rt: Runtime, x: GPUStorage, grad: GPUStorage, out: GPUStorage, l: Conv2dLayout, core: CoreKernels): void {
  if (rt.cpuEmulated) conv2dBackwardWeightDirect(rt, x, grad, out, l, core);
  else convTiled(rt, 'conv2dBackwardWeight', grad, x, out, l);
}

/**
 * The register-tiled direct forms used on a CPU-emulated adapter (SwiftShader), where an
 * invocation costs a fixed prologue, integer divisions are slow and barriers switch coroutines:
 * each invocation computes a 4 x 4 tile of outputs (4 channels x 4 consecutive pixels of a row),
 * so every loaded input value feeds 4 channels and every loaded weight 4 pixels, and the index
 * arithmetic of a tap is paid once per 16 multiply-adds. No workgroup memory, no barriers.
 * Channels past the group's last and pixels past the row's end are computed from clamped
 * indices and never stored.
 */
const TILE = 4;
const LANES = [0, 1, 2, 3];
const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/**
 * WGSL: `acc<r> += <w(r)> * <v>` for the 4 channel rows. Padding follows torch's im2col: the
 * forward and the weight gradient sum the products with the padded zeros (an infinite or NaN
 * weight, or dY, makes every output whose window reaches the padding NaN; for finite data w * 0
 * adds +-0, which changes no sum), the input gradient never has a product with a dY outside the
 * output (see conv2dBackwardInputDirect).
 */
const accumulate = (w: (r: number) => string, v: string) => LANES.map((r) => `acc${r} += ${w(r)} * ${v};`).join('\n        ');
const ACC_DECL = LANES.map((r) => `var acc${r} = vec4<f32>();`).join('\n  ');
/** WGSL: stores acc<r>[p] at `index(r, p)` where channel row r is below `rows` and pixel p below `pixels`. */
const storeTile = (rows: string, pixels: string, index: (r: number, p: number) => string) =>
  LANES.map((r) => `if (${r}i < ${rows}) {\n    ${LANES.map((p) => `if (${p}i < ${pixels}) { dst[${index(r, p)}] = acc${r}[${p}]; }`).join('\n    ')}\n  }`).join('\n  ');

/** The forward convolution: one invocation per (image, 4 output channels of a group, output row, 4 output columns). */
function conv2dDirect(rt: Runtime, x: GPUStorage, weight: GPUStorage, out: GPUStorage, l: Conv2dLayout): void {
  const binds: Bind[] = [{ name: 'src', s: x, access: 'read' }, { name: 'wt', s: weight, access: 'read' }, { name: 'dst', s: out, access: 'write' }];
  const og = l.outChannels / l.groups;
  const otiles = Math.ceil(og / TILE);
  const xtiles = Math.ceil(l.ow / TILE);
  const tileParams: Param[] = [
    { name: 'otiles', type: 'i32', value: otiles },
    { name: 'xtiles', type: 'i32', value: xtiles },
  ];
  windowKernel(rt, 'conv2d.regs', binds, l.n * l.groups * otiles * l.oh * xtiles, l, `
  let xt = ti % P.xtiles;
  let oy = (ti / P.xtiles) % P.oh;
  let ot = (ti / (P.xtiles * P.oh)) % (P.groups * P.otiles);
  let b = ti / (P.xtiles * P.oh * P.groups * P.otiles);
  let cg = P.c / P.groups;
  let og = P.oc / P.groups;
  let grp = ot / P.otiles;
  let o0 = grp * og + (ot % P.otiles) * ${TILE}i;
  let olast = grp * og + og - 1i;
  let ox0 = xt * ${TILE}i;
  let wlen = cg * P.kh * P.kw;
  ${LANES.map((r) => `let w${r} = min(o0 + ${r}i, olast) * wlen;`).join('\n  ')}
  ${ACC_DECL}
  for (var ci = 0i; ci < cg; ci++) {
    let plane = (b * P.c + grp * cg + ci) * P.h;
    for (var ki = 0i; ki < P.kh; ki++) {
      // A row in the padding reads zeros (its column limit 0 fails every column, its index clamped
      // to a real row): w * 0 is summed, as torch's im2col does, at no cost inside the kj loop.
      let y = oy * P.sh - P.ph + ki * P.dh;
      let xlim = select(0i, P.w, y >= 0i && y < P.h);
      let row = (plane + clamp(y, 0i, P.h - 1i)) * P.w;
      for (var kj = 0i; kj < P.kw; kj++) {
        let xs = ox0 * P.sw - P.pw + kj * P.dw;
        let v = vec4<f32>(${LANES.map((p) => `px(row, xs + ${p}i * P.sw, xlim)`).join(', ')});
        let tap = (ci * P.kh + ki) * P.kw + kj;
        ${accumulate((r) => `wt[w${r} + tap]`, 'v')}
      }
    }
  }
  let rows = olast + 1i - o0;
  let pixels = P.ow - ox0;
  ${storeTile('rows', 'pixels', (r, p) => `((b * P.oc + o0 + ${r}i) * P.oh + oy) * P.ow + ox0 + ${p}i`)}`,
  `/** Input value at (row, x) of a plane, 0 in the padding, x >= xlim included (read at a clamped index, so never out of bounds). */
fn px(row: i32, x: i32, xlim: i32) -> f32 { return select(0.0, src[row + clamp(x, 0i, P.w - 1i)], x >= 0i && x < xlim); }`,
  [...convParams(l), ...tileParams]);
}

/**
 * The input gradient as a gather: one invocation per (image, 4 input channels of a group, input
 * row, 4 input columns of one phase x % sw). The columns of a tile are sw apart, so one test per
 * kernel column decides whether the tap lands on the stride grid for all four (a tile of adjacent
 * columns under stride 2 would compute and discard half its products, with a division per pixel).
 */
function conv2dBackwardInputDirect(rt: Runtime, grad: GPUStorage, weight: GPUStorage, out: GPUStorage, l: Conv2dLayout): void {
  const binds: Bind[] = [{ name: 'grad', s: grad, access: 'read' }, { name: 'wt', s: weight, access: 'read' }, { name: 'dst', s: out, access: 'write' }];
  const cg = l.c / l.groups;
  const ctiles = Math.ceil(cg / TILE);
  const xper = Math.ceil(Math.ceil(l.w / l.sw) / TILE);
  const tileParams: Param[] = [
    { name: 'ctiles', type: 'i32', value: ctiles },
    { name: 'xper', type: 'i32', value: xper },
    { name: 'xtiles', type: 'i32', value: l.sw * xper },
    // Tap steps between taps on the stride grid (stride / gcd(stride, dilation)) and the output
    // row/column each step moves by.
    { name: 'kistep', type: 'i32', value: l.sh / gcd(l.sh, l.dh) },
    { name: 'oystep', type: 'i32', value: ((l.sh / gcd(l.sh, l.dh)) * l.dh) / l.sh },
    { name: 'kjstep', type: 'i32', value: l.sw / gcd(l.sw, l.dw) },
    { name: 'oxstep', type: 'i32', value: ((l.sw / gcd(l.sw, l.dw)) * l.dw) / l.sw },
  ];
  windowKernel(rt, 'conv2dBackwardInput.regs', binds, l.n * l.groups * ctiles * l.h * l.sw * xper, l, `
  let xt = ti % P.xtiles;
  let y = (ti / P.xtiles) % P.h;
  let ct = (ti / (P.xtiles * P.h)) % (P.groups * P.ctiles);
  let b = ti / (P.xtiles * P.h * P.groups * P.ctiles);
  let cg = P.c / P.groups;
  let og = P.oc / P.groups;
  let grp = ct / P.ctiles;
  let c0 = grp * cg + (ct % P.ctiles) * ${TILE}i;
  let clast = grp * cg + cg - 1i;
  // Columns phase + sw * (t4 + p), p = 0..3.
  let phase = xt / P.xper;
  let t4 = (xt % P.xper) * ${TILE}i;
  let taps = P.kh * P.kw;
  ${LANES.map((r) => `let ci${r} = (min(c0 + ${r}i, clast) - grp * cg) * taps;`).join('\n  ')}
  ${ACC_DECL}
  // The taps that land on the stride grid, found once here rather than per output channel: row
  // taps ki0, ki0 + kistep, ... (each step moves the output row by oystep), likewise columns. A
  // residue no tap reaches leaves ki0 = kistep (or kj0 = kjstep) and no taps.
  var ki0 = 0i;
  for (; ki0 < P.kistep && (y + P.ph - ki0 * P.dh) % P.sh != 0i; ki0++) {}
  if (ki0 == P.kistep) { ki0 = P.kh; }
  let oy0 = (y + P.ph - ki0 * P.dh) / P.sh;
  var kj0 = 0i;
  for (; kj0 < P.kjstep && (phase + P.pw - kj0 * P.dw) % P.sw != 0i; kj0++) {}
  if (kj0 == P.kjstep) { kj0 = P.kw; }
  let ox00 = (phase + P.pw - kj0 * P.dw) / P.sw + t4;
  // (ki0 == kh or kj0 == kw: no tap reaches this row or column phase, and the tile stays 0.)
  for (var o = grp * og; o < select(grp * og, grp * og + og, ki0 < P.kh && kj0 < P.kw); o++) {
    let gplane = (b * P.oc + o) * P.oh;
    let wrow = o * cg * taps;
    var oy = oy0;
    for (var ki = ki0; ki < P.kh; ki += P.kistep) {
      if (oy >= 0i && oy < P.oh) {
        let grow = (gplane + oy) * P.ow;
        var ox0 = ox00;
        for (var kj = kj0; kj < P.kw; kj += P.kjstep) {
          let tap = wrow + ki * P.kw + kj;
          if (ox0 >= 0i && ox0 + ${TILE - 1}i < P.ow) {
            let g = vec4<f32>(${LANES.map((p) => `grad[grow + ox0 + ${p}i]`).join(', ')});
            ${accumulate((r) => `wt[tap + ci${r}]`, 'g')}
          } else {
            // A tile at the row's ends: the lanes whose output is outside the row are skipped, not
            // added as w * 0 (torch's input gradient has no such product; an infinite or NaN
            // weight would make them NaN).
            let ox = vec4<i32>(ox0) + vec4<i32>(${LANES.map((p) => `${p}i`).join(', ')});
            let inside = (ox >= vec4<i32>(0i)) & (ox < vec4<i32>(P.ow));
            let g = vec4<f32>(${LANES.map((p) => `gv(grow, ox0 + ${p}i)`).join(', ')});
            ${LANES.map((r) => `acc${r} += select(vec4<f32>(), wt[tap + ci${r}] * g, inside);`).join('\n            ')}
          }
          ox0 -= P.oxstep;
        }
      }
      oy -= P.oystep;
    }
  }
  let rows = clast + 1i - c0;
  let pixels = (P.w - phase + P.sw - 1i) / P.sw - t4;
  ${storeTile('rows', 'pixels', (r, p) => `((b * P.c + c0 + ${r}i) * P.h + y) * P.w + phase + P.sw * (t4 + ${p}i)`)}`,
  `/** dY at column ox of an output row, 0 outside it (read at a clamped index, so never out of bounds; its products are dropped). */
fn gv(row: i32, ox: i32) -> f32 { return select(0.0, grad[row + clamp(ox, 0i, P.ow - 1i)], ox >= 0i && ox < P.ow); }`,
  [...convParams(l), ...tileParams]);
}

/** Invocations the weight gradient aims for: enough workgroups for every core, few partial sums to add. */
const WEIGHT_GRAD_INVOCATIONS = 4096;

/**
 * The weight gradient: one invocation per (4 output channels of a group, 4 input channels, tap,
 * chunk of the batch's output rows) sums its 16 weights' products over its rows (4 dY and 4 input
 * loads per 16 multiply-adds), each row's valid column
 * range computed once (no per-pixel bounds test or division); the chunks' partial sums are then
 * added by a reduction (a layer has few weights and many positions, so a thread per weight alone
 * would leave most of the device idle).
 */
function conv2dBackwardWeightDirect(rt: Runtime, x: GPUStorage, grad: GPUStorage, out: GPUStorage, l: Conv2dLayout, { fill, reduce }: CoreKernels): void {
  const cg = l.c / l.groups;
  const og = l.outChannels / l.groups;
  const taps = l.kh * l.kw;
  const weights = l.outChannels * cg * taps;
  const otiles = Math.ceil(og / TILE);
  const ctiles = Math.ceil(cg / TILE);
  const base = l.groups * otiles * ctiles * taps;
  const rowsTotal = l.n * l.oh;
  if (weights === 0) return;
  if (rowsTotal === 0) {
    fill(rt, out, 0);
    return;
  }
  const rowsPerChunk = Math.ceil(rowsTotal / Math.min(rowsTotal, Math.max(1, Math.ceil(WEIGHT_GRAD_INVOCATIONS / base))));
  const chunks = Math.ceil(rowsTotal / rowsPerChunk);
  const partial = chunks === 1 ? out : rt.temp(chunks * weights, 'float32');
  windowKernel(
    rt,
    'conv2dBackwardWeight.regs',
    [{ name: 'src', s: x, access: 'read' }, { name: 'grad', s: grad, access: 'read' }, { name: 'dst', s: partial, access: 'write' }],
    chunks * base,
    l,
    `
  let taps = P.kh * P.kw;
  let cg = P.c / P.groups;
  let og = P.oc / P.groups;
  let tap = ti % taps;
  let ci0 = ((ti / taps) % P.ctiles) * ${TILE}i;
  let ot = (ti / (taps * P.ctiles)) % (P.groups * P.otiles);
  let chunk = ti / (taps * P.ctiles * P.groups * P.otiles);
  let ki = tap / P.kw;
  let kj = tap % P.kw;
  let grp = ot / P.otiles;
  let o0 = grp * og + (ot % P.otiles) * ${TILE}i;
  let olast = grp * og + og - 1i;
  // The output columns whose tap kj lands inside the input: 0 <= ox * sw + xoff < w.
  let xoff = kj * P.dw - P.pw;
  let ox_lo = select(0i, (P.sw - 1i - xoff) / P.sw, xoff < 0i);
  let ox_hi = select(0i, min(P.ow, (P.w - 1i - xoff) / P.sw + 1i), P.w - 1i - xoff >= 0i);
  ${LANES.map((r) => `let oc${r} = min(o0 + ${r}i, olast);`).join('\n  ')}
  ${LANES.map((r) => `let c${r} = grp * cg + min(ci0 + ${r}i, cg - 1i);`).join('\n  ')}
  ${ACC_DECL}
  // The products of dY with the padded zeros, as torch's im2col sums them: the same for every
  // input channel, so found once: 0 * dY is +0 unless dY is infinite or NaN (then NaN), so the
  // output channels whose padded dY are not all finite are set to NaN at the end (a literal
  // 0.0 * dY is folded to 0 by SwiftShader's compiler).
  var padbad = vec4<bool>();
  let q1 = min(P.n * P.oh, (chunk + 1i) * P.rows);
  for (var q = chunk * P.rows; q < q1; q++) {
    let oy = q % P.oh;
    let b = q / P.oh;
    let y = oy * P.sh - P.ph + ki * P.dh;
    let g0 = b * P.oc;
    ${LANES.map((r) => `let gr${r} = ((g0 + oc${r}) * P.oh + oy) * P.ow;`).join('\n    ')}
    // The columns in the padding: [0, pad_lo) and [pad_hi, ow), or the whole row.
    let in_rows = y >= 0i && y < P.h && ox_lo < ox_hi;
    let pad_lo = select(P.ow, min(ox_lo, P.ow), in_rows);
    let pad_hi = select(P.ow, ox_hi, in_rows);
    for (var ox = 0i; ox < pad_lo; ox++) { padbad |= nonfinite(vec4<f32>(${LANES.map((r) => `grad[gr${r} + ox]`).join(', ')})); }
    for (var ox = pad_hi; ox < P.ow; ox++) { padbad |= nonfinite(vec4<f32>(${LANES.map((r) => `grad[gr${r} + ox]`).join(', ')})); }
    if (!in_rows) { continue; }
    ${LANES.map((r) => `let xrow${r} = ((b * P.c + c${r}) * P.h + y) * P.w + xoff;`).join('\n    ')}
    for (var ox = ox_lo; ox < ox_hi; ox++) {
      let g = vec4<f32>(${LANES.map((r) => `grad[gr${r} + ox]`).join(', ')});
      let xo = ox * P.sw;
      ${LANES.map((r) => `acc${r} += src[xrow${r} + xo] * g;`).join('\n      ')}
    }
  }
  // A NaN made at run time (WGSL's constant evaluation rejects one).
  var nan_bits = 0x7fc00000u;
  let nan = bitcast<f32>(nan_bits);
  ${LANES.map((r) => `acc${r} = select(acc${r}, vec4<f32>(nan), padbad);`).join('\n  ')}
  // acc<r>[q]: input channel ci0 + r, output channel o0 + q.
  let base = chunk * P.oc * cg * taps + ci0 * taps + tap;
  ${LANES.map((r) => `if (ci0 + ${r}i < cg) {\n    ${LANES.map((q) => `if (o0 + ${q}i <= olast) { dst[base + (o0 + ${q}i) * cg * taps + ${r}i * taps] = acc${r}[${q}]; }`).join('\n    ')}\n  }`).join('\n  ')}`,
    'fn nonfinite(v: vec4<f32>) -> vec4<bool> { return (bitcast<vec4<u32>>(v) & vec4<u32>(0x7f800000u)) == vec4<u32>(0x7f800000u); }',
    [...convParams(l), { name: 'otiles', type: 'i32', value: otiles }, { name: 'ctiles', type: 'i32', value: ctiles }, { name: 'rows', type: 'i32', value: rowsPerChunk }],
  );
  if (chunks === 1) return;
  reduce(rt, 'sum', partial, out, { outer: 1, size: chunks, inner: weights });
  rt.release(partial);
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
/** The index in dY of the output whose window puts tap p on input pixel j, -1 where none does. */
fn b_index(p: i32, j: i32) -> i32 {
  let taps = P.kh * P.kw;
  let o = p / taps;
  let ki = (p % taps) / P.kw;
  let kj = p % P.kw;
  let b = j / (P.h * P.w);
  let y = (j / P.w) % P.h;
  let x = j % P.w;
  let ny = y + P.ph - ki * P.dh;
  let nx = x + P.pw - kj * P.dw;
  if (ny < 0i || nx < 0i || ny % P.sh != 0i || nx % P.sw != 0i || ny / P.sh >= P.oh || nx / P.sw >= P.ow) { return -1i; }
  return ((b * P.oc + P.grp * P.og + o) * P.oh + ny / P.sh) * P.ow + nx / P.sw;
}
fn store(i: i32, j: i32, v: f32) {
  let hw = P.h * P.w;
  dst[((j / hw) * P.c + P.grp * (P.c / P.groups) + i) * hw + j % hw] = v;
}`];
  if (M === 0 || N === 0) return;
  // The input gradient sums no product with a dY outside the output (torch's col2im adds only real
  // positions; w * 0 would make an infinite or NaN weight's pixels NaN): Bv marks the B tile's
  // entries that hold a real dY, and the product loop drops the others. The forward and weight
  // gradient sum the padded zeros as products (cols_at), as torch's im2col does.
  const skip = kernel === 'conv2dBackwardInput';
  const loadB = skip
    ? `var v = 0.0;
      var has_dy = false;
      if (j < P.nn && p < P.dd) {
        let k = b_index(p, j);
        has_dy = k >= 0i;
        if (has_dy) { v = srca[k]; }
      }
      Bs[e] = v;
      Bv[e] = has_dy;`
    : `var v = 0.0;
      if (j < P.nn && p < P.dd) { v = b_at(p, j); }
      Bs[e] = v;`;
  const product = skip
    ? `select(0.0, av * Bs[kk * ${TILE_N}i + tx * 4i + c], Bv[kk * ${TILE_N}i + tx * 4i + c])`
    : `av * Bs[kk * ${TILE_N}i + tx * 4i + c]`;
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
${skip ? `var<workgroup> Bv: array<bool, ${TILE_K * TILE_N}>;` : ''}
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
      ${loadB}
    }
    workgroupBarrier();
    for (var kk = 0i; kk < ${TILE_K}i; kk++) {
      for (var r = 0i; r < 4i; r++) {
        let av = As[kk * ${TILE_M}i + ty * 4i + r];
        for (var c = 0i; c < 4i; c++) { acc[r * 4i + c] += ${product}; }
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
