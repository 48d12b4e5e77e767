/**
 * The TypeScript reference renderer of arena kernels: the oracle the other renderers are checked
 * against, and the kernels of the cpu backend (and of the wasm backend for float64 arenas).
 *
 * Semantics, in both precisions:
 * - coefficients (uniform subtrees: hyper-parameters, slots, flags, step, constants) are computed
 *   once per parameter in float64, as PyTorch computes its Python-scalar coefficients, and rounded
 *   to the arena's dtype where they enter the elementwise body;
 * - in a float32 arena every elementwise operation is rounded to float32 (Math.fround), with no
 *   fused multiply-add; the wasm f32x4 kernels (wasm.ts) compute the same operations in IEEE
 *   float32 and so agree bit for bit;
 * - reductions follow the fixed order of reduce.ts.
 *
 * The body is generated JavaScript (new Function) for speed; where a Content-Security-Policy
 * forbids that, the same semantics run through an interpreter (`interpretRange`), which the tests
 * hold equal to the generated code bit for bit.
 */
import type { TypedArray } from '../../tensor/dtype.js';
import { rngKeys, type ArenaKernel } from './define.js';
import { neededNodes, type Node } from './expr.js';
import { normDirect, normExponent, partialOffsets, pow2, reductionPasses, scalable } from './reduce.js';
import { normalAt } from '../normal.js';
import { evalUniform, type UniformEnv } from './uniform.js';

/** The kernel's coefficients for one parameter: float64 values rounded by `round` (floats only; the keys of normal draws as whole numbers). */
export function coefficientValues(kernel: ArenaKernel, env: UniformEnv, round: (x: number) => number, out = new Float64Array(kernel.coefs.length)): Float64Array {
  const keys = rngKeys(kernel);
  kernel.coefs.forEach((c, j) => {
    const v = evalUniform(c, env);
    out[j] = keys.has(c) ? v >>> 0 : c.ty === 'f' ? round(v) : v;
  });
  return out;
}

/**
 * Runs the kernel over elements [start, end) of one parameter (start a multiple of 64 in an
 * arena, 0 for a lone tensor). V: one array per declared vector (in declaration order), C: the
 * coefficients, P: the partial arrays (reductions in order, norm taking two), written from block
 * `pblk` on; `write` false computes the reductions only (a guarded-off parameter). `ib` is added
 * to an element's index for its normal draws: 0 over an arena (the index is the arena's), the
 * tensor's arena offset per tensor.
 */
export type RangeFn = (V: readonly TypedArray[], start: number, end: number, C: Float64Array, P: readonly Float64Array[], pblk: number, write: boolean, ib?: number) => void;

type Precision = 'float32' | 'float64';

const compiled = new WeakMap<ArenaKernel, Partial<Record<Precision, RangeFn>>>();

let codegenAllowed: boolean | null = null;
/** Whether generated code can run here (a Content-Security-Policy without 'unsafe-eval' forbids it). */
export function canGenerateCode(): boolean {
  if (codegenAllowed === null) {
    try {
      codegenAllowed = new Function('return 1')() === 1;
    } catch {
      codegenAllowed = false;
    }
  }
  return codegenAllowed;
}

/** The reference range function of a kernel in a precision: generated code, or the interpreter. */
export function referenceKernel(kernel: ArenaKernel, precision: Precision, opts: { interpret?: boolean } = {}): RangeFn {
  if (opts.interpret || !canGenerateCode()) return (V, s, e, C, P, b, w, ib) => interpretRange(kernel, precision, V, s, e, C, P, b, w, ib);
  let byP = compiled.get(kernel);
  if (!byP) compiled.set(kernel, (byP = {}));
  return (byP[precision] ??= new Function('normDirect', 'normExponent', 'pow2', 'normalAt', renderReference(kernel, precision))(normDirect, normExponent, pow2, normalAt) as RangeFn);
}

/**
 * The generated JavaScript source of the reference: the body of a function of `normDirect`,
 * `normExponent` and `pow2` (reduce.ts) and `normalAt` (src/kernels/normal.ts) that returns the
 * range function.
 */
export function renderReference(kernel: ArenaKernel, precision: Precision): string {
  const f32 = precision === 'float32';
  const R = (x: string) => (f32 ? `R(${x})` : `(${x})`);
  const coefIdx = new Map(kernel.coefs.map((c, j) => [c, j]));
  const vecIdx = new Map(kernel.vectors.map((v, i) => [v.name, i]));
  const elemIdx = new Map(kernel.elementwise.map((n, i) => [n, i]));
  const ref = (n: Node): string => {
    const c = coefIdx.get(n);
    if (c !== undefined) return `c${c}`;
    return `t${elemIdx.get(n)}`;
  };
  const exprOf = (n: Node): string => {
    const a = 'a' in n ? ref(n.a) : '';
    const b = 'b' in n ? ref(n.b) : '';
    switch (n.op) {
      case 'vec': return `v${vecIdx.get(n.name)}[j]`;
      case 'add': return R(`${a} + ${b}`);
      case 'sub': return R(`${a} - ${b}`);
      case 'mul': return R(`${a} * ${b}`);
      case 'div': return R(`${a} / ${b}`);
      case 'min': return `Math.min(${a}, ${b})`;
      case 'max': return `Math.max(${a}, ${b})`;
      case 'neg': return `-${a}`;
      case 'abs': return `Math.abs(${a})`;
      case 'sqrt': return R(`Math.sqrt(${a})`);
      case 'sign': return `Math.sign(${a})`;
      case 'lt': return `${a} < ${b}`;
      case 'le': return `${a} <= ${b}`;
      case 'gt': return `${a} > ${b}`;
      case 'ge': return `${a} >= ${b}`;
      case 'eq': return `${a} === ${b}`;
      case 'ne': return `${a} !== ${b}`;
      case 'and': return `${a} && ${b}`;
      case 'or': return `${a} || ${b}`;
      case 'not': return `!${a}`;
      case 'nonfinite': return `${a} - ${a} !== 0`;
      case 'where': return `${ref(n.c)} ? ${a} : ${b}`;
      case 'normal': return R(`normalAt(${a}, ${b}, ib + j)`);
      default: throw new Error(`arena kernel "${kernel.name}": internal: ${n.op} is uniform-only`);
    }
  };
  /** Statements computing `nodes` (those elementwise) for element j. */
  const compute = (roots: readonly Node[]) =>
    neededNodes(roots, kernel.elementwise, coefIdx).map((n) => `const ${ref(n)} = ${exprOf(n)};`).join(' ');
  const writes = kernel.writes.map((w) => `v${w.vector}[j] = ${ref(w.value)};`).join(' ');
  const lines: string[] = ['"use strict";', 'const R = Math.fround;', 'return function (V, start, end, C, P, pblk, write, ib = 0) {'];
  kernel.vectors.forEach((_, i) => lines.push(`const v${i} = V[${i}];`));
  kernel.coefs.forEach((c, j) => lines.push(c.ty === 'f' ? `const c${j} = C[${j}];` : `const c${j} = C[${j}] !== 0;`));
  const all = [...kernel.writes.map((w) => w.value), ...kernel.reductions.map((r) => r.x)];
  if (kernel.reductions.length === 0) {
    lines.push(`for (let j = start; j < end; j++) { ${compute(all)} if (write) { ${writes} } }`);
  } else {
    const { base } = partialOffsets(kernel.reductions);
    const { early, late } = reductionPasses(kernel);
    lines.push('for (let b = start, blk = pblk; b < end; b += 64, blk++) {', 'const e = b + 64 < end ? b + 64 : end;');
    // Sixteen elements an iteration: quad m (0..3) of it, lane L of the quad (reduce.ts).
    const quad = (m: number, body: (L: number, m: number) => string) =>
      `{ const i = i16 + ${4 * m}; ${[0, 1, 2, 3].map((L) => `if (i + ${L} < e) { const j = i + ${L}; ${body(L, m)} }`).join(' ')} }`;
    const lanes = (body: (L: number, m: number) => string) => `for (let i16 = b; i16 < e; i16 += 16) { ${[0, 1, 2, 3].map((m) => quad(m, body)).join(' ')} }`;
    const A = (i: number, m: number, L: number) => `a${i}_${m}_${L}`;
    const M4 = [0, 1, 2, 3];
    const zeroAcc = (i: number) => M4.flatMap((m) => M4.map((L) => `${A(i, m, L)} = 0`)).join(', ');
    const accOf = (i: number, L: number, m: number) => {
      const r = kernel.reductions[i];
      const x = ref(r.x);
      const a = A(i, m, L);
      switch (r.reduction) {
        case 'sum': return `${a} = ${R(`${a} + ${x}`)};`;
        case 'maxabs': return `${a} = Math.max(${a}, Math.abs(${x}));`;
        case 'nonfinite': return `if (${x} - ${x} !== 0) ${a} = 1;`;
        // The direct sum of squares (reduce.ts NORM_DIRECT).
        case 'norm': return `${a} = ${R(`${a} + ${R(`${x} * ${x}`)}`)};`;
      }
    };
    // Lane L: (A0L + A1L) + (A2L + A3L); then (V0 + V1) + (V2 + V3).
    const laneSum = (i: number) => {
      const v = (L: number) => R(`${R(`${A(i, 0, L)} + ${A(i, 1, L)}`)} + ${R(`${A(i, 2, L)} + ${A(i, 3, L)}`)}`);
      return R(`${R(`${v(0)} + ${v(1)}`)} + ${R(`${v(2)} + ${v(3)}`)}`);
    };
    const finish = (i: number) => {
      const r = kernel.reductions[i];
      switch (r.reduction) {
        case 'sum': return `P[${base[i]}][blk] = ${laneSum(i)};`;
        case 'maxabs':
        case 'nonfinite': return `P[${base[i]}][blk] = Math.max(${M4.flatMap((m) => M4.map((L) => A(i, m, L))).join(', ')});`;
        case 'norm': {
          // The direct rule, else the maximum (second pass) and the sum of (x f)^2 (third).
          const B = precision === 'float32' ? 127 : 1023;
          const x = ref(r.x);
          return [
            `{ const t = ${laneSum(i)}; const h = normDirect(t, '${precision}');`,
            `if (h !== null) { P[${base[i]}][blk] = pow2(h); P[${base[i] + 1}][blk] = ${R(`t * pow2(-2 * h)`)}; }`,
            `else { let n_0 = 0, n_1 = 0, n_2 = 0, n_3 = 0; ${lanes((L) => `${compute([r.x])} n_${L} = Math.max(n_${L}, Math.abs(${x}));`)}`,
            `const m = Math.max(Math.max(n_0, n_1), Math.max(n_2, n_3)); P[${base[i]}][blk] = m;`,
            `if (m > 0 && m < Infinity) { const f = pow2(${B} - normExponent(m, '${precision}')); ${zeroAcc(i).split(', ').join('; ')}; ${lanes((L, m) => `${compute([r.x])} { const q = ${R(`${x} * f`)}; ${A(i, m, L)} = ${R(`${A(i, m, L)} + ${R('q * q')}`)}; }`)} P[${base[i] + 1}][blk] = ${laneSum(i)}; }`,
            `else P[${base[i] + 1}][blk] = 0; } }`,
          ].join('\n');
        }
      }
    };
    const pass = (idx: readonly number[], withWrites: boolean) => {
      for (const i of idx) {
        lines.push(`let ${zeroAcc(i)};`);
      }
      const roots = [...(withWrites ? kernel.writes.map((w) => w.value) : []), ...idx.map((i) => kernel.reductions[i].x)];
      lines.push(lanes((L, m) => `${compute(roots)} ${idx.map((i) => accOf(i, L, m)).join(' ')}${withWrites ? ` if (write) { ${writes} }` : ''}`));
      for (const i of idx) lines.push(finish(i));
    };
    if (early.length > 0) pass(early, false);
    if (late.length > 0 || kernel.writes.length > 0) pass(late, kernel.writes.length > 0);
    lines.push('}');
  }
  lines.push('};');
  return lines.join('\n');
}

/** The same semantics as the generated code, without generating code (CSP fallback). */
export function interpretRange(kernel: ArenaKernel, precision: Precision, V: readonly TypedArray[], start: number, end: number, C: Float64Array, P: readonly Float64Array[], pblk: number, write: boolean, ib = 0): void {
  const R = precision === 'float32' ? Math.fround : (x: number) => x;
  const coefIdx = new Map(kernel.coefs.map((c, j) => [c, j]));
  const vecIdx = new Map(kernel.vectors.map((v, i) => [v.name, i]));
  const val = new Map<Node, number | boolean>();
  const get = (n: Node): number | boolean => {
    const c = coefIdx.get(n);
    if (c !== undefined) return n.ty === 'f' ? C[c] : C[c] !== 0;
    return val.get(n)!;
  };
  const f = (n: Node) => get(n) as number;
  const evalAt = (j: number) => {
    val.clear();
    for (const n of kernel.elementwise) {
      let v: number | boolean;
      switch (n.op) {
        case 'vec': v = V[vecIdx.get(n.name)!][j]; break;
        case 'add': v = R(f(n.a) + f(n.b)); break;
        case 'sub': v = R(f(n.a) - f(n.b)); break;
        case 'mul': v = R(f(n.a) * f(n.b)); break;
        case 'div': v = R(f(n.a) / f(n.b)); break;
        case 'min': v = Math.min(f(n.a), f(n.b)); break;
        case 'max': v = Math.max(f(n.a), f(n.b)); break;
        case 'neg': v = -f(n.a); break;
        case 'abs': v = Math.abs(f(n.a)); break;
        case 'sqrt': v = R(Math.sqrt(f(n.a))); break;
        case 'sign': v = Math.sign(f(n.a)); break;
        case 'lt': v = f(n.a) < f(n.b); break;
        case 'le': v = f(n.a) <= f(n.b); break;
        case 'gt': v = f(n.a) > f(n.b); break;
        case 'ge': v = f(n.a) >= f(n.b); break;
        case 'eq': v = f(n.a) === f(n.b); break;
        case 'ne': v = f(n.a) !== f(n.b); break;
        case 'and': v = (get(n.a) as boolean) && (get(n.b) as boolean); break;
        case 'or': v = (get(n.a) as boolean) || (get(n.b) as boolean); break;
        case 'not': v = !(get(n.a) as boolean); break;
        case 'nonfinite': v = f(n.a) - f(n.a) !== 0; break;
        case 'where': v = get(n.c) ? f(n.a) : f(n.b); break;
        case 'normal': v = R(normalAt(f(n.a), f(n.b), ib + j)); break;
        default: throw new Error(`arena kernel "${kernel.name}": internal: ${n.op} is uniform-only`);
      }
      val.set(n, v);
    }
  };
  const store = (j: number) => {
    if (write) for (const w of kernel.writes) V[w.vector][j] = f(w.value);
  };
  if (kernel.reductions.length === 0) {
    for (let j = start; j < end; j++) {
      evalAt(j);
      store(j);
    }
    return;
  }
  const { base } = partialOffsets(kernel.reductions);
  const { early, late } = reductionPasses(kernel);
  const B = precision === 'float32' ? 127 : 1023;
  // Lane L: (A0L + A1L) + (A2L + A3L); then (V0 + V1) + (V2 + V3) (reduce.ts).
  const laneSum = (a: readonly number[]) => {
    const v = (L: number) => R(R(a[L] + a[4 + L]) + R(a[8 + L] + a[12 + L]));
    return R(R(v(0) + v(1)) + R(v(2) + v(3)));
  };
  for (let b = start, blk = pblk; b < end; b += 64, blk++) {
    const e = Math.min(b + 64, end);
    const pass = (idx: readonly number[], withWrites: boolean) => {
      // Accumulator 4m + L: quad m of a 16-element step, lane L (reduce.ts).
      const acc = idx.map(() => new Array<number>(16).fill(0));
      for (let j = b; j < e; j++) {
        evalAt(j);
        const L = (j - b) & 15;
        idx.forEach((i, t) => {
          const r = kernel.reductions[i];
          const x = f(r.x);
          const a = acc[t];
          if (r.reduction === 'sum') a[L] = R(a[L] + x);
          else if (r.reduction === 'maxabs') a[L] = Math.max(a[L], Math.abs(x));
          else if (r.reduction === 'nonfinite') {
            if (x - x !== 0) a[0] = 1;
          } else a[L] = R(a[L] + R(x * x));
        });
        if (withWrites) store(j);
      }
      idx.forEach((i, t) => {
        const r = kernel.reductions[i];
        const a = acc[t];
        if (r.reduction === 'sum') P[base[i]][blk] = laneSum(a);
        else if (r.reduction !== 'norm') P[base[i]][blk] = Math.max(...a);
        else {
          const t0 = laneSum(a);
          const h = normDirect(t0, precision);
          if (h !== null) {
            P[base[i]][blk] = pow2(h);
            P[base[i] + 1][blk] = R(t0 * pow2(-2 * h));
            return;
          }
          // Outside the direct rule: the maximum, then the sum of (x f)^2, in passes of their own.
          const n = [0, 0, 0, 0];
          for (let j = b; j < e; j++) {
            evalAt(j);
            n[(j - b) & 3] = Math.max(n[(j - b) & 3], Math.abs(f(r.x)));
          }
          const m = Math.max(Math.max(n[0], n[1]), Math.max(n[2], n[3]));
          P[base[i]][blk] = m;
          if (!scalable(m)) {
            P[base[i] + 1][blk] = 0;
            return;
          }
          const sc = pow2(B - normExponent(m, precision));
          const a2 = new Array<number>(16).fill(0);
          for (let j = b; j < e; j++) {
            evalAt(j);
            const q = R(f(r.x) * sc);
            a2[(j - b) & 15] = R(a2[(j - b) & 15] + R(q * q));
          }
          P[base[i] + 1][blk] = laneSum(a2);
        }
      });
    };
    if (early.length > 0) pass(early, false);
    if (late.length > 0 || kernel.writes.length > 0) pass(late, kernel.writes.length > 0);
  }
}
