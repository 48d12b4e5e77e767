/**
 * Reference 2-D convolution and its two gradients, written directly from the definition
 * (cross-correlation over NCHW, grouped, strided, dilated, zero-padded). Padding follows torch's
 * im2col where a value is Inf or NaN: padded taps are products with zero in the forward and the
 * weight gradient (an Inf weight or gradient there gives NaN), while the input gradient sums over
 * real output positions only. Every output element is
 * one sum accumulated in float64 and rounded once on store, so the result does not depend on any
 * blocking: it is the oracle for the implicit-GEMM kernels of the other backends.
 */
import type { TypedArray } from '../../tensor/dtype.js';
import type { Conv2dLayout } from '../backend.js';

/** out [n, O, oh, ow] = sum over the group's channels and the window of weight * x. */
export function conv2dReference(X: TypedArray, W: TypedArray, out: TypedArray, l: Conv2dLayout): void {
  const cg = l.c / l.groups;
  const og = l.outChannels / l.groups;
  const K = cg * l.kh * l.kw;
  for (let n = 0; n < l.n; n++)
    for (let o = 0; o < l.outChannels; o++) {
      const c0 = Math.floor(o / og) * cg;
      for (let oy = 0; oy < l.oh; oy++)
        for (let ox = 0; ox < l.ow; ox++) {
          let s = 0;
          for (let ci = 0; ci < cg; ci++)
            for (let ki = 0; ki < l.kh; ki++) {
              const y = oy * l.sh - l.ph + ki * l.dh;
              const rowInside = y >= 0 && y < l.h;
              for (let kj = 0; kj < l.kw; kj++) {
                const x = ox * l.sw - l.pw + kj * l.dw;
                // A padded tap is a product with zero, as torch's im2col makes it: it changes no
                // finite sum, and an Inf or NaN weight there gives NaN.
                const v = rowInside && x >= 0 && x < l.w ? X[((n * l.c + c0 + ci) * l.h + y) * l.w + x] : 0;
                s += W[o * K + (ci * l.kh + ki) * l.kw + kj] * v;
              }
            }
          out[((n * l.outChannels + o) * l.oh + oy) * l.ow + ox] = s;
        }
    }
}

/**
 * out [n, c, h, w]: each input pixel gathers grad * weight over the outputs whose window covers
 * it (oy = (y + ph - ki*dh) / sh when that divides exactly and lands inside the output).
 */
export function conv2dBackwardInputReference(G: TypedArray, W: TypedArray, out: TypedArray, l: Conv2dLayout): void {
  const cg = l.c / l.groups;
  const og = l.outChannels / l.groups;
  const K = cg * l.kh * l.kw;
  for (let n = 0; n < l.n; n++)
    for (let c = 0; c < l.c; c++) {
      const o0 = Math.floor(c / cg) * og;
      const ci = c % cg;
      for (let y = 0; y < l.h; y++)
        for (let x = 0; x < l.w; x++) {
          let s = 0;
          for (let ki = 0; ki < l.kh; ki++) {
            const ty = y + l.ph - ki * l.dh;
            if (ty < 0 || ty % l.sh !== 0 || ty / l.sh >= l.oh) continue;
            const oy = ty / l.sh;
            for (let kj = 0; kj < l.kw; kj++) {
              const tx = x + l.pw - kj * l.dw;
              if (tx < 0 || tx % l.sw !== 0 || tx / l.sw >= l.ow) continue;
              const ox = tx / l.sw;
              for (let o = o0; o < o0 + og; o++) {
                s += W[o * K + (ci * l.kh + ki) * l.kw + kj] * G[((n * l.outChannels + o) * l.oh + oy) * l.ow + ox];
              }
            }
          }
          out[((n * l.c + c) * l.h + y) * l.w + x] = s;
        }
    }
}

/** out [O, c/groups, kh, kw]: grad * x summed over the batch and every output position. */
export function conv2dBackwardWeightReference(X: TypedArray, G: TypedArray, out: TypedArray, l: Conv2dLayout): void {
  const cg = l.c / l.groups;
  const og = l.outChannels / l.groups;
  for (let o = 0; o < l.outChannels; o++) {
    const c0 = Math.floor(o / og) * cg;
    for (let ci = 0; ci < cg; ci++)
      for (let ki = 0; ki < l.kh; ki++)
        for (let kj = 0; kj < l.kw; kj++) {
          let s = 0;
          for (let n = 0; n < l.n; n++)
            for (let oy = 0; oy < l.oh; oy++) {
              const y = oy * l.sh - l.ph + ki * l.dh;
              const rowInside = y >= 0 && y < l.h;
              for (let ox = 0; ox < l.ow; ox++) {
                const x = ox * l.sw - l.pw + kj * l.dw;
                // Padding multiplies here too (torch: dY times the zero-padded im2col).
                const v = rowInside && x >= 0 && x < l.w ? X[((n * l.c + c0 + ci) * l.h + y) * l.w + x] : 0;
                s += G[((n * l.outChannels + o) * l.oh + oy) * l.ow + ox] * v;
              }
            }
          out[((o * cg + ci) * l.kh + ki) * l.kw + kj] = s;
        }
  }
}
