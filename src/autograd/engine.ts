/**
 * Reverse mode: a topological sort of the graph above the outputs, then one vjp per node in
 * reverse order. The vjps are tensor programs, so running them with recording on
 * (createGraph) builds the graph of the backward pass itself: that is double backward.
 */
import { hooks, withGradMode, type Node } from '../tensor/graph.js';
import { fmt, shapesEqual } from '../tensor/shape.js';
import { Tensor, keep, tidy } from '../tensor/tensor.js';
import { add } from '../tensor/ops/elementwise.js';
import { copy } from '../tensor/ops/shape.js';
import { vjpRegistry } from '../tensor/graph.js';
import { typedArrayFor } from '../tensor/dtype.js';

export interface BackwardOptions {
  /** Keep the graph so that backward can run through it again (default: createGraph). */
  retainGraph?: boolean;
  /** Record the backward pass for higher-order derivatives. */
  createGraph?: boolean;
}

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
 * Where a leaf's gradient may be written by the vjp that computes it (backward's in-place .grad
 * targets): `target` offers a tensor to overwrite, `written` is told when a vjp did.
 */
interface DirectWrites {
  target(leaf: Tensor): Tensor | null;
  written(leaf: Tensor): void;
}

/**
 * Propagates `outGrads` from `outputs` down the graph. Each tensor that has no node (a leaf) or
 * is in `stopAt` is handed to `sink` with its total gradient, which the sink then owns.
 * `outGrads` are the caller's (never disposed, never handed to a sink: a sink gets a copy) except
 * those flagged in `engineMade` (the implied ones), which are freed once consumed.
 * With `direct` (and no createGraph), a leaf whose whole gradient comes from one vjp input slot is
 * offered its `direct.target` as that vjp's `into`; a vjp that writes it skips the sink.
 */
function propagate(
  outputs: Tensor[],
  outGrads: Tensor[],
  engineMade: boolean[],
  opts: BackwardOptions,
  stopAt: Set<Tensor> | null,
  sink: (t: Tensor, g: Tensor) => void,
  direct: DirectWrites | null = null,
): void {
  const createGraph = opts.createGraph ?? false;
  const retainGraph = opts.retainGraph ?? createGraph;
  const order = topoOrder(outputs, stopAt);
  // How many vjp input slots feed each leaf: only a leaf fed by exactly one (and not an output,
  // which gets the output gradient too) can have its gradient written instead of summed.
  const feeds = new Map<Tensor, number>();
  if (direct && !createGraph) {
    for (const t of order) if (t.gradFn && !stopAt?.has(t)) for (const i of t.gradFn.inputs) if (i.requiresGrad && !i.gradFn) feeds.set(i, (feeds.get(i) ?? 0) + 1);
    for (const o of outputs) feeds.delete(o);
  }
  const intoFor = (node: Node): (Tensor | null)[] | undefined => {
    if (feeds.size) {
      const into = node.inputs.map((inp) => (feeds.get(inp) === 1 ? direct!.target(inp) : null));
      if (into.some((d) => d)) return into;
    }
  };
  const grads = new Map<Tensor, Tensor>();
  const callers = new Set(outGrads.filter((_, i) => !engineMade[i]));
  // Engine-made gradients are freed once consumed; `uses` counts the holders of one tensor (map
  // entries, or a vjp result on its way into the map). The caller's tensors are never counted,
  // so nothing here ever frees them, even when a vjp passes one straight through (add, reshape).
  const uses = new Map<Tensor, number>();
  const own = (g: Tensor) => {
    if (!callers.has(g)) uses.set(g, (uses.get(g) ?? 0) + 1);
  };
  const release = (g: Tensor) => {
    const n = (uses.get(g) ?? 0) - 1;
    if (n > 0) uses.set(g, n);
    else if (n === 0) {
      uses.delete(g);
      if (!createGraph) g.dispose();
    }
  };
  /** Adds g (one use of which the caller hands over) to t's gradient. */
  const accumulate = (t: Tensor, g: Tensor) => {
    const prev = grads.get(t);
    if (!prev) {
      grads.set(t, g);
      return;
    }
    const sum = add(prev, g);
    own(sum);
    grads.set(t, sum);
    release(prev);
    release(g);
  };
  outputs.forEach((o, i) => {
    own(outGrads[i]);
    accumulate(o, outGrads[i]);
  });

  withGradMode(createGraph, () => {
    for (let idx = order.length - 1; idx >= 0; idx--) {
      const t = order[idx];
      const g = grads.get(t);
      if (!g) continue;
      const node = t.gradFn;
      if (!node || stopAt?.has(t)) {
        // The sink owns what it gets, and a .grad may later be accumulated into in place: a
        // gradient still held elsewhere (another entry, the caller, or a view sharing its
        // storage) is copied so that nothing aliases it.
        const exclusive = uses.get(g) === 1 && g.storageRef.refs === 1;
        sink(t, exclusive ? g : copy(g));
        if (exclusive) uses.delete(g);
        else release(g);
        continue;
      }
      if (node.freed) {
        throw new Error(`backward: the graph through ${node.op} was already used by a backward pass and freed; pass { retainGraph: true } to the first backward to run it twice`);
      }
      const vjp = vjpRegistry.get(node.op)!;
      const into = intoFor(node);
      // Without createGraph the vjp's temporaries are not part of any graph: free them at once.
      const inGrads = createGraph ? vjp(g, node, t) : tidy(() => vjp(g, node, t, into));
      node.inputs.forEach((inp, i) => {
        const gi = inGrads[i];
        if (!gi || !inp.requiresGrad) return;
        if (!shapesEqual(gi.shape, inp.shape)) {
          throw new Error(`internal: the ${node.op} gradient for input ${i} has shape ${fmt(gi.shape)}, expected ${fmt(inp.shape)}`);
        }
        if (into && gi === into[i]) {
          // Written straight into the leaf's .grad: nothing to sum or hand over.
          direct!.written(inp);
          return;
        }
        own(gi);
        accumulate(inp, gi);
      });
      grads.delete(t);
      // Results for inputs that need no gradient were never taken: free them too.
      if (!createGraph) for (const gi of inGrads) if (gi && gi !== g && !uses.has(gi) && !callers.has(gi) && !into?.includes(gi)) gi.dispose();
      release(g);
      // A flag on the node, not a WeakSet entry per node (cheaper to set, and nothing for the GC to trace).
      if (!retainGraph) node.freed = true;
    }
  });
}

/**
 * Listeners told when backward accumulates into a .grad in place: the optimizer's flat arena keeps
 * each parameter's .grad as a view across zeroGrad and learns from this which parameters received
 * a gradient since (torch skips those whose .grad is None). Keyed by the .grad tensor.
 */
const inPlaceGradListeners = new WeakMap<Tensor, () => void>();
export function onGradAccumulated(grad: Tensor, listener: () => void): void {
  inPlaceGradListeners.set(grad, listener);
}

/** The gradient implied for a single-element output: 1, on the output's own backend (an upload, not a fill kernel). */
function impliedGrad(out: Tensor): Tensor {
  const one = typedArrayFor(out.dtype, 1);
  one[0] = 1;
  return Tensor.fromStorage(out.backend.upload(one, out.dtype), out.shape.slice(), out.backend);
}

/**
 * A leaf's .grad that its gradient may overwrite: one whose contents are a pending lazy zero
 * (an optimizer's zeroGrad), of the leaf's own shape, dtype and backend.
 */
function overwritableGrad(leaf: Tensor): Tensor | null {
  const d = leaf.grad;
  if (!d || d.isDisposed || !d.storageRef.zeroPending) return null;
  return d.dtype === leaf.dtype && d.backend === leaf.backend && shapesEqual(d.shape, leaf.shape) ? d : null;
}

/** `.grad` views of the optimizer's flat gradient arena report each gradient taken (see onGradAccumulated). */
const directToGrad: DirectWrites = {
  target: overwritableGrad,
  written: (leaf) => inPlaceGradListeners.get(leaf.grad!)?.(),
};

/** Accumulates d(root)/d(leaf) into every leaf's .grad (in place where a .grad exists). */
export function backward(root: Tensor, grad?: Tensor, opts: BackwardOptions = {}): void {
  if (!root.requiresGrad) throw new Error(`backward: the tensor ${fmt(root.shape)} does not require grad (no input of its computation has requiresGrad)`);
  const implied = !grad;
  if (!grad) {
    if (root.size !== 1) throw new Error(`backward: the output has shape ${fmt(root.shape)}; pass a gradient of that shape (a gradient is implied only for a single-element output)`);
    grad = impliedGrad(root);
  } else if (!shapesEqual(grad.shape, root.shape)) {
    throw new RangeError(`backward: gradient of shape ${fmt(grad.shape)} for an output of shape ${fmt(root.shape)}`);
  }
  const createGraph = opts.createGraph ?? false;
  propagate(
    [root],
    [grad],
    [implied],
    opts,
    null,
    (leaf, g) => {
      if (!leaf.grad || leaf.grad.isDisposed) leaf.grad = keep(g);
      else if (createGraph) leaf.grad = keep(add(leaf.grad, g));
      else {
        // In place: a .grad that is a view into the optimizer's flat gradient arena stays one.
        // One whose contents are a pending lazy zero is written (a copy), not filled and added.
        const dst = leaf.grad;
        if (dst.storageRef.zeroPending && dst.dtype === g.dtype && dst.size === g.size) {
          if (g.size > 0) leaf.backend.stridedCopy(g.storage, dst.overwriteStorage(), { shape: [g.size], srcStrides: [1], srcOffset: 0, dstStrides: [1], dstOffset: 0 });
        } else leaf.backend.axpy(dst.storage, g.storage, 1);
        inPlaceGradListeners.get(dst)?.();
        g.dispose();
      }
    },
    createGraph ? null : directToGrad,
  );
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
  for (const o of outs) if (!o.requiresGrad) throw new Error(`grad: output ${fmt(o.shape)} does not require grad`);
  const given = opts.gradOutputs;
  if (given) {
    if (given.length !== outs.length) throw new RangeError(`grad: ${given.length} gradOutputs for ${outs.length} outputs`);
    given.forEach((g, i) => {
      if (!shapesEqual(g.shape, outs[i].shape)) throw new RangeError(`grad: gradOutputs[${i}] has shape ${fmt(g.shape)} for an output of shape ${fmt(outs[i].shape)}`);
    });
  }
  const gOut = given ?? outs.map((o) => {
    if (o.size !== 1) throw new Error(`grad: output of shape ${fmt(o.shape)} needs an entry in gradOutputs`);
    return impliedGrad(o);
  });
  const found = new Map<Tensor, Tensor>();
  propagate(outs, gOut, outs.map(() => !given), opts, new Set(ins), (t, g) => found.set(t, g));
  return ins.map((i) => {
    const g = found.get(i);
    if (!g && !opts.allowUnused) throw new Error(`grad: input ${fmt(i.shape)} is not used to compute the outputs (pass allowUnused: true to get null)`);
    return g ?? null;
  });
}

hooks.backward = backward;
