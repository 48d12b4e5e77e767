/**
 * The few places where host code in a step talks to the step compiler (src/compile). A leaf module
 * with no imports, so that src/tensor, src/nn and src/optim can call it without an upward
 * dependency. Outside a trace every hook is null and a call costs one property read.
 *
 * Why hooks at all: a captured step replays device work only. Host state that a step changes (a
 * step counter, LookSAM's "recompute every k steps" phase, BatchNorm's batch count) and host
 * checks on the data (the label range check) would silently stop happening on replay. Each such
 * place declares itself here, and the compiler replays the host side too.
 */

export interface CaptureHooks {
  /**
   * Host state that a step reads and advances. `guard` (evaluated now, and before each replay)
   * returns what the host decision depends on: a plan is replayed only when every guard returns
   * what it returned during tracing (otherwise the step is traced again for the new value).
   * `advance` is run after each replay, in the order the step called it, to move the host state
   * on as the eager step would.
   */
  hostState: ((name: string, guard: (() => unknown) | null, advance: (() => void) | null) => void) | null;
  /**
   * A host check on index data (checkIndexRange): `check` repeats it on the tensor it gets. The
   * compiler reruns it on each replay's inputs when `storage` is one of them; the check's own
   * host read is not a data-dependent branch.
   */
  hostCheck: ((storage: object, check: (storageOwner: unknown) => void) => void) | null;
  /**
   * Device work that does not go through the Backend methods (a kernel that writes a host-memory
   * storage directly, or encodes on the WebGPU runtime itself) routes its call through this hook
   * while it is set: `captureHooks.deviceCall ? captureHooks.deviceCall('name', fn, args) : fn(...args)`.
   * The recorder then records it as one call of `fn` with those arguments (storages in them found
   * anywhere in plain objects and arrays) and runs it.
   */
  deviceCall: ((name: string, fn: (...args: never[]) => unknown, args: unknown[]) => unknown) | null;
  /**
   * A tensor was pointed at new storage (Tensor.rebind: BatchNorm's running statistics each
   * step). Plans that use the old storage as state move to the new one; a trace records the move.
   */
  rebound: ((from: object, to: object) => void) | null;
  /**
   * A kernel argument computed from host values that change from step to step (a scheduled
   * learning rate, SAM's rho): `value` is the object about to be passed to a kernel (the very
   * object: it is found by identity in the recorded arguments), `get` computes it again from the
   * current host state. A plan takes it as an input: each replay passes `get()` in its place, so
   * one trace serves a whole schedule. Where the object never reaches a kernel as is (code derived
   * other numbers from it), the plan treats `get()` as a guard instead (a new value traces again),
   * which is always safe. The host values behind it must not steer host branches of the step
   * (those stay in a hostState guard).
   *
   * With `from` (a value declared before), `value` is derived from it: `get` receives the current
   * value of `from` and derives `value` again (the per-tensor engine turns an optimizer's groups
   * into kernel hyper-parameters). `from` then counts as received when `value` is.
   */
  hostValue: ((value: object, get: (from?: object) => object, from?: object) => void) | null;
}

export const captureHooks: CaptureHooks = { hostState: null, hostCheck: null, deviceCall: null, rebound: null, hostValue: null };
