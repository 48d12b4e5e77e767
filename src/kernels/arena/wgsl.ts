/**
 * The WGSL renderer of arena kernels, for the WebGPU runtime (src/kernels/webgpu/runtime.ts),
 * whose pipeline cache is keyed by the shader text: the text below is a pure function of the
 * kernel's definition (its signature) and the number of parameter groups, so two different
 * definitions never share a pipeline.
 *
 * One invocation walks one 64-element block as 16 vec4s (the block belongs to one parameter, so
 * its table lookups and coefficients are computed once); the last vec4 of a parameter is written
 * with select() so that its padding lanes keep their value. Coefficients made of hyper-parameters
 * and constants are computed by the host in float64 (as the reference computes them) and passed
 * as uniforms; the parts that read S, the flags or the step count are computed on the device in
 * float32, and WGSL may contract a * b + c into a fused multiply-add, so WebGPU agrees with the
 * float32 reference within a few ulps rather than bit for bit. Reductions follow reduce.ts: four
 * vec4 accumulators (quad j of a block to j % 4) are its sixteen accumulators; a second dispatch
 * (one workgroup) combines the block partials in the same pairwise tree.
 */
import { FLAG_ACTIVE, PARAM_FIELDS } from '../fused.js';
import { rngKeys, type ArenaKernel } from './define.js';
export { usesSteps } from './define.js';
import { children, neededNodes, topo, type Node } from './expr.js';
import { WGSL_RNG } from '../rng.js';
import { NORM_DIRECT, partialOffsets, partialsOf, reductionPasses } from './reduce.js';
import { entry } from '../webgpu/wgsl.js';
import { WGSL_TRIG } from '../webgpu/wgsl-math-core.js';

/**
 * The standard normal of src/kernels/normal.ts normalAt in float32 (Box-Muller over the same 24-bit
 * uniforms, with the accurate cosine of WGSL_TRIG): within a few ulps of the host's draw.
 */
const WGSL_GAUSS = `alias T = f32;
${WGSL_TRIG}
fn fg_gauss(k0: u32, k1: u32, i: u32) -> f32 {
  let u1 = f32((fg_bits(k0, k1, 2u * i) >> 8u) + 1u) * 5.9604644775390625e-8;
  let u2 = f32(fg_bits(k0, k1, 2u * i + 1u) >> 8u) * 5.9604644775390625e-8;
  return sqrt(-2.0 * log(u1)) * fg_cos(6.283185307179586 * u2);
}`;

/** Workgroup size of the block kernel (one block per invocation). */
export const WGSL_BLOCK_WG = 64;
/** Workgroup size of the tree pass. */
export const WGSL_TREE_WG = 256;
/**
 * ... on a CPU-emulated adapter: one SIMD group of SwiftShader, whose barriers between the tree's
 * levels then cost nothing (a tree pass over the ViT's 6400 partials takes 40% of the CPU time
 * it takes with 256). The pairs of a level are independent, so the result is the same bits.
 */
export const WGSL_TREE_WG_CPU = 4;

const V4 = 'vec4<f32>';

function f32Literal(x: number): string {
  if (Number.isNaN(x)) return 'fg_nan()';
  if (x === Infinity) return 'fg_inf()';
  if (x === -Infinity) return '(-fg_inf())';
  const bits = new Uint32Array(Float32Array.of(x).buffer)[0];
  return `bitcast<f32>(0x${bits.toString(16).padStart(8, '0')}u)`;
}

const HELPERS = /* wgsl */ `
fn fg_nonfinite(v: f32) -> bool { return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u; }
fn fg_nonfinite4(v: vec4<f32>) -> vec4<bool> { return (bitcast<vec4<u32>>(v) & vec4<u32>(0x7f800000u)) == vec4<u32>(0x7f800000u); }
fn fg_sign(v: f32) -> f32 { return select(select(v, -1.0, v < 0.0), 1.0, v > 0.0); }
fn fg_sign4(v: vec4<f32>) -> vec4<f32> { return select(select(v, vec4<f32>(-1.0), v < vec4<f32>(0.0)), vec4<f32>(1.0), v > vec4<f32>(0.0)); }
fn fg_scalable(m: f32) -> bool { return m > 0.0 && !fg_nonfinite(m); }
// reduce.ts: the clamped biased exponent e of a norm's m, its scale 2^(127 - e), and the tree's
// factor F(d) = 2^(2d) (0 below 2^-126).
fn fg_normexp(m: f32) -> i32 { return i32(clamp(bitcast<u32>(m) >> 23u, 1u, 253u)); }
fn fg_normscale(m: f32) -> f32 { return bitcast<f32>(u32(254 - fg_normexp(m)) << 23u); }
fn fg_lanesum(a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>) -> f32 { let v = (a0 + a1) + (a2 + a3); return (v.x + v.y) + (v.z + v.w); }
fn fg_normfactor(d: i32) -> f32 { return select(0.0, bitcast<f32>(u32(2 * d + 127) << 23u), 2 * d >= -126); }
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
fn fg_pow(b: f32, e: f32) -> f32 { return select(pow(b, e), fg_powi(b, e), e >= 0.0 && e == floor(e) && e < 4294967296.0); }
`;

const groupLevelMemo = new WeakMap<Node, boolean>();
/** A uniform expression of constants and hyper-parameters only: one value per parameter group. */
function groupLevel(n: Node): boolean {
  let r = groupLevelMemo.get(n);
  if (r === undefined) {
    r = n.op === 'const' || n.op === 'hyper' || (n.op !== 'slot' && n.op !== 'step' && n.op !== 'flag' && n.op !== 'vec' && n.op !== 'draw' && children(n).every(groupLevel));
    groupLevelMemo.set(n, r);
  }
  return r;
}

/**
 * The maximal per-group subtrees of the kernel's coefficients and guard (hyper-parameters and
 * constants only, not a lone constant): the host computes them in float64, as the reference does,
 * and passes them as uniforms u<j>_<group>; only what depends on S, the flags or the step count is
 * computed on the device in float32.
 */
export function wgslHostUniforms(kernel: ArenaKernel): Node[] {
  const out: Node[] = [];
  const seen = new Set<Node>();
  const visit = (n: Node) => {
    if (seen.has(n)) return;
    seen.add(n);
    if (groupLevel(n)) {
      if (n.op !== 'const') out.push(n);
      return;
    }
    // A draw's keys are whole numbers up to 2^32: they travel as u32 uniforms (wgslKeyUniforms).
    if (n.op === 'draw') return;
    children(n).forEach(visit);
  };
  const keys = rngKeys(kernel);
  [...kernel.coefs.filter((c) => !keys.has(c)), ...(kernel.guard ? [kernel.guard] : []), ...(kernel.countIf ? [kernel.countIf] : [])].forEach(visit);
  return out;
}

/** The keys of the kernel's per-parameter draws (paramUniform) and normal draws (k.normal): u32 uniforms k<j>_<group>. */
export function wgslKeyUniforms(kernel: ArenaKernel): Node[] {
  const out = new Set<Node>(rngKeys(kernel));
  const roots = [...kernel.coefs, ...(kernel.guard ? [kernel.guard] : []), ...(kernel.countIf ? [kernel.countIf] : [])];
  for (const n of topo(roots)) {
    if (n.op !== 'draw') continue;
    for (const key of [n.a, n.b]) {
      if (!groupLevel(key)) throw new Error(`arena kernel "${kernel.name}": paramUniform keys must be hyper-parameters or constants on WebGPU, got ${key.op}`);
      out.add(key);
    }
  }
  return [...out];
}

/** A uniform expression as scalar WGSL (k, grp, flags in scope). */
function uniformWgsl(kernel: ArenaKernel, n: Node, host: ReadonlyMap<Node, number>): string {
  const hj = host.get(n);
  if (hj !== undefined) return n.ty === 'b' ? `(fg_u${hj}(grp) != 0.0)` : `fg_u${hj}(grp)`;
  const u = (x: Node) => uniformWgsl(kernel, x, host);
  if (n.op === 'draw') {
    const keys = wgslKeyUniforms(kernel);
    return `fg_uniform(fg_k${keys.indexOf(n.a)}(grp), fg_k${keys.indexOf(n.b)}(grp), u32(k))`;
  }
  const a = 'a' in n ? u(n.a) : '';
  const b = 'b' in n ? u(n.b) : '';
  switch (n.op) {
    case 'const': return f32Literal(n.value);
    case 'hyper': throw new Error(`arena kernel "${kernel.name}": internal: hyper-parameter ${n.name} not hoisted`);
    case 'slot': return `S[${kernel.slots[n.name]}u]`;
    case 'flag': return `((flags & ${n.flag}u) != 0u)`;
    case 'step': return 'steps[u32(k)]';
    case 'add': return `(${a} + ${b})`;
    case 'sub': return `(${a} - ${b})`;
    case 'mul': return `(${a} * ${b})`;
    case 'div': return `(${a} / ${b})`;
    case 'min': return `min(${a}, ${b})`;
    case 'max': return `max(${a}, ${b})`;
    case 'neg': return `(-${a})`;
    case 'abs': return `abs(${a})`;
    case 'sqrt': return `sqrt(${a})`;
    case 'sign': return `fg_sign(${a})`;
    case 'lt': return `(${a} < ${b})`;
    case 'le': return `(${a} <= ${b})`;
    case 'gt': return `(${a} > ${b})`;
    case 'ge': return `(${a} >= ${b})`;
    case 'eq': return `(${a} == ${b})`;
    case 'ne': return `(${a} != ${b})`;
    case 'and': return `(${a} && ${b})`;
    case 'or': return `(${a} || ${b})`;
    case 'not': return `(!${a})`;
    case 'nonfinite': return `fg_nonfinite(${a})`;
    case 'where': return `select(${b}, ${a}, ${u(n.c)})`;
    case 'pow': return `fg_pow(${a}, ${b})`;
    case 'normal': throw new Error(`arena kernel "${kernel.name}": internal: a normal draw in a uniform expression`);
    case 'vec': throw new Error(`arena kernel "${kernel.name}": internal: vector ${n.name} in a uniform expression`);
  }
}

/** Per-group lookups of the host-computed uniforms: u<j>_<g> and fg_u<j>(g). */
function hostUniformFns(kernel: ArenaKernel, groups: number): { fns: string; index: Map<Node, number> } {
  const nodes = wgslHostUniforms(kernel);
  const pick = (u: string, j: number, ty: string) => {
    const picks = Array.from({ length: groups }, (_, g) => (g === 0 ? `var r = P.${u}${j}_0;` : `if (g == ${g}u) { r = P.${u}${j}_${g}; }`)).join(' ');
    return `fn fg_${u}${j}(g: u32) -> ${ty} { ${picks} return r; }`;
  };
  const keys = wgslKeyUniforms(kernel);
  const fns = [...nodes.map((_, j) => pick('u', j, 'f32')), ...keys.map((_, j) => pick('k', j, 'u32')), ...(keys.length ? [WGSL_RNG] : []), ...(rngKeys(kernel).size ? [WGSL_GAUSS] : [])].join('\n');
  return { fns, index: new Map(nodes.map((n, j) => [n, j])) };
}


/**
 * The block kernel. Bindings the runtime declares (in this order): v_<name> (array<vec4<f32>>) for
 * each declared vector, S, bp, pt, then steps when the kernel uses step counts, then part when it
 * has reductions. Uniforms: nblocks, pstride, pbase, ibase (added to element indexes for normal
 * draws), then the host-computed u<j>_<g> and the keys k<j>_<g>.
 */
export function renderWgsl(kernel: ArenaKernel, groups: number): string {
  const hu = hostUniformFns(kernel, groups);
  const coefIdx = new Map(kernel.coefs.map((c, j) => [c, j]));
  const elemIdx = new Map(kernel.elementwise.map((n, i) => [n, i]));
  const ref = (n: Node) => (coefIdx.has(n) ? `c${coefIdx.get(n)}` : `t${elemIdx.get(n)}`);
  const exprOf = (n: Node): string => {
    const a = 'a' in n ? ref(n.a) : '';
    const b = 'b' in n ? ref(n.b) : '';
    switch (n.op) {
      case 'vec': return `v_${n.name}[q]`;
      case 'add': return `${a} + ${b}`;
      case 'sub': return `${a} - ${b}`;
      case 'mul': return `${a} * ${b}`;
      case 'div': return `${a} / ${b}`;
      case 'min': return `min(${a}, ${b})`;
      case 'max': return `max(${a}, ${b})`;
      case 'neg': return `-${a}`;
      case 'abs': return `abs(${a})`;
      case 'sqrt': return `sqrt(${a})`;
      case 'sign': return `fg_sign4(${a})`;
      case 'lt': return `${a} < ${b}`;
      case 'le': return `${a} <= ${b}`;
      case 'gt': return `${a} > ${b}`;
      case 'ge': return `${a} >= ${b}`;
      case 'eq': return `${a} == ${b}`;
      case 'ne': return `${a} != ${b}`;
      case 'and': return `${a} & ${b}`;
      case 'or': return `${a} | ${b}`;
      case 'not': return `!${a}`;
      case 'nonfinite': return `fg_nonfinite4(${a})`;
      case 'where': return `select(${b}, ${a}, ${ref(n.c)})`;
      case 'normal': {
        const keys = wgslKeyUniforms(kernel);
        const draw = (L: number) => `fg_gauss(fg_k${keys.indexOf(n.a)}(grp), fg_k${keys.indexOf(n.b)}(grp), P.ibase + i0 + ${L}u)`;
        return `${V4}(${[0, 1, 2, 3].map(draw).join(', ')})`;
      }
      default: throw new Error(`arena kernel "${kernel.name}": internal: ${n.op} is uniform-only`);
    }
  };
  const compute = (roots: readonly Node[]) =>
    neededNodes(roots, kernel.elementwise, coefIdx).map((n) => `let ${ref(n)} = ${exprOf(n)};`).join('\n      ');
  const R = kernel.reductions;
  const { base } = partialOffsets(R);
  // Partials of the arena's blocks: this dispatch's block blk is block pbase + blk of pstride (the
  // per-tensor baseline runs one dispatch per tensor into the arena's block order).
  const part = (c: number) => `part[${c}u * P.pstride + P.pbase + blk]`;
  const identity = R.flatMap((r, i) => Array.from({ length: partialsOf(r.reduction) }, (_, c) => `${part(base[i] + c)} = 0.0;`)).join(' ');
  const keyCoefs = rngKeys(kernel);
  const coefDecls = kernel.coefs
    .filter((c) => !keyCoefs.has(c))
    .map((c) => (c.ty === 'f' ? `let ${ref(c)} = vec4<f32>(${uniformWgsl(kernel, c, hu.index)});` : `let ${ref(c)} = vec4<bool>(${uniformWgsl(kernel, c, hu.index)});`))
    .join('\n  ');
  // Each pass is rendered twice: for a full block (all 64 elements inside the parameter: no lane
  // masks, and a written vector is not read first) and for a parameter's last block (masked).
  // Same bits either way; on SwiftShader the SAM step's perturb and SGD passes took 5-35% less.
  const writes = (full: boolean) =>
    kernel.writes
      .map((w) => {
        const v = `v_${kernel.vectors[w.vector].name}`;
        return full ? `${v}[q] = ${ref(w.value)};` : `${v}[q] = select(${v}[q], ${ref(w.value)}, valid);`;
      })
      .join('\n        ');
  // The 16 quads of a block. With accumulators, unrolled by four so that quad j's accumulator
  // (m = j % 4) is a variable of its own: an array indexed by j is kept in memory by a
  // CPU-emulated adapter (a norm pass 5-20% slower on SwiftShader); without, rolled (a pass that
  // only writes was 20-30% slower unrolled there).
  const quad = (j: string, body: string, full: boolean) => `let q = blk * 16u + ${j};
        let i0 = q * 4u;${full ? '' : `
        let valid = vec4<u32>(i0, i0 + 1u, i0 + 2u, i0 + 3u) < vec4<u32>(end);`}
        ${body}`;
  const loop = (body: (m: number) => string, full: boolean, unroll = true) =>
    unroll
      ? `for (var jj = 0u; jj < 16u; jj = jj + 4u) {${[0, 1, 2, 3].map((m) => `
      {
        ${quad(`jj + ${m}u`, body(m), full)}
      }`).join('')}
    }`
      : `for (var j = 0u; j < 16u; j++) {
        ${quad('j', body(0), full)}
    }`;
  const accs = (i: number) => [0, 1, 2, 3].map((m) => `a${i}_${m}`);
  const zero = `${V4}(0.0)`;
  const { early, late } = reductionPasses(kernel);
  // Four accumulators a<i>_<m> per reduction, quad j of the block to m = j % 4 (reduce.ts's order);
  // a norm sums x^2 for its direct rule (reduce.ts NORM_DIRECT).
  /** x where the lane is inside the parameter, else 0. */
  const masked = (x: string, full: boolean) => (full ? x : `select(${zero}, ${x}, valid)`);
  const accStep = (i: number, m: number, full: boolean) => {
    const r = R[i];
    const x = ref(r.x);
    const a = `a${i}_${m}`;
    switch (r.reduction) {
      case 'sum': return `${a} = ${a} + ${masked(x, full)};`;
      case 'maxabs': return `${a} = max(${a}, ${masked(`abs(${x})`, full)});`;
      case 'nonfinite': return `${a} = max(${a}, select(${zero}, ${V4}(1.0), fg_nonfinite4(${x})${full ? '' : ' & valid'}));`;
      case 'norm': return `${a} = ${a} + ${masked(`${x} * ${x}`, full)};`;
    }
  };
  const laneSum = (i: number) => `fg_lanesum(${accs(i).join(', ')})`;
  const finish = (i: number, full: boolean) => {
    const r = R[i];
    switch (r.reduction) {
      case 'sum': return `${part(base[i])} = ${laneSum(i)};`;
      case 'maxabs':
      case 'nonfinite': return `{ let v = max(max(a${i}_0, a${i}_1), max(a${i}_2, a${i}_3)); ${part(base[i])} = max(max(v.x, v.y), max(v.z, v.w)); }`;
      case 'norm': return `{
    let t = ${laneSum(i)};
    let d = i32(bitcast<u32>(t) >> 23u) - 127;
    if (d >= -${NORM_DIRECT} && d <= ${NORM_DIRECT}) {
      let h = d >> 1u;
      ${part(base[i])} = bitcast<f32>(u32(h + 127) << 23u);
      ${part(base[i] + 1)} = t * bitcast<f32>(u32(127 - 2 * h) << 23u);
    } else {
      var n = ${zero};
      ${loop(() => `${compute([r.x])}
      n = max(n, ${masked(`abs(${ref(r.x)})`, full)});`, full, false)}
      let m = max(max(n.x, n.y), max(n.z, n.w));
      ${part(base[i])} = m;
      if (fg_scalable(m)) {
        let f = fg_normscale(m);
        ${accs(i).map((a) => `${a} = ${zero};`).join(' ')}
        ${loop((m) => `${compute([r.x])}
      let s = ${ref(r.x)} * ${V4}(f);
      a${i}_${m} = a${i}_${m} + ${masked('s * s', full)};`, full)}
        ${part(base[i] + 1)} = ${laneSum(i)};
      } else {
        ${part(base[i] + 1)} = 0.0;
      }
    }
  }`;
    }
  };
  const pass = (idx: readonly number[], withWrites: boolean, full: boolean) => {
    const decls = idx
      .map((i) => accs(i).map((a) => `var ${a} = ${zero};`).join(' '))
      .join('\n  ');
    const roots = [...(withWrites ? kernel.writes.map((w) => w.value) : []), ...idx.map((i) => R[i].x)];
    const body = (m: number) => `${compute(roots)}
      ${idx.map((i) => accStep(i, m, full)).join('\n      ')}${withWrites ? `
      if (wr) {
        ${writes(full)}
      }` : ''}`;
    return `${decls}
  ${loop(body, full, idx.length > 0)}
  ${idx.map((i) => finish(i, full)).join('\n  ')}`;
  };
  const passes = (full: boolean) =>
    [early.length > 0 ? pass(early, false, full) : '', late.length > 0 || kernel.writes.length > 0 ? pass(late, kernel.writes.length > 0, full) : ''].join('\n  ');
  const skip = (cond: string) => `if (${cond}) { ${identity} return; }`;
  return `${HELPERS}
${hu.fns}
${entry(WGSL_BLOCK_WG)} {
  let blk = fg_group(wg, nwg) * ${WGSL_BLOCK_WG}u + lid;
  if (blk >= P.nblocks) { return; }
  let k = bp[blk];
  ${skip('k < 0')}
  let tb = u32(k) * ${PARAM_FIELDS}u;
  let off = u32(pt[tb]);
  let end = off + u32(pt[tb + 1u]);
  let grp = u32(pt[tb + 2u]);
  let flags = u32(pt[tb + 3u]);
  ${kernel.includeInactive ? '' : skip(`(flags & ${FLAG_ACTIVE}u) == 0u`)}
  let wr = ${kernel.guard ? uniformWgsl(kernel, kernel.guard, hu.index) : 'true'};
  ${R.length === 0 ? 'if (!wr) { return; }' : ''}
  ${coefDecls}
  if (blk * 64u + 64u <= end) {
  ${passes(true)}
  } else {
  ${passes(false)}
  }
}`;
}

/**
 * The reductions' tree pass: one workgroup of `wg` invocations combines the block partials as
 * reduce.ts and writes the slots.
 */
export function renderWgslTree(kernel: ArenaKernel, wg = WGSL_TREE_WG): string {
  const R = kernel.reductions;
  const { base } = partialOffsets(R);
  const at = (c: number, idx: string) => `part[${c}u * n + ${idx}]`;
  const combine = R.map((r, i) => {
    const x = at(base[i], 'i');
    const y = at(base[i], 'i + w');
    switch (r.reduction) {
      case 'sum': return `${x} = ${x} + ${y};`;
      case 'maxabs':
      case 'nonfinite': return `${x} = max(${x}, ${y});`;
      case 'norm': {
        const s1 = at(base[i] + 1, 'i');
        const s2 = at(base[i] + 1, 'i + w');
        return `{ let m1 = ${x}; let m2 = ${y}; let m = max(m1, m2);
        if (fg_scalable(m)) { let e = fg_normexp(m); ${s1} = ${s1} * fg_normfactor(fg_normexp(m1) - e) + ${s2} * fg_normfactor(fg_normexp(m2) - e); } else { ${s1} = 0.0; }
        ${x} = m; }`;
      }
    }
  }).join('\n        ');
  const finals = R.map((r, i) => {
    const v = at(base[i], '0u');
    if (r.reduction !== 'norm') return `S[${r.slot}u] = ${v};`;
    return `S[${r.slot}u] = select(${v}, sqrt(${at(base[i] + 1, '0u')}) * bitcast<f32>(u32(fg_normexp(${v})) << 23u), fg_scalable(${v}));`;
  }).join('\n    ');
  return `${HELPERS}
${entry(wg)} {
  let n = P.nblocks;
  for (var w = 1u; w < n; w = w * 2u) {
    for (var i = lid * 2u * w; i + w < n; i = i + ${2 * wg}u * w) {
        ${combine}
    }
    storageBarrier();
    workgroupBarrier();
  }
  if (lid == 0u) {
    ${finals}
    ${afterWgsl(kernel)}
  }
}`;
}

/** The kernel's scalar program as WGSL statements over S (in order; float32). */
function afterWgsl(kernel: ArenaKernel): string {
  return kernel.after.map((a) => `S[${a.slot}u] = ${uniformWgsl(kernel, a.value, new Map())};`).join('\n    ');
}

/** A scalar program alone (or the one of a kernel without reductions): one invocation over S. */
export function renderWgslScalars(kernel: ArenaKernel): string {
  return `${HELPERS}
${entry(1)} {
  if (lid != 0u || fg_group(wg, nwg) != 0u) { return; }
  ${afterWgsl(kernel)}
}`;
}

/** The step-count pass: adds one to each active parameter's count where the guard holds. */
export function renderWgslSteps(kernel: ArenaKernel, groups: number): string {
  const hu = hostUniformFns(kernel, groups);
  return `${HELPERS}
${hu.fns}
${entry(WGSL_BLOCK_WG)} {
  let kk = fg_group(wg, nwg) * ${WGSL_BLOCK_WG}u + lid;
  if (kk >= P.nparams) { return; }
  let k = i32(kk);
  let tb = kk * ${PARAM_FIELDS}u;
  let grp = u32(pt[tb + 2u]);
  let flags = u32(pt[tb + 3u]);
  if ((flags & ${FLAG_ACTIVE}u) != 0u && ${kernel.guard ? uniformWgsl(kernel, kernel.guard, hu.index) : 'true'} && ${kernel.countIf ? uniformWgsl(kernel, kernel.countIf, hu.index) : 'true'}) { steps[kk] = steps[kk] + 1.0; }
}`;
}

