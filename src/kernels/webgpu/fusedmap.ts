/**
 * The WebGPU fused elementwise kernel (src/kernels/fusedmap.ts), loaded on first use (the step
 * compiler's plans alone dispatch it). Each operation is the op table's WGSL expression, as the
 * backend's unary, binary, where and cast kernels compute it in f32 (bools as WGSL bools between
 * operations, stored as u32 ones and zeros), each wrapped in a function of its own so that a chain
 * nests calls rather than copies of its operands. One thread per element (or a run of them on a
 * CPU-emulated adapter); the shape and every address are constants of the code, so the pipeline
 * cache, keyed by the generated WGSL, tells programs apart. Results agree with the unfused calls
 * within float32 tolerance (the WGSL compiler may contract across the inlined operations).
 */
import type { FusedExpr, FusedProgram } from '../fusedmap.js';
import { BINARY_OPS, UNARY_OPS } from '../optable.js';
import type { Bind, GPUStorage, Runtime } from './runtime.js';
import { MATH_FNS } from './wgsl-math.js';
import { preludeFor, scalarOf, spreadFor, spreadGroups, spreadMain } from './wgsl.js';

/** A float32 constant as exact bits (WGSL rejects non-finite constant expressions). */
function f32Literal(v: number): string {
  const x = Math.fround(v);
  if (x !== x) return 'fg_nan()';
  if (x === Infinity) return 'fg_inf()';
  if (x === -Infinity) return '(-fg_inf())';
  return `bitcast<f32>(${new Uint32Array(Float32Array.of(x).buffer)[0]}u)`;
}

const codeCache = new WeakMap<FusedProgram, string>();

/** The shader of a program (after the runtime's Params struct and bindings). */
export function fusedMapWgsl(p: FusedProgram, cpuEmulated: boolean): string {
  const fns: string[] = [];
  const opTexts: string[] = [];
  const body: string[] = [];
  let t = 0;
  const nIn = p.inputs.length - p.outputs.length;
  const rank = p.shape.length;
  // Unravel the element index v over the shape, innermost first.
  body.push('var r = v;');
  for (let d = rank - 1; d >= 0; d--) {
    body.push(`let i${d} = i32(r % ${p.shape[d]}u);`);
    if (d > 0) body.push(`r = r / ${p.shape[d]}u;`);
  }
  const addr = (a: { offset: number; strides: number[] }) =>
    `u32(${[`${a.offset}`, ...a.strides.map((s, d) => (s === 0 ? '' : `i${d} * ${s}`)).filter(Boolean)].join(' + ')})`;
  p.loads.forEach((l, k) => {
    const load = `s${l.input}[${addr(l)}]`;
    body.push(`let l${k} = ${p.inputs[l.input] === 'bool' ? `${load} != 0u` : load};`);
  });
  const emit = (e: FusedExpr): string => {
    switch (e.k) {
      case 'load':
        return `l${e.load}`;
      case 'const':
        return e.dtype === 'bool' ? (e.value !== 0 ? 'true' : 'false') : f32Literal(e.value);
      case 'unary': {
        const x = emit(e.x);
        const def = UNARY_OPS[e.op] as { wgsl: string; bool?: boolean };
        const name = `op${fns.length}`;
        opTexts.push(def.wgsl);
        fns.push(`fn ${name}(x: f32) -> ${def.bool ? 'bool' : 'f32'} { let p0 = ${f32Literal(e.p0)}; let p1 = ${f32Literal(e.p1)}; return ${def.wgsl}; }`);
        body.push(`let t${t} = ${name}(${x});`);
        return `t${t++}`;
      }
      case 'binary': {
        const [a, b] = [emit(e.a), emit(e.b)];
        const def = BINARY_OPS[e.op] as { wgsl: string; compare?: boolean };
        const name = `op${fns.length}`;
        opTexts.push(def.wgsl);
        fns.push(`fn ${name}(a: f32, b: f32) -> ${def.compare ? 'bool' : 'f32'} { return ${def.wgsl}; }`);
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
        body.push(e.out === 'bool' ? `let t${t} = (bitcast<u32>(${x}) & 0x7fffffffu) != 0u;` : `let t${t} = select(0.0, 1.0, ${x});`);
        return `t${t++}`;
      }
    }
  };
  const values = p.outputs.map((o) => emit(o.expr));
  p.outputs.forEach((o, k) => body.push(`s${nIn + k}[${addr(o)}] = ${o.dtype === 'bool' ? `select(0u, 1u, ${values[k]})` : values[k]};`));
  const prelude = preludeFor(opTexts.join('\n'), 'f32', false, MATH_FNS);
  return `alias T = f32;
alias TU = u32;
alias bool_t = bool;
${prelude}
${fns.join('\n')}
${spreadMain(spreadFor(cpuEmulated), body.join('\n    '))}`;
}

/** Dispatches a program over storages (its inputs, then its outputs). */
export function runFusedMap(rt: Runtime, p: FusedProgram, storages: GPUStorage[]): void {
  const n = p.shape.reduce((a, c) => a * c, 1);
  if (n === 0) return;
  let code = codeCache.get(p);
  if (code === undefined) codeCache.set(p, (code = fusedMapWgsl(p, rt.cpuEmulated)));
  const wgsl = code;
  const nIn = p.inputs.length - p.outputs.length;
  const binds: Bind[] = storages.map((s, k) => {
    const o = k - nIn;
    // An output walked with strides (a piece of a concat) keeps the elements it does not write.
    const full = o >= 0 && p.outputs[o].offset === 0 && p.outputs[o].strides.every((st, d) => st === p.shape.slice(d + 1).reduce((a, c) => a * c, 1) || p.shape[d] === 1);
    // An output that the program also loads (state updated in place) is read as well.
    const loaded = p.loads.some((l) => l.input === k);
    return { name: `s${k}`, s, access: o < 0 ? 'read' : full && !loaded ? 'write' : 'read_write', type: scalarOf(s.dtype) };
  });
  rt.dispatch({
    name: 'fusedMap',
    key: `${p.outputs.length} outputs over [${p.shape.join(', ')}]`,
    binds,
    params: [{ name: 'n', type: 'u32', value: n }],
    groups: spreadGroups(n, spreadFor(rt.cpuEmulated)),
    wgsl: () => wgsl,
  });
}
