/**
 * For the thread suites: counts a wasm backend's pool runs (split calls), so that a split test
 * that splits nothing cannot pass.
 */
import { createWasmBackend, type WasmBackend } from '../../src/kernels/wasm/index.js';
import type { MatmulLayout } from '../../src/kernels/backend.js';

/** Wraps the backend's pool's run; the returned function says how many runs there were since. */
export function countSplits(be: WasmBackend): () => number {
  const pool = (be as unknown as { pool: { run: (...a: unknown[]) => void } }).pool;
  let runs = 0;
  const run0 = pool.run.bind(pool);
  pool.run = (...a: unknown[]) => {
    runs++;
    run0(...a);
  };
  return () => runs;
}

/** C = A @ B by the backend's matmul (operands uploaded, then released), as plain numbers. */
export function matmulOn(be: WasmBackend, A: Float32Array, B: Float32Array, l: MatmulLayout): number[] {
  const [sa, sb, so] = [be.upload(A, 'float32'), be.upload(B, 'float32'), be.alloc(l.batch * l.m * l.n, 'float32')];
  be.matmul(sa, sb, so, l);
  const r = Array.from(be.readSync(so));
  [sa, sb, so].forEach((s) => be.release(s));
  return r;
}

/**
 * A one-thread backend and backends of 2 and 3 threads that split every call (minThreadedWork 1,
 * whatever the cost model would say), each with its split counter; dispose() stops them all.
 */
export async function splitBackends(): Promise<{ one: WasmBackend; many: WasmBackend[]; splits: (() => number)[]; dispose: () => void }> {
  const one = await createWasmBackend({ threads: 1 });
  const many: WasmBackend[] = [];
  for (const threads of [2, 3]) many.push(await createWasmBackend({ threads, minThreadedWork: 1 }));
  return { one, many, splits: many.map(countSplits), dispose: () => [one, ...many].forEach((b) => b.dispose()) };
}
