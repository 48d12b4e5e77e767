/** Shapes, strides, broadcasting and axis handling shared by every op front-end. */
export type Shape = readonly number[];

export function fmt(s: Shape): string {
  return `[${s.join(',')}]`;
}

export function numel(s: Shape): number {
  let n = 1;
  for (const d of s) n *= d;
  return n;
}

export function contiguousStrides(s: Shape): number[] {
  const st = new Array<number>(s.length);
  let acc = 1;
  for (let i = s.length - 1; i >= 0; i--) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

export function shapesEqual(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export function checkShape(shape: unknown, where: string): number[] {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new TypeError(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  return shape.slice();
}

/** NumPy broadcasting of two shapes; the error names the op and both shapes. */
export function broadcastShapes(op: string, a: Shape, b: Shape): number[] {
  const n = Math.max(a.length, b.length);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new RangeError(`${op}: shapes ${fmt(a)} and ${fmt(b)} cannot be broadcast (dim ${i - n}: ${da} vs ${db})`);
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** Strides that read a tensor of shape `from` (contiguous) as if it had the broadcast shape `to`. */
export function broadcastStrides(from: Shape, to: Shape): number[] {
  const st = contiguousStrides(from);
  const off = to.length - from.length;
  const out = new Array<number>(to.length).fill(0);
  for (let i = 0; i < from.length; i++) out[off + i] = from[i] === 1 ? 0 : st[i];
  return out;
}

/** Normalizes a possibly negative axis; the error names the op, the axis and the rank. */
export function normAxis(op: string, axis: number, rank: number): number {
  if (!Number.isInteger(axis) || axis < -Math.max(rank, 1) || axis >= Math.max(rank, 1)) {
    throw new RangeError(`${op}: dim ${axis} is out of range for a tensor of rank ${rank}`);
  }
  return axis < 0 ? axis + Math.max(rank, 1) : axis;
}

/** Normalizes a dim argument (undefined = all axes) to a sorted list of distinct axes. */
export function normAxes(op: string, dims: number | readonly number[] | undefined | null, rank: number): number[] {
  if (dims === undefined || dims === null) return Array.from({ length: rank }, (_, i) => i);
  const list = typeof dims === 'number' ? [dims] : dims;
  // Sorted first: a repeated axis is then a neighbour (no Set per call).
  const out = list.map((d) => normAxis(op, d, rank)).sort((x, y) => x - y);
  if (out.some((d, i) => d === out[i - 1])) throw new RangeError(`${op}: dims ${JSON.stringify(list)} repeat an axis`);
  return out;
}
