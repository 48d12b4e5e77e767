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
 * Node runs the workers as worker_threads (`eval` source); browsers as Web Workers from a Blob
 * URL. Only a thread that may block (Node's main thread, any worker) can use the pool: the
 * browser's main thread cannot Atomics.wait, and the backend runs single-threaded there.
 */

/** Int32 slots per worker: state, export index, argument count, arguments. */
export const SLOT_INTS = 32;
const MAX_ARGS = SLOT_INTS - 3;
export const CONTROL_BYTES_PER_WORKER = SLOT_INTS * 4;

/**
 * Loads of the control slot before blocking in Atomics.wait, on both sides: about 10-30 us.
 * Waking a blocked thread costs tens of microseconds (more on a loaded machine), and the
 * matmuls of one training step come back to back, so a short spin saves most wake-ups.
 */
const SPIN_LOADS = 20000;

const IDLE = 0;
const POSTED = 1;
const RUNNING = 2;
const TAKEN = 3;
const FAILED = 4;
const QUIT = 5;

/** The worker's body, shared by Node and browsers; `listen` and `reply` come from a prologue. */
const WORKER_BODY = `
listen(async ({ module, memory, control, names }) => {
  const instance = await WebAssembly.instantiate(module, { env: { memory } });
  const fns = names.map((name) => instance.exports[name]);
  const ctl = new Int32Array(memory.buffer, control, ${SLOT_INTS});
  reply('ready');
  for (;;) {
    let s = Atomics.load(ctl, 0);
    for (let spin = 0; spin < ${SPIN_LOADS} && s !== ${POSTED} && s !== ${QUIT}; spin++) s = Atomics.load(ctl, 0);
    while (s !== ${POSTED} && s !== ${QUIT}) {
      Atomics.wait(ctl, 0, s);
      s = Atomics.load(ctl, 0);
    }
    if (s === ${QUIT}) return;
    if (Atomics.compareExchange(ctl, 0, ${POSTED}, ${RUNNING}) !== ${POSTED}) continue;
    let state = ${IDLE};
    try {
      fns[ctl[1]](...ctl.subarray(3, 3 + ctl[2]));
    } catch (e) {
      state = ${FAILED};
    }
    Atomics.store(ctl, 0, state);
    Atomics.notify(ctl, 0);
  }
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

/** One call of a kernel export: its index in the pool's name list and its i32 arguments. */
export interface KernelCall {
  fn: number;
  args: readonly number[];
}

export class ThreadPool {
  private disposed = false;

  private constructor(
    private readonly workers: WorkerHandle[],
    private readonly control: Int32Array,
  ) {}

  /**
   * Starts `count` workers. `control` is the byte address of count * CONTROL_BYTES_PER_WORKER
   * bytes of the shared memory reserved for the pool; `names` are the exports that calls name.
   */
  static async start(
    module: WebAssembly.Module,
    memory: WebAssembly.Memory,
    control: number,
    count: number,
    names: readonly string[],
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
    return new ThreadPool(workers, new Int32Array(memory.buffer, control, count * SLOT_INTS));
  }

  get size(): number {
    return this.workers.length;
  }

  /**
   * Runs `calls[0]` with `runHere` on this thread and calls[1..] on the workers (or here, when a
   * worker has not started its call by the time this thread is done), and returns when all have
   * finished. At most size + 1 calls.
   */
  run(calls: readonly KernelCall[], runHere: (call: KernelCall) => void): void {
    if (this.disposed) throw new Error('wasm backend: the thread pool was disposed');
    if (calls.length > this.workers.length + 1) throw new RangeError(`ThreadPool.run: ${calls.length} calls for ${this.workers.length + 1} threads`);
    const ctl = this.control;
    const slot = (t: number) => (t - 1) * SLOT_INTS;
    for (let t = 1; t < calls.length; t++) {
      const { fn, args } = calls[t];
      if (args.length > MAX_ARGS) throw new RangeError(`ThreadPool.run: ${args.length} arguments (at most ${MAX_ARGS})`);
      const base = slot(t);
      ctl[base + 1] = fn;
      ctl[base + 2] = args.length;
      ctl.set(args, base + 3);
      Atomics.store(ctl, base, POSTED);
      Atomics.notify(ctl, base);
    }
    let error: unknown = null;
    const runCaught = (call: KernelCall) => {
      try {
        runHere(call);
      } catch (e) {
        error ??= e;
      }
    };
    runCaught(calls[0]);
    for (let t = 1; t < calls.length; t++) {
      const base = slot(t);
      if (Atomics.compareExchange(ctl, base, POSTED, TAKEN) === POSTED) {
        runCaught(calls[t]);
        Atomics.store(ctl, base, IDLE);
      }
    }
    for (let t = 1; t < calls.length; t++) {
      const base = slot(t);
      for (let spin = 0; spin < SPIN_LOADS && Atomics.load(ctl, base) === RUNNING; spin++);
      while (Atomics.load(ctl, base) === RUNNING) Atomics.wait(ctl, base, RUNNING);
      if (Atomics.load(ctl, base) === FAILED) {
        error ??= new Error('wasm backend: a kernel failed on a worker thread');
        Atomics.store(ctl, base, IDLE);
      }
    }
    if (error) throw error;
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
