/**
 * The reference fused elementwise kernel (src/kernels/fusedmap.ts): each operation is the op
 * table's closure, as the CPU backend's unary, binary, where, cast and stridedCopy run it, and
 * its result is rounded to its dtype as that kernel's store into a typed array rounds it (float32:
 * Math.fround; int32: ToInt32; bool: ToUint8). A fused chain therefore gives the bits of the calls
 * it replaces, on the CPU backend's storages.
 */
import type { DType, TypedArray } from '../../tensor/dtype.js';
import type { MatmulLayout, Storage } from '../backend.js';
import type { FusedExpr, FusedMapKernels, FusedProgram } from '../fusedmap.js';
import { BINARY_OPS, UNARY_OPS, type BinaryOpDef, type UnaryOpDef } from '../optable.js';

type Fn = (v: Float64Array) => number;

/** The value a typed array of this dtype stores for v. */
function storeRounding(d: DType): (v: number) => number {
  switch (d) {
    case 'float32': return Math.fround;
    case 'int32': return (v) => v | 0;
    case 'bool': return (v) => v & 255;
    default: return (v) => v;
  }
}

function compile(e: FusedExpr): Fn {
  switch (e.k) {
    case 'load': {
      const i = e.load;
      return (v) => v[i];
    }
    case 'const': {
      const c = e.value;
      return () => c;
    }
    case 'unary': {
      const def: UnaryOpDef = UNARY_OPS[e.op];
      const f = (e.out === 'int32' && def.cpuInt) || def.cpu;
      const x = compile(e.x);
      const r = storeRounding(e.out);
      const { p0, p1 } = e;
      return (v) => r(f(x(v), p0, p1));
    }
    case 'binary': {
      const def: BinaryOpDef = BINARY_OPS[e.op];
      const f = (e.out === 'int32' && def.cpuInt) || def.cpu;
      const a = compile(e.a);
      const b = compile(e.b);
      const r = storeRounding(e.out);
      return (v) => r(f(a(v), b(v)));
    }
    case 'where': {
      const [c, a, b] = [compile(e.cond), compile(e.a), compile(e.b)];
      // The operands were stored in `out`'s dtype by the calls that made them.
      return (v) => (c(v) ? a(v) : b(v));
    }
    case 'cast': {
      const x = compile(e.x);
      if (e.out === 'bool') return (v) => (x(v) !== 0 ? 1 : 0);
      const r = storeRounding(e.out);
      // cast truncates toward zero into int32; a copy between dtypes stores as the array does.
      return e.out === 'int32' && e.in !== 'int32' && e.in !== 'bool' ? (v) => r(Math.trunc(x(v))) : (v) => r(x(v));
    }
  }
}

/** Runs a program over typed arrays: data[k] holds the program's storage k (inputs, then outputs). */
export function runFusedMap(p: FusedProgram, data: TypedArray[]): void {
  const rank = p.shape.length;
  const n = p.shape.reduce((a, c) => a * c, 1);
  const accesses = [...p.loads, ...p.outputs];
  const offs = accesses.map((a) => a.offset);
  const arrays = [...p.loads.map((l) => data[l.input]), ...p.outputs.map((_, k) => data[p.inputs.length - p.outputs.length + k])];
  const nl = p.loads.length;
  const fns = p.outputs.map((o) => compile(o.expr));
  const vals = new Float64Array(Math.max(nl, 1));
  const results = new Float64Array(fns.length);
  const idx = new Array<number>(rank).fill(0);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < nl; k++) vals[k] = arrays[k][offs[k]];
    // Every output from the loads first: an output never overlaps a load (the pass checks it).
    for (let k = 0; k < fns.length; k++) results[k] = fns[k](vals);
    for (let k = 0; k < fns.length; k++) arrays[nl + k][offs[nl + k]] = results[k];
    for (let ax = rank - 1; ax >= 0; ax--) {
      idx[ax]++;
      for (let s = 0; s < accesses.length; s++) offs[s] += accesses[s].strides[ax];
      if (idx[ax] < p.shape[ax]) break;
      for (let s = 0; s < accesses.length; s++) offs[s] -= accesses[s].strides[ax] * p.shape[ax];
      idx[ax] = 0;
    }
  }
}

/**
 * The CPU backend's fused kernels: every elementwise call fuses (the kernels are these closures).
 * A matmul epilogue is the reference of its contract: the backend's own matmul into a float32
 * array of the step (kept by the runner, so a replay allocates nothing), then the program over it.
 */
export function cpuFusedMap(matmul: (a: Storage, b: Storage, out: Storage, l: MatmulLayout) => void): FusedMapKernels {
  return {
    supports: () => true,
    build: (p) => (...storages) => runFusedMap(p, storages.map((s) => (s as { data: TypedArray }).data)),
    matmulEpilogue(l, p, acc) {
      const result = new Float32Array(l.batch * l.m * l.n);
      const resultStorage = { data: result, dtype: 'float32', numel: result.length, isView: false } as Storage;
      return (a, b, ...storages) => {
        matmul(a as Storage, b as Storage, resultStorage, l);
        runFusedMap(p, storages.map((s, k) => (k === acc ? result : (s as { data: TypedArray }).data)));
      };
    },
  };
}
