/**
 * The WebGPU runtime under every kernel: storages and the buffer pool, command batching (one open
 * encoder and compute pass, submitted at a readback, a flush, or every N dispatches), the
 * per-dispatch uniform ring, the pipeline cache, and error bookkeeping that names kernels.
 */
import type { DType, TypedArray } from '../../tensor/dtype.js';
import type { MemoryInfo, Storage } from '../backend.js';
import { paramStruct, scalarOf, WGSL_COMMON, type Param } from './wgsl.js';
import type { CommandRecorder, Recording } from './capture.js';

/** One GPUBuffer as the pool hands it out. `usedInBatch` says whether unsubmitted work touches it. */
export class PooledBuffer {
  usedInBatch = -1;
  constructor(
    readonly buffer: GPUBuffer,
    readonly size: number,
  ) {}
}

export class GPUStorage implements Storage {
  released = false;
  /** Set on a reused pool buffer: its bytes are stale and must be zeroed before anything reads them. */
  needsClear = false;
  constructor(
    readonly buf: PooledBuffer,
    /** Byte offset into buf (a multiple of 256 for views). */
    readonly offset: number,
    readonly numel: number,
    readonly dtype: DType,
    /** The storage a view was made from; null for an owner. */
    readonly base: GPUStorage | null,
  ) {}
  get isView(): boolean {
    return this.base !== null;
  }
  get buffer(): GPUBuffer {
    return this.buf.buffer;
  }
  /** Bytes a binding covers: never zero, since a zero-size binding is invalid. */
  get bindSize(): number {
    return Math.max(4, this.numel * 4);
  }
  get root(): GPUStorage {
    return this.base ?? this;
  }
}

export function asGPU(s: Storage): GPUStorage {
  if (!(s instanceof GPUStorage)) throw new TypeError('webgpu backend: storage belongs to another backend');
  return s;
}

/** Size classes: powers of two with quarter steps between them, so at most 25% is wasted. */
export function sizeClass(bytes: number): number {
  if (bytes <= 256) return 256;
  const step = 2 ** Math.floor(Math.log2(bytes - 1)) / 4;
  return Math.ceil(bytes / step) * step;
}

class BufferPool {
  private readonly free = new Map<number, GPUBuffer[]>();
  buffers = 0;
  bytes = 0;
  /** Beyond this many pooled bytes a returned buffer is destroyed instead of kept. */
  constructor(private readonly limitBytes: number) {}
  has(size: number): boolean {
    return (this.free.get(size)?.length ?? 0) > 0;
  }
  take(size: number): GPUBuffer | undefined {
    const b = this.free.get(size)?.pop();
    if (b) {
      this.buffers--;
      this.bytes -= size;
    }
    return b;
  }
  put(b: GPUBuffer, size: number): void {
    if (this.bytes + size > this.limitBytes) {
      b.destroy();
      return;
    }
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(b);
    this.buffers++;
    this.bytes += size;
  }
  trim(): void {
    for (const list of this.free.values()) for (const b of list) b.destroy();
    this.free.clear();
    this.buffers = 0;
    this.bytes = 0;
  }
}

/** How a kernel uses a binding. `write` promises to overwrite every element, so stale bytes never need zeroing. */
export type Access = 'read' | 'read_write' | 'write';

export interface Bind {
  /** The WGSL variable name. */
  name: string;
  s: GPUStorage;
  access: Access;
  /** WGSL element type; defaults to the storage dtype's scalar. vec4 types need numel % 4 == 0, unless padTo16. */
  type?: string;
  /**
   * Bind up to the next 16 bytes past the storage (buffers are sized in 64-byte classes, so they
   * hold them), for a vec4 view of a storage whose size is not a multiple of 4. The shader must
   * leave those lanes as it found them (the arena kernels' per-tensor baseline does).
   */
  padTo16?: boolean;
}

/** Bytes a binding covers. */
function bindBytes(b: Bind): number {
  return b.padTo16 ? Math.ceil(b.s.bindSize / 16) * 16 : b.s.bindSize;
}

export interface KernelCall {
  /** Kernel name for errors, e.g. 'binary'. */
  name: string;
  /**
   * A short description of the specialization, for labels and error messages only: the pipeline
   * cache is keyed by the generated WGSL itself, so two kernels that differ in any way never share
   * a pipeline whatever their keys say.
   */
  key: string;
  binds: Bind[];
  params: Param[];
  /** Logical 1-D workgroup count; split into a 2-D grid when over the per-dimension limit. */
  groups: number;
  /** The shader after the generated Params struct, bindings and fg_group(); entry point `main`. */
  wgsl: () => string;
}

const UNIFORM_SLOT = 256;
const UNIFORM_SLOTS = 256;

/**
 * The device limits that the runtime and the kernels rely on: the device is requested with the
 * adapter's values for these (device.ts), allocations and pipelines are checked against them here.
 */
export const CHECKED_LIMITS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxStorageBuffersPerShaderStage',
  'maxUniformBufferBindingSize',
  'maxComputeWorkgroupsPerDimension',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupStorageSize',
  'minStorageBufferOffsetAlignment',
] as const;
export type LimitName = (typeof CHECKED_LIMITS)[number];
export type Limits = Readonly<Record<LimitName, number>>;

/**
 * The device's limits, each made stricter by `lower` where it names one (a `max` limit lowered, a
 * `min` alignment raised), never looser: what the device itself enforces stays the bound.
 */
export function effectiveLimits(device: GPUSupportedLimits, lower: Partial<Record<LimitName, number>> = {}): Limits {
  const out = {} as Record<LimitName, number>;
  for (const name of CHECKED_LIMITS) {
    const own = device[name];
    const asked = lower[name];
    out[name] = asked === undefined ? own : name.startsWith('min') ? Math.max(own, asked) : Math.min(own, asked);
  }
  return out;
}

export interface RuntimeOptions {
  /**
   * Import every lazily loaded kernel family when the backend is created (default: in Node, where
   * bytes cost nothing), so that no op waits for one and every kernel's errors are thrown by the
   * call that made it. In a browser the families load on first use (see Runtime.lazy).
   */
  preloadKernels?: boolean;
  /** Dispatches encoded before an automatic submit (default 64). */
  dispatchesPerSubmit?: number;
  /**
   * The adapter runs shaders on the CPU (SwiftShader, lavapipe): workgroup memory is no faster
   * than storage there and barriers are expensive, so kernels that tile through workgroup memory
   * on GPUs pick their register-blocked direct forms instead. Detected from the adapter; tests
   * override it to run both kernel families on one adapter.
   */
  cpuEmulated?: boolean;
  /** Wraps each dispatch in an error scope so validation errors name the exact kernel (slow). */
  validate?: boolean;
  /** Bytes the buffer pool may hold for reuse (default 1 GiB); trim() empties it. */
  poolLimitBytes?: number;
  /**
   * Limits stricter than the device's, checked as if the device had them: lets tests reach the
   * limit errors and the split-dispatch paths with small sizes. Looser values are ignored.
   */
  limits?: Partial<Record<LimitName, number>>;
}

const DEFAULT_POOL_LIMIT = 2 ** 30;

/**
 * A kernel family (conv and pooling, softmax, gather, sort, scan, rng, the math prelude, ...: see
 * src/kernels/webgpu/index.ts) whose module is imported
 * on its first dispatch rather than with the backend, so that an app which never convolves never
 * fetches the conv kernels (bench/size.bench.ts). See Runtime.lazy for how the ops stay in order.
 */
export interface KernelFamily<M> {
  readonly name: string;
  readonly load: () => Promise<M>;
  module?: M;
  error?: Error;
  loading?: Promise<void>;
}

/** Every family defined so far, for preloadKernelFamilies. */
const families = new Set<KernelFamily<unknown>>();

export function kernelFamily<M>(name: string, load: () => Promise<M>): KernelFamily<M> {
  const f: KernelFamily<M> = { name, load };
  families.add(f as KernelFamily<unknown>);
  return f;
}

/** The captured-step recorder (capture.ts), needed only by a program that compiles its steps. */
const CAPTURE = kernelFamily('captured-step recorder', () => import('./capture.js'));

/** Imports every family defined so far (RuntimeOptions.preloadKernels). */
export async function preloadKernelFamilies(): Promise<void> {
  await Promise.all([...families].map(loadFamily));
}

/** Imports a family's module once (later calls share the first); a failure is kept in `error`. */
export function loadFamily(f: KernelFamily<unknown>): Promise<void> {
  return (f.loading ??= f.load().then(
    (m) => void (f.module = m),
    (e: unknown) => void (f.error = e instanceof Error ? e : new Error(String(e))),
  ));
}

export class Runtime {
  readonly limits: Limits;
  readonly cpuEmulated: boolean;
  private readonly maxGroupsPerDim: number;
  private readonly dispatchesPerSubmit: number;
  private readonly validate: boolean;

  private encoder: GPUCommandEncoder | null = null;
  /**
   * Records the commands of a captured step's calls and encodes them again
   * (src/kernels/webgpu/capture.ts); made by the first beginRecording, null until then.
   */
  private recorder: CommandRecorder | null = null;
  /** Set during a captured step's replay: no submit every N dispatches, one at its end. */
  holdSubmits = false;
  private pass: GPUComputePassEncoder | null = null;
  /** Id of the open, unsubmitted batch. */
  private batch = 0;
  private dispatches = 0;
  private batchKernels: string[] = [];
  private lastKernel = '(none)';

  private readonly pool: BufferPool;
  private readonly stagingPool: BufferPool;
  /** Buffers released while unsubmitted work used them: pooled after the next submit. */
  private readonly deferred: PooledBuffer[] = [];
  private liveBuffers = 0;
  private liveBytes = 0;

  private readonly ring: GPUBuffer;
  private readonly ringData = new ArrayBuffer(UNIFORM_SLOT * UNIFORM_SLOTS);
  private readonly ringU32 = new Uint32Array(this.ringData);
  private readonly ringI32 = new Int32Array(this.ringData);
  private readonly ringF32 = new Float32Array(this.ringData);
  private ringUsed = 0;

  /** Keyed by the bind-group layout and the full WGSL text of the shader: see `pipeline`. */
  private readonly pipelines = new Map<string, { pipeline: GPUComputePipeline; bgl: GPUBindGroupLayout }>();
  private readonly layouts = new Map<string, { bgl: GPUBindGroupLayout; pl: GPUPipelineLayout }>();
  private readonly compileChecks: Promise<void>[] = [];

  private lostInfo: { reason: string; message: string; lastKernel: string } | null = null;
  private pendingError: Error | null = null;

  /**
   * Work issued while a kernel family was loading, in issue order: the family's kernel and every
   * later call that encodes, writes, releases or submits (see `lazy`). Empty almost always.
   */
  private readonly backlog: { family?: KernelFamily<unknown>; run: () => void }[] = [];
  private draining = false;
  private drained: { promise: Promise<void>; resolve: () => void } | null = null;

  constructor(
    readonly device: GPUDevice,
    opts: RuntimeOptions = {},
  ) {
    this.limits = effectiveLimits(device.limits, opts.limits);
    this.maxGroupsPerDim = this.limits.maxComputeWorkgroupsPerDimension;
    this.dispatchesPerSubmit = opts.dispatchesPerSubmit ?? 64;
    this.validate = opts.validate ?? false;
    this.cpuEmulated = opts.cpuEmulated ?? false;
    this.pool = new BufferPool(opts.poolLimitBytes ?? DEFAULT_POOL_LIMIT);
    this.stagingPool = new BufferPool(opts.poolLimitBytes ?? DEFAULT_POOL_LIMIT);
    this.ring = device.createBuffer({
      label: 'flatgrad uniform ring',
      size: this.ringData.byteLength,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    device.lost.then((info) => {
      this.lostInfo ??= { reason: info.reason, message: info.message, lastKernel: this.lastKernel };
    });
    device.addEventListener('uncapturederror', (ev) => {
      const err = (ev as GPUUncapturedErrorEvent).error;
      ev.preventDefault();
      // Follow-ups of an error already reported (a failed compile, an invalid command buffer).
      if (/is invalid due to a previous error/.test(err.message)) return;
      this.recordError(`${err.constructor?.name ?? 'GPUError'} in a batch of kernels [${this.batchKernelsText()}] (last dispatched: "${this.lastKernel}"): ${err.message}`);
    });
  }

  // ---------------------------------------------------------------- errors

  private batchKernelsText(): string {
    return [...new Set(this.batchKernels)].join(', ') || this.lastKernel;
  }

  private recordError(message: string): void {
    this.pendingError ??= new Error(`WebGPU error: ${message}`);
  }

  /** Throws if the device is lost (sticky) or an asynchronous error was recorded (once). */
  checkAlive(): void {
    if (this.lostInfo) {
      const { reason, message, lastKernel } = this.lostInfo;
      throw new Error(`WebGPU device lost (${reason}): ${message} (last kernel dispatched: "${lastKernel}")`);
    }
    if (this.pendingError) {
      const e = this.pendingError;
      this.pendingError = null;
      throw e;
    }
  }

  // ---------------------------------------------------------------- lazily loaded kernel families

  /**
   * Runs `work` with the family's module (or with nothing, for `family` null): now when the module
   * is loaded and nothing waits before it, which is the steady state. The first dispatch of a
   * family has to wait for its import, while the caller, a synchronous op, returns at once: then
   * `work` and every later kernel, write, release, copy and submit wait in the backlog, in issue
   * order, and run as soon as the module arrives; a readback (read, sync) waits for the backlog to
   * run first. An error a deferred call throws (the limit checks of a kernel) is reported by the
   * next call that checks for errors (a readback, an allocation), as asynchronous GPU errors are.
   */
  lazy<M>(family: KernelFamily<M> | null, work: (module: M) => void): void {
    if (this.draining) {
      // Deferred work calls no kernel of another family, so the module is here.
      if (family && !family.module) throw new Error(`internal: kernel family ${family.name} used while the backlog runs before it loaded`);
      return work(family?.module as M);
    }
    if (!this.backlog.length && (!family || family.module)) return work(family?.module as M);
    if (family && !family.module && !family.error) void loadFamily(family).then(() => this.drain());
    this.backlog.push({ family: family ?? undefined, run: () => work(family?.module as M) });
  }

  /** Whether a call must join the backlog (see `lazy`) rather than run now. */
  private deferring(): boolean {
    return this.backlog.length > 0 && !this.draining;
  }

  private drain(): void {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.backlog.length) {
        const { family, run } = this.backlog[0];
        if (family && !family.module && !family.error) break;
        this.backlog.shift();
        if (family?.error) {
          this.recordError(`the ${family.name} kernels failed to load: ${family.error.message}`);
          continue;
        }
        try {
          run();
        } catch (e) {
          this.recordError(`${family ? `the ${family.name} kernels, dispatched` : 'a call made'} while a kernel family loaded: ${(e as Error).message}`);
        }
      }
    } finally {
      this.draining = false;
    }
    if (!this.backlog.length && this.drained) {
      this.drained.resolve();
      this.drained = null;
    }
  }

  /** Resolves once the backlog is empty, including work that joined it while this waited. */
  private async backlogRun(): Promise<void> {
    while (this.backlog.length) {
      if (!this.drained) {
        let resolve!: () => void;
        const promise = new Promise<void>((r) => (resolve = r));
        this.drained = { promise, resolve };
      }
      await this.drained.promise;
    }
  }

  /** Marks the device lost now, so that calls after `destroy()` fail without waiting for the event. */
  markDestroyed(): void {
    this.lostInfo ??= { reason: 'destroyed', message: 'the backend was destroyed', lastKernel: this.lastKernel };
  }

  // ---------------------------------------------------------------- memory

  alloc(numel: number, dtype: DType): GPUStorage {
    this.checkAlive();
    scalarOf(dtype); // rejects float64 with the backend's message
    if (!Number.isInteger(numel) || numel < 0) throw new RangeError(`alloc: numel must be a non-negative integer, got ${numel}`);
    const bytes = Math.max(4, numel * 4);
    // Every storage is bound whole by some kernel, so the binding limit bounds it as well as the buffer limit.
    if (bytes > this.limits.maxBufferSize || bytes > this.limits.maxStorageBufferBindingSize) {
      throw new RangeError(
        `alloc: ${bytes} bytes (${numel} elements of ${dtype}) exceeds this device's limits (maxBufferSize ${this.limits.maxBufferSize}, maxStorageBufferBindingSize ${this.limits.maxStorageBufferBindingSize})`,
      );
    }
    const size = sizeClass(bytes);
    // A buffer of this class waiting for the submit is worth a submit: creating a new one costs an
    // allocation plus Dawn's zero-fill, and a loop that allocates without reading back would
    // otherwise pile up a batch's worth of them.
    if (!this.pool.has(size) && this.deferred.some((b) => b.size === size)) this.flush();
    const reused = this.pool.take(size);
    const buffer =
      reused ??
      this.device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    const s = new GPUStorage(new PooledBuffer(buffer, size), 0, numel, dtype, null);
    // A new GPUBuffer is zero-filled by WebGPU; a reused one is zeroed lazily, only if something
    // reads it before a kernel overwrites it.
    s.needsClear = reused !== undefined;
    // A recording replays its calls over the same buffers: a read before a write must find zeros
    // every time, not only when the buffer happened to be new while recording.
    if (this.recorder?.recording) s.needsClear = true;
    this.liveBuffers++;
    this.liveBytes += size;
    return s;
  }

  view(base: GPUStorage, offset: number, numel: number): GPUStorage {
    this.checkAlive();
    if (base.released) throw new Error('view: the base storage was released');
    if (!Number.isInteger(offset) || offset < 0 || !Number.isInteger(numel) || numel < 0 || offset + numel > base.numel) {
      throw new RangeError(`view: elements [${offset}, ${offset + numel}) are outside a storage of ${base.numel}`);
    }
    const byteOffset = base.offset + offset * 4;
    const align = this.limits.minStorageBufferOffsetAlignment;
    if (byteOffset % align !== 0) {
      throw new RangeError(`view: byte offset ${byteOffset} (element ${offset}) is not a multiple of ${align}, which WebGPU bindings require`);
    }
    return new GPUStorage(base.buf, byteOffset, numel, base.dtype, base.root);
  }

  release(s: GPUStorage): void {
    if (s.isView) return;
    if (this.deferring()) return this.lazy(null, () => this.release(s));
    if (s.released) throw new Error('release: storage was already released');
    s.released = true;
    this.liveBuffers--;
    this.liveBytes -= s.buf.size;
    this.recycle(s.buf);
  }

  private recycle(b: PooledBuffer): void {
    // Kept by an open recording (still counted live), or a recorded buffer leaving (recordings are stale).
    if (this.recorder?.released(b)) {
      this.liveBuffers++;
      this.liveBytes += b.size;
      return;
    }
    if (b.usedInBatch === this.batch) this.deferred.push(b);
    else this.pool.put(b.buffer, b.size);
  }

  /** A scratch storage that a kernel overwrites completely; give it back with `release`. */
  temp(numel: number, dtype: DType): GPUStorage {
    return this.alloc(numel, dtype);
  }

  memory(): MemoryInfo {
    return {
      liveBuffers: this.liveBuffers,
      liveBytes: this.liveBytes,
      pooledBuffers: this.pool.buffers,
      pooledBytes: this.pool.bytes,
    };
  }

  /** Destroys every pooled buffer (those waiting for a submit stay until then). */
  trim(): void {
    this.pool.trim();
    this.stagingPool.trim();
  }

  /** Host data into a storage; the bytes must be the storage's element representation. */
  write(dst: GPUStorage, bytes: ArrayBufferView): void {
    this.checkAlive();
    if (dst.numel === 0) return;
    if (this.deferring()) {
      // The caller may reuse its array once this returns: the backlog keeps a copy.
      const copy = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength).slice();
      return this.lazy(null, () => this.write(dst, copy));
    }
    if (dst.isView) this.ensureCleared(dst);
    else dst.needsClear = false;
    // queue.writeBuffer runs before any unsubmitted dispatch, so those must be submitted first.
    if (dst.buf.usedInBatch === this.batch) this.flush();
    this.device.queue.writeBuffer(dst.buffer, dst.offset, bytes.buffer, bytes.byteOffset, dst.numel * 4);
    if (this.recorder?.recording) this.recorder.write(dst.buf, dst.offset, new Uint8Array(bytes.buffer, bytes.byteOffset, dst.numel * 4));
  }

  async read(s: GPUStorage): Promise<ArrayBuffer> {
    await this.backlogRun();
    this.checkAlive();
    const bytes = s.numel * 4;
    if (bytes === 0 || s.root.needsClear) return new ArrayBuffer(bytes);
    const size = sizeClass(bytes);
    const staging =
      this.stagingPool.take(size) ?? this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.commandEncoder().copyBufferToBuffer(s.buffer, s.offset, staging, 0, bytes);
    s.buf.usedInBatch = this.batch;
    this.flush();
    try {
      await staging.mapAsync(GPUMapMode.READ, 0, bytes);
    } catch (e) {
      this.checkAlive();
      throw e;
    }
    const out = staging.getMappedRange(0, bytes).slice(0);
    staging.unmap();
    this.stagingPool.put(staging, size);
    // A compile error of a kernel that fed this result surfaces here rather than at a later call.
    await Promise.all(this.compileChecks.splice(0));
    this.checkAlive();
    return out;
  }

  /** Zeroes a reused buffer before its first read (see alloc). */
  ensureCleared(s: GPUStorage): void {
    if (this.deferring()) return this.lazy(null, () => this.ensureCleared(s));
    const root = s.root;
    if (!root.needsClear) return;
    root.needsClear = false;
    this.commandEncoder().clearBuffer(root.buffer, 0, root.bindSize);
    root.buf.usedInBatch = this.batch;
    if (this.recorder?.recording) this.recorder.clear(root.buf, 0, root.bindSize);
  }

  /** Zero-fills a storage with a clear command (a memset, faster than any fill kernel). */
  zero(s: GPUStorage): void {
    this.checkAlive();
    if (s.numel === 0) return;
    if (this.deferring()) return this.lazy(null, () => this.zero(s));
    // A stale root is zeroed whole, which covers s.
    if (s.root.needsClear) return this.ensureCleared(s);
    this.commandEncoder().clearBuffer(s.buffer, s.offset, s.numel * 4);
    s.buf.usedInBatch = this.batch;
    if (this.recorder?.recording) this.recorder.clear(s.buf, s.offset, s.numel * 4);
  }

  /** Copies bytes between storages in the command stream (byte offsets from each buffer's start). */
  copy(src: GPUStorage, srcByte: number, dst: GPUStorage, dstByte: number, bytes: number): void {
    if (this.deferring()) return this.lazy(null, () => this.copy(src, srcByte, dst, dstByte, bytes));
    this.ensureCleared(src);
    this.commandEncoder().copyBufferToBuffer(src.buffer, srcByte, dst.buffer, dstByte, bytes);
    src.buf.usedInBatch = this.batch;
    dst.buf.usedInBatch = this.batch;
    if (this.recorder?.recording) this.recorder.copy(src.buf, srcByte, dst.buf, dstByte, bytes);
  }

  // ---------------------------------------------------------------- batching

  /** The open encoder with no pass open, for copies and clears. */
  private commandEncoder(): GPUCommandEncoder {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    return (this.encoder ??= this.device.createCommandEncoder({ label: 'flatgrad batch' }));
  }

  private computePass(): GPUComputePassEncoder {
    if (this.pass) return this.pass;
    this.encoder ??= this.device.createCommandEncoder({ label: 'flatgrad batch' });
    return (this.pass = this.encoder.beginComputePass());
  }

  flush(): void {
    if (this.deferring()) return this.lazy(null, () => this.flush());
    if (!this.encoder) return;
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    // The uniform ring is written in queue order: after the previous batch ran, before this one.
    if (this.ringUsed) this.device.queue.writeBuffer(this.ring, 0, this.ringData, 0, this.ringUsed);
    this.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.batch++;
    this.dispatches = 0;
    this.ringUsed = 0;
    this.batchKernels = [];
    for (const b of this.deferred) this.pool.put(b.buffer, b.size);
    this.deferred.length = 0;
  }

  // ---------------------------------------------------------------- recorded commands (captured steps)

  /** Starts recording the commands of the calls that follow; false when calls are waiting for a kernel family to load. */
  beginRecording(): boolean {
    this.checkAlive();
    if (this.deferring()) return false;
    if (!this.recorder) {
      // The recorder's module loads like a kernel family (preloaded in Node): until it is here,
      // calls run unrecorded, as while a family loads, and the next captured step records.
      if (CAPTURE.error) throw CAPTURE.error;
      if (!CAPTURE.module) {
        void loadFamily(CAPTURE);
        return false;
      }
      this.recorder = new CAPTURE.module.CommandRecorder(this.device);
    }
    this.recorder.begin();
    return true;
  }

  /** The recorded commands, or null when some call was deferred (a kernel family still loading) and so missed. */
  endRecording(): Recording | null {
    const r = this.recorder!.end();
    if (!this.deferring()) return r;
    this.disposeRecording(r);
    return null;
  }

  /** Encodes a recording again into the open encoder; false (nothing encoded) when it is stale. */
  replayRecording(r: Recording): boolean {
    this.checkAlive();
    if (r.epoch !== this.recorder?.epoch || this.deferring()) return false;
    for (const c of r.commands) {
      if (c.kind === 'dispatch') {
        const pass = this.computePass();
        pass.setPipeline(c.pipeline);
        pass.setBindGroup(0, c.bindGroup);
        pass.dispatchWorkgroups(c.x, c.y);
      } else if (c.kind === 'clear') this.commandEncoder().clearBuffer(c.buffer, c.offset, c.size);
      else this.commandEncoder().copyBufferToBuffer(c.src, c.srcOffset, c.dst, c.dstOffset, c.size);
    }
    for (const b of r.touched) b.usedInBatch = this.batch;
    this.dispatches += r.dispatches;
    if (r.dispatches) this.lastKernel = '(recorded commands of a captured step)';
    return true;
  }

  /** Gives back what a recording holds: the buffers it kept go to the pool, its own buffers are destroyed. */
  disposeRecording(r: Recording): void {
    for (const b of r.owned.splice(0)) {
      this.liveBuffers--;
      this.liveBytes -= b.size;
      if (b.usedInBatch === this.batch) this.deferred.push(b);
      else this.pool.put(b.buffer, b.size);
    }
    // Destroyed after the work that uses them has run (destroy waits for submitted work in WebGPU).
    this.flush();
    for (const g of r.own) g.destroy();
  }

  async sync(): Promise<void> {
    await this.backlogRun();
    this.checkAlive();
    this.flush();
    await Promise.all(this.compileChecks.splice(0));
    await this.device.queue.onSubmittedWorkDone();
    this.checkAlive();
  }

  // ---------------------------------------------------------------- dispatch

  dispatch(call: KernelCall): void {
    this.checkAlive();
    if (call.groups <= 0) return;
    if (this.deferring()) return this.lazy(null, () => this.dispatch(call));
    // Everything that can refuse the call does so before anything is encoded.
    const [x, y] = this.grid(call);
    const { pipeline, bgl } = this.pipeline(call);
    const slot = this.reserveUniforms(call.params);
    const binds = this.prepareBindings(call);
    if (this.validate) this.device.pushErrorScope('validation');
    const bindGroup = this.device.createBindGroup({
      label: call.name,
      layout: bgl,
      entries: [
        { binding: 0, resource: { buffer: this.ring, offset: slot.offset, size: slot.size } },
        ...binds.map((b, i) => ({ binding: i + 1, resource: { buffer: b.s.buffer, offset: b.s.offset, size: bindBytes(b) } })),
      ],
    });
    const pass = this.computePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(x, y);
    if (this.recorder?.recording) {
      this.recorder.dispatch(call.name, pipeline, bgl, new Uint8Array(this.ringData, slot.offset, slot.size), binds.map((b) => ({ s: b.s, size: bindBytes(b) })), x, y);
    }
    if (this.validate) {
      const name = call.name;
      this.device.popErrorScope().then((e) => e && this.recordError(`kernel "${name}": ${e.message}`));
    }
    for (const b of binds) b.s.buf.usedInBatch = this.batch;
    this.lastKernel = call.name;
    this.batchKernels.push(call.name);
    this.releaseAliasCopies(binds, call.binds);
    if (++this.dispatches >= this.dispatchesPerSubmit && !this.holdSubmits) this.flush();
  }

  /**
   * Splits a group count over the per-dimension limit into a 2-D grid (kernels use fg_group). The
   * grid may hold up to y - 1 groups more than asked for: every kernel guards its total, so those
   * return without writing.
   */
  private grid(call: KernelCall): [number, number] {
    const { groups } = call;
    const max = this.maxGroupsPerDim;
    if (groups <= max) return [groups, 1];
    if (groups > max * max) {
      throw new RangeError(
        `kernel "${call.name}" (${call.key}) needs ${groups} workgroups, more than a 2-D grid holds with this device's maxComputeWorkgroupsPerDimension of ${max} (${max} x ${max})`,
      );
    }
    const y = Math.ceil(groups / max);
    return [Math.ceil(groups / y), y];
  }

  private reserveUniforms(params: readonly Param[]): { offset: number; size: number } {
    const size = Math.max(UNIFORM_SLOT, Math.ceil((params.length * 4) / UNIFORM_SLOT) * UNIFORM_SLOT);
    if (this.ringUsed + size > this.ringData.byteLength) this.flush();
    const offset = this.ringUsed;
    this.ringUsed += size;
    let w = offset / 4;
    for (const p of params) {
      if (p.type === 'f32') this.ringF32[w++] = p.value;
      else if (p.type === 'i32') this.ringI32[w++] = p.value;
      else this.ringU32[w++] = p.value;
    }
    return { offset, size };
  }

  /**
   * Zeroes stale inputs, and replaces a read binding that shares its GPUBuffer with a written one
   * by a copy: WebGPU forbids read-only and writable use of one buffer in a dispatch, and
   * overlapping bindings where one is writable; writable bindings of disjoint ranges of one buffer
   * are allowed (the usage scope's storage exception), as a captured step's gradients in one arena.
   */
  private prepareBindings(call: KernelCall): Bind[] {
    const written = new Set<GPUBuffer>();
    for (const b of call.binds) {
      if (b.s.released) throw new Error(`kernel "${call.name}": binding ${b.name} uses a released storage`);
      if (b.access === 'read') continue;
      for (const w of call.binds) {
        if (w !== b && w.access !== 'read' && w.s.buffer === b.s.buffer && w.s.offset < b.s.offset + b.s.numel * 4 && b.s.offset < w.s.offset + w.s.numel * 4) {
          throw new Error(`kernel "${call.name}": written bindings ${w.name} and ${b.name} overlap`);
        }
      }
      written.add(b.s.buffer);
    }
    // Reads first: an in-place kernel on a never-written reused buffer must read zeros.
    for (const b of call.binds) if (b.access !== 'write' || b.s.isView) this.ensureCleared(b.s);
    for (const b of call.binds) if (b.access === 'write' && !b.s.isView) b.s.needsClear = false;
    return call.binds.map((b) => {
      if (b.access !== 'read' || !written.has(b.s.buffer)) return b;
      const copy = this.temp(b.s.numel, b.s.dtype);
      copy.needsClear = false;
      this.copy(b.s, b.s.offset, copy, 0, b.s.numel * 4);
      return { ...b, s: copy };
    });
  }

  private releaseAliasCopies(used: Bind[], given: Bind[]): void {
    for (let i = 0; i < used.length; i++) if (used[i].s !== given[i].s) this.release(used[i].s);
  }

  // ---------------------------------------------------------------- pipelines

  /**
   * The pipeline of a call, cached under its bind-group layout and its full WGSL text: two calls
   * share a pipeline exactly when their shaders are the same text, so no hand-kept key can make a
   * kernel run another's shader (or another's uniform layout). The text is generated on every
   * dispatch; that is cheap next to encoding the dispatch.
   */
  private pipeline(call: KernelCall): { pipeline: GPUComputePipeline; bgl: GPUBindGroupLayout } {
    const code = this.assemble(call, call.binds);
    const sig = layoutSignature(call.binds);
    const cacheKey = `${sig}\n${code}`;
    const cached = this.pipelines.get(cacheKey);
    if (cached) return cached;
    checkKernelLimits(call, code, this.limits);
    const layout = this.layoutFor(call.binds, sig);
    const label = `${call.name} (${call.key})`;
    this.device.pushErrorScope('validation');
    const module = this.device.createShaderModule({ label, code });
    const pipeline = this.device.createComputePipeline({ label, layout: layout.pl, compute: { module, entryPoint: 'main' } });
    const check = this.device.popErrorScope().then(async (err) => {
      if (!err) return;
      // Dropped from the cache so that the next use reports the compile error again instead of
      // a cascade of "invalid pipeline" messages.
      this.pipelines.delete(cacheKey);
      const info = await module.getCompilationInfo();
      this.recordError(formatCompileError(call.name, call.key, code, info, err.message));
    });
    this.compileChecks.push(check);
    const entry = { pipeline, bgl: layout.bgl };
    this.pipelines.set(cacheKey, entry);
    return entry;
  }

  private assemble(call: KernelCall, binds: Bind[]): string {
    const decls = binds.map((b, i) => {
      const access = b.access === 'read' ? 'read' : 'read_write';
      return `@group(0) @binding(${i + 1}) var<storage, ${access}> ${b.name}: array<${b.type ?? scalarOf(b.s.dtype)}>;`;
    });
    return `${paramStruct(call.params)}${decls.join('\n')}\n${WGSL_COMMON}\n${call.wgsl()}`;
  }

  /** Explicit layouts (not 'auto'), so a binding the shader happens not to use is still valid. */
  private layoutFor(binds: Bind[], sig: string): { bgl: GPUBindGroupLayout; pl: GPUPipelineLayout } {
    let l = this.layouts.get(sig);
    if (!l) {
      const bgl = this.device.createBindGroupLayout({
        entries: [
          { binding: 0, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'uniform' } },
          ...binds.map((b, i) => ({
            binding: i + 1,
            visibility: GPUShaderStage.COMPUTE,
            buffer: { type: b.access === 'read' ? ('read-only-storage' as const) : ('storage' as const) },
          })),
        ],
      });
      l = { bgl, pl: this.device.createPipelineLayout({ bindGroupLayouts: [bgl] }) };
      this.layouts.set(sig, l);
    }
    return l;
  }
}

/** The bind-group layout of a call's bindings: binding 0 the uniforms, then one letter per storage binding. */
function layoutSignature(binds: readonly Bind[]): string {
  return binds.map((b) => (b.access === 'read' ? 'r' : 'w')).join('');
}

/**
 * Checks a kernel's shader against the device limits it relies on, before the pipeline is made,
 * so that a kernel the device cannot run fails at once with the kernel, the limit and both values
 * (instead of an invalid pipeline reported later, or a dispatch that silently does nothing). The
 * workgroup size and workgroup variables are read from the WGSL text the kernel generated.
 */
export function checkKernelLimits(call: KernelCall, code: string, limits: Limits): void {
  const fail = (need: string, limit: LimitName) => {
    throw new RangeError(`kernel "${call.name}" (${call.key}) ${need}, more than this device's ${limit} of ${limits[limit]}`);
  };
  if (call.binds.length > limits.maxStorageBuffersPerShaderStage) {
    fail(`binds ${call.binds.length} storage buffers`, 'maxStorageBuffersPerShaderStage');
  }
  const uniformBytes = call.params.length * 4;
  if (uniformBytes > Math.min(limits.maxUniformBufferBindingSize, UNIFORM_SLOT * UNIFORM_SLOTS)) {
    if (uniformBytes > limits.maxUniformBufferBindingSize) fail(`has ${uniformBytes} bytes of uniforms`, 'maxUniformBufferBindingSize');
    throw new RangeError(`kernel "${call.name}" (${call.key}) has ${uniformBytes} bytes of uniforms, more than the runtime's uniform ring of ${UNIFORM_SLOT * UNIFORM_SLOTS}`);
  }
  const size = /@workgroup_size\(([^)]*)\)/.exec(code);
  if (!size) throw new Error(`kernel "${call.name}" (${call.key}): no @workgroup_size in its WGSL`);
  const dims = size[1].split(',').map((d) => Number(d.trim().replace(/[iu]$/, '')));
  if (dims.some((d) => !Number.isInteger(d) || d < 1)) {
    throw new Error(`kernel "${call.name}" (${call.key}): @workgroup_size(${size[1]}) must be integer literals for the runtime to check it`);
  }
  (['maxComputeWorkgroupSizeX', 'maxComputeWorkgroupSizeY', 'maxComputeWorkgroupSizeZ'] as const).forEach((limit, i) => {
    if ((dims[i] ?? 1) > limits[limit]) fail(`has @workgroup_size(${size[1]})`, limit);
  });
  const invocations = dims.reduce((a, b) => a * b, 1);
  if (invocations > limits.maxComputeInvocationsPerWorkgroup) fail(`runs a workgroup of ${invocations} invocations`, 'maxComputeInvocationsPerWorkgroup');
  let shared = 0;
  for (const m of code.matchAll(/var<workgroup>\s*(\w+)\s*:\s*([^;=]+);/g)) {
    const bytes = wgslTypeBytes(m[2].trim());
    if (bytes === null) throw new Error(`kernel "${call.name}" (${call.key}): cannot size workgroup variable ${m[1]} of type ${m[2].trim()}`);
    shared += bytes;
  }
  if (shared > limits.maxComputeWorkgroupStorageSize) fail(`uses ${shared} bytes of workgroup memory`, 'maxComputeWorkgroupStorageSize');
}

/** Size and alignment in bytes of the WGSL types kernels put in workgroup memory (scalars, vectors, fixed arrays of them). */
function wgslLayout(type: string): { size: number; align: number } | null {
  const t = type.replace(/\s+/g, '');
  if (/^(f32|i32|u32|bool|atomic<(i32|u32)>)$/.test(t)) return { size: 4, align: 4 };
  if (t === 'f16') return { size: 2, align: 2 };
  const vec = /^vec([234])(?:<(f32|i32|u32|bool|f16)>|([fiuh]))$/.exec(t);
  if (vec) {
    const n = Number(vec[1]);
    const elem = vec[2] === 'f16' || vec[3] === 'h' ? 2 : 4;
    return { size: n * elem, align: (n === 3 ? 4 : n) * elem };
  }
  const arr = /^array<(.+),(\d+)u?>$/.exec(t);
  if (arr) {
    const e = wgslLayout(arr[1]);
    if (!e) return null;
    const stride = Math.ceil(e.size / e.align) * e.align;
    return { size: stride * Number(arr[2]), align: e.align };
  }
  return null;
}

function wgslTypeBytes(type: string): number | null {
  return wgslLayout(type)?.size ?? null;
}

/** "kernel X failed to compile: line N: message" followed by the offending WGSL line and a caret. */
export function formatCompileError(name: string, key: string, code: string, info: GPUCompilationInfo, fallback: string): string {
  const lines = code.split('\n');
  const errors = info.messages.filter((m) => m.type === 'error');
  if (errors.length === 0) return `kernel "${name}" (${key}) failed to build: ${fallback}`;
  const parts = errors.map((m) => {
    const text = lines[m.lineNum - 1] ?? '';
    const caret = `${' '.repeat(Math.max(0, m.linePos - 1))}^`;
    return `line ${m.lineNum}:${m.linePos}: ${m.message}\n    ${text}\n    ${caret}`;
  });
  return `kernel "${name}" (${key}) failed to compile:\n${parts.join('\n')}`;
}

/** Converts the raw bytes of a storage to the typed array its dtype reads as on the host. */
export function hostArray(bytes: ArrayBuffer, dtype: DType): TypedArray {
  switch (dtype) {
    case 'float32':
      return new Float32Array(bytes);
    case 'int32':
      return new Int32Array(bytes);
    case 'bool':
      return Uint8Array.from(new Uint32Array(bytes), (v) => (v ? 1 : 0));
    case 'float64':
      throw new TypeError('webgpu backend does not support float64 (use the cpu backend for float64)');
  }
}

/** Host data in the device representation of `dtype` (bool -> u32 ones and zeros). */
export function deviceArray(data: TypedArray, dtype: DType): Float32Array | Int32Array | Uint32Array {
  switch (dtype) {
    case 'float32':
      return data instanceof Float32Array ? data : Float32Array.from(data);
    case 'int32': {
      if (data instanceof Int32Array) return data;
      const out = new Int32Array(data.length);
      out.set(data);
      return out;
    }
    case 'bool':
      return Uint32Array.from(data, (v) => (v ? 1 : 0));
    case 'float64':
      throw new TypeError('webgpu backend does not support float64 (use the cpu backend for float64)');
  }
}
