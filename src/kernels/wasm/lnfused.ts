/**
 * Backend.layerNormBackwardFused on wasm: the layer-norm backward kernel of layernorm.ts with a
 * captured step's residual add and column sums (src/compile/fuse-reduce.ts) folded into its dx
 * pass, so dx is written and summed while its row is in cache, and the add and reduce calls go.
 * The variants live in a module of their own (one per residual / operand order / sum count,
 * made on first use, over the backend's memory), so the backend's own module and its plain
 * kernel's code do not change.
 */
import type { LayerNormBackwardFusedLayout } from '../backend.js';
import { ModuleBuilder } from './emit.js';
import { emitBackward } from './layernorm.js';

const EXPORT = 'layer_norm_backward_fused';
type Kernel = (...a: number[]) => void;
const modules = new WeakMap<WebAssembly.Memory, Map<string, Kernel>>();

function kernelFor(memory: WebAssembly.Memory, weight: boolean, add: boolean, addFirst: boolean, sums: number): Kernel {
  let cache = modules.get(memory);
  if (!cache) modules.set(memory, (cache = new Map()));
  const key = `${weight}:${add}:${add && addFirst}:${sums}`;
  let fn = cache.get(key);
  if (!fn) {
    const mb = new ModuleBuilder();
    const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
    mb.importMemory('env', 'memory', shared ? { initial: 1, maximum: 65536, shared: true } : { initial: 1 });
    emitBackward(mb, weight, EXPORT, { add, addFirst, sums });
    const bytes = mb.toBytes();
    const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes as Uint8Array<ArrayBuffer>), { env: { memory } });
    fn = instance.exports[EXPORT] as Kernel;
    cache.set(key, fn);
  }
  return fn;
}

/**
 * Runs the fused kernel on float32 storages given by address (0: null). `scratch(bytes)` lends
 * the backend's scratch memory: the unwanted parameter gradients and the sums' float64 rows.
 */
export function layerNormBackwardFusedWasm(
  memory: WebAssembly.Memory,
  scratch: (bytes: number) => number,
  ptrs: { grad: number; x: number; mean: number; rstd: number; weight: number; add: number; dx: number; dweight: number; dbias: number; sums: readonly number[] },
  l: LayerNormBackwardFusedLayout,
): void {
  const paramScratch = !ptrs.dweight || !ptrs.dbias ? l.cols * 8 : 0;
  // Sixteen-byte steps: the sums' rows are read and written as f64x2.
  const align = (b: number) => Math.ceil(b / 16) * 16;
  let bytes = align(paramScratch);
  const rowAt = l.sums.map((sum) => {
    const at = bytes;
    bytes += align(sum.width * 8);
    return at;
  });
  const base = scratch(bytes);
  const dw = ptrs.dweight || base;
  const db = ptrs.dbias || base + l.cols * 4;
  const extra: number[] = [];
  if (ptrs.add) extra.push(ptrs.add);
  ptrs.sums.forEach((out, k) => {
    const { offset, period, width, count } = l.sums[k];
    extra.push(out, base + rowAt[k], offset, period, width, count);
  });
  const run = kernelFor(memory, !!ptrs.weight, !!ptrs.add, l.addFirst, ptrs.sums.length);
  run(ptrs.grad, ptrs.x, ptrs.mean, ptrs.rstd, ptrs.weight, ptrs.dx, dw, db, l.rows, l.cols, ...extra);
}
