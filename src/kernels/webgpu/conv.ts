/**
 * 2-D window ops over NCHW: im2col / col2im (convolution lowered to matmul) and max/avg pooling
 * with their backwards. Every kernel is a gather: one thread per output element, so the
 * backwards (col2im, pooling gradients) walk the windows that cover their pixel instead of
 * scattering with atomics.
 */
import type { Window2d } from '../backend.js';
import type { Bind, GPUStorage, Runtime } from './runtime.js';
import { entry, INF_F32 } from './wgsl.js';

const WG = 256;
const FIELDS = ['n', 'c', 'h', 'w', 'kh', 'kw', 'oh', 'ow', 'sh', 'sw', 'ph', 'pw', 'dh', 'dw'] as const;

function windowKernel(rt: Runtime, name: string, binds: Bind[], total: number, g: Window2d, main: string, helpers = ''): void {
  if (total === 0) return;
  rt.dispatch({
    name,
    key: name,
    binds,
    params: [...FIELDS.map((f) => ({ name: f, type: 'i32' as const, value: g[f] })), { name: 'total', type: 'u32', value: total }],
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

export function maxPool2d(rt: Runtime, x: GPUStorage, out: GPUStorage, argOut: GPUStorage | null, g: Window2d): void {
  const binds: Bind[] = [{ name: 'src', s: x, access: 'read' }, { name: 'dst', s: out, access: 'write' }];
  if (argOut) binds.push({ name: 'arg_out', s: argOut, access: 'write' });
  // The first NaN in the window wins and sticks, as in the CPU backend; padding never wins.
  windowKernel(rt, argOut ? 'maxPool2d.arg' : 'maxPool2d', binds, g.n * g.c * g.oh * g.ow, g, `
  ${OUTPUT_PIXEL}
  var best = -${INF_F32};
  var arg = -1i;
  for (var ki = 0i; ki < P.kh; ki++) {
    let y = oy * P.sh - P.ph + ki * P.dh;
    if (y < 0i || y >= P.h) { continue; }
    for (var kj = 0i; kj < P.kw; kj++) {
      let x = ox * P.sw - P.pw + kj * P.dw;
      if (x < 0i || x >= P.w) { continue; }
      let v = src[(p * P.h + y) * P.w + x];
      if (arg < 0i || v > best || (fg_isnan(v) && !fg_isnan(best))) { best = v; arg = y * P.w + x; }
    }
  }
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

export function avgPool2d(rt: Runtime, x: GPUStorage, out: GPUStorage, g: Window2d): void {
  windowKernel(rt, 'avgPool2d', [{ name: 'src', s: x, access: 'read' }, { name: 'dst', s: out, access: 'write' }], g.n * g.c * g.oh * g.ow, g, `
  ${OUTPUT_PIXEL}
  var sum = 0.0;
  for (var ki = 0i; ki < P.kh; ki++) {
    let y = oy * P.sh - P.ph + ki * P.dh;
    if (y < 0i || y >= P.h) { continue; }
    for (var kj = 0i; kj < P.kw; kj++) {
      let x = ox * P.sw - P.pw + kj * P.dw;
      if (x >= 0i && x < P.w) { sum += src[(p * P.h + y) * P.w + x]; }
    }
  }
  // Padding counts in the divisor (count_include_pad).
  dst[t] = sum / f32(P.kh * P.kw);`);
}

export function avgPool2dBackward(rt: Runtime, grad: GPUStorage, out: GPUStorage, g: Window2d): void {
  windowKernel(rt, 'avgPool2dBackward', [{ name: 'grad', s: grad, access: 'read' }, { name: 'dst', s: out, access: 'write' }], g.n * g.c * g.h * g.w, g, `
  ${INPUT_PIXEL}
  let o0 = p * P.oh * P.ow;
  var sum = 0.0;
  ${forWindowsCovering('sum += grad[o0 + oy * P.ow + ox];')}
  dst[t] = sum / f32(P.kh * P.kw);`);
}
