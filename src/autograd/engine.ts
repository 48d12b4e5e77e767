/**
 * Reverse mode: a topological sort of the graph above the outputs, then one vjp per node in
 * reverse order. The vjps are tensor programs, so running them with recording on
 * (createGraph) builds the graph of the backward pass itself: that is double backward.
 */
import { hooks, withGradMode, type Node } from '../tensor/graph.js';
import { fmt, shapesEqual } from '../tensor/shape.js';
import { Tensor, keep } from '../tensor/tensor.js';
import { onesLike } from '../tensor/creation.js';
import { add } from '../tensor/ops/elementwise.js';
import { copy } from '../tensor/ops/shape.js';
import { vjpRegistry } from '../tensor/graph.js';

export interface BackwardOptions {
  /** Keep the graph so that backward can run through it again (default: createGraph). */
  retainGraph?: boolean;
  /** Record the backward pass for higher-order derivatives. */
  createGraph?: boolean;
}

const freedNodes = new WeakSet<Node>();

/** Tensors above `outputs` that need a gradient, inputs before the tensors made from them. */
function topoOrder(outputs: Tensor[], stopAt: Set<Tensor> | null): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  const stack: [Tensor, boolean][] = outputs.map((t) => [t, false]);
  while (stack.length) {
    const [t, expanded] = stack.pop()!;
    if (expanded) {
      order.push(t);
      continue;
    }
    if (seen.has(t)) continue;
    seen.add(t);
    stack.push([t, true]);
    if (t.gradFn && !stopAt?.has(t)) for (const i of t.gradFn.inputs) if (i.requiresGrad && !seen.has(i)) stack.push([i, false]);
  }
  return order;
}

/**
 * Propagates `outGrads` from `outputs` down the graph. Each tensor that has no node (a leaf) or
 * is in `stopAt` is handed to `sink` with its total gradient.
 */
function propagate(outputs: Tensor[], outGrads: Tensor[], opts: BackwardOptions, stopAt: Set<Tensor> | null, sink: (t: Tensor, g: Tensor) => void): void {
  const createGraph = opts.createGraph ?? false;
  const retainGraph = opts.retainGraph ?? createGraph;
  const order = topoOrder(outputs, stopAt);
  const grads = new Map<Tensor, Tensor>();
  // Engine-made gradients may be freed once consumed; `uses` counts map entries sharing one tensor.
  const uses = new Map<Tensor, number>();
  const own = (g: Tensor) => uses.set(g, (uses.get(g) ?? 0) + 1);
  const release = (g: Tensor) => {
    const n = (uses.get(g) ?? 0) - 1;
    if (n > 0) uses.set(g, n);
    else if (n === 0) {
      uses.delete(g);
      if (!createGraph) g.dispose();
    }
  };
  const accumulate = (t: Tensor, g: Tensor) => {
    const prev = grads.get(t);
    if (!prev) {
      grads.set(t, g);
      own(g);
      return;
    }
    const sum = add(prev, g);
    grads.set(t, sum);
    own(sum);
    release(prev);
  };
  outputs.forEach((o, i) => {
    const prev = grads.get(o);
    grads.set(o, prev ? add(prev, outGrads[i]) : outGrads[i]);
  });

  withGradMode(createGraph, () => {
    for (let idx = order.length - 1; idx >= 0; idx--) {
      const t = order[idx];
      const g = grads.get(t);
      if (!g) continue;
      const node = t.gradFn;
      if (!node || stopAt?.has(t)) {
        // The sink owns what it gets: a gradient still shared with another entry (or passed in by
        // the caller) is copied, so later in-place accumulation cannot alias it.
        const exclusive = uses.get(g) === 1;
        sink(t, exclusive || createGraph ? g : copy(g));
        if (exclusive) uses.delete(g);
        else if (uses.has(g)) release(g);
        continue;
      }
      if (freedNodes.has(node)) {
        throw new Error(`backward: the graph through ${node.op} was already used by a backward pass and freed; pass { retainGraph: true } to the first backward to run it twice`);
      }
      const vjp = vjpRegistry.get(node.op)!;
      const inGrads = vjp(g, node, t);
      node.inputs.forEach((inp, i) => {
        const gi = inGrads[i];
        if (!gi || !inp.requiresGrad) return;
        if (!shapesEqual(gi.shape, inp.shape)) {
          throw new Error(`internal: the ${node.op} gradient for input ${i} has shape ${fmt(gi.shape)}, expected ${fmt(inp.shape)}`);
        }
        accumulate(inp, gi);
      });
      grads.delete(t);
      if (uses.has(g) && !inGrads.includes(g)) release(g);
      if (!retainGraph) freedNodes.add(node);
    }
  });
}

/** Accumulates d(root)/d(leaf) into every leaf's .grad (in place where a .grad exists). */
export function backward(root: Tensor, grad?: Tensor, opts: BackwardOptions = {}): void {
  if (!root.requiresGrad) throw new Error(`backward: the tensor ${fmt(root.shape)} does not require grad (no input of its computation has requiresGrad)`);
  if (!grad) {
    if (root.size !== 1) throw new Error(`backward: the output has shape ${fmt(root.shape)}; pass a gradient of that shape (a gradient is implied only for a single-element output)`);
    grad = onesLike(root);
  } else if (!shapesEqual(grad.shape, root.shape)) {
    throw new RangeError(`backward: gradient of shape ${fmt(grad.shape)} for an output of shape ${fmt(root.shape)}`);
  }
  const createGraph = opts.createGraph ?? false;
  propagate([root], [grad], opts, null, (leaf, g) => {
    if (!leaf.grad || leaf.grad.isDisposed) leaf.grad = keep(g);
    else if (createGraph) leaf.grad = keep(add(leaf.grad, g));
    else {
      // In place: a .grad that is a view into the optimizer's flat gradient arena stays one.
      leaf.backend.axpy(leaf.grad.storage, g.storage, 1);
      g.dispose();
    }
  });
}

/**
 * The gradients of the outputs with respect to `inputs`, returned instead of accumulated
 * (torch.autograd.grad). With createGraph they are differentiable themselves.
 */
export function grad(
  outputs: Tensor | Tensor[],
  inputs: Tensor | Tensor[],
  opts: BackwardOptions & { gradOutputs?: Tensor[]; allowUnused?: boolean } = {},
): (Tensor | null)[] {
  const outs = Array.isArray(outputs) ? outputs : [outputs];
  const ins = Array.isArray(inputs) ? inputs : [inputs];
  for (const i of ins) if (!i.requiresGrad) throw new Error(`grad: input ${fmt(i.shape)} does not require grad`);
  const gOut = opts.gradOutputs ?? outs.map((o) => {
    if (o.size !== 1) throw new Error(`grad: output of shape ${fmt(o.shape)} needs an entry in gradOutputs`);
    return onesLike(o);
  });
  for (const o of outs) if (!o.requiresGrad) throw new Error(`grad: output ${fmt(o.shape)} does not require grad`);
  const found = new Map<Tensor, Tensor>();
  propagate(outs, gOut, opts, new Set(ins), (t, g) => found.set(t, g));
  return ins.map((i) => {
    const g = found.get(i);
    if (!g && !opts.allowUnused) throw new Error(`grad: input ${fmt(i.shape)} is not used to compute the outputs (pass allowUnused: true to get null)`);
    return g ?? null;
  });
}

hooks.backward = backward;
