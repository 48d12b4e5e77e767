/**
 * For the thread suites: counts a wasm backend's pool runs (split calls), so that a split test
 * that splits nothing cannot pass.
 */
import type { WasmBackend } from '../../src/kernels/wasm/index.js';

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
