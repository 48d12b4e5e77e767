/**
 * The reference kernels of scaled dot-product attention (Backend.attention / attentionBackward):
 * the oracle of the wasm kernels. Every sum runs in float64 (JS numbers) and is rounded once, on
 * store, to the storage's dtype.
 */
import type { TypedArray } from '../../tensor/dtype.js';
import type { AttentionLayout, AttentionOperand } from '../backend.js';

/** The element index of head h's first feature in row i of batch b of an operand with `rows` rows per batch. */
const at = (o: AttentionOperand, rows: number, b: number, i: number, h: number, d: number) => o.offset + (b * rows + i) * o.row + h * d;

export function attentionReference(Q: TypedArray, K: TypedArray, V: TypedArray, out: TypedArray, probs: TypedArray, g: AttentionLayout): void {
  const { n, heads, l, s, d, scale } = g;
  const E = heads * d;
  const p = new Float64Array(s);
  for (let b = 0; b < n; b++) {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < l; i++) {
        const qi = at(g.q, l, b, i, h, d);
        let max = -Infinity;
        for (let j = 0; j < s; j++) {
          const kj = at(g.k, s, b, j, h, d);
          let dot = 0;
          for (let c = 0; c < d; c++) dot += Q[qi + c] * K[kj + c];
          p[j] = dot * scale;
          // A NaN score makes the row NaN, as softmax.
          max = p[j] > max || p[j] !== p[j] ? p[j] : max;
        }
        let sum = 0;
        for (let j = 0; j < s; j++) sum += p[j] = Math.exp(p[j] - max);
        const pRow = ((b * heads + h) * l + i) * s;
        for (let j = 0; j < s; j++) probs[pRow + j] = p[j] / sum;
        const oi = (b * l + i) * E + h * d;
        for (let c = 0; c < d; c++) {
          let acc = 0;
          // The rounded probabilities, as the backward pass sees them.
          for (let j = 0; j < s; j++) acc += probs[pRow + j] * V[at(g.v, s, b, j, h, d) + c];
          out[oi + c] = acc;
        }
      }
    }
  }
}

export function attentionBackwardReference(
  G: TypedArray,
  Q: TypedArray,
  K: TypedArray,
  V: TypedArray,
  P: TypedArray,
  dQ: TypedArray,
  dK: TypedArray,
  dV: TypedArray,
  g: AttentionLayout,
): void {
  const { n, heads, l, s, d, scale } = g;
  const E = heads * d;
  const dS = new Float64Array(s);
  const dk = new Float64Array(s * d);
  const dv = new Float64Array(s * d);
  for (let b = 0; b < n; b++) {
    for (let h = 0; h < heads; h++) {
      dk.fill(0);
      dv.fill(0);
      for (let i = 0; i < l; i++) {
        const gi = (b * l + i) * E + h * d;
        const qi = at(g.q, l, b, i, h, d);
        const pRow = ((b * heads + h) * l + i) * s;
        // dP_j = dO_i . v_j; t = sum_j P_ij dP_j
        let t = 0;
        for (let j = 0; j < s; j++) {
          const vj = at(g.v, s, b, j, h, d);
          let dot = 0;
          for (let c = 0; c < d; c++) dot += G[gi + c] * V[vj + c];
          dS[j] = dot;
          t += P[pRow + j] * dot;
        }
        for (let j = 0; j < s; j++) dS[j] = P[pRow + j] * (dS[j] - t) * scale;
        for (let c = 0; c < d; c++) {
          let acc = 0;
          for (let j = 0; j < s; j++) acc += dS[j] * K[at(g.k, s, b, j, h, d) + c];
          dQ[qi + c] = acc;
        }
        for (let j = 0; j < s; j++) {
          for (let c = 0; c < d; c++) {
            dk[j * d + c] += dS[j] * Q[qi + c];
            dv[j * d + c] += P[pRow + j] * G[gi + c];
          }
        }
      }
      for (let j = 0; j < s; j++) {
        const kj = at(g.k, s, b, j, h, d);
        const vj = at(g.v, s, b, j, h, d);
        for (let c = 0; c < d; c++) {
          dK[kj + c] = dk[j * d + c];
          dV[vj + c] = dv[j * d + c];
        }
      }
    }
  }
}
