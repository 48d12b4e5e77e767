/**
 * The WebGPU backend's fused optimizer kernels: the arena kernels (src/kernels/arena/fused.ts,
 * rendered to WGSL by src/kernels/arena/wgsl.ts), plus the one kernel that stays outside the
 * kernel language, Gaussian noise (RWP's filter-wise noise and random-SAM's direction): it needs
 * the integer hash of src/kernels/rng.ts and a per-row reduction (RWP), which the language does not
 * express (see src/kernels/arena/fused.ts). Loaded by createWebGPUBackend through the loader that
 * src/kernels/arena/run.ts registers: only an app with both the WebGPU backend and the arena
 * kernels (the optimizers) ships it.
 */
import type { Backend, Storage } from '../backend.js';
import { ArenaFusedKernels } from '../arena/fused.js';
import { registerArenaWebGPU } from '../arena/webgpu.js';
import { FLAG_ACTIVE, FLAG_VECTOR, PARAM_FIELDS, registerFusedKernels, type ArenaLayout, type NoiseOptions } from '../fused.js';
import { asGPU, type Bind, type Runtime } from './runtime.js';
import { entry, WGSL_RNG, WGSL_TRIG, type Param } from './wgsl.js';

const WG = 256;

const f32 = (name: string, value: number): Param => ({ name, type: 'f32', value });
const u32 = (name: string, value: number): Param => ({ name, type: 'u32', value: value >>> 0 });

/** Per-group uniforms `name0..nameG-1` and a function fg_<name>(g) that picks one (one uniform when all agree). */
function groupVals(name: string, values: readonly number[]): { params: Param[]; fn: string } {
  if (values.every((v) => v === values[0])) {
    return { params: [f32(`${name}0`, values[0] ?? 0)], fn: `fn fg_${name}(g: u32) -> f32 { return P.${name}0; }` };
  }
  const params = values.map((v, i) => f32(`${name}${i}`, v));
  const body = values.map((_, i) => (i === 0 ? `var r = P.${name}0;` : `if (g == ${i}u) { r = P.${name}${i}; }`)).join(' ');
  return { params, fn: `fn fg_${name}(g: u32) -> f32 { ${body} return r; }` };
}

const TABLES = /* wgsl */ `
struct FgInfo { k: i32, off: u32, n: u32, grp: u32, flags: u32, rowLen: u32, rowBase: u32 }
fn fg_info(i: u32) -> FgInfo {
  let k = bp[i / 64u];
  if (k < 0) { return FgInfo(-1, 0u, 0u, 0u, 0u, 0u, 0u); }
  let b = u32(k) * ${PARAM_FIELDS}u;
  return FgInfo(k, u32(pt[b]), u32(pt[b + 1u]), u32(pt[b + 2u]), u32(pt[b + 3u]), u32(pt[b + 4u]), u32(pt[b + 5u]));
}
/** Element i belongs to a parameter (not padding). */
fn fg_valid(inf: FgInfo, i: u32) -> bool { return inf.k >= 0 && i - inf.off < inf.n; }
fn fg_active(inf: FgInfo, i: u32) -> bool { return fg_valid(inf, i) && (inf.flags & ${FLAG_ACTIVE}u) != 0u; }
fn fg_nonfinite(v: f32) -> bool { return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u; }
`;

/** out = Gaussian noise on active parameters, 0 elsewhere (FusedKernels.noise). */
function webgpuNoise(backend: Backend, L: ArenaLayout, out: Storage, o: NoiseOptions): void {
  const rt = (backend as unknown as { rt: Runtime }).rt;
  const tables: Bind[] = [
    { name: 'bp', s: asGPU(L.blockParam), access: 'read' },
    { name: 'pt', s: asGPU(L.paramTable), access: 'read' },
  ];
  const groupsOf = (n: number) => Math.ceil(n / WG);
  const idx = `let i = fg_group(wg, nwg) * ${WG}u + lid;\n  if (i >= P.n) { return; }`;
  const scale = groupVals('scale', o.scale);
  const fw = o.filterwise;
  if (fw && L.rows > 0) {
    const nParams = L.params.length;
    rt.dispatch({
      name: 'fused.rowNorms',
      key: 'fused.rowNorms',
      binds: [
        { name: 'p', s: asGPU(fw.p), access: 'read' },
        { name: 'rn', s: asGPU(fw.rowNorms), access: 'read_write' },
        ...tables,
      ],
      params: [u32('n', L.rows), u32('np', nParams)],
      groups: groupsOf(L.rows),
      wgsl: () => `${entry(WG)} {
  let r = fg_group(wg, nwg) * ${WG}u + lid;
  if (r >= P.n) { return; }
  // The last parameter whose first row is at or before r owns it.
  var lo = 0u;
  var hi = P.np - 1u;
  loop {
    if (lo >= hi) { break; }
    let mid = (lo + hi + 1u) / 2u;
    if (u32(pt[mid * ${PARAM_FIELDS}u + 5u]) <= r) { lo = mid; } else { hi = mid - 1u; }
  }
  let b = lo * ${PARAM_FIELDS}u;
  let off = u32(pt[b]);
  let rowLen = u32(pt[b + 4u]);
  let start = off + (r - u32(pt[b + 5u])) * rowLen;
  var s = 0.0;
  for (var j = 0u; j < rowLen; j++) { let v = p[start + j]; s += v * v; }
  var extra = 0.0;
  if ((u32(pt[b + 3u]) & ${FLAG_VECTOR}u) != 0u) { extra = 1e-16; }
  rn[r] = sqrt(s) + extra;
}`,
    });
  }
  const binds: Bind[] = [{ name: 'out', s: asGPU(out), access: 'write' }, ...tables];
  if (fw) binds.push({ name: 'rn', s: asGPU(fw.rowNorms), access: 'read' });
  rt.dispatch({
    name: 'fused.noise',
    key: `fused.noise:${L.groups}:${fw ? 'fw' : ''}`,
    binds,
    params: [u32('n', L.numel), u32('key0', o.key0), u32('key1', o.key1), ...scale.params],
    groups: groupsOf(L.numel),
    wgsl: () => `alias T = f32;
${WGSL_RNG}
${WGSL_TRIG}
${TABLES}
${scale.fn}
${entry(WG)} {
  ${idx}
  // A per-tensor call binds just the tensor: writes past it would clamp onto its last element.
  if (i >= arrayLength(&out)) { return; }
  let inf = fg_info(i);
  if (!fg_active(inf, i)) { out[i] = 0.0; return; }
  let u1 = f32((fg_bits(P.key0, P.key1, 2u * i) >> 8u) + 1u) * 5.9604644775390625e-8;
  let u2 = f32(fg_bits(P.key0, P.key1, 2u * i + 1u) >> 8u) * 5.9604644775390625e-8;
  let z = sqrt(-2.0 * log(u1)) * fg_cos(6.283185307179586 * u2);
  var sd = fg_scale(inf.grp);
  ${fw ? 'sd = sd * rn[inf.rowBase + (i - inf.off) / inf.rowLen];' : ''}
  out[i] = sd * z;
}`,
  });
}

// The arena kernels' WGSL runner, which this backend's fused kernels run on.
registerArenaWebGPU();
registerFusedKernels('webgpu', (b) => {
  const rt = (b as unknown as { rt?: Runtime }).rt;
  return rt && typeof rt.dispatch === 'function' ? new ArenaFusedKernels(b, (L, out, o) => webgpuNoise(b, L, out, o)) : null;
});
