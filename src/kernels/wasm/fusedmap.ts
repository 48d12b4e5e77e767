/**
 * The wasm backend's fused elementwise kernel (src/kernels/fusedmap.ts): one generated function
 * per program, four elements at a time, whose operations are the very f32x4 / i32x4 bodies of the
 * backend's unary, binary, compare and where kernels (module.ts), with the parameters splatted
 * as float32 as those kernels take them. A fused chain therefore gives the bits of the calls it
 * replaces. Ops whose wasm kernel runs the reference in JS (or finishes lanes in JS: sin, cos) are
 * not fused here.
 *
 * The program's shape and addresses are constants of the code: fused(ptr_0, ..., ptr_k-1) walks
 * the outer dims and, along the last, loads a contiguous input as a vector, a broadcast one as a
 * splat and a strided one lane by lane. A last dim that is not a multiple of four ends with one
 * window whose lanes past the end repeat the last element (loads stay inside the storages) and
 * whose valid lanes are stored one by one. Modules are cached per memory by their bytes.
 */
import type { DType } from '../../tensor/dtype.js';
import type { Backend } from '../backend.js';
import type { FusableCall, FusedAccess, FusedExpr, FusedMapKernels, FusedProgram } from '../fusedmap.js';
import { f32, f32x4, i32, i32x4, ModuleBuilder, v128, ValType, type FuncBuilder, type Local, type Operand } from './emit.js';
import { generatedModules, splitRange, type GeneratedCall } from './threads.js';
import {
  BINARY_F32, BINARY_I32, COMPARE_F32, COMPARE_I32, SIMD_BINARY_F32, SIMD_BINARY_I32, SIMD_COMPARE, SIMD_UNARY_BOOL_F32, SIMD_UNARY_F32,
  SIMD_UNARY_LIMIT, UNARY_BOOL_F32_BODIES, UNARY_F32_BODIES, ELEMENTWISE_COST,
} from './module.js';

const { i32: I32, v128: V128 } = ValType;
const EXPORT = 'fused';
const ONES = () => v128.i32x4([1, 1, 1, 1]);
const has = (list: readonly string[], x: string | undefined) => x !== undefined && list.includes(x);

function supports(c: FusableCall): boolean {
  const [a, b] = c.inDtypes;
  switch (c.kind) {
    case 'unary':
      if (a !== 'float32') return false;
      if (c.outDtype === 'bool') return has(SIMD_UNARY_BOOL_F32, c.op);
      return c.outDtype === 'float32' && has(SIMD_UNARY_F32, c.op) && !(c.op! in SIMD_UNARY_LIMIT);
    case 'binary':
      if (a !== b || (a !== 'float32' && a !== 'int32')) return false;
      if (c.outDtype === 'bool') return has(SIMD_COMPARE, c.op);
      return c.outDtype === a && has(a === 'float32' ? SIMD_BINARY_F32 : SIMD_BINARY_I32, c.op);
    case 'where':
      return a === 'bool' && b === c.outDtype && c.inDtypes[2] === c.outDtype && (b === 'float32' || b === 'int32');
    case 'cast':
      return ((a === 'bool' || a === 'int32') && c.outDtype === 'float32') || (a === 'float32' && c.outDtype === 'bool');
    case 'copy':
      return a === c.outDtype && (a === 'float32' || a === 'int32' || a === 'bool');
  }
}

const size = (d: DType) => (d === 'bool' ? 1 : 4);

/** The module's bytes for a program. */
export function renderFusedMap(p: FusedProgram, shared: boolean): Uint8Array {
  const mb = new ModuleBuilder();
  mb.importMemory('env', 'memory', shared ? { initial: 1, maximum: 65536, shared: true } : { initial: 1 });
  const rank = p.shape.length;
  const n = p.shape[rank - 1];
  const nVec = n - (n % 4);
  const rem = n % 4;
  const nIn = p.inputs.length - p.outputs.length;
  mb.func(EXPORT, p.inputs.map(() => I32), [], (f, ...ptrs) => {
    const loads = p.loads.map((l) => ({ ...l, dtype: p.inputs[l.input], ptr: ptrs[l.input] }));
    const outs = p.outputs.map((o, k) => ({ ...o, ptr: ptrs[nIn + k] }));
    const loadBase = loads.map(() => f.local(I32));
    const outBase = outs.map(() => f.local(I32));
    const loadVal = loads.map(() => f.local(V128));
    const outer = Array.from({ length: rank - 1 }, () => f.local(I32));
    const i = f.local(I32);
    // Unary parameters, splatted once (as float32, as the unary kernels receive them).
    const params = new Map<number, Local>();
    const param = (x: number): Local => {
      const key = Math.fround(x);
      let l = params.get(key);
      if (!l) {
        l = f.local(V128);
        params.set(key, l);
        f.set(l, f32x4.splat(f32.const(key)));
      }
      return l;
    };
    const collectParams = (e: FusedExpr): void => {
      if (e.k === 'unary') {
        param(e.p0);
        param(e.p1);
        collectParams(e.x);
      } else if (e.k === 'binary') {
        collectParams(e.a);
        collectParams(e.b);
      } else if (e.k === 'where') [e.cond, e.a, e.b].forEach(collectParams);
      else if (e.k === 'cast') collectParams(e.x);
    };
    for (const o of outs) collectParams(o.expr);

    const rowBase = (ptr: Local, d: DType, offset: number, strides: number[]): Operand => {
      let addr: Operand = i32.add(ptr, offset * size(d));
      outer.forEach((o, k) => {
        if (strides[k] !== 0) addr = i32.add(addr, i32.mul(o, strides[k] * size(d)));
      });
      return addr;
    };
    /** Address of element (i + lane) along the last dim, or of a fixed element of the tail window. */
    const at = (base: Local, stride: number, d: DType, lane: number | null, fixed: number | null): Operand => {
      const step = stride * size(d);
      if (fixed !== null) return i32.add(base, fixed * step);
      return i32.add(base, i32.add(i32.mul(i, step), (lane ?? 0) * step));
    };
    const gather = (base: Local, stride: number, d: DType, element: (lane: number) => Operand): Operand => {
      const one = (lane: number) => (d === 'bool' ? i32.load8u(element(lane)) : i32.load(element(lane)));
      let v: Operand = i32x4.splat(one(0));
      for (let lane = 1; lane < 4; lane++) v = i32x4.replaceLane(v, lane, one(lane));
      return v;
    };
    /** Sets the loads' values for the window at i (tail: the `rem` valid lanes, the rest repeating the last). */
    const loadWindow = (tail: boolean) => {
      loads.forEach((l, k) => {
        const s = l.strides[rank - 1];
        const base = loadBase[k];
        let v: Operand;
        if (s === 0) v = l.dtype === 'bool' ? i32x4.splat(i32.load8u(base)) : v128.load32Splat(base);
        else if (tail) v = gather(base, s, l.dtype, (lane) => at(base, s, l.dtype, null, nVec + Math.min(lane, rem - 1)));
        else if (s === 1 && l.dtype !== 'bool') v = v128.load(at(base, 1, l.dtype, 0, null));
        else v = gather(base, s, l.dtype, (lane) => at(base, s, l.dtype, lane, null));
        f.set(loadVal[k], v);
      });
    };
    const value = (e: FusedExpr): Local => {
      const out = f.local(V128);
      f.set(out, emitExpr(f, e, loadVal, param, value));
      return out;
    };
    const storeWindow = (tail: boolean) => {
      const vals = outs.map((o) => value(o.expr));
      outs.forEach((o, k) => {
        const s = o.strides[rank - 1];
        const base = outBase[k];
        const bool = o.dtype === 'bool';
        if (!tail && s === 1 && !bool) {
          f.exec(v128.store(at(base, 1, o.dtype, 0, null), vals[k]));
          return;
        }
        for (let lane = 0; lane < (tail ? rem : 4); lane++) {
          const addr = tail ? at(base, s, o.dtype, null, nVec + lane) : at(base, s, o.dtype, lane, null);
          f.exec(bool ? v128.store8Lane(addr, vals[k], 4 * lane) : v128.store32Lane(addr, vals[k], lane));
        }
      });
    };
    const row = () => {
      loads.forEach((l, k) => f.set(loadBase[k], rowBase(l.ptr, l.dtype, l.offset, l.strides)));
      outs.forEach((o, k) => f.set(outBase[k], rowBase(o.ptr, o.dtype, o.offset, o.strides)));
      if (nVec > 0) {
        f.for(i, 0, nVec, 4, () => {
          loadWindow(false);
          storeWindow(false);
        });
      }
      if (rem > 0) {
        loadWindow(true);
        storeWindow(true);
      }
    };
    const nest = (d: number): void => {
      if (d === rank - 1) row();
      else f.for(outer[d], 0, p.shape[d], 1, () => nest(d + 1));
    };
    nest(0);
  });
  return mb.toBytes();
}

/** The vector expression of a node; operands of the op bodies are locals (`value` makes them). */
function emitExpr(f: FuncBuilder, e: FusedExpr, loads: Local[], param: (x: number) => Local, value: (e: FusedExpr) => Local): Operand {
  switch (e.k) {
    case 'load':
      return loads[e.load];
    case 'const': {
      const bits = e.dtype === 'float32' ? new Int32Array(Float32Array.of(e.value).buffer)[0] : e.value | 0;
      return v128.i32x4([bits, bits, bits, bits]);
    }
    case 'unary': {
      const x = value(e.x);
      const p = [param(e.p0), param(e.p1)];
      if (e.out === 'bool') return UNARY_BOOL_F32_BODIES[e.op as keyof typeof UNARY_BOOL_F32_BODIES](f, [x], p);
      // x ** 2 runs as the square kernel, as the backend's unary does.
      const op = e.op === 'powScalar' && e.p0 === 2 ? 'square' : e.op;
      return UNARY_F32_BODIES[op as keyof typeof UNARY_F32_BODIES](f, [x], p);
    }
    case 'binary': {
      const [a, b] = [value(e.a), value(e.b)];
      if (e.out === 'bool') return v128.and((e.in === 'float32' ? COMPARE_F32 : COMPARE_I32)[e.op as keyof typeof COMPARE_F32](a, b), ONES());
      return e.in === 'float32' ? BINARY_F32[e.op as keyof typeof BINARY_F32](a, b) : BINARY_I32[e.op as keyof typeof BINARY_I32](a, b);
    }
    case 'where': {
      const [c, a, b] = [value(e.cond), value(e.a), value(e.b)];
      return v128.bitselect(a, b, i32x4.ne(c, 0));
    }
    case 'cast': {
      const x = value(e.x);
      if (e.in === e.out) return x;
      if (e.out === 'bool') return v128.and(f32x4.ne(x, 0), ONES());
      return f32x4.convertI32x4S(x);
    }
  }
}

/** The wasm backend's fused kernels, over its memory. */
export function wasmFusedMap(backend: Backend, splitter: FusedSplitter | null = null): FusedMapKernels {
  const memory = (backend as unknown as { mem: WebAssembly.Memory }).mem;
  return {
    supports,
    build(p) {
      const whole = fusedFunction(memory, p);
      const run = splitter ? splitRunner(memory, p, whole, splitter) : whole;
      return (...storages) => run(...storages.map((s) => (s as { ptr: number }).ptr));
    },
  };
}

/** The generated function of a program over `memory`: fused(address of storage 0, ...). */
function fusedFunction(memory: WebAssembly.Memory, p: FusedProgram): (...ptrs: number[]) => void {
  let byCode = modules.get(memory);
  if (!byCode) modules.set(memory, (byCode = new Map()));
  const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
  const bytes = renderFusedMap(p, shared);
  // Keyed by the generated code itself: two programs share a module only if their code is the same.
  let key = '';
  for (let k = 0; k < bytes.length; k += 4096) key += String.fromCharCode(...bytes.subarray(k, k + 4096));
  let fn = byCode.get(key);
  if (!fn) {
    const module = new WebAssembly.Module(bytes as Uint8Array<ArrayBuffer>);
    fn = new WebAssembly.Instance(module, { env: { memory } }).exports[EXPORT] as (...ptrs: number[]) => void;
    byCode.set(key, fn);
    // Worker threads instantiate it too when a split runs it (ThreadPool.load).
    if (shared) generatedModules.set(fn, { module, name: EXPORT });
  }
  return fn;
}
const modules = new WeakMap<object, Map<string, (...ptrs: number[]) => void>>();

/**
 * A matmul epilogue's program (FusedMapKernels.matmulEpilogue: shape [rows, n], input `acc` the
 * matmul's result at strides [n, 1]) as a function over a band of rows: run(addresses, accAt, row0,
 * rows) computes rows row0 .. row0 + rows - 1, reading the result from accAt (that band's first
 * row, rows n floats apart: a panel of scratch) and everything else at its own addresses. The band
 * is a program of its own whose every load is an argument, so that moving to another band only
 * moves pointers: one module per band height (the full panels' and the last one's).
 */
export function wasmEpilogueBands(memory: WebAssembly.Memory, p: FusedProgram, acc: number): (addresses: number[], accAt: number, row0: number, rows: number) => void {
  const band = bandCalls(memory, p, acc);
  return (addresses, accAt, row0, rows) => {
    const { fn, args } = band(addresses, accAt, row0, rows);
    fn(...args);
  };
}

/**
 * The calls of a program over bands of its first dim (rows of any rank; runs of elements of a
 * rank-1 program): call(addresses, accAt, row0, rows) is the generated function of the band's
 * height and its arguments, each access moved to row row0 (storage `acc`, if any, read at accAt
 * instead: wasmEpilogueBands). Each element is computed by the same code as in the whole
 * program, so a program run band by band, on any threads, gives the same bits.
 */
function bandCalls(memory: WebAssembly.Memory, p: FusedProgram, acc: number): (addresses: number[], accAt: number, row0: number, rows: number) => GeneratedCall {
  const nIn = p.inputs.length - p.outputs.length;
  const accesses = [...p.loads, ...p.outputs];
  const rest = p.shape.slice(1);
  // Rows that follow each other in every access (rank 2): one dim of rows * n elements.
  const flat = rest.length === 1 && accesses.every((x) => x.strides[0] === x.strides[1] * rest[0]);
  const byRows = new Map<number, (...ptrs: number[]) => void>();
  const band = (rows: number) => {
    let fn = byRows.get(rows);
    if (!fn) {
      const shape = flat ? [rows * rest[0]] : [rows, ...rest];
      const at = (x: { strides: number[] }) => ({ offset: 0, strides: flat ? [x.strides[1]] : x.strides.slice() });
      fn = fusedFunction(memory, {
        shape,
        inputs: [...p.loads.map((l) => p.inputs[l.input]), ...p.outputs.map((o) => o.dtype)],
        loads: p.loads.map((l, k) => ({ input: k, ...at(l) })),
        outputs: p.outputs.map((o) => ({ expr: o.expr, dtype: o.dtype, ...at(o) })),
      });
      byRows.set(rows, fn);
    }
    return fn;
  };
  const bytes = accesses.map((x, k) => size(k < p.loads.length ? p.inputs[p.loads[k].input] : p.outputs[k - p.loads.length].dtype));
  const storageOf = accesses.map((x, k) => (k < p.loads.length ? p.loads[k].input : nIn + k - p.loads.length));
  return (addresses, accAt, row0, rows) => {
    const ptrs = new Array<number>(accesses.length);
    for (let k = 0; k < accesses.length; k++) {
      const x = accesses[k];
      ptrs[k] = storageOf[k] === acc ? accAt : addresses[storageOf[k]] + (x.offset + row0 * x.strides[0]) * bytes[k];
    }
    return { fn: band(rows), args: ptrs };
  };
}

/**
 * How the backend splits a fused program over threads (index.ts): how many for a memory-bound
 * pass over `elements` elements touching `bytes` bytes (1: run it here), and the runner of part
 * t's calls of generated functions on thread t.
 */
export interface FusedSplitter {
  threads(elements: number, bytes: number): number;
  run(parts: readonly GeneratedCall[][]): void;
}

/**
 * A program's runner that splits it over threads where `splitter` says so: the first dim in
 * bands of near-equal rows (a rank-1 program in runs of whole vectors), one band per thread
 * (bandCalls: the same bits as one call). Not split: an output that overlaps an input read at
 * other positions (a band could then read what another band wrote), or a single row (a program
 * of fewer rows than threads takes one thread per row).
 */
function splitRunner(memory: WebAssembly.Memory, p: FusedProgram, whole: (...ptrs: number[]) => void, splitter: FusedSplitter): (...ptrs: number[]) => void {
  const numel = p.shape.reduce((a, b) => a * b, 1);
  const accesses = [...p.loads, ...p.outputs];
  // Bytes touched: a broadcast access (every stride 0) reads one element.
  const nIn = p.inputs.length - p.outputs.length;
  const touched = accesses.reduce((sum, x, k) => sum + (x.strides.some((st) => st !== 0) ? numel : 1) * size(k < p.loads.length ? p.inputs[p.loads[k].input] : p.outputs[k - p.loads.length].dtype), 0);
  // A program computing a transcendental (a GELU after its bias) splits as one of cost x its
  // elements and bytes, as the backend's own elementwise calls do (module.ts ELEMENTWISE_COST).
  let cost = 1;
  const seen = new Set<FusedExpr>(); // a value used twice is one node (and the walk stays linear)
  const addCost = (e: FusedExpr): void => {
    if (seen.has(e)) return;
    seen.add(e);
    if (e.k === 'unary' || e.k === 'binary') cost += (ELEMENTWISE_COST[e.op] ?? 1) - 1;
    if (e.k === 'unary' || e.k === 'cast') addCost(e.x);
    else if (e.k === 'binary') [e.a, e.b].forEach(addCost);
    else if (e.k === 'where') [e.cond, e.a, e.b].forEach(addCost);
  };
  p.outputs.forEach((o) => addCost(o.expr));
  const vectors = p.shape.length === 1;
  const units = vectors ? Math.ceil(numel / 4) : p.shape[0];
  const same = (a: FusedAccess, b: FusedAccess) => a.offset === b.offset && a.strides.every((st, d) => st === b.strides[d]);
  let band: ReturnType<typeof bandCalls> | null = null;
  return (...ptrs) => {
    const threads = Math.min(units, splitter.threads(cost * numel, cost * touched));
    const overlapped = () => p.outputs.some((o, k) => p.loads.some((l) => ptrs[l.input] === ptrs[nIn + k] && !same(l, o)));
    if (threads <= 1 || overlapped()) return whole(...ptrs);
    band ??= bandCalls(memory, p, -1);
    splitter.run(
      splitRange(units, threads).map(([u0, u1]) => {
        const [r0, r1] = vectors ? [4 * u0, Math.min(numel, 4 * u1)] : [u0, u1];
        return [band!(ptrs, 0, r0, r1 - r0)];
      }),
    );
  };
}
