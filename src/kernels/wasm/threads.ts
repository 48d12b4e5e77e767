/**
 * Worker threads over the shared WebAssembly.Memory. Each worker instantiates the same kernel
 * module with the same memory and then blocks on its control slot in that memory; the caller
 * writes a call (export index and i32 arguments) into each worker's slot, runs its own share,
 * and waits for the workers with Atomics.wait. Calls are therefore synchronous from the caller's
 * view, as the Backend contract wants on a host-memory backend.
 *
 * A worker claims its call (POSTED -> RUNNING) before running it, and the caller, once done with
 * its own share, takes back any call not yet claimed (POSTED -> TAKEN) and runs it itself. On a
 * busy machine a worker that is not scheduled in time then costs nothing but the caller's share
 * of parallelism, instead of stalling the call until the scheduler gets to it.
 *
 * A thread's share is one call or a list of calls run in order (the convolutions post, per thread,
 * the padding copies, packings and micro-kernel sweeps of their images or channels): a list is
 * written into memory that the backend lends for it, and the slot names its address.
 *
 * How long a thread spins on its slot before it blocks (spinLoads) is set by the backend from a
 * measurement at start-up (index.ts calibrateThreads, which times ping): long enough to bridge
 * the gap between the split calls of one training step, short enough not to burn a core that
 * another process wants. Which calls are split, and over how many threads, is SplitCost's call.
 *
 * Node runs the workers as worker_threads (`eval` source); browsers as Web Workers from a Blob
 * URL. Only a thread that may block (Node's main thread, any worker) can use the pool: the
 * browser's main thread cannot Atomics.wait, and the backend runs single-threaded there.
 */

/** Int32 slots per worker: state, export index (or LIST), argument count, spin budget, arguments. */
export const SLOT_INTS = 32;
const ARGS_AT = 4;
const MAX_ARGS = SLOT_INTS - ARGS_AT;
export const CONTROL_BYTES_PER_WORKER = SLOT_INTS * 4;
/** The export index of a list: arguments (byte address of the records, their length in ints). */
const LIST = -1;
/**
 * The export index of a queue: arguments (byte address of its table, number of parts). The table
 * is [next part to claim, then per part: byte address of its records, their length in ints].
 */
const QUEUE = -2;
/**
 * The export index of a load: the worker leaves its loop for its message handler, where the
 * caller's next message ({ module, name }) brings a generated module (an arena kernel's pass)
 * to instantiate over the same memory; its export joins the list that calls name, at the next
 * index (ThreadPool.load).
 */
const LOAD = -3;
/** The export index of a list of float64 records: arguments (byte address, 8-aligned, and length in float64s). */
const LIST64 = -4;

/**
 * Loads of the control slot before blocking in Atomics.wait, on both sides, until the backend
 * sets its own (index.ts calibrateThreads: 1 ms where spinning pays). Waking a blocked thread
 * costs tens of microseconds (more on a loaded machine), and the split calls of one training
 * step come back to back, so a spin saves most wake-ups.
 */
export const DEFAULT_SPIN_LOADS = 20000;

/**
 * How long an idle worker spins, where spinning pays at all (index.ts calibrateThreads): long
 * enough to bridge the gaps between the split calls of one training step (the MLP
 * 784-256-256-10 step's: median 0.1 ms, 90th percentile 0.6 ms). Waking a worker from
 * Atomics.wait costs more than the futex round trip that the calibration's ping measures (30-50
 * us here): while it sleeps its core clocks down and its caches cool, and the split call after
 * the wake-up runs slower (a 256x256x128 matmul: 235 us with the worker spinning, 428 us after it
 * slept 10 ms). Measured on 2 cores, the main thread busy between steps as in bench/steps: the
 * MLP SGD step on two threads took 3.6 ms with 1 ms of spin, 3.7 with 0.5 ms, 3.9 with 30 us.
 */
export const SPIN_BRIDGE_US = 1000;

/** How long ThreadPool.load waits for a worker to take up a load before it gives up on it. */
const LOAD_WAIT_MS = 10_000;

const IDLE = 0;
const POSTED = 1;
const RUNNING = 2;
const TAKEN = 3;
const FAILED = 4;
const QUIT = 5;

/**
 * Arguments up to which a worker calls a kernel with its arguments read one by one from the
 * shared memory (callFrom); more go through apply. This spares the typed-array view and apply's
 * array-like path of fn.apply(null, mem.subarray(...)) on every call of a list, which matters for
 * the lists of about a thousand calls of about 1 us that narrow convolutions post (CallList).
 * (Not timed apart from CallList: the two came in one change.)
 */
const DIRECT_ARGS = 16;

/** f with the n i32 arguments at m[a ..]: this thread's callFrom (the workers' is in WORKER_BODY). */
function callFrom(f: (...args: number[]) => unknown, m: Int32Array, a: number, n: number): unknown {
  switch (n) {
    case 0: return f();
    case 1: return f(m[a]);
    case 2: return f(m[a], m[a + 1]);
    case 3: return f(m[a], m[a + 1], m[a + 2]);
    case 4: return f(m[a], m[a + 1], m[a + 2], m[a + 3]);
    case 5: return f(m[a], m[a + 1], m[a + 2], m[a + 3], m[a + 4]);
    case 6: return f(m[a], m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5]);
    case 7: return f(m[a], m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5], m[a + 6]);
    case 8: return f(m[a], m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5], m[a + 6], m[a + 7]);
    case 9: return f(m[a], m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5], m[a + 6], m[a + 7], m[a + 8]);
    case 10: return f(m[a], m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5], m[a + 6], m[a + 7], m[a + 8], m[a + 9]);
    case 11: return f(m[a], m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5], m[a + 6], m[a + 7], m[a + 8], m[a + 9], m[a + 10]);
    case 12: return f(m[a], m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5], m[a + 6], m[a + 7], m[a + 8], m[a + 9], m[a + 10], m[a + 11]);
    case 13: return f(m[a], m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5], m[a + 6], m[a + 7], m[a + 8], m[a + 9], m[a + 10], m[a + 11], m[a + 12]);
    case 14: return f(m[a], m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5], m[a + 6], m[a + 7], m[a + 8], m[a + 9], m[a + 10], m[a + 11], m[a + 12], m[a + 13]);
    case 15: return f(m[a], m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5], m[a + 6], m[a + 7], m[a + 8], m[a + 9], m[a + 10], m[a + 11], m[a + 12], m[a + 13], m[a + 14]);
    default: return f(...m.subarray(a, a + n));
  }
}

/** The worker's body, shared by Node and browsers; `listen` and `reply` come from a prologue. */
const WORKER_BODY = `
const callFrom = (f, m, a, n) => {
  switch (n) {
${Array.from({ length: DIRECT_ARGS + 1 }, (_, n) => `    case ${n}: return f(${Array.from({ length: n }, (_, i) => `m[a + ${i}]`).join(', ')});`).join('\n')}
    default: return f.apply(null, Array.from(m.subarray(a, a + n)));
  }
};
listen(async ({ module, memory, control, names }) => {
  const instance = await WebAssembly.instantiate(module, { env: { memory } });
  const fns = names.map((name) => instance.exports[name]);
  const ctl = new Int32Array(memory.buffer, control, ${SLOT_INTS});
  // A list record is [export index, argument count, arguments...].
  const runList = (at, ints) => {
    const mem = new Int32Array(memory.buffer);
    for (let p = at >> 2, end = p + ints; p < end; p += 2 + mem[p + 1]) callFrom(fns[mem[p]], mem, p + 2, mem[p + 1]);
  };
  const runList64 = (at, count) => {
    const mem = new Float64Array(memory.buffer);
    for (let p = at >> 3, end = p + count; p < end; p += 2 + mem[p + 1]) callFrom(fns[mem[p]], mem, p + 2, mem[p + 1]);
  };
  const runQueue = (table, parts) => {
    const mem = new Int32Array(memory.buffer);
    const t = table >> 2;
    for (let i = Atomics.add(mem, t, 1); i < parts; i = Atomics.add(mem, t, 1)) runList(mem[t + 1 + 2 * i], mem[t + 2 + 2 * i]);
  };
  const serve = () => {
  for (;;) {
    let s = Atomics.load(ctl, 0);
    const spins = ctl[3];
    for (let spin = 0; spin < spins && s !== ${POSTED} && s !== ${QUIT}; spin++) s = Atomics.load(ctl, 0);
    while (s !== ${POSTED} && s !== ${QUIT}) {
      Atomics.wait(ctl, 0, s);
      s = Atomics.load(ctl, 0);
    }
    if (s === ${QUIT}) return;
    if (Atomics.compareExchange(ctl, 0, ${POSTED}, ${RUNNING}) !== ${POSTED}) continue;
    if (ctl[1] === ${LOAD}) {
      // Registered before this task returns, so the caller's message (sent once it sees RUNNING) finds it.
      listen(({ module, name }) => {
        let state = ${IDLE};
        try {
          fns.push(new WebAssembly.Instance(module, { env: { memory } }).exports[name]);
        } catch (e) {
          state = ${FAILED};
        }
        Atomics.store(ctl, 0, state);
        Atomics.notify(ctl, 0);
        serve();
      });
      return;
    }
    let state = ${IDLE};
    try {
      if (ctl[1] === ${LIST}) runList(ctl[${ARGS_AT}], ctl[${ARGS_AT} + 1]);
      else if (ctl[1] === ${LIST64}) runList64(ctl[${ARGS_AT}], ctl[${ARGS_AT} + 1]);
      else if (ctl[1] === ${QUEUE}) runQueue(ctl[${ARGS_AT}], ctl[${ARGS_AT} + 1]);
      else callFrom(fns[ctl[1]], ctl, ${ARGS_AT}, ctl[2]);
    } catch (e) {
      state = ${FAILED};
    }
    Atomics.store(ctl, 0, state);
    Atomics.notify(ctl, 0);
  }
  };
  reply('ready');
  serve();
});
`;

const NODE_PROLOGUE = `
const { parentPort } = require('node:worker_threads');
const listen = (handler) => parentPort.once('message', handler);
const reply = (message) => parentPort.postMessage(message);
`;

const BROWSER_PROLOGUE = `
const listen = (handler) => { self.onmessage = (event) => handler(event.data); };
const reply = (message) => self.postMessage(message);
`;

export const isNode = typeof process !== 'undefined' && !!process.versions?.node;

/** Whether this thread may block in Atomics.wait (the browser's main thread may not). */
export function canBlock(): boolean {
  return isNode || typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== 'undefined';
}

/**
 * Node built-ins are imported through a variable so that bundlers targeting browsers leave the
 * import alone; it only runs under Node.
 */
async function nodeBuiltin<T>(name: string): Promise<T> {
  const specifier = `node:${name}`;
  return (await import(/* @vite-ignore */ specifier)) as T;
}

export async function availableCores(): Promise<number> {
  if (isNode) {
    const os = await nodeBuiltin<{ availableParallelism?: () => number; cpus: () => unknown[] }>('os');
    return os.availableParallelism?.() ?? os.cpus().length;
  }
  return (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency ?? 1;
}

/** The common surface of a Node worker_threads Worker and a Web Worker that the pool uses. */
interface WorkerHandle {
  postMessage(message: unknown): void;
  onReady(resolve: () => void, reject: (e: unknown) => void): void;
  terminate(): void;
}

async function spawnWorker(): Promise<WorkerHandle> {
  if (isNode) {
    type NodeWorker = {
      postMessage(m: unknown): void;
      once(event: string, f: (x: unknown) => void): void;
      unref(): void;
      terminate(): Promise<number>;
    };
    const { Worker } = await nodeBuiltin<{ Worker: new (src: string, opts: { eval: boolean }) => NodeWorker }>('worker_threads');
    const w = new Worker(NODE_PROLOGUE + WORKER_BODY, { eval: true });
    // A blocked worker must never keep the process alive.
    w.unref();
    return {
      postMessage: (m) => w.postMessage(m),
      onReady: (resolve, reject) => {
        w.once('message', () => resolve());
        w.once('error', reject);
      },
      terminate: () => void w.terminate(),
    };
  }
  const url = URL.createObjectURL(new Blob([BROWSER_PROLOGUE + WORKER_BODY], { type: 'text/javascript' }));
  const w = new Worker(url);
  return {
    postMessage: (m) => w.postMessage(m),
    onReady: (resolve, reject) => {
      w.onmessage = () => {
        URL.revokeObjectURL(url);
        resolve();
      };
      w.onerror = reject;
    },
    terminate: () => w.terminate(),
  };
}

/** A generated module that the worker threads could not load (ThreadPool.load). */
export class ThreadLoadError extends Error {}

/** Splits [0, units) into at most `parts` contiguous ranges of near-equal size (one at least). */
export function splitRange(units: number, parts: number): [number, number][] {
  const n = Math.max(1, Math.min(parts, units));
  return Array.from({ length: n }, (_, t) => [Math.floor((t * units) / n), Math.floor(((t + 1) * units) / n)]);
}

/**
 * One call of a kernel export: its index in the pool's name list (or of a loaded module's export,
 * ThreadPool.load) and its arguments: i32 values, or any numbers when `floats` is set (the part
 * then goes to its worker as float64 records, which hold f32 coefficients and u32 keys exactly).
 */
export interface KernelCall {
  fn: number;
  args: readonly number[];
  floats?: boolean;
}

/**
 * The module and export name of each generated function (arena kernels: src/kernels/arena/wasm.ts)
 * over the backend's memory, so that worker threads can instantiate it too (ThreadPool.load).
 */
export const generatedModules = new WeakMap<object, { module: WebAssembly.Module; name: string }>();

/** A call of a generated function (one in generatedModules) with its arguments, for a thread's part. */
export interface GeneratedCall {
  fn: (...args: number[]) => void;
  args: number[];
}

/**
 * A thread's part already encoded as the pool's list records ([export index, argument count,
 * i32 arguments...]): a split of many short calls (a narrow convolution: about a thousand calls
 * of about 1 us each at batch 128) records them here and posts them with one copy, instead of an
 * object and an array per call, which cost the caller about 0.5 us a call, serially
 * (bench/threads.bench.ts).
 */
export class CallList {
  ints = new Int32Array(1024);
  length = 0;

  push(fn: number, args: readonly number[]): void {
    const n = args.length;
    if (n > MAX_ARGS) throw new RangeError(`CallList: ${n} arguments (at most ${MAX_ARGS})`);
    if (this.length + 2 + n > this.ints.length) {
      const grown = new Int32Array(Math.max(2 * this.ints.length, this.length + 2 + n));
      grown.set(this.ints.subarray(0, this.length));
      this.ints = grown;
    }
    const ints = this.ints;
    let p = this.length;
    ints[p++] = fn;
    ints[p++] = n;
    for (let i = 0; i < n; i++) ints[p++] = args[i];
    this.length = p;
  }

  /**
   * Runs the records in order on this thread, `fns[index]` of each with its arguments read
   * straight from the records, as a worker runs a list (WORKER_BODY's callFrom): the caller's own
   * part of a split runs this way, not through an object and a spread array per call.
   */
  runWith(fns: readonly ((...args: number[]) => unknown)[]): void {
    const ints = this.ints;
    for (let p = 0; p < this.length; p += 2 + ints[p + 1]) callFrom(fns[ints[p]], ints, p + 2, ints[p + 1]);
  }

  /** Calls `f(fn, args)` for each record in order (`args` is reused from call to call). */
  forEach(f: (fn: number, args: number[]) => void): void {
    const ints = this.ints;
    const args: number[] = [];
    for (let p = 0; p < this.length; ) {
      const n = ints[p + 1];
      args.length = n;
      for (let i = 0; i < n; i++) args[i] = ints[p + 2 + i];
      f(ints[p], args);
      p += 2 + n;
    }
  }
}

/** One part of a split kernel: calls run in order on one thread. */
export type ThreadPart = readonly KernelCall[] | CallList;

export class ThreadPool {
  private disposed = false;
  private spins = DEFAULT_SPIN_LOADS;
  /**
   * Parts posted to workers, those this thread took back because no worker had started them, and
   * posts that found their worker asleep in Atomics.wait (past its spin budget: a wake-up to pay).
   */
  readonly stats = { posted: 0, takenBack: 0, woken: 0 };

  private constructor(
    private readonly workers: WorkerHandle[],
    private readonly memory: WebAssembly.Memory,
    private readonly control: Int32Array,
    private readonly listSpace: (bytes: number) => number,
    private readonly names: readonly string[],
  ) {
    this.spinLoads = DEFAULT_SPIN_LOADS;
  }

  /**
   * Starts `count` workers. `control` is the byte address of count * CONTROL_BYTES_PER_WORKER
   * bytes of the shared memory reserved for the pool; `names` are the exports that calls name;
   * `listSpace(bytes)` lends the byte address of that much memory for the call lists of one run
   * (valid until the next run).
   */
  static async start(
    module: WebAssembly.Module,
    memory: WebAssembly.Memory,
    control: number,
    count: number,
    names: readonly string[],
    listSpace: (bytes: number) => number,
  ): Promise<ThreadPool> {
    const workers = await Promise.all(Array.from({ length: count }, () => spawnWorker()));
    await Promise.all(
      workers.map(
        (w, t) =>
          new Promise<void>((resolve, reject) => {
            w.onReady(resolve, reject);
            w.postMessage({ module, memory, control: control + t * CONTROL_BYTES_PER_WORKER, names });
          }),
      ),
    );
    return new ThreadPool(workers, memory, new Int32Array(memory.buffer, control, count * SLOT_INTS), listSpace, names);
  }

  get size(): number {
    return this.workers.length;
  }

  /** Loads of its slot a thread makes before it blocks (workers after a call, the caller while waiting). */
  get spinLoads(): number {
    return this.spins;
  }
  set spinLoads(loads: number) {
    this.spins = Math.max(0, Math.round(loads));
    for (let t = 0; t < this.workers.length; t++) Atomics.store(this.control, t * SLOT_INTS + 3, this.spins);
  }

  /**
   * Runs `parts[0]` with `runHere` on this thread and parts[1..] on the workers (or here, when a
   * worker has not started its part by the time this thread is done), each part's calls in
   * order, and returns when all have finished. With more parts than threads, the parts form a
   * queue that `threads` threads (this one included; default all) take from until it is empty
   * (runQueue): each part must then use only memory of its own, since any thread may run it.
   */
  run(parts: readonly (readonly KernelCall[])[], runHere: (call: KernelCall) => void, threads?: number): void;
  /** Encoded parts (CallList) come to `runHere` whole, where this thread runs one. */
  run(parts: readonly ThreadPart[], runHere: (call: KernelCall | CallList) => void, threads?: number): void;
  run(parts: readonly ThreadPart[], runHereOf: (call: never) => void, threads = this.workers.length + 1): void {
    const runHere = runHereOf as (call: KernelCall | CallList) => void;
    if (this.disposed) throw new Error('wasm backend: the thread pool was disposed');
    const usable = Math.max(1, Math.min(threads, this.workers.length + 1));
    // Encoded parts always go as a queue (any number of parts, one copy each).
    const lists = parts.filter((part): part is CallList => part instanceof CallList).length;
    if (lists > 0 && lists < parts.length) throw new RangeError('ThreadPool.run: encoded parts (CallList) mixed with parts of KernelCalls');
    if (parts.length > usable || lists > 0) return this.runQueue(parts, runHere, usable - 1);
    const calls = parts as readonly (readonly KernelCall[])[];
    const ctl = this.control;
    const slot = (t: number) => (t - 1) * SLOT_INTS;
    // Lists of more than one call go into lent memory, one after another; a part with float
    // arguments as float64 records (two ints each, 8-aligned).
    const floats = calls.map((part) => part.some((c) => c.floats));
    let listInts = 0;
    for (let t = 1; t < parts.length; t++) {
      if (floats[t]) listInts += 2;
      if (calls[t].length !== 1 || floats[t]) for (const c of calls[t]) listInts += (floats[t] ? 2 : 1) * (2 + c.args.length);
    }
    let listAt = listInts > 0 ? this.listSpace(listInts * 4) : 0;
    const mem = listInts > 0 ? new Int32Array(this.memory.buffer) : null;
    const mem64 = floats.some((f) => f) ? new Float64Array(this.memory.buffer) : null;
    for (let t = 1; t < parts.length; t++) {
      const part = calls[t];
      const base = slot(t);
      if (part.length === 1 && !floats[t]) {
        const { fn, args } = part[0];
        if (args.length > MAX_ARGS) throw new RangeError(`ThreadPool.run: ${args.length} arguments (at most ${MAX_ARGS})`);
        ctl[base + 1] = fn;
        ctl[base + 2] = args.length;
        ctl.set(args, base + ARGS_AT);
      } else {
        // Records [export index, argument count, arguments...] in i32s, or float64s (8-aligned).
        const [words, bytes] = floats[t] ? [mem64!, 8] : [mem!, 4];
        listAt = (listAt + bytes - 1) & -bytes;
        const start = listAt / bytes;
        let p = start;
        for (const { fn, args } of part) {
          words[p] = fn;
          words[p + 1] = args.length;
          words.set(args, p + 2);
          p += 2 + args.length;
        }
        ctl[base + 1] = floats[t] ? LIST64 : LIST;
        ctl[base + 2] = 2;
        ctl[base + ARGS_AT] = listAt;
        ctl[base + ARGS_AT + 1] = p - start;
        listAt = p * bytes;
      }
      Atomics.store(ctl, base, POSTED);
      if (Atomics.notify(ctl, base) > 0) this.stats.woken++;
    }
    this.stats.posted += parts.length - 1;
    let error: unknown = null;
    const runCaught = (part: readonly KernelCall[]) => {
      try {
        for (const call of part) runHere(call);
      } catch (e) {
        error ??= e;
      }
    };
    runCaught(calls[0]);
    for (let t = 1; t < parts.length; t++) {
      const base = slot(t);
      if (Atomics.compareExchange(ctl, base, POSTED, TAKEN) === POSTED) {
        this.stats.takenBack++;
        runCaught(calls[t]);
        Atomics.store(ctl, base, IDLE);
      }
    }
    for (let t = 1; t < parts.length; t++) if (!this.finished(slot(t))) error ??= new Error('wasm backend: a kernel failed on a worker thread');
    if (error) throw error;
  }

  /**
   * Instantiates `module` (which imports only env.memory) on every worker over the shared memory
   * and returns the index that calls name its export `name` by: the kernel exports' count plus
   * the modules loaded before. Blocks until every worker has it (an instantiation per worker,
   * once per generated module: the backend keeps the index). The caller resolves the same index
   * to its own instance (runHere).
   */
  load(module: WebAssembly.Module, name: string): number {
    if (this.disposed) throw new Error('wasm backend: the thread pool was disposed');
    // After a failed load the workers' lists of exports may differ: no index would be safe.
    if (this.loadFailed) throw new ThreadLoadError(`wasm backend: generated modules cannot run on the worker threads (${this.loadFailed})`);
    const ctl = this.control;
    let failed = false;
    for (let t = 0; t < this.workers.length; t++) {
      const base = t * SLOT_INTS;
      ctl[base + 1] = LOAD;
      ctl[base + 2] = 0;
      Atomics.store(ctl, base, POSTED);
      Atomics.notify(ctl, base);
      // Claimed (RUNNING) means its handler is registered: only then may the module be sent. A
      // worker that has not claimed it in LOAD_WAIT_MS is taken for dead (retracted, an error).
      const until = performance.now() + LOAD_WAIT_MS;
      while (Atomics.load(ctl, base) === POSTED && performance.now() < until) Atomics.wait(ctl, base, POSTED, 1);
      if (Atomics.compareExchange(ctl, base, POSTED, IDLE) === POSTED) {
        this.loadFailed = `worker thread ${t + 1} did not answer in ${LOAD_WAIT_MS} ms, loading the generated module of "${name}"`;
        throw new ThreadLoadError(`wasm backend: ${this.loadFailed}`);
      }
      this.workers[t].postMessage({ module, name });
      if (!this.finished(base)) failed = true;
    }
    if (failed) {
      this.loadFailed = `a worker thread could not instantiate the generated module of "${name}"`;
      throw new ThreadLoadError(`wasm backend: ${this.loadFailed}`);
    }
    return this.names.length + this.loaded++;
  }
  private loaded = 0;
  private loadFailed: string | null = null;

  /** Waits (spinning spinLoads first) until the worker of slot `base` is done; false if it failed. */
  private finished(base: number): boolean {
    const ctl = this.control;
    for (let spin = 0; spin < this.spins && Atomics.load(ctl, base) === RUNNING; spin++);
    while (Atomics.load(ctl, base) === RUNNING) Atomics.wait(ctl, base, RUNNING);
    if (Atomics.load(ctl, base) !== FAILED) return true;
    Atomics.store(ctl, base, IDLE);
    return false;
  }

  /**
   * The parts as a queue: their records and a table go into lent memory, every worker is posted
   * the queue, and this thread takes parts too; a part is claimed by an atomic increment of the
   * table's counter. On a busy machine a worker that the scheduler holds back then costs at most
   * the part it has claimed, and this thread runs whatever nobody else has taken.
   */
  private runQueue(parts: readonly ThreadPart[], runHere: (call: KernelCall | CallList) => void, workers: number): void {
    if (parts.some((part) => !(part instanceof CallList) && part.some((c) => c.floats))) throw new RangeError(`ThreadPool.run: ${parts.length} parts with float arguments for ${workers + 1} threads (a queue takes i32 arguments only)`);
    const ctl = this.control;
    let ints = 1 + 2 * parts.length;
    for (const part of parts) {
      if (part instanceof CallList) ints += part.length;
      else for (const c of part) ints += 2 + c.args.length;
    }
    const table = this.listSpace(ints * 4);
    const mem = new Int32Array(this.memory.buffer);
    const t = table >> 2;
    let p = t + 1 + 2 * parts.length;
    parts.forEach((part, i) => {
      const start = p;
      if (part instanceof CallList) {
        mem.set(part.ints.subarray(0, part.length), p);
        p += part.length;
      } else
        for (const { fn, args } of part) {
          mem[p] = fn;
          mem[p + 1] = args.length;
          mem.set(args, p + 2);
          p += 2 + args.length;
        }
      mem[t + 1 + 2 * i] = start * 4;
      mem[t + 2 + 2 * i] = p - start;
    });
    Atomics.store(mem, t, 0);
    for (let w = 0; w < workers; w++) {
      const base = w * SLOT_INTS;
      ctl[base + 1] = QUEUE;
      ctl[base + 2] = 2;
      ctl[base + ARGS_AT] = table;
      ctl[base + ARGS_AT + 1] = parts.length;
      Atomics.store(ctl, base, POSTED);
      if (Atomics.notify(ctl, base) > 0) this.stats.woken++;
    }
    this.stats.posted += workers;
    let error: unknown = null;
    for (let i = Atomics.add(mem, t, 1); i < parts.length; i = Atomics.add(mem, t, 1)) {
      try {
        const part = parts[i];
        if (part instanceof CallList) runHere(part);
        else for (const call of part) runHere(call);
      } catch (e) {
        error ??= e;
      }
    }
    // Every part is claimed: a worker that has not started has nothing left to do.
    for (let w = 0; w < workers; w++) {
      const base = w * SLOT_INTS;
      if (Atomics.compareExchange(ctl, base, POSTED, TAKEN) === POSTED) {
        this.stats.takenBack++;
        Atomics.store(ctl, base, IDLE);
      } else if (!this.finished(base)) error ??= new Error('wasm backend: a kernel failed on a worker thread');
    }
    if (error) throw error;
  }

  /**
   * Posts an empty list to the first worker and waits until it has run it, without taking it back:
   * the round trip of a split as the worker sees it (its wake-up when it is asleep), for the
   * calibration. Returns the wall time in us.
   */
  ping(): number {
    const ctl = this.control;
    const t0 = performance.now();
    ctl[1] = LIST;
    ctl[2] = 2;
    ctl[ARGS_AT] = 0;
    ctl[ARGS_AT + 1] = 0;
    Atomics.store(ctl, 0, POSTED);
    Atomics.notify(ctl, 0);
    for (let spin = 0; spin < this.spins && Atomics.load(ctl, 0) !== IDLE; spin++);
    for (let s = Atomics.load(ctl, 0); s !== IDLE; s = Atomics.load(ctl, 0)) Atomics.wait(ctl, 0, s);
    return (performance.now() - t0) * 1000;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (let t = 0; t < this.workers.length; t++) {
      Atomics.store(this.control, t * SLOT_INTS, QUIT);
      Atomics.notify(this.control, t * SLOT_INTS);
      this.workers[t].terminate();
    }
  }
}

/**
 * What the backend measured about its threads at start-up (index.ts calibrateThreads), shown in
 * its info() so that a user sees why it runs on the threads it does.
 */
export interface ThreadCalibration {
  /** Threads in use, the caller's included. */
  threads: number;
  /** Threads available (the pool's workers + 1). */
  available: number;
  /** Why that many: asked for explicitly, or measured. */
  reason: string;
  /** One thread's GFLOP/s on the calibration matmul: the cost model's rate. */
  gflops: number;
  /** Wall us of a split call that does no work, the worker spinning (hot) or asleep (cold). */
  hotUs: number;
  coldUs: number;
  /** The measured wall-time speed-up of the calibration matmul on `available` threads. */
  speedup: number;
  /** Interleaved rounds of the calibration matmul measured (after a warm-up round). */
  rounds: number;
  /** Rounds of the spin calibration (chooseSpin): hotUs and coldUs are their medians. */
  spinRounds: number;
  /** Loads of a control slot a thread makes before it blocks, and what that is in us. */
  spinLoads: number;
  spinUs: number;
  /** One element of a memory-bound kernel (a relu) in the flops of the calibration matmul. */
  elementFlops: number;
  /** How long the calibration took. */
  ms: number;
}

/** What chooseThreads decided from the calibration's rounds. */
export interface ThreadChoice {
  threads: number;
  reason: string;
  /** One thread's fastest round over each count's: the speed-up of that count. */
  speedup: (threads: number) => number;
}

/**
 * The thread count the start-up calibration picks from interleaved rounds of one matmul:
 * `rounds[i]` maps each thread count tried (1 among them) to round i's wall time on it. A count
 * is taken only where both its fastest round is at least `minSpeedup` times faster than one
 * thread's fastest (what the machine can do when nothing interrupts it) and, round by round, it
 * was faster than one thread in most rounds (the median of the paired ratios is above 1: a
 * single lucky round cannot pick it, and a single slow one cannot drop it, since the best of the
 * rounds ignores it). `candidates` are tried in order (most threads first); a count faster than
 * it can be (more than 1.1x its thread count) means one thread's rounds were interrupted, and the
 * choice is one thread. `explicit`: the count asked for, which is kept whatever was measured.
 */
export function chooseThreads(rounds: readonly ReadonlyMap<number, number>[], candidates: readonly number[], minSpeedup: number, explicit: number | null): ThreadChoice {
  const fastest = (t: number) => Math.min(...rounds.map((r) => r.get(t) ?? Infinity));
  const speedup = (t: number) => fastest(1) / fastest(t);
  const pairedMedian = (t: number) => {
    const ratios = rounds.map((r) => r.get(1)! / r.get(t)!).sort((a, b) => a - b);
    const h = ratios.length >> 1;
    return ratios.length % 2 ? ratios[h] : (ratios[h - 1] + ratios[h]) / 2;
  };
  const top = candidates[0];
  if (explicit !== null) return { threads: explicit, reason: `asked for ${explicit} threads`, speedup };
  if (candidates.some((t) => speedup(t) > 1.1 * t))
    return {
      threads: 1,
      reason: `the calibration matmul ran ${speedup(top).toFixed(2)}x faster on ${top} threads, more than possible: the machine is too busy to measure; one thread`,
      speedup,
    };
  const fast = candidates.find((t) => speedup(t) >= minSpeedup && pairedMedian(t) > 1);
  if (fast !== undefined)
    return {
      threads: fast,
      reason: `${fast} threads ran the calibration matmul ${speedup(fast).toFixed(2)}x faster than one (best of ${rounds.length} interleaved rounds; median round ${pairedMedian(fast).toFixed(2)}x)`,
      speedup,
    };
  return {
    threads: 1,
    reason: `${top} threads ran the calibration matmul ${speedup(top).toFixed(2)}x as fast as one (best of ${rounds.length} interleaved rounds; median round ${pairedMedian(top).toFixed(2)}x; ${minSpeedup}x needed in the best and above 1x in the median): one thread`,
    speedup,
  };
}

/** One round of the spin calibration: the pool's round trip (us) to a worker asleep and to one spinning. */
export interface SpinPair {
  cold: number;
  spinning: number;
}

/**
 * Whether idle workers spin, from the calibration's rounds: they do unless a spinning worker
 * answered no faster than a sleeping one in most rounds (the median of the paired ratios is 1 or
 * more). On a machine with more runnable threads than cores a spinning thread uses up its time
 * slice and waits for the next one (milliseconds), while a woken one is scheduled at once:
 * spinning then costs more than sleeping in every round. One slow round (a stray process for a
 * moment, V8 compiling on another thread at start-up) decided it alone before: measured, 2 of 8
 * start-ups on a quiet 2-core machine turned spinning off, and every split of those processes
 * then paid a wake-up. hotUs and coldUs are the medians over the rounds (hot at most cold).
 */
export function chooseSpin(pairs: readonly SpinPair[]): { spin: boolean; hotUs: number; coldUs: number } {
  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    const h = s.length >> 1;
    return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
  };
  if (pairs.length === 0) return { spin: false, hotUs: Infinity, coldUs: Infinity };
  const coldUs = median(pairs.map((p) => p.cold));
  const spin = median(pairs.map((p) => p.spinning / Math.max(p.cold, 1e-3))) < 1;
  return { spin, hotUs: spin ? Math.min(coldUs, median(pairs.map((p) => p.spinning))) : coldUs, coldUs };
}

/**
 * Each part of a split call must be worth this many of its overhead (the wake-up of a worker and
 * the hand-back): a call of t split in two then takes t/2 + t/6, a predicted 1.5x speed-up, which
 * leaves room for an overhead measured low. (Measured: a 460 us matmul that 8 cold overheads kept
 * on one thread is one the second core runs about 1.9x faster; see bench/threads.bench.ts.)
 */
const PART_OVERHEADS = 3;

/**
 * The least overhead a split is priced at: the measured round trip is an empty call, while a real
 * split also builds and posts its parts and moves its operands' cache lines to another core.
 */
const MIN_OVERHEAD_US = 5;

/**
 * The cost model that decides how many threads a kernel call is split over: a call of `flops`
 * takes flops / rate on one thread; a part on each of T threads then takes 1/T of that, plus the
 * overhead of the split, which is the hot figure when the previous split ended within the
 * workers' spin window (they are still spinning) and the cold one otherwise (MIN_OVERHEAD_US at
 * least). A call is split over the most threads whose parts are each worth PART_OVERHEADS
 * overheads, except for a while after split calls ran without a free core (observeSplit).
 */
export class SplitCost {
  private lastSplitEnd = -Infinity;

  constructor(
    /** Threads in use, the caller's included. */
    readonly threads: number,
    private readonly usPerFlop: number,
    private readonly hotUs: number,
    private readonly coldUs: number,
    private readonly spinUs: number,
  ) {}

  /** Threads for a call of `flops` floating-point operations (1: run it here, unsplit). */
  threadsFor(flops: number): number {
    if (this.threads <= 1 || performance.now() < this.unsplitUntil) return 1;
    const oneThreadUs = flops * this.usPerFlop;
    const measured = performance.now() - this.lastSplitEnd < this.spinUs / 1000 ? this.hotUs : this.coldUs;
    const overhead = Math.max(MIN_OVERHEAD_US, measured);
    let t = this.threads;
    while (t > 1 && oneThreadUs / t < PART_OVERHEADS * overhead) t--;
    return t;
  }

  /** Marks the end of a split call: the workers spin for spinUs after it. */
  splitEnded(): void {
    this.lastSplitEnd = performance.now();
  }

  /** Wall and process CPU time (us, all threads) of the split calls since the last verdict. */
  private seenWallUs = 0;
  private seenCpuUs = 0;
  /** performance.now() (ms) until which every call runs unsplit (observeSplit's back-off). */
  private unsplitUntil = -Infinity;
  private backoffMs = SPLIT_BACKOFF_MS;
  /** Verdict windows in a row whose splits ran about serially. */
  private serialWindows = 0;

  /**
   * One split call's wall time and the process's CPU time over it, all threads together (where
   * the host has a CPU clock: Node's process.cpuUsage). Over VERDICT_WALL_US of split calls, CPU
   * per wall time says how many of the threads really ran at once: about `threads` on free cores
   * (a waiting thread spins, which counts too), about 1 when another process holds the other
   * cores, and then a split call runs no faster than one thread while its waits and the workers'
   * spinning take time from this thread (the MLP 784-256-256-10 SGD step on two threads took
   * 1.44x one thread's time in a median of 40 interleaved rounds, load average 4.5 on 2 cores,
   * splits at 1.00-1.03 CPU per wall). Below MIN_PARALLEL_PER_THREAD in two windows in a row,
   * calls run unsplit for a back-off that doubles while the verdict stands (up to
   * SPLIT_BACKOFF_MAX_MS), after which splits resume and are judged again. (The result of a call
   * does not depend on whether it was split: splits keep each element's summation order.)
   */
  observeSplit(wallUs: number, cpuUs: number): void {
    if (this.threads <= 1) return;
    this.seenWallUs += wallUs;
    this.seenCpuUs += cpuUs;
    // CPU time of the other threads reaches the clock in scheduler ticks: judge a long window.
    if (this.seenWallUs < VERDICT_WALL_US) return;
    const parallel = this.seenCpuUs / this.seenWallUs;
    this.seenWallUs = this.seenCpuUs = 0;
    if (parallel >= 1 + MIN_PARALLEL_PER_THREAD * (this.threads - 1)) {
      this.backoffMs = SPLIT_BACKOFF_MS;
      this.serialWindows = 0;
      return;
    }
    // Two windows in a row, so that one stray interruption on free cores backs nothing off.
    if (++this.serialWindows < 2) return;
    this.serialWindows = 0;
    this.unsplitUntil = performance.now() + this.backoffMs;
    this.backoffMs = Math.min(2 * this.backoffMs, SPLIT_BACKOFF_MAX_MS);
    this.backoffs++;
  }

  /** Back-offs so far (observeSplit): for measurements. */
  backoffs = 0;

  /** Whether calls run unsplit now, for a back-off after split calls found no free core. */
  get backedOff(): boolean {
    return performance.now() < this.unsplitUntil;
  }
}

/**
 * Split calls' wall time (us) over which SplitCost.observeSplit judges how many threads ran at
 * once: many scheduler ticks, since the CPU clock takes in the other threads' time at ticks.
 */
export const VERDICT_WALL_US = 20_000;
/**
 * CPU per wall time of split calls, per thread beyond the first, below which they are taken to
 * have run without a free core: 1.3 for two threads, where free cores measure about 2 and a
 * second core held by another process about 1.0.
 */
export const MIN_PARALLEL_PER_THREAD = 0.3;
/** The first back-off (ms) of SplitCost.observeSplit, and its most after doublings. */
export const SPLIT_BACKOFF_MS = 100;
export const SPLIT_BACKOFF_MAX_MS = 1600;
