/**
 * Small named pieces of WGSL that the kernel families assemble their shaders from: element types
 * per dtype and conversions, the helpers every shader gets (fg_group, fg_nan, fg_inf, fg_isnan),
 * the typed prelude and the lookup of the math prelude (fg_exp, fg_log, fg_erf, fg_pow, ...: MATH_FNS in
 * wgsl-math.ts, loaded on demand), the uniform Params struct, the strided index
 * walk, and how flat kernels spread units over threads.
 * Every piece is a plain string or a function returning one, so a shader is readable as the
 * concatenation it is.
 */
import type { DType } from '../../tensor/dtype.js';
import { WGSL_RNG } from '../rng.js';

/** WGSL scalar type of a dtype in device memory: bool is stored as one u32 per element. */
export type Scalar = 'f32' | 'i32' | 'u32';

export function scalarOf(d: DType): Scalar {
  switch (d) {
    case 'float32':
      return 'f32';
    case 'int32':
      return 'i32';
    case 'bool':
      return 'u32';
    case 'float64':
      throw new TypeError('webgpu backend does not support float64 (use the cpu backend for float64)');
  }
}

/** The type arithmetic happens in: bool operands are computed on as i32. */
export function computeOf(d: DType): 'f32' | 'i32' {
  return d === 'float32' ? 'f32' : 'i32';
}

/** `vec4<s>` or `s`. */
export function vecOf(s: Scalar, vec4: boolean): string {
  return vec4 ? `vec4<${s}>` : s;
}

/**
 * Converts a WGSL expression between storage/compute types (scalar or vec4, matching `vec4`).
 * Conversion into u32 (bool) is `x != 0`, the CPU's rule.
 */
export function convert(expr: string, from: Scalar, to: Scalar, vec4 = false): string {
  if (from === to) return expr;
  if (to === 'u32') {
    // A float is true unless it is ±0, tested on the bits: NaN is true (as in PyTorch), although
    // `NaN != 0` may compile to an ordered comparison, and a subnormal is true although it may flush.
    if (from === 'f32') {
      return vec4
        ? `select(vec4<u32>(0u), vec4<u32>(1u), (bitcast<vec4<u32>>(${expr}) & vec4<u32>(0x7fffffffu)) != vec4<u32>(0u))`
        : `select(0u, 1u, (bitcast<u32>(${expr}) & 0x7fffffffu) != 0u)`;
    }
    return vec4
      ? `select(vec4<u32>(0u), vec4<u32>(1u), ${expr} != vec4<${from}>(${zeroOf(from)}))`
      : `select(0u, 1u, ${expr} != ${zeroOf(from)})`;
  }
  return `${vecOf(to, vec4)}(${expr})`;
}

export function zeroOf(s: Scalar): string {
  return s === 'f32' ? '0.0' : s === 'i32' ? '0i' : '0u';
}

/** A boolean (or vec4<bool>) expression stored as u32 ones and zeros. */
export function boolToU32(expr: string, vec4: boolean): string {
  return vec4 ? `select(vec4<u32>(0u), vec4<u32>(1u), ${expr})` : `select(0u, 1u, ${expr})`;
}

/**
 * NaN and infinity as runtime values: WGSL rejects them in constant expressions, so they are made
 * from bits held in a `var`, which no compiler folds into a constant.
 */
export const NAN_F32 = 'fg_nan()';
export const INF_F32 = 'fg_inf()';

/** A NaN test for a value of scalar type `t` (never true for integers). */
export function isNan(v: string, t: 'f32' | 'i32'): string {
  return t === 'f32' ? `fg_isnan(${v})` : 'false';
}


/** The math prelude's table (wgsl-math.ts): each function's WGSL and the prelude functions it calls. */
export type MathFns = Record<string, { deps: string[]; code: string | ((vec4: boolean) => string) }>;

/**
 * NaN-aware pieces for alias `T`: WGSL's max, min and clamp may drop a NaN operand and `v != v`
 * may compile to an ordered comparison, while the CPU oracle (and PyTorch) propagate NaN.
 * fg_nz is "nonzero" as a bool cast means it (NaN is true, ±0 false), tested on the bits for f32
 * because a flushed subnormal compares equal to 0. For integer shaders the same names exist.
 */
function typePrelude(compute: 'f32' | 'i32' | 'u32'): Record<string, string> {
  const f = compute === 'f32';
  return {
    fg_isnan_t: f
      ? 'fn fg_isnan_t(v: T) -> bool_t { return (bitcast<TU>(v) & TU(0x7fffffffu)) > TU(0x7f800000u); }'
      : 'fn fg_isnan_t(v: T) -> bool_t { return bool_t(false); }',
    fg_nz: f ? 'fn fg_nz(v: T) -> bool_t { return (bitcast<TU>(v) & TU(0x7fffffffu)) != TU(0u); }' : 'fn fg_nz(v: T) -> bool_t { return v != T(0); }',
    // Negation by the sign bit: arithmetic -x may flush a subnormal.
    fg_neg: f ? 'fn fg_neg(v: T) -> T { return bitcast<T>(bitcast<TU>(v) ^ TU(0x80000000u)); }' : 'fn fg_neg(v: T) -> T { return -v; }',
    fg_signbit: 'fn fg_signbit(v: T) -> bool_t { return bitcast<TU>(v) >= TU(0x80000000u); }',
    fg_max: 'fn fg_max(a: T, b: T) -> T { return select(max(a, b), a + b, fg_isnan_t(a) | fg_isnan_t(b)); }',
    fg_min: 'fn fg_min(a: T, b: T) -> T { return select(min(a, b), a + b, fg_isnan_t(a) | fg_isnan_t(b)); }',
    // Integer pow as PyTorch's (and the CPU's powInt): squaring over the 31 exponent bits, wrapping
    // like int32; a negative exponent gives 1 / a truncated (1, ±1 for a = -1 by parity, else 0).
    ...(compute === 'i32'
      ? {
          fg_pow: `fn fg_pow(a: T, b: T) -> T {
  var r = T(1);
  var base = a;
  var e = b;
  for (var i = 0; i < 31; i++) {
    r = select(r, r * base, (e & T(1)) != T(0));
    base = base * base;
    e = e >> TU(1u);
  }
  let unit = select(select(T(0), T(1), a == T(1)), select(T(1), T(-1), (b & T(1)) != T(0)), a == T(-1));
  return select(r, unit, b < T(0));
}`,
        }
      : {}),
  };
}
const TYPE_DEPS: Record<string, string[]> = { fg_max: ['fg_isnan_t'], fg_min: ['fg_isnan_t'] };

/** The math prelude for scalar f32 code without `T` aliases of its own (the row kernels of softmax.ts). */
export function scalarMathPrelude(expr: string, math: MathFns): string {
  return `alias T = f32;\nalias TU = u32;\nalias bool_t = bool;\n${preludeFor(expr, 'f32', false, math)}`;
}

/** Names of the helpers every shader has (WGSL_COMMON) and of the typed prelude, which need no math table. */
const RESIDENT = new Set([...Object.keys(typePrelude('f32')), 'fg_group', 'fg_nan', 'fg_inf', 'fg_isnan']);

/**
 * Whether an expression calls a function of the math prelude (wgsl-math.ts): its kernel then waits
 * for the WebGPU backend's MATH kernel family to load, and passes the table to preludeFor.
 */
export function needsMath(expr: string): boolean {
  for (const m of expr.matchAll(/\b(fg_[a-z0-9_]+)\(/g)) if (!RESIDENT.has(m[1])) return true;
  return false;
}

/**
 * The prelude functions an expression of the op table calls (and theirs), for the shader's aliases
 * `T`, `TU` and `bool_t`; `math` is wgsl-math.ts's MATH_FNS, required when the expression needs it.
 */
export function preludeFor(expr: string, compute: 'f32' | 'i32' | 'u32', vec4 = false, math?: MathFns): string {
  const typed = typePrelude(compute);
  const wanted = new Set<string>();
  const visit = (name: string) => {
    if (wanted.has(name)) return;
    wanted.add(name);
    // A typed form (the integer fg_pow) replaces the float one, deps included.
    for (const d of (name in typed ? TYPE_DEPS[name] : math?.[name]?.deps) ?? []) visit(d);
  };
  for (const m of expr.matchAll(/\b(fg_[a-z0-9_]+)\(/g)) {
    if (m[1] in typed) visit(m[1]);
    else if (!RESIDENT.has(m[1])) {
      if (!math) throw new Error(`internal: WGSL expression calls ${m[1]} of the math prelude, which was not passed (see needsMath): ${expr}`);
      if (m[1] in math) visit(m[1]);
    }
  }
  const parts = [...wanted].map((name) => {
    const code = name in typed ? typed[name] : math![name].code;
    return typeof code === 'function' ? code(vec4) : code;
  });
  return parts.filter((p) => p).join('\n');
}

export { WGSL_RNG };

/**
 * Helpers every shader gets: fg_group() is the linear workgroup index of a dispatch that the
 * runtime may have split into a 2-D grid (kernels declare `wg` and `nwg` builtins and call it);
 * fg_nan() and fg_inf() are the non-finite values (see NAN_F32); fg_isnan() tests the bits, because
 * `v != v` may compile to an ordered comparison that is false for NaN.
 */
export const WGSL_COMMON = /* wgsl */ `
fn fg_group(wg: vec3<u32>, nwg: vec3<u32>) -> u32 { return wg.x + wg.y * nwg.x; }
fn fg_nan() -> f32 { var bits = 0x7fc00000u; return bitcast<f32>(bits); }
fn fg_inf() -> f32 { var bits = 0x7f800000u; return bitcast<f32>(bits); }
fn fg_isnan(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }
`;

/**
 * How a flat kernel spreads `n` units (elements or vec4s) over threads: `units` consecutive ones
 * per thread. GPUs want one unit per thread; on a CPU-emulated adapter each invocation costs a
 * fixed prologue and sixteen consecutive units per thread double the bandwidth.
 */
export interface Spread {
  wg: number;
  units: number;
}

export function spreadFor(cpuEmulated: boolean): Spread {
  return cpuEmulated ? { wg: 64, units: 16 } : { wg: 256, units: 1 };
}

export function spreadGroups(n: number, s: Spread): number {
  return Math.ceil(n / (s.wg * s.units));
}

/** The body of a spread kernel: `body` runs with `v` = the unit index, for each unit below P.n. */
export function spreadMain(s: Spread, body: string): string {
  return `${entry(s.wg)} {
  let first = (fg_group(wg, nwg) * ${s.wg}u + lid) * ${s.units}u;
  for (var u = 0u; u < ${s.units}u; u++) {
    let v = first + u;
    if (v >= P.n) { break; }
    ${body}
  }
}`;
}

/** The entry point signature every 1-D kernel uses. */
export function entry(workgroupSize: number | string): string {
  return `@compute @workgroup_size(${workgroupSize})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32)`;
}

/**
 * A strided walk: for the flat index `idx` over a shape of `rank` dims (params `shape0..`),
 * computes `off_<set>` = sum(coord_d * P.<set>_stride<d>) (+ P.<set>_offset when `withOffset`)
 * for each stride set, as i32. The innermost dim comes out of the loop first so that the division
 * chain is the same as a row-major unravel.
 */
export function stridedOffsets(rank: number, sets: readonly string[], idx: string, withOffset: readonly string[] = []): string {
  const lines: string[] = [];
  for (const s of sets) lines.push(`var off_${s} = ${withOffset.includes(s) ? `P.${s}_offset` : '0i'};`);
  if (rank === 0) return lines.join('\n');
  lines.push(`var fg_rem = ${idx};`);
  for (let d = rank - 1; d >= 0; d--) {
    if (d > 0) {
      lines.push(`{ let c = i32(fg_rem % P.shape${d}); fg_rem = fg_rem / P.shape${d};`);
    } else {
      lines.push(`{ let c = i32(fg_rem);`);
    }
    for (const s of sets) lines.push(`  off_${s} += c * P.${s}_stride${d};`);
    lines.push('}');
  }
  return lines.join('\n');
}

/** Parameter list entries for a strided walk (the counterpart of `stridedOffsets`). */
export function stridedParams(shape: readonly number[], sets: Record<string, readonly number[]>): Param[] {
  const out: Param[] = shape.map((d, i) => ({ name: `shape${i}`, type: 'u32' as const, value: d }));
  for (const [name, strides] of Object.entries(sets)) {
    strides.forEach((s, i) => out.push({ name: `${name}_stride${i}`, type: 'i32', value: s }));
  }
  return out;
}

export type ParamType = 'u32' | 'i32' | 'f32';
export interface Param {
  name: string;
  type: ParamType;
  value: number;
}

/** A `Params` struct of named scalars: tightly packed (4 bytes each) in the uniform address space. */
export function paramStruct(params: readonly Param[]): string {
  const fields = params.length ? params.map((p) => `  ${p.name}: ${p.type},`).join('\n') : '  fg_unused: u32,';
  return `struct Params {\n${fields}\n}\n@group(0) @binding(0) var<uniform> P: Params;\n`;
}
