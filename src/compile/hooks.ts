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
}

export const captureHooks: CaptureHooks = { hostState: null, hostCheck: null, deviceCall: null, rebound: null };
