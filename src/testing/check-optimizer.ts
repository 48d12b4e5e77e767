/**
 * fg.testing.checkOptimizer: the harness a researcher runs on a new optimizer kernel or SAM-family
 * member before trusting it. On a fixed problem (five parameter tensors of awkward sizes in two
 * groups, one of them without a gradient on odd steps, a loss with a curvature that changes per
 * step) it runs the optimizer and checks:
 *
 *   float64-reference    every backend and dtype (float32; float64 where the backend has it)
 *                        against the float64 run on cpu, in ulps of the dtype at each parameter
 *                        tensor's largest magnitude
 *   fused-vs-per-tensor  the per-tensor baseline against the fused arena pass (cpu and wasm)
 *   rho0-vs-base         a SAM-family member with rho = 0 against its base optimizer alone
 *   nan-skip             a step whose gradient holds a NaN changes nothing: the parameters stay,
 *                        and the rest of the run equals a run without that step
 *
 * It returns a report and, unless `throwOnFailure: false`, throws a CheckOptimizerError whose
 * message names the backend, the check and the worst element of every failure.
 */
import type { Backend } from '../kernels/backend.js';
import { CpuBackend } from '../kernels/cpu/index.js';
import { uniformAt } from '../kernels/rng.js';
import { normalAt } from '../kernels/normal.js';
import { ArenaOptimizer, type OptimizerDefinition } from '../kernels/arena/optimizer.js';
import { Optimizer, type GroupInput } from '../optim/optimizer.js';
import { SGD } from '../optim/sgd.js';
import { SharpnessAware, type BaseOptimizerClass } from '../optim/sam.js';
import { Tensor, tidy } from '../tensor/tensor.js';

type Stepper = ArenaOptimizer | Optimizer;
/** Builds the optimizer over parameter groups (each with the harness's per-group options). */
export type OptimizerFactory = (groups: GroupInput[], opts: { fused: boolean }) => Stepper;

/** What checkOptimizer accepts: a defineOptimizer definition, an Optimizer class, a SAM-family class, or a factory. */
export type CheckSubject =
  | OptimizerDefinition
  | (new (params: GroupInput[], ...rest: never[]) => Stepper)
  | OptimizerFactory;

export type CheckName = 'float64-reference' | 'fused-vs-per-tensor' | 'rho0-vs-base' | 'nan-skip';

export interface CheckOptions {
  /** Options for the optimizer (hyper-parameters; for a SAM member its own and its base's). */
  options?: Record<string, unknown>;
  /** Per-group overrides, one object per group of the problem (two groups). */
  groups?: [Record<string, unknown>, Record<string, unknown>];
  /** The base optimizer of a SAM-family member (default SGD) and the options only it takes. */
  base?: BaseOptimizerClass;
  baseOptions?: Record<string, unknown>;
  /** Backends to run on: names (created and disposed here) or backends; default every one available. */
  backends?: readonly ('cpu' | 'wasm' | 'webgpu' | Backend)[];
  steps?: number;
  /** Which step (0-based) gets a NaN gradient in the nan-skip check. Default 2. */
  nanStep?: number;
  /** float32 (or float64) results against the float64 reference, in ulps of the dtype. Default 16. */
  ulps?: number;
  /** Per tensor against fused. Default 0 (the same kernel, bit for bit) for definitions, 8 otherwise. */
  perTensorUlps?: number;
  /** Magnitudes below this count as this when measuring ulps (values crossing zero). Default 1e-3. */
  floor?: number;
  /** Which checks to run (default all that apply). */
  checks?: readonly CheckName[];
  /** Default true: throw a CheckOptimizerError listing the failures. */
  throwOnFailure?: boolean;
}

export interface WorstElement {
  step: number;
  param: number;
  index: number;
  got: number;
  expected: number;
  ulps: number;
}

export interface CheckResult {
  check: CheckName;
  backend: string;
  dtype: 'float32' | 'float64';
  /** 'fused', 'per tensor', or what was compared. */
  variant: string;
  passed: boolean;
  /** The allowed distance in ulps. */
  tolerance: number;
  /** The largest distance seen (Infinity for a NaN where a number was expected). */
  worst: WorstElement | null;
  message: string;
}

export interface CheckReport {
  name: string;
  passed: boolean;
  results: CheckResult[];
  /** Checks or backends that did not run, and why. */
  skipped: string[];
  failures: CheckResult[];
  /** A table of the results, one line each. */
  toString(): string;
}

export class CheckOptimizerError extends Error {
  override name = 'CheckOptimizerError';
  constructor(readonly report: CheckReport) {
    super(`checkOptimizer(${report.name}): ${report.failures.length} check(s) failed:\n${report.failures.map((f) => `  ${f.message}`).join('\n')}`);
  }
}

// ----------------------------------------------------------------------------------- problem

const SHAPES = [[7, 9], [3], [5, 13], [1], [65]];
const GROUP_OF = [0, 0, 1, 1, 0];
interface StepData {
  A: number[][];
  B: number[][];
  /** Which parameters the loss reads: parameter 3 is left out on odd steps (grad None: it must be left alone). */
  active: boolean[];
  nan: boolean;
}

function problem(steps: number): { init: number[][]; data: StepData[] } {
  const numels = SHAPES.map((s) => s.reduce((a, b) => a * b, 1));
  const init = numels.map((n, k) => Array.from({ length: n }, (_, i) => 0.5 * normalAt(1000 + k, 7, i)));
  const data = Array.from({ length: steps }, (_, t) => ({
    A: numels.map((n, k) => Array.from({ length: n }, (_, i) => 0.1 + uniformAt(2000 + 16 * t + k, 11, i))),
    B: numels.map((n, k) => Array.from({ length: n }, (_, i) => normalAt(3000 + 16 * t + k, 13, i))),
    active: SHAPES.map((_, k) => k !== 3 || t % 2 === 0),
    nan: false,
  }));
  return { init, data };
}

// ------------------------------------------------------------------------------------ subject

interface Subject {
  sam: boolean;
  definition: boolean;
  make(groups: GroupInput[], fused: boolean, extra?: Record<string, unknown>): Stepper;
  /** The base optimizer alone (SAM members), for rho0-vs-base. */
  makeBase?(groups: GroupInput[], fused: boolean): Stepper;
  name: string;
}

function isDefinition(x: unknown): x is OptimizerDefinition {
  return typeof x === 'object' && x !== null && typeof (x as OptimizerDefinition).create === 'function' && (x as OptimizerDefinition).kernel?.kind === 'arena-kernel';
}

const SAM_KEYS = ['rho', 'adaptive', 'eta', 'adaptiveBias', 'normEps', 'restore', 'skipNonFinite', 'freezeBatchNorm'];

function subjectOf(s: CheckSubject, o: CheckOptions): Subject {
  const opts = o.options ?? {};
  if (isDefinition(s)) return { sam: false, definition: true, name: s.name, make: (g, fused) => s.create(g, { ...opts, fused }) };
  if (typeof s !== 'function') throw new TypeError('checkOptimizer: expected a definition from defineOptimizer, an optimizer class or a factory (groups, { fused }) => optimizer');
  const proto = (s as { prototype?: unknown }).prototype;
  if (proto instanceof SharpnessAware) {
    const Base = o.base ?? SGD;
    const baseOpts = o.baseOptions ?? { lr: 0.05, momentum: 0.9 };
    const Cls = s as unknown as new (p: GroupInput[], B: BaseOptimizerClass, opts: Record<string, unknown>) => Optimizer;
    return {
      sam: true,
      definition: false,
      name: (s as { name?: string }).name || 'sam-variant',
      make: (g, fused, extra) => new Cls(g, Base, { ...baseOpts, ...opts, ...extra, fused }),
      // The groups' overrides of the variant's own options (those in `options`, and SAM's) stay with the variant.
      makeBase: (g, fused) =>
        new Base(
          g.map((gr) => Object.fromEntries(Object.entries(gr).filter(([k2]) => !(k2 in opts) && !SAM_KEYS.includes(k2))) as GroupInput),
          { ...baseOpts, fused },
        ),
    };
  }
  if (proto instanceof Optimizer) {
    const Cls = s as unknown as new (p: GroupInput[], opts: Record<string, unknown>) => Optimizer;
    return { sam: false, definition: false, name: (s as { name?: string }).name || 'optimizer', make: (g, fused) => new Cls(g, { ...opts, fused }) };
  }
  const f = s as OptimizerFactory;
  return { sam: false, definition: false, name: f.name || 'optimizer', make: (g, fused) => f(g, { fused }) };
}

// --------------------------------------------------------------------------------------- runs

type Trajectory = Float64Array[][]; // [step][param]

interface RunSpec {
  backend: Backend;
  dtype: 'float32' | 'float64';
  fused: boolean;
  data: StepData[];
  init: number[][];
  groups: readonly Record<string, unknown>[];
  make: (groups: GroupInput[], fused: boolean) => Stepper;
}

async function run(spec: RunSpec): Promise<Trajectory> {
  const { backend: b, dtype } = spec;
  const Arr = dtype === 'float64' ? Float64Array : Float32Array;
  const up = (v: readonly number[], k: number) => Tensor.fromStorage(b.upload(Arr.from(v), dtype), SHAPES[k].slice(), b);
  const params = spec.init.map((v, k) => up(v, k).requiresGrad_().keep());
  const groups: GroupInput[] = spec.groups.map((g, gi) => ({ ...g, params: params.filter((_, k) => GROUP_OF[k] === gi) }));
  let opt: Stepper | null = null;
  const out: Trajectory = [];
  try {
    opt = spec.make(groups, spec.fused);
    for (const [t, d] of spec.data.entries()) {
      const A = d.A.map((v, k) => up(v, k).keep());
      const B = d.B.map((v, k) => up(d.nan && k === 0 ? v.map((x, i) => (i === 5 ? NaN : x)) : v, k).keep());
      const closure = () =>
        tidy(() => {
          let total: Tensor | null = null;
          params.forEach((p, k) => {
            if (!d.active[k]) return;
            const term = A[k].mul(p).mul(p).sum().add(B[k].mul(p.tanh()).sum());
            total = total ? total.add(term) : term;
          });
          total!.backward();
          return total!;
        });
      if (opt instanceof SharpnessAware) {
        const loss = opt.step(closure);
        if (loss instanceof Tensor) loss.dispose();
      } else {
        opt.zeroGrad();
        closure().dispose();
        opt.step();
      }
      for (const x of [...A, ...B]) x.dispose();
      out.push(await Promise.all(params.map(async (p) => Float64Array.from(await p.data()))));
    }
  } finally {
    opt?.dispose();
    for (const p of params) {
      p.grad?.dispose();
      p.dispose();
    }
  }
  return out;
}

/** The ulp of `scale` (a tensor's largest magnitude, at least `floor`) in `dtype`. */
function ulpOf(scale: number, dtype: 'float32' | 'float64', floor: number): number {
  const m = Math.max(scale, floor);
  const e = Math.floor(Math.log2(m));
  return 2 ** (e - (dtype === 'float32' ? 23 : 52));
}

/** The worst element of `got` against `want`, in ulps of `dtype`. */
function compare(got: Trajectory, want: Trajectory, dtype: 'float32' | 'float64', floor: number, steps?: readonly number[]): WorstElement | null {
  let worst: WorstElement | null = null;
  for (const t of steps ?? want.map((_, i) => i)) {
    got[t].forEach((g, k) => {
      const w = want[t][k];
      // Distances in ulps at the tensor's scale: an element that nearly cancels to 0 is as exact as its neighbours.
      let scale = 0;
      for (const x of w) if (Number.isFinite(x)) scale = Math.max(scale, Math.abs(x));
      for (let i = 0; i < w.length; i++) {
        const same = Object.is(g[i], w[i]) || (Number.isNaN(g[i]) && Number.isNaN(w[i]));
        const ulps = same ? 0 : Number.isFinite(g[i]) && Number.isFinite(w[i]) ? Math.abs(g[i] - w[i]) / ulpOf(scale, dtype, floor) : Infinity;
        if (!worst || ulps > worst.ulps) worst = { step: t, param: k, index: i, got: g[i], expected: w[i], ulps };
      }
    });
  }
  return worst;
}

function result(name: string, check: CheckName, backend: string, dtype: 'float32' | 'float64', variant: string, tolerance: number, worst: WorstElement | null, what: string): CheckResult {
  const passed = worst === null || worst.ulps <= tolerance;
  const where = worst
    ? `worst at step ${worst.step}, parameter ${worst.param} [${worst.index}] (shape ${JSON.stringify(SHAPES[worst.param])}): got ${worst.got}, expected ${worst.expected} (${Number.isFinite(worst.ulps) ? worst.ulps.toFixed(1) : 'non-finite'} ulps, tolerance ${tolerance})`
    : 'no elements';
  return { check, backend, dtype, variant, passed, tolerance, worst, message: `${name}: ${check} on ${backend} ${dtype} (${variant}, ${what}): ${passed ? 'ok' : 'FAILED'}, ${where}` };
}

// ------------------------------------------------------------------------------------ harness

async function backendsOf(o: CheckOptions, skipped: string[]): Promise<{ list: Backend[]; owned: Backend[] }> {
  const wanted = o.backends ?? ['cpu', 'wasm', 'webgpu'];
  const list: Backend[] = [];
  const owned: Backend[] = [];
  for (const w of wanted) {
    if (typeof w !== 'string') {
      list.push(w);
      continue;
    }
    try {
      let b: Backend;
      if (w === 'cpu') b = new CpuBackend();
      else if (w === 'wasm') b = await (await import('../kernels/wasm/index.js')).createWasmBackend({ threads: 1 });
      else if (w === 'webgpu') b = await (await import('../kernels/webgpu/device.js')).createWebGPUBackend();
      else throw new RangeError(`checkOptimizer: unknown backend ${JSON.stringify(w)}; expected cpu, wasm or webgpu`);
      list.push(b);
      owned.push(b);
    } catch (e) {
      if (e instanceof RangeError) throw e;
      skipped.push(`${w}: not available (${(e as Error).message.split('\n')[0]})`);
    }
  }
  return { list, owned };
}

const hostBackend = (b: Backend) => b.name === 'cpu' || b.name === 'wasm';

export async function checkOptimizer(subjectIn: CheckSubject, o: CheckOptions = {}): Promise<CheckReport> {
  const subject = subjectOf(subjectIn, o);
  const name = subject.name;
  const steps = o.steps ?? 5;
  const nanStep = o.nanStep ?? 2;
  if (!Number.isInteger(steps) || steps < 2) throw new RangeError(`checkOptimizer(${name}): steps must be an integer >= 2, got ${steps}`);
  if (!Number.isInteger(nanStep) || nanStep < 0 || nanStep >= steps - 1) throw new RangeError(`checkOptimizer(${name}): nanStep must be an integer in [0, ${steps - 2}], got ${nanStep}`);
  const ulps = o.ulps ?? 16;
  const perTensorUlps = o.perTensorUlps ?? (subject.definition ? 0 : 8);
  const floor = o.floor ?? 1e-3;
  const checks = new Set<CheckName>(o.checks ?? ['float64-reference', 'fused-vs-per-tensor', 'rho0-vs-base', 'nan-skip']);
  const groups = o.groups ?? [{}, {}];
  const { init, data } = problem(steps);
  const skipped: string[] = [];
  const results: CheckResult[] = [];
  const { list, owned } = await backendsOf(o, skipped);
  const base = { init, data, groups, make: (g: GroupInput[], f: boolean) => subject.make(g, f) };
  try {
    const cpu = new CpuBackend();
    const reference = await run({ ...base, backend: cpu, dtype: 'float64', fused: true });
    const fused = new Map<Backend, Trajectory>();
    for (const b of list) {
      const dtypes: ('float32' | 'float64')[] = b.name === 'webgpu' ? ['float32'] : ['float32', 'float64'];
      for (const dtype of dtypes) {
        const traj = await run({ ...base, backend: b, dtype, fused: true });
        if (dtype === 'float32') fused.set(b, traj);
        if (checks.has('float64-reference')) results.push(result(name, 'float64-reference', b.name, dtype, 'fused', ulps, compare(traj, reference, dtype, floor), 'against cpu float64'));
      }
      if (checks.has('fused-vs-per-tensor')) {
        if (!hostBackend(b)) skipped.push(`fused-vs-per-tensor on ${b.name}: the per-tensor baseline runs on cpu and wasm`);
        else {
          const per = await run({ ...base, backend: b, dtype: 'float32', fused: false });
          results.push(result(name, 'fused-vs-per-tensor', b.name, 'float32', 'per tensor', perTensorUlps, compare(per, fused.get(b)!, 'float32', floor), 'against fused'));
        }
      }
      if (checks.has('nan-skip')) {
        const withNan = data.map((d, t) => (t === nanStep ? { ...d, nan: true } : d));
        const without = data.filter((_, t) => t !== nanStep);
        const a = await run({ ...base, data: withNan, backend: b, dtype: 'float32', fused: true });
        const c = await run({ ...base, data: without, backend: b, dtype: 'float32', fused: true });
        // The NaN step leaves the parameters as they were, and the steps after it are those of a run without it.
        const before = nanStep === 0 ? [init.map((v) => Float64Array.from(v, (x) => Math.fround(x)))] : [a[nanStep - 1]];
        results.push(result(name, 'nan-skip', b.name, 'float32', `NaN gradient at step ${nanStep}`, 0, compare([a[nanStep]], before, 'float32', floor), 'parameters unchanged by the step'));
        results.push(result(name, 'nan-skip', b.name, 'float32', `NaN gradient at step ${nanStep}`, 0, compare(a.slice(nanStep + 1), c.slice(nanStep), 'float32', floor), 'later steps equal a run without it'));
      }
    }
    if (checks.has('rho0-vs-base')) {
      if (!subject.sam) skipped.push('rho0-vs-base: not a member of the SAM family');
      else {
        const noRho = groups.map((g) => ({ ...g, rho: 0 }));
        const variant = await run({ ...base, groups: noRho, backend: cpu, dtype: 'float64', fused: true, make: (g, f) => subject.make(g, f, { rho: 0 }) });
        const alone = await run({ ...base, backend: cpu, dtype: 'float64', fused: true, make: (g, f) => subject.makeBase!(g, f) });
        results.push(result(name, 'rho0-vs-base', 'cpu', 'float64', 'rho = 0', 0, compare(variant, alone, 'float64', floor), `against ${(o.base ?? SGD).name} alone`));
      }
    }
  } finally {
    for (const b of owned) {
      const d = b as { dispose?: () => void; destroy?: () => void };
      if (d.dispose) d.dispose();
      else d.destroy?.();
    }
  }
  const failures = results.filter((r) => !r.passed);
  const report: CheckReport = {
    name,
    passed: failures.length === 0,
    results,
    skipped,
    failures,
    toString: () => [...results.map((r) => r.message), ...skipped.map((s) => `${name}: skipped ${s}`)].join('\n'),
  };
  if (failures.length > 0 && o.throwOnFailure !== false) throw new CheckOptimizerError(report);
  return report;
}
