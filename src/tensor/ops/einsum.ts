/**
 * torch.einsum: an equation such as 'bij,bjk->bik' parsed into labelled axes and lowered to the
 * ops that have kernels and gradients already: a repeated label within one operand takes the
 * diagonal (a mask and a sum), labels no one else needs are summed away early, and the operands
 * are contracted left to right, each pair as one batched matmul (or a broadcast multiply when the
 * pair shares no summed label). '...' stands for the broadcast dims; without '->' the output is
 * the '...' dims followed by the labels used once, in alphabetical order (uppercase first), as torch.
 */
import { fmt, numel } from '../shape.js';
import { Tensor } from '../tensor.js';
import { mul, requireFloat, sameBackend, where } from './elementwise.js';
import { mm } from './linalg.js';
import { sum } from './reduce.js';
import { permute, reshape } from './shape.js';

/** A tensor whose axes carry labels; '...' dims get the labels '.0', '.1', ... (right-aligned). */
interface Labelled {
  t: Tensor;
  labels: string[];
}

const ELLIPSIS = '...';

/** Splits one term into letters and at most one ellipsis. */
function tokens(term: string, equation: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < term.length; ) {
    if (term.startsWith(ELLIPSIS, i)) {
      if (out.includes(ELLIPSIS)) throw new SyntaxError(`einsum: '${equation}': more than one '...' in the term '${term}'`);
      out.push(ELLIPSIS);
      i += 3;
    } else if (/[a-zA-Z]/.test(term[i])) out.push(term[i++]);
    else throw new SyntaxError(`einsum: '${equation}': invalid character '${term[i]}' (labels are letters, plus '...')`);
  }
  return out;
}

function ellipsisLabels(count: number, total: number): string[] {
  return Array.from({ length: count }, (_, k) => `.${total - count + k}`);
}

export function einsum(equation: string, ...operands: Tensor[]): Tensor {
  const eq = equation.replace(/\s+/g, '');
  const [lhs, rhs, extra] = eq.split('->');
  if (extra !== undefined) throw new SyntaxError(`einsum: '${equation}' has more than one '->'`);
  const terms = lhs.split(',').map((t) => tokens(t, equation));
  if (terms.length !== operands.length) throw new RangeError(`einsum: '${equation}' has ${terms.length} operand terms but ${operands.length} operands were given`);
  if (operands.length === 0) throw new RangeError('einsum: needs at least one operand');
  sameBackend('einsum', ...operands);
  operands.forEach((t, i) => requireFloat('einsum', t, `operand ${i}`));

  // Ellipsis widths: each operand's '...' covers the dims its letters leave over.
  const widths = terms.map((term, i) => {
    const letters = term.filter((l) => l !== ELLIPSIS).length;
    const width = operands[i].ndim - letters;
    if (term.includes(ELLIPSIS) ? width < 0 : width !== 0) {
      throw new RangeError(`einsum: '${equation}': term '${term.join('')}' has ${letters} labels for operand ${i} of shape ${fmt(operands[i].shape)}`);
    }
    return term.includes(ELLIPSIS) ? width : 0;
  });
  const ellWidth = Math.max(0, ...widths);
  const inputs: Labelled[] = terms.map((term, i) => ({
    t: operands[i],
    labels: term.flatMap((l) => (l === ELLIPSIS ? ellipsisLabels(widths[i], ellWidth) : [l])),
  }));

  // Sizes per label: equal, or 1 (broadcast).
  const sizes = new Map<string, number>();
  for (const { t, labels } of inputs) {
    labels.forEach((l, ax) => {
      const d = t.shape[ax];
      const seen = sizes.get(l);
      if (seen !== undefined && seen !== d && seen !== 1 && d !== 1) {
        throw new RangeError(`einsum: '${equation}': label '${l.startsWith('.') ? ELLIPSIS : l}' has sizes ${seen} and ${d}`);
      }
      sizes.set(l, seen === undefined || seen === 1 ? d : seen);
    });
  }

  let output: string[];
  if (rhs === undefined) {
    const counts = new Map<string, number>();
    for (const term of terms) for (const l of term) if (l !== ELLIPSIS) counts.set(l, (counts.get(l) ?? 0) + 1);
    const once = [...counts].filter(([, c]) => c === 1).map(([l]) => l).sort();
    output = [...ellipsisLabels(ellWidth, ellWidth), ...once];
  } else {
    output = tokens(rhs, equation).flatMap((l) => (l === ELLIPSIS ? ellipsisLabels(ellWidth, ellWidth) : [l]));
    for (const l of output) {
      if (!sizes.has(l) && !l.startsWith('.')) throw new RangeError(`einsum: '${equation}': output label '${l}' is not in any input`);
    }
    if (new Set(output).size !== output.length) throw new RangeError(`einsum: '${equation}': an output label repeats`);
  }

  const diagonalized = inputs.map(takeDiagonals);
  let cur = diagonalized[0];
  for (let i = 1; i < diagonalized.length; i++) {
    const later = new Set([...output, ...diagonalized.slice(i + 1).flatMap((x) => x.labels)]);
    cur = contractPair(cur, diagonalized[i], later);
  }
  const done = sumAway(cur, new Set(output));
  return permute(done.t, output.map((l) => done.labels.indexOf(l)));
}

/** Replaces each label repeated within one operand by its diagonal: x[..i..i..] -> x[..i..]. */
function takeDiagonals(x: Labelled): Labelled {
  let { t, labels } = x;
  for (let q = labels.length - 1; q >= 0; q--) {
    const p = labels.indexOf(labels[q]);
    if (p === q) continue;
    const n = t.shape[p];
    if (t.shape[q] !== n) throw new RangeError(`einsum: repeated label '${labels[q]}' has sizes ${n} and ${t.shape[q]} in one operand ${fmt(t.shape)}`);
    const eye = new Uint8Array(n * n);
    for (let k = 0; k < n; k++) eye[k * n + k] = 1;
    const maskShape = t.shape.map((d, ax) => (ax === p || ax === q ? d : 1));
    const mask = Tensor.fromStorage(t.backend.upload(eye, 'bool'), maskShape, t.backend);
    // Selected, not multiplied: a NaN or Inf off the diagonal must not reach it (0 * Inf is NaN).
    t = sum(where(mask, t, 0), q);
    labels = labels.filter((_, ax) => ax !== q);
  }
  return { t, labels };
}

/** Sums away the axes whose labels are not in `keep`. */
function sumAway(x: Labelled, keep: Set<string>): Labelled {
  const axes = x.labels.map((l, ax) => (keep.has(l) ? -1 : ax)).filter((ax) => ax >= 0);
  if (axes.length === 0) return x;
  return { t: sum(x.t, axes), labels: x.labels.filter((l) => keep.has(l)) };
}

/** Permutes x's axes into the order of `labels` (a permutation of x.labels). */
function arrange(x: Labelled, labels: string[]): Tensor {
  return permute(x.t, labels.map((l) => x.labels.indexOf(l)));
}

/** Contracts two operands, keeping the labels in `later` (the output and the operands to come). */
function contractPair(a0: Labelled, b0: Labelled, later: Set<string>): Labelled {
  // Labels only one side has and no one needs later are summed first.
  let a = sumAway(a0, new Set([...later, ...b0.labels]));
  let b = sumAway(b0, new Set([...later, ...a.labels]));
  // A summed label of size 1 on one side is a plain factor there: squeeze it, sum the other side.
  for (const l of a.labels.filter((x) => b.labels.includes(x) && !later.has(x))) {
    if (a.t.shape[a.labels.indexOf(l)] === b.t.shape[b.labels.indexOf(l)]) continue;
    const drop = (x: Labelled): Labelled => sumAway(x, new Set(x.labels.filter((y) => y !== l)));
    a = drop(a);
    b = drop(b);
  }
  const shared = a.labels.filter((l) => b.labels.includes(l));
  const batch = shared.filter((l) => later.has(l));
  const summed = shared.filter((l) => !later.has(l));
  const aOnly = a.labels.filter((l) => !shared.includes(l));
  const bOnly = b.labels.filter((l) => !shared.includes(l));
  const sizeIn = (x: Labelled, ls: string[]) => ls.map((l) => x.t.shape[x.labels.indexOf(l)]);
  const labels = [...batch, ...aOnly, ...bOnly];
  if (summed.length === 0) {
    // Nothing to sum: a broadcast product, each side padded with ones for the other's labels.
    const at = reshape(arrange(a, [...batch, ...aOnly]), [...sizeIn(a, batch), ...sizeIn(a, aOnly), ...bOnly.map(() => 1)]);
    const bt = reshape(arrange(b, [...batch, ...bOnly]), [...sizeIn(b, batch), ...aOnly.map(() => 1), ...sizeIn(b, bOnly)]);
    return { t: mul(at, bt), labels };
  }
  const m = numel(sizeIn(a, aOnly));
  const k = numel(sizeIn(a, summed));
  const n = numel(sizeIn(b, bOnly));
  const at = reshape(arrange(a, [...batch, ...aOnly, ...summed]), [...sizeIn(a, batch), m, k]);
  const bt = reshape(arrange(b, [...batch, ...summed, ...bOnly]), [...sizeIn(b, batch), k, n]);
  const prod = mm(at, bt);
  return { t: reshape(prod, [...prod.shape.slice(0, batch.length), ...sizeIn(a, aOnly), ...sizeIn(b, bOnly)]), labels };
}
