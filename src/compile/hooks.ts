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
}

export const captureHooks: CaptureHooks = { hostState: null, hostCheck: null };
