/**
 * The autograd graph as the op front-ends see it: grad mode, graph nodes, and the registry of
 * vector-Jacobian products. The rules themselves are tensor programs in src/autograd/vjps.ts,
 * which fills the registry when the package is imported; keeping only the registry here keeps
 * the arrows pointing down (autograd -> tensor).
 */
import type { Tensor } from './tensor.js';

export interface Node {
  op: string;
  inputs: Tensor[];
  /** Extra tensors the vjp needs that are not inputs (argmax indices, dropout masks). */
  saved: Tensor[];
  attrs: Record<string, unknown>;
  /** Set by a backward pass through this node without retainGraph: running through it again is an error. */
  freed?: boolean;
}

/**
 * Returns one gradient per input (null where the input gets none). `into[i]`, where given, is a
 * tensor of input i's shape and dtype that the rule may write input i's whole gradient into (a
 * parameter's slot in the optimizer's flat gradient arena; only without createGraph) and return
 * as that gradient, saving backward a copy; a rule that does not use it returns a new tensor as usual.
 */
export type Vjp = (grad: Tensor, node: Node, output: Tensor, into?: readonly (Tensor | null)[]) => (Tensor | null)[];

export const vjpRegistry = new Map<string, Vjp>();

let gradEnabled = true;

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs fn with gradient recording on or off, restoring the previous mode afterwards. */
export function withGradMode<T>(enabled: boolean, fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = enabled;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** Runs fn without recording gradients (torch.no_grad). */
export function noGrad<T>(fn: () => T): T {
  return withGradMode(false, fn);
}

/** Attaches a graph node to `out` when grad mode is on and some input requires grad. */
export function record(op: string, out: Tensor, inputs: Tensor[], attrs: Record<string, unknown> = {}, saved: Tensor[] = []): Tensor {
  if (gradEnabled && inputs.some((t) => t.requiresGrad)) {
    if (!vjpRegistry.has(op)) throw new Error(`${op}: no gradient rule is registered`);
    out.requiresGrad = true;
    out.gradFn = { op, inputs, saved, attrs };
  }
  return out;
}

/** Filled by src/autograd so that Tensor.backward() can reach it without an upward import. */
export const hooks: {
  backward: ((t: Tensor, grad?: Tensor, opts?: { retainGraph?: boolean; createGraph?: boolean }) => void) | null;
} = { backward: null };
