/**
 * The fused optimizer kernels (src/kernels/fused.ts) as WGSL compute shaders over the flat arena.
 * Every kernel is one dispatch over the whole arena (a global reduction is two: per-workgroup
 * partials, then one workgroup that also runs the step's scalar program), whatever the number of
 * parameter tensors. Per-element parameter facts come from the block and parameter tables;
 * per-group hyperparameters are uniforms; norms, flags and counters stay in the scalar storage S.
 */
import type { Backend, Storage } from '../backend.js';
import {
  FLAG_ACTIVE,
  FLAG_DECAY,
  FLAG_VECTOR,
  FLAG_WEIGHT,
  PARAM_FIELDS,
  registerFusedKernels,
  S_FLAG,
  type AdamGroup,
  type AdaptiveSpec,
  type ArenaLayout,
  type Coef,
  type FusedKernels,
  type NoiseOptions,
  type PerturbOptions,
  type RestoreMode,
  type SAssign,
  type SelectSpec,
  type SExpr,
  type SgdGroup,
  type NormOptions,
  type Term,
  type UpdateOptions,
} from '../fused.js';
import { asGPU, type Bind, type GPUStorage, type Runtime } from './runtime.js';
import { entry, WGSL_RNG, WGSL_TRIG, type Param } from './wgsl.js';

const WG = 256;
/** Elements one workgroup of a reduction's first pass covers. */
const CHUNK = 4096;
const MAX_CHUNKS = 1024;

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

/** Table lookups of the parameter owning 64-element block `blk`: k (-1 for padding), off, n, grp, flags, live. */
const BLOCK_INFO = /* wgsl */ `
  let k = bp[blk];
  var off = 0u;
  var n = 0u;
  var grp = 0u;
  var flags = 0u;
  if (k >= 0) {
    let b = u32(k) * ${PARAM_FIELDS}u;
    off = u32(pt[b]);
    n = u32(pt[b + 1u]);
    grp = u32(pt[b + 2u]);
    flags = u32(pt[b + 3u]);
  }
  let live = k >= 0 && (flags & ${FLAG_ACTIVE}u) != 0u;`;

/**
 * The frame of the elementwise vec4 kernels: `body` runs for vec4 index q (elements 4q..4q+3,
 * which lie in one 64-element block and so in one parameter) with k, grp, flags, live and `valid`
 * (the lanes inside the parameter) in scope. On a GPU each invocation takes one vec4; on
 * SwiftShader one invocation walks a whole block, so the table lookups happen once per block.
 */
function vec4Frame(emu: boolean, body: string): string {
  const lanes = `let i0 = q * 4u;
    let valid = (vec4<u32>(i0, i0 + 1u, i0 + 2u, i0 + 3u) - vec4<u32>(off)) < vec4<u32>(n);`;
  if (emu) {
    return `let blk = fg_group(wg, nwg) * ${WG}u + lid;
  if (blk >= P.n4 / 16u) { return; }
  ${BLOCK_INFO}
  for (var j = 0u; j < 16u; j++) {
    let q = blk * 16u + j;
    ${lanes}
    ${body}
  }`;
  }
  return `let q = fg_group(wg, nwg) * ${WG}u + lid;
  if (q >= P.n4) { return; }
  let blk = q / 16u;
  ${BLOCK_INFO}
  {
    ${lanes}
    ${body}
  }`;
}

const V4 = 'vec4<f32>';

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

/** ESAM's parameter selection: uniform(key, k) < beta, as the CPU computes it. */
const SELECT_FN = /* wgsl */ `
fn fg_selected(k: u32) -> bool { return f32(fg_bits(P.selKey0, P.selKey1, k) >> 8u) * 5.9604644775390625e-8 < P.selBeta; }
`;

function selectParams(sel: SelectSpec | undefined): Param[] {
  return sel ? [u32('selKey0', sel.key0), u32('selKey1', sel.key1), f32('selBeta', sel.beta)] : [];
}

/** ASAM's T = |p| + eta (vec4) for a parameter of group grp with flags (1 where it does not apply). */
function adaptiveParts(ad: AdaptiveSpec | undefined): { params: Param[]; fns: string } {
  if (!ad) return { params: [], fns: '' };
  const on = groupVals('adOn', ad.groups.map((g) => (g.on ? 1 : 0)));
  const eta = groupVals('adEta', ad.groups.map((g) => g.eta));
  const bias = groupVals('adBias', ad.groups.map((g) => (g.bias ? 1 : 0)));
  return {
    params: [...on.params, ...eta.params, ...bias.params],
    fns: `${on.fn}\n${eta.fn}\n${bias.fn}
fn fg_T(grp: u32, flags: u32, pv: vec4<f32>) -> vec4<f32> {
  if (fg_adOn(grp) != 0.0 && ((flags & ${FLAG_WEIGHT}u) != 0u || fg_adBias(grp) != 0.0)) { return abs(pv) + vec4<f32>(fg_adEta(grp)); }
  return vec4<f32>(1.0);
}`,
  };
}

/** A scalar program as WGSL statements; constants become uniforms so the pipeline is shared. */
function compileProg(prog: readonly SAssign[] | undefined, prefix: string): { code: string; key: string; params: Param[] } {
  const params: Param[] = [];
  const expr = (e: SExpr): [string, string] => {
    if (typeof e === 'number') {
      const name = `${prefix}${params.length}`;
      params.push(f32(name, e));
      return [`P.${name}`, 'K'];
    }
    if (!Array.isArray(e)) return [`S[${e.s}u]`, `s${e.s}`];
    const [op, a0, b0, c0] = e;
    const [a, ka] = expr(a0);
    const [b, kb] = b0 === undefined ? ['0.0', ''] : expr(b0);
    const key = (k: string) => `${op}(${ka},${kb}${k})`;
    switch (op) {
      case '+':
      case '-':
      case '*':
      case '/':
        return [`(${a} ${op} ${b})`, key('')];
      case 'sqrt':
        return [`sqrt(${a})`, key('')];
      case 'max':
      case 'min':
        return [`${op}(${a}, ${b})`, key('')];
      case '>':
        return [`select(0.0, 1.0, ${a} > ${b})`, key('')];
      case '==':
        return [`select(0.0, 1.0, ${a} == ${b})`, key('')];
      case 'or':
        return [`select(0.0, 1.0, ${a} != 0.0 || ${b} != 0.0)`, key('')];
      case 'select': {
        const [c, kc] = expr(c0!);
        return [`select(${c}, ${b}, ${a} != 0.0)`, key(`,${kc}`)];
      }
      case 'nonfinite':
        return [`select(0.0, 1.0, fg_nonfinite(${a}))`, key('')];
      case 'pow':
        return [`pow(${a}, ${b})`, key('')];
    }
  };
  const lines: string[] = [];
  const keys: string[] = [];
  for (const a of prog ?? []) {
    const [code, k] = expr(a.e);
    lines.push(`S[${a.dst}u] = ${code};`);
    keys.push(`${a.dst}=${k}`);
  }
  return { code: lines.join('\n    '), key: keys.join(';'), params };
}

/** b^t for a whole number t >= 0 by repeated squaring (more accurate than pow's exp2(t log2 b)). */
const POWI = /* wgsl */ `
fn fg_powi(b: f32, t: f32) -> f32 {
  var r = 1.0;
  var x = b;
  var n = u32(max(t, 0.0));
  loop {
    if (n == 0u) { break; }
    if ((n & 1u) == 1u) { r = r * x; }
    x = x * x;
    n = n >> 1u;
  }
  return r;
}
`;

export class WebGPUFusedKernels implements FusedKernels {
  private readonly rt: Runtime;
  constructor(readonly backend: Backend) {
    this.rt = (backend as unknown as { rt: Runtime }).rt;
  }

  private tables(L: ArenaLayout): Bind[] {
    return [
      { name: 'bp', s: asGPU(L.blockParam), access: 'read' },
      { name: 'pt', s: asGPU(L.paramTable), access: 'read' },
    ];
  }
  private groupsOf(n: number): number {
    return Math.ceil(n / WG);
  }
  /** Workgroups of a vec4 kernel over the arena (one invocation per vec4, or per block when emulated). */
  private groups4(L: ArenaLayout): number {
    return this.groupsOf(this.rt.cpuEmulated ? L.blocks : L.numel / 4);
  }
  private idx(): string {
    return `let i = fg_group(wg, nwg) * ${WG}u + lid;\n  if (i >= P.n) { return; }`;
  }

  /** Pass 2 of a sum: one workgroup sums the partials into S[slot] and runs `then`. */
  private finalize(partials: GPUStorage, nchunks: number, S: GPUStorage, slot: number, then: readonly SAssign[] | undefined, name: string): void {
    const prog = compileProg(then, 'k');
    this.rt.dispatch({
      name: `${name}.final`,
      key: `fused.final:${this.rt.cpuEmulated ? 'emu' : 'tree'}:${prog.key}`,
      binds: [
        { name: 'part', s: partials, access: 'read' },
        { name: 'S', s: S, access: 'read_write' },
      ],
      params: [u32('n', nchunks), u32('slot', slot), ...prog.params],
      groups: 1,
      wgsl: () =>
        this.rt.cpuEmulated
          ? // SwiftShader runs workgroup barriers slowly: one invocation adds the partials up.
            `${TABLES_NONE}
${entry(1)} {
  var total = 0.0;
  for (var j = 0u; j < P.n; j++) { total += part[j]; }
  S[P.slot] = total;
  ${prog.code}
}`
          : `${TABLES_NONE}
var<workgroup> sv: array<f32, ${WG}>;
${entry(WG)} {
  var acc = 0.0;
  for (var j = lid; j < P.n; j += ${WG}u) { acc += part[j]; }
  sv[lid] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { sv[lid] = sv[lid] + sv[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let total = sv[0];
    S[P.slot] = total;
    ${prog.code}
  }
}`,
    });
  }

  /** Pass 1 of a reduction: per-workgroup partial sums of `term` (adds to acc) over active parameters, 4 lanes a thread. */
  private reduce(L: ArenaLayout, name: string, key: string, binds: Bind[], params: Param[], fns: string, term: string, filter: string): { partials: GPUStorage; nchunks: number } {
    const n4 = L.numel / 4;
    const emu = this.rt.cpuEmulated;
    // On SwiftShader (the GPU emulated on the CPU) workgroup barriers are slow: each invocation
    // sums a contiguous range on its own; on a GPU, workgroups reduce chunks in shared memory.
    const nchunks = emu ? Math.min(MAX_CHUNKS, Math.ceil(n4 / 64)) : Math.min(MAX_CHUNKS, Math.ceil(L.numel / CHUNK));
    const chunk4 = Math.ceil(n4 / nchunks);
    const partials = this.rt.temp(nchunks, 'float32');
    const visit = visitActive(term, filter);
    if (emu) {
      this.rt.dispatch({
        name: `${name}.partial`,
        key: `fused.partial.emu:${key}`,
        binds: [...binds, ...this.tables(L), { name: 'part', s: partials, access: 'write' }],
        params: [u32('n4', n4), u32('chunk4', chunk4), u32('nchunks', nchunks), ...params],
        groups: Math.ceil(nchunks / 64),
        wgsl: () => `${WGSL_RNG}
${fns}
${entry(64)} {
  let t = fg_group(wg, nwg) * 64u + lid;
  if (t >= P.nchunks) { return; }
  let start = t * P.chunk4;
  let end = min(P.n4, start + P.chunk4);
  var acc = 0.0;
  for (var q = start; q < end; q++) {
    ${visit}
  }
  part[t] = acc;
}`,
      });
      return { partials, nchunks };
    }
    this.rt.dispatch({
      name: `${name}.partial`,
      key: `fused.partial:${key}`,
      binds: [...binds, ...this.tables(L), { name: 'part', s: partials, access: 'write' }],
      params: [u32('n4', n4), u32('chunk4', chunk4), u32('nchunks', nchunks), ...params],
      groups: nchunks,
      wgsl: () => `${WGSL_RNG}
${fns}
var<workgroup> sv: array<f32, ${WG}>;
${entry(WG)} {
  let g = fg_group(wg, nwg);
  let start = g * P.chunk4;
  let end = min(P.n4, start + P.chunk4);
  var acc = 0.0;
  for (var q = start + lid; q < end; q += ${WG}u) {
    ${visit}
  }
  sv[lid] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { sv[lid] = sv[lid] + sv[lid + s]; }
    workgroupBarrier();
  }
  // A split dispatch's spare groups (g >= nchunks) must not write.
  if (lid == 0u && g < P.nchunks) { part[g] = sv[0]; }
}`,
    });
    return { partials, nchunks };
  }

  private v4(name: string, s: Storage, access: Bind['access']): Bind {
    return { name, s: asGPU(s), access, type: V4 };
  }

  /**
   * The norm in two passes like the sums, but each thread keeps (m, s): the largest magnitude seen
   * and the sum of squares scaled by it, ||x|| = m sqrt(s), so finite values never overflow (a
   * float32 sum of squares does from 1.8e19). NaN and Inf are flagged directly from their bits
   * (their lanes count as 0 in (m, s)); a flagged norm is stored as Inf.
   */
  norm(L: ArenaLayout, x: Storage, S: Storage, slot: number, o: NormOptions = {}): void {
    const ad = adaptiveParts(o.adaptive);
    const binds: Bind[] = [this.v4('x', x, 'read')];
    if (o.adaptive) binds.push(this.v4('p', o.adaptive.p, 'read'));
    const n4 = L.numel / 4;
    const emu = this.rt.cpuEmulated;
    const nchunks = emu ? Math.min(MAX_CHUNKS, Math.ceil(n4 / 64)) : Math.min(MAX_CHUNKS, Math.ceil(L.numel / CHUNK));
    const chunk4 = Math.ceil(n4 / nchunks);
    // Three values per partial: m, s, and 1 where a NaN or Inf was seen.
    const partials = this.rt.temp(3 * nchunks, 'float32');
    const visit = visitActive(
      `let v = ${o.adaptive ? 'fg_T(grp, flags, p[q]) * x[q]' : 'x[q]'};
        let nf = (bitcast<vec4<u32>>(v) & vec4<u32>(0x7f800000u)) == vec4<u32>(0x7f800000u);
        if (any(nf)) { bad = 1.0; }
        let a = select(abs(v), vec4<f32>(0.0), nf);
        let am = max(max(a.x, a.y), max(a.z, a.w));
        if (am > m) { let r = m / am; s = s * r * r; m = am; }
        if (m > 0.0) { let t = a / m; s += dot(t, t); }`,
      o.select ? ' && fg_selected(u32(k))' : '',
    );
    const fns = `${WGSL_RNG}
${ad.fns}
${o.select ? SELECT_FN : ''}
${NORM_COMBINE}`;
    const params = [u32('n4', n4), u32('chunk4', chunk4), u32('nchunks', nchunks), ...ad.params, ...selectParams(o.select)];
    const key = `${o.adaptive ? `ad${ad.params.length}` : ''}:${o.select ? 'sel' : ''}`;
    const bindsAll = [...binds, ...this.tables(L), { name: 'part', s: partials, access: 'write' as const }];
    if (emu) {
      // SwiftShader: one invocation per contiguous range, no barriers (as in reduce()).
      this.rt.dispatch({
        name: 'fused.norm.partial',
        key: `fused.norm.partial.emu:${key}`,
        binds: bindsAll,
        params,
        groups: Math.ceil(nchunks / 64),
        wgsl: () => `${fns}
${entry(64)} {
  let t = fg_group(wg, nwg) * 64u + lid;
  if (t >= P.nchunks) { return; }
  let start = t * P.chunk4;
  let end = min(P.n4, start + P.chunk4);
  var m = 0.0;
  var s = 0.0;
  var bad = 0.0;
  for (var q = start; q < end; q++) {
    ${visit}
  }
  part[3u * t] = m;
  part[3u * t + 1u] = s;
  part[3u * t + 2u] = bad;
}`,
      });
    } else {
      this.rt.dispatch({
        name: 'fused.norm.partial',
        key: `fused.norm.partial:${key}`,
        binds: bindsAll,
        params,
        groups: nchunks,
        wgsl: () => `${fns}
var<workgroup> wm: array<f32, ${WG}>;
var<workgroup> ws: array<f32, ${WG}>;
var<workgroup> wb: array<f32, ${WG}>;
${entry(WG)} {
  let g = fg_group(wg, nwg);
  let start = g * P.chunk4;
  let end = min(P.n4, start + P.chunk4);
  var m = 0.0;
  var s = 0.0;
  var bad = 0.0;
  for (var q = start + lid; q < end; q += ${WG}u) {
    ${visit}
  }
  wm[lid] = m;
  ws[lid] = s;
  wb[lid] = bad;
  workgroupBarrier();
  for (var h = ${WG / 2}u; h > 0u; h = h >> 1u) {
    if (lid < h) {
      let c = fg_norm_combine(vec2<f32>(wm[lid], ws[lid]), vec2<f32>(wm[lid + h], ws[lid + h]));
      wm[lid] = c.x;
      ws[lid] = c.y;
      wb[lid] = max(wb[lid], wb[lid + h]);
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    part[3u * g] = wm[0];
    part[3u * g + 1u] = ws[0];
    part[3u * g + 2u] = wb[0];
  }
}`,
      });
    }
    // Pass 2: one invocation combines the partials (at most MAX_CHUNKS), stores the norm, gates, runs `then`.
    const prog = compileProg(o.then, 'k');
    const gateLine = o.gate === 'set' ? `S[${S_FLAG}u] = bad;` : o.gate === 'or' ? `S[${S_FLAG}u] = max(S[${S_FLAG}u], bad);` : '';
    this.rt.dispatch({
      name: 'fused.norm.final',
      key: `fused.norm.final:${o.gate ?? ''}:${prog.key}`,
      binds: [
        { name: 'part', s: partials, access: 'read' },
        { name: 'S', s: asGPU(S), access: 'read_write' },
      ],
      params: [u32('n', nchunks), u32('slot', slot), ...prog.params],
      groups: 1,
      wgsl: () => `${TABLES_NONE}
${NORM_COMBINE}
${entry(1)} {
  var ms = vec2<f32>(0.0, 0.0);
  var bad = 0.0;
  for (var j = 0u; j < P.n; j++) {
    ms = fg_norm_combine(ms, vec2<f32>(part[3u * j], part[3u * j + 1u]));
    bad = max(bad, part[3u * j + 2u]);
  }
  // Inf from a runtime bit pattern (a constant one is rejected as not representable).
  var infBits = 0x7f800000u;
  S[P.slot] = select(ms.x * sqrt(ms.y), bitcast<f32>(infBits), bad != 0.0);
  ${gateLine}
  ${prog.code}
}`,
    });
    this.rt.release(partials);
  }

  dot(L: ArenaLayout, x: Storage, y: Storage, S: Storage, slot: number, then?: readonly SAssign[]): void {
    const { partials, nchunks } = this.reduce(L, 'fused.dot', 'dot', [this.v4('x', x, 'read'), this.v4('y', y, 'read')], [], '', 'acc += dot(x[q], y[q]);', '');
    this.finalize(partials, nchunks, asGPU(S), slot, then, 'fused.dot');
    this.rt.release(partials);
  }

  scalars(S: Storage, prog: readonly SAssign[]): void {
    if (prog.length === 0) return;
    const p = compileProg(prog, 'k');
    this.rt.dispatch({
      name: 'fused.scalars',
      key: `fused.scalars:${p.key}`,
      binds: [{ name: 'S', s: asGPU(S), access: 'read_write' }],
      params: p.params,
      groups: 1,
      wgsl: () => `${TABLES_NONE}
${entry(1)} {
    ${p.code}
}`,
    });
  }

  perturb(L: ArenaLayout, p: Storage, dir: Storage, S: Storage, o: PerturbOptions): void {
    const ad = adaptiveParts(o.adaptive);
    const coef = groupVals('coef', o.coef);
    const delta = o.mode === 'delta';
    const binds: Bind[] = [
      this.v4('p', p, 'read_write'),
      this.v4('dir', dir, 'read'),
      this.v4('aux', o.aux, 'write'),
      { name: 'S', s: asGPU(S), access: 'read' },
      ...this.tables(L),
    ];
    if (o.save) binds.push(this.v4('save', o.save, 'write'));
    const kExpr = o.normSlot === null ? '1.0' : `1.0 / (S[${o.normSlot}u] + P.eps)`;
    this.rt.dispatch({
      name: 'fused.perturb',
      key: `fused.perturb:${this.rt.cpuEmulated ? 'emu' : ''}:${coef.params.length}:${o.adaptive ? `ad${ad.params.length}` : ''}:${o.select ? 'sel' : ''}:${o.mode}:${o.save ? 'save' : ''}:${o.gated ? 'g' : ''}:${o.normSlot ?? 'x'}`,
      binds,
      params: [u32('n4', L.numel / 4), f32('eps', o.eps), ...coef.params, ...ad.params, ...selectParams(o.select)],
      groups: this.groups4(L),
      wgsl: () => `${WGSL_RNG}
${coef.fn}
${ad.fns}
${o.select ? SELECT_FN : ''}
${entry(WG)} {
  ${vec4Frame(this.rt.cpuEmulated, `let old = p[q];
    let dv = dir[q];
    ${o.save ? 'save[q] = dv;' : ''}
    var e = vec4<f32>(0.0);
    if (live${o.select ? ' && fg_selected(u32(k))' : ''}) {
      var c = fg_coef(grp) * ${kExpr};
      ${o.gated ? `if (S[${S_FLAG}u] != 0.0) { c = 0.0; }` : ''}
      if (c != 0.0) {
        ${o.adaptive ? 'let t = fg_T(grp, flags, old);\n        e = select(vec4<f32>(0.0), c * t * t * dv, valid);' : 'e = select(vec4<f32>(0.0), c * dv, valid);'}
        p[q] = old + e;
      }
    }
    aux[q] = ${delta ? 'e' : 'old'};`)}
}`,
    });
  }

  restore(L: ArenaLayout, p: Storage, aux: Storage, mode: RestoreMode): void {
    this.rt.dispatch({
      name: 'fused.restore',
      key: `fused.restore:${mode}`,
      binds: [this.v4('p', p, mode === 'backup' ? 'write' : 'read_write'), this.v4('aux', aux, 'read')],
      params: [u32('n4', L.numel / 4)],
      groups: this.groupsOf(L.numel / 4),
      wgsl: () => `${entry(WG)} {
  let q = fg_group(wg, nwg) * ${WG}u + lid;
  if (q >= P.n4) { return; }
  p[q] = ${mode === 'backup' ? 'aux[q]' : 'p[q] - aux[q]'};
}`,
    });
  }

  lincomb(L: ArenaLayout, out: Storage, self: Coef, terms: readonly Term[], S: Storage): void {
    const readSelf = !(self.c === 0 && self.slot === undefined);
    const coefExpr = (name: string, c: Coef) => (c.slot === undefined ? `P.${name}` : `(P.${name} * S[${c.slot}u])`);
    const params: Param[] = [u32('n4', L.numel / 4), f32('a', self.c), ...terms.map((t, j) => f32(`c${j}`, t.c))];
    const sum = [readSelf ? `${coefExpr('a', self)} * out[q]` : 'vec4<f32>(0.0)', ...terms.map((t, j) => `${coefExpr(`c${j}`, t)} * x${j}[q]`)].join(' + ');
    this.rt.dispatch({
      name: 'fused.lincomb',
      key: `fused.lincomb:${this.rt.cpuEmulated ? 'emu' : ''}:${readSelf ? (self.slot ?? 'c') : 'w'}:${terms.map((t) => t.slot ?? 'c').join(',')}`,
      binds: [this.v4('out', out, readSelf ? 'read_write' : 'write'), ...terms.map((t, j) => this.v4(`x${j}`, t.x, 'read')), { name: 'S', s: asGPU(S), access: 'read' }, ...this.tables(L)],
      params,
      groups: this.groups4(L),
      wgsl: () => `${entry(WG)} {
  ${vec4Frame(this.rt.cpuEmulated, `// Padding lanes stay zero whatever the coefficients.
    out[q] = select(vec4<f32>(0.0), ${sum}, valid);`)}
}`,
    });
  }

  noise(L: ArenaLayout, out: Storage, o: NoiseOptions): void {
    const scale = groupVals('scale', o.scale);
    const fw = o.filterwise;
    if (fw && L.rows > 0) {
      const nParams = L.params.length;
      this.rt.dispatch({
        name: 'fused.rowNorms',
        key: 'fused.rowNorms',
        binds: [
          { name: 'p', s: asGPU(fw.p), access: 'read' },
          { name: 'rn', s: asGPU(fw.rowNorms), access: 'read_write' },
          ...this.tables(L),
        ],
        params: [u32('n', L.rows), u32('np', nParams)],
        groups: this.groupsOf(L.rows),
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
    const binds: Bind[] = [{ name: 'out', s: asGPU(out), access: 'write' }, ...this.tables(L)];
    if (fw) binds.push({ name: 'rn', s: asGPU(fw.rowNorms), access: 'read' });
    this.rt.dispatch({
      name: 'fused.noise',
      key: `fused.noise:${L.groups}:${fw ? 'fw' : ''}`,
      binds,
      params: [u32('n', L.numel), u32('key0', o.key0), u32('key1', o.key1), ...scale.params],
      groups: this.groupsOf(L.numel),
      wgsl: () => `alias T = f32;
${WGSL_RNG}
${WGSL_TRIG}
${TABLES}
${scale.fn}
${entry(WG)} {
  ${this.idx()}
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

  /**
   * Adds one to the step count of every active parameter when the update is taken (not gated off):
   * a dispatch of its own, so that every invocation of the update reads the advanced count.
   */
  private advanceSteps(L: ArenaLayout, steps: Storage, S: Storage, gated: boolean): void {
    this.rt.dispatch({
      name: 'fused.advanceSteps',
      key: `fused.advanceSteps:${gated ? 'g' : ''}`,
      binds: [
        { name: 'steps', s: asGPU(steps), access: 'read_write' },
        { name: 'S', s: asGPU(S), access: 'read' },
        { name: 'pt', s: asGPU(L.paramTable), access: 'read' },
      ],
      params: [u32('n', L.params.length)],
      groups: this.groupsOf(L.params.length),
      wgsl: () => `${entry(WG)} {
  let k = fg_group(wg, nwg) * ${WG}u + lid;
  if (k >= P.n) { return; }
  ${gated ? `if (S[${S_FLAG}u] != 0.0) { return; }` : ''}
  if ((u32(pt[k * ${PARAM_FIELDS}u + 3u]) & ${FLAG_ACTIVE}u) != 0u) { steps[k] = steps[k] + 1.0; }
}`,
    });
  }

  /** The shared frame of the update kernels: restore, gate, then `body` (vec4 lanes) on active parameters. */
  private update(L: ArenaLayout, name: string, key: string, binds: Bind[], params: Param[], fns: string, body: string, o: UpdateOptions, S: Storage): void {
    const r = o.restore;
    this.advanceSteps(L, o.steps, S, o.gated);
    if (r) binds.push(this.v4('aux', r.aux, 'read'));
    binds.push({ name: 'S', s: asGPU(S), access: 'read' }, { name: 'steps', s: asGPU(o.steps), access: 'read' }, ...this.tables(L));
    const load = !r ? 'p[q]' : r.mode === 'backup' ? 'aux[q]' : 'p[q] - aux[q]';
    this.rt.dispatch({
      name,
      key: `${key}:${r ? r.mode : ''}:${o.gated ? 'g' : ''}:${this.rt.cpuEmulated ? 'emu' : ''}`,
      binds,
      params: [u32('n4', L.numel / 4), ...params],
      groups: this.groups4(L),
      wgsl: () => `${POWI}
${fns}
${entry(WG)} {
  ${o.gated ? `let skip = S[${S_FLAG}u] != 0.0;` : 'let skip = false;'}
  ${vec4Frame(this.rt.cpuEmulated, `var pv = ${load};
    if (!skip && live) {
      let g = grp;
      // This parameter's own count of updates taken (torch's state[p]['step']), already advanced.
      let stepf = steps[u32(k)];
      ${body}
    }
    ${r ? 'p[q] = pv;' : 'if (!skip && live) { p[q] = pv; }'}`)}
}`,
    });
  }

  sgd(L: ArenaLayout, p: Storage, d: Storage, mom: Storage | null, S: Storage, groups: readonly SgdGroup[], o: UpdateOptions): void {
    const vals = [
      groupVals('lr', groups.map((g) => g.lr)),
      groupVals('mom', groups.map((g) => g.momentum)),
      groupVals('damp', groups.map((g) => g.dampening)),
      groupVals('nest', groups.map((g) => (g.nesterov ? 1 : 0))),
      groupVals('wd', groups.map((g) => g.weightDecay)),
    ];
    const binds: Bind[] = [this.v4('p', p, 'read_write'), this.v4('d', d, 'read')];
    if (mom) binds.push(this.v4('m', mom, 'read_write'));
    const body = `var dd = d[q];
    let wd = select(0.0, fg_wd(g), (flags & ${FLAG_DECAY}u) != 0u);
    if (wd != 0.0) { dd = dd + wd * pv; }
    ${
      mom
        ? `let mo = fg_mom(g);
    if (mo != 0.0) {
      var buf = dd;
      if (stepf > 1.0) { buf = mo * m[q] + (1.0 - fg_damp(g)) * dd; }
      m[q] = buf;
      if (fg_nest(g) != 0.0) { dd = dd + mo * buf; } else { dd = buf; }
    }`
        : ''
    }
    pv = pv + (-fg_lr(g)) * dd;`;
    const np = vals.map((v) => v.params.length).join('');
    this.update(L, 'fused.sgd', `fused.sgd:${np}:${mom ? 'm' : ''}`, binds, vals.flatMap((v) => v.params), vals.map((v) => v.fn).join('\n'), body, o, S);
  }

  adam(L: ArenaLayout, p: Storage, d: Storage, m: Storage, v: Storage, S: Storage, groups: readonly AdamGroup[], o: UpdateOptions): void {
    const vals = [
      groupVals('lr', groups.map((g) => g.lr)),
      groupVals('b1', groups.map((g) => g.beta1)),
      groupVals('b2', groups.map((g) => g.beta2)),
      groupVals('eps', groups.map((g) => g.eps)),
      groupVals('wd', groups.map((g) => g.weightDecay)),
    ];
    const decoupled = groups.some((g) => g.decoupled);
    const binds: Bind[] = [this.v4('p', p, 'read_write'), this.v4('d', d, 'read'), this.v4('m', m, 'read_write'), this.v4('v', v, 'read_write')];
    const body = `let lr = fg_lr(g);
    let b1 = fg_b1(g);
    let b2 = fg_b2(g);
    let wd = select(0.0, fg_wd(g), (flags & ${FLAG_DECAY}u) != 0u);
    var dd = d[q];
    if (wd != 0.0) { ${decoupled ? 'pv = (1.0 - lr * wd) * pv;' : 'dd = dd + wd * pv;'} }
    let mi = b1 * m[q] + (1.0 - b1) * dd;
    let vi = b2 * v[q] + (1.0 - b2) * (dd * dd);
    m[q] = mi;
    v[q] = vi;
    let stepSize = lr / (1.0 - fg_powi(b1, stepf));
    let invBc2 = 1.0 / sqrt(1.0 - fg_powi(b2, stepf));
    let denom = invBc2 * sqrt(vi) + fg_eps(g);
    pv = pv + (-stepSize) * (mi / denom);`;
    const np = vals.map((x) => x.params.length).join('');
    this.update(L, 'fused.adam', `fused.adam:${np}:${decoupled ? 'w' : ''}`, binds, vals.flatMap((x) => x.params), vals.map((x) => x.fn).join('\n'), body, o, S);
  }
}

/**
 * Combines two scaled sums of squares (m, s), each ||.||^2 = m^2 s, into one scaled by the larger m.
 */
const NORM_COMBINE = /* wgsl */ `
fn fg_norm_combine(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  let m = max(a.x, b.x);
  if (m == 0.0) { return vec2<f32>(0.0, 0.0); }
  let ra = a.x / m;
  let rb = b.x / m;
  return vec2<f32>(m, a.y * ra * ra + b.y * rb * rb);
}
`;

/** The frame of a reduction's visit of vec4 q: `term` runs when q's parameter is active (and passes `filter`). */
function visitActive(term: string, filter: string): string {
  return `let k = bp[q / 16u];
    if (k >= 0) {
      let b = u32(k) * ${PARAM_FIELDS}u;
      let grp = u32(pt[b + 2u]);
      let flags = u32(pt[b + 3u]);
      if ((flags & ${FLAG_ACTIVE}u) != 0u${filter}) {
        ${term}
      }
    }`;
}

/** Kernels without tables still get the non-finite test. */
const TABLES_NONE = /* wgsl */ `
fn fg_nonfinite(v: f32) -> bool { return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u; }
`;

registerFusedKernels('webgpu', (b) => {
  const rt = (b as unknown as { rt?: Runtime }).rt;
  return rt && typeof rt.dispatch === 'function' ? new WebGPUFusedKernels(b) : null;
});
