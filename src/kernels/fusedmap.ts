/**
 * A fused elementwise program: what the step compiler (src/compile/fuse.ts) makes of a chain of
 * elementwise calls (unary, binary, where, cast, strided copies) whose intermediates only the chain
 * reads. One pass over an iteration space computes every output from loads of the inputs; each
 * operation is the one its unfused kernel runs, rounded to its dtype as that kernel stores it, so
 * a fused chain gives the unfused chain's bits (cpu, wasm) and each backend renders the same
 * program (src/kernels/cpu/fusedmap.ts, src/kernels/wasm/fusedmap.ts).
 *
 * Addresses are affine in the iteration index: element `idx` (a multi-index over `shape`) of load
 * k is element offset + idx . strides of its input storage; outputs are stored the same way.
 */
import type { DType } from '../tensor/dtype.js';
import type { MatmulLayout } from './backend.js';
import type { BinaryOp, UnaryOp } from './optable.js';

export type FusedExpr =
  | { k: 'load'; load: number }
  /** A constant of the step (a one-element host write): its value as stored in `dtype`. */
  | { k: 'const'; value: number; dtype: DType }
  | { k: 'unary'; op: UnaryOp; x: FusedExpr; p0: number; p1: number; in: DType; out: DType }
  | { k: 'binary'; op: BinaryOp; a: FusedExpr; b: FusedExpr; in: DType; out: DType }
  | { k: 'where'; cond: FusedExpr; a: FusedExpr; b: FusedExpr; out: DType }
  /** cast, and a strided copy between dtypes (the value stored in `out`); same dtypes: a copy. */
  | { k: 'cast'; x: FusedExpr; in: DType; out: DType };

export interface FusedAccess {
  offset: number;
  strides: number[];
}

export interface FusedProgram {
  shape: number[];
  /** Storages, in the order the runner receives them: the inputs, then the outputs. */
  inputs: DType[];
  loads: (FusedAccess & { input: number })[];
  outputs: (FusedAccess & { expr: FusedExpr; dtype: DType })[];
}

/** One elementwise call as the fusion pass sees it, for a backend to say whether it can fuse it. */
export interface FusableCall {
  kind: 'unary' | 'binary' | 'where' | 'cast' | 'copy';
  op?: string;
  p0?: number;
  p1?: number;
  inDtypes: DType[];
  outDtype: DType;
}

/** A backend's fused elementwise kernels. */
export interface FusedMapKernels {
  /** Whether a fused kernel computes this call exactly as the backend's own kernel does. */
  supports(call: FusableCall): boolean;
  /** The most storages one kernel may take (WebGPU: the storage buffers a shader stage may bind). */
  maxStorages?: number;
  /** The runner of a program: storages are the program's inputs, then its outputs. */
  build(program: FusedProgram): (...storages: unknown[]) => void;
  /**
   * A matmul whose result only a fused program reads (its epilogue: bias, activation, residual,
   * a gradient added in), as one call; absent or null where the backend does not fuse this one.
   * What the pass (src/compile/epilogue.ts) guarantees:
   * - `program.shape` is [batch * m, n] (rank 2, never collapsed; the matmul's output rows);
   * - program input `acc` is the matmul's float32 result, read by exactly one load, at offset 0
   *   with strides [n, 1] (element (r, j) of the iteration is element (r, j) of the result);
   * - a and b are float32 and no output of the program overlaps them (other loads may).
   * The runner takes a, b (as `matmul` does), then the program's storages (inputs, then outputs)
   * with null at position `acc`: the result has no storage, the backend keeps it where it likes.
   * Its results must be those of matmul(a, b) stored as the backend's matmul stores it, then the
   * program (cpu and wasm: the same bits).
   */
  matmulEpilogue?(layout: MatmulLayout, program: FusedProgram, acc: number): ((a: unknown, b: unknown, ...storages: unknown[]) => void) | null;
}
