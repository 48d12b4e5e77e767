/**
 * Matmul for CPU-emulated adapters (SwiftShader, lavapipe), in the kernel family of such adapters
 * (emulated.ts, installed by WebGPUBackend when it loads): a GPU never loads it.
 *
 * There a workgroup is a loop over its invocations on one core, an invocation that returns at once
 * still costs its share, and each dispatch has a fixed cost of tens to hundreds of microseconds.
 * So the "packed" form gives every invocation one RM x RN output block of one batch entry and all
 * of K (no split-K partials, no second pass), and numbers the blocks linearly over batch x rows x
 * columns, so that no invocation idles: the attention matmuls of a small ViT ([128 x 17 x 8] @
 * [128 x 8 x 17]) had 9 busy invocations in a workgroup of 64 under the GPU-shaped 2-D tiling,
 * and the weight gradients (K = batch x tokens) paid a split-K reduce pass. The block shape is
 * chosen per call to waste few padded rows and columns (see `choosePacked`). The loads, the
 * multiply-adds and the guarded stores are the direct kernel's (matmul.ts), taken as an argument.
 */
import type { MatmulLayout } from '../backend.js';
import type { DirectParts } from './matmul.js';
import type { GPUStorage, Runtime } from './runtime.js';
import { entry } from './wgsl.js';

export interface PackedPlan {
  /** Rows and columns per invocation (rn a multiple of 4, or 1). */
  rm: number;
  rn: number;
  /** Invocations per workgroup. */
  wg: number;
}

/** Block shapes tried, rows x columns, the bigger first (they win ties: fewer loads per multiply-add). */
const SHAPES: readonly (readonly [number, number])[] = [
  [8, 8],
  [4, 8],
  [8, 4],
  [4, 4],
  [2, 4],
  [1, 4],
  [4, 1],
  [1, 1],
];
/**
 * Workgroups a call should spread over where it has the blocks for them: each workgroup runs on
 * one core, and a small workgroup costs little more than a big one (its invocations run in SIMD
 * groups of four, one group after another).
 */
const MIN_GROUPS = 8;

/**
 * The block shape of least estimated work: per invocation and k, RM x RN multiply-adds plus about
 * four per load (RM + RN loads, each bounds-checked per lane on SwiftShader), over the padded
 * output (measured on SwiftShader at the shapes of the ViT and MLP steps: 8 x 8 wins wherever the
 * output has the rows and columns, smaller blocks where a dim is short). Shapes that leave fewer
 * than MIN_GROUPS x 4 blocks are passed over while a smaller one does not; the workgroup then
 * shrinks (64 down to 4 invocations) until the blocks fill MIN_GROUPS workgroups.
 */
export function choosePacked(l: MatmulLayout): PackedPlan {
  const blocksOf = (rm: number, rn: number) => l.batch * Math.ceil(l.m / rm) * Math.ceil(l.n / rn);
  let best: { cost: number; rm: number; rn: number } | null = null;
  for (const [rm, rn] of SHAPES) {
    if (rn === 1 && l.n >= 4) continue;
    const blocks = blocksOf(rm, rn);
    const cost = blocks * (rm * rn + 4 * (rm + rn)) * (blocks < MIN_GROUPS * 4 ? 1e6 / blocks : 1);
    if (!best || cost < best.cost) best = { cost, rm, rn };
  }
  const { rm, rn } = best!;
  const blocks = blocksOf(rm, rn);
  let wg = 64;
  while (wg > 4 && Math.ceil(blocks / wg) < MIN_GROUPS) wg /= 2;
  return { rm, rn, wg };
}

/**
 * The direct matmul's pieces (matmul.ts), handed over when this family is installed (emulated.ts):
 * the fused matmul epilogue (fusedmap.ts) builds on them from here, because importing matmul.ts
 * there would move it out of the backend's own chunk into a shared one that every browser fetches.
 */
export let installedParts: DirectParts | null = null;
export function setInstalledParts(parts: DirectParts): void {
  installedParts = parts;
}

export function matmulPacked(rt: Runtime, a: GPUStorage, b: GPUStorage, out: GPUStorage, l: MatmulLayout, parts: DirectParts, plan = choosePacked(l)): void {
  if (!parts.checkMatmul(a, b, out, l)) return;
  const s = parts.analyze(a, b, out, l);
  const { rm, rn, wg } = plan;
  const mb = Math.ceil(l.m / rm);
  const nb = Math.ceil(l.n / rn);
  const total = l.batch * mb * nb;
  // Four k per step when a k-contiguous operand can use vec4 loads (K % 4 == 0 then).
  const ks = s.aVecK || s.bVecK ? 4 : 1;
  const aVec = (s.aVecM && rm % 4 === 0) || (s.aVecK && ks === 4);
  const bVec = rn === 1 ? s.bVecK && ks === 4 : s.bVecN || (s.bVecK && ks === 4);
  const outVec = s.outVec && rn % 4 === 0;
  const key = `mm.packed:${rm}x${rn}:${wg}:${l.transA}${l.transB}:${ks}:${aVec}${bVec}${outVec}:${l.m % rm === 0}${l.n % rn === 0}:${s.aVecM}${s.aVecK}${s.bVecN}${s.bVecK}`;
  const direct = { kind: 'direct' as const, rm, rn, splitK: 1, wg, gx: 1 };
  rt.dispatch({
    name: 'matmul.packed',
    key,
    binds: parts.binds(a, b, out, aVec, bVec, outVec),
    params: [...parts.layoutParams(l), { name: 'mb', type: 'u32', value: mb }, { name: 'nb', type: 'u32', value: nb }, { name: 'total', type: 'u32', value: total }],
    groups: Math.ceil(total / wg),
    wgsl: () => {
      const panels = parts.directPanels(s, direct, ks);
      return `${entry(wg)} {
  let t = fg_group(wg, nwg) * ${wg}u + lid;
  if (t >= P.total) { return; }
  let q = t / P.nb;
  let col0 = (t - q * P.nb) * ${rn}u;
  let bt = q / P.mb;
  let row0 = (q - bt * P.mb) * ${rm}u;
  let aBase = bt * P.a_batch;
  let bBase = bt * P.b_batch;
  let cBase = bt * P.M * P.N;
  ${parts.accDecls(rm, rn)}
  ${panels.pre}
  for (var k = 0u; k < P.K; k += ${ks}u) {
    ${panels.loop}
    ${parts.rankUpdates(rm, rn, ks)}
  }
  ${parts.storeBlock(rm, rn, outVec)}
}`;
    },
  });
}
