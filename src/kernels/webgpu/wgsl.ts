/**
 * Small named pieces of WGSL that the kernel families assemble their shaders from: element types
 * per dtype and conversions, the helpers every shader gets (fg_group, fg_nan, fg_inf, fg_isnan),
 * the math prelude (fg_erf, fg_sin/fg_cos, fg_pow), the uniform Params struct, the strided index
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

/**
 * erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7, below float32 resolution near 1), for the
 * type alias `T` of the shader, which may be f32 or vec4<f32>.
 */
export const WGSL_ERF = /* wgsl */ `
fn fg_erf(x: T) -> T {
  let a = abs(x);
  let t = T(1.0) / (T(1.0) + T(0.3275911) * a);
  let poly = ((((T(1.061405429) * t - T(1.453152027)) * t + T(1.421413741)) * t - T(0.284496736)) * t + T(0.254829592)) * t;
  return sign(x) * (T(1.0) - poly * exp(-a * a));
}
`;

/**
 * sin and cos to about 1 ulp for moderate |x|, for the shader's alias `T` (f32 or vec4<f32>). WGSL
 * only promises an absolute error of 2^-11 for its builtins (SwiftShader is off by ~5e-5), well
 * short of float32 and of the CPU backend. Cody-Waite reduction by pi/2 in three parts, then the
 * Cephes sinf/cosf polynomials on [-pi/4, pi/4] and the quadrant's sign and swap.
 */
export const WGSL_TRIG = /* wgsl */ `
fn fg_sin_quadrant(x: T, shift: T) -> T {
  let q = round(x * T(0.63661977236758134));
  let r = ((x - q * T(1.5703125)) - q * T(4.837512969970703125e-4)) - q * T(7.54978995489188216e-8);
  let r2 = r * r;
  let s = r + r * r2 * (T(-1.6666654611e-1) + r2 * (T(8.3321608736e-3) + r2 * T(-1.9515295891e-4)));
  let c = T(1.0) - T(0.5) * r2 + r2 * r2 * (T(4.166664568298827e-2) + r2 * (T(-1.388731625493765e-3) + r2 * T(2.443315711809948e-5)));
  let qs = q + shift;
  let quadrant = qs - T(4.0) * floor(qs * T(0.25));
  let v = select(s, c, (quadrant == T(1.0)) | (quadrant == T(3.0)));
  return select(v, -v, quadrant >= T(2.0));
}
fn fg_sin(x: T) -> T { return fg_sin_quadrant(x, T(0.0)); }
fn fg_cos(x: T) -> T { return fg_sin_quadrant(x, T(1.0)); }
`;

/**
 * pow with Math.pow's rules, for alias `T` (and `TU`, its u32 twin). WGSL's pow is exp2(b*log2(a)):
 * undefined for a < 0 (SwiftShader gives pow(-2, 3) = 8) and Infinity for a NaN operand. Here a
 * negative base with a whole exponent keeps its sign, with a fractional one gives NaN, a NaN
 * operand gives NaN, and pow(x, 0) is 1.
 */
export const WGSL_POW = /* wgsl */ `
fn fg_pow(a: T, b: T) -> T {
  let mag = pow(abs(a), b);
  let whole = b == floor(b);
  let odd = whole & (b - T(2.0) * floor(b * T(0.5)) == T(1.0));
  let neg = a < T(0.0);
  let nan = T(fg_nan());
  var r = select(mag, -mag, odd & neg);
  r = select(r, nan, neg & !whole);
  r = select(r, nan, fg_isnan_t(a) | fg_isnan_t(b));
  return select(r, T(1.0), b == T(0.0));
}
`;

/**
 * NaN-aware pieces for alias `T`: WGSL's max, min and clamp may drop a NaN operand and `v != v`
 * may compile to an ordered comparison, while the CPU oracle (and PyTorch) propagate NaN. For
 * integer shaders the same names exist without the NaN test.
 */
function nanPrelude(compute: 'f32' | 'i32' | 'u32'): string {
  const isnan =
    compute === 'f32'
      ? 'fn fg_isnan_t(v: T) -> bool_t { return (bitcast<TU>(v) & TU(0x7fffffffu)) > TU(0x7f800000u); }'
      : 'fn fg_isnan_t(v: T) -> bool_t { return bool_t(false); }';
  return `
${isnan}
fn fg_max(a: T, b: T) -> T { return select(max(a, b), a + b, fg_isnan_t(a) | fg_isnan_t(b)); }
fn fg_min(a: T, b: T) -> T { return select(min(a, b), a + b, fg_isnan_t(a) | fg_isnan_t(b)); }
`;
}

/** The prelude functions an expression of the op table calls, for the shader's aliases `T`, `TU` and `bool_t`. */
export function preludeFor(expr: string, compute: 'f32' | 'i32' | 'u32'): string {
  return (
    (/\bfg_(isnan_t|max|min|pow)\(/.test(expr) ? nanPrelude(compute) : '') +
    (expr.includes('fg_erf') ? WGSL_ERF : '') +
    (/\bfg_(sin|cos)\(/.test(expr) ? WGSL_TRIG : '') +
    (/\bfg_pow\(/.test(expr) ? WGSL_POW : '')
  );
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
