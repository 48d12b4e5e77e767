/**
 * The WebAssembly SIMD renderer of arena kernels: one exported function per kernel, four float32
 * lanes at a time (f32x4), emitted with the project's emitter (src/kernels/wasm/emit.ts) into a
 * small module that imports the wasm backend's memory.
 *
 * Every elementwise operation is the IEEE float32 operation (add, sub, mul, div, sqrt, min, max,
 * abs, neg, comparisons and selects; no fused multiply-add, which wasm SIMD does not have in its
 * base set), so it equals the float32 reference's Math.fround of the float64 operation bit for
 * bit. Coefficients arrive as f32 arguments computed by the host exactly as the reference
 * computes them (reference.ts coefficientValues). Reductions follow reduce.ts: four f32x4
 * accumulators (the quads of each 16 elements) are its sixteen accumulators, and the block
 * partials go to memory for the host's tree.
 *
 * The function: (ptr of each vector..., start, end, ptr of each partial array at block pblk...,
 * write, coefficient...) over elements [start, end) (write = 0: reductions only; a kernel without
 * reductions ignores it, as run.ts never calls it so). The last quad of a range may run past `end`
 * into the parameter's padding (arena vectors are padded to 64 elements, wasm allocations to 256
 * bytes); those lanes are neither stored nor counted.
 */
import { f32, f32x4, i32, i32x4, ModuleBuilder, v128, ValType, type Expr, type Local, type Operand } from '../wasm/emit.js';
import type { ArenaKernel } from './define.js';
import { neededNodes, type Node } from './expr.js';
import { partialOffsets } from './reduce.js';

const { i32: I32, f32: F32, v128: V128 } = ValType;

export const WASM_EXPORT = 'arena_kernel';

const addr = (ptr: Operand, i: Operand): Expr => i32.add(ptr, i32.shl(i, 2));

/**
 * The module bytes of a kernel, importing env.memory (shared when the backend's memory is).
 * `boolCoefs`, when given, fixes the value of each boolean coefficient (in kernel.coefs order,
 * null for the float ones): a `where` on a fixed coefficient becomes the branch it picks, and
 * the other branch is not computed. The optimizers' option switches (momentum or not, Nesterov,
 * maximize...) are such coefficients, constant over a pass; selecting with an all-ones or
 * all-zeros mask is exactly one operand, so the fixed kernel gives the same bits. The function
 * still takes every coefficient (the fixed ones unread), so callers pass the same arguments.
 */
export function renderWasm(kernel: ArenaKernel, shared: boolean, boolCoefs?: readonly (boolean | null)[]): Uint8Array {
  const mb = new ModuleBuilder();
  mb.importMemory('env', 'memory', shared ? { initial: 1, maximum: 65536, shared: true } : { initial: 1 });
  const nv = kernel.vectors.length;
  const np = partialOffsets(kernel.reductions).total;
  const params: ValType[] = [...Array(nv).fill(I32), I32, I32, ...Array(np).fill(I32), I32, ...kernel.coefs.map(() => F32)];
  mb.func(WASM_EXPORT, params, [], (f, ...args) => {
    const vptr = args.slice(0, nv);
    const start = args[nv];
    const end = args[nv + 1];
    const pptr = args.slice(nv + 2, nv + 2 + np);
    const write = args[nv + 2 + np];
    const cargs = args.slice(nv + 3 + np);
    const vecIdx = new Map(kernel.vectors.map((v, i) => [v.name, i]));
    // Coefficients splatted once: floats as f32x4, booleans as lane masks.
    const coef = new Map<Node, Local>();
    kernel.coefs.forEach((c, j) => {
      const l = f.local(V128);
      f.set(l, c.ty === 'f' ? f32x4.splat(cargs[j]) : f32x4.ne(f32x4.splat(cargs[j]), 0));
      coef.set(c, l);
    });
    const zero = f.local(V128);
    f.set(zero, f32x4.splat(f32.const(0)));
    const lanes = f.local(V128);
    f.set(lanes, v128.i32x4([0, 1, 2, 3]));
    const endV = f.local(V128);
    f.set(endV, i32x4.splat(end));
    const i = f.local(I32);
    const valid = f.local(V128);
    const fixed = new Map<Node, boolean>();
    kernel.coefs.forEach((c, j) => {
      const v = boolCoefs?.[j];
      if (c.ty === 'b' && typeof v === 'boolean') fixed.set(c, v);
    });
    /** The node that stands for n: a where on a fixed condition is the branch it picks. */
    const resolve = (n: Node): Node => (n.op === 'where' && fixed.has(n.c) ? resolve(fixed.get(n.c) ? n.a : n.b) : n);
    const temps = new Map<Node, Local>();
    const ref = (n0: Node): Local => {
      const n = resolve(n0);
      return coef.get(n) ?? temps.get(n)!;
    };
    /** Sets the locals of the elementwise nodes that `roots` need, for the quad at i. */
    const compute = (roots: readonly Node[]) => {
      for (const n of neededNodes(roots, kernel.elementwise, coef, resolve)) {
        let l = temps.get(n);
        if (!l) temps.set(n, (l = f.local(V128)));
        f.set(l, exprOf(n));
      }
    };
    const signMask = v128.i32x4([0x7f800000, 0x7f800000, 0x7f800000, 0x7f800000]);
    const exprOf = (n: Node): Expr => {
      const a = 'a' in n ? ref(n.a) : zero;
      const b = 'b' in n ? ref(n.b) : zero;
      switch (n.op) {
        case 'vec': return v128.load(addr(vptr[vecIdx.get(n.name)!], i));
        case 'add': return f32x4.add(a, b);
        case 'sub': return f32x4.sub(a, b);
        case 'mul': return f32x4.mul(a, b);
        case 'div': return f32x4.div(a, b);
        case 'min': return f32x4.min(a, b);
        case 'max': return f32x4.max(a, b);
        case 'neg': return f32x4.neg(a);
        case 'abs': return f32x4.abs(a);
        case 'sqrt': return f32x4.sqrt(a);
        // Math.sign: 1 where x > 0, -1 where x < 0, x itself (+-0, NaN) elsewhere.
        case 'sign': return v128.bitselect(f32x4.splat(f32.const(-1)), v128.bitselect(f32x4.splat(f32.const(1)), a, f32x4.gt(a, zero)), f32x4.lt(a, zero));
        case 'lt': return f32x4.lt(a, b);
        case 'le': return f32x4.le(a, b);
        case 'gt': return f32x4.gt(a, b);
        case 'ge': return f32x4.ge(a, b);
        case 'eq': return f32x4.eq(a, b);
        case 'ne': return f32x4.ne(a, b);
        case 'and': return v128.and(a, b);
        case 'or': return v128.or(a, b);
        case 'not': return v128.not(a);
        case 'nonfinite': return i32x4.eq(v128.and(a, signMask), signMask);
        case 'where': return v128.bitselect(a, b, ref(n.c));
        default: throw new Error(`arena kernel "${kernel.name}": internal: ${n.op} is uniform-only`);
      }
    };
    /** Stores the written vectors' lanes of the quad at i that lie before `end`. */
    /** Emitting the body of a full 64-element block: no lane masks, no tail checks. */
    let full = false;
    // A kernel without reductions is never called with write = 0 (run.ts skips such a range
    // altogether), so its stores need no test of the flag.
    const writeIf = (then: () => void) => (kernel.reductions.length === 0 ? then() : f.if(write, then));
    const stores = (e: Local) => {
      if (kernel.writes.length === 0) return;
      if (full) return writeIf(() => f.exec(...kernel.writes.map((w) => v128.store(addr(vptr[w.vector], i), ref(w.value)))));
      writeIf(() => {
        f.if(
          i32.leS(i32.add(i, 4), e),
          () => f.exec(...kernel.writes.map((w) => v128.store(addr(vptr[w.vector], i), ref(w.value)))),
          () => {
            for (let L = 0; L < 4; L++) {
              f.if(i32.ltS(i32.add(i, L), e), () => f.exec(...kernel.writes.map((w) => v128.store32Lane(addr(vptr[w.vector], i), ref(w.value), L, 4 * L))));
            }
          },
        );
      });
    };
    const quads = (b: Local, e: Local, body: () => void) =>
      f.for(i, b, e, 4, () => {
        f.set(valid, i32x4.ltS(i32x4.add(i32x4.splat(i), lanes), endV));
        body();
      });
    const all = [...kernel.writes.map((w) => w.value), ...kernel.reductions.map((r) => r.x)];
    if (kernel.reductions.length === 0) {
      // Whole quads without masks (four per iteration while 16 elements remain, to spend less on
      // the loop itself), then the last 1-3 elements with them.
      const whole = f.local(I32);
      const whole16 = f.local(I32);
      const i16 = f.local(I32);
      f.set(whole, i32.add(start, i32.and(i32.sub(end, start), -4)));
      f.set(whole16, i32.add(start, i32.and(i32.sub(end, start), -16)));
      full = true;
      f.for(i16, start, whole16, 16, () => {
        for (let m = 0; m < 4; m++) {
          f.set(i, i32.add(i16, 4 * m));
          compute(all);
          stores(end);
        }
      });
      f.for(i, whole16, whole, 4, () => {
        compute(all);
        stores(end);
      });
      full = false;
      quads(whole, end, () => {
        compute(all);
        stores(end);
      });
      return;
    }
    const b = f.local(I32);
    const e = f.local(I32);
    const blk = f.local(I32);
    const i16 = f.local(I32);
    // Four accumulators (quads m = 0..3 of each 16 elements) per reduction: reduce.ts's order.
    const accs = kernel.reductions.map(() => [f.local(V128), f.local(V128), f.local(V128), f.local(V128)]);
    const quads16 = (body: (m: number) => void) =>
      f.for(i16, b, e, 16, () => {
        for (let m = 0; m < 4; m++) {
          f.set(i, i32.add(i16, 4 * m));
          if (full) {
            body(m);
            continue;
          }
          f.if(i32.ltS(i, e), () => {
            f.set(valid, i32x4.ltS(i32x4.add(i32x4.splat(i), lanes), endV));
            body(m);
          });
        }
      });
    const bm = kernel.reductions.map((r) => (r.reduction === 'norm' ? f.local(F32) : null));
    // The maximum of magnitudes (sign bits clear) as signed integers: for such floats the integer
    // order is the float order, and every NaN pattern lies above +Inf, so the result is the same
    // value as f32x4.max's (a NaN when any lane saw one; NaN payloads are unspecified in both) in
    // one instruction, where f32x4.max's NaN rules take several on x86.
    const absMax = (a: Operand, b: Operand): Expr => i32x4.maxS(a, b);
    const masked = (x: Operand) => (full ? x : v128.bitselect(x, zero, valid));
    const lane = (x: Local, L: number) => f32x4.extractLane(x, L);
    const { base } = partialOffsets(kernel.reductions);
    f.set(blk, 0);
    f.for(b, start, end, 64, () => {
      f.set(e, i32.add(b, 64));
      f.if(i32.gtS(e, end), () => f.set(e, end));
      f.set(endV, i32x4.splat(e));
      // Most blocks are full: their code runs without lane masks or tail checks (the same
      // operations on the same lanes, so the same bits).
      const block = () => {
      kernel.reductions.forEach((r, ri) => {
        if (r.reduction !== 'norm') return;
        const A = accs[ri];
        for (const a of A) f.set(a, zero);
        quads16((m) => {
          compute([r.x]);
          f.set(A[m], absMax(A[m], masked(f32x4.abs(ref(r.x)))));
        });
        // A maximum is the same in any order.
        f.set(A[0], absMax(absMax(A[0], A[1]), absMax(A[2], A[3])));
        f.set(bm[ri]!, f32.max(f32.max(lane(A[0], 0), lane(A[0], 1)), f32.max(lane(A[0], 2), lane(A[0], 3))));
        f.exec(f32.store(i32.add(pptr[base[ri]], i32.shl(blk, 2)), bm[ri]!));
      });
      for (const A of accs) for (const a of A) f.set(a, zero);
      quads16((m) => {
        compute(all);
        kernel.reductions.forEach((r, ri) => {
          const x = ref(r.x);
          const acc = accs.map((A) => A[m]);
          switch (r.reduction) {
            case 'sum':
              f.set(acc[ri], f32x4.add(acc[ri], masked(x)));
              break;
            case 'maxabs':
              f.set(acc[ri], absMax(acc[ri], masked(f32x4.abs(x))));
              break;
            case 'nonfinite':
              f.set(acc[ri], v128.or(acc[ri], masked(i32x4.eq(v128.and(x, signMask), signMask))));
              break;
            case 'norm': {
              const q = f32x4.div(x, f32x4.splat(bm[ri]!));
              f.set(acc[ri], f32x4.add(acc[ri], masked(f32x4.mul(q, q))));
              break;
            }
          }
        });
        stores(e);
      });
      kernel.reductions.forEach((r, ri) => {
        const A = accs[ri];
        const a = A[0];
        // V = (A0 + A1) + (A2 + A3) lane by lane (max or or for the order-free reductions), into A0.
        if (r.reduction === 'sum' || r.reduction === 'norm') f.set(a, f32x4.add(f32x4.add(A[0], A[1]), f32x4.add(A[2], A[3])));
        else if (r.reduction === 'maxabs') f.set(a, absMax(absMax(A[0], A[1]), absMax(A[2], A[3])));
        else f.set(a, v128.or(v128.or(A[0], A[1]), v128.or(A[2], A[3])));
        const sum = f32.add(f32.add(lane(a, 0), lane(a, 1)), f32.add(lane(a, 2), lane(a, 3)));
        const at = (k: number) => i32.add(pptr[base[ri] + k], i32.shl(blk, 2));
        switch (r.reduction) {
          case 'sum':
            f.exec(f32.store(at(0), sum));
            break;
          case 'maxabs':
            f.exec(f32.store(at(0), f32.max(f32.max(lane(a, 0), lane(a, 1)), f32.max(lane(a, 2), lane(a, 3)))));
            break;
          case 'nonfinite':
            f.exec(f32.store(at(0), f32.convertI32S(v128.anyTrue(a))));
            break;
          case 'norm': {
            // s = 0 unless the block maximum is positive and finite (as reduce.ts scalable()).
            const m = bm[ri]!;
            f.if(
              i32.and(f32.gt(m, f32.const(0)), f32.lt(m, f32.const(Infinity))),
              () => f.exec(f32.store(at(1), sum)),
              () => f.exec(f32.store(at(1), f32.const(0))),
            );
            break;
          }
        }
      });
      };
      f.if(
        i32.eq(i32.sub(e, b), 64),
        () => {
          full = true;
          block();
          full = false;
        },
        block,
      );
      f.inc(blk);
    });
  });
  return mb.toBytes();
}

type ArenaWasmFn = (...args: number[]) => void;
const instances = new WeakMap<object, WeakMap<ArenaKernel, Map<string, ArenaWasmFn>>>();

/**
 * The compiled kernel over a backend memory (compiled once per kernel and memory). Compiled
 * synchronously: Node allows any size; a browser's main thread limits synchronous compiles to
 * small modules (phase 2: compile ahead with WebAssembly.compile when a kernel is registered).
 */
export function wasmKernel(kernel: ArenaKernel, memoryObject: object, boolCoefs?: readonly (boolean | null)[]): ArenaWasmFn {
  // Typed as an object in the signature: declarations must not need the WebAssembly namespace,
  // which a consumer's TypeScript without the DOM library lacks.
  const memory = memoryObject as WebAssembly.Memory;
  let byKernel = instances.get(memory);
  if (!byKernel) instances.set(memory, (byKernel = new WeakMap()));
  let variants = byKernel.get(kernel);
  if (!variants) byKernel.set(kernel, (variants = new Map()));
  // One module per combination of fixed booleans (a pass sees a handful).
  const key = boolCoefs ? boolCoefs.map((v) => (v === null ? '-' : v ? '1' : '0')).join('') : '';
  let fn = variants.get(key);
  if (!fn) {
    const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
    const bytes = renderWasm(kernel, shared, boolCoefs);
    const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes as Uint8Array<ArrayBuffer>), { env: { memory } });
    fn = instance.exports[WASM_EXPORT] as ArenaWasmFn;
    variants.set(key, fn);
  }
  return fn;
}
