/**
 * The WebGPU fused elementwise kernel (src/kernels/fusedmap.ts), loaded on first use (the step
 * compiler's plans alone dispatch it). Each operation is the op table's WGSL expression, as the
 * backend's unary, binary, where and cast kernels compute it in f32 (bools as WGSL bools between
 * operations, stored as u32 ones and zeros), each wrapped in a function of its own so that a chain
 * nests calls rather than copies of its operands. Results agree with the unfused calls within
 * float32 tolerance (the WGSL compiler may contract across the inlined operations). int32
 * operations (a BatchNorm's batch counter, a label mask) compute over the alias I with their
 * int32 form (fused-common.ts intWgsl), exactly. Storages that share a GPU buffer with a written
 * one (views of one arena) are bound read_write (fused-common.ts shareBuffers).
 *
 * The walk (fusedMapWalk): the iteration space is the program's collapsed shape, seen as rows of
 * its innermost dim. When that dim comes in fours and every access either steps through it
 * contiguously from a 4-aligned start (outer strides multiples of 4) or does not move along it,
 * each unit is a vec4 (the op table's expressions are written over the aliases T, TU and bool_t,
 * so the same text computes four lanes); otherwise a unit is one element. Each invocation takes
 * several consecutive units. A 1-D program addresses unit v as base + v * stride, with no division;
 * a program of rank >= 2 finds its first unit's row and column once and then steps along the row,
 * moving the access bases by their row strides when it wraps (recomputing them from the row for
 * rank > 2), so the division runs once per invocation, not per element. The shape, every address
 * and the walk are constants of the code, so the pipeline cache, keyed by the generated WGSL,
 * tells programs apart.
 *
 * Matmul epilogues (runMatmulEpilogue): on a CPU-emulated adapter, a matmul whose result only a
 * program reads runs as the packed matmul of matmul-emulated.ts with the program in its store, one
 * dispatch instead of two and no result storage.
 */
import type { MatmulLayout } from '../backend.js';
import type { FusedAccess, FusedExpr, FusedProgram } from '../fusedmap.js';
import { BINARY_OPS, UNARY_OPS } from '../optable.js';
import type { DirectParts } from './matmul.js';
import { installedParts, matmulPacked } from './matmul-emulated.js';
import type { Bind, GPUStorage, KernelCall, Runtime } from './runtime.js';
import { intWgsl, shareBuffers } from './fused-common.js';
// layerNormBackward with a captured step's folds (src/compile/fuse.ts), reached through this
// family: a dynamic import of layernorm.ts from outside the backend would make it look loaded by
// every program (bench/size.programs.ts), though only compiled steps ask for it.
export { layerNormBackward } from './layernorm.js';
import { MATH_FNS } from './wgsl-math.js';
import { entry, preludeFor, scalarOf } from './wgsl.js';

/** A float32 constant as exact bits (WGSL rejects non-finite constant expressions). */
function f32Literal(v: number): string {
  const x = Math.fround(v);
  if (x !== x) return 'fg_nan()';
  if (x === Infinity) return 'fg_inf()';
  if (x === -Infinity) return '(-fg_inf())';
  return `bitcast<f32>(${new Uint32Array(Float32Array.of(x).buffer)[0]}u)`;
}

/**
 * Threads per workgroup, units per thread, and whether a 1-D program's units are dealt out
 * round-robin (unit g*wg*units + u*wg + lid: neighbouring threads touch neighbouring memory, as a
 * GPU coalesces) or in runs (g*wg + lid)*units + u (what rank >= 2 walks need to step along a row).
 */
export interface FusedSpread {
  wg: number;
  units: number;
  interleave: boolean;
}

/**
 * GPUs: 256 threads and, for 1-D programs, four units each, dealt round-robin (a vec4 unit is 16
 * bytes a thread, each load instruction of a warp one contiguous stretch); rank >= 2 programs one
 * unit per thread (a GPU divides by a constant cheaply). A CPU-emulated adapter (SwiftShader) pays
 * a fixed cost per invocation: 64 threads of 16 units each. Measured on SwiftShader (2 busy cores,
 * process CPU ms per call, an SGD update chain over 200,704 / 65,536 / 2,560 elements and bias +
 * relu over [128, 256]): 64 x 16 took 3.05 / 1.03 / 0.13 and 0.63, against 3.70 / 1.23 / 0.35 and
 * 0.76 with 4 units, 3.05 / 1.09 / 0.14 and 1.09 with 32, 3.37 / 1.21 / 0.14 and 0.78 with 32 x 16;
 * fewer units to make more workgroups for a small program only cost more. Against the unfused
 * calls (another run): 2.75 / 0.70 / 0.15 and 0.82 fused, 9.32 / 2.71 / 0.70 and 1.36 unfused (the
 * scalar kernel with a division per element and index, before: 5.78 / 2.20 / 0.20 and 1.40), so
 * fusion stays on for CPU-emulated adapters.
 */
export function fusedSpread(cpuEmulated: boolean, rank: number): FusedSpread {
  if (!cpuEmulated) return rank === 1 ? { wg: 256, units: 4, interleave: true } : { wg: 256, units: 1, interleave: false };
  return { wg: 64, units: 16, interleave: false };
}

/** How a program is walked: units of vec4 or of one element, and per load whether it is a vec4 or one value. */
export interface FusedWalk {
  vec4: boolean;
  /** Per load: read as a vec4 (true) or as one element (a scalar program, or a vec4 program's splat). */
  loadVec: boolean[];
  /** Per storage (inputs, then outputs): bound as array<vec4>. */
  bindVec: boolean[];
}

export function fusedMapWalk(p: FusedProgram): FusedWalk {
  const r = p.shape.length;
  const nIn = p.inputs.length - p.outputs.length;
  const scalar: FusedWalk = { vec4: false, loadVec: p.loads.map(() => false), bindVec: p.inputs.map(() => false) };
  if (p.shape[r - 1] % 4 !== 0) return scalar;
  const aligned = (a: FusedAccess) => a.strides[r - 1] === 1 && a.offset % 4 === 0 && a.strides.every((s, d) => d === r - 1 || s % 4 === 0);
  if (!p.outputs.every(aligned)) return scalar;
  if (!p.loads.every((l) => l.strides[r - 1] === 0 || aligned(l))) return scalar;
  const loadVec = p.loads.map((l) => l.strides[r - 1] !== 0);
  const bindVec = p.inputs.map((_, k) => k >= nIn || p.loads.some((l, j) => l.input === k && loadVec[j]));
  return { vec4: true, loadVec, bindVec };
}

/** An operation's operand alias and WGSL: T and the op table's, or I and its int32 form. */
function opForm(op: string, def: { wgsl: string; int?: boolean }, dtype: string): [string, string] {
  if (dtype !== 'int32') return ['T', def.wgsl];
  const w = intWgsl(def);
  if (w === null) throw new TypeError(`fused kernel: ${op} has no int32 form in a WebGPU fused kernel`);
  return ['I', w];
}

/**
 * The statements that compute a program's outputs: `let l<k> = <load(k)>;` for each load, then one
 * `let t<i>` per operation (each op a function of its own, `fns`, over the aliases T, TU and
 * bool_t, so that the same text computes a scalar or four lanes), and each output's value (a
 * name in `values`). `opTexts`: the op table's expressions, for the math prelude.
 */
function renderProgram(p: FusedProgram, load: (k: number) => string): { fns: string[]; opTexts: string[]; body: string[]; values: string[] } {
  const fns: string[] = [];
  const opTexts: string[] = [];
  const body: string[] = [];
  let t = 0;
  p.loads.forEach((_, k) => body.push(`let l${k} = ${load(k)};`));
  const emit = (e: FusedExpr): string => {
    switch (e.k) {
      case 'load':
        return `l${e.load}`;
      case 'const':
        // An int32 constant as bits, so that -2^31 needs no literal of its own.
        return e.dtype === 'bool' ? `bool_t(${e.value !== 0})` : e.dtype === 'int32' ? `bitcast<I>(TU(${e.value >>> 0}u))` : `T(${f32Literal(e.value)})`;
      case 'unary': {
        const x = emit(e.x);
        const def = UNARY_OPS[e.op] as { wgsl: string; bool?: boolean };
        const name = `op${fns.length}`;
        // int32 operations compute over I with their int32 form (fused-common.ts; fuse.ts admits only those).
        const [ty, w] = opForm(e.op, def, e.in);
        opTexts.push(w);
        fns.push(`fn ${name}(x: ${ty}) -> ${def.bool ? 'bool_t' : ty} { let p0 = ${f32Literal(e.p0)}; let p1 = ${f32Literal(e.p1)}; return ${w}; }`);
        body.push(`let t${t} = ${name}(${x});`);
        return `t${t++}`;
      }
      case 'binary': {
        const [a, b] = [emit(e.a), emit(e.b)];
        const def = BINARY_OPS[e.op] as { wgsl: string; compare?: boolean };
        const name = `op${fns.length}`;
        const [ty, w] = opForm(e.op, def, e.in);
        opTexts.push(w);
        fns.push(`fn ${name}(a: ${ty}, b: ${ty}) -> ${def.compare ? 'bool_t' : ty} { return ${w}; }`);
        body.push(`let t${t} = ${name}(${a}, ${b});`);
        return `t${t++}`;
      }
      case 'where': {
        const [c, a, b] = [emit(e.cond), emit(e.a), emit(e.b)];
        body.push(`let t${t} = select(${b}, ${a}, ${c});`);
        return `t${t++}`;
      }
      case 'cast': {
        const x = emit(e.x);
        if (e.in === e.out) return x;
        // bool -> f32 is 0 or 1; f32 -> bool is "nonzero" on the bits (NaN true, ±0 false), as cast's.
        body.push(e.out === 'bool' ? `let t${t} = (bitcast<TU>(${x}) & TU(0x7fffffffu)) != TU(0u);` : `let t${t} = select(T(0.0), T(1.0), ${x});`);
        return `t${t++}`;
      }
    }
  };
  const values = p.outputs.map((o) => emit(o.expr));
  return { fns, opTexts, body, values };
}

const codeCache = new WeakMap<FusedProgram, { wgsl: string; groups: number }>();

/** The shader of a program (after the runtime's Params struct and bindings), and its workgroup count. */
export function fusedMapWgsl(p: FusedProgram, cpuEmulated: boolean, spread?: FusedSpread): { wgsl: string; groups: number } {
  const walk = fusedMapWalk(p);
  const lanes = walk.vec4 ? 4 : 1;
  const r = p.shape.length;
  const n = p.shape.reduce((a, c) => a * c, 1);
  const units = n / lanes;
  const cols = p.shape[r - 1] / lanes;
  const sp = spread ?? fusedSpread(cpuEmulated, r);
  const interleave = sp.interleave && r === 1;
  const nIn = p.inputs.length - p.outputs.length;

  // Every access (loads, then outputs): its index space (vec4s or elements), its step along the
  // row in units, and its row base as an i32 expression of the row's outer indices.
  const accesses: { a: FusedAccess; vec: boolean }[] = [...p.loads.map((l, k) => ({ a: l as FusedAccess, vec: walk.loadVec[k] })), ...p.outputs.map((o) => ({ a: o as FusedAccess, vec: walk.vec4 }))];
  const div = (x: number, vec: boolean) => (vec ? x / 4 : x);
  const step = (k: number) => {
    const { a, vec } = accesses[k];
    // A splat (stride 0) stays put; a vec access moves one vec4 per unit; a scalar one its stride.
    return vec ? 1 : a.strides[r - 1] * (walk.vec4 ? 0 : 1);
  };
  /** The address of access k at unit column `col` (a u32 expression) from its base `b<k>` (i32). */
  const at = (k: number, col: string, base: string): string => {
    const s = step(k);
    return s === 0 ? `u32(${base})` : `u32(${base} + i32(${col})${s === 1 ? '' : ` * ${s}`})`;
  };
  /** Row bases: the outer indices of `row` (unraveled over the outer dims) dotted with each access's strides. */
  const rowBases = (row: string, assign: boolean): string[] => {
    const lines: string[] = [];
    const outer = p.shape.slice(0, r - 1);
    const idx: string[] = [];
    if (outer.length === 1) idx.push(`i32(${row})`);
    else {
      lines.push(`var rr = ${row};`);
      for (let d = outer.length - 1; d >= 0; d--) {
        lines.push(`let o${d} = i32(rr % ${outer[d]}u);`);
        if (d > 0) lines.push(`rr = rr / ${outer[d]}u;`);
        idx[d] = `o${d}`;
      }
    }
    accesses.forEach(({ a, vec }, k) => {
      const terms = [`${div(a.offset, vec)}`, ...outer.map((_, d) => (a.strides[d] === 0 ? '' : `${idx[d]} * ${div(a.strides[d], vec)}`)).filter(Boolean)];
      lines.push(`${assign ? '' : 'var '}b${k} = ${terms.join(' + ')};`);
    });
    return assign && outer.length > 1 ? [`{`, ...lines.map((l) => `  ${l}`), `}`] : lines;
  };

  const loadText = (k: number, col: string): string => {
    const l = p.loads[k];
    const bound = walk.bindVec[l.input];
    const addr = at(k, col, `b${k}`);
    const bool = p.inputs[l.input] === 'bool';
    if (!walk.vec4) return bool ? `s${l.input}[${addr}] != 0u` : `s${l.input}[${addr}]`;
    if (walk.loadVec[k]) return bool ? `s${l.input}[${addr}] != vec4<u32>(0u)` : `s${l.input}[${addr}]`;
    // A splat: one element, from a vec4 binding where the storage is also read as vec4s.
    const one = bound ? `s${l.input}[${addr} >> 2u][${addr} & 3u]` : `s${l.input}[${addr}]`;
    return bool ? `bool_t(${one} != 0u)` : p.inputs[l.input] === 'int32' ? `I(${one})` : `T(${one})`;
  };

  const { fns, opTexts, body, values } = renderProgram(p, (k) => loadText(k, 'col'));
  p.outputs.forEach((o, k) => {
    const addr = at(p.loads.length + k, 'col', `b${p.loads.length + k}`);
    body.push(`s${nIn + k}[${addr}] = ${o.dtype === 'bool' ? `select(TU(0u), TU(1u), ${values[k]})` : values[k]};`);
  });

  const { wg, units: per } = sp;
  const groups = Math.ceil(units / (wg * per));
  let main: string;
  if (r === 1) {
    // Rank 1: unit v's address is base + v * step; no division anywhere.
    const bases = accesses.map((x, k) => `let b${k} = ${div(x.a.offset, x.vec)};`);
    const first = interleave ? `fg_group(wg, nwg) * ${wg * per}u + lid` : `(fg_group(wg, nwg) * ${wg}u + lid) * ${per}u`;
    main = `${entry(wg)} {
  let first = ${first};
  ${bases.join('\n  ')}
  for (var u = 0u; u < ${per}u; u++) {
    let col = first + u${interleave ? ` * ${wg}u` : ''};
    if (col >= ${units}u) { break; }
    ${body.join('\n    ')}
  }
}`;
  } else {
    // Rank >= 2: one division for the first unit's row; then along the row, wrapping to the next.
    const wrap = r === 2 ? accesses.map((x, k) => `b${k} += ${div(x.a.strides[0], x.vec)};`) : rowBases('row', true);
    main = `${entry(wg)} {
  let first = (fg_group(wg, nwg) * ${wg}u + lid) * ${per}u;
  if (first >= ${units}u) { return; }
  var row = first / ${cols}u;
  var col = first - row * ${cols}u;
  ${rowBases('row', false).join('\n  ')}
  for (var u = 0u; u < ${per}u; u++) {
    if (first + u >= ${units}u) { break; }
    ${body.join('\n    ')}
    col += 1u;
    if (col == ${cols}u) {
      col = 0u;
      row += 1u;
      ${wrap.join('\n      ')}
    }
  }
}`;
  }
  const prelude = preludeFor(opTexts.join('\n'), 'f32', walk.vec4, MATH_FNS);
  const wgsl = `alias T = ${walk.vec4 ? 'vec4<f32>' : 'f32'};
alias I = ${walk.vec4 ? 'vec4<i32>' : 'i32'};
alias TU = ${walk.vec4 ? 'vec4<u32>' : 'u32'};
alias bool_t = ${walk.vec4 ? 'vec4<bool>' : 'bool'};
${prelude}
${fns.join('\n')}
${main}`;
  return { wgsl, groups };
}

/**
 * The bindings of a program's storages (inputs, then outputs; a null one, the matmul result an
 * epilogue takes from registers, is left out), named s<k>, vec4 where `bindVec` says.
 */
function programBinds(p: FusedProgram, storages: (GPUStorage | null)[], bindVec: boolean[]): Bind[] {
  const nIn = p.inputs.length - p.outputs.length;
  const binds: Bind[] = [];
  storages.forEach((s, k) => {
    if (!s) return;
    const o = k - nIn;
    // An output walked with strides (a piece of a concat) keeps the elements it does not write.
    const full = o >= 0 && p.outputs[o].offset === 0 && p.outputs[o].strides.every((st, d) => st === p.shape.slice(d + 1).reduce((a, c) => a * c, 1) || p.shape[d] === 1);
    // An output that the program also loads (state updated in place) is read as well.
    const loaded = p.loads.some((l) => l.input === k);
    const type = bindVec[k] ? `vec4<${scalarOf(s.dtype)}>` : scalarOf(s.dtype);
    // A vec4 view of a storage whose length is not a multiple of 4: the walk never touches the
    // lanes past its end (every vec4 access covers four elements of the program's accesses).
    binds.push({ name: `s${k}`, s, access: o < 0 ? 'read' : full && !loaded ? 'write' : 'read_write', type, padTo16: bindVec[k] && s.numel % 4 !== 0 });
  });
  return binds;
}

/** Dispatches a program over storages (its inputs, then its outputs); `spread` overrides the adapter's walk (tests). */
export function runFusedMap(rt: Runtime, p: FusedProgram, storages: GPUStorage[], spread?: FusedSpread): void {
  const n = p.shape.reduce((a, c) => a * c, 1);
  if (n === 0) return;
  let code = spread ? undefined : codeCache.get(p);
  if (code === undefined) {
    code = fusedMapWgsl(p, rt.cpuEmulated, spread);
    if (!spread) codeCache.set(p, code);
  }
  const { wgsl, groups } = code;
  const walk = fusedMapWalk(p);
  rt.dispatch({
    name: 'fusedMap',
    key: `${p.outputs.length} outputs over [${p.shape.join(', ')}]${walk.vec4 ? ' (vec4)' : ''}`,
    binds: shareBuffers(programBinds(p, storages, walk.bindVec)),
    params: [{ name: 'n', type: 'u32', value: n }],
    groups,
    wgsl: () => wgsl,
  });
}

/**
 * The epilogue of a matmul (FusedMapKernels.matmulEpilogue; src/compile/epilogue.ts): module-scope
 * WGSL defining fg_epi(acc, r, j), which computes the program at row r and column j of its
 * [batch * m, n] space with the matmul's float32 result there taken as `acc` (program input
 * `accInput`), and stores its outputs. Scalar: one element per call, from the store of each
 * accumulator lane.
 */
export function matmulEpilogueWgsl(p: FusedProgram, accInput: number): string {
  const addr = (a: FusedAccess) => {
    const terms = [`${a.offset}`, a.strides[0] === 0 ? '' : `i32(r) * ${a.strides[0]}`, a.strides[1] === 0 ? '' : `i32(j) * ${a.strides[1]}`].filter(Boolean);
    return `u32(${terms.join(' + ')})`;
  };
  const { fns, opTexts, body, values } = renderProgram(p, (k) => {
    const l = p.loads[k];
    if (l.input === accInput) return 'acc';
    const at = `s${l.input}[${addr(l)}]`;
    return p.inputs[l.input] === 'bool' ? `${at} != 0u` : at;
  });
  const nIn = p.inputs.length - p.outputs.length;
  p.outputs.forEach((o, k) => body.push(`s${nIn + k}[${addr(o)}] = ${o.dtype === 'bool' ? `select(0u, 1u, ${values[k]})` : values[k]};`));
  return `alias T = f32;
alias I = i32;
alias TU = u32;
alias bool_t = bool;
${preludeFor(opTexts.join('\n'), 'f32', false, MATH_FNS)}
${fns.join('\n')}
fn fg_epi(acc: f32, r: u32, j: u32) {
  ${body.join('\n  ')}
}
`;
}

/**
 * Stores of the packed matmul's accumulators through fg_epi: the direct kernel's guarded store
 * (matmul.ts storeBlock), with the element handed to the epilogue instead of written to C. Row r
 * of the epilogue's space is batch entry bt's row, bt * M + row.
 */
function epilogueStore(rm: number, rn: number): string {
  const lines: string[] = [];
  const nv = Math.max(1, rn / 4);
  for (let i = 0; i < rm; i++) {
    lines.push(`if (row0 + ${i}u < P.M) {`);
    for (let v = 0; v < nv; v++) {
      for (let c = 0; c < (rn === 1 ? 1 : 4); c++) {
        const lane = rn === 1 ? `acc_${i}_${v}` : `acc_${i}_${v}[${c}]`;
        lines.push(`  if (col0 + ${4 * v + c}u < P.N) { fg_epi(${lane}, bt * P.M + row0 + ${i}u, col0 + ${4 * v + c}u); }`);
      }
    }
    lines.push('}');
  }
  return lines.join('\n  ');
}

/**
 * A matmul and its epilogue in one dispatch, on a CPU-emulated adapter: the packed form
 * (matmul-emulated.ts, the one WebGPUBackend.matmul runs there) with its pieces from matmul.ts,
 * but for the store (epilogueStore) and the bindings (A, B and the program's storages; no C). The
 * accumulators are the packed matmul's own, so the result the epilogue reads is the one the
 * unfused matmul would store. `storages`: the program's, null at `accInput`.
 */
export function runMatmulEpilogue(rt: Runtime, l: MatmulLayout, p: FusedProgram, accInput: number, a: GPUStorage, b: GPUStorage, storages: (GPUStorage | null)[]): void {
  if (a.dtype !== 'float32' || b.dtype !== 'float32') throw new TypeError(`matmul epilogue: webgpu supports float32 operands only (got ${a.dtype}, ${b.dtype})`);
  const rows = l.batch * l.m;
  if (p.shape.length !== 2 || p.shape[0] !== rows || p.shape[1] !== l.n) throw new RangeError(`matmul epilogue: a program over [${p.shape.join(', ')}] for a matmul result of [${rows}, ${l.n}]`);
  if (rows * l.n === 0) return;
  const epilogue = matmulEpilogueWgsl(p, accInput);
  const programBindings = programBinds(p, storages, p.inputs.map(() => false));
  // The result has no storage: analyze() asks only its length (for vec4 stores, not made here).
  const result = { numel: rows * l.n, dtype: 'float32' } as GPUStorage;
  const direct = installedParts;
  if (!direct) throw new Error('matmul epilogue: the CPU-emulated kernel family is not installed on this backend');
  const parts: DirectParts = {
    ...direct,
    checkMatmul: () => true,
    binds: (x, y, _out, aVec, bVec) => shareBuffers([...direct.binds(x, y, result, aVec, bVec, false).slice(0, 2), ...programBindings]),
    storeBlock: (rm, rn) => epilogueStore(rm, rn),
  };
  const epilogueRt = {
    dispatch: (call: KernelCall) => rt.dispatch({ ...call, name: 'matmul.epilogue', key: `${call.key}:${p.outputs.length} outputs`, wgsl: () => `${epilogue}${call.wgsl()}` }),
  } as Runtime;
  matmulPacked(epilogueRt, a, b, result, l, parts);
}
