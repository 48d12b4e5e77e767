/**
 * Gradients straight into the optimizer's flat gradient arena, and lazy zeroing (issue #13):
 * zeroGrad marks the .grad views as zeros without filling them, backward writes a parameter's
 * first gradient into its view (a weight's gradient matmul has the view as its output; other
 * gradients are copied in) and adds any later one, and a view still marked when someone reads it
 * is filled then. Every case compares with a copy of the model that has no optimizer (plain .grad
 * tensors: assigned by the first backward, added by the next, as in PyTorch), bit for bit, on
 * cpu (float64 and float32), wasm and WebGPU; the backend's calls are counted by wrapping its
 * methods, as the step profilers do.
 */
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend, Storage } from '../src/kernels/backend.js';
import { useBackendMatrix } from './helpers/backend-matrix.js';

const { nn, optim } = fg;
const { configs: CONFIGS, onConfig } = useBackendMatrix();

type Model = ReturnType<typeof nn.models.mlp>;

/** An MLP 6-8-5-3 and an identical copy (same weights, no optimizer: the reference). */
function twins(): [Model, Model] {
  const a = nn.models.mlp([6, 8, 5, 3]);
  const b = nn.models.mlp([6, 8, 5, 3]);
  b.loadStateDict(a.stateDict());
  return [a, b];
}

const X = () => fg.randn([4, 6]);
const Y = () => fg.tensor(Int32Array.from([0, 2, 1, 2]), { dtype: 'int32' });

function backwardOn(m: Model, x: fg.Tensor, y: fg.Tensor): void {
  fg.tidy(() => nn.functional.crossEntropy(m.forward(x), y).backward());
}

async function grads(m: Model): Promise<number[][]> {
  const out: number[][] = [];
  for (const p of m.parameters()) out.push(Array.from(await p.grad!.data()));
  return out;
}

interface Calls {
  /** Calls per backend method (outermost only). */
  count: Map<string, number>;
  /** The output storage of every matmul and reduce call. */
  matmulOut: Storage[];
  reduceOut: Storage[];
}

/** Runs f with every method of the backend instance wrapped to count its calls (outermost ones only). */
function counting(b: Backend, f: () => void): Calls {
  const be = b as unknown as Record<string, unknown>;
  const names = new Set<string>();
  for (let proto = Object.getPrototypeOf(be); proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
    for (const n of Object.getOwnPropertyNames(proto)) if (n !== 'constructor' && typeof be[n] === 'function') names.add(n);
  }
  const calls: Calls = { count: new Map(), matmulOut: [], reduceOut: [] };
  let depth = 0;
  for (const n of names) {
    const fn = be[n] as (...a: unknown[]) => unknown;
    be[n] = (...a: unknown[]) => {
      if (depth === 0) {
        calls.count.set(n, (calls.count.get(n) ?? 0) + 1);
        if (n === 'matmul') calls.matmulOut.push(a[2] as Storage);
        if (n === 'reduce') calls.reduceOut.push(a[2] as Storage);
      }
      depth++;
      try {
        return fn.apply(be, a);
      } finally {
        depth--;
      }
    };
  }
  try {
    f();
  } finally {
    for (const n of names) delete be[n];
  }
  return calls;
}

describe.each(CONFIGS)('gradients straight into the flat arena: $name', (cfg) => {
  it('backward writes each gradient into its arena view (weights: the matmul output; biases: the sum), with no fill, add or copy, bit for bit as plain .grad', async (ctx) => {
    await onConfig(cfg, (why) => ctx.skip(why), async () => {
      const [m, ref] = twins();
      const opt = new optim.SGD(m.parameters(), { lr: 0.1 });
      const [x, y] = [X(), Y()];
      backwardOn(m, x, y); // a first gradient, so that the views hold stale values to be ignored
      const views = m.parameters().map((p) => p.grad!);
      const calls = counting(fg.getBackend(), () => {
        opt.zeroGrad();
        backwardOn(m, x, y);
      });
      expect(calls.count.get('fill') ?? 0).toBe(0);
      expect(calls.count.get('axpy') ?? 0).toBe(0);
      m.parameters().forEach((p, k) => expect(p.grad).toBe(views[k]));
      // The three weights' gradient products and the three biases' sums wrote into the arena views themselves.
      const weights = m.parameters().filter((p) => p.ndim === 2);
      const biases = m.parameters().filter((p) => p.ndim === 1);
      expect([weights.length, biases.length]).toEqual([3, 3]);
      for (const w of weights) expect(calls.matmulOut).toContain(w.grad!.storage);
      for (const b of biases) expect(calls.reduceOut).toContain(b.grad!.storage);
      // The one copy left is the loss's mean gradient broadcast over the batch, none into a view.
      expect(calls.count.get('stridedCopy') ?? 0).toBeLessThanOrEqual(1);
      backwardOn(ref, x, y);
      expect(await grads(m)).toEqual(await grads(ref));
      opt.dispose();
    });
  });

  it('a second backward without zeroGrad adds to the written gradient (torch accumulation)', async (ctx) => {
    await onConfig(cfg, (why) => ctx.skip(why), async () => {
      const [m, ref] = twins();
      const opt = new optim.SGD(m.parameters(), { lr: 0.1 });
      const [x1, x2, y] = [X(), X(), Y()];
      opt.zeroGrad();
      backwardOn(m, x1, y);
      const calls = counting(fg.getBackend(), () => backwardOn(m, x2, y));
      // Nothing pending any more: every parameter's gradient is added in place.
      expect(calls.count.get('axpy')).toBe(m.parameters().length);
      backwardOn(ref, x1, y);
      backwardOn(ref, x2, y);
      expect(await grads(m)).toEqual(await grads(ref));
      opt.dispose();
    });
  });

  it('zeroGrad reads as zeros before backward, and a gradient added after that read is the gradient', async (ctx) => {
    await onConfig(cfg, (why) => ctx.skip(why), async () => {
      const [m, ref] = twins();
      const opt = new optim.SGD(m.parameters(), { lr: 0.1 });
      const [x, y] = [X(), Y()];
      backwardOn(m, x, y);
      opt.zeroGrad();
      const w = m.parameters()[0];
      // The read fills the pending zeros (one fill, of this view only).
      const calls = counting(fg.getBackend(), () => void w.grad!.storage);
      expect(calls.count.get('fill')).toBe(1);
      expect(Array.from(await w.grad!.data())).toEqual(new Array(w.size).fill(0));
      backwardOn(m, x, y);
      backwardOn(ref, x, y);
      const [got, want] = [await grads(m), await grads(ref)];
      // Read first: zeros + gradient (an add); the others were written. Equal in value either way.
      got.forEach((g, k) => expect(g.map((v) => v + 0)).toEqual(want[k].map((v) => v + 0)));
      opt.dispose();
    });
  });

  it('a weight used twice sums both contributions; a parameter without a gradient keeps zeros, not stale values', async (ctx) => {
    await onConfig(cfg, (why) => ctx.skip(why), async () => {
      const lin = new nn.Linear(4, 4);
      const head = new nn.Linear(4, 2);
      const refLin = new nn.Linear(4, 4);
      refLin.loadStateDict(lin.stateDict());
      const params = [...lin.parameters(), ...head.parameters()];
      // setToNone: false keeps every gradient (zeros included) in the update: with no momentum and
      // no decay, a zero gradient must leave its parameter where it is.
      const opt = new optim.SGD(params, { lr: 0.5 });
      const x = fg.randn([3, 4]);
      const twice = (l: fg.nn.Linear, h: fg.nn.Linear | null) =>
        fg.tidy(() => {
          const z = l.forward(l.forward(x).relu());
          (h ? h.forward(z) : z).square().sum().backward();
        });
      twice(lin, head); // every view holds a nonzero gradient now
      opt.zeroGrad({ setToNone: false });
      twice(lin, null); // the head gets no gradient this time
      const head0 = await Promise.all(head.parameters().map((p) => p.data()));
      opt.step();
      const head1 = await Promise.all(head.parameters().map((p) => p.data()));
      expect(head1.map((a) => Array.from(a))).toEqual(head0.map((a) => Array.from(a)));
      for (const p of head.parameters()) expect(Array.from(await p.grad!.data()).every((v) => v === 0)).toBe(true);
      twice(refLin, null);
      const sum = async (ps: fg.Tensor[]) => Promise.all(ps.map(async (p) => Array.from(await p.grad!.data())));
      expect(await sum(lin.parameters())).toEqual(await sum(refLin.parameters()));
      opt.dispose();
    });
  });

  it('a SAM step fills nothing and adds nothing, and equals the per-tensor engine bit for bit', async (ctx) => {
    await onConfig(cfg, (why) => ctx.skip(why), async () => {
      const [m, ref] = twins();
      const fused = new optim.SAM(m.parameters(), optim.SGD, { rho: 0.05, lr: 0.1 });
      const loop = new optim.SAM(ref.parameters(), optim.SGD, { rho: 0.05, lr: 0.1, fused: false });
      const [x, y] = [X(), Y()];
      const step = (o: fg.optim.SAM, net: Model) =>
        fg.tidy(() =>
          o.step(() => {
            const l = nn.functional.crossEntropy(net.forward(x), y);
            l.backward();
            return l;
          }),
        );
      step(fused, m); // the first step makes the arena's state vectors
      step(loop, ref);
      const calls = counting(fg.getBackend(), () => void step(fused, m));
      step(loop, ref);
      expect(calls.count.get('fill') ?? 0).toBe(0);
      expect(calls.count.get('axpy') ?? 0).toBe(0);
      const ps = async (net: Model) => Promise.all(net.parameters().map(async (p) => Array.from(await p.data())));
      expect(await ps(m)).toEqual(await ps(ref));
      fused.dispose();
      loop.dispose();
    });
  });
});
