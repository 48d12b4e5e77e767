/**
 * The WebAssembly SIMD renderer of arena kernels: one exported function per kernel, four float32
 * lanes at a time (f32x4), emitted with the project's emitter (src/kernels/wasm/emit.ts) into a
 * small module that imports the wasm backend's memory.
 *
 * Every elementwise operation is the IEEE float32 operation (add, sub, mul, div, sqrt, min, max,
 * abs, neg, comparisons and selects; no fused multiply-add, which wasm SIMD does not have in its
 * base set), so it equals the float32 reference's Math.fround of the float64 operation bit for
 * bit. Coefficients arrive as f32 arguments computed by the host exactly as the reference
 * computes them (reference.ts coefficientValues), the keys of normal draws as i32. A normal draw
 * (k.normal) is computed inline, four lanes at a time: src/kernels/normal.ts normalAt's float64
 * operations in f64x2 lanes (src/kernels/wasm/rngsimd.ts), the host's value bit for bit, rounded
 * to f32 as the reference rounds it. Reductions follow reduce.ts: four f32x4
 * accumulators (the quads of each 16 elements) are its sixteen accumulators, and the block
 * partials go to memory for the host's tree.
 *
 * The function: (ptr of each vector..., start, end, ptr of each partial array at block pblk...,
 * write, ib, coefficient...) over elements [start, end) (ib: added to an element's index for its
 * normal draws, as reference.ts RangeFn; write = 0: reductions only; a kernel without
 * reductions ignores it, as run.ts never calls it so). The last quad of a range may run past `end`
 * into the parameter's padding (arena vectors are padded to 64 elements, wasm allocations to 256
 * bytes); those lanes are neither stored nor counted.
 */
import { f32, f32x4, i32, i32x4, ModuleBuilder, select, v128, ValType, type Expr, type FuncBuilder, type Local, type Operand } from '../wasm/emit.js';
import { demoteJoin, normalsV } from '../wasm/rngsimd.js';
import { generatedModules } from '../wasm/threads.js';
import { rngKeys, type ArenaKernel } from './define.js';
import { neededNodes, type Node } from './expr.js';
import { NORM_DIRECT, partialOffsets, reductionPasses } from './reduce.js';

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
  const keys = rngKeys(kernel);
  // The keys of normal draws arrive as i32 (whole numbers below 2^32: the call's ToInt32 keeps their bits).
  const params: ValType[] = [...Array(nv).fill(I32), I32, I32, ...Array(np).fill(I32), I32, I32, ...kernel.coefs.map((c) => (keys.has(c) ? I32 : F32))];
  mb.func(WASM_EXPORT, params, [], (f, ...args) => {
    const vptr = args.slice(0, nv);
    const start = args[nv];
    const end = args[nv + 1];
    const pptr = args.slice(nv + 2, nv + 2 + np);
    const write = args[nv + 2 + np];
    const ib = args[nv + 3 + np];
    const cargs = args.slice(nv + 4 + np);
    const vecIdx = new Map(kernel.vectors.map((v, i) => [v.name, i]));
    // Coefficients splatted once: floats as f32x4, booleans as lane masks, the keys of normal
    // draws as i32x4.
    const coef = new Map<Node, Local>();
    kernel.coefs.forEach((c, j) => {
      const l = f.local(V128);
      f.set(l, keys.has(c) ? i32x4.splat(cargs[j]) : c.ty === 'f' ? f32x4.splat(cargs[j]) : f32x4.ne(f32x4.splat(cargs[j]), 0));
      coef.set(c, l);
    });
    // Each normal draw's SIMD code (src/kernels/wasm/rngsimd.ts: normal.ts normalAt in f64x2 lanes,
    // the host's float64 value bit for bit), its locals allocated once.
    const normals = new Map<Node, ReturnType<typeof normalsV>>();
    for (const n of kernel.elementwise) if (n.op === 'normal') normals.set(n, normalsV(f, coef.get(n.a)!, coef.get(n.b)!));
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
        case 'normal':
          // Lane L draws for element index ib + i + L (lanes past the end draw and are not stored).
          return (fb) => {
            const [lo, hi] = normals.get(n)!(i32.add(ib, i));
            demoteJoin(lo, hi)(fb);
          };
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
    // Each norm's block maximum and scale (reduce.ts) where its direct rule does not hold.
    const bfv = kernel.reductions.map((r) => (r.reduction === 'norm' ? f.local(V128) : null));
    const ex = f.local(I32);
    const tsum = f.local(F32);
    // The maximum of magnitudes (sign bits clear) as signed integers: for such floats the integer
    // order is the float order, and every NaN pattern lies above +Inf, so the result is the same
    // value as f32x4.max's (a NaN when any lane saw one; NaN payloads are unspecified in both) in
    // one instruction, where f32x4.max's NaN rules take several on x86.
    const absMax = (a: Operand, b: Operand): Expr => i32x4.maxS(a, b);
    // The largest of a vector's four magnitudes, the same way across the lanes (two shuffles), as
    // a scalar f32: once per block, where four lane extractions and three scalar f32.max (whose
    // NaN and signed-zero rules V8 compiles to compare-and-branch sequences that random data
    // mispredicts) cost more than the block's loads.
    const hmax = f.local(V128);
    const swap = (pairs: readonly number[]) => pairs.flatMap((L) => [4 * L, 4 * L + 1, 4 * L + 2, 4 * L + 3]);
    const absMaxAcross = (a: Local): Expr => {
      f.set(hmax, absMax(a, v128.shuffle(a, a, swap([2, 3, 0, 1]))));
      f.set(hmax, absMax(hmax, v128.shuffle(hmax, hmax, swap([1, 0, 3, 2]))));
      return f32x4.extractLane(hmax, 0);
    };
    const masked = (x: Operand) => (full ? x : v128.bitselect(x, zero, valid));
    const lane = (x: Local, L: number) => f32x4.extractLane(x, L);
    const { base } = partialOffsets(kernel.reductions);
    const { early, late } = reductionPasses(kernel);
    // A norm's maximum (where its direct rule does not hold). The order-free reductions (maxima,
    // the non-finite flag) keep one accumulator, not four: a maximum or an or takes one cycle, and
    // fewer live vectors keep a kernel of several reductions in registers.
    const nmaxs = kernel.reductions.map((r) => (r.reduction === 'norm' ? f.local(V128) : null));
    /** (A0 + A1) + (A2 + A3) lane by lane into A0, then (l0 + l1) + (l2 + l3): reduce.ts's order. */
    const laneSum = (A: readonly Local[]): Expr => {
      f.set(A[0], f32x4.add(f32x4.add(A[0], A[1]), f32x4.add(A[2], A[3])));
      return f32.add(f32.add(lane(A[0], 0), lane(A[0], 1)), f32.add(lane(A[0], 2), lane(A[0], 3)));
    };
    /** One pass over the block: the reductions `idx` (and the writes when asked), then their partials. */
    // Per norm: whether its block holds a NaN or an infinity, as the norm's pass finds out.
    const nflags = kernel.reductions.map((r) => (r.reduction === 'norm' ? f.local(I32) : null));
    /**
     * Where a non-finite flag can be read from instead of testing every element (the SAM norm's
     * NaN gate): a norm of the same x in the same pass (its direct rule holds only for a finite sum
     * of squares; otherwise it finds the block's maximum magnitude) or a max |x| (a block holds a
     * NaN or an infinity exactly when its maximum magnitude is one, bits >= 0x7f800000).
     */
    const flagSource = (ri: number, idx: readonly number[]): { flag: Local } | { max: Local } | null => {
      const r = kernel.reductions[ri];
      if (r.reduction !== 'nonfinite') return null;
      for (const rj of idx) {
        const o = kernel.reductions[rj];
        if (o.x !== r.x) continue;
        if (o.reduction === 'norm') return { flag: nflags[rj]! };
        if (o.reduction === 'maxabs') return { max: accs[rj][0] };
      }
      return null;
    };
    const pass = (idx: readonly number[], withWrites: boolean) => {
      for (const ri of idx) {
        for (const a of accs[ri]) f.set(a, zero);
        if (nmaxs[ri]) f.set(nmaxs[ri]!, zero);
      }
      const roots = [...(withWrites ? kernel.writes.map((w) => w.value) : []), ...idx.map((ri) => kernel.reductions[ri].x)];
      quads16((m) => {
        compute(roots);
        for (const ri of idx) {
          const r = kernel.reductions[ri];
          const x = ref(r.x);
          const acc = accs[ri][m];
          const one = accs[ri][0];
          switch (r.reduction) {
            case 'sum':
              f.set(acc, f32x4.add(acc, masked(x)));
              break;
            case 'maxabs':
              f.set(one, absMax(one, masked(f32x4.abs(x))));
              break;
            case 'nonfinite':
              if (!flagSource(ri, idx)) f.set(one, v128.or(one, masked(i32x4.eq(v128.and(x, signMask), signMask))));
              break;
            case 'norm':
              // The sum of squares of the direct rule (reduce.ts NORM_DIRECT).
              f.set(acc, f32x4.add(acc, masked(f32x4.mul(x, x))));
              break;
          }
        }
        if (withWrites) stores(e);
      });
      // The flags last: a norm's final below sets the flag one of them may read.
      for (const ri of [...idx.filter((i) => kernel.reductions[i].reduction !== 'nonfinite'), ...idx.filter((i) => kernel.reductions[i].reduction === 'nonfinite')]) {
        const r = kernel.reductions[ri];
        const A = accs[ri];
        const at = (k: number) => i32.add(pptr[base[ri] + k], i32.shl(blk, 2));
        switch (r.reduction) {
          case 'sum':
            f.exec(f32.store(at(0), laneSum(A)));
            break;
          case 'maxabs':
            f.exec(f32.store(at(0), absMaxAcross(A[0])));
            break;
          case 'nonfinite': {
            const src = flagSource(ri, idx);
            const flag = !src ? v128.anyTrue(A[0]) : 'flag' in src ? src.flag : v128.anyTrue(i32x4.gtS(src.max, i32x4.splat(i32.const(0x7f7fffff))));
            f.exec(f32.store(at(0), f32.convertI32S(flag)));
            break;
          }
          case 'norm': {
            // reduce.ts NORM_DIRECT: d = the exponent of the sum of squares t (sign bit included).
            f.set(tsum, laneSum(A));
            f.set(ex, i32.sub(i32.shrU(i32.reinterpretF32(tsum), 23), 127));
            f.if(
              i32.and(i32.geS(ex, -NORM_DIRECT), i32.leS(ex, NORM_DIRECT)),
              () => {
                // m = 2^h, s = t 2^(-2h), h = floor(d / 2), both from their exponent bits.
                f.set(ex, i32.shrS(ex, 1));
                f.exec(f32.store(at(0), f32.reinterpretI32(i32.shl(i32.add(ex, 127), 23))));
                f.exec(f32.store(at(1), f32.mul(tsum, f32.reinterpretI32(i32.shl(i32.sub(i32.const(127), i32.shl(ex, 1)), 23)))));
                f.set(nflags[ri]!, 0);
              },
              () => {
                // The other blocks: the maximum in a second pass (no writes happened yet: a
                // writing kernel's norms run before its writes), then the sum of (x f)^2.
                const N = nmaxs[ri]!;
                const m = bm[ri]!;
                f.set(N, zero);
                quads16(() => {
                  compute([r.x]);
                  f.set(N, absMax(N, masked(f32x4.abs(ref(r.x)))));
                });
                f.set(m, absMaxAcross(N));
                f.exec(f32.store(at(0), m));
                f.set(nflags[ri]!, i32.gtS(i32.reinterpretF32(m), 0x7f7fffff));
                // m positive and finite: bits in (0, 0x7f800000) (its sign bit is clear).
                f.if(
                  i32.and(i32.gtS(i32.reinterpretF32(m), 0), i32.ltS(i32.reinterpretF32(m), 0x7f800000)),
                  () => {
                    // reduce.ts normExponent (the biased exponent clamped to [1, 253]) and the
                    // scale f = 2^(127 - e), from the bits (254 - e) << 23.
                    f.set(ex, i32.shrU(i32.reinterpretF32(m), 23));
                    f.set(ex, select(ex, i32.const(1), ex));
                    f.set(ex, select(i32.const(253), ex, i32.gtS(ex, 253)));
                    f.set(bfv[ri]!, f32x4.splat(f32.reinterpretI32(i32.shl(i32.sub(i32.const(254), ex), 23))));
                    for (const a of A) f.set(a, zero);
                    quads16((mm) => {
                      compute([r.x]);
                      const q = f32x4.mul(ref(r.x), bfv[ri]!);
                      f.set(A[mm], f32x4.add(A[mm], masked(f32x4.mul(q, q))));
                    });
                    f.exec(f32.store(at(1), laneSum(A)));
                  },
                  () => f.exec(f32.store(at(1), f32.const(0))),
                );
              },
            );
            break;
          }
        }
      }
    };
    f.set(blk, 0);
    f.for(b, start, end, 64, () => {
      f.set(e, i32.add(b, 64));
      f.if(i32.gtS(e, end), () => f.set(e, end));
      f.set(endV, i32x4.splat(e));
      // Most blocks are full: their code runs without lane masks or tail checks (the same
      // operations on the same lanes, so the same bits).
      const block = () => {
        if (early.length > 0) pass(early, false);
        if (late.length > 0 || kernel.writes.length > 0) pass(late, kernel.writes.length > 0);
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
    const module = new WebAssembly.Module(bytes as Uint8Array<ArrayBuffer>);
    fn = new WebAssembly.Instance(module, { env: { memory } }).exports[WASM_EXPORT] as ArenaWasmFn;
    variants.set(key, fn);
    // Worker threads instantiate it too when the backend splits a pass (host.ts runSplit).
    generatedModules.set(fn, { module, name: WASM_EXPORT });
  }
  return fn;
}

/**
 * The pairwise tree of reduce.ts (combinePartials) over float32 partials in wasm memory, for the
 * wasm path: on the host, the tree of a 4M-element arena (65536 partials) cost as much as the
 * pass itself (a NaN-propagating Math.max and the norm's ratios branch per pair, and random data
 * mispredicts). The same IEEE float32 operations as the host's float32 tree, so the same bits:
 * - sum: P[i] = P[i] + P[i + w];
 * - max (max |x| and the non-finite flag, whose partials have the sign bit clear): the larger as a
 *   signed integer, which for such floats is the float order with every NaN above +Inf (a NaN
 *   when either is one, as Math.max);
 * - norm: m = the larger m; s = s(larger) + s(smaller) F(e(smaller) - e(larger)), equal to the
 *   host's s1 F(e1 - e) + s2 F(e2 - e) because the larger side's factor is exactly 1 (and an IEEE
 *   sum does not depend on the order of its two operands); s = 0 where m is 0, Inf or NaN.
 * Each export takes byte addresses of the partial arrays and the count, and leaves the root at index 0.
 */
export function renderWasmTree(shared: boolean): Uint8Array {
  const clampExp = (e: Expr): Expr => {
    // min(max(e, 1), 253) for e in [0, 255]: e | (e == 0) raises 0 to 1, and 253 caps 254 and 255.
    const lo = i32.or(e, i32.eqz(e));
    return select(i32.const(253), lo, i32.gtS(lo, 253));
  };
  const mb = new ModuleBuilder();
  mb.importMemory('env', 'memory', shared ? { initial: 1, maximum: 65536, shared: true } : { initial: 1 });
  /** for (w = 1; w < n; w *= 2) for (i = 0; i + w < n; i += 2w) pair(address of i, address of i + w). */
  const tree = (f: FuncBuilder, n: Local, pair: (ai: Local, bi: Local) => void) => {
    const w = f.local(I32);
    const i = f.local(I32);
    const last = f.local(I32);
    const step = f.local(I32);
    const ai = f.local(I32);
    const bi = f.local(I32);
    f.set(w, 1);
    f.block((exit) =>
      f.loop((top) => {
        f.brIf(exit, i32.geS(w, n));
        f.set(last, i32.sub(n, w));
        f.set(step, i32.shl(w, 1));
        f.for(i, 0, last, step, () => {
          f.set(ai, i32.shl(i, 2));
          f.set(bi, i32.shl(i32.add(i, w), 2));
          pair(ai, bi);
        });
        f.set(w, step);
        f.br(top);
      }),
    );
  };
  mb.func('sum', [I32, I32], [], (f, P, n) => {
    tree(f, n, (ai, bi) => f.exec(f32.store(i32.add(P, ai), f32.add(f32.load(i32.add(P, ai)), f32.load(i32.add(P, bi))))));
  });
  mb.func('max', [I32, I32], [], (f, P, n) => {
    const x = f.local(I32);
    const y = f.local(I32);
    tree(f, n, (ai, bi) => {
      f.set(x, i32.load(i32.add(P, ai)));
      f.set(y, i32.load(i32.add(P, bi)));
      f.exec(i32.store(i32.add(P, ai), select(x, y, i32.geS(x, y))));
    });
  });
  // The norm's tree, level by level with each level's results packed to the front (element k of a
  // level is P[k w] of the tree above: the same pairs, in the same order), four pairs at a time in
  // f32x4 lanes, the same operations as the scalar form.
  mb.func('norm', [I32, I32, I32], [], (f, P, S, n) => {
    const len = f.local(I32);
    const half = f.local(I32);
    const k = f.local(I32);
    const x = f.local(I32);
    const y = f.local(I32);
    const hi = f.local(I32);
    const big = f.local(I32);
    const d2 = f.local(I32);
    const [m0, m1, s0, s1, ev, od, bg, h, vd] = Array.from({ length: 9 }, () => f.local(V128));
    const lanes = (idx: readonly number[]) => idx.flatMap((L) => [4 * L, 4 * L + 1, 4 * L + 2, 4 * L + 3]);
    const clampExp4 = (v: Operand): Expr => i32x4.minS(i32x4.maxS(i32x4.shrU(v, 23), i32x4.splat(i32.const(1))), i32x4.splat(i32.const(253)));
    f.set(len, n);
    f.block((exit) =>
      f.loop((top) => {
        f.brIf(exit, i32.leS(len, 1));
        f.set(half, i32.shrU(len, 1));
        f.set(k, 0);
        // Pairs 2k, 2k + 1 for k, k + 1, k + 2, k + 3: evens and odds of eight m and eight s.
        f.block((done) =>
          f.loop((more) => {
            f.brIf(done, i32.gtS(i32.add(k, 4), half));
            f.set(m0, v128.load(i32.add(P, i32.shl(k, 3))));
            f.set(m1, v128.load(i32.add(P, i32.shl(k, 3)), 16));
            f.set(s0, v128.load(i32.add(S, i32.shl(k, 3))));
            f.set(s1, v128.load(i32.add(S, i32.shl(k, 3)), 16));
            f.set(ev, v128.shuffle(m0, m1, lanes([0, 2, 4, 6])));
            f.set(od, v128.shuffle(m0, m1, lanes([1, 3, 5, 7])));
            f.set(bg, i32x4.geS(ev, od));
            f.set(h, v128.bitselect(ev, od, bg));
            f.exec(v128.store(i32.add(P, i32.shl(k, 2)), h));
            // 2 (e_lo - e_hi), F = 2^d2 from its bits (0 below -126), s = s_hi + s_lo F; 0 where m
            // is not positive and finite.
            f.set(vd, i32x4.shl(i32x4.sub(clampExp4(v128.bitselect(od, ev, bg)), clampExp4(h)), 1));
            const F = v128.and(i32x4.shl(i32x4.add(vd, i32x4.splat(i32.const(127))), 23), i32x4.geS(vd, i32x4.splat(i32.const(-126))));
            f.set(ev, v128.shuffle(s0, s1, lanes([0, 2, 4, 6])));
            f.set(od, v128.shuffle(s0, s1, lanes([1, 3, 5, 7])));
            const sum = f32x4.add(v128.bitselect(ev, od, bg), f32x4.mul(v128.bitselect(od, ev, bg), F));
            const ok = v128.and(i32x4.gtS(h, i32x4.splat(i32.const(0))), i32x4.ltS(h, i32x4.splat(i32.const(0x7f800000))));
            f.exec(v128.store(i32.add(S, i32.shl(k, 2)), v128.and(sum, ok)));
            f.set(k, i32.add(k, 4));
            f.br(more);
          }),
        );
        // The remaining pairs one at a time.
        f.for(k, k, half, 1, () => {
          f.set(x, i32.load(i32.add(P, i32.shl(k, 3))));
          f.set(y, i32.load(i32.add(P, i32.shl(k, 3)), 4));
          f.set(big, i32.geS(x, y));
          f.set(hi, select(x, y, big));
          f.exec(i32.store(i32.add(P, i32.shl(k, 2)), hi));
          f.if(
            i32.and(i32.gtS(hi, 0), i32.ltS(hi, 0x7f800000)),
            () => {
              f.set(d2, i32.shl(i32.sub(clampExp(i32.shrU(select(y, x, big), 23)), clampExp(i32.shrU(hi, 23))), 1));
              const F = select(f32.reinterpretI32(i32.shl(i32.add(d2, 127), 23)), f32.const(0), i32.geS(d2, -126), F32);
              const sHi = f32.load(i32.add(i32.add(S, i32.shl(k, 3)), select(i32.const(0), i32.const(4), big)));
              const sLo = f32.load(i32.add(i32.add(S, i32.shl(k, 3)), select(i32.const(4), i32.const(0), big)));
              f.exec(f32.store(i32.add(S, i32.shl(k, 2)), f32.add(sHi, f32.mul(sLo, F))));
            },
            () => f.exec(f32.store(i32.add(S, i32.shl(k, 2)), f32.const(0))),
          );
        });
        // An odd last element moves up unchanged.
        f.if(i32.and(len, 1), () => {
          f.exec(i32.store(i32.add(P, i32.shl(half, 2)), i32.load(i32.add(P, i32.shl(i32.sub(len, 1), 2)))));
          f.exec(i32.store(i32.add(S, i32.shl(half, 2)), i32.load(i32.add(S, i32.shl(i32.sub(len, 1), 2)))));
        });
        f.set(len, i32.add(half, i32.and(len, 1)));
        f.br(top);
      }),
    );
  });
  return mb.toBytes();
}

export interface WasmTree {
  /** Combines the partials at byte address P (and S for norm) of n blocks in place; the root is left at index 0. */
  sum(P: number, n: number): void;
  max(P: number, n: number): void;
  norm(P: number, S: number, n: number): void;
}
const trees = new WeakMap<object, WasmTree>();

/** The tree module over a backend memory (instantiated once per memory). */
export function wasmTree(memoryObject: object): WasmTree {
  const memory = memoryObject as WebAssembly.Memory;
  let t = trees.get(memory);
  if (!t) {
    const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
    const bytes = renderWasmTree(shared);
    t = new WebAssembly.Instance(new WebAssembly.Module(bytes as Uint8Array<ArrayBuffer>), { env: { memory } }).exports as unknown as WasmTree;
    trees.set(memory, t);
  }
  return t;
}
