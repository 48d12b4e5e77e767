/**
 * Instrumenting a backend (and its fused arena kernels) for the profiles of the benches and the
 * call-count tests: every method of each target's prototype chain is replaced, on the instance, by
 * a wrapper that hands the outermost call to `around` (a kernel that calls another method of the
 * backend is charged once, to itself). Install it before a captured step is traced, so that the
 * plan binds the wrappers too.
 */
import * as fg from '../src/index.js';

export type Around = (name: string, args: unknown[], run: () => unknown) => unknown;

/**
 * Backend calls that are host work, not kernels: allocation, host transfers and writes of
 * constants, views and queries (the host-ms figures of bench/compile.bench and bench/step-profile
 * count them as host time).
 */
export const HOST_WORK: ReadonlySet<string> = new Set(['alloc', 'allocUninit', 'typed', 'upload', 'view', 'write', 'release', 'read', 'readSync', 'memory', 'info', 'supportsDtype']);

/** Wraps the methods of every [prefix, target] (null targets are skipped); returns the function that removes the wrappers. */
export function instrumentCalls(targets: readonly (readonly [string, object | null])[], around: Around): () => void {
  const removers: (() => void)[] = [];
  let depth = 0;
  for (const [prefix, target] of targets) {
    if (!target) continue;
    const rec = target as Record<string, unknown>;
    const names = new Set<string>();
    for (let proto = Object.getPrototypeOf(rec); proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
      for (const n of Object.getOwnPropertyNames(proto)) if (n !== 'constructor' && typeof rec[n] === 'function') names.add(n);
    }
    for (const n of names) {
      // Own function properties (already instrumented, or set by the backend itself) stay as they are.
      if (Object.prototype.hasOwnProperty.call(rec, n)) continue;
      const orig = rec[n] as (...a: unknown[]) => unknown;
      rec[n] = (...a: unknown[]) => {
        if (depth > 0) return orig.apply(target, a);
        depth++;
        try {
          return around(prefix + n, a, () => orig.apply(target, a));
        } finally {
          depth--;
        }
      };
      removers.push(() => delete rec[n]);
    }
  }
  return () => {
    for (const r of removers) r();
  };
}

/**
 * One training step as the benches write it: SAM (and its family) through its closure, any other
 * optimizer as zeroGrad, closure, step; inside tidy, so only the loss outlives it.
 */
export function trainStep(opt: fg.optim.Optimizer, closure: () => fg.Tensor): () => fg.Tensor {
  return () =>
    fg.tidy(() => {
      if (opt instanceof fg.optim.SAM) return opt.step(closure) as fg.Tensor;
      opt.zeroGrad();
      const l = closure();
      opt.step();
      return l;
    });
}

/**
 * The benches' SGD / SAM step on one batch: a fresh makeNet() with the weights `init`, in train
 * mode; SGD with momentum (lr 0.01, momentum 0.9), or SAM (rho 0.05) over that SGD; the cross
 * entropy of the model on (x, y), both kept (they outlive the steps' tidy); run by trainStep.
 */
export function sgdSamStep(
  kind: 'sgd' | 'sam',
  makeNet: () => fg.nn.Sequential,
  init: fg.nn.StateDict,
  x: { data: Float32Array; shape: number[] },
  yData: Int32Array,
): () => fg.Tensor {
  const model = makeNet();
  model.loadStateDict(init);
  model.train();
  const xs = fg.tensor(x.data, { shape: x.shape }).keep();
  const ys = fg.tensor(yData, { dtype: 'int32' }).keep();
  const sgd = { lr: 0.01, momentum: 0.9 };
  const o = kind === 'sam' ? new fg.optim.SAM(model.parameters(), fg.optim.SGD, { ...sgd, rho: 0.05 }) : new fg.optim.SGD(model.parameters(), sgd);
  return trainStep(o, () => {
    const l = fg.crossEntropy(model.forward(xs), ys);
    l.backward();
    return l;
  });
}

/** Wall ms and calls per key. */
export type WallProfile = Map<string, { ms: number; calls: number }>;

/**
 * A charger for the profiles of bench/mlp-threads.ts and bench/threads-profile.ts: charge(key, f)
 * runs f and adds its wall time to `into()`'s entry for key, outermost calls only (a call inside
 * a charged one is charged to that one); nothing is charged while `into()` is null.
 */
export function wallCharger(into: () => WallProfile | null): (key: string, f: () => unknown) => unknown {
  let depth = 0;
  return (key, f) => {
    const acc = into();
    if (!acc || depth > 0) return f();
    depth++;
    const t0 = performance.now();
    try {
      return f();
    } finally {
      depth--;
      const r = acc.get(key) ?? { ms: 0, calls: 0 };
      r.ms += performance.now() - t0;
      r.calls++;
      acc.set(key, r);
    }
  };
}
