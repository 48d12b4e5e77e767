/**
 * Shared helpers for WebGPU tests: acquiring the backend (skip when there is no adapter, fail when
 * REQUIRE_WEBGPU=1), seeded random data, and comparisons that name the first mismatch.
 */
import { expect } from 'vitest';
import type { TypedArray } from '../../src/tensor/dtype.js';
import { createWebGPUBackend, type WebGPUBackend } from '../../src/kernels/webgpu/index.js';

export interface Acquired {
  backend: WebGPUBackend | null;
  reason: string;
}

let acquired: Promise<Acquired> | null = null;

/** One backend per test file; throws (fails the file) instead of skipping under REQUIRE_WEBGPU=1. */
export function acquireWebGPU(): Promise<Acquired> {
  acquired ??= createWebGPUBackend().then(
    (backend) => ({ backend, reason: '' }),
    (e: Error) => {
      if (process.env.REQUIRE_WEBGPU === '1') throw e;
      return { backend: null, reason: e.message };
    },
  );
  return acquired;
}

export { rng } from './random.js';
import { rng } from './random.js';

export function randomF32(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * r());
}

export function randomI32(n: number, seed: number, lo: number, hi: number): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: n }, () => lo + Math.floor((hi - lo) * r()));
}

export interface Tolerance {
  atol?: number;
  rtol?: number;
}

/**
 * |a - e| <= atol + rtol * |e| elementwise, NaN matching NaN and infinities matching exactly;
 * the failure names the first bad index and counts the rest.
 */
export function expectClose(actual: TypedArray, expected: TypedArray, tol: Tolerance = {}, what = ''): void {
  const atol = tol.atol ?? 1e-5;
  const rtol = tol.rtol ?? 1e-4;
  expect(actual.length, `${what}: length`).toBe(expected.length);
  let bad = 0;
  let first = -1;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    const ok = Number.isNaN(e) ? Number.isNaN(a) : !Number.isFinite(e) ? a === e : Math.abs(a - e) <= atol + rtol * Math.abs(e);
    if (!ok) {
      bad++;
      if (first < 0) first = i;
    }
  }
  if (bad > 0) {
    expect.fail(`${what}: ${bad}/${expected.length} elements differ; first at [${first}]: got ${actual[first]}, expected ${expected[first]} (atol ${atol}, rtol ${rtol})`);
  }
}

export function expectExact(actual: TypedArray, expected: TypedArray, what = ''): void {
  expect(actual.constructor.name, `${what}: array type`).toBe(expected.constructor.name);
  expect(actual.length, `${what}: length`).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(actual[i], expected[i]) && !(actual[i] === 0 && expected[i] === 0)) {
      expect.fail(`${what}: first difference at [${i}]: got ${actual[i]}, expected ${expected[i]}`);
    }
  }
}

/**
 * Runs f with every dispatch of `gpu` recorded by kernel name into `names` (which f may clear
 * between the parts it counts), then restores the runtime's dispatch.
 */
export async function withDispatchNames(gpu: WebGPUBackend, f: (names: string[]) => Promise<void>): Promise<void> {
  const names: string[] = [];
  const dispatch = gpu.rt.dispatch;
  gpu.rt.dispatch = (call) => {
    names.push(call.name);
    dispatch.call(gpu.rt, call);
  };
  try {
    await f(names);
  } finally {
    gpu.rt.dispatch = dispatch;
  }
}
