/**
 * A describe block's own backend: acquired once in beforeAll without changing the active backend,
 * made active for each test body and put back afterwards, so that a suite can run the same cases
 * on cpu, wasm and WebGPU in one file; a test skips when its backend is absent.
 */
import { afterAll, beforeAll, expect } from 'vitest';
import * as fg from '../../src/index.js';
import type { Backend } from '../../src/kernels/backend.js';
import { getBackend, setBackend } from '../../src/kernels/registry.js';

/** Runs `f` with `b` as the active backend, then makes the backend that was active before active again. */
export async function withBackend<R>(b: Backend, f: () => Promise<R> | R): Promise<R> {
  const prev = getBackend();
  setBackend(b);
  try {
    return await f();
  } finally {
    setBackend(prev);
  }
}

/**
 * The process-wide `name` backend as fg.init makes it, leaving the active backend as it was; null
 * when it cannot be made and `required` is false (otherwise the error fails the suite).
 */
export async function initBackend(name: 'wasm' | 'webgpu', required: boolean): Promise<Backend | null> {
  const prev = getBackend();
  try {
    await fg.init({ backend: name });
    return getBackend();
  } catch (e) {
    if (required) throw e;
    return null;
  } finally {
    setBackend(prev);
  }
}

/** initBackend('webgpu'): absent without an adapter, a failure under REQUIRE_WEBGPU=1. */
export const initWebGPU = (): Promise<Backend | null> => initBackend('webgpu', process.env.REQUIRE_WEBGPU === '1');

export interface BackendScope {
  /** The acquired backend (null before beforeAll ran, or when there is none). */
  backend: () => Backend | null;
  /** Runs `fn` with the backend active and the previous one restored afterwards; skips the test when there is no backend. */
  run: (ctx: { skip: () => void }, fn: () => Promise<void> | void) => Promise<void>;
}

/**
 * Call inside a describe: registers the beforeAll that acquires the backend (checking its name
 * when `expectedName` is given) and the afterAll that restores the backend that was active.
 */
export function useBackend(acquire: () => Promise<Backend | null>, expectedName?: string): BackendScope {
  let backend: Backend | null = null;
  let prev: Backend;
  beforeAll(async () => {
    prev = getBackend();
    backend = await acquire();
    if (backend && expectedName !== undefined) expect(backend.name).toBe(expectedName);
    setBackend(prev);
  });
  afterAll(() => setBackend(prev));
  const run = async (ctx: { skip: () => void }, fn: () => Promise<void> | void): Promise<void> => {
    if (!backend) {
      ctx.skip();
      return;
    }
    await withBackend(backend, fn);
  };
  return { backend: () => backend, run };
}
