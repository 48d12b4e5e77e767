/**
 * fg.compile(step): a training step traced once per input signature and replayed as a plan.
 *
 * Calls go: the first call for a signature runs eagerly (warm-up: optimizers build their arena and
 * state lazily, so the first step is not representative, as in tinygrad's TinyJit); the next one
 * runs eagerly under the recorder (src/compile/trace.ts) and becomes a plan (src/compile/plan.ts);
 * later calls replay the plan. A new shape or dtype of a tensor argument, a different non-tensor
 * argument or `opts.key()` value is a new signature. Host state that steers the step (declared by
 * the library through captureHooks.hostState: LookSAM's phase, BatchNorm's cumulative average, an
 * optimizer's structural options such as momentum on or off) selects among the plans of a
 * signature, and a value not seen yet is traced. Hyper-parameters that schedulers move every step
 * (lr, rho, the betas, weight decay) are inputs of the plan instead (captureHooks.hostValue): each
 * replay hands the kernels their current values, so one trace serves the whole schedule.
 *
 * Why record at the Backend boundary rather than trace the tensor program: the contract is the
 * complete list of what a step does to a device, it is small, and every backend already keeps it,
 * so one recorder serves cpu, wasm and WebGPU and the replay runs the very kernels the eager step
 * ran (hence bit for bit). The host work that disappears is the front-end's: shape logic, Tensor
 * objects, the tape, tidy scopes, allocation.
 *
 * What the plan cannot know: host values the step reads from outside its arguments and that no
 * hook declares. They are constants of the plan (put them in `opts.key`). Steps that read data
 * back to the host (itemSync, dataSync), dispose state they do not replace, or return tensors that
 * existed before them or their own inputs, cannot be replayed: they run eagerly, with a one-time
 * message naming the op.
 */
import type { Backend, Storage } from '../kernels/backend.js';
import { getBackend } from '../kernels/registry.js';
import { generator } from '../tensor/random.js';
import { Tensor, tidy } from '../tensor/tensor.js';
import { fmt } from '../tensor/shape.js';
import { Plan, type PlanStats } from './plan.js';
import { traceStep, type Trace } from './trace.js';
import { captureHooks } from './hooks.js';

export interface CompileOptions {
  /** Run every call eagerly (the oracle, and a switch for debugging). */
  eager?: boolean;
  /** Eager calls per signature before tracing (default 1). */
  warmup?: number;
  /** Plans kept per signature (host-state variants) before giving up and running eagerly (default 8). */
  maxPlans?: number;
  /**
   * Host values the step depends on beyond its arguments and the library's own declarations: part
   * of the signature. (An optimizer's scheduled lr and rho need no key: they are inputs of the plan.)
   */
  key?: () => unknown;
  /**
   * Fuse elementwise chains into generated kernels, run matmuls with their elementwise consumer
   * as one call, and forward copies into their destinations (default true; false: the plan
   * replays the recorded calls as they are; 'elementwise': no matmul epilogues; both for comparison).
   */
  fuse?: boolean | 'elementwise';
  /** Where the one-time fall-back message goes (default console.warn). */
  onMessage?: (message: string) => void;
}

export interface CompileStats {
  eagerCalls: number;
  traces: number;
  replays: number;
  /** The latest plan's figures, or null before one exists. */
  plan: PlanStats | null;
}

export type CompiledStep<A extends unknown[], R> = ((...args: A) => R) & {
  /** The reason this step runs eagerly for good, or null while it is captured. */
  readonly fallback: string | null;
  stats(): CompileStats;
  /** Releases the plans' buffers; the function keeps working (it traces again). */
  dispose(): void;
};

interface OutputTemplate {
  $o: number;
  shape: number[];
}

/** A plan and the host side of its step (the trace itself, with its copies of host data, is dropped). */
interface Variant {
  plan: Plan;
  host: Pick<Trace, 'hostStates' | 'hostChecks' | 'hostValues' | 'draws'>;
  output: unknown;
}

interface Entry {
  calls: number;
  variants: Variant[];
}

let tracing = false;

/**
 * Every live plan of every compiled function: state that moves to new storage (Tensor.rebind, in
 * an eager step, a trace or any host code) is followed by all of them, so that no plan keeps
 * reading a storage that its owner has left (and freed).
 */
const livePlans = new Set<Plan>();
function followState(from: object, to: object): void {
  for (const p of livePlans) p.retarget(from as Storage, to as Storage);
}
function addLivePlan(p: Plan): void {
  livePlans.add(p);
  captureHooks.rebound = followState;
}
function dropLivePlan(p: Plan): void {
  p.dispose();
  livePlans.delete(p);
  if (livePlans.size === 0 && captureHooks.rebound === followState) captureHooks.rebound = null;
}

function collectTensors(x: unknown, into: Tensor[], sig: string[]): void {
  if (x instanceof Tensor) {
    into.push(x);
    sig.push(`${x.dtype}${fmt(x.shape)}@${x.backend.name}`);
  } else if (Array.isArray(x)) {
    sig.push('[');
    for (const v of x) collectTensors(v, into, sig);
    sig.push(']');
  } else if (x === null || ['number', 'string', 'boolean', 'undefined'].includes(typeof x)) sig.push(JSON.stringify(x) ?? 'undefined');
  else throw new TypeError(`compile: arguments must be tensors, arrays of them, or numbers, strings and booleans; got ${Object.prototype.toString.call(x)}`);
}

/** The returned value with tensors replaced by output slots; `storages` collects their storages. */
function outputTemplate(x: unknown, storages: Storage[], why: (w: string) => void): unknown {
  if (x instanceof Tensor) {
    let i = storages.indexOf(x.storage);
    if (i < 0) i = storages.push(x.storage) - 1;
    return { $o: i, shape: x.shape.slice() } satisfies OutputTemplate;
  }
  if (Array.isArray(x)) return x.map((v) => outputTemplate(v, storages, why));
  if (x && typeof x === 'object') {
    if (Object.getPrototypeOf(x) !== Object.prototype) {
      why(`the step returns a ${(x as object).constructor?.name ?? 'non-plain'} object (return tensors, arrays or plain objects)`);
      return x;
    }
    const o: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(x)) o[k] = outputTemplate(v, storages, why);
    return o;
  }
  return x;
}

function buildOutput(t: unknown, outs: Storage[], backend: Backend): unknown {
  if (Array.isArray(t)) return t.map((v) => buildOutput(v, outs, backend));
  if (t && typeof t === 'object') {
    if ('$o' in t) {
      const o = t as OutputTemplate;
      return Tensor.fromStorage(outs[o.$o], o.shape.slice(), backend);
    }
    const r: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(t)) r[k] = buildOutput(v, outs, backend);
    return r;
  }
  return t;
}

function sameValue(a: unknown, b: unknown): boolean {
  return Object.is(a, b) || JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Returns `fn` captured: same arguments, same results (tensors are new ones the caller owns; read
 * them back only when needed). Results equal the eager step's bit for bit on cpu and wasm.
 */
export function compile<A extends unknown[], R>(fn: (...args: A) => R, opts: CompileOptions = {}): CompiledStep<A, R> {
  const warmup = opts.warmup ?? 1;
  const maxPlans = opts.maxPlans ?? 8;
  const name = fn.name || 'step';
  const entries = new Map<string, Entry>();
  const counts = { eagerCalls: 0, traces: 0, replays: 0 };
  let fallback: string | null = null;
  let lastPlan: Plan | null = null;

  const dropPlans = (): void => {
    for (const e of entries.values()) for (const v of e.variants) dropLivePlan(v.plan);
    entries.clear();
    lastPlan = null;
  };
  const giveUp = (why: string): void => {
    if (fallback) return;
    fallback = why;
    dropPlans();
    const msg = `flatgrad compile(${name}): running eagerly from now on: ${why}`;
    (opts.onMessage ?? console.warn)(msg);
  };
  const eager = (args: A): R => {
    counts.eagerCalls++;
    return fn(...args);
  };

  const compiled = ((...args: A): R => {
    if (opts.eager || fallback || tracing) return eager(args);
    const inputs: Tensor[] = [];
    const sig: string[] = [];
    collectTensors(args, inputs, sig);
    if (opts.key) sig.push(`key=${JSON.stringify(opts.key())}`);
    const signature = sig.join(',');
    let entry = entries.get(signature);
    if (!entry) entries.set(signature, (entry = { calls: 0, variants: [] }));
    if (entry.calls++ < warmup) return eager(args);
    const backend = inputs[0]?.backend ?? getBackend();
    const storages = inputs.map((t) => t.storage);

    // Host values a kernel received as is are inputs of the plan (computed now); the others guard it.
    let hostValues: (object | null)[] = [];
    const variant = entry.variants.find((v) => {
      if (!v.host.hostStates.every((h) => !h.guard || sameValue(h.guard(), h.value))) return false;
      hostValues = v.host.hostValues.map((h) => (h.consumed ? h.get() : null));
      return v.host.hostValues.every((h) => h.consumed || JSON.stringify(h.get()) === h.value);
    });
    if (variant) {
      const { plan, host: trace } = variant;
      for (const c of trace.hostChecks) c.check(inputs[c.inputIndex]);
      const keys: [number, number][] = [];
      for (let i = 0; i < trace.draws; i++) keys.push(generator.nextKey());
      const outs = plan.replay(storages, keys, hostValues);
      for (const h of trace.hostStates) h.advance?.();
      counts.replays++;
      return buildOutput(variant.output, outs, plan.backend) as R;
    }
    if (entry.variants.length >= maxPlans) {
      giveUp(`host state took more than ${maxPlans} values for one input signature (${entry.variants[0]?.host.hostStates.map((h) => h.name).join(', ') || 'none declared'})`);
      return eager(args);
    }

    tracing = true;
    let traced: { result: R; trace: Trace };
    try {
      // In a scope of its own: tensors the step makes and neither returns nor keeps are garbage
      // that an enclosing tidy would free after the call (a step with no tidy inside, as the
      // CLI's): freed within the trace, they are temporaries of the plan rather than state.
      traced = traceStep(backend, storages, () => tidy(() => fn(...args) as never) as R);
    } finally {
      tracing = false;
    }
    counts.traces++;
    const outStorages: Storage[] = [];
    let why: string | null = null;
    const output = outputTemplate(traced.result, outStorages, (w) => { why ??= w; });
    const plan = new Plan(traced.trace, outStorages, { fuse: opts.fuse });
    why ??= plan.unsupported;
    if (why) {
      plan.dispose();
      giveUp(why);
    } else {
      const { hostStates, hostChecks, hostValues, draws } = traced.trace;
      entry.variants.push({ plan, host: { hostStates, hostChecks, hostValues, draws }, output });
      addLivePlan(plan);
      lastPlan = plan;
    }
    return traced.result;
  }) as CompiledStep<A, R>;

  Object.defineProperty(compiled, 'fallback', { get: () => fallback });
  compiled.stats = () => ({ ...counts, plan: lastPlan?.stats ?? null });
  compiled.dispose = dropPlans;
  return compiled;
}
