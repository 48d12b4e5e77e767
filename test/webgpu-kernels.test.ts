/**
 * Kernel-level parity of the WebGPU backend against the CPU oracle, plus the runtime's promises
 * (dtype rules, views, zeroed reuse, in-place aliasing, error reporting, device loss, flat memory).
 * On SwiftShader the GPU is emulated on the CPU cores, so the shapes are small but awkward.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend, GatherLayout, MatmulLayout, RandomDist, ReduceLayout, Storage, Window2d } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { BINARY_OPS, UNARY_OPS, type BinaryOp, type UnaryOp } from '../src/kernels/optable.js';
import { createWebGPUBackend, type WebGPUBackend } from '../src/kernels/webgpu/index.js';
import { matmul as gpuMatmul, type MatmulPlan } from '../src/kernels/webgpu/matmul.js';
import { asGPU } from '../src/kernels/webgpu/runtime.js';
import type { DType, TypedArray } from '../src/tensor/dtype.js';
import { bool, expectOutputsMatch, f32, i32, runKernelOn, type KernelInput } from './helpers/kernel-parity.js';
import { acquireWebGPU, expectClose, expectExact, randomF32, randomI32, rng, type Tolerance } from './helpers/webgpu.js';

const { backend: gpuOrNull, reason } = await acquireWebGPU();
const cpu = new CpuBackend();
/**
 * The adapter's own kernel choice and the other family (GPU-shaped trees and tiles on a CPU
 * emulator, or the emulator's barrier-free forms on a GPU), so both are checked on one adapter.
 */
const variants = gpuOrNull ? [gpuOrNull, await createWebGPUBackend({ cpuEmulated: !gpuOrNull.rt.cpuEmulated })] : [];
const label = (b: WebGPUBackend) => (b.rt.cpuEmulated ? 'CPU-emulation kernels' : 'GPU-shaped kernels');
/** The backend under test: the suites that depend on the kernel family set it in beforeAll. */
let gpu = gpuOrNull!;

/** Runs `kernel` on both backends with the same inputs and fresh outputs; returns [gpu, cpu] results. */
async function both(
  inputs: KernelInput[],
  outs: { numel: number; dtype: DType }[],
  kernel: (b: Backend, ins: Storage[], outs: Storage[]) => void,
): Promise<[TypedArray[], TypedArray[]]> {
  const [g, c] = await runKernelOn([gpu, cpu], inputs, outs, kernel);
  return [g, c];
}

async function expectParity(
  inputs: KernelInput[],
  outs: { numel: number; dtype: DType }[],
  kernel: (b: Backend, ins: Storage[], outs: Storage[]) => void,
  tol: Tolerance | 'exact' = {},
  what = '',
): Promise<void> {
  const [g, c] = await both(inputs, outs, kernel);
  expectOutputsMatch(g, c, tol, what);
}

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
function stridesOf(shape: readonly number[]): number[] {
  const st: number[] = [];
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}
/** Strides that read `from` (right-aligned) broadcast to `to`. */
function bstrides(from: readonly number[], to: readonly number[]): number[] {
  const st = stridesOf(from);
  const off = to.length - from.length;
  return to.map((_, i) => (i < off || from[i - off] === 1 ? 0 : st[i - off]));
}

/** Matmul parity; `plan` forces one kernel variant on the GPU side. */
async function checkMatmul(l: MatmulLayout, plan?: MatmulPlan) {
  const aN = l.aBatchStride * (l.batch - 1) + l.m * l.k;
  const bN = l.bBatchStride * (l.batch - 1) + l.k * l.n;
  const tol = { atol: 2e-6 * Math.sqrt(l.k) * 4, rtol: 1e-4 };
  const what = `${JSON.stringify(l)}${plan ? ` ${JSON.stringify(plan)}` : ''}`;
  await expectParity([f32(randomF32(aN, aN + 1)), f32(randomF32(bN, bN + 2))], [{ numel: l.batch * l.m * l.n, dtype: 'float32' }], (b, [x, y], [o]) => {
    if (plan && b === gpu) gpuMatmul(gpu.rt, asGPU(x), asGPU(y), asGPU(o), l, plan);
    else b.matmul(x, y, o, l);
  }, tol, what);
}


describe.skipIf(!gpuOrNull)(`webgpu kernels (${gpuOrNull ? gpu.info().adapter : `skipped: ${reason}`})`, { timeout: 60_000 }, () => {
  afterAll(async () => {
    await gpu.sync();
  });

  describe('runtime', () => {
    it('describes its adapter and refuses float64 with the documented message', () => {
      expect(gpu.info().name).toBe('webgpu');
      expect(gpu.info().adapter.length).toBeGreaterThan(0);
      expect(gpu.supportsDtype('float64')).toBe(false);
      const msg = 'webgpu backend does not support float64 (use the cpu backend for float64)';
      expect(() => gpu.alloc(4, 'float64')).toThrow(msg);
      expect(() => gpu.upload(new Float64Array(4), 'float64')).toThrow(msg);
    });

    it('round-trips every dtype; bool reads back as Uint8Array', async () => {
      for (const x of [f32([1.5, -2, 3e-8, Infinity]), i32([1, -2, 2147483647, -2147483648]), bool([1, 0, 0, 1, 1])]) {
        const s = gpu.upload(x.data, x.dtype);
        expectExact(await gpu.read(s), x.data, x.dtype);
        gpu.release(s);
      }
    });

    it('zero-size storages: alloc, read and kernels are no-ops', async () => {
      const a = gpu.alloc(0, 'float32');
      const b = gpu.alloc(0, 'float32');
      gpu.unary('exp', a, b);
      gpu.binary('add', a, a, b, { shape: [0, 3], aStrides: [3, 1], bStrides: [3, 1] });
      gpu.fill(b, 1);
      gpu.reduce('sum', a, b, { outer: 0, size: 5, inner: 1 });
      gpu.matmul(a, a, b, { batch: 1, m: 0, n: 3, k: 2, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 });
      expect((await gpu.read(b)).length).toBe(0);
      gpu.release(a);
      gpu.release(b);
    });

    it('views need 256-byte alignment and share memory with their base', async () => {
      const base = gpu.upload(Float32Array.from({ length: 256 }, (_, i) => i), 'float32');
      expect(() => gpu.view(base, 1, 4)).toThrow(/multiple of 256/);
      expect(() => gpu.view(base, 192, 128)).toThrow(/outside/);
      const v = gpu.view(base, 64, 128);
      expectExact(await gpu.read(v), Float32Array.from({ length: 128 }, (_, i) => 64 + i), 'view read');
      gpu.fill(v, -1);
      const all = (await gpu.read(base)) as Float32Array;
      expect(all[63]).toBe(63);
      expect(all[64]).toBe(-1);
      expect(all[191]).toBe(-1);
      expect(all[192]).toBe(192);
      gpu.release(v); // a no-op for views
      gpu.release(base);
    });

    it('alloc returns zeros even when the pool hands back a used buffer', async () => {
      const a = gpu.upload(new Float32Array(100).fill(7), 'float32');
      gpu.release(a);
      gpu.flush();
      const b = gpu.alloc(100, 'float32');
      expectExact(await gpu.read(b), new Float32Array(100), 'fresh alloc');
      // A kernel reading the never-written storage sees zeros too.
      const c = gpu.alloc(100, 'float32');
      gpu.unary('affine', b, c, 1, 2);
      expectExact(await gpu.read(c), new Float32Array(100).fill(2), 'kernel on fresh alloc');
      gpu.release(b);
      gpu.release(c);
    });

    it('write() after a pending kernel does not overtake it', async () => {
      const x = gpu.upload(Float32Array.from([1, 2, 3]), 'float32');
      const y = gpu.alloc(3, 'float32');
      gpu.unary('neg', x, y);
      gpu.write(x, Float32Array.from([10, 20, 30]));
      expectExact(await gpu.read(y), Float32Array.from([-1, -2, -3]), 'kernel saw the old data');
      expectExact(await gpu.read(x), Float32Array.from([10, 20, 30]), 'write landed');
      gpu.release(x);
      gpu.release(y);
    });

    it('in-place kernels and kernels over two views of one buffer (WebGPU forbids aliased bindings)', async () => {
      const x = gpu.upload(Float32Array.from([1, 2, 3, 4, 5]), 'float32');
      gpu.unary('square', x, x);
      expectExact(await gpu.read(x), Float32Array.from([1, 4, 9, 16, 25]), 'unary in place');
      const arena = gpu.upload(Float32Array.from({ length: 128 }, (_, i) => i), 'float32');
      const p = gpu.view(arena, 0, 64);
      const g = gpu.view(arena, 64, 64);
      gpu.axpy(p, g, 0.5);
      const got = (await gpu.read(arena)) as Float32Array;
      expect(got[0]).toBe(32);
      expect(got[63]).toBe(63 + 0.5 * 127);
      expect(got[64]).toBe(64);
      gpu.axpy(x, x, 1);
      expectExact(await gpu.read(x), Float32Array.from([2, 8, 18, 32, 50]), 'axpy with itself');
      gpu.release(x);
      gpu.release(arena);
    });

    it('reports WGSL compile errors with the kernel name and the offending line', async () => {
      const out = asGPU(gpu.alloc(4, 'float32'));
      const wgsl = () => '@compute @workgroup_size(1) fn main() { dst[0] = broken(); }\nfn broken() -> f32 { return undefined_thing; }\n';
      gpu.rt.dispatch({ name: 'myKernel', key: 'bad', binds: [{ name: 'dst', s: out, access: 'write' }], params: [], groups: 1, wgsl });
      await expect(gpu.sync()).rejects.toThrow(/myKernel[\s\S]*line \d+[\s\S]*return undefined_thing/);
      gpu.release(out);
    });

    it('a validation error surfaces at the next call and names the kernel that caused it', async () => {
      // A vec4 binding over 3 floats is smaller than the shader's minimum binding size.
      const bad = asGPU(gpu.alloc(3, 'float32'));
      gpu.rt.dispatch({ name: 'bogusKernel', key: 'bogus', binds: [{ name: 'dst', s: bad, access: 'write', type: 'vec4<f32>' }], params: [], groups: 1, wgsl: () => '@compute @workgroup_size(1) fn main() { dst[0] = vec4<f32>(1.0); }' });
      await expect(gpu.sync()).rejects.toThrow(/bogusKernel/);
      gpu.release(bad);
      // The error is reported once; the backend goes on working.
      const ok = gpu.upload(Float32Array.from([2]), 'float32');
      gpu.unary('square', ok, ok);
      expectExact(await gpu.read(ok), Float32Array.from([4]), 'after the error');
      gpu.release(ok);
    });

    it('after device loss every call throws "WebGPU device lost (reason): ..."', async () => {
      const other = await createWebGPUBackend();
      const s = other.upload(Float32Array.from([1]), 'float32');
      other.unary('exp', s, s);
      other.destroy();
      expect(() => other.alloc(1, 'float32')).toThrow(/^WebGPU device lost \(destroyed\): .*unary.exp/);
      expect(() => other.unary('exp', s, s)).toThrow(/WebGPU device lost \(destroyed\)/);
      await expect(other.read(s)).rejects.toThrow(/WebGPU device lost/);
    });
  });

  describe.each(variants.map((b) => [label(b), b] as const))('elementwise (%s)', (_name, variant) => {
    beforeAll(() => {
      gpu = variant;
    });
    afterAll(() => {
      gpu = gpuOrNull!;
    });
    it.each(Object.keys(UNARY_OPS) as UnaryOp[])('unary %s on float32 (scalar and vec4 paths)', async (op) => {
      for (const n of [257, 256]) {
        const lo = ['log', 'sqrt', 'rsqrt', 'powScalar'].includes(op) ? 0.05 : -4;
        const x = randomF32(n, 11, lo, 4);
        const [p0, p1] = op === 'clamp' || op === 'insideMask' ? [-0.5, 0.7] : op === 'powScalar' ? [1.7, 0] : [1.5, -0.25];
        const outDtype = (UNARY_OPS[op] as { bool?: boolean }).bool ? 'bool' : 'float32';
        await expectParity([f32(x)], [{ numel: n, dtype: outDtype }], (b, [xs], [o]) => b.unary(op, xs, o, p0, p1), { atol: 2e-5, rtol: 2e-5 }, op);
      }
    });

    it('integer unary ops on int32, and int -> float ops', async () => {
      const x = randomI32(65, 3, -1000, 1000);
      for (const op of (Object.keys(UNARY_OPS) as UnaryOp[]).filter((o) => (UNARY_OPS[o] as { int?: boolean }).int)) {
        const outDtype = (UNARY_OPS[op] as { bool?: boolean }).bool ? 'bool' : 'int32';
        await expectParity([i32(x)], [{ numel: 65, dtype: outDtype }], (b, [xs], [o]) => b.unary(op, xs, o), 'exact', op);
      }
      await expectParity([i32(x)], [{ numel: 65, dtype: 'float32' }], (b, [xs], [o]) => b.unary('sqrt', xs, o), {}, 'sqrt int->float');
    });

    const broadcastCases: [number[], number[]][] = [
      [[257], [257]],
      [[64, 4], [64, 4]],
      [[7, 63], [63]],
      [[8, 16], [16]],
      [[3, 1, 5], [1, 4, 1]],
      [[65, 1], [1, 3]],
      [[12, 1], [12, 8]],
      [[], [7]],
      [[2, 3, 4, 5], []],
      [[1], [1]],
      [[2, 1, 3, 1, 8], [1, 5, 3, 4, 8]],
    ];
    it.each(broadcastCases)('every binary op broadcasting %j with %j', async (sa, sb) => {
      const shape = sa.length >= sb.length ? sa.map((d, i) => Math.max(d, sb[i - (sa.length - sb.length)] ?? 1)) : sb.map((d, i) => Math.max(d, sa[i - (sb.length - sa.length)] ?? 1));
      const layout = { shape, aStrides: bstrides(sa, shape), bStrides: bstrides(sb, shape) };
      const a = randomF32(numel(sa), 5, 0.1, 3);
      const b = randomF32(numel(sb), 6, -3, 3);
      // A few exact ties so that eq/le/ge see equal operands.
      if (a.length > 2 && b.length > 2) b[1] = a[1];
      for (const op of Object.keys(BINARY_OPS) as BinaryOp[]) {
        const out = (BINARY_OPS[op] as { compare?: boolean }).compare ? 'bool' : 'float32';
        await expectParity([f32(a), f32(b)], [{ numel: numel(shape), dtype: out }], (be, [x, y], [o]) => be.binary(op, x, y, o, layout), out === 'bool' ? 'exact' : {}, op);
      }
    });

    it('pow and powScalar follow Math.pow on negative bases, whole and fractional exponents, and NaN', async () => {
      const a = Float32Array.from([-2, -2, -8, 2, -3, NaN, 1, 0.5, -1.5, 4, NaN, -2]);
      const b = Float32Array.from([2, 3, 1 / 3, 0.5, -1, 2, NaN, 0, 2, -0.5, 0, 7]);
      const layout = { shape: [12], aStrides: [1], bStrides: [1] };
      await expectParity([f32(a), f32(b)], [{ numel: 12, dtype: 'float32' }], (be, [x, y], [o]) => be.binary('pow', x, y, o, layout), { rtol: 1e-6 }, 'pow');
      for (const e of [3, 2, 0.5, -1]) {
        await expectParity([f32(a)], [{ numel: 12, dtype: 'float32' }], (be, [x], [o]) => be.unary('powScalar', x, o, e), { rtol: 1e-6 }, `powScalar ${e}`);
      }
    });

    it('NaN propagates through maximum, minimum, relu and clamp, and NaN != x, as on the CPU', async () => {
      // 8 and 16 elements: the scalar and the vec4 shader paths.
      for (const n of [9, 16]) {
        const a = Float32Array.from({ length: n }, (_, i) => (i % 3 === 0 ? NaN : i - 4));
        const b = Float32Array.from({ length: n }, (_, i) => (i % 4 === 1 ? NaN : 2 - i));
        const layout = { shape: [n], aStrides: [1], bStrides: [1] };
        for (const op of ['maximum', 'minimum'] as const) {
          await expectParity([f32(a), f32(b)], [{ numel: n, dtype: 'float32' }], (be, [x, y], [o]) => be.binary(op, x, y, o, layout), 'exact', `NaN ${op}`);
        }
        for (const op of ['ne', 'eq', 'lt', 'ge'] as const) {
          await expectParity([f32(a), f32(b)], [{ numel: n, dtype: 'bool' }], (be, [x, y], [o]) => be.binary(op, x, y, o, layout), 'exact', `NaN ${op}`);
        }
        await expectParity([f32(a)], [{ numel: n, dtype: 'float32' }], (be, [x], [o]) => be.unary('relu', x, o), 'exact', 'NaN relu');
        await expectParity([f32(a)], [{ numel: n, dtype: 'float32' }], (be, [x], [o]) => be.unary('clamp', x, o, -1, 1), 'exact', 'NaN clamp');
      }
    });

    it('integer binary ops are exact; compares on int32 give bool', async () => {
      const shape = [5, 13];
      const layout = { shape, aStrides: [13, 1], bStrides: [0, 1] };
      const a = randomI32(65, 8, -50, 50);
      const b = randomI32(13, 9, -50, 50);
      for (const op of (Object.keys(BINARY_OPS) as BinaryOp[]).filter((o) => (BINARY_OPS[o] as { int?: boolean }).int)) {
        const out = (BINARY_OPS[op] as { compare?: boolean }).compare ? 'bool' : 'int32';
        await expectParity([i32(a), i32(b)], [{ numel: 65, dtype: out }], (be, [x, y], [o]) => be.binary(op, x, y, o, layout), 'exact', op);
      }
    });

    it('where broadcasts its condition and both branches', async () => {
      const shape = [4, 3, 8];
      const cond = Uint8Array.from({ length: 3 * 8 }, (_, i) => (i * 7) % 3 === 0 ? 1 : 0);
      const layout = { shape, condStrides: [0, 8, 1], aStrides: stridesOf(shape), bStrides: [0, 0, 0] };
      await expectParity([bool(cond), f32(randomF32(96, 1)), f32([42])], [{ numel: 96, dtype: 'float32' }], (b, [c, x, y], [o]) => b.where(c, x, y, o, layout), 'exact', 'where');
      const layout2 = { shape: [65], condStrides: [1], aStrides: [1], bStrides: [1] };
      await expectParity(
        [i32(randomI32(65, 2, -1, 2)), i32(randomI32(65, 3, 0, 9)), i32(randomI32(65, 4, 0, 9))],
        [{ numel: 65, dtype: 'int32' }],
        (b, [c, x, y], [o]) => b.where(c, x, y, o, layout2),
        'exact',
        'where int cond',
      );
    });

    it('cast between float32, int32 and bool; fill of every dtype', async () => {
      const x = Float32Array.from([-2.7, -0.5, 0, 0.5, 2.7, 1e6, -3, 7]);
      for (const [from, to] of [['float32', 'int32'], ['float32', 'bool'], ['int32', 'float32'], ['bool', 'float32'], ['int32', 'bool'], ['bool', 'int32']] as [DType, DType][]) {
        const data = from === 'float32' ? x : from === 'int32' ? Int32Array.from(x, Math.trunc) : Uint8Array.from(x, (v) => (v ? 1 : 0));
        await expectParity([{ data, dtype: from }], [{ numel: 8, dtype: to }], (b, [s], [o]) => b.cast(s, o), 'exact', `${from}->${to}`);
      }
      for (const [dtype, v] of [['float32', -1.25], ['int32', -7], ['bool', 1], ['float32', 0]] as [DType, number][]) {
        for (const n of [3, 8]) await expectParity([], [{ numel: n, dtype }], (b, _, [o]) => b.fill(o, v), 'exact', `fill ${dtype}`);
      }
    });

    it('axpy on float32 (vec4 and scalar)', async () => {
      for (const n of [64, 65]) {
        await expectParity([f32(randomF32(n, 1)), f32(randomF32(n, 2))], [], (b, [d, s]) => b.axpy(d, s, -0.3), {}, 'axpy');
        const [g, c] = await both([f32(randomF32(n, 1)), f32(randomF32(n, 2))], [{ numel: n, dtype: 'float32' }], (b, [d, s], [o]) => {
          b.axpy(d, s, -0.3);
          b.stridedCopy(d, o, { shape: [n], srcStrides: [1], srcOffset: 0, dstStrides: [1], dstOffset: 0 });
        });
        expectClose(g[0], c[0], {}, 'axpy result');
      }
    });

    it('stridedCopy: transpose, slice with offsets, expand, concat into an offset, reversed', async () => {
      const src = randomF32(7 * 65, 3);
      const cases = [
        { shape: [65, 7], srcStrides: [1, 65], srcOffset: 0, dstStrides: [7, 1], dstOffset: 0, dst: 455 },
        { shape: [3, 5], srcStrides: [65, 2], srcOffset: 66, dstStrides: [5, 1], dstOffset: 0, dst: 15 },
        { shape: [4, 65], srcStrides: [0, 1], srcOffset: 65, dstStrides: [65, 1], dstOffset: 0, dst: 260 },
        { shape: [2, 64], srcStrides: [65, 1], srcOffset: 0, dstStrides: [128, 1], dstOffset: 64, dst: 300 },
        { shape: [100], srcStrides: [1], srcOffset: 3, dstStrides: [1], dstOffset: 7, dst: 200 },
        { shape: [10], srcStrides: [-1], srcOffset: 9, dstStrides: [1], dstOffset: 0, dst: 10 },
      ];
      for (const { dst, ...l } of cases) {
        await expectParity([f32(src)], [{ numel: dst, dtype: 'float32' }], (b, [s], [o]) => b.stridedCopy(s, o, l), 'exact', JSON.stringify(l));
      }
      await expectParity([i32(randomI32(12, 1, -9, 9))], [{ numel: 12, dtype: 'int32' }], (b, [s], [o]) => b.stridedCopy(s, o, { shape: [3, 4], srcStrides: [1, 3], srcOffset: 0, dstStrides: [4, 1], dstOffset: 0 }), 'exact', 'int transpose');
    });

    it('a dispatch over 65535 workgroups is split into a 2-D grid', async () => {
      // One element per thread in workgroups of 256 (the GPU-shaped spread): 65536 workgroups.
      const gpu = variants.find((b) => !b.rt.cpuEmulated)!;
      const n = 65535 * 256 + 5;
      const x = gpu.alloc(n, 'float32');
      gpu.fill(x, 1); // numel % 4 != 0: the scalar path, n / 256 + 1 workgroups
      const y = gpu.alloc(n, 'float32');
      gpu.unary('affine', x, y, 2, 0.5);
      const got = (await gpu.read(y)) as Float32Array;
      let bad = 0;
      for (let i = 0; i < n; i++) if (got[i] !== 2.5) bad++;
      expect(bad).toBe(0);
      gpu.release(x);
      gpu.release(y);
    });
  });

  describe.each(variants.map((b) => [label(b), b] as const))('reductions (%s)', (_name, variant) => {
    beforeAll(() => {
      gpu = variant;
    });
    afterAll(() => {
      gpu = gpuOrNull!;
    });
    const layouts: ReduceLayout[] = [
      { outer: 1, size: 1, inner: 1 },
      { outer: 7, size: 3, inner: 1 },
      { outer: 3, size: 257, inner: 1 },
      { outer: 65, size: 130, inner: 1 },
      { outer: 2, size: 63, inner: 65 },
      { outer: 1, size: 5000, inner: 3 },
      { outer: 4, size: 1, inner: 7 },
      { outer: 1, size: 9000, inner: 1 },
    ];
    it.each(layouts)('sum/max/min and argmax/argmin over %j', async (l) => {
      const n = l.outer * l.size * l.inner;
      const x = randomF32(n, n, -2, 2);
      for (let i = 0; i < n; i += 17) x[i] = 1.5; // ties for the arg reductions
      for (const op of ['sum', 'max', 'min'] as const) {
        await expectParity([f32(x)], [{ numel: l.outer * l.inner, dtype: 'float32' }], (b, [s], [o]) => b.reduce(op, s, o, l), op === 'sum' ? { atol: 1e-5 * Math.sqrt(l.size) * 4 } : 'exact', op);
      }
      for (const op of ['argmax', 'argmin'] as const) {
        await expectParity([f32(x)], [{ numel: l.outer * l.inner, dtype: 'int32' }], (b, [s], [o]) => b.argReduce(op, s, o, l), 'exact', op);
      }
    });

    it('int32 reductions are exact; max/min propagate NaN; empty dims give the identity', async () => {
      const l = { outer: 3, size: 300, inner: 2 };
      const xi = randomI32(1800, 4, -100000, 100000);
      for (const op of ['sum', 'max', 'min'] as const) {
        await expectParity([i32(xi)], [{ numel: 6, dtype: 'int32' }], (b, [s], [o]) => b.reduce(op, s, o, l), 'exact', `int ${op}`);
      }
      await expectParity([i32(xi)], [{ numel: 6, dtype: 'int32' }], (b, [s], [o]) => b.argReduce('argmax', s, o, l), 'exact', 'int argmax');
      const xn = randomF32(600, 5);
      xn[10] = NaN;
      xn[401] = NaN;
      for (const rl of [{ outer: 2, size: 300, inner: 1 }, { outer: 2, size: 100, inner: 3 }]) {
        for (const op of ['max', 'min'] as const) {
          await expectParity([f32(xn)], [{ numel: rl.outer * rl.inner, dtype: 'float32' }], (b, [s], [o]) => b.reduce(op, s, o, rl), 'exact', `NaN ${op}`);
        }
        await expectParity([f32(xn)], [{ numel: rl.outer * rl.inner, dtype: 'int32' }], (b, [s], [o]) => b.argReduce('argmax', s, o, rl), 'exact', 'NaN argmax');
      }
      for (const op of ['sum', 'max', 'min'] as const) {
        await expectParity([f32([])], [{ numel: 4, dtype: 'float32' }], (b, [s], [o]) => b.reduce(op, s, o, { outer: 2, size: 0, inner: 2 }), 'exact', `empty ${op}`);
      }
    });

    it('a 1<<20-element sum runs multi-pass', async () => {
      const n = 1 << 20;
      const x = randomF32(n, 77);
      const [g, c] = await both([f32(x)], [{ numel: 1, dtype: 'float32' }], (b, [s], [o]) => b.reduce('sum', s, o, { outer: 1, size: n, inner: 1 }));
      expect(Math.abs(g[0][0] - c[0][0])).toBeLessThan(2e-3);
    });

    it('sumSquares leaves sum(x^2) in a 1-element GPU buffer (two passes)', async () => {
      for (const n of [1, 257, 300_001]) {
        const x = randomF32(n, n);
        const xs = gpu.upload(x, 'float32');
        const out = gpu.alloc(1, 'float32');
        gpu.sumSquares(xs, out);
        let want = 0;
        for (const v of x) want += v * v;
        const got = (await gpu.read(out))[0];
        expect(Math.abs(got - want)).toBeLessThan(1e-5 * want + 1e-6);
        gpu.release(xs);
        gpu.release(out);
      }
    });
  });

  describe.each(variants.map((b) => [label(b), b] as const))('softmax and cross-entropy (%s)', (_name, variant) => {
    beforeAll(() => {
      gpu = variant;
    });
    afterAll(() => {
      gpu = gpuOrNull!;
    });
    it.each([[1], [3], [10], [65], [257], [2000]])('softmax, logSoftmax, CE forward/backward with %i classes', async (cols) => {
      const rows = cols > 500 ? 3 : 37;
      const x = randomF32(rows * cols, cols, -6, 6);
      x[0] = 30; // a dominant logit
      const labels = randomI32(rows, cols + 1, 0, cols);
      labels[1] = cols; // out of range -> NaN
      labels[2] = -1;
      const g = randomF32(rows, 3, 0.5, 2);
      for (const log of [false, true]) {
        await expectParity([f32(x)], [{ numel: rows * cols, dtype: 'float32' }], (b, [s], [o]) => b.softmax(s, o, { rows, cols, log }), { atol: 2e-6 }, `softmax log=${log}`);
      }
      for (const labelSmoothing of [0, 0.1]) {
        const l = { rows, cols, labelSmoothing, ignoreIndex: -100 };
        await expectParity([f32(x), i32(labels)], [{ numel: rows, dtype: 'float32' }], (b, [s, y], [o]) => b.crossEntropy(s, y, o, l), { atol: 2e-5 }, `ce s=${labelSmoothing}`);
        await expectParity([f32(x), i32(labels), f32(g)], [{ numel: rows * cols, dtype: 'float32' }], (b, [s, y, gr], [o]) => b.crossEntropyBackward(s, y, gr, o, l), { atol: 2e-6 }, `ce backward s=${labelSmoothing}`);
      }
    });
  });

  describe.each(variants.map((b) => [label(b), b] as const))('matmul (%s)', (_name, variant) => {
    beforeAll(() => {
      gpu = variant;
    });
    afterAll(() => {
      gpu = gpuOrNull!;
    });
    const mm = (batch: number, m: number, n: number, k: number, transA: boolean, transB: boolean, aBatchStride = m * k, bBatchStride = k * n): MatmulLayout => ({ batch, m, n, k, transA, transB, aBatchStride, bBatchStride });
    const combos = [[false, false], [true, false], [false, true], [true, true]] as const;

    it.each(combos)('transA=%s transB=%s over awkward shapes', async (ta, tb) => {
      for (const [m, n, k] of [[1, 1, 1], [3, 7, 5], [7, 3, 65], [63, 65, 7], [65, 63, 257], [1, 257, 64], [4, 12, 8], [128, 96, 80]]) {
        await checkMatmul(mm(1, m, n, k, ta, tb));
      }
    });

    it('batched, with batch stride 0 broadcasting one operand', async () => {
      await checkMatmul(mm(3, 5, 9, 7, false, false));
      await checkMatmul(mm(4, 17, 8, 12, false, true, 17 * 12, 0));
      await checkMatmul(mm(2, 66, 68, 20, true, false, 0, 20 * 68));
    });

    it('vector-matrix (m = 1) and small outputs with split K', async () => {
      await checkMatmul(mm(1, 1, 784, 256, false, false));
      await checkMatmul(mm(2, 1, 10, 300, false, true));
      await checkMatmul(mm(1, 3, 5, 3000, true, false));
      await checkMatmul(mm(1, 10, 10, 2048, false, false));
    });
  });

  describe('matmul kernel variants forced by plan', () => {
    it.each([
      { kind: 'tiled', tx: 16, ty: 8, rm: 8, rn: 4, bk: 16 },
      { kind: 'tiled', tx: 8, ty: 8, rm: 4, rn: 4, bk: 8 },
      { kind: 'direct', rm: 1, rn: 1, splitK: 3, wg: 64, gx: 16 },
      { kind: 'direct', rm: 2, rn: 8, splitK: 2, wg: 32, gx: 4 },
    ] as MatmulPlan[])('%j on aligned and unaligned shapes, every transpose combination', async (plan) => {
      for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]]) {
        await checkMatmul({ batch: 2, m: 36, n: 40, k: 44, transA: ta, transB: tb, aBatchStride: 36 * 44, bBatchStride: 44 * 40 }, plan);
        await checkMatmul({ batch: 1, m: 13, n: 9, k: 11, transA: ta, transB: tb, aBatchStride: 0, bBatchStride: 0 }, plan);
      }
    });
  });

  describe('conv and pooling', () => {
    const win = (n: number, c: number, h: number, w: number, kh: number, kw: number, sh: number, sw: number, ph: number, pw: number, dh: number, dw: number): Window2d => ({
      n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw,
      oh: Math.floor((h + 2 * ph - dh * (kh - 1) - 1) / sh) + 1,
      ow: Math.floor((w + 2 * pw - dw * (kw - 1) - 1) / sw) + 1,
    });
    const geoms = [win(2, 3, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1), win(1, 2, 8, 7, 3, 2, 2, 3, 1, 0, 2, 1), win(3, 1, 5, 5, 1, 1, 1, 1, 0, 0, 1, 1), win(1, 4, 9, 9, 2, 2, 2, 2, 1, 1, 1, 1)];

    it.each(geoms)('im2col / col2im over %j', async (g) => {
      const xN = g.n * g.c * g.h * g.w;
      const colsN = g.n * g.c * g.kh * g.kw * g.oh * g.ow;
      await expectParity([f32(randomF32(xN, 1))], [{ numel: colsN, dtype: 'float32' }], (b, [x], [o]) => b.im2col(x, o, g), 'exact', 'im2col');
      await expectParity([f32(randomF32(colsN, 2))], [{ numel: xN, dtype: 'float32' }], (b, [c], [o]) => b.col2im(c, o, g), { atol: 1e-6 }, 'col2im');
    });

    it.each(geoms)('max/avg pooling and their backwards over %j', async (g) => {
      const xN = g.n * g.c * g.h * g.w;
      const oN = g.n * g.c * g.oh * g.ow;
      const x = randomF32(xN, 3);
      x[5] = x[6]; // a tie inside a window: the first wins
      await expectParity([f32(x)], [{ numel: oN, dtype: 'float32' }, { numel: oN, dtype: 'int32' }], (b, [s], [o, a]) => b.maxPool2d(s, o, a, g), 'exact', 'maxPool2d');
      await expectParity([f32(x)], [{ numel: oN, dtype: 'float32' }], (b, [s], [o]) => b.maxPool2d(s, o, null, g), 'exact', 'maxPool2d no arg');
      const grad = randomF32(oN, 4);
      await expectParity([f32(x), f32(grad)], [{ numel: xN, dtype: 'float32' }], (b, [s, gr], [o]) => {
        const out = b.alloc(oN, 'float32');
        const arg = b.alloc(oN, 'int32');
        b.maxPool2d(s, out, arg, g);
        b.maxPool2dBackward(gr, arg, o, g);
        b.release(out);
        b.release(arg);
      }, { atol: 1e-6 }, 'maxPool2dBackward');
      await expectParity([f32(x)], [{ numel: oN, dtype: 'float32' }], (b, [s], [o]) => b.avgPool2d(s, o, { ...g, countIncludePad: true, divisorOverride: 0 }), { atol: 1e-6 }, 'avgPool2d');
      await expectParity([f32(grad)], [{ numel: xN, dtype: 'float32' }], (b, [gr], [o]) => b.avgPool2dBackward(gr, o, { ...g, countIncludePad: true, divisorOverride: 0 }), { atol: 1e-6 }, 'avgPool2dBackward');
    });
  });

  describe('gather and scatterAdd', () => {
    it.each([true, false])('perPosition=%s, with out-of-range indices', async (perPosition) => {
      const l: GatherLayout = { outer: 3, inner: 5, xDim: 7, idxDim: 4, perPosition };
      const idxN = perPosition ? l.outer * l.idxDim * l.inner : l.idxDim;
      const idx = randomI32(idxN, 9, 0, l.xDim);
      idx[1] = l.xDim; // out of range: NaN in gather, ignored by scatterAdd
      idx[2] = -1;
      const x = randomF32(l.outer * l.xDim * l.inner, 10);
      const outN = l.outer * l.idxDim * l.inner;
      await expectParity([f32(x), i32(idx)], [{ numel: outN, dtype: 'float32' }], (b, [s, i], [o]) => b.gather(s, i, o, l), 'exact', 'gather');
      await expectParity([i32(randomI32(x.length, 3, -9, 9)), i32(idx)], [{ numel: outN, dtype: 'int32' }], (b, [s, i], [o]) => b.gather(s, i, o, l), 'exact', 'gather int');
      await expectParity([f32(randomF32(outN, 11)), i32(idx)], [{ numel: x.length, dtype: 'float32' }], (b, [s, i], [o]) => b.scatterAdd(s, i, o, l), { atol: 1e-6 }, 'scatterAdd');
    });
  });

  describe('random', () => {
    const dists: [RandomDist, DType, Tolerance | 'exact'][] = [
      [{ kind: 'uniform', low: 0, high: 1 }, 'float32', 'exact'],
      [{ kind: 'uniform', low: -0.1, high: 0.3 }, 'float32', 'exact'],
      [{ kind: 'uniform', low: 2, high: 10 }, 'float32', 'exact'],
      [{ kind: 'uniform', low: -1 / Math.sqrt(784), high: 1 / Math.sqrt(784) }, 'float32', 'exact'],
      [{ kind: 'normal', mean: 0, std: 1 }, 'float32', { atol: 2e-5, rtol: 1e-4 }],
      [{ kind: 'normal', mean: 3, std: 0.02 }, 'float32', { atol: 2e-6, rtol: 1e-5 }],
      [{ kind: 'int', low: -5, high: 17 }, 'int32', 'exact'],
      [{ kind: 'int', low: 0, high: 10 }, 'float32', 'exact'],
      [{ kind: 'bernoulliKeep', p: 0.3 }, 'float32', 'exact'],
      [{ kind: 'bernoulliKeep', p: 0.5 }, 'bool', 'exact'],
    ];
    it.each(dists)('%j into %s matches the CPU generator', async (dist, dtype, tol) => {
      const r = rng(dists.findIndex((d) => d[0] === dist) + 1);
      const key0 = Math.floor(r() * 2 ** 32);
      const key1 = Math.floor(r() * 2 ** 32);
      await expectParity([], [{ numel: 20_000, dtype }], (b, _, [o]) => b.random(o, key0, key1, dist), tol, JSON.stringify(dist));
    });
  });

  describe('memory', () => {
    it('500 iterations of alloc / kernels / release keep live buffers and bytes flat', async () => {
      const w = gpu.upload(randomF32(32 * 16, 1), 'float32');
      const labels = gpu.upload(randomI32(8, 2, 0, 16), 'int32');
      const step = () => {
        const x = gpu.alloc(8 * 32, 'float32');
        gpu.random(x, 1, 2, { kind: 'normal', mean: 0, std: 1 });
        const h = gpu.alloc(8 * 16, 'float32');
        gpu.matmul(x, w, h, { batch: 1, m: 8, n: 16, k: 32, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 });
        const loss = gpu.alloc(8, 'float32');
        gpu.crossEntropy(h, labels, loss, { rows: 8, cols: 16, labelSmoothing: 0, ignoreIndex: -100 });
        const total = gpu.alloc(1, 'float32');
        gpu.reduce('sum', loss, total, { outer: 1, size: 8, inner: 1 });
        const sq = gpu.alloc(1, 'float32');
        gpu.sumSquares(h, sq);
        for (const s of [x, h, loss, total, sq]) gpu.release(s);
      };
      for (let i = 0; i < 20; i++) step();
      await gpu.sync();
      const before = gpu.memory();
      for (let i = 0; i < 500; i++) step();
      await gpu.sync();
      const after = gpu.memory();
      expect(after.liveBuffers).toBe(before.liveBuffers);
      expect(after.liveBytes).toBe(before.liveBytes);
      expect(after.pooledBuffers).toBeLessThanOrEqual(before.pooledBuffers! + 8);
      gpu.trim();
      expect(gpu.memory().pooledBuffers).toBe(0);
      gpu.release(w);
      gpu.release(labels);
    });
  });
});
