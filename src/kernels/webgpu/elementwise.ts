/**
 * Elementwise kernels generated from the op table (src/kernels/optable.ts): unary, binary and the
 * general strided "map" they share with where, cast and stridedCopy. Layouts are coalesced first
 * (size-1 dims dropped, dims that are contiguous in every operand merged), so most calls become a
 * rank-1 walk; when the innermost dim allows, each thread moves a vec4.
 */
import type { DType } from '../../tensor/dtype.js';
import type { BroadcastLayout } from '../backend.js';
import { BINARY_OPS, UNARY_OPS, type BinaryOp, type UnaryOp } from '../optable.js';
import type { Bind, GPUStorage, Runtime } from './runtime.js';
import { boolToU32, computeOf, convert, preludeFor, scalarOf, spreadFor, spreadGroups, spreadMain, stridedOffsets, stridedParams, type MathFns, type Param, type Scalar } from './wgsl.js';

/** A layout with size-1 dims dropped and mergeable neighbours merged; never rank 0. */
export interface Coalesced {
  shape: number[];
  strides: number[][];
}

export function coalesce(shape: readonly number[], strideSets: readonly (readonly number[])[]): Coalesced {
  const outShape: number[] = [];
  const out: number[][] = strideSets.map(() => []);
  // Walk from the innermost dim outward, merging dim d into the current innermost-so-far block
  // when every operand steps over it contiguously.
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] === 1) continue;
    const last = outShape.length - 1;
    const mergeable = last >= 0 && strideSets.every((s, k) => s[d] === out[k][0] * outShape[0]);
    if (mergeable) {
      outShape[0] *= shape[d];
    } else {
      outShape.unshift(shape[d]);
      strideSets.forEach((s, k) => out[k].unshift(s[d]));
    }
  }
  if (outShape.length === 0) return { shape: [1], strides: strideSets.map(() => [0]) };
  return { shape: outShape, strides: out };
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const st = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}

/** How an operand is read in a vec4 walk: four consecutive elements, or one element splatted. */
type VecMode = 'vec' | 'splat';

export interface MapOperand {
  /** The name the expression uses (x, a, b, cond, ...). */
  name: string;
  s: GPUStorage;
  /** Strides over the map's shape, in elements. */
  strides: readonly number[];
  offset?: number;
  /** Type this operand is converted to before `expr` (default: the map's compute type). */
  compute?: Scalar;
}

export interface MapSpec {
  /** Kernel name and the part of the key that fixes `expr`. */
  name: string;
  key: string;
  shape: readonly number[];
  inputs: MapOperand[];
  out: GPUStorage;
  /** Strided destination (stridedCopy); contiguous from 0 when absent. */
  outStrides?: readonly number[];
  outOffset?: number;
  /** Type the inputs are converted to before `expr` runs. */
  compute: Scalar;
  /** WGSL expression over the input names (and p0, p1); type T (compute, maybe vec4) or a bool/vec4<bool> when `yieldsBool`. */
  expr: string | ((vec4: boolean) => string);
  yieldsBool?: boolean;
  /** Extra f32 params visible to expr by name. */
  scalars?: Record<string, number>;
  /** The math prelude (wgsl-math.ts), for an expr that calls it (see needsMath). */
  math?: MathFns;
}

/** Runs `out[idx] = expr(inputs at idx)` over a strided shape. */
export function mapKernel(rt: Runtime, spec: MapSpec): void {
  const n = spec.out.numel === 0 ? 0 : spec.shape.reduce((a, b) => a * b, 1);
  if (n === 0) return;
  const outStrided = spec.outStrides !== undefined;
  const sets = spec.inputs.map((o) => o.strides);
  if (outStrided) sets.push(spec.outStrides!);
  const { shape, strides } = coalesce(spec.shape, sets);
  const rank = shape.length;
  const vecModes = vec4Modes(spec, shape, strides, outStrided);
  const vec4 = vecModes !== null;
  const units = vec4 ? n / 4 : n;

  const setNames = spec.inputs.map((o) => o.name);
  if (outStrided) setNames.push('dst');
  const strideParams: Record<string, number[]> = {};
  setNames.forEach((name, k) => (strideParams[name] = strides[k]));
  const params: Param[] = [{ name: 'n', type: 'u32', value: units }, ...stridedParams(shape, strideParams)];
  // Element offsets, as params only where nonzero (the common case compiles without them).
  const offsets: [string, number][] = spec.inputs.map((o) => [o.name, o.offset ?? 0]);
  if (outStrided) offsets.push(['dst', spec.outOffset ?? 0]);
  const withOffset = offsets.filter(([, v]) => v !== 0).map(([name]) => name);
  for (const [name, value] of offsets) if (value !== 0) params.push({ name: `${name}_offset`, type: 'i32', value });
  for (const [name, value] of Object.entries(spec.scalars ?? {})) params.push({ name, type: 'f32', value });

  const outScalar = scalarOf(spec.out.dtype);
  const binds: Bind[] = spec.inputs.map((o, k) => ({
    name: `in_${o.name}`,
    s: o.s,
    access: 'read',
    type: vecModes?.[k] === 'vec' ? `vec4<${scalarOf(o.s.dtype)}>` : undefined,
  }));
  binds.push({ name: 'dst', s: spec.out, access: outStrided ? 'read_write' : 'write', type: vec4 ? `vec4<${outScalar}>` : undefined });

  const modeKey = vecModes ? vecModes.join('') : 's';
  // The common case: every operand contiguous or a single broadcast value, so no index arithmetic.
  const flat = rank === 1 && !outStrided && withOffset.length === 0 && strides.every((st) => st[0] === 0 || st[0] === 1);
  const spread = spreadFor(rt.cpuEmulated);
  rt.dispatch({
    name: `${spec.name}.${spec.key}`,
    key: `${spec.name}:${spec.key}:${spec.compute}:r${rank}:${modeKey}:o${withOffset.join('.')}:${outStrided}:${flat ? `flat${strides.map((st) => st[0]).join('')}` : ''}`,
    binds,
    params,
    groups: spreadGroups(units, spread),
    wgsl: () => {
      const T = vec4 ? `vec4<${spec.compute}>` : spec.compute;
      // Where each operand's element (or vec4) is: by the strided walk, or straight from the unit index.
      const at = (name: string, k: number, vec: boolean) => {
        if (flat) return strides[k][0] === 0 ? '0' : 'v';
        return vec ? `u32(off_${name}) / 4u` : `off_${name}`;
      };
      const loads = spec.inputs.map((o, k) => {
        const from = scalarOf(o.s.dtype);
        const to = o.compute ?? spec.compute;
        const mode = vecModes?.[k];
        if (mode === 'vec') return `let ${o.name} = ${convert(`in_${o.name}[${at(o.name, k, true)}]`, from, to, true)};`;
        const scalar = convert(`in_${o.name}[${at(o.name, k, false)}]`, from, to);
        return `let ${o.name} = ${mode === 'splat' ? `vec4<${to}>(${scalar})` : scalar};`;
      });
      const scalarLets = Object.keys(spec.scalars ?? {}).map((name) => `let ${name} = P.${name};`);
      const expr = typeof spec.expr === 'string' ? spec.expr : spec.expr(vec4);
      const value = spec.yieldsBool ? boolToU32(expr, vec4) : convert(`(${expr})`, spec.compute, outScalar, vec4);
      const store = outStrided ? (vec4 ? `dst[u32(off_dst) / 4u]` : `dst[off_dst]`) : 'dst[v]';
      return `alias T = ${T};
alias TU = ${vec4 ? 'vec4<u32>' : 'u32'};
alias bool_t = ${vec4 ? 'vec4<bool>' : 'bool'};
${preludeFor(expr, spec.compute, vec4, spec.math)}
${spreadMain(
  spread,
  `${flat ? '' : stridedOffsets(rank, setNames, vec4 ? 'v * 4u' : 'v', withOffset)}
    ${scalarLets.join('\n    ')}
    ${loads.join('\n    ')}
    ${store} = ${value};`,
)}`;
    },
  });
}

/**
 * vec4 works when the innermost dim comes in fours and every operand either steps through it
 * contiguously with all its other strides (and offset) multiples of 4, so each vec4 is aligned,
 * or does not move along it (splat). Returns each input's mode, or null for the scalar walk.
 */
function vec4Modes(spec: MapSpec, shape: number[], strides: number[][], outStrided: boolean): VecMode[] | null {
  const rank = shape.length;
  if (shape[rank - 1] % 4 !== 0) return null;
  const aligned = (st: number[], offset = 0) => st[rank - 1] === 1 && offset % 4 === 0 && st.every((s, d) => d === rank - 1 || s % 4 === 0);
  if (outStrided) {
    if (!aligned(strides[strides.length - 1], spec.outOffset) || spec.out.numel % 4 !== 0) return null;
  } else if (spec.out.numel % 4 !== 0) return null;
  const modes: VecMode[] = [];
  for (let k = 0; k < spec.inputs.length; k++) {
    const o = spec.inputs[k];
    if (strides[k][rank - 1] === 0) modes.push('splat');
    else if (aligned(strides[k], o.offset) && o.s.numel % 4 === 0) modes.push('vec');
    else return null;
  }
  return modes;
}

/** The type an op computes in: float when any side is float or the op has no integer form. */
function computeFor(dtypes: DType[], intOk: boolean, outDtype: DType): Scalar {
  if (!intOk || dtypes.some((d) => d === 'float32')) return 'f32';
  return computeOf(outDtype);
}

export function unary(rt: Runtime, op: UnaryOp, x: GPUStorage, out: GPUStorage, p0: number, p1: number, math?: MathFns): void {
  if (x.numel !== out.numel) throw new RangeError(`unary ${op}: ${x.numel} inputs for ${out.numel} outputs`);
  const def = UNARY_OPS[op] as { wgsl: string; int?: boolean; bool?: boolean };
  mapKernel(rt, {
    name: 'unary',
    key: op,
    shape: [x.numel],
    inputs: [{ name: 'x', s: x, strides: [1] }],
    out,
    compute: computeFor([x.dtype], def.int === true, def.bool ? 'int32' : out.dtype),
    expr: def.wgsl,
    yieldsBool: def.bool === true,
    scalars: { p0, p1 },
    math,
  });
}

export function binary(rt: Runtime, op: BinaryOp, a: GPUStorage, b: GPUStorage, out: GPUStorage, layout: BroadcastLayout, math?: MathFns): void {
  const def = BINARY_OPS[op] as { wgsl: string; int?: boolean; compare?: boolean };
  mapKernel(rt, {
    name: 'binary',
    key: op,
    shape: layout.shape,
    inputs: [
      { name: 'a', s: a, strides: layout.aStrides },
      { name: 'b', s: b, strides: layout.bStrides },
    ],
    out,
    compute: computeFor([a.dtype, b.dtype], def.int === true, def.compare ? 'int32' : out.dtype),
    expr: def.wgsl,
    yieldsBool: def.compare === true,
    math,
  });
}
