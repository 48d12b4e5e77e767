/** Element types. `bool` is stored one byte per element on the CPU (Uint8Array). */
export type DType = 'float32' | 'float64' | 'int32' | 'bool';

export type TypedArray = Float32Array | Float64Array | Int32Array | Uint8Array;

export const DTYPES: readonly DType[] = ['float32', 'float64', 'int32', 'bool'];

export function isFloat(d: DType): boolean {
  return d === 'float32' || d === 'float64';
}

export function checkDtype(d: unknown, where: string): DType {
  if (typeof d !== 'string' || !(DTYPES as readonly string[]).includes(d)) {
    throw new TypeError(`${where}: unknown dtype ${JSON.stringify(d)}; expected one of ${DTYPES.join(', ')}`);
  }
  return d as DType;
}

export function typedArrayFor(d: DType, n: number): TypedArray {
  switch (d) {
    case 'float32': return new Float32Array(n);
    case 'float64': return new Float64Array(n);
    case 'int32': return new Int32Array(n);
    case 'bool': return new Uint8Array(n);
  }
}

export function dtypeOfArray(a: TypedArray): DType {
  if (a instanceof Float32Array) return 'float32';
  if (a instanceof Float64Array) return 'float64';
  if (a instanceof Int32Array) return 'int32';
  return 'bool';
}

/** Copies `src` into a new typed array of dtype `d` (bool: nonzero -> 1). */
export function convertArray(src: ArrayLike<number>, d: DType): TypedArray {
  const out = typedArrayFor(d, src.length);
  if (d === 'bool') for (let i = 0; i < src.length; i++) out[i] = src[i] ? 1 : 0;
  else if (d === 'int32') for (let i = 0; i < src.length; i++) out[i] = Math.trunc(src[i]);
  else (out as Float32Array).set(src);
  return out;
}

/** Result dtype of a binary arithmetic op, following PyTorch's promotion for the types we have. */
export function promoteTypes(a: DType, b: DType): DType {
  if (a === b) return a === 'bool' ? 'int32' : a;
  if (a === 'float64' || b === 'float64') return 'float64';
  if (a === 'float32' || b === 'float32') return 'float32';
  return 'int32';
}

let defaultDtype: DType = 'float32';

/** Switches the dtype that creation functions use when none is given ('float64' needs the CPU backend). */
export function setDefaultDtype(d: DType): void {
  checkDtype(d, 'setDefaultDtype');
  if (!isFloat(d)) throw new TypeError(`setDefaultDtype: ${d} is not a floating dtype; use float32 or float64`);
  defaultDtype = d;
}

export function getDefaultDtype(): DType {
  return defaultDtype;
}
