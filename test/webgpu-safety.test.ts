/**
 * WebGPU is never silently wrong:
 * - the pipeline cache is keyed by the generated WGSL itself, so two optimizers whose kernels
 *   differ only in their per-group uniforms (ASAM's adaptive/eta, RWP's per-group noise scale)
 *   each run their own shader and match the CPU;
 * - a dispatch split over the per-dimension workgroup limit launches extra workgroups, and no
 *   kernel lets them write (checked at the real limit for the direct matmul, and for every kernel
 *   family with a small injected limit), with memory past the output left untouched;
 * - the adapter limits a kernel relies on are checked up front, with an error that names the
 *   kernel, the limit and both values (the limits are injectable, so a small one is testable).
 */
import { afterAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend, MatmulLayout, Storage } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import { createWebGPUBackend, requestAdapter, type WebGPUBackend, type WebGPUOptions } from '../src/kernels/webgpu/index.js';
import { GPU_TILED, matmul as gpuMatmul } from '../src/kernels/webgpu/matmul.js';
import { asGPU, CHECKED_LIMITS, type LimitName } from '../src/kernels/webgpu/runtime.js';
import type { DType, TypedArray } from '../src/tensor/dtype.js';
import { acquireWebGPU, expectClose, expectExact, randomF32, randomI32 } from './helpers/webgpu.js';

const { backend: gpu, reason } = await acquireWebGPU();
const cpu = new CpuBackend();
const made: WebGPUBackend[] = [];
afterAll(() => {
  for (const b of made) b.destroy();
});

/**
 * A backend whose shaders run without Dawn's robustness transform: an out-of-bounds write lands
 * where its index points (as on drivers without robust buffer access), so a missing guard shows as
 * bytes changed past the output. With the transform, Dawn clamps the index into the binding and
 * the stray write lands on the output's last elements instead, racing with the right value.
 */
async function unguarded(opts: WebGPUOptions = {}): Promise<WebGPUBackend> {
  const { create } = (await import(/* @vite-ignore */ 'webgpu' as string)) as { create: (flags: string[]) => GPU };
  const b = await createWebGPUBackend({ ...opts, gpu: create(['enable-dawn-features=disable_robustness']) });
  made.push(b);
  return b;
}

/** A second backend on its own device, with some of its limits lowered. */
async function withLimits(limits: Partial<Record<LimitName, number>>, opts: WebGPUOptions = {}): Promise<WebGPUBackend> {
  const b = await createWebGPUBackend({ ...opts, limits });
  made.push(b);
  return b;
}

const { nn, optim } = fg;

/** Trains a 4-8-3 MLP for two steps with the optimizer `make` builds from its two layers; returns the parameters. */
async function train(backend: Backend, seed: number, make: (layers: fg.nn.Parameter[][]) => fg.optim.Optimizer): Promise<number[]> {
  const prev = getBackend();
  setBackend(backend);
  try {
    fg.manualSeed(seed);
    const model = nn.models.mlp([4, 8, 3], { activation: 'tanh', dtype: 'float32' });
    const params = model.parameters();
    const n = 12;
    const labels = Int32Array.from({ length: n }, (_, i) => i % 3);
    const xs = randomF32(n * 4, seed);
    for (let i = 0; i < n; i++) xs[i * 4] += 2 * labels[i] - 2;
    const x = fg.tensor(xs, { dtype: 'float32', shape: [n, 4] });
    const y = fg.tensor(labels, { dtype: 'int32' });
    const opt = make([params.slice(0, 2), params.slice(2)]);
    expect(opt.fused, 'the fused arena kernels are under test').toBe(true);
    for (let t = 0; t < 2; t++) {
      opt.step(() =>
        fg.tidy(() => {
          const l = nn.functional.crossEntropy(model.forward(x), y);
          l.backward();
          return l;
        }),
      );
    }
    return (await Promise.all(params.map((p) => p.data()))).flatMap((a) => Array.from(a));
  } finally {
    setBackend(prev);
  }
}

describe.skipIf(!gpu)(`pipeline cache keyed by the WGSL text${gpu ? '' : ` (skipped: ${reason})`}`, () => {
  it('optimizers whose groups differ only in uniforms each run their own shader and match the CPU', async () => {
    const sgd = { lr: 0.1, momentum: 0.9, fused: true };
    // Each pair has the same number of per-group uniforms, so a hand-kept key counting them
    // (`ad4`, `noise:2`) cannot tell the first from the second: the order matters, first one first.
    const runs: [string, (layers: fg.nn.Parameter[][]) => fg.optim.Optimizer][] = [
      ['ASAM, groups differing in adaptive', ([a, b]) => new optim.ASAM([{ params: a }, { params: b, adaptive: false }], optim.SGD, { ...sgd, rho: 0.5 })],
      ['ASAM, groups differing in eta', ([a, b]) => new optim.ASAM([{ params: a }, { params: b, eta: 0.3 }], optim.SGD, { ...sgd, rho: 0.5 })],
      ['RWP, one noise scale', ([a, b]) => new optim.RWP([{ params: a }, { params: b }], optim.SGD, { ...sgd, gamma: 0.05 })],
      ['RWP, a noise scale per group', ([a, b]) => new optim.RWP([{ params: a }, { params: b, gamma: 0.5 }], optim.SGD, { ...sgd, gamma: 0.05 })],
    ];
    for (const [what, make] of runs) {
      const onCpu = await train(cpu, 31, make);
      const onGpu = await train(gpu!, 31, make);
      expectClose(Float32Array.from(onGpu), Float32Array.from(onCpu), { atol: 2e-5, rtol: 1e-4 }, what);
    }
  });
});

/** Uploads `data` into the front of a storage followed by `tail` sentinel values; returns [base, view of the front]. */
function withTail(b: Backend, numel: number, tail: number): [Storage, Storage] {
  const base = b.upload(new Float32Array(numel + tail).fill(7), 'float32');
  return [base, b.view(base, 0, numel)];
}

async function expectTailUntouched(b: Backend, base: Storage, numel: number, tail: number, what: string): Promise<TypedArray> {
  const all = await b.read(base);
  expectExact(all.subarray(numel), new Float32Array(tail).fill(7), `${what}: memory past the output`);
  return all.subarray(0, numel);
}

describe.skipIf(!gpu)('split dispatches never write past their output', () => {
  it('batched matmul with head dim 8 over more than 65,535 workgroups matches the CPU', async () => {
    const limit = gpu!.rt.limits.maxComputeWorkgroupsPerDimension;
    // m = 1 puts one (batch, row) per workgroup; an odd count leaves the 2-D grid with extra groups.
    const batch = limit + 2;
    const l: MatmulLayout = { batch, m: 1, n: 8, k: 8, transA: false, transB: false, aBatchStride: 8, bBatchStride: 64 };
    const A = randomF32(batch * 8, 1);
    const B = randomF32(batch * 64, 2);
    const expected = new Float32Array(batch * 8);
    {
      const [a, b, c] = [cpu.upload(A, 'float32'), cpu.upload(B, 'float32'), cpu.alloc(batch * 8, 'float32')];
      cpu.matmul(a, b, c, l);
      expected.set(await cpu.read(c));
    }
    const tail = 64;
    for (const [g, what] of [
      [gpu!, 'matmul'],
      [await unguarded(), 'matmul without robustness'],
    ] as const) {
      const a = g.upload(A, 'float32');
      const b = g.upload(B, 'float32');
      const [base, c] = withTail(g, batch * 8, tail);
      g.matmul(a, b, c, l);
      const got = await expectTailUntouched(g, base, batch * 8, tail, what);
      expectClose(got, expected, { atol: 1e-5, rtol: 1e-5 }, `${what} over a split dispatch`);
      for (const s of [a, b, base]) g.release(s);
    }
  });

  it('every kernel family is right when a small per-dimension limit splits its dispatch', async () => {
    // Seven groups per dimension: a dispatch of 8 to 49 groups becomes a 2-D grid, most with spare groups.
    const L = 7;
    type Case = { what: string; ins: [TypedArray, DType][]; out: [number, DType]; run: (b: Backend, ins: Storage[], out: Storage) => void; exact?: boolean };
    const layout = (batch: number, m: number, n: number, k: number): MatmulLayout => ({ batch, m, n, k, transA: false, transB: false, aBatchStride: m * k, bBatchStride: k * n });
    const mm = (l: MatmulLayout): Case => ({
      what: `matmul ${l.batch}x${l.m}x${l.n}x${l.k}`,
      ins: [
        [randomF32(l.batch * l.m * l.k, 3), 'float32'],
        [randomF32(l.batch * l.k * l.n, 4), 'float32'],
      ],
      out: [l.batch * l.m * l.n, 'float32'],
      run: (b, [x, y], o) => b.matmul(x, y, o, l),
    });
    const win = { n: 3, c: 1, h: 9, w: 9, kh: 3, kw: 3, oh: 9, ow: 9, sh: 1, sw: 1, ph: 1, pw: 1, dh: 1, dw: 1 };
    /** Sizes that give each kernel 8 to 49 workgroups in the kernel family `emulated` picks (flat kernels: 1024 or 256 elements a group). */
    const casesFor = (emulated: boolean): Case[] => {
      const perGroup = emulated ? 1024 : 256;
      const n1 = perGroup * 19 + 1;
      const n2 = perGroup * 21 + 1;
      return [
        mm(layout(37, 1, 8, 8)), // vector-matrix: one (batch, row) a group
        mm(layout(9, 8, 8, 8)),
        mm(layout(5, 2, 4, 1024)), // split-K partials, then their sum
        mm(layout(5, 70, 70, 12)), // the 8 x 8 direct block, or the 64 x 64 tiles
        { what: 'binary add', ins: [[randomF32(n1, 5), 'float32'], [randomF32(n1, 6), 'float32']], out: [n1, 'float32'], run: (b, [x, y], o) => b.binary('add', x, y, o, { shape: [n1], aStrides: [1], bStrides: [1] }), exact: true },
        { what: 'unary exp', ins: [[randomF32(n2, 7), 'float32']], out: [n2, 'float32'], run: (b, [x], o) => b.unary('exp', x, o) },
        { what: 'fill', ins: [], out: [n1, 'float32'], run: (b, _i, o) => b.fill(o, 2.5), exact: true },
        { what: 'reduce sum (loop)', ins: [[randomF32(5000 * 8, 8), 'float32']], out: [5000, 'float32'], run: (b, [x], o) => b.reduce('sum', x, o, { outer: 5000, size: 8, inner: 1 }) },
        { what: 'reduce max (tree on a GPU)', ins: [[randomF32(20 * 200, 9), 'float32']], out: [20, 'float32'], run: (b, [x], o) => b.reduce('max', x, o, { outer: 20, size: 200, inner: 1 }), exact: true },
        { what: 'argmax', ins: [[randomF32(7 * 5000, 10), 'float32']], out: [5000, 'int32'], run: (b, [x], o) => b.argReduce('argmax', x, o, { outer: 1, size: 7, inner: 5000 }), exact: true },
        { what: 'softmax (a thread a row)', ins: [[randomF32(1250 * 10, 11), 'float32']], out: [12500, 'float32'], run: (b, [x], o) => b.softmax(x, o, { rows: 1250, cols: 10, log: false }) },
        { what: 'log-softmax (a workgroup a row on a GPU)', ins: [[randomF32(20 * 100, 12), 'float32']], out: [2000, 'float32'], run: (b, [x], o) => b.softmax(x, o, { rows: 20, cols: 100, log: true }) },
        { what: 'gather', ins: [[randomF32(500 * 4, 13), 'float32'], [randomI32(1000, 14, 0, 500), 'int32']], out: [4000, 'float32'], run: (b, [x, i], o) => b.gather(x, i, o, { outer: 1, xDim: 500, idxDim: 1000, inner: 4, perPosition: false }), exact: true },
        { what: 'scatterAdd', ins: [[randomF32(50 * 4, 15), 'float32'], [randomI32(50, 16, 0, 700), 'int32']], out: [2800, 'float32'], run: (b, [x, i], o) => b.scatterAdd(x, i, o, { outer: 1, xDim: 700, idxDim: 50, inner: 4, perPosition: false }) },
        { what: 'im2col', ins: [[randomF32(3 * 81, 17), 'float32']], out: [3 * 9 * 81, 'float32'], run: (b, [x], o) => b.im2col(x, o, win), exact: true },
        { what: 'random uniform', ins: [], out: [5000, 'float32'], run: (b, _i, o) => b.random(o, 5, 6, { kind: 'uniform', low: -1, high: 1 }), exact: true },
      ];
    };
    /** Cases in which some dispatch ran on a grid with spare groups, in either kernel family. */
    const spared = new Set<string>();
    const whats = new Set<string>();
    for (const emulated of [true, false]) {
      const g = await unguarded({ limits: { maxComputeWorkgroupsPerDimension: L }, cpuEmulated: emulated });
      let current = '';
      const dispatch = g.rt.dispatch.bind(g.rt);
      g.rt.dispatch = (call) => {
        const y = Math.ceil(call.groups / L);
        if (call.groups > L && Math.ceil(call.groups / y) * y > call.groups) spared.add(current);
        dispatch(call);
      };
      for (const c of casesFor(emulated)) {
        current = c.what;
        whats.add(c.what);
        const tail = 64;
        const want = cpu.alloc(c.out[0], c.out[1]);
        c.run(cpu, c.ins.map(([d, t]) => cpu.upload(d, t)), want);
        const expected = await cpu.read(want);
        const ins = c.ins.map(([d, t]) => g.upload(d, t));
        const filled = c.out[1] === 'int32' ? new Int32Array(c.out[0] + tail).fill(7) : new Float32Array(c.out[0] + tail).fill(7);
        const base = g.upload(filled, c.out[1]);
        c.run(g, ins, g.view(base, 0, c.out[0]));
        const all = await g.read(base);
        const what = `${c.what} (${emulated ? 'emulator' : 'GPU'} kernels)`;
        expectExact(all.subarray(c.out[0]), filled.subarray(c.out[0]), `${what}: memory past the output`);
        if (c.exact) expectExact(all.subarray(0, c.out[0]), expected, what);
        else expectClose(all.subarray(0, c.out[0]), expected, { atol: 1e-5, rtol: 1e-5 }, what);
        for (const s of [...ins, base]) g.release(s);
      }
    }
    // The sizes above really exercise spare groups (else this test could not fail).
    expect([...whats].filter((w) => !spared.has(w))).toEqual([]);
  });
});

describe.skipIf(!gpu)('adapter limits are checked with errors that name the kernel', () => {
  const add = (b: Backend, n: number) => {
    const x = b.upload(randomF32(n, 20), 'float32');
    const o = b.alloc(n, 'float32');
    b.binary('add', x, x, o, { shape: [n], aStrides: [1], bStrides: [1] });
  };

  it('maxStorageBuffersPerShaderStage', async () => {
    const b = await withLimits({ maxStorageBuffersPerShaderStage: 2 });
    expect(() => add(b, 16)).toThrow(/kernel "binary\.add".*3 storage buffers.*maxStorageBuffersPerShaderStage.* 2\b/);
  });

  it('maxComputeInvocationsPerWorkgroup and maxComputeWorkgroupSizeX', async () => {
    const b = await withLimits({ maxComputeInvocationsPerWorkgroup: 32 });
    // 64 invocations on an emulator, 256 on a GPU.
    expect(() => add(b, 16)).toThrow(/kernel "binary\.add".*workgroup of (64|256) invocations.*maxComputeInvocationsPerWorkgroup.* 32\b/);
    const c = await withLimits({ maxComputeWorkgroupSizeX: 32 });
    expect(() => add(c, 16)).toThrow(/kernel "binary\.add".*workgroup_size\((64|256)\).*maxComputeWorkgroupSizeX.* 32\b/);
  });

  it('maxComputeWorkgroupStorageSize', async () => {
    const b = await withLimits({ maxComputeWorkgroupStorageSize: 4096 });
    const l = { batch: 1, m: 64, n: 64, k: 16, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 };
    const [x, y, o] = [b.alloc(64 * 16, 'float32'), b.alloc(16 * 64, 'float32'), b.alloc(64 * 64, 'float32')];
    // The tiled kernel stages two 16 x 64 float slices: 8192 bytes of workgroup memory.
    expect(() => gpuMatmul(b.rt, asGPU(x), asGPU(y), asGPU(o), l, GPU_TILED)).toThrow(/kernel "matmul\.tiled".*8192 bytes of workgroup memory.*maxComputeWorkgroupStorageSize.* 4096\b/);
  });

  it('maxComputeWorkgroupsPerDimension', async () => {
    const b = await withLimits({ maxComputeWorkgroupsPerDimension: 2 });
    // An odd length (no vec4) of 20001 needs 20 groups on an emulator, 79 on a GPU: more than a 2 x 2 grid holds.
    expect(() => add(b, 20001)).toThrow(/kernel "binary\.add".*(20|79) workgroups.*maxComputeWorkgroupsPerDimension.* 2\b/);
  });

  it('maxBufferSize and maxStorageBufferBindingSize', async () => {
    const b = await withLimits({ maxStorageBufferBindingSize: 1024 });
    expect(() => b.alloc(300, 'float32')).toThrow(/alloc: 1200 bytes.*maxStorageBufferBindingSize 1024/);
    expect(b.alloc(256, 'float32')).toBeTruthy();
    const c = await withLimits({ maxBufferSize: 2048 });
    expect(() => c.alloc(513, 'float32')).toThrow(/alloc: 2052 bytes.*maxBufferSize 2048/);
  });

  it('an injected limit can only lower what the device has', async () => {
    const limit = gpu!.rt.limits.maxStorageBuffersPerShaderStage;
    const b = await withLimits({ maxStorageBuffersPerShaderStage: limit + 100 });
    expect(b.rt.limits.maxStorageBuffersPerShaderStage).toBe(limit);
  });

  it('the device is requested with the adapter\'s own limits, not WebGPU\'s defaults', async () => {
    const adapter = await requestAdapter();
    for (const name of CHECKED_LIMITS) expect(gpu!.device.limits[name], name).toBe(adapter.limits[name]);
    // The defaults are 128 MiB bindings and 256 MiB buffers; SwiftShader, like GPUs, offers more.
    expect(gpu!.device.limits.maxStorageBufferBindingSize).toBeGreaterThan(2 ** 27);
  });
});
