/**
 * Scaled dot-product attention (Backend.attention / attentionBackward, the CPU reference in
 * src/kernels/cpu/attention.ts) for CPU-emulated adapters, in the kernel family of such adapters
 * (emulated.ts).
 * Each head is read in place through its row stride (no head permutes, no slicing of a packed
 * projection), so the forward is one dispatch and the backward two, where the composition of
 * permutes, matmuls, scale and softmax (and their gradients) costs about ten and twenty: on
 * SwiftShader each dispatch has a fixed cost of hundreds of microseconds and a small ViT's
 * attention is little work besides.
 *
 * One invocation per query row (batch, head, i) walks the row's s keys: scores into the saved
 * probabilities, max, exp and sum, the normalized (rounded) probabilities, then out = P V from
 * them, as the reference. The backward's first pass, per query row, forms dS = P (dP - rowsum(dP P))
 * scale (dP = dO V^T) into a scratch and dq = dS K; the second, per key row, dk = dS^T Q and dv = P^T dO.
 * Rows of up to 512 elements (s x d, l x d) are unrolled with s, l and d compile-time constants
 * (the scores in registers); longer ones loop. Accumulation is float32 (the reference's is
 * float64). Only CPU-emulated adapters install these kernels (emulated.ts): on a GPU one
 * invocation per row would leave most lanes idle, and its composed form stays as it was.
 */
import type { AttentionLayout, Backend } from '../backend.js';
import type { Bind, GPUStorage, Runtime } from './runtime.js';
import { MATH_CORE } from './wgsl-math-core.js';
import { entry, scalarMathPrelude, type Param } from './wgsl.js';

const WG = 64;

/** The layout as uniforms, and the index of head h's first feature in row i of batch b of each operand. */
function layoutParams(g: AttentionLayout, total: number): Param[] {
  const u = (name: string, value: number): Param => ({ name, type: 'u32', value });
  return [
    u('heads', g.heads),
    u('l', g.l),
    u('s', g.s),
    u('d', g.d),
    { name: 'scale', type: 'f32', value: g.scale },
    u('q_off', g.q.offset),
    u('q_row', g.q.row),
    u('k_off', g.k.offset),
    u('k_row', g.k.row),
    u('v_off', g.v.offset),
    u('v_row', g.v.row),
    u('total', total),
  ];
}
const AT = `fn at_q(b: u32, i: u32, h: u32) -> u32 { return P.q_off + (b * P.l + i) * P.q_row + h * P.d; }
fn at_k(b: u32, j: u32, h: u32) -> u32 { return P.k_off + (b * P.s + j) * P.k_row + h * P.d; }
fn at_v(b: u32, j: u32, h: u32) -> u32 { return P.v_off + (b * P.s + j) * P.v_row + h * P.d; }`;

/** The invocation's row t of `rows_per_bh` rows per (batch, head): t, its row r, head h, batch b. */
function rowIndex(rowsPerHead: string): string {
  return `let t = fg_group(wg, nwg) * ${WG}u + lid;
  if (t >= P.total) { return; }
  let r = t % ${rowsPerHead};
  let bh = t / ${rowsPerHead};
  let h = bh % P.heads;
  let b = bh / P.heads;`;
}

/**
 * Whether a layout's rows are short enough to unroll (keys and features as compile-time constants:
 * the scores stay in registers, no loop or index arithmetic per element; the pipeline is then
 * specialized to s, l and d). Longer rows take the loops.
 */
const unrolled = (g: AttentionLayout) => g.s * g.d <= 512 && g.l * g.d <= 512;
const range = (n: number) => Array.from({ length: n }, (_, i) => i);
/** sum over `n` terms, as one expression. */
const sumOf = (n: number, term: (i: number) => string) => range(n).map(term).join(' + ');

const FORWARD_LOOPS = `let qi = at_q(b, r, h);
  let prow = t * P.s;
  // A NaN score makes the row NaN, as softmax (a NaN max stays NaN).
  var mx = -fg_inf();
  for (var j = 0u; j < P.s; j++) {
    let kj = at_k(b, j, h);
    var dot = 0.0;
    for (var c = 0u; c < P.d; c++) { dot += Q[qi + c] * K[kj + c]; }
    let sc = dot * P.scale;
    probs[prow + j] = sc;
    mx = select(mx, sc, sc > mx || fg_isnan(sc));
  }
  var sum = 0.0;
  for (var j = 0u; j < P.s; j++) {
    let e = fg_exp(probs[prow + j] - mx);
    probs[prow + j] = e;
    sum += e;
  }
  for (var j = 0u; j < P.s; j++) { probs[prow + j] = probs[prow + j] / sum; }
  // out = P V from the rounded probabilities, as the backward sees them.
  let oi = (b * P.l + r) * P.heads * P.d + h * P.d;
  for (var c = 0u; c < P.d; c++) {
    var acc = 0.0;
    for (var j = 0u; j < P.s; j++) { acc += probs[prow + j] * V[at_v(b, j, h) + c]; }
    out[oi + c] = acc;
  }`;

/** A query row's unrolled forms: the first key and value of its head, and its row of scores / probabilities. */
const ROW_BASES = ['let kb = at_k(b, 0u, h);', 'let vb = at_v(b, 0u, h);', 'let prow = t * P.s;'];

/** The forward of one query row with s and d unrolled: the same steps as FORWARD_LOOPS. */
function forwardUnrolled(g: AttentionLayout): string {
  const { s, d } = g;
  const lines = [
    'let qi = at_q(b, r, h);',
    ...ROW_BASES,
    ...range(d).map((c) => `let q_${c} = Q[qi + ${c}u];`),
    'var mx = -fg_inf();',
  ];
  for (let j = 0; j < s; j++) {
    lines.push(`let kj_${j} = kb + ${j}u * P.k_row;`);
    lines.push(`let s_${j} = (${sumOf(d, (c) => `q_${c} * K[kj_${j} + ${c}u]`)}) * P.scale;`);
    lines.push(`mx = select(mx, s_${j}, s_${j} > mx || fg_isnan(s_${j}));`);
  }
  for (let j = 0; j < s; j++) lines.push(`let e_${j} = fg_exp(s_${j} - mx);`);
  lines.push(`let sum = ${sumOf(s, (j) => `e_${j}`)};`);
  for (let j = 0; j < s; j++) lines.push(`let p_${j} = e_${j} / sum;`, `probs[prow + ${j}u] = p_${j};`);
  lines.push('let oi = (b * P.l + r) * P.heads * P.d + h * P.d;');
  for (let c = 0; c < d; c++) lines.push(`out[oi + ${c}u] = ${sumOf(s, (j) => `p_${j} * V[vb + ${j}u * P.v_row + ${c}u]`)};`);
  return lines.join('\n  ');
}

const ROWS_LOOPS = `let gi = (b * P.l + r) * P.heads * P.d + h * P.d;
  let prow = t * P.s;
  var tsum = 0.0;
  for (var j = 0u; j < P.s; j++) {
    let vj = at_v(b, j, h);
    var dot = 0.0;
    for (var c = 0u; c < P.d; c++) { dot += G[gi + c] * V[vj + c]; }
    dS[prow + j] = dot;
    tsum += probs[prow + j] * dot;
  }
  for (var j = 0u; j < P.s; j++) { dS[prow + j] = probs[prow + j] * (dS[prow + j] - tsum) * P.scale; }
  let qi = at_q(b, r, h);
  for (var c = 0u; c < P.d; c++) {
    var acc = 0.0;
    for (var j = 0u; j < P.s; j++) { acc += dS[prow + j] * K[at_k(b, j, h) + c]; }
    dQ[qi + c] = acc;
  }`;

/** The backward's first pass for one query row with s and d unrolled: the same steps as ROWS_LOOPS. */
function rowsUnrolled(g: AttentionLayout): string {
  const { s, d } = g;
  const lines = [
    'let gi = (b * P.l + r) * P.heads * P.d + h * P.d;',
    ...ROW_BASES,
    ...range(d).map((c) => `let g_${c} = G[gi + ${c}u];`),
  ];
  for (let j = 0; j < s; j++) {
    lines.push(`let dp_${j} = ${sumOf(d, (c) => `g_${c} * V[vb + ${j}u * P.v_row + ${c}u]`)};`);
    lines.push(`let p_${j} = probs[prow + ${j}u];`);
  }
  lines.push(`let tsum = ${sumOf(s, (j) => `p_${j} * dp_${j}`)};`);
  for (let j = 0; j < s; j++) lines.push(`let ds_${j} = p_${j} * (dp_${j} - tsum) * P.scale;`, `dS[prow + ${j}u] = ds_${j};`);
  lines.push('let qi = at_q(b, r, h);');
  for (let c = 0; c < d; c++) lines.push(`dQ[qi + ${c}u] = ${sumOf(s, (j) => `ds_${j} * K[kb + ${j}u * P.k_row + ${c}u]`)};`);
  return lines.join('\n  ');
}

/** The backward's second pass for key row r: dk (when `k`) and dv (when `v`, into `dvName`). */
function keysLoops(k: boolean, v: boolean, dvName: string): string {
  return `let kj = at_k(b, r, h);
  let vj = at_v(b, r, h);
  // Column r of this head's [l, s] blocks of dS and P.
  let col = bh * P.l * P.s + r;
  for (var c = 0u; c < P.d; c++) {
    var ak = 0.0;
    var av = 0.0;
    for (var i = 0u; i < P.l; i++) {
      let at = col + i * P.s;
      ${k ? 'ak += dS[at] * Q[at_q(b, i, h) + c];' : ''}
      ${v ? 'av += probs[at] * G[(b * P.l + i) * P.heads * P.d + h * P.d + c];' : ''}
    }
    ${k ? 'dK[kj + c] = ak;' : ''}
    ${v ? `${dvName}[vj + c] = av;` : ''}
  }`;
}

/** keysLoops with l and d unrolled. */
function keysUnrolled(g: AttentionLayout, k: boolean, v: boolean, dvName: string): string {
  const { l, d } = g;
  const lines = ['let col = bh * P.l * P.s + r;', 'let qb = at_q(b, 0u, h);', 'let gb = b * P.l * P.heads * P.d + h * P.d;'];
  for (let i = 0; i < l; i++) {
    if (k) lines.push(`let ds_${i} = dS[col + ${i}u * P.s];`);
    if (v) lines.push(`let p_${i} = probs[col + ${i}u * P.s];`);
  }
  if (k) {
    lines.push('let kj = at_k(b, r, h);');
    for (let c = 0; c < d; c++) lines.push(`dK[kj + ${c}u] = ${sumOf(l, (i) => `ds_${i} * Q[qb + ${i}u * P.q_row + ${c}u]`)};`);
  }
  if (v) {
    lines.push('let vj = at_v(b, r, h);');
    for (let c = 0; c < d; c++) lines.push(`${dvName}[vj + ${c}u] = ${sumOf(l, (i) => `p_${i} * G[gb + ${i}u * P.heads * P.d + ${c}u]`)};`);
  }
  return lines.join('\n  ');
}

function check(name: string, storages: GPUStorage[], g: AttentionLayout): number {
  for (const s of storages) if (s.dtype !== 'float32') throw new TypeError(`${name}: webgpu supports float32 only, got ${s.dtype}`);
  return g.n * g.heads;
}

/** The Backend method's arguments; the storages are this backend's (the op front-end checks that its inputs share one backend). */
type Args<K extends 'attention' | 'attentionBackward'> = Parameters<NonNullable<Backend[K]>>;

export function attention(rt: Runtime, ...args: Args<'attention'>): void {
  const [q, k, v, out, probs] = args.slice(0, 5) as GPUStorage[];
  const g = args[5];
  const total = check('attention', [q, k, v, out, probs], g) * g.l;
  if (total === 0 || g.s === 0 || g.d === 0) return;
  const binds: Bind[] = [
    { name: 'Q', s: q, access: 'read' },
    { name: 'K', s: k, access: 'read' },
    { name: 'V', s: v, access: 'read' },
    { name: 'out', s: out, access: 'write' },
    { name: 'probs', s: probs, access: 'write' },
  ];
  rt.dispatch({
    name: 'attention',
    key: `attention:${unrolled(g) ? `s${g.s}d${g.d}` : 'loops'}`,
    binds,
    params: layoutParams(g, total),
    groups: Math.ceil(total / WG),
    wgsl: () => `${scalarMathPrelude('fg_exp(', MATH_CORE)}
${AT}
${entry(WG)} {
  ${rowIndex('P.l')}
  ${unrolled(g) ? forwardUnrolled(g) : FORWARD_LOOPS}
}`,
  });
}

export function attentionBackward(rt: Runtime, ...args: Args<'attentionBackward'>): void {
  const [grad, q, k, v, probs, dq, dk, dv] = args.slice(0, 8) as GPUStorage[];
  const g = args[8];
  const heads = check('attentionBackward', [grad, q, k, v, probs, dq, dk, dv], g);
  if (heads * g.l === 0 || g.s === 0 || g.d === 0) return;
  const ds = rt.temp(heads * g.l * g.s, 'float32');
  // Pass 1, per query row i: dS_ij = P_ij (dO_i . v_j - sum_j' P_ij' dO_i . v_j') scale, dq_i = dS_i K.
  const rows = heads * g.l;
  rt.dispatch({
    name: 'attentionBackward.rows',
    key: `attentionBackward.rows:${unrolled(g) ? `s${g.s}d${g.d}` : 'loops'}`,
    binds: [
      { name: 'G', s: grad, access: 'read' },
      { name: 'K', s: k, access: 'read' },
      { name: 'V', s: v, access: 'read' },
      { name: 'probs', s: probs, access: 'read' },
      { name: 'dS', s: ds, access: 'write' },
      { name: 'dQ', s: dq, access: 'write' },
    ],
    params: layoutParams(g, rows),
    groups: Math.ceil(rows / WG),
    wgsl: () => `${AT}
${entry(WG)} {
  ${rowIndex('P.l')}
  ${unrolled(g) ? rowsUnrolled(g) : ROWS_LOOPS}
}`,
  });
  // Pass 2, per key row j: dk_j = sum_i dS_ij q_i, dv_j = sum_i P_ij dO_i. A packed input's
  // gradient is one storage for dk and dv: bound once, as WebGPU allows one writable binding of a
  // buffer per dispatch (two views of one buffer: one dispatch each).
  const keys = heads * g.s;
  const passes: { writes: 'shared' | 'both' | 'k' | 'v'; binds: Bind[] }[] = [];
  const reads: Bind[] = [
    { name: 'G', s: grad, access: 'read' },
    { name: 'Q', s: q, access: 'read' },
    { name: 'probs', s: probs, access: 'read' },
    { name: 'dS', s: ds, access: 'read' },
  ];
  const dK: Bind = { name: 'dK', s: dk, access: 'write' };
  const dV: Bind = { name: 'dV', s: dv, access: 'write' };
  if (dk === dv) passes.push({ writes: 'shared', binds: [...reads, dK] });
  else if (dk.buffer !== dv.buffer) passes.push({ writes: 'both', binds: [...reads, dK, dV] });
  else passes.push({ writes: 'k', binds: [...reads, dK] }, { writes: 'v', binds: [...reads, dV] });
  for (const { writes, binds } of passes) {
    const wk = writes !== 'v';
    const wv = writes !== 'k';
    rt.dispatch({
      name: 'attentionBackward.keys',
      key: `attentionBackward.keys:${writes}:${unrolled(g) ? `l${g.l}d${g.d}` : 'loops'}`,
      binds,
      params: layoutParams(g, keys),
      groups: Math.ceil(keys / WG),
      wgsl: () => `${AT}
${entry(WG)} {
  ${rowIndex('P.s')}
  ${unrolled(g) ? keysUnrolled(g, wk, wv, writes === 'shared' ? 'dK' : 'dV') : keysLoops(wk, wv, writes === 'shared' ? 'dK' : 'dV')}
}`,
    });
  }
  rt.release(ds);
}
