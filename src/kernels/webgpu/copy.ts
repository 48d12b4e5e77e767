/**
 * Data movement kernels: fill, cast, where, axpy and stridedCopy. The strided ones run on the map
 * generator of elementwise.ts; a stridedCopy that coalesces to one contiguous run between two
 * buffers becomes a plain copyBufferToBuffer.
 */
import type { StridedCopyLayout, WhereLayout } from '../backend.js';
import { coalesce, mapKernel } from './elementwise.js';
import type { GPUStorage, Runtime } from './runtime.js';
import { convert, scalarOf, spreadFor, spreadGroups, spreadMain, zeroOf } from './wgsl.js';

export function fill(rt: Runtime, out: GPUStorage, value: number): void {
  if (out.numel === 0) return;
  if (Object.is(value, 0) || (out.dtype === 'bool' && !value)) return rt.zero(out);
  const s = scalarOf(out.dtype);
  const vec4 = out.numel % 4 === 0;
  const units = vec4 ? out.numel / 4 : out.numel;
  // The value travels as the storage's own type, so int32 and bool fills are exact.
  const stored = out.dtype === 'bool' ? (value ? 1 : 0) : value;
  const spread = spreadFor(rt.cpuEmulated);
  rt.dispatch({
    name: 'fill',
    key: `fill:${vec4}`,
    binds: [{ name: 'dst', s: out, access: 'write', type: vec4 ? `vec4<${s}>` : undefined }],
    params: [
      { name: 'n', type: 'u32', value: units },
      { name: 'value', type: s, value: stored },
    ],
    groups: spreadGroups(units, spread),
    wgsl: () => spreadMain(spread, `dst[v] = ${vec4 ? `vec4<${s}>(P.value)` : 'P.value'};`),
  });
}

export function cast(rt: Runtime, x: GPUStorage, out: GPUStorage): void {
  if (x.numel !== out.numel) throw new RangeError(`cast: ${x.numel} inputs for ${out.numel} outputs`);
  // Float to int truncates toward zero: WGSL's i32(f32) does exactly that.
  mapKernel(rt, {
    name: 'cast',
    key: 'cast',
    shape: [x.numel],
    inputs: [{ name: 'x', s: x, strides: [1] }],
    out,
    compute: scalarOf(x.dtype),
    // convert() into u32 is the `x != 0` rule, so bool needs nothing special.
    expr: 'x',
  });
}

export function where(rt: Runtime, cond: GPUStorage, a: GPUStorage, b: GPUStorage, out: GPUStorage, l: WhereLayout): void {
  const s = scalarOf(out.dtype);
  const cs = scalarOf(cond.dtype);
  const zero = zeroOf(cs);
  mapKernel(rt, {
    name: 'where',
    key: 'where',
    shape: l.shape,
    inputs: [
      // cond is compared with zero in its own type, then a and b are selected in the output's type.
      { name: 'cond', s: cond, strides: l.condStrides, compute: cs },
      { name: 'a', s: a, strides: l.aStrides },
      { name: 'b', s: b, strides: l.bStrides },
    ],
    out,
    compute: s,
    expr: (vec4) => `select(b, a, cond != ${vec4 ? `vec4<${cs}>(${zero})` : zero})`,
  });
}

export function axpy(rt: Runtime, dst: GPUStorage, src: GPUStorage, alpha: number): void {
  if (dst.numel !== src.numel) throw new RangeError(`axpy: ${src.numel} values into ${dst.numel}`);
  if (dst.numel === 0) return;
  const vec4 = dst.numel % 4 === 0;
  const units = vec4 ? dst.numel / 4 : dst.numel;
  const ds = scalarOf(dst.dtype);
  const ss = scalarOf(src.dtype);
  // alpha is a float, so the update is computed in f32 whatever the dtypes (as the CPU does in float64).
  const c = 'f32';
  const spread = spreadFor(rt.cpuEmulated);
  // dst is bound once, read_write: binding it also as an input would be an aliasing error.
  rt.dispatch({
    name: 'axpy',
    key: `axpy:${vec4}`,
    binds: [
      { name: 'acc', s: dst, access: 'read_write', type: vec4 ? `vec4<${ds}>` : undefined },
      { name: 'src', s: src, access: 'read', type: vec4 ? `vec4<${ss}>` : undefined },
    ],
    params: [
      { name: 'n', type: 'u32', value: units },
      { name: 'alpha', type: 'f32', value: alpha },
    ],
    groups: spreadGroups(units, spread),
    wgsl: () => {
      const sum = `${convert('acc[v]', ds, c, vec4)} + P.alpha * ${convert('src[v]', ss, c, vec4)}`;
      return spreadMain(spread, `acc[v] = ${convert(`(${sum})`, c, ds, vec4)};`);
    },
  });
}

export function stridedCopy(rt: Runtime, src: GPUStorage, dst: GPUStorage, l: StridedCopyLayout): void {
  const n = l.shape.reduce((a, b) => a * b, 1);
  if (n === 0) return;
  const { shape, strides } = coalesce(l.shape, [l.srcStrides, l.dstStrides]);
  const run = shape.length === 1 && strides[0][0] === 1 && strides[1][0] === 1;
  if (run && src.dtype === dst.dtype && src.buffer !== dst.buffer) {
    const coversDst = l.dstOffset === 0 && n === dst.numel;
    // As one piece of the command stream: the clear flag is state that earlier work, should it
    // still wait for a kernel family to load (Runtime.lazy), reads when it runs.
    return rt.lazy(null, () => {
      // A view covers only part of its root: a pending clear of the root must happen first, or
      // it would later wipe what this copy wrote.
      if (!coversDst || dst.isView) rt.ensureCleared(dst);
      else dst.needsClear = false;
      rt.copy(src, src.offset + l.srcOffset * 4, dst, dst.offset + l.dstOffset * 4, n * 4);
    });
  }
  mapKernel(rt, {
    name: 'stridedCopy',
    key: 'copy',
    shape: l.shape,
    inputs: [{ name: 'x', s: src, strides: l.srcStrides, offset: l.srcOffset }],
    out: dst,
    outStrides: l.dstStrides,
    outOffset: l.dstOffset,
    compute: scalarOf(src.dtype),
    expr: 'x',
  });
}
