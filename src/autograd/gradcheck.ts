/** Finite-difference checks of the autograd rules (float64, central differences). */
import { fmt } from '../tensor/shape.js';
import { Tensor, tidy } from '../tensor/tensor.js';
import { randn } from '../tensor/random.js';
import { mul } from '../tensor/ops/elementwise.js';
import { sum } from '../tensor/ops/reduce.js';
import { grad } from './engine.js';

export interface GradcheckOptions {
  eps?: number;
  atol?: number;
  rtol?: number;
}

/** sum(out * r) for a fixed random r, so that any output shape reduces to one scalar. */
function projector(out: Tensor): Tensor {
  return randn(out.shape.slice(), { dtype: out.dtype });
}

/**
 * Compares the analytical gradient of sum(fn(inputs) * r), r fixed and random, with central
 * differences, for every element of every input that requires grad. Inputs must be float64 on
 * a backend with synchronous reads (cpu). Returns true or throws an error naming the input,
 * the element, and both values.
 */
export function gradcheck(fn: (...xs: Tensor[]) => Tensor, inputs: Tensor[], opts: GradcheckOptions = {}): true {
  const eps = opts.eps ?? 1e-6;
  const atol = opts.atol ?? 1e-5;
  const rtol = opts.rtol ?? 1e-3;
  for (const x of inputs) {
    if (x.dtype !== 'float64' && x.requiresGrad) throw new TypeError(`gradcheck: inputs must be float64, got ${x.dtype} ${fmt(x.shape)}`);
  }
  const diff = inputs.filter((x) => x.requiresGrad);
  if (diff.length === 0) throw new Error('gradcheck: no input requires grad');
  return tidy(() => {
    const out0 = fn(...inputs);
    const r = projector(out0);
    const projected = sum(mul(out0, r));
    // An output that does not depend on the inputs through the graph has a zero gradient.
    const analytic = (projected.requiresGrad ? grad(projected, diff, { allowUnused: true }) : diff.map(() => null)).map((g, i) =>
      g ? g.dataSync() : new Float64Array(diff[i].size),
    );
    // Grad mode stays on: gradgradcheck's function itself calls grad().
    const scalarAt = (): number => tidy(() => sum(mul(fn(...inputs), r)).itemSync());
    diff.forEach((x, xi) => {
      const data = x.dataSync() as Float64Array;
      for (let i = 0; i < x.size; i++) {
        const orig = data[i];
        data[i] = orig + eps;
        x.backend.write(x.storage, data);
        const fp = scalarAt();
        data[i] = orig - eps;
        x.backend.write(x.storage, data);
        const fm = scalarAt();
        data[i] = orig;
        x.backend.write(x.storage, data);
        const numeric = (fp - fm) / (2 * eps);
        const a = analytic[xi][i];
        if (!(Math.abs(a - numeric) <= atol + rtol * Math.abs(numeric))) {
          throw new Error(`gradcheck: input ${xi} ${fmt(x.shape)} element ${i}: analytical ${a} vs numerical ${numeric} (|diff| ${Math.abs(a - numeric)})`);
        }
      }
    });
    return true as const;
  });
}

/** gradcheck of the gradient itself: checks the rules' own derivatives (double backward). */
export function gradgradcheck(fn: (...xs: Tensor[]) => Tensor, inputs: Tensor[], opts: GradcheckOptions = {}): true {
  const diff = inputs.filter((x) => x.requiresGrad);
  const r = tidy(() => projector(fn(...inputs)).keep());
  try {
    return gradcheck(
      (...xs) => {
        const gs = grad(sum(mul(fn(...xs), r)), diff, { createGraph: true, allowUnused: true });
        return gs.reduce<Tensor | null>((acc, g) => (g ? (acc ? acc.add(g.square().sum()) : g.square().sum()) : acc), null) ?? sum(mul(xs[0], 0));
      },
      inputs,
      opts,
    );
  } finally {
    r.dispose();
  }
}
