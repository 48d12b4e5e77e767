/**
 * Kernel-level parity: the same kernel call on several backends with the same inputs and fresh
 * outputs, and the comparison of what each wrote. Shared by the WebGPU kernel suites, which hold
 * every kernel to the CPU oracle.
 */
import type { Backend, Storage } from '../../src/kernels/backend.js';
import type { DType, TypedArray } from '../../src/tensor/dtype.js';
import { expectClose, expectExact, type Tolerance } from './webgpu.js';

/** A kernel input: host data and the dtype it is uploaded as. */
export interface KernelInput {
  data: TypedArray;
  dtype: DType;
}
export const f32 = (data: Float32Array | number[]): KernelInput => ({ data: data instanceof Float32Array ? data : Float32Array.from(data), dtype: 'float32' });
export const i32 = (data: Int32Array | number[]): KernelInput => ({ data: data instanceof Int32Array ? data : Int32Array.from(data), dtype: 'int32' });
export const bool = (data: Uint8Array | number[]): KernelInput => ({ data: data instanceof Uint8Array ? data : Uint8Array.from(data), dtype: 'bool' });

/**
 * Runs `kernel` on each backend in turn with the inputs uploaded and the outputs freshly
 * allocated, and releases them afterwards; returns each backend's outputs, in `backends`' order.
 */
export async function runKernelOn(
  backends: Backend[],
  inputs: KernelInput[],
  outs: { numel: number; dtype: DType }[],
  kernel: (b: Backend, ins: Storage[], outs: Storage[]) => void,
): Promise<TypedArray[][]> {
  const results: TypedArray[][] = [];
  for (const b of backends) {
    const ins = inputs.map((x) => b.upload(x.data, x.dtype));
    const os = outs.map((o) => b.alloc(o.numel, o.dtype));
    kernel(b, ins, os);
    results.push(await Promise.all(os.map((o) => b.read(o))));
    for (const s of [...ins, ...os]) b.release(s);
  }
  return results;
}

/** Every output in `got` matches the one in `want` at the same place: bit for bit, or within `tol`. */
export function expectOutputsMatch(got: TypedArray[], want: TypedArray[], tol: Tolerance | 'exact', what: string): void {
  got.forEach((g, k) => (tol === 'exact' ? expectExact(g, want[k], `${what} out${k}`) : expectClose(g, want[k], tol, `${what} out${k}`)));
}
