/**
 * The matmul form that a CPU-emulated adapter (SwiftShader) runs (src/kernels/webgpu/matmul-emulated.ts:
 * one RM x RN output block per invocation over all of K, blocks numbered linearly over batch x
 * rows x columns), against the CPU reference: the exact matmuls of the ViT step (batched
 * attention products over 128 heads of 17 tokens, the projections and their weight gradients
 * with K = 544), every block shape on aligned and unaligned shapes with every transpose
 * combination, broadcast operands (batch stride 0), and a 2-D grid (the workgroup count over a
 * lowered maxComputeWorkgroupsPerDimension: spare workgroups must write nothing). And the fused
 * attention of CPU-emulated adapters (src/kernels/webgpu/attention.ts: one dispatch forward, two
 * backward) against the CPU reference kernels: the ViT's packed projection (q, k and v one storage,
 * their gradients one storage), separate q, k, v with l != s, odd head sizes, one key, and a NaN.
 * The forms are forced with `cpuEmulated: true`, so a real GPU tests them too.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { AttentionLayout, Backend, MatmulLayout, Storage } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWebGPUBackend, type WebGPUBackend } from '../src/kernels/webgpu/index.js';
import { DIRECT_PARTS } from '../src/kernels/webgpu/matmul.js';
import { choosePacked, matmulPacked, type PackedPlan } from '../src/kernels/webgpu/matmul-emulated.js';
import { asGPU } from '../src/kernels/webgpu/runtime.js';
import { expectOutputsMatch, f32, runKernelOn } from './helpers/kernel-parity.js';
import { acquireWebGPU, randomF32 } from './helpers/webgpu.js';

const mm = (batch: number, m: number, n: number, k: number, transA: boolean, transB: boolean, aBatchStride = m * k, bBatchStride = k * n): MatmulLayout => ({
  batch,
  m,
  n,
  k,
  transA,
  transB,
  aBatchStride,
  bBatchStride,
});

/** The ViT of the steps bench (batch 32, 17 tokens, dim 32, 4 heads of 8, MLP 64): every matmul its SGD step runs. */
const VIT: [string, MatmulLayout][] = [
  ['qkv projection', mm(1, 544, 96, 32, false, true, 0, 0)],
  ['out projection', mm(1, 544, 32, 32, false, true, 0, 0)],
  ['fc1', mm(1, 544, 64, 32, false, true, 0, 0)],
  ['fc2', mm(1, 544, 32, 64, false, true, 0, 0)],
  ['head', mm(1, 32, 10, 32, false, true, 0, 0)],
  ['scores q k^T', mm(128, 17, 17, 8, false, true, 136, 136)],
  ['context attn v', mm(128, 17, 8, 17, false, false, 289, 136)],
  ['dV = attn^T dctx', mm(128, 17, 8, 17, true, false, 289, 136)],
  ['fc2 input gradient', mm(1, 544, 32, 64, false, false, 0, 0)],
  ['qkv input gradient', mm(1, 544, 32, 96, false, false, 0, 0)],
  ['qkv weight gradient (K = 544)', mm(1, 96, 32, 544, true, false, 0, 0)],
  ['fc1 weight gradient (K = 544)', mm(1, 32, 64, 544, true, false, 0, 0)],
  ['head input gradient', mm(1, 32, 32, 10, false, false, 0, 0)],
  ['head weight gradient', mm(1, 10, 32, 32, true, false, 0, 0)],
];

const PLANS: PackedPlan[] = [
  { rm: 8, rn: 8, wg: 64 },
  { rm: 4, rn: 8, wg: 16 },
  { rm: 8, rn: 4, wg: 32 },
  { rm: 4, rn: 4, wg: 4 },
  { rm: 2, rn: 4, wg: 8 },
  { rm: 1, rn: 4, wg: 64 },
  { rm: 4, rn: 1, wg: 64 },
  { rm: 1, rn: 1, wg: 16 },
];

const cpu = new CpuBackend();

/** A packed case is self-attention: s = l. */
interface AttentionCase {
  name: string;
  n: number;
  heads: number;
  l: number;
  s: number;
  d: number;
  packed: boolean;
  nan?: boolean;
  /** dk and dv as two views of one allocation (non-packed only). */
  gradViews?: boolean;
}
const ATTENTION: AttentionCase[] = [
  { name: 'ViT block: packed qkv [32, 17, 96], 4 heads of 8', n: 32, heads: 4, l: 17, s: 17, d: 8, packed: true },
  { name: 'separate q, k, v, l = 5 queries over s = 9 keys', n: 3, heads: 2, l: 5, s: 9, d: 4, packed: false },
  { name: 'odd head size 3, one head', n: 2, heads: 1, l: 7, s: 7, d: 3, packed: true },
  { name: 'one key', n: 2, heads: 3, l: 4, s: 1, d: 5, packed: false },
  { name: 'a NaN in q reaches its row', n: 2, heads: 2, l: 5, s: 5, d: 2, packed: true, nan: true },
  { name: 'rows too long to unroll (s x d > 512): the loop form', n: 2, heads: 2, l: 3, s: 40, d: 16, packed: false },
  { name: 'the loop form, packed', n: 1, heads: 1, l: 36, s: 36, d: 20, packed: true },
  { name: 'dk and dv views of one buffer: one dispatch each', n: 2, heads: 2, l: 4, s: 6, d: 4, packed: false, gradViews: true },
];

/** Forward (out, probs) and backward (dq, dk, dv) of one case on a backend; returns what it wrote. */
async function runAttention(be: Backend, t: AttentionCase): Promise<Float32Array[]> {
  const e = t.heads * t.d;
  const row = t.packed ? 3 * e : e;
  const l: AttentionLayout = { n: t.n, heads: t.heads, l: t.l, s: t.s, d: t.d, scale: 1 / Math.sqrt(t.d), q: { offset: 0, row }, k: { offset: t.packed ? e : 0, row }, v: { offset: t.packed ? 2 * e : 0, row } };
  const sizes = t.packed ? [t.n * t.l * 3 * e] : [t.n * t.l * e, t.n * t.s * e, t.n * t.s * e];
  const inputs = sizes.map((size, i) => {
    const x = randomF32(size, 40 + i, -2, 2);
    if (t.nan && i === 0) x[row + 1] = NaN; // batch 0, query row 1, head 0
    return be.upload(x, 'float32');
  });
  const [q, k, v] = t.packed ? [inputs[0], inputs[0], inputs[0]] : inputs;
  const out = be.alloc(t.n * t.l * e, 'float32');
  const probs = be.alloc(t.n * t.heads * t.l * t.s, 'float32');
  const grad = be.upload(randomF32(t.n * t.l * e, 47), 'float32');
  // dv's view starts at a 256-byte boundary (views must).
  const dvAt = Math.ceil(sizes[1] / 64) * 64;
  const whole = t.gradViews ? be.alloc(dvAt + sizes[2], 'float32') : null;
  const grads = whole ? [be.alloc(sizes[0], 'float32'), be.view(whole, 0, sizes[1]), be.view(whole, dvAt, sizes[2])] : sizes.map((size) => be.alloc(size, 'float32'));
  const [dq, dk, dv] = t.packed ? [grads[0], grads[0], grads[0]] : grads;
  be.attention!(q, k, v, out, probs, l);
  be.attentionBackward!(grad, q, k, v, probs, dq, dk, dv, l);
  const all: Storage[] = [out, probs, ...grads];
  const res = (await Promise.all(all.map((x) => be.read(x)))) as Float32Array[];
  for (const x of [...inputs, ...all, grad]) be.release(x);
  if (whole) be.release(whole);
  return res;
}
const { backend: adapter, reason } = await acquireWebGPU();
let emulated: WebGPUBackend | null = null;
let gridded: WebGPUBackend | null = null;

/** GPU (packed form, by the backend's choice or `plan`) against the CPU reference. */
async function check(gpu: WebGPUBackend, l: MatmulLayout, plan?: PackedPlan): Promise<void> {
  const aN = l.aBatchStride * (l.batch - 1) + l.m * l.k;
  const bN = l.bBatchStride * (l.batch - 1) + l.k * l.n;
  const a = f32(randomF32(aN, aN + 3));
  const b = f32(randomF32(bN, bN + 5));
  const [got, want] = await runKernelOn([gpu, cpu], [a, b], [{ numel: l.batch * l.m * l.n, dtype: 'float32' }], (be, [x, y], [o]) => {
    if (plan && be === gpu) matmulPacked(gpu.rt, asGPU(x), asGPU(y), asGPU(o), l, DIRECT_PARTS, plan);
    else be.matmul(x, y, o, l);
  });
  expectOutputsMatch(got, want, { atol: 8e-6 * Math.sqrt(l.k), rtol: 1e-4 }, `${JSON.stringify(l)}${plan ? ` ${JSON.stringify(plan)}` : ''}`);
}

describe.skipIf(!adapter)(`WebGPU packed matmul form for CPU-emulated adapters matches the CPU reference${adapter ? '' : ` (skipped: ${reason})`}`, { timeout: 120_000 }, () => {
  const be = async (): Promise<WebGPUBackend> => (emulated ??= await createWebGPUBackend({ cpuEmulated: true }));
  afterAll(() => {
    emulated?.destroy();
    gridded?.destroy();
  });

  it('the backend of a CPU-emulated adapter dispatches the packed form', async () => {
    const gpu = await be();
    const names: string[] = [];
    const dispatch = gpu.rt.dispatch.bind(gpu.rt);
    gpu.rt.dispatch = (call) => (names.push(call.name), dispatch(call));
    try {
      await check(gpu, VIT[5][1]);
    } finally {
      gpu.rt.dispatch = dispatch;
    }
    expect(names).toEqual(['matmul.packed']);
  });

  VIT.forEach(([name, l]) => it(`ViT step: ${name} ${l.batch} x ${l.m} x ${l.n} x ${l.k}`, async () => check(await be(), l)));

  it.each(PLANS)('block %j on aligned and unaligned shapes, every transpose combination', async (plan) => {
    const gpu = await be();
    for (const [ta, tb] of [
      [false, false],
      [true, false],
      [false, true],
      [true, true],
    ] as const) {
      await check(gpu, mm(2, 36, 40, 44, ta, tb), plan);
      await check(gpu, mm(3, 13, 9, 11, ta, tb), plan);
      await check(gpu, mm(1, 1, 1, 1, ta, tb), plan);
    }
  });

  it('awkward sizes and broadcast operands by the backend choice', async () => {
    const gpu = await be();
    for (const [m, n, k] of [
      [3, 7, 5],
      [7, 3, 65],
      [63, 65, 7],
      [65, 63, 257],
      [1, 257, 64],
      [17, 17, 1],
    ]) {
      for (const [ta, tb] of [
        [false, false],
        [true, true],
      ] as const)
        await check(gpu, mm(1, m, n, k, ta, tb));
    }
    await check(gpu, mm(4, 17, 8, 12, false, true, 17 * 12, 0));
    await check(gpu, mm(2, 66, 68, 20, true, false, 0, 20 * 68));
  });

  it('a 2-D grid: more workgroups than the dimension limit, the spare ones write nothing', async () => {
    gridded ??= await createWebGPUBackend({ cpuEmulated: true, limits: { maxComputeWorkgroupsPerDimension: 29 } });
    // 128 x 5 x 3 blocks of 4 x 4 in workgroups of 4: 480 workgroups on a 29 x 17 grid (13 spare).
    const l = mm(128, 17, 9, 8, false, true, 136, 72);
    await check(gridded, l, { rm: 4, rn: 4, wg: 4 });
    await check(gridded, l);
  });

  ATTENTION.forEach((t) =>
    it(`attention forward and backward: ${t.name}`, async () => {
      const gpu = await be();
      const names: string[] = [];
      const dispatch = gpu.rt.dispatch.bind(gpu.rt);
      gpu.rt.dispatch = (call) => (names.push(call.name), dispatch(call));
      let got: Float32Array[];
      try {
        got = await runAttention(gpu, t);
      } finally {
        gpu.rt.dispatch = dispatch;
      }
      expect(names).toEqual(['attention', 'attentionBackward.rows', ...(t.gradViews ? ['attentionBackward.keys'] : []), 'attentionBackward.keys']);
      const want = await runAttention(cpu, t);
      if (t.nan) expect(want[0].some(Number.isNaN) && want[0].some((x) => !Number.isNaN(x))).toBe(true);
      ['out', 'probs', ...(t.packed ? ['dqkv'] : ['dq', 'dk', 'dv'])].forEach((what, i) => expectOutputsMatch([got[i]], [want[i]], { atol: 2e-5, rtol: 2e-4 }, `${t.name}: ${what}`));
    }),
  );

  it('only a CPU-emulated adapter installs the fused attention', async () => {
    expect(typeof (await be()).attention).toBe('function');
    const real = await createWebGPUBackend({ cpuEmulated: false });
    try {
      expect(real.attention).toBeUndefined();
      expect(real.attentionBackward).toBeUndefined();
    } finally {
      real.destroy();
    }
  });

  it('chooses big blocks where the output has the rows and columns, and keeps the cores busy', () => {
    expect(choosePacked(mm(1, 544, 96, 32, false, true, 0, 0))).toEqual({ rm: 8, rn: 8, wg: 64 });
    // 12 blocks of 8 x 8 would leave most of the workgroups empty: smaller blocks, small workgroups.
    const small = choosePacked(mm(1, 32, 24, 544, true, false, 0, 0));
    const blocks = Math.ceil(32 / small.rm) * Math.ceil(24 / small.rn);
    expect(blocks).toBeGreaterThanOrEqual(32);
    expect(Math.ceil(blocks / small.wg)).toBeGreaterThanOrEqual(8);
  });
});
