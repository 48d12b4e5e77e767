/**
 * Batched matmul out[b] = op(A[b]) @ op(B[b]) with transpose flags honoured in the loads (no
 * transpose is ever materialized). Two kernels:
 * - tiled: a BM x BN output tile per workgroup, A and B staged through workgroup memory in BK
 *   slices (vec4 global loads along whichever dim is contiguous), an RM x RN register block per
 *   thread;
 * - direct: each thread computes an RM x RN block straight from global memory, four k at a time
 *   through vec4 loads where a layout allows. With RM = 1 it is the vector-matrix path for small
 *   M, and with a split of K into chunks (partials summed by the reduce kernel) the path for small
 *   outputs with a long K.
 * `chooseMatmul` picks one by shape; `MatmulPlan` lets benchmarks force a variant.
 */
import type { MatmulLayout } from '../backend.js';
import { reduce } from './reduce.js';
import type { Bind, GPUStorage, Runtime } from './runtime.js';
import { entry } from './wgsl.js';

export interface TiledPlan {
  kind: 'tiled';
  /** Threads along n and m; each computes rm x rn (rm, rn multiples of 4). */
  tx: number;
  ty: number;
  rm: number;
  rn: number;
  bk: number;
}

export interface DirectPlan {
  kind: 'direct';
  /** Rows and columns per thread (rn a multiple of 4, or 1). */
  rm: number;
  rn: number;
  /** Chunks K is split into; > 1 writes partials that a reduce pass sums. */
  splitK: number;
  wg: number;
  /**
   * Threads of a workgroup along n (the rest go along m): a square-ish workgroup tile shares its
   * A rows and B columns between threads, which is what keeps them in cache.
   */
  gx: number;
}

export type MatmulPlan = TiledPlan | DirectPlan;

/** Facts about the operands that decide which loads may be vec4. */
interface Shape {
  l: MatmulLayout;
  /** A is contiguous along m (transA) / B along n (!transB), and that dim is a multiple of 4. */
  aVecM: boolean;
  bVecN: boolean;
  /** A / B contiguous along k with K a multiple of 4. */
  aVecK: boolean;
  bVecK: boolean;
  outVec: boolean;
}

function analyze(a: GPUStorage, b: GPUStorage, out: GPUStorage, l: MatmulLayout): Shape {
  const aAligned = l.aBatchStride % 4 === 0 && a.numel % 4 === 0;
  const bAligned = l.bBatchStride % 4 === 0 && b.numel % 4 === 0;
  return {
    l,
    aVecM: aAligned && l.transA && l.m % 4 === 0,
    aVecK: aAligned && !l.transA && l.k % 4 === 0,
    bVecN: bAligned && !l.transB && l.n % 4 === 0,
    bVecK: bAligned && l.transB && l.k % 4 === 0,
    outVec: l.n % 4 === 0 && out.numel % 4 === 0,
  };
}

/** A 64 x 64 tile, 4 x 4 per thread, 16-deep k slices: the GPU shape. */
export const GPU_TILED: TiledPlan = { kind: 'tiled', tx: 16, ty: 16, rm: 4, rn: 4, bk: 16 };

/**
 * Picks a kernel by shape: big outputs tile; few rows or few outputs go direct, maybe split-K.
 * CPU-emulated adapters (SwiftShader) run matmul-emulated.ts instead (WebGPUBackend.matmul): there
 * barriers and workgroup memory cost more than they save, and idle invocations are not free.
 */
export function chooseMatmul(l: MatmulLayout): MatmulPlan {
  const outputs = l.batch * l.m * l.n;
  if (l.m <= 4) return { kind: 'direct', rm: 1, rn: l.n % 4 === 0 ? 4 : 1, splitK: splitFor(outputs / 4, l.k), wg: 64, gx: 64 };
  if (outputs < 64 * 64 || l.n < 16) {
    return { kind: 'direct', rm: 4, rn: l.n % 4 === 0 ? 4 : 1, splitK: splitFor(outputs / 16, l.k), wg: 64, gx: 16 };
  }
  return GPU_TILED;
}

/** Splits K when there are few threads and each would walk a long K. */
function splitFor(threads: number, k: number): number {
  if (threads >= 1024 || k < 512) return 1;
  return Math.max(1, Math.min(Math.ceil(k / 256), Math.floor(4096 / Math.max(1, threads))));
}

/** Checks a call; false when there is nothing to compute. */
function checkMatmul(a: GPUStorage, b: GPUStorage, out: GPUStorage, l: MatmulLayout): boolean {
  if (out.numel !== l.batch * l.m * l.n) throw new RangeError(`matmul: out has ${out.numel} elements, expected ${l.batch * l.m * l.n}`);
  if (a.dtype !== 'float32' || b.dtype !== 'float32' || out.dtype !== 'float32') throw new TypeError('matmul: webgpu supports float32 only');
  return out.numel > 0;
}

export function matmul(rt: Runtime, a: GPUStorage, b: GPUStorage, out: GPUStorage, l: MatmulLayout, plan = chooseMatmul(l)): void {
  if (!checkMatmul(a, b, out, l)) return;
  const s = analyze(a, b, out, l);
  if (plan.kind === 'tiled') tiled(rt, a, b, out, s, plan);
  else if (plan.splitK <= 1) direct(rt, a, b, out, s, plan);
  else {
    // Partials [splitK, batch*m*n], summed over the split by the reduce kernel.
    const partial = rt.temp(plan.splitK * out.numel, 'float32');
    direct(rt, a, b, partial, { ...s, outVec: s.l.n % 4 === 0 }, plan);
    reduce(rt, 'sum', partial, out, { outer: 1, size: plan.splitK, inner: out.numel });
    rt.release(partial);
  }
}

function layoutParams(l: MatmulLayout) {
  return [
    { name: 'M', type: 'u32' as const, value: l.m },
    { name: 'N', type: 'u32' as const, value: l.n },
    { name: 'K', type: 'u32' as const, value: l.k },
    { name: 'batch', type: 'u32' as const, value: l.batch },
    { name: 'a_batch', type: 'u32' as const, value: l.aBatchStride },
    { name: 'b_batch', type: 'u32' as const, value: l.bBatchStride },
  ];
}

function binds(a: GPUStorage, b: GPUStorage, out: GPUStorage, aVec: boolean, bVec: boolean, outVec: boolean): Bind[] {
  return [
    { name: 'A', s: a, access: 'read', type: aVec ? 'vec4<f32>' : 'f32' },
    { name: 'B', s: b, access: 'read', type: bVec ? 'vec4<f32>' : 'f32' },
    { name: 'C', s: out, access: 'write', type: outVec ? 'vec4<f32>' : 'f32' },
  ];
}

/** Stores acc_i_v (rows row0 + i, cols col0 + 4v ..) into C at cBase, skipping what lies outside. */
function storeBlock(rm: number, rn: number, outVec: boolean): string {
  const lines: string[] = [];
  const nv = Math.max(1, rn / 4);
  for (let i = 0; i < rm; i++) {
    lines.push(`if (row0 + ${i}u < P.M) {`);
    for (let v = 0; v < nv; v++) {
      const acc = `acc_${i}_${v}`;
      if (rn === 1) {
        lines.push(`  if (col0 < P.N) { C[cBase + (row0 + ${i}u) * P.N + col0] = ${acc}; }`);
      } else if (outVec) {
        lines.push(`  if (col0 + ${4 * v}u < P.N) { C[(cBase + (row0 + ${i}u) * P.N + col0 + ${4 * v}u) / 4u] = ${acc}; }`);
      } else {
        for (let c = 0; c < 4; c++) {
          lines.push(`  if (col0 + ${4 * v + c}u < P.N) { C[cBase + (row0 + ${i}u) * P.N + col0 + ${4 * v + c}u] = ${acc}[${c}]; }`);
        }
      }
    }
    lines.push('}');
  }
  return lines.join('\n  ');
}

function accDecls(rm: number, rn: number): string {
  const t = rn === 1 ? 'f32' : 'vec4<f32>';
  const lines: string[] = [];
  for (let i = 0; i < rm; i++) for (let v = 0; v < Math.max(1, rn / 4); v++) lines.push(`var acc_${i}_${v} = ${t}(0.0);`);
  return lines.join('\n  ');
}

// ------------------------------------------------------------------------------------------------
// direct

/**
 * The loads of one k-step panel (`ks` consecutive k) for the thread's rows of A, into lets
 * `a_<kk>_<i>` (scalars), and for its columns of B, into `b_<kk>_<v>` (a vec4 over 4 columns, or a
 * scalar when rn = 1). Every per-row/column base index is computed once before the k loop (`pre`),
 * so the loop body is loads plus one multiply per k. Rows/cols past the edge are clamped (never
 * when the dim is a multiple of the block): they are computed and not stored.
 */
function directPanels(s: Shape, p: DirectPlan, ks: number): { pre: string; loop: string } {
  const { l } = s;
  const pre: string[] = ['let m4 = P.M / 4u;', 'let n4 = P.N / 4u;'];
  const loop: string[] = ks === 4 ? ['let kq = k / 4u;'] : [];
  const mFull = l.m % p.rm === 0;
  const nFull = l.n % p.rn === 0;
  const rowAt = (i: number, width = 1) => (mFull ? `(row0 + ${i}u)` : `min(row0 + ${i}u, P.M - ${width}u)`);
  const colAt = (j: number, width = 1) => (nFull ? `(col0 + ${j}u)` : `min(col0 + ${j}u, P.N - ${width}u)`);

  // A element (row r, k) lives at aBase + (transA ? k*M + r : r*K + k).
  if (s.aVecM && p.rm % 4 === 0) {
    for (let q = 0; q < p.rm / 4; q++) pre.push(`let a_at_${q} = (aBase + ${rowAt(4 * q, 4)}) / 4u;`);
    for (let kk = 0; kk < ks; kk++) {
      for (let q = 0; q < p.rm / 4; q++) {
        loop.push(`let av_${kk}_${q} = A[a_at_${q} + (k + ${kk}u) * m4];`);
        for (let c = 0; c < 4; c++) loop.push(`let a_${kk}_${4 * q + c} = av_${kk}_${q}[${c}];`);
      }
    }
  } else if (s.aVecK && ks === 4) {
    for (let i = 0; i < p.rm; i++) {
      pre.push(`let a_at_${i} = (aBase + ${rowAt(i)} * P.K) / 4u;`);
      loop.push(`let ak_${i} = A[a_at_${i} + kq];`);
      for (let kk = 0; kk < 4; kk++) loop.push(`let a_${kk}_${i} = ak_${i}[${kk}];`);
    }
  } else {
    for (let i = 0; i < p.rm; i++) pre.push(`let a_at_${i} = aBase + ${rowAt(i)}${l.transA ? '' : ' * P.K'};`);
    for (let kk = 0; kk < ks; kk++) {
      for (let i = 0; i < p.rm; i++) loop.push(`let a_${kk}_${i} = A[a_at_${i} + ${l.transA ? `(k + ${kk}u) * P.M` : `k + ${kk}u`}];`);
    }
  }

  // B element (k, col c) lives at bBase + (transB ? c*K + k : k*N + c).
  const nv = Math.max(1, p.rn / 4);
  const scalarB = (j: number, kk: number) => `B[b_at_${j} + ${l.transB ? `k + ${kk}u` : `(k + ${kk}u) * P.N`}]`;
  if (p.rn > 1 && s.bVecN) {
    for (let v = 0; v < nv; v++) pre.push(`let b_at_${v} = (bBase + ${colAt(4 * v, 4)}) / 4u;`);
    for (let kk = 0; kk < ks; kk++) for (let v = 0; v < nv; v++) loop.push(`let b_${kk}_${v} = B[b_at_${v} + (k + ${kk}u) * n4];`);
  } else if (s.bVecK && ks === 4) {
    for (let j = 0; j < p.rn; j++) {
      pre.push(`let b_at_${j} = (bBase + ${colAt(j)} * P.K) / 4u;`);
      loop.push(`let bk_${j} = B[b_at_${j} + kq];`);
    }
    for (let kk = 0; kk < 4; kk++) {
      for (let v = 0; v < nv; v++) {
        const value = p.rn === 1 ? `bk_0[${kk}]` : `vec4<f32>(${[0, 1, 2, 3].map((c) => `bk_${4 * v + c}[${kk}]`).join(', ')})`;
        loop.push(`let b_${kk}_${v} = ${value};`);
      }
    }
  } else {
    for (let j = 0; j < p.rn; j++) pre.push(`let b_at_${j} = bBase + ${colAt(j)}${l.transB ? ' * P.K' : ''};`);
    for (let kk = 0; kk < ks; kk++) {
      for (let v = 0; v < nv; v++) {
        const value = p.rn === 1 ? scalarB(0, kk) : `vec4<f32>(${[0, 1, 2, 3].map((c) => scalarB(4 * v + c, kk)).join(', ')})`;
        loop.push(`let b_${kk}_${v} = ${value};`);
      }
    }
  }
  return { pre: pre.join('\n  '), loop: loop.join('\n    ') };
}

function rankUpdates(rm: number, rn: number, ks: number): string {
  const lines: string[] = [];
  for (let kk = 0; kk < ks; kk++) {
    for (let i = 0; i < rm; i++) for (let v = 0; v < Math.max(1, rn / 4); v++) lines.push(`acc_${i}_${v} += a_${kk}_${i} * b_${kk}_${v};`);
  }
  return lines.join('\n    ');
}

function direct(rt: Runtime, a: GPUStorage, b: GPUStorage, out: GPUStorage, s: Shape, p: DirectPlan): void {
  const { l } = s;
  const mb = Math.ceil(l.m / p.rm);
  const nb = Math.ceil(l.n / p.rn);
  const gx = Math.min(p.gx, p.wg);
  const gy = p.wg / gx;
  const tilesM = Math.ceil(mb / gy);
  const tilesN = Math.ceil(nb / gx);
  const chunk = Math.ceil(l.k / p.splitK / 4) * 4;
  // Four k per step when a k-contiguous operand can use vec4 loads (K % 4 == 0 then).
  const ks = s.aVecK || s.bVecK ? 4 : 1;
  const aVec = (s.aVecM && p.rm % 4 === 0) || (s.aVecK && ks === 4);
  const bVec = p.rn === 1 ? s.bVecK && ks === 4 : s.bVecN || (s.bVecK && ks === 4);
  const outVec = s.outVec && p.rn % 4 === 0;
  const full = `${l.m % p.rm === 0}${l.n % p.rn === 0}`;
  const groups = p.splitK * l.batch * tilesM * tilesN;
  const key = `mm.direct:${p.rm}x${p.rn}:${p.wg}/${gx}:${l.transA}${l.transB}:${ks}:${aVec}${bVec}${outVec}:${full}:${s.aVecM}${s.aVecK}${s.bVecN}${s.bVecK}`;
  rt.dispatch({
    name: 'matmul.direct',
    key,
    binds: binds(a, b, out, aVec, bVec, outVec),
    params: [
      ...layoutParams(l),
      { name: 'mb', type: 'u32', value: mb },
      { name: 'nb', type: 'u32', value: nb },
      { name: 'tiles_m', type: 'u32', value: tilesM },
      { name: 'tiles_n', type: 'u32', value: tilesN },
      { name: 'chunk', type: 'u32', value: chunk },
      { name: 'groups', type: 'u32', value: groups },
    ],
    groups,
    wgsl: () => {
      const panels = directPanels(s, p, ks);
      return `${entry(p.wg)} {
  let g = fg_group(wg, nwg);
  // A split dispatch's spare groups: their split index would be splitK, a block past the output.
  if (g >= P.groups) { return; }
  let cb = (g % P.tiles_n) * ${gx}u + lid % ${gx}u;
  let rest = g / P.tiles_n;
  let rb = (rest % P.tiles_m) * ${gy}u + lid / ${gx}u;
  let bt = (rest / P.tiles_m) % P.batch;
  let split = rest / (P.tiles_m * P.batch);
  if (cb >= P.nb || rb >= P.mb) { return; }
  let col0 = cb * ${p.rn}u;
  let row0 = rb * ${p.rm}u;
  let aBase = bt * P.a_batch;
  let bBase = bt * P.b_batch;
  let cBase = (split * P.batch + bt) * P.M * P.N;
  let k0 = split * P.chunk;
  let k1 = min(P.K, k0 + P.chunk);
  ${accDecls(p.rm, p.rn)}
  ${panels.pre}
  for (var k = k0; k < k1; k += ${ks}u) {
    ${panels.loop}
    ${rankUpdates(p.rm, p.rn, ks)}
  }
  ${storeBlock(p.rm, p.rn, outVec)}
}`;
    },
  });
}

/**
 * The pieces of the direct kernel, for the CPU-emulated forms (matmul-emulated.ts, a lazily loaded
 * family that takes them as an argument rather than importing this core module).
 */
export const DIRECT_PARTS = { checkMatmul, analyze, layoutParams, binds, directPanels, accDecls, rankUpdates, storeBlock };
export type DirectParts = typeof DIRECT_PARTS;
export type { Shape as MatmulShape };

// ------------------------------------------------------------------------------------------------
// tiled

/**
 * Loads a BK x BO slice of A (o = m) or B (o = n) into workgroup memory laid out [k][o] as vec4
 * over o. `oContig` says the source is contiguous along o (transA / !transB), with vec4 loads when
 * `vecO`; otherwise it is contiguous along k, with vec4 loads when `vecK`.
 */
function tileLoad(
  src: 'A' | 'B',
  dst: string,
  base: string,
  o0: string,
  O: string,
  BO: number,
  BK: number,
  threads: number,
  oContig: boolean,
  vecO: boolean,
  vecK: boolean,
): string {
  const lines: string[] = [];
  if (oContig && vecO) {
    const vecs = (BK * BO) / 4;
    for (let s = 0; s < Math.ceil(vecs / threads); s++) {
      lines.push(`{ let v = lid + ${s * threads}u;`);
      if ((s + 1) * threads > vecs) lines.push(`  if (v < ${vecs}u) {`);
      lines.push(`  let kk = v / ${BO / 4}u; let oq = v % ${BO / 4}u;`);
      lines.push(`  let gk = k0 + kk; let go = ${o0} + oq * 4u;`);
      lines.push(`  var val = vec4<f32>(0.0);`);
      lines.push(`  if (gk < P.K && go < ${O}) { val = ${src}[(${base} + gk * ${O} + go) / 4u]; }`);
      lines.push(`  ${dst}[kk * ${BO / 4}u + oq] = val;`);
      if ((s + 1) * threads > vecs) lines.push('  }');
      lines.push('}');
    }
  } else if (!oContig && vecK) {
    const vecs = (BK * BO) / 4;
    for (let s = 0; s < Math.ceil(vecs / threads); s++) {
      lines.push(`{ let v = lid + ${s * threads}u;`);
      if ((s + 1) * threads > vecs) lines.push(`  if (v < ${vecs}u) {`);
      lines.push(`  let o = v / ${BK / 4}u; let kq = v % ${BK / 4}u;`);
      lines.push(`  let gk = k0 + kq * 4u; let go = ${o0} + o;`);
      lines.push(`  var val = vec4<f32>(0.0);`);
      lines.push(`  if (gk < P.K && go < ${O}) { val = ${src}[(${base} + go * P.K + gk) / 4u]; }`);
      for (let c = 0; c < 4; c++) lines.push(`  ${dst}[(kq * 4u + ${c}u) * ${BO / 4}u + o / 4u][o % 4u] = val[${c}];`);
      if ((s + 1) * threads > vecs) lines.push('  }');
      lines.push('}');
    }
  } else {
    const elems = BK * BO;
    for (let s = 0; s < Math.ceil(elems / threads); s++) {
      lines.push(`{ let e = lid + ${s * threads}u;`);
      if ((s + 1) * threads > elems) lines.push(`  if (e < ${elems}u) {`);
      lines.push(`  let kk = e / ${BO}u; let o = e % ${BO}u;`);
      lines.push(`  let gk = k0 + kk; let go = ${o0} + o;`);
      lines.push(`  var val = 0.0;`);
      const at = oContig ? `gk * ${O} + go` : `go * P.K + gk`;
      lines.push(`  if (gk < P.K && go < ${O}) { val = ${src}[${base} + ${at}]; }`);
      lines.push(`  ${dst}[kk * ${BO / 4}u + o / 4u][o % 4u] = val;`);
      if ((s + 1) * threads > elems) lines.push('  }');
      lines.push('}');
    }
  }
  return lines.join('\n    ');
}

function tiled(rt: Runtime, a: GPUStorage, b: GPUStorage, out: GPUStorage, s: Shape, p: TiledPlan): void {
  const { l } = s;
  const BM = p.ty * p.rm;
  const BN = p.tx * p.rn;
  const threads = p.tx * p.ty;
  const tilesM = Math.ceil(l.m / BM);
  const tilesN = Math.ceil(l.n / BN);
  const aVec = s.aVecM || s.aVecK;
  const bVec = s.bVecN || s.bVecK;
  const key = `mm.tiled:${p.tx}x${p.ty}:${p.rm}x${p.rn}:${p.bk}:${l.transA}${l.transB}:${aVec}${bVec}${s.outVec}`;
  const qm = p.rm / 4;
  const qn = p.rn / 4;
  rt.dispatch({
    name: 'matmul.tiled',
    key,
    binds: binds(a, b, out, aVec, bVec, s.outVec),
    params: [...layoutParams(l), { name: 'tiles_m', type: 'u32', value: tilesM }, { name: 'tiles_n', type: 'u32', value: tilesN }],
    groups: tilesM * tilesN * l.batch,
    wgsl: () => {
      const inner: string[] = [];
      for (let q = 0; q < qm; q++) inner.push(`let av${q} = As[kk * ${BM / 4}u + ty * ${qm}u + ${q}u];`);
      for (let v = 0; v < qn; v++) inner.push(`let bv${v} = Bs[kk * ${BN / 4}u + tx * ${qn}u + ${v}u];`);
      for (let i = 0; i < p.rm; i++) {
        for (let v = 0; v < qn; v++) inner.push(`acc_${i}_${v} += av${Math.floor(i / 4)}[${i % 4}] * bv${v};`);
      }
      return `var<workgroup> As: array<vec4<f32>, ${(p.bk * BM) / 4}>;
var<workgroup> Bs: array<vec4<f32>, ${(p.bk * BN) / 4}>;
${entry(threads)} {
  let g = fg_group(wg, nwg);
  if (g >= P.tiles_m * P.tiles_n * P.batch) { return; }
  let tx = lid % ${p.tx}u;
  let ty = lid / ${p.tx}u;
  let n0 = (g % P.tiles_n) * ${BN}u;
  let m0 = ((g / P.tiles_n) % P.tiles_m) * ${BM}u;
  let bt = g / (P.tiles_n * P.tiles_m);
  let aBase = bt * P.a_batch;
  let bBase = bt * P.b_batch;
  let cBase = bt * P.M * P.N;
  let row0 = m0 + ty * ${p.rm}u;
  let col0 = n0 + tx * ${p.rn}u;
  ${accDecls(p.rm, p.rn)}
  for (var k0 = 0u; k0 < P.K; k0 += ${p.bk}u) {
    ${tileLoad('A', 'As', 'aBase', 'm0', 'P.M', BM, p.bk, threads, l.transA, s.aVecM, s.aVecK)}
    ${tileLoad('B', 'Bs', 'bBase', 'n0', 'P.N', BN, p.bk, threads, !l.transB, s.bVecN, s.bVecK)}
    workgroupBarrier();
    for (var kk = 0u; kk < ${p.bk}u; kk++) {
      ${inner.join('\n      ')}
    }
    workgroupBarrier();
  }
  ${storeBlock(p.rm, p.rn, s.outVec)}
}`;
    },
  });
}
