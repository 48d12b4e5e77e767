/**
 * Pieces the step compiler's WebGPU kernels share (fusedmap.ts, layernorm.ts's fused backward)
 * and that the fusion pass (src/compile/fuse.ts) asks without loading those families.
 */
import type { Bind } from './runtime.js';

/**
 * The int32 form of an op table expression in a fused WebGPU kernel (fusedmap.ts), or null where
 * it has none. A fused kernel's prelude is the f32 one, whose fg_* functions take T (f32); int32
 * operations there compute over the alias I (i32 or vec4<i32>), so their expressions may use no
 * prelude function, but NaN tests, false for integers, are dropped (ne's).
 */
export function intWgsl(def: { wgsl: string; int?: boolean } | undefined): string | null {
  if (!def?.int) return null;
  const w = def.wgsl.replace(/ \| fg_isnan_t\([abx]\)/g, '').replace(/\bT\b/g, 'I');
  return w.includes('fg_') ? null : w;
}

/**
 * Read bindings that share a GPU buffer with a written one but not bytes, bound read_write: WebGPU
 * forbids read-only and writable use of one buffer in a dispatch (the runtime would copy the read
 * one) but allows several writable bindings of disjoint ranges (Dawn refuses overlapping ones:
 * "writable storage buffer binding aliasing"), so a kernel of a captured step may read and write
 * disjoint views of one arena (src/compile/fuse.ts relies on it). A read overlapping a written
 * binding stays read-only, for the runtime's copy.
 */
export function shareBuffers(binds: Bind[]): Bind[] {
  const span = (b: Bind) => [b.s.offset, b.s.offset + (b.padTo16 ? Math.ceil(b.s.bindSize / 16) * 16 : b.s.bindSize)];
  const written = binds.filter((b) => b.access !== 'read');
  const meets = (r: Bind, w: Bind, [a, b] = span(r), [c, d] = span(w)) => a < d && c < b;
  return binds.map((r) => {
    const same = written.filter((w) => w.s.buffer === r.s.buffer);
    return r.access === 'read' && same.length && !same.some((w) => meets(r, w)) ? { ...r, access: 'read_write' } : r;
  });
}
