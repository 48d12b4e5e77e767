/**
 * The WebAssembly backend: kernels with 128-bit SIMD (module.ts) over one WebAssembly.Memory,
 * a size-class allocator in that memory, and worker threads for large matmuls and convolutions
 * (threads.ts), whose number and use a short measurement at start-up decides (calibrateThreads).
 *
 * float32 (and int32 for the simple ops, bool for comparisons and where) runs in wasm. The rest -
 * float64, the transcendental elementwise ops without a SIMD body, and the kernels that are
 * index-bound rather than arithmetic-bound (pooling, gather, scatter, argmax, argsort, integer
 * random, casts), and the sequential or rare ones (cumsum, the prod reduction) - runs the CPU
 * reference kernels over typed-array views of the same memory, which keeps it correct by
 * construction and bit-exact where the contract asks (RNG, argmax, int kernels).
 * float32 uniform / normal / keep-mask draws run in SIMD (rngsimd.ts), matching the reference
 * draws bit for bit; the fused optimizer kernels are arena kernels rendered to f32x4
 * (src/kernels/arena), which agree with their float32 reference bit for bit.
 *
 * The allocator rounds sizes up to classes (sizeClass) and keeps freed blocks in a free list per
 * class for reuse; it never returns memory to the top or merges blocks, which suits training
 * loops that allocate the same shapes step after step.
 */
import { CpuBackend, CpuStorage } from '../cpu/index.js';
import type { DType, TypedArray } from '../../tensor/dtype.js';
import type {
  ArgReduceOp,
  AttentionLayout,
  AvgPool2dLayout,
  Backend,
  BackendInfo,
  BroadcastLayout,
  Conv2dLayout,
  CrossEntropyLayout,
  GatherLayout,
  LayerNormLayout,
  LayerNormBackwardFusedLayout,
  BatchNormLayout,
  BatchNormRunningLayout,
  MatmulLayout,
  MemoryInfo,
  RandomDist,
  ReduceLayout,
  ReduceOp,
  SoftmaxLayout,
  SortLayout,
  Storage,
  StridedCopyLayout,
  WhereLayout,
  Window2d,
} from '../backend.js';
import { UNARY_OPS, type BinaryOp, type UnaryOp } from '../optable.js';
import {
  binaryExport,
  buildKernelModule,
  DEFAULT_TILING,
  gemmScratchBytes,
  SIMD_BINARY_F32,
  SIMD_BINARY_F32_CALLED,
  SIMD_BINARY_I32,
  SIMD_COMPARE,
  SIMD_UNARY_BOOL_F32,
  SIMD_UNARY_BOOL_I32,
  SIMD_UNARY_F32,
  SIMD_UNARY_I32,
  SIMD_UNARY_LIMIT,
  ELEMENTWISE_COST,
  unaryExport,
  whereExport,
  type GemmTiling,
  type KernelExports,
} from './module.js';
import { WasmConv, type WasmConvHost } from './conv.js';
import { isPatchConv, PatchConv, usePatchConv, type ConvKernel } from './conv-patch.js';
import { isWinogradConv, useWinogradConv, WinogradConv, type WinogradKernel } from './conv-winograd.js';
import { epsArgs } from './batchnorm.js';
import { attentionBackwardArgs, attentionBackwardWasm, attentionBackwardWithSumsWasm, attentionForwardArgs, attentionScratchBytes, attentionWasm } from './attention.js';
import { wasmEpilogueBands, wasmFusedMap, type FusedSplitter } from './fusedmap.js';
import type { FusedMapKernels, FusedProgram } from '../fusedmap.js';
import { collapseDims, copyDescriptorBytes, planStridedCopy, stridedCopyArgs, stridedCopyExport, writeCopyDescriptor, type CopyWidth, type Dim } from './copy.js';
import { avgPool2dWasm, maxPool2dWasm } from './pool.js';
import { layerNormBackwardExport, layerNormExport } from './layernorm.js';
import { layerNormBackwardFusedWasm } from './lnfused.js';
import { checkAttentionBackwardWithSums, checkLayerNormBackwardFused } from '../cpu/rowfused.js';
import {
  availableCores,
  canBlock,
  CONTROL_BYTES_PER_WORKER,
  SPIN_BRIDGE_US,
  SplitCost,
  ThreadLoadError,
  chooseSpin,
  chooseThreads,
  type SpinPair,
  generatedModules,
  type GeneratedCall,
  splitRange,
  ThreadPool,
  CallList,
  type KernelCall,
  type ThreadCalibration,
  type ThreadPart,
} from './threads.js';
import { wasmKernel as arenaWasmKernel, wasmTree as arenaWasmTree } from '../arena/wasm.js';
import { arenaBackends } from '../arena/backends.js';
import { arenaHost } from '../arena/host.js';

// The arena kernels' f32x4 renderer: the fused optimizer passes run in it on this backend (and
// the host passes around it, which run the generated reference for float64 arenas).
arenaBackends.host = arenaHost;
arenaBackends.wasmKernel = arenaWasmKernel;
arenaBackends.wasmTree = arenaWasmTree;

const PAGE = 65536;
/** Allocations start at multiples of this, so views at 64-float offsets keep vector alignment. */
const ALIGN = 256;

const BYTES: Record<DType, number> = { float32: 4, float64: 8, int32: 4, bool: 1 };

export class WasmStorage implements Storage {
  released = false;
  constructor(
    /** Byte address in the backend's memory. */
    readonly ptr: number,
    readonly numel: number,
    readonly dtype: DType,
    readonly isView: boolean,
    /** Bytes reserved by the allocator (its size class); 0 for a view. */
    readonly reserved: number,
  ) {}
}

function ws(s: Storage): WasmStorage {
  if (!(s instanceof WasmStorage)) throw new TypeError('wasm backend: a storage from another backend was passed');
  if (s.released) throw new Error('wasm backend: use of a released storage');
  return s;
}

/**
 * Size classes: multiples of 256 bytes up to 8 KiB, then four classes per power of two, so a
 * reused block wastes at most a quarter of itself.
 */
export function sizeClass(bytes: number): number {
  const n = Math.max(bytes, ALIGN);
  if (n <= 8192) return Math.ceil(n / ALIGN) * ALIGN;
  const step = 2 ** Math.floor(Math.log2(n)) / 4;
  return Math.ceil(n / step) * step;
}

export interface WasmBackendOptions {
  /**
   * Threads for large matmuls and convolutions, the caller's included: honored as given. Default:
   * the available cores (at most 8) when a short measurement at start-up finds them faster than
   * one thread, else one (info().details.threadCalibration says what was measured).
   */
  threads?: number;
  /** Matmul blocking; for tuning and benchmarks. */
  tiling?: GemmTiling;
  /**
   * Split every matmul and convolution of at least this many multiply-adds over all threads (for
   * tests and benchmarks). Default: the measured cost model decides per call (threads.ts SplitCost).
   */
  minThreadedWork?: number;
}

/** Typed views of the whole memory, re-derived whenever the memory grows. */
interface HeapViews {
  buffer: ArrayBufferLike;
  u8: Uint8Array;
  i32: Int32Array;
  f32: Float32Array;
  f64: Float64Array;
}

export async function createWasmBackend(opts: WasmBackendOptions = {}): Promise<WasmBackend> {
  const tiling = opts.tiling ?? DEFAULT_TILING;
  const shareable = typeof SharedArrayBuffer !== 'undefined' && (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated !== false;
  const explicit = opts.threads !== undefined;
  let threads = Math.max(1, Math.floor(opts.threads ?? Math.min(8, await availableCores())));
  if (!shareable || !canBlock()) threads = 1;

  const initialPages = 256;
  let memory: WebAssembly.Memory;
  let maximumPages = 65536;
  if (threads > 1) {
    // A shared memory needs a maximum; fall back to 1 GiB where 4 GiB cannot be reserved.
    try {
      memory = new WebAssembly.Memory({ initial: initialPages, maximum: maximumPages, shared: true });
    } catch {
      maximumPages = 16384;
      memory = new WebAssembly.Memory({ initial: initialPages, maximum: maximumPages, shared: true });
    }
  } else {
    memory = new WebAssembly.Memory({ initial: initialPages, maximum: maximumPages });
  }
  const bytes = buildKernelModule({ shared: threads > 1, initialPages, maximumPages, tiling });
  let module: WebAssembly.Module;
  try {
    module = await WebAssembly.compile(bytes as Uint8Array<ArrayBuffer>);
  } catch (e) {
    throw new Error(`wasm backend: this engine cannot compile the kernels (WebAssembly SIMD is required): ${(e as Error).message}`);
  }
  const instance = await WebAssembly.instantiate(module, { env: { memory } });
  const backend = new WasmBackend(memory, instance.exports as unknown as KernelExports, tiling, threads, opts.minThreadedWork);
  if (threads > 1) {
    const control = backend.reserve((threads - 1) * CONTROL_BYTES_PER_WORKER);
    let pool: ThreadPool | null = null;
    try {
      pool = await ThreadPool.start(module, memory, control, threads - 1, backend.exportNames, (bytes) => backend.listSpace(bytes));
    } catch (e) {
      // Workers can be unavailable (a content security policy, a sandbox): one thread still works.
      backend.threadsUnavailable = (e as Error)?.message ?? String(e);
    }
    if (pool) {
      backend.attachPool(pool);
      backend.calibrateThreads(explicit);
    }
  }
  return backend;
}

export class WasmBackend implements Backend {
  readonly name = 'wasm' as const;
  /** The kernel exports, by the index that the thread pool's calls name them with. */
  readonly exportNames: string[];
  private readonly exportIndex: Map<string, number>;

  private heapViews: HeapViews | null = null;
  private heapTop = ALIGN;
  private readonly freeLists = new Map<number, number[]>();
  private live = 0;
  private liveBytes = 0;
  private pooled = 0;
  private pooledBytes = 0;
  private pool: ThreadPool | null = null;
  /** Per-thread matmul scratch, index 0 for this thread. */
  private readonly gemmScratch: number[] = [];
  private scratchPtr = 0;
  private scratchBytes = 0;
  /** Memory lent to the thread pool for the call lists of one split (ThreadPool.run). */
  private listPtr = 0;
  private listBytes = 0;
  private readonly cpu = new CpuBackend();
  /** Why the worker threads could not start, if they could not. */
  threadsUnavailable: string | null = null;
  /** What calibrateThreads measured (null on one thread). */
  threadCalibration: ThreadCalibration | null = null;
  /** Decides how many threads each call is split over; null until calibrated. */
  private splitCost: SplitCost | null = null;
  /**
   * What an element of a memory-bound kernel (unary, binary, where) costs in the cost model's
   * units, floating-point operations of the calibration matmul: measured by calibrateThreads
   * (a relu, the cheapest, so that the others are if anything priced low and split less).
   */
  private elementFlops = 8;

  constructor(
    private readonly mem: WebAssembly.Memory,
    private readonly k: KernelExports,
    private readonly tiling: GemmTiling,
    threads: number,
    private readonly minThreadedWork: number | undefined,
  ) {
    for (let t = 0; t < threads; t++) this.gemmScratch.push(this.reserve(gemmScratchBytes(tiling)));
    this.exportNames = Object.keys(k).filter((name) => typeof k[name] === 'function');
    this.exportIndex = new Map(this.exportNames.map((name, i) => [name, i]));
    this.callFns = this.exportNames.map((name) => k[name]);
  }

  /** Permanent internal memory (thread control, matmul scratch): outside the live counters. */
  reserve(bytes: number): number {
    return this.bump(sizeClass(bytes));
  }

  /** @internal */
  attachPool(pool: ThreadPool): void {
    this.pool = pool;
  }

  /** Stops the worker threads. The backend keeps working on one thread. */
  dispose(): void {
    this.pool?.dispose();
    this.pool = null;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }

  info(): BackendInfo {
    return {
      name: 'wasm',
      adapter: `WebAssembly SIMD128, ${this.activeThreads} thread${this.activeThreads > 1 ? 's' : ''}`,
      details: {
        threads: this.activeThreads,
        sharedMemory: this.pool !== null,
        ...(this.threadsUnavailable ? { threadsUnavailable: this.threadsUnavailable } : {}),
        ...(this.threadCalibration ? { threadCalibration: this.threadCalibration } : {}),
        // Parts handed to workers, and those the caller took back because no worker had started them.
        ...(this.pool ? { threadParts: { ...this.pool.stats } } : {}),
        // Times the cost model ran calls unsplit for a while, split calls having found no free core (SplitCost.observeSplit).
        ...(this.splitCost ? { splitBackoffs: this.splitCost.backoffs } : {}),
        memoryBytes: this.mem.buffer.byteLength,
        tiling: this.tiling,
      },
    };
  }
  supportsDtype(_d: DType): boolean {
    return true;
  }

  get activeThreads(): number {
    return this.pool ? (this.splitCost?.threads ?? this.pool.size + 1) : 1;
  }

  /** @internal The pool's call-list memory: grown as needed, reused by every split. */
  listSpace(bytes: number): number {
    if (bytes > this.listBytes) {
      this.listBytes = sizeClass(Math.max(bytes, this.listBytes * 2));
      this.listPtr = this.bump(this.listBytes);
    }
    return this.listPtr;
  }

  /** Threads to split a kernel call of `flops` floating-point operations over (1: unsplit). */
  private splitThreads(flops: number): number {
    if (!this.pool) return 1;
    if (this.minThreadedWork !== undefined) return flops / 2 >= this.minThreadedWork ? this.activeThreads : 1;
    return this.splitCost?.threadsFor(flops) ?? 1;
  }

  /**
   * Threads for a memory-bound kernel over `elements` elements touching `bytes` bytes: none below
   * MEMORY_SPLIT_BYTES, where its operands sit in the cache of the core that just wrote them.
   * (Measured inside a CNN training step, batch 32, with 8 MB: BatchNorm's backward over 2.4 MB
   * took 1.42 ms split against 1.17 ms unsplit, though split it ran 1.69x faster back to back on
   * its own. Since BatchNorm's sums run four chains at once and its forward splits too, the whole
   * captured step on two threads measured faster with 2 MB: median 13.9 ms against 16.4 at 8 MB
   * and 14.4 at 1 MB, batch 32, eight processes each, interleaved, load average 2.5.)
   */
  private splitMemoryBound(elements: number, bytes: number, minBytes = MEMORY_SPLIT_BYTES): number {
    if (this.minThreadedWork === undefined && bytes < minBytes) return 1;
    return this.splitThreads(this.elementFlops * elements);
  }

  /** A call of the export `name` for a thread's part. */
  private kernelCall(name: string, args: number[]): KernelCall {
    const fn = this.exportIndex.get(name);
    if (fn === undefined) throw new Error(`wasm backend: no kernel export ${name}`);
    return { fn, args };
  }

  /**
   * Runs the parts (calls of exports by their index in exportNames): part t on thread t, or as a
   * queue when there are more parts than threads (ThreadPool.run).
   */
  private runSplit(parts: readonly ThreadPart[]): void {
    if (parts.length === 1) {
      const part = parts[0];
      if (part instanceof CallList) this.runThreadedExport(part);
      else for (const c of part) this.runThreadedExport(c);
      return;
    }
    const cost = this.splitCost;
    // The process CPU clock over the split (Node's; none in a browser), for SplitCost.observeSplit.
    const cpu0 = cost && cpuClock ? cpuClock() : null;
    const wall0 = performance.now();
    try {
      this.pool!.run(parts, (c) => this.runThreadedExport(c), this.activeThreads);
    } finally {
      cost?.splitEnded();
    }
    if (cpu0) {
      const cpu = cpuClock!(cpu0);
      cost!.observeSplit((performance.now() - wall0) * 1000, cpu.user + cpu.system);
    }
  }

  private runThreadedExport(c: KernelCall | CallList): void {
    if (c instanceof CallList) c.runWith(this.callFns);
    else this.callFns[c.fn](...c.args);
  }

  /**
   * The function of each call index: the exports (exportNames order), then the generated
   * functions the workers have loaded (generatedCall).
   */
  private readonly callFns: ((...args: number[]) => unknown)[];

  /** The call index of each generated function that the workers have instantiated too (ThreadPool.load). */
  private readonly loadedIndex = new WeakMap<object, number>();

  /**
   * Whether the fused optimizer passes (arena kernels) split over threads from ARENA_SPLIT_BYTES
   * on (src/kernels/arena/host.ts runSplit): public for measurements (bench/mlp-threads.ts).
   */
  splitArena = true;

  /**
   * @internal ArenaSplitter: a pass over `vectors` float32 vectors of `elements` elements, as a
   * memory-bound kernel over all their elements (splitMemoryBound, from ARENA_SPLIT_BYTES).
   */
  arenaThreads(elements: number, vectors: number): number {
    if (!this.pool || !this.splitArena) return 1;
    return this.splitMemoryBound(elements * vectors, 4 * elements * vectors, this.arenaSplitBytes);
  }

  /** ARENA_SPLIT_BYTES, as arenaThreads reads it: public for measurements (bench/eager-host.ts --arena-split). */
  arenaSplitBytes = ARENA_SPLIT_BYTES;

  /**
   * @internal ArenaSplitter: part t's calls of arena kernels on thread t. Where a worker could not
   * load a kernel's module (ThreadPool.load), they run here, and arena passes split no more.
   */
  runArenaParts(parts: readonly GeneratedCall[][]): void {
    if (!this.runGeneratedParts(parts)) this.splitArena = false;
  }

  /**
   * Part t's calls of generated functions on thread t; false where a worker could not load a
   * function's module (ThreadPool.load): then they all ran here, in order.
   */
  private runGeneratedParts(parts: readonly GeneratedCall[][]): boolean {
    let posted: ThreadPart[] | null = null;
    try {
      posted = parts.map((calls) => calls.map((c) => this.generatedCall(c)));
    } catch (e) {
      if (!(e instanceof ThreadLoadError)) throw e;
    }
    if (posted) this.runSplit(posted);
    else for (const calls of parts) for (const c of calls) c.fn(...c.args);
    return posted !== null;
  }

  /**
   * Whether fused elementwise programs of captured steps (fusedmap.ts) split over threads, as
   * unary and binary calls do (splitMemoryBound); off after a worker could not load one.
   */
  splitFused = true;

  /**
   * A call of a generated function (one in generatedModules; float arguments among its own) for a
   * thread's part: its module is loaded on the workers the first time.
   */
  private generatedCall(g: GeneratedCall): KernelCall {
    let fn = this.loadedIndex.get(g.fn);
    if (fn === undefined) {
      const generated = generatedModules.get(g.fn);
      if (!generated) throw new Error('wasm backend: a generated function without its module cannot run on a worker thread');
      fn = this.pool!.load(generated.module, generated.name);
      this.callFns[fn] = g.fn;
      this.loadedIndex.set(g.fn, fn);
    }
    return { fn, args: g.args, floats: true };
  }

  /**
   * Measures what a split costs and gains on this machine now, in about 20 ms (6 of them warming
   * the matmul up; each phase stops at its share of a 40 ms budget, though its minimum samples
   * take longer under heavy load), and sets the cost model (which calls to split), the workers'
   * spin budget and, unless `explicit`, the number of threads: the available ones where they run
   * a 256 x 128 x 256 matmul at least MIN_SPEEDUP times faster than one thread in their best of
   * 3-15 interleaved rounds (as many as the budget allows) and faster in most rounds
   * (chooseThreads), else two where those do, else one (the pool is stopped; also when the
   * measurement is visibly disturbed).
   * - spin: an idle worker spins SPIN_BRIDGE_US (the gaps between the split calls of a training
   *   step) before it blocks in Atomics.wait; none when a spinning worker answered no faster than
   *   a sleeping one in most of the rounds (chooseSpin: the machine has more runnable threads
   *   than cores), a pair of pings before the matmul rounds and one after each;
   * - rate: the one-thread GFLOP/s of that matmul prices every matmul and convolution (flops /
   *   rate), and a relu's time per element prices the memory-bound kernels (elementFlops).
   */
  calibrateThreads(explicit: boolean): void {
    const pool = this.pool;
    if (!pool) return;
    const available = pool.size + 1;
    const MIN_SPEEDUP = 1.15;
    const start = performance.now();
    // Loads of a shared slot per us, to turn a spin time into a spin count: the fastest of a few
    // short trials (a trial the scheduler interrupts is slow; the first ones run before V8 has
    // optimized the loop, so they are taken again at the end).
    const probe = new Int32Array(this.mem.buffer, this.gemmScratch[0], 1);
    let t0 = 0;
    let loadsPerUs = 0;
    const measureLoads = () => {
      for (let trial = 0; trial < 5; trial++) {
        t0 = performance.now();
        for (let i = 0; i < 20_000; i++) Atomics.load(probe, 0);
        loadsPerUs = Math.max(loadsPerUs, 20_000 / Math.max(1, (performance.now() - t0) * 1000));
      }
    };
    measureLoads();
    // An empty call on a worker, the pool's round trip, with the worker asleep (cold) and spinning
    // (hot), as a pair in each round (chooseSpin). The rounds run before and between the matmul
    // rounds, so that a moment's disturbance (V8 still compiling the kernels on another thread at
    // start-up, a stray process) falls on a few of them only.
    const BUDGET_MS = 40;
    const spinPairs: SpinPair[] = [];
    const pingPair = () => {
      pool.spinLoads = 0;
      // The worker asleep: it blocks in Atomics.wait once it has seen the new budget after this call.
      pool.ping();
      const cold = pool.ping();
      pool.spinLoads = loadsPerUs * 2000;
      pool.ping();
      spinPairs.push({ cold, spinning: Math.min(pool.ping(), pool.ping()) });
    };
    for (let i = 0; i < 3; i++) pingPair();
    // One thread against T on the same matmul, interleaved: the best of two or three rounds each
    // after a warm-up round (two when the budget runs out).
    const [m, n, k] = [256, 256, 128];
    const a = this.allocUninit(m * k, 'float32');
    const b = this.allocUninit(k * n, 'float32');
    const c = this.allocUninit(m * n, 'float32');
    const fa = this.typed(a);
    for (let i = 0; i < fa.length; i++) fa[i] = ((i * 7) % 13) / 13;
    this.typed(b).set(fa.subarray(0, k * n));
    const job = this.gemmJob(ws(a), ws(b), ws(c), { batch: 1, m, n, k, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 });
    const time = (threads: number) => {
      t0 = performance.now();
      this.runGemm(job, threads);
      return (performance.now() - t0) * 1000;
    };
    // V8 runs new wasm code in its baseline compiler and tiers hot functions up in the background:
    // a few ms of the matmul first, so that the rate measured is the optimized code's.
    const warm = performance.now() + 6;
    do time(1);
    while (performance.now() < warm);
    const candidates = [...new Set([available, 2])];
    const counts = [1, ...candidates];
    // Interleaved rounds, the order rotating (no count always runs right after another), until
    // the budget is spent (MIN_ROUNDS at least, MAX_ROUNDS at most: about 10 ms on a quiet
    // machine); round 0 warms the code and the caches up and is not kept.
    // chooseThreads judges the rounds: with three or more, no single round decides.
    const MIN_ROUNDS = 3;
    const MAX_ROUNDS = 15;
    const rounds: Map<number, number>[] = [];
    // The rounds take what the budget has left: the pings and the warm-up take little of it on a
    // quiet machine, most of it on a busy one, where fewer rounds then decide (one thread, mostly).
    const until = start + BUDGET_MS;
    for (let round = 0; round <= MAX_ROUNDS && (round <= MIN_ROUNDS || performance.now() < until); round++) {
      const times = new Map<number, number>();
      for (let i = 0; i < counts.length; i++) {
        const t = counts[(i + round) % counts.length];
        times.set(t, time(t));
      }
      if (round > 0) rounds.push(times);
      pingPair();
    }
    measureLoads();
    const { spin, hotUs, coldUs } = chooseSpin(spinPairs);
    const spinUs = spin ? SPIN_BRIDGE_US : 0;
    pool.spinLoads = loadsPerUs * spinUs;
    const fastest = (t: number) => Math.min(...rounds.map((r) => r.get(t)!));
    // The cost model's rate: the one-thread time, unless T threads took less than 1/T of it
    // (the one-thread runs were interrupted; chooseThreads then picks one thread).
    const oneUs = Math.min(fastest(1), ...candidates.map((t) => t * fastest(t)));
    // One thread's cost of an element of a memory-bound kernel: a relu in place, best of five.
    const relu = this.k[unaryExport('relu', 'f32')];
    const cs = ws(c);
    let reluUs = Infinity;
    for (let i = 0; i < 5; i++) {
      t0 = performance.now();
      relu(cs.ptr, cs.ptr, cs.numel, 0, 0);
      reluUs = Math.min(reluUs, (performance.now() - t0) * 1000);
    }
    this.elementFlops = (reluUs / cs.numel) * ((2 * m * n * k) / oneUs);
    for (const s of [a, b, c]) this.release(s);
    const { threads, reason, speedup: speedupOf } = chooseThreads(rounds, candidates, MIN_SPEEDUP, explicit ? available : null);
    const r2 = (x: number) => Math.round(x * 100) / 100;
    this.threadCalibration = {
      threads,
      available,
      reason,
      gflops: r2((2 * m * n * k) / oneUs / 1000),
      hotUs: r2(hotUs),
      coldUs: r2(coldUs),
      speedup: r2(speedupOf(available)),
      rounds: rounds.length,
      spinRounds: spinPairs.length,
      spinLoads: pool.spinLoads,
      spinUs: r2(spinUs),
      elementFlops: r2(this.elementFlops),
      ms: r2(performance.now() - start),
    };
    if (threads === 1) {
      this.dispose();
      return;
    }
    this.splitCost = new SplitCost(threads, oneUs / (2 * m * n * k), hotUs, coldUs, spinUs);
  }

  // ---- memory ----

  private heap(): HeapViews {
    const buffer = this.mem.buffer;
    if (this.heapViews?.buffer !== buffer) {
      this.heapViews = {
        buffer,
        u8: new Uint8Array(buffer),
        i32: new Int32Array(buffer),
        f32: new Float32Array(buffer),
        f64: new Float64Array(buffer),
      };
    }
    return this.heapViews;
  }

  private bump(bytes: number): number {
    const ptr = this.heapTop;
    const end = ptr + bytes;
    const have = this.mem.buffer.byteLength;
    if (end > have) {
      // Grow by at least a quarter of the current size, so that a run of allocations grows rarely.
      const pages = Math.max(Math.ceil((end - have) / PAGE), Math.ceil(have / PAGE / 4));
      try {
        this.mem.grow(pages);
      } catch {
        try {
          this.mem.grow(Math.ceil((end - have) / PAGE));
        } catch {
          throw new RangeError(`wasm backend: out of memory allocating ${bytes} bytes (${have} bytes in use)`);
        }
      }
    }
    this.heapTop = end;
    return ptr;
  }

  /**
   * A typed array over the storage's elements, in its dtype's array type: host code (the arena
   * kernels' reference and scalar programs, src/kernels/arena) works on the memory in place through it. It is
   * valid until the next allocation, which may grow (and, unshared, detach) the memory.
   */
  typed(storage: Storage): TypedArray {
    const s = ws(storage);
    const h = this.heap();
    switch (s.dtype) {
      case 'float32':
        return h.f32.subarray(s.ptr >>> 2, (s.ptr >>> 2) + s.numel);
      case 'float64':
        return h.f64.subarray(s.ptr >>> 3, (s.ptr >>> 3) + s.numel);
      case 'int32':
        return h.i32.subarray(s.ptr >>> 2, (s.ptr >>> 2) + s.numel);
      case 'bool':
        return h.u8.subarray(s.ptr, s.ptr + s.numel);
    }
  }

  /** The storage as a CPU storage over the same memory, to run a reference kernel in place. */
  private host(s: Storage): CpuStorage {
    return new CpuStorage(this.typed(s), s.dtype, true);
  }

  /**
   * Runs a method of the CPU reference in place on these arguments, each storage (null for an
   * absent operand) seen through `host`: the path for dtypes the wasm kernels do not take.
   */
  private onHost<K extends 'layerNorm' | 'layerNormBackward' | 'batchNorm' | 'batchNormEval' | 'batchNormRunning' | 'batchNormBackward' | 'attention' | 'attentionBackward'>(
    method: K,
    args: Parameters<CpuBackend[K]>,
  ): void {
    const onHost = args.map((a) => (a instanceof WasmStorage ? this.host(a) : a));
    (this.cpu[method] as (...a: unknown[]) => void)(...onHost);
  }

  alloc(numel: number, dtype: DType): Storage {
    return this.allocate(numel, dtype, true);
  }
  allocUninit(numel: number, dtype: DType): Storage {
    return this.allocate(numel, dtype, false);
  }
  private allocate(numel: number, dtype: DType, zero: boolean): Storage {
    if (!Number.isInteger(numel) || numel < 0) throw new RangeError(`alloc: numel must be a non-negative integer, got ${numel}`);
    const bytes = numel * BYTES[dtype];
    // Kernels index bytes with signed 32-bit offsets.
    if (bytes >= 2 ** 31) throw new RangeError(`alloc: ${numel} ${dtype} values exceed the wasm backend's 2 GiB per storage`);
    const cls = sizeClass(bytes);
    const free = this.freeLists.get(cls);
    let ptr: number;
    if (free && free.length > 0) {
      ptr = free.pop()!;
      this.pooled--;
      this.pooledBytes -= cls;
      // In wasm: a TypedArray fill over a shared memory is many times slower (zero_bytes).
      if (zero && bytes > 0) this.k.zero_bytes(ptr, bytes);
    } else {
      // Fresh memory past the top has never been written: it is zero.
      ptr = this.bump(cls);
    }
    this.live++;
    this.liveBytes += bytes;
    return new WasmStorage(ptr, numel, dtype, false, cls);
  }
  upload(data: TypedArray, dtype: DType): Storage {
    const s = this.allocUninit(data.length, dtype);
    this.typed(s).set(data);
    return s;
  }
  view(base: Storage, offset: number, numel: number): Storage {
    const b = ws(base);
    if (!Number.isInteger(offset) || !Number.isInteger(numel) || offset < 0 || numel < 0 || offset + numel > b.numel) {
      throw new RangeError(`view: elements [${offset}, ${offset + numel}) are outside a storage of ${b.numel}`);
    }
    return new WasmStorage(b.ptr + offset * BYTES[b.dtype], numel, b.dtype, true, 0);
  }
  write(dst: Storage, data: TypedArray): void {
    if (data.length !== dst.numel) throw new RangeError(`write: ${data.length} values into a storage of ${dst.numel}`);
    this.typed(dst).set(data);
  }
  read(s: Storage): Promise<TypedArray> {
    return Promise.resolve(this.readSync(s));
  }
  readSync(s: Storage): TypedArray {
    return this.typed(s).slice();
  }
  release(s: Storage): void {
    const w = ws(s);
    if (w.isView) return;
    w.released = true;
    let list = this.freeLists.get(w.reserved);
    if (!list) this.freeLists.set(w.reserved, (list = []));
    list.push(w.ptr);
    this.live--;
    this.liveBytes -= w.numel * BYTES[w.dtype];
    this.pooled++;
    this.pooledBytes += w.reserved;
  }
  flush(): void {}
  sync(): Promise<void> {
    return Promise.resolve();
  }
  memory(): MemoryInfo {
    return { liveBuffers: this.live, liveBytes: this.liveBytes, pooledBuffers: this.pooled, pooledBytes: this.pooledBytes };
  }

  /** Scratch memory for one kernel call, grown as needed and reused. */
  private scratch(bytes: number): number {
    if (bytes > this.scratchBytes) {
      this.scratchBytes = sizeClass(Math.max(bytes, this.scratchBytes * 2));
      this.scratchPtr = this.bump(this.scratchBytes);
    }
    return this.scratchPtr;
  }

  // ---- kernels that run the reference code over this memory ----

  fill(out: Storage, value: number): void {
    this.cpu.fill(this.host(out), value);
  }
  cast(x: Storage, out: Storage): void {
    this.cpu.cast(this.host(x), this.host(out));
  }
  argReduce(op: ArgReduceOp, x: Storage, out: Storage, layout: ReduceLayout): void {
    this.cpu.argReduce(op, this.host(x), this.host(out), layout);
  }
  maxPool2d(x: Storage, out: Storage, argOut: Storage | null, g: Window2d): void {
    const [xs, o] = [ws(x), ws(out)];
    if (xs.dtype !== 'float32' || o.dtype !== 'float32') return this.cpu.maxPool2d(this.host(x), this.host(out), argOut && this.host(argOut), g);
    const arg = argOut ? ws(argOut) : null;
    maxPool2dWasm(this.k, { x: xs.ptr, out: o.ptr, arg: arg?.ptr ?? 0 }, this.typed(x) as Float32Array, this.typed(out) as Float32Array, arg && (this.typed(arg) as Int32Array), g);
  }
  maxPool2dBackward(grad: Storage, arg: Storage, out: Storage, g: Window2d): void {
    this.cpu.maxPool2dBackward(this.host(grad), this.host(arg), this.host(out), g);
  }
  avgPool2d(x: Storage, out: Storage, g: AvgPool2dLayout): void {
    const [xs, o] = [ws(x), ws(out)];
    if (xs.dtype !== 'float32' || o.dtype !== 'float32') return this.cpu.avgPool2d(this.host(x), this.host(out), g);
    avgPool2dWasm(this.k, { x: xs.ptr, out: o.ptr }, this.typed(x) as Float32Array, this.typed(out) as Float32Array, g);
  }
  avgPool2dBackward(grad: Storage, out: Storage, g: AvgPool2dLayout): void {
    this.cpu.avgPool2dBackward(this.host(grad), this.host(out), g);
  }
  gather(x: Storage, idx: Storage, out: Storage, layout: GatherLayout): void {
    this.cpu.gather(this.host(x), this.host(idx), this.host(out), layout);
  }
  scatterAdd(src: Storage, idx: Storage, out: Storage, layout: GatherLayout): void {
    this.cpu.scatterAdd(this.host(src), this.host(idx), this.host(out), layout);
  }
  cumsum(x: Storage, out: Storage, layout: ReduceLayout): void {
    this.cpu.cumsum(this.host(x), this.host(out), layout);
  }
  argsort(x: Storage, out: Storage, layout: SortLayout): void {
    this.cpu.argsort(this.host(x), this.host(out), layout);
  }
  random(out: Storage, key0: number, key1: number, dist: RandomDist): void {
    const o = ws(out);
    if (o.dtype === 'float32' && o.numel > 0) {
      switch (dist.kind) {
        case 'uniform':
          this.k.rng_uniform(o.ptr, o.numel, 0, key0, key1, dist.low, dist.high - dist.low);
          return;
        case 'normal':
          this.k.rng_normal_1(o.ptr, o.numel, 0, key0, key1, dist.mean, dist.std);
          return;
        case 'bernoulliKeep':
          this.k.rng_keep(o.ptr, o.numel, 0, key0, key1, Math.fround(dist.p));
          return;
      }
    }
    this.cpu.random(this.host(out), key0, key1, dist);
  }

  // ---- SIMD kernels ----

  unary(op: UnaryOp, x: Storage, out: Storage, p0 = 0, p1 = 0): void {
    const xs = ws(x);
    const o = ws(out);
    // x ** 2 is the square kernel bit for bit: the square of a float32 is exact in float64.
    const kernelOp = op === 'powScalar' && p0 === 2 && xs.dtype === 'float32' ? 'square' : op;
    const fn = this.unaryKernel(kernelOp, xs.dtype, o.dtype);
    if (!fn) this.cpu.unary(op, this.host(x), this.host(out), p0, p1);
    // The limited ones (they return a flag, which a worker cannot hand back) run unsplit.
    else if (!(kernelOp in SIMD_UNARY_LIMIT) && this.splitFlat(unaryExport(kernelOp, xs.dtype === 'float32' ? 'f32' : 'i32'), xs, o, unaryCost(kernelOp, p0), p0, p1)) return;
    else if (fn(xs.ptr, o.ptr, xs.numel, p0, p1)) this.finishBeyondLimit(op, o, p0, p1);
  }

  /**
   * A unary kernel over `x` split in runs of whole vectors among threads, where the cost model
   * says so (false: not split). Each element is the same function of its input on any thread.
   */
  private splitFlat(name: string, x: WasmStorage, out: WasmStorage, cost = 1, p0 = 0, p1 = 0): boolean {
    const n = x.numel;
    const threads = this.splitMemoryBound(cost * n, cost * n * (BYTES[x.dtype] + BYTES[out.dtype]));
    if (threads <= 1) return false;
    const [xb, ob] = [BYTES[x.dtype], BYTES[out.dtype]];
    // Float parameters travel as float64 records (one part per thread): the export rounds them to
    // f32 on every thread as it does here.
    const floats = p0 !== 0 || p1 !== 0;
    const parts = splitRange(Math.ceil(n / 4), threads).map(([q0, q1]) => {
      const [i0, i1] = [4 * q0, Math.min(n, 4 * q1)];
      return [{ ...this.kernelCall(name, [x.ptr + i0 * xb, out.ptr + i0 * ob, i1 - i0, p0, p1]), floats }];
    });
    this.runSplit(parts);
    return true;
  }

  /**
   * The outputs a limited SIMD body (module.ts SIMD_UNARY_LIMIT: sin and cos past 2^20) left
   * holding their x: the closure computes them, one at a time. They are rare (|x| > 2^20 as an
   * angle has lost all but a few bits of its phase), so the scan runs only when the kernel saw one.
   */
  private finishBeyondLimit(op: UnaryOp, o: WasmStorage, p0: number, p1: number): void {
    const limit = SIMD_UNARY_LIMIT[op as keyof typeof SIMD_UNARY_LIMIT] ?? Infinity;
    const f = this.heap().f32;
    const cpu = UNARY_OPS[op].cpu;
    const base = o.ptr >> 2;
    for (let i = base; i < base + o.numel; i++) {
      const v = f[i];
      if (Math.abs(v) > limit && Math.abs(v) < Infinity) f[i] = cpu(v, p0, p1);
    }
  }

  binary(op: BinaryOp, a: Storage, b: Storage, out: Storage, layout: BroadcastLayout): void {
    const as = ws(a);
    const bs = ws(b);
    const o = ws(out);
    const dt = this.binaryKernelDtype(op, as.dtype, bs.dtype, o.dtype);
    const plan = dt && planBroadcast(layout.shape, [layout.aStrides, layout.bStrides]);
    if (!dt || !plan) this.cpu.binary(op, this.host(a), this.host(b), this.host(out), layout);
    else {
      const cost = ELEMENTWISE_COST[op];
      if (!this.binaryPeriodic(binaryExport(op, dt, 'vv'), plan, layout, [as, bs], o, cost)) this.runRows(binaryExport(op, dt, plan.variant), plan, [as, bs], o, cost);
    }
  }

  /**
   * A binary op whose rows are short (a bias over [R, 10], a per-channel bias over 7x7 maps) as
   * long rows: where one operand is contiguous and the other repeats with a period of P elements
   * of the output (its strides 0 outside the last dims, P their product), that one is written out
   * into scratch as L >= PERIODIC_ROW elements (whole periods, whole vectors) and the op runs as
   * rows of L against that one row ('vv', row stride 0), the remainder as one shorter row. Each
   * element meets the same two values under the same instruction: the same bits. False: not such
   * a case (it runs as planned).
   */
  private binaryPeriodic(name: string, plan: BroadcastPlan, layout: BroadcastLayout, operands: WasmStorage[], out: WasmStorage, cost?: number): boolean {
    const n = out.numel;
    if (plan.cols >= PERIODIC_ROW || n < PERIODIC_MIN) return false;
    const dims = collapseDims(layout.shape, [layout.aStrides, layout.bStrides]);
    const periodic = periodOf(dims);
    if (!periodic) return false;
    const { flat, repeats, from, period, inner } = periodic;
    const unit = period * (4 / gcd(period, 4));
    const L = unit * Math.ceil(PERIODIC_ROW / unit);
    if (L > PERIODIC_MAX || n < 2 * L) return false;
    const row = this.scratch(4 * L);
    const h = this.heap().i32;
    const base = row >> 2;
    // The period in order (fill for a stride-0 dim, copyWithin for a contiguous run), then repeated.
    const expand = (k: number, src: number, dst: number): void => {
      const { size, strides } = dims[k];
      const st = strides[repeats];
      if (k === dims.length - 1) {
        if (st === 0) h.fill(h[src], dst, dst + size);
        else if (st === 1) h.copyWithin(dst, src, src + size);
        else for (let i = 0; i < size; i++) h[dst + i] = h[src + i * st];
      } else if (st === 0) {
        expand(k + 1, src, dst);
        for (let i = 1; i < size; i++) h.copyWithin(dst + i * inner[k], dst, dst + inner[k]);
      } else for (let i = 0; i < size; i++) expand(k + 1, src + i * st, dst + i * inner[k]);
    };
    expand(from, operands[repeats].ptr >> 2, base);
    for (let at = period; at < L; at += period) h.copyWithin(base + at, base, base + period);
    const rows = Math.floor(n / L);
    // Views of the elements from `first` on (the written-out row for the repeating operand).
    const view = (s: WasmStorage, ptr: number, numel: number) => new WasmStorage(ptr, numel, s.dtype, true, 0);
    const call = (first: number, r: number, c: number) =>
      this.runRows(
        name,
        { variant: 'vv', blocks: 1, rows: r, cols: c, rowStrides: flat ? [0, c] : [c, 0], blockStrides: [0, 0], outer: [] },
        operands.map((s, j) => (j === flat ? view(s, s.ptr + 4 * first, r * c) : view(s, row, c))),
        view(out, out.ptr + first * BYTES[out.dtype], r * c),
        cost,
      );
    call(0, rows, L);
    if (n > rows * L) call(rows * L, 1, n - rows * L);
    return true;
  }

  where(cond: Storage, a: Storage, b: Storage, out: Storage, layout: WhereLayout): void {
    const cs = ws(cond);
    const as = ws(a);
    const bs = ws(b);
    const o = ws(out);
    const fourBytes = (d: DType) => d === 'float32' || d === 'int32';
    const plan =
      cs.dtype === 'bool' && fourBytes(o.dtype) && as.dtype === o.dtype && bs.dtype === o.dtype
        ? planBroadcast(layout.shape, [layout.condStrides, layout.aStrides, layout.bStrides])
        : null;
    if (!plan) this.cpu.where(this.host(cond), this.host(a), this.host(b), this.host(out), layout);
    else this.runRows(whereExport(plan.variant), plan, [cs, as, bs], o);
  }

  /**
   * Runs a row kernel (module.ts emitRowKernel) once per index of the plan's outer dims; `cost`:
   * its time per element over copy's (ELEMENTWISE_COST).
   */
  private runRows(name: string, plan: BroadcastPlan, operands: WasmStorage[], out: WasmStorage, cost?: number): void {
    if (out.numel === 0) return;
    if (plan.outer.length === 0 && this.splitRows(name, plan, operands, out, cost)) return;
    const fn = this.k[name];
    const sizes = operands.map((s) => BYTES[s.dtype]);
    const outSize = BYTES[out.dtype];
    let outPtr = out.ptr;
    forEachOuter(plan.outer, operands.length, (offsets) => {
      fn(...operands.map((s, j) => s.ptr + offsets[j] * sizes[j]), outPtr, plan.blocks, plan.rows, plan.cols, ...plan.rowStrides, ...plan.blockStrides);
      outPtr += plan.blocks * plan.rows * plan.cols * outSize;
    });
  }

  /**
   * One row-kernel call (a plan without outer dims) split among threads where the cost model says
   * so (false: not split): by blocks, else by rows, else (one row) by runs of whole vectors of
   * columns. Each output element is the same function of its inputs on any thread.
   */
  private splitRows(name: string, plan: BroadcastPlan, operands: WasmStorage[], out: WasmStorage, cost = 1): boolean {
    const threads = this.splitMemoryBound(cost * out.numel, cost * operands.reduce((b, s) => b + s.numel * BYTES[s.dtype], out.numel * BYTES[out.dtype]));
    if (threads <= 1) return false;
    const sizes = operands.map((s) => BYTES[s.dtype]);
    const outSize = BYTES[out.dtype];
    const { blocks, rows, cols, rowStrides, blockStrides } = plan;
    const call = (ptrs: number[], outPtr: number, b: number, r: number, c: number) => [this.kernelCall(name, [...ptrs, outPtr, b, r, c, ...rowStrides, ...blockStrides])];
    let parts: ThreadPart[];
    if (blocks >= threads) {
      parts = splitRange(blocks, threads).map(([b0, b1]) =>
        call(operands.map((s, j) => s.ptr + b0 * blockStrides[j] * sizes[j]), out.ptr + b0 * rows * cols * outSize, b1 - b0, rows, cols),
      );
    } else if (blocks === 1 && rows >= threads) {
      parts = splitRange(rows, threads).map(([r0, r1]) => call(operands.map((s, j) => s.ptr + r0 * rowStrides[j] * sizes[j]), out.ptr + r0 * cols * outSize, 1, r1 - r0, cols));
    } else if (blocks === 1 && rows === 1) {
      parts = splitRange(Math.ceil(cols / 4), threads).map(([q0, q1]) => {
        const [c0, c1] = [4 * q0, Math.min(cols, 4 * q1)];
        // A column-broadcast operand ('s') is one value per row: it does not move.
        return call(operands.map((s, j) => (plan.variant[j] === 'v' ? s.ptr + c0 * sizes[j] : s.ptr)), out.ptr + c0 * outSize, 1, 1, c1 - c0);
      });
    } else return false;
    this.runSplit(parts);
    return true;
  }

  axpy(dst: Storage, src: Storage, alpha: number): void {
    const d = ws(dst);
    const s = ws(src);
    if (d.numel !== s.numel) throw new RangeError(`axpy: ${s.numel} values into ${d.numel}`);
    if (d.dtype === 'float32' && s.dtype === 'float32') this.k.axpy(d.ptr, s.ptr, d.numel, alpha);
    else this.cpu.axpy(this.host(dst), this.host(src), alpha);
  }

  stridedCopy(src: Storage, dst: Storage, l: StridedCopyLayout): void {
    const s = ws(src);
    const d = ws(dst);
    if (s.dtype !== d.dtype) {
      this.cpu.stridedCopy(this.host(src), this.host(dst), l);
      return;
    }
    if (l.shape.some((n) => n === 0)) return;
    // The loop nest runs in wasm (copy.ts); elements move as bit patterns: NaN payloads survive.
    const width = BYTES[s.dtype] as CopyWidth;
    const plan = planStridedCopy(l.shape, l.srcStrides, l.dstStrides, width);
    const desc = this.scratch(copyDescriptorBytes(plan));
    writeCopyDescriptor(this.heap().i32, desc, plan, width);
    this.k[stridedCopyExport(width)](s.ptr + l.srcOffset * width, d.ptr + l.dstOffset * width, ...stridedCopyArgs(plan, width, desc));
  }

  reduce(op: ReduceOp, x: Storage, out: Storage, l: ReduceLayout): void {
    const xs = ws(x);
    const o = ws(out);
    // prod has no SIMD body: it is rare, and the reference's float64 product is the one torch matches.
    if (xs.dtype !== 'float32' || o.dtype !== 'float32' || op === 'prod') {
      this.cpu.reduce(op, this.host(x), this.host(out), l);
      return;
    }
    if (l.inner === 1) this.k[`reduce_rows_${op}`](xs.ptr, o.ptr, l.outer, l.size);
    else if (op === 'sum') this.k.reduce_cols_sum(xs.ptr, o.ptr, l.outer, l.size, l.inner, this.scratch(l.inner * 8));
    else this.k[`reduce_cols_${op}`](xs.ptr, o.ptr, l.outer, l.size, l.inner);
  }

  softmax(x: Storage, out: Storage, l: SoftmaxLayout): void {
    const xs = ws(x);
    const o = ws(out);
    if (xs.dtype === 'float32' && o.dtype === 'float32') this.k.softmax(xs.ptr, o.ptr, l.rows, l.cols, l.log ? 1 : 0);
    else this.cpu.softmax(this.host(x), this.host(out), l);
  }

  crossEntropy(logits: Storage, labels: Storage, out: Storage, l: CrossEntropyLayout): void {
    const x = ws(logits);
    const y = ws(labels);
    const o = ws(out);
    if (x.dtype === 'float32' && y.dtype === 'int32' && o.dtype === 'float32') {
      this.k.cross_entropy(x.ptr, y.ptr, o.ptr, l.rows, l.cols, l.labelSmoothing, l.ignoreIndex);
    } else this.cpu.crossEntropy(this.host(logits), this.host(labels), this.host(out), l);
  }

  crossEntropyBackward(logits: Storage, labels: Storage, gradRows: Storage, out: Storage, l: CrossEntropyLayout): void {
    const x = ws(logits);
    const y = ws(labels);
    const g = ws(gradRows);
    const o = ws(out);
    if (x.dtype === 'float32' && y.dtype === 'int32' && g.dtype === 'float32' && o.dtype === 'float32') {
      this.k.cross_entropy_backward(x.ptr, y.ptr, g.ptr, o.ptr, l.rows, l.cols, l.labelSmoothing, l.ignoreIndex);
    } else this.cpu.crossEntropyBackward(this.host(logits), this.host(labels), this.host(gradRows), this.host(out), l);
  }

  crossEntropyWithSum(logits: Storage, labels: Storage, out: Storage, total: Storage, l: CrossEntropyLayout): void {
    const [x, y, o, t] = [logits, labels, out, total].map(ws);
    if (x.dtype === 'float32' && y.dtype === 'int32' && o.dtype === 'float32' && t.dtype === 'float32' && o.numel === l.rows && t.numel === 1) {
      this.k.cross_entropy_sum(x.ptr, y.ptr, o.ptr, l.rows, l.cols, l.labelSmoothing, l.ignoreIndex, t.ptr);
    } else this.cpu.crossEntropyWithSum(this.host(logits), this.host(labels), this.host(out), this.host(total), l);
  }

  crossEntropyBackwardWithSums(logits: Storage, labels: Storage, gradRows: Storage, out: Storage, sums: Storage, l: CrossEntropyLayout): void {
    const [x, y, g, o, s] = [logits, labels, gradRows, out, sums].map(ws);
    if (x.dtype === 'float32' && y.dtype === 'int32' && g.dtype === 'float32' && o.dtype === 'float32' && s.dtype === 'float32' && o.numel === l.rows * l.cols && s.numel === l.cols && l.cols > 1) {
      this.k.cross_entropy_backward_sums(x.ptr, y.ptr, g.ptr, o.ptr, l.rows, l.cols, l.labelSmoothing, l.ignoreIndex, s.ptr, this.scratch(l.cols * 8));
    } else this.cpu.crossEntropyBackwardWithSums(this.host(logits), this.host(labels), this.host(gradRows), this.host(out), this.host(sums), l);
  }

  layerNorm(x: Storage, weight: Storage | null, bias: Storage | null, out: Storage, mean: Storage, rstd: Storage, l: LayerNormLayout): void {
    const operands = [x, weight, bias, out, mean, rstd];
    if (!allFloat32(operands)) return this.onHost('layerNorm', [x, weight, bias, out, mean, rstd, l]);
    if (l.rows === 0 || l.cols === 0) return;
    const [xp, wp, bp, op, mp, rp] = operands.map((s) => (s ? ws(s).ptr : 0));
    this.k[layerNormExport(!!weight, !!bias)](xp, wp, bp, op, mp, rp, l.rows, l.cols, l.eps);
  }

  layerNormBackward(
    grad: Storage,
    x: Storage,
    mean: Storage,
    rstd: Storage,
    weight: Storage | null,
    dx: Storage | null,
    dweight: Storage | null,
    dbias: Storage | null,
    l: LayerNormLayout,
  ): void {
    const operands = [grad, x, mean, rstd, weight, dx, dweight, dbias];
    if (!allFloat32(operands)) return this.onHost('layerNormBackward', [grad, x, mean, rstd, weight, dx, dweight, dbias, l]);
    if (l.cols === 0) return;
    // The kernel always writes both parameter gradients: the unwanted ones go to scratch.
    const scratch = !dweight || !dbias ? this.scratch(l.cols * 8) : 0;
    const [gp, xp, mp, rp, wp, dxp] = operands.slice(0, 6).map((s) => (s ? ws(s).ptr : 0));
    const dwp = dweight ? ws(dweight).ptr : scratch;
    const dbp = dbias ? ws(dbias).ptr : scratch + l.cols * 4;
    this.k[layerNormBackwardExport(!!weight)](gp, xp, mp, rp, wp, dxp, dwp, dbp, l.rows, l.cols);
  }
  layerNormBackwardFused(
    grad: Storage, x: Storage, mean: Storage, rstd: Storage, weight: Storage | null,
    add: Storage | null, dx: Storage, dweight: Storage | null, dbias: Storage | null,
    sums: readonly Storage[], l: LayerNormBackwardFusedLayout,
  ): void {
    const operands = [grad, x, mean, rstd, weight, add, dx, dweight, dbias, ...sums];
    if (!allFloat32(operands)) {
      const h = (s: Storage | null) => s && this.host(s);
      this.cpu.layerNormBackwardFused(h(grad)!, h(x)!, h(mean)!, h(rstd)!, h(weight), h(add), h(dx)!, h(dweight), h(dbias), sums.map((s) => this.host(s)), l);
      return;
    }
    checkLayerNormBackwardFused(add, dx, sums, l);
    const p = (s: Storage | null) => (s ? ws(s).ptr : 0);
    layerNormBackwardFusedWasm(this.mem, (b) => this.scratch(b), {
      grad: p(grad), x: p(x), mean: p(mean), rstd: p(rstd), weight: p(weight), add: p(add), dx: p(dx), dweight: p(dweight), dbias: p(dbias), sums: sums.map(p),
    }, l);
  }

  fusedMap(): FusedMapKernels {
    const splitter: FusedSplitter = {
      threads: (elements, bytes) => (this.pool && this.splitFused ? this.splitMemoryBound(elements, bytes) : 1),
      run: (parts) => {
        if (!this.runGeneratedParts(parts)) this.splitFused = false;
      },
    };
    return { ...wasmFusedMap(this, splitter), matmulEpilogue: (l, p, acc) => this.matmulEpilogue(l, p, acc) };
  }
  attention(q: Storage, k: Storage, v: Storage, out: Storage, probs: Storage, l: AttentionLayout): void {
    const operands = [q, k, v, out, probs];
    if (!allFloat32(operands)) return this.onHost('attention', [q, k, v, out, probs, l]);
    const [qp, kp, vp, op, pp] = operands.map((s) => ws(s).ptr);
    const threads = this.attentionThreads(l);
    if (threads > 1) {
      const bytes = Math.ceil(attentionScratchBytes(l) / 16) * 16;
      const scratch = this.scratch(threads * bytes + 16);
      this.runSplit(
        splitRange(l.n, threads).map(([b0, b1], t) => {
          const [scores, pv] = attentionForwardArgs(qp, kp, vp, op, pp, l, b0, b1, scratch + t * bytes);
          return [{ ...this.kernelCall('attn_scores', scores), floats: true }, this.kernelCall('attn_pv', pv)];
        }),
      );
      // A row whose scores were not all finite is left holding non-finite values (a finite row's
      // probabilities are in [0, 1]); the parts' flags do not come back, so the probabilities are
      // summed (finite exactly when all are: at most one per element), and such a call runs again
      // whole, where the softmax kernel's rules take the row.
      const sum = scratch + threads * bytes;
      this.k.reduce_rows_sum(pp, sum, 1, ws(probs).numel);
      if (Number.isFinite(this.heap().f32[sum >> 2])) return;
    }
    attentionWasm({ exports: this.k, scratch: (b) => this.scratch(b) }, qp, kp, vp, op, pp, l);
  }

  attentionBackward(grad: Storage, q: Storage, k: Storage, v: Storage, probs: Storage, dq: Storage, dk: Storage, dv: Storage, l: AttentionLayout): void {
    const operands = [grad, q, k, v, probs, dq, dk, dv];
    if (!allFloat32(operands)) return this.onHost('attentionBackward', [grad, q, k, v, probs, dq, dk, dv, l]);
    const [gp, qp, kp, vp, pp, dqp, dkp, dvp] = operands.map((s) => ws(s).ptr);
    const threads = this.attentionThreads(l, ATTENTION_BACKWARD_FLOPS);
    if (threads <= 1) return attentionBackwardWasm({ exports: this.k, scratch: (b) => this.scratch(b) }, gp, qp, kp, vp, pp, dqp, dkp, dvp, l);
    const bytes = Math.ceil(attentionBackwardArgs(gp, qp, kp, vp, pp, dqp, dkp, dvp, l)[1] / 16) * 16;
    const scratch = this.scratch(threads * bytes);
    this.runSplit(
      splitRange(l.n, threads).map(([b0, b1], t) => {
        const [args] = attentionBackwardArgs(gp, qp, kp, vp, pp, dqp, dkp, dvp, l, b0, b1);
        return [{ ...this.kernelCall('attn_backward', [...args, scratch + t * bytes]), floats: true }];
      }),
    );
  }

  /**
   * Threads for an attention call, split by batch: its products over a head's d features (8 in
   * the ViT) run far below the matmul rate the cost model counts in, so the work is priced by
   * measured time (ATTENTION_FORWARD_FLOPS).
   */
  private attentionThreads(l: AttentionLayout, flopsPer = ATTENTION_FORWARD_FLOPS): number {
    if (!this.pool || l.n < 2) return 1;
    return Math.min(l.n, this.splitThreads(flopsPer * l.n * l.heads * l.l * l.s * l.d));
  }

  attentionBackwardWithSums(grad: Storage, q: Storage, k: Storage, v: Storage, probs: Storage, x: Storage, sums: Storage, l: AttentionLayout): void {
    const operands = [grad, q, k, v, probs, x, sums];
    if (!allFloat32(operands)) {
      const [hg, hq, hk, hv, hp, hx, hs] = operands.map((o) => this.host(o));
      return this.cpu.attentionBackwardWithSums(hg, hq, hk, hv, hp, hx, hs, l);
    }
    const width = checkAttentionBackwardWithSums(x, sums, l);
    const [gp, qp, kp, vp, pp, xp, sp] = operands.map((o) => ws(o).ptr);
    attentionBackwardWithSumsWasm({ exports: this.k, scratch: (b) => this.scratch(b) }, gp, qp, kp, vp, pp, xp, sp, width, l);
  }

  batchNorm(x: Storage, weight: Storage | null, bias: Storage | null, out: Storage, mean: Storage, variance: Storage, rstd: Storage, l: BatchNormLayout): void {
    const operands = [x, weight, bias, out, mean, variance, rstd];
    if (!allFloat32(operands)) return this.onHost('batchNorm', [x, weight, bias, out, mean, variance, rstd, l]);
    if (l.n * l.hw === 0) return;
    // Threads take ranges of channels, as in the backward. Per channel: a row of x and out, two
    // floats of mean, one of the rest; read twice (the two sums) and written once.
    const elements = l.n * l.c * l.hw;
    const threads = this.splitMemoryBound(4 * elements, 12 * elements);
    this.splitChannels('batch_norm', operands, [l.hw, 1, 1, l.hw, 2, 1, 1], l, threads);
  }

  batchNormEval(x: Storage, runningMean: Storage, runningVar: Storage, weight: Storage | null, bias: Storage | null, out: Storage, l: BatchNormLayout): void {
    const operands = [x, runningMean, runningVar, weight, bias, out];
    if (!allFloat32(operands)) return this.onHost('batchNormEval', [x, runningMean, runningVar, weight, bias, out, l]);
    if (l.n * l.hw === 0) return;
    const elements = l.n * l.c * l.hw;
    const threads = this.splitMemoryBound(elements, 8 * elements);
    this.splitChannels('batch_norm_eval', operands, [l.hw, 1, 1, 1, 1, l.hw], l, threads);
  }

  batchNormRunning(runningMean: Storage, runningVar: Storage, meanPairs: Storage, variance: Storage, count: Storage | null, outMean: Storage, outVar: Storage, outCount: Storage | null, l: BatchNormRunningLayout): void {
    const operands = [runningMean, runningVar, meanPairs, variance, outMean, outVar];
    if (!allFloat32(operands)) return this.onHost('batchNormRunning', [runningMean, runningVar, meanPairs, variance, count, outMean, outVar, outCount, l]);
    if (count && outCount) this.typed(outCount)[0] = this.typed(count)[0] + 1;
    // A few hundred values at most: a loop over the heap costs less than a kernel call. float32 as
    // the kernels compute it: the affine kernel's f32 factor, f32 product (+0), f32 sum.
    const [RM, RV, MP, V, OM, OV] = operands.map((o) => this.typed(o));
    const f = Math.fround;
    const [keep, take, takeVar] = [f(l.keep), f(l.take), f(l.takeVar)];
    for (let ch = 0; ch < l.c; ch++) {
      OM[ch] = f(keep * RM[ch]) + 0 + (f(take * MP[2 * ch]) + 0);
      OV[ch] = f(keep * RV[ch]) + 0 + (f(takeVar * V[ch]) + 0);
    }
  }

  batchNormBackward(
    grad: Storage,
    x: Storage,
    mean: Storage,
    rstd: Storage,
    weight: Storage | null,
    dx: Storage | null,
    dweight: Storage | null,
    dbias: Storage | null,
    l: BatchNormLayout,
  ): void {
    const operands = [grad, x, mean, rstd, weight, dx, dweight, dbias];
    if (!allFloat32(operands)) return this.onHost('batchNormBackward', [grad, x, mean, rstd, weight, dx, dweight, dbias, l]);
    if (l.n * l.hw === 0) return;
    // Per channel: hw floats of grad, x and dx (a row), two floats of mean, one of the rest.
    const elements = l.n * l.c * l.hw;
    const threads = this.splitMemoryBound(3 * elements, 12 * elements);
    this.splitChannels('batch_norm_backward', operands, [l.hw, l.hw, 2, 1, 1, l.hw, 1, 1], l, threads);
  }

  /**
   * A BatchNorm kernel over ranges of channels, one per thread: a channel's sums run over its
   * images in the same order on any thread, so the result does not depend on the thread count.
   * `floatsPerChannel[j]` is how far operand j's pointer moves per channel (a null operand is
   * pointer 0: the kernel skips that output, or takes weight as 1, bias as 0); the kernel's
   * arguments after the pointers are n, c, hw, [eps as two i32 halves,] channels.
   */
  private splitChannels(
    name: 'batch_norm' | 'batch_norm_eval' | 'batch_norm_backward',
    operands: (Storage | null)[],
    floatsPerChannel: number[],
    l: BatchNormLayout,
    threads: number,
  ): void {
    const ptrs = operands.map((s) => (s ? ws(s).ptr : 0));
    const eps = name === 'batch_norm_backward' ? [] : epsArgs(l.eps);
    this.runSplit(
      splitRange(l.c, Math.min(l.c, threads)).map(([c0, c1]) => [
        this.kernelCall(name, [...ptrs.map((p, j) => (p ? p + c0 * floatsPerChannel[j] * 4 : 0)), l.n, l.c, l.hw, ...eps, c1 - c0]),
      ]),
    );
  }

  private convKernels: WasmConv | null = null;
  /** The implicit-GEMM convolutions of conv.ts for float32; the reference kernels otherwise. */
  private conv(...operands: Storage[]): WasmConv | null {
    if (operands.some((s) => ws(s).dtype !== 'float32')) return null;
    this.convKernels ??= new WasmConv(this.convHost());
    return this.convKernels;
  }
  /** What conv.ts and conv-winograd.ts need of the backend. */
  private convHost(): WasmConvHost {
    return {
      exports: this.k,
      ptr: (s) => ws(s).ptr,
      scratch: (b) => this.scratch(b),
      f32: () => this.heap().f32,
      i32: () => this.heap().i32,
      threadsFor: (flops) => this.splitThreads(flops),
      callIndex: (name) => this.kernelCall(name, []).fn,
      runParts: (parts) => this.runSplit(parts),
    };
  }
  /**
   * Convolutions whose windows tile the input as gemms over patches (conv-patch.ts): where
   * usePatchConv measured them faster ('auto'), wherever the form applies ('on'), or never ('off').
   * Public for tests and measurements.
   */
  patchConvs: 'auto' | 'on' | 'off' = 'auto';
  private patchKernels: PatchConv | null = null;
  /** The patch form (conv-patch.ts) where it takes `l` and runs it faster than conv.ts; null otherwise. */
  private patchConv(l: Conv2dLayout, kernel: ConvKernel): PatchConv | null {
    if (this.patchConvs === 'off' || !(this.patchConvs === 'on' ? isPatchConv(l) : usePatchConv(l, kernel))) return null;
    return (this.patchKernels ??= new PatchConv({
      exports: this.k,
      scratch: (b) => this.scratch(b),
      i32: () => this.heap().i32,
      gemm: (job) => this.runGemm(job, this.splitThreads(2 * job.batch * job.m * job.n * job.k)),
    }));
  }
  /**
   * 3x3 stride-1 convolutions (forward and input gradient) by Winograd's F(2x2, 3x3)
   * (conv-winograd.ts): where useWinogradConv measured them faster ('auto'), wherever the form
   * applies ('on'), or never ('off'). Public for tests and measurements.
   */
  winogradConvs: 'auto' | 'on' | 'off' = 'auto';
  private winogradKernels: WinogradConv | null = null;
  /** The Winograd form where it takes `l` (and, on 'auto', runs it faster than conv.ts); null otherwise. */
  private winogradConv(k: WasmConv, l: Conv2dLayout, kernel: WinogradKernel): WinogradConv | null {
    if (this.winogradConvs === 'off' || !(this.winogradConvs === 'on' ? isWinogradConv(l, kernel) : useWinogradConv(l, kernel))) return null;
    return (this.winogradKernels ??= new WinogradConv(this.convHost(), k));
  }
  conv2d(x: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    const k = this.conv(x, weight, out);
    const p = k && this.patchConv(l, 'forward');
    const wg = k && !p && this.winogradConv(k, l, 'forward');
    if (p) p.forward(ws(x).ptr, ws(weight).ptr, ws(out).ptr, l);
    else if (wg) wg.forward(x, weight, out, l);
    else if (k) k.forward(x, weight, out, l);
    else this.cpu.conv2d(this.host(x), this.host(weight), this.host(out), l);
  }
  conv2dBackwardInput(grad: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    const k = this.conv(grad, weight, out);
    const p = k && this.patchConv(l, 'backwardInput');
    const wg = k && !p && this.winogradConv(k, l, 'backwardInput');
    if (p) p.backwardInput(ws(grad).ptr, ws(weight).ptr, ws(out).ptr, l);
    else if (wg) wg.backwardInput(grad, weight, out, l);
    else if (k) k.backwardInput(grad, weight, out, l);
    else this.cpu.conv2dBackwardInput(this.host(grad), this.host(weight), this.host(out), l);
  }
  conv2dBackwardWeight(x: Storage, grad: Storage, out: Storage, l: Conv2dLayout): void {
    const k = this.conv(x, grad, out);
    const p = k && this.patchConv(l, 'backwardWeight');
    if (p) p.backwardWeight(ws(x).ptr, ws(grad).ptr, ws(out).ptr, l);
    else if (k) k.backwardWeight(x, grad, out, l);
    else this.cpu.conv2dBackwardWeight(this.host(x), this.host(grad), this.host(out), l);
  }

  im2col(x: Storage, cols: Storage, g: Window2d): void {
    const xs = ws(x);
    const c = ws(cols);
    if (xs.dtype === 'float32' && c.dtype === 'float32') this.k.im2col(xs.ptr, c.ptr, ...windowArgs(g));
    else this.cpu.im2col(this.host(x), this.host(cols), g);
  }

  col2im(cols: Storage, out: Storage, g: Window2d): void {
    const c = ws(cols);
    const o = ws(out);
    if (c.dtype === 'float32' && o.dtype === 'float32') this.k.col2im(c.ptr, o.ptr, ...windowArgs(g));
    else this.cpu.col2im(this.host(cols), this.host(out), g);
  }

  matmul(a: Storage, b: Storage, out: Storage, l: MatmulLayout): void {
    const as = ws(a);
    const bs = ws(b);
    const o = ws(out);
    if (as.dtype !== 'float32' || bs.dtype !== 'float32' || o.dtype !== 'float32') {
      this.cpu.matmul(this.host(a), this.host(b), this.host(out), l);
      return;
    }
    const { batch, m, n, k } = l;
    if (batch === 0 || m === 0 || n === 0) return;
    if (k === 0) {
      this.heap().f32.fill(0, o.ptr >>> 2, (o.ptr >>> 2) + batch * m * n);
      return;
    }
    const job = this.gemmJob(as, bs, o, l);
    // matmulEpilogue (below) computes the same bits through the same gemm: a new path here needs one there.
    if (this.gemv(job)) return;
    this.runGemm(job, this.splitThreads(2 * batch * m * n * k));
  }

  /**
   * Rows of C per panel of a matmul epilogue (whole matrices of a batch together where they fit;
   * else rounded up to the micro-kernel's rows); null: at least 256 rows and 4 MiB. Each panel
   * is a gemm call that packs all of B again, and the epilogue's pass over C costs little next
   * to the gemm, so panels pay only by bounding the scratch: interleaved on this machine (CPU
   * time, bias + relu), 512^3 took 1.05x the unfused matmul + fused call with 64-row panels,
   * 1.01x with 256, 0.995x with one panel; 2048x1024 (k = 64, 8 MiB of C) 1.07x, 1.005x and
   * 0.997x. The MLP's and the ViT's matmuls (C of 35-128 KiB) were within 1-2% of unfused at any
   * panel size. Public for tests and measurements.
   */
  epiloguePanelRows: number | null = null;

  /**
   * FusedMapKernels.matmulEpilogue: the matmul as `matmul` runs it, into a panel of scratch rows
   * at a time, each panel followed by the generated epilogue over those rows. Every element of C
   * is computed by the same micro-kernel in the same k order whatever the rows or batches of the
   * call (splitGemm relies on it too), so the panels hold matmul's very bits. Split over threads,
   * the gemm parts write one scratch C and this thread runs the epilogue over it after them.
   * (Each thread's epilogue over its own part, the workers running the band modules through
   * ThreadPool.load, was measured slower: 0.305 against 0.279 ms for 128x256x256 + bias + relu,
   * 0.755 against 0.733 for 128x784x256, fastest of 380 interleaved calls each on two threads,
   * where the whole epilogue costs this thread 5.5-7 us.)
   */
  private matmulEpilogue(l: MatmulLayout, p: FusedProgram, acc: number): ((...s: unknown[]) => void) | null {
    const { batch, m, n, k } = l;
    // One row or column runs as gemv (another summation order), k = 0 as a fill: left to matmul.
    if (batch === 0 || m <= 1 || n <= 1 || k === 0) return null;
    const bands = wasmEpilogueBands(this.mem, p, acc);
    const mr = this.tiling.mr;
    const rows = this.epiloguePanelRows ?? Math.max(256, (4 << 20) / (4 * n));
    // Whole matrices per panel (`per` of them), or panels of `panel` rows within each.
    const per = m <= rows ? Math.min(batch, Math.floor(rows / m)) : 0;
    const panel = per ? m : Math.ceil(rows / mr) * mr;
    const addresses = new Array<number>(p.inputs.length).fill(0);
    return (a, b, ...storages) => {
      storages.forEach((s, i) => { addresses[i] = s ? ws(s as Storage).ptr : 0; });
      const threads = this.splitThreads(2 * batch * m * n * k);
      const c = this.scratch((threads > 1 ? batch * m : Math.max(per, 1) * panel) * n * 4);
      const job = this.gemmJob(ws(a as Storage), ws(b as Storage), { ptr: c } as WasmStorage, l);
      if (threads > 1) {
        this.runGemm(job, threads);
        bands(addresses, c, 0, batch * m);
        return;
      }
      const at = (bt: number, r0: number) => ({ ...job, a: job.a + bt * job.aBatch + r0 * job.aRow, b: job.b + bt * job.bBatch });
      for (let bt = 0; bt < batch; bt += Math.max(per, 1)) {
        if (per) {
          const count = Math.min(per, batch - bt);
          this.k.gemm(...gemmArgs({ ...at(bt, 0), batch: count }, this.gemmScratch[0]));
          bands(addresses, c, bt * m, count * m);
          continue;
        }
        for (let r0 = 0; r0 < m; r0 += panel) {
          const height = Math.min(panel, m - r0);
          this.k.gemm(...gemmArgs({ ...at(bt, r0), m: height, batch: 1 }, this.gemmScratch[0]));
          bands(addresses, c, bt * m + r0, height);
        }
      }
    };
  }

  private gemmJob(a: WasmStorage, b: WasmStorage, out: WasmStorage, l: MatmulLayout): GemmJob {
    const { batch, m, n, k } = l;
    return {
      a: a.ptr,
      aRow: l.transA ? 4 : k * 4,
      aCol: l.transA ? m * 4 : 4,
      b: b.ptr,
      bRow: l.transB ? 4 : n * 4,
      bCol: l.transB ? k * 4 : 4,
      c: out.ptr,
      ldc: n * 4,
      m,
      n,
      k,
      batch,
      aBatch: l.aBatchStride * 4,
      bBatch: l.bBatchStride * 4,
      cBatch: m * n * 4,
    };
  }

  /** The gemm export over `threads` threads (splitGemm), each with its own packing scratch. */
  private runGemm(job: GemmJob, threads: number): void {
    const parts = splitGemm(job, threads, this.tiling);
    this.runSplit(parts.map((p, t) => [this.kernelCall('gemm', gemmArgs(p, this.gemmScratch[t]))]));
  }

  /**
   * A matmul with one output row (m = 1) or column (n = 1) as matrix-vector products; false when
   * the operands' layout does not suit them. C[0, :] = sum_p A(0, p) B(p, :), and for n = 1 the
   * same with the roles of A and B exchanged.
   */
  private gemv(j: GemmJob): boolean {
    if (j.m !== 1 && j.n !== 1) return false;
    // x: the vector operand; M(p, i) the matrix; out runs along i (len elements, contiguous).
    const [x, xStep, mat, stepP, stepI, len, xBatch, matBatch] =
      j.m === 1 ? [j.a, j.aCol, j.b, j.bRow, j.bCol, j.n, j.aBatch, j.bBatch] : [j.b, j.bRow, j.a, j.aCol, j.aRow, j.m, j.bBatch, j.aBatch];
    const rows = stepI === 4;
    if (!rows && !(stepP === 4 && xStep === 4)) return false;
    for (let bt = 0; bt < j.batch; bt++) {
      const [xb, mb, yb] = [x + bt * xBatch, mat + bt * matBatch, j.c + bt * j.cBatch];
      if (rows) this.k.gemv_rows(xb, xStep, mb, stepP, yb, len, j.k);
      else this.k.gemv_dots(xb, mb, stepI, yb, len, j.k);
    }
    return true;
  }

  // ---- kernel lookup ----

  private unaryKernel(op: UnaryOp, dtype: DType, outDtype: DType): ((...args: number[]) => unknown) | undefined {
    const bool = outDtype === 'bool';
    if (!bool && outDtype !== dtype) return undefined;
    const ops: readonly string[] =
      dtype === 'float32' ? (bool ? SIMD_UNARY_BOOL_F32 : SIMD_UNARY_F32) : dtype === 'int32' ? (bool ? SIMD_UNARY_BOOL_I32 : SIMD_UNARY_I32) : [];
    return ops.includes(op) ? this.k[unaryExport(op, dtype === 'float32' ? 'f32' : 'i32')] : undefined;
  }

  /** The kernel dtype of a binary op on these dtypes, or null: run the reference. */
  private binaryKernelDtype(op: BinaryOp, a: DType, b: DType, out: DType): 'f32' | 'i32' | null {
    if (a !== b || (a !== 'float32' && a !== 'int32')) return null;
    const compare = (SIMD_COMPARE as readonly string[]).includes(op);
    const ops: readonly string[] = compare ? SIMD_COMPARE : a === 'float32' ? FLOAT_BINARY_KERNELS : SIMD_BINARY_I32;
    return ops.includes(op) && out === (compare ? 'bool' : a) ? (a === 'float32' ? 'f32' : 'i32') : null;
  }
}

/**
 * The process's CPU time (all threads, us) since `from`, where the host has such a clock (Node's
 * process.cpuUsage; about 0.8 us a reading): what SplitCost.observeSplit judges splits by.
 */
type CpuUsage = { user: number; system: number };
const cpuClock = (globalThis as { process?: { cpuUsage?: (from?: CpuUsage) => CpuUsage } }).process?.cpuUsage?.bind(
  (globalThis as { process?: object }).process,
);

/** Bytes below which a memory-bound kernel runs on one thread (splitMemoryBound). */
const MEMORY_SPLIT_BYTES = 2 << 20;

/**
 * A unary op's cost over copy's (ELEMENTWISE_COST); x ** p takes pow's general form except where p
 * is 0.5 or whole up to 32 (module.ts powV: a square root or a few products).
 */
function unaryCost(op: UnaryOp, p0: number): number | undefined {
  if (op !== 'powScalar') return ELEMENTWISE_COST[op];
  return p0 === 0.5 || (Number.isInteger(p0) && Math.abs(p0) <= 32) ? 3 : ELEMENTWISE_COST.pow;
}

/**
 * Flops an attention call is priced at per n x heads x l x s x d (attentionThreads): the ViT's
 * (n 32, 4 heads, 17 x 17, d 8) forward took about 300 us and its backward 240 us on one thread
 * (2026-11-30), what the cost model's matmul rate (29 GFLOP/s) does in 8.8 and 7.1 MFLOP.
 */
const ATTENTION_FORWARD_FLOPS = 30;
const ATTENTION_BACKWARD_FLOPS = 24;

/** The float32 binary ops with a row kernel: the inline bodies and the called ones (pow). */
const FLOAT_BINARY_KERNELS: readonly string[] = [...SIMD_BINARY_F32, ...SIMD_BINARY_F32_CALLED];

/**
 * Bytes (over all its vectors) below which an arena pass runs on one thread. Measured on this
 * machine's two cores, each pass alone, the fastest of 56-396 interleaved runs split and unsplit:
 * over the MLP 784-256-256-10's 269,322 parameters split passes were slower (SGD update, 2.2 MB:
 * 0.048 against 0.039 ms; norm, 1.1 MB: 0.072 against 0.068; a 3-vector perturb: 0.064 against
 * 0.058), and inside its captured step the SGD update took 0.198 ms split against 0.069; over 1M
 * parameters (4-12 MB, in the 32 MB L3) about even (SGD 0.125 both; norm 0.188 against 0.237;
 * perturb 0.145 against 0.187); over 4M (16-48 MB) 1.8-1.9x faster (SGD 0.279 against 0.523,
 * norm 0.508 against 0.921, perturb 0.783 against 1.456).
 */
const ARENA_SPLIT_BYTES = 16 << 20;

/** Whether every storage given (nulls skipped) is float32: the dtype the SIMD kernels take. */
function allFloat32(storages: (Storage | null)[]): boolean {
  return storages.every((s) => !s || ws(s).dtype === 'float32');
}

/** Calls f with the offsets of each of `nOps` operands for every index of the outer dims (row-major). */
function forEachOuter(outer: readonly Dim[], nOps: number, f: (offsets: readonly number[]) => void): void {
  const rank = outer.length;
  const offs = new Array<number>(nOps).fill(0);
  const idx = new Array<number>(rank).fill(0);
  let count = 1;
  for (const d of outer) count *= d.size;
  for (let i = 0; i < count; i++) {
    f(offs);
    for (let ax = rank - 1; ax >= 0; ax--) {
      const d = outer[ax];
      idx[ax]++;
      for (let s = 0; s < nOps; s++) offs[s] += d.strides[s];
      if (idx[ax] < d.size) break;
      for (let s = 0; s < nOps; s++) offs[s] -= d.strides[s] * d.size;
      idx[ax] = 0;
    }
  }
}

/**
 * binaryPeriodic: rows shorter than PERIODIC_ROW elements run as rows of at least that many, the
 * repeating operand written out up to PERIODIC_MAX elements. Measured on add over [R, 10] + [1, 10]
 * at 2^16 floats (1 thread): 0.19 ns per element with written rows of 260, 0.21 with 1040 and
 * 0.32 with 4100 (the longer the written row, the more of it the streaming operands evict from the
 * first-level cache); at 2^18, 2.1x faster than rows of 10 (bench/results/unary.md). A period
 * longer than the maximum (or rows already as long) keeps its own rows: at 28 x 28 a per-channel
 * bias's one value per row is cheaper than a written-out row of 16 x 784 read from the
 * second-level cache.
 */
const PERIODIC_ROW = 256;
const PERIODIC_MAX = 4096;
/**
 * Elements below which binaryPeriodic is not worth its host work (about 1.4 us: [128, 10] +
 * [1, 10] took 3.9 us so against 2.4 as rows of 10; [26214, 10] + [1, 10] 33 us against 70).
 */
const PERIODIC_MIN = 16384;

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/**
 * Of two operands over collapsed dims (binaryPeriodic): `flat`, the one contiguous over all of
 * them (as the output is); `repeats`, the other, whose strides are 0 on the dims before `from`
 * and which so repeats every `period` (the product of the sizes from `from` on) elements; null
 * when the two are not so. inner[k]: the elements of one step of dim k (the sizes after it).
 */
function periodOf(dims: readonly Dim[]): { flat: number; repeats: number; from: number; period: number; inner: number[] } | null {
  const inner = dims.map(() => 1);
  for (let k = dims.length - 2; k >= 0; k--) inner[k] = inner[k + 1] * dims[k + 1].size;
  for (const flat of [0, 1]) {
    const repeats = 1 - flat;
    if (!dims.every((d, k) => d.strides[flat] === inner[k])) continue;
    const from = dims.findIndex((d) => d.strides[repeats] !== 0);
    if (from <= 0) continue;
    return { flat, repeats, from, period: inner[from] * dims[from].size, inner };
  }
  return null;
}

interface BroadcastPlan {
  /** One letter per operand: 'v' runs along the row, 's' is one value per row. */
  variant: string;
  /** The last three collapsed dims run in one kernel call: [blocks, rows, cols]. */
  blocks: number;
  rows: number;
  cols: number;
  /** Per operand, in elements. */
  rowStrides: number[];
  blockStrides: number[];
  outer: Dim[];
}

/**
 * Maps a broadcast onto the row kernels: the innermost dim must be contiguous or constant in
 * each operand. Anything else (a transposed operand) returns null and runs the reference loop.
 */
function planBroadcast(shape: readonly number[], strides: readonly (readonly number[])[]): BroadcastPlan | null {
  const dims = collapseDims(shape, strides);
  const zeros = strides.map(() => 0);
  const one = { size: 1, strides: zeros };
  if (dims.length === 0) return { variant: 'v'.repeat(strides.length), blocks: 1, rows: 1, cols: 1, rowStrides: zeros, blockStrides: zeros, outer: [] };
  const inner = dims[dims.length - 1];
  if (inner.strides.some((s) => s !== 0 && s !== 1)) return null;
  const rowDim = dims.length >= 2 ? dims[dims.length - 2] : one;
  const blockDim = dims.length >= 3 ? dims[dims.length - 3] : one;
  return {
    variant: inner.strides.map((s) => (s === 1 ? 'v' : 's')).join(''),
    blocks: blockDim.size,
    rows: rowDim.size,
    cols: inner.size,
    rowStrides: rowDim.strides,
    blockStrides: blockDim.strides,
    outer: dims.slice(0, Math.max(0, dims.length - 3)),
  };
}

function windowArgs(g: Window2d): number[] {
  return [g.n, g.c, g.h, g.w, g.kh, g.kw, g.oh, g.ow, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw];
}

/** One gemm call in bytes and counts, as the wasm export takes it (without the scratch). */
export interface GemmJob {
  a: number;
  aRow: number;
  aCol: number;
  b: number;
  bRow: number;
  bCol: number;
  c: number;
  ldc: number;
  m: number;
  n: number;
  k: number;
  batch: number;
  aBatch: number;
  bBatch: number;
  cBatch: number;
}

function gemmArgs(j: GemmJob, scratch: number): number[] {
  return [j.a, j.aRow, j.aCol, j.b, j.bRow, j.bCol, j.c, j.ldc, j.m, j.n, j.k, j.batch, j.aBatch, j.bBatch, j.cBatch, scratch];
}


/**
 * Splits a gemm among threads: by batch when there are enough matrices, else along rows of C (in
 * steps of mr) or columns (in steps of nr). Each part packs the whole of the operand it does not
 * split (all of B for a row split, all of A for a column split), so the split goes along the
 * larger of m and n, which makes that duplicated packing the smaller one. Every C element is
 * computed by the same micro-kernel in the same k order in any split, so the result does not
 * depend on the thread count.
 */
export function splitGemm(job: GemmJob, threads: number, t: GemmTiling): GemmJob[] {
  if (threads <= 1) return [job];
  if (job.batch >= threads) {
    return splitRange(job.batch, threads).map(([b0, b1]) => ({
      ...job,
      a: job.a + b0 * job.aBatch,
      b: job.b + b0 * job.bBatch,
      c: job.c + b0 * job.cBatch,
      batch: b1 - b0,
    }));
  }
  const mTiles = Math.ceil(job.m / t.mr);
  const nTiles = Math.ceil(job.n / t.nr);
  if (job.m > job.n ? mTiles >= threads || nTiles < mTiles : nTiles < threads && mTiles > nTiles) {
    return splitRange(mTiles, threads).map(([t0, t1]) => {
      const i0 = t0 * t.mr;
      const i1 = Math.min(job.m, t1 * t.mr);
      return { ...job, a: job.a + i0 * job.aRow, c: job.c + i0 * job.ldc, m: i1 - i0 };
    });
  }
  return splitRange(nTiles, threads).map(([t0, t1]) => {
    const j0 = t0 * t.nr;
    const j1 = Math.min(job.n, t1 * t.nr);
    return { ...job, b: job.b + j0 * job.bCol, c: job.c + j0 * 4, n: j1 - j0 };
  });
}
