/** Argument checks whose messages name the function, the argument and the value received. */

function show(value: unknown): string {
  return typeof value === 'string' ? JSON.stringify(value) : String(value);
}

export function checkNonNegativeInt(where: string, name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${where}: ${name} must be a non-negative integer, got ${show(value)}`);
  }
  return value;
}

export function checkPositiveInt(where: string, name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(`${where}: ${name} must be a positive integer, got ${show(value)}`);
  }
  return value;
}

export function checkProbability(where: string, name: string, value: unknown): number {
  if (typeof value !== 'number' || !(value >= 0 && value <= 1)) {
    throw new RangeError(`${where}: ${name} must be a number in [0, 1], got ${show(value)}`);
  }
  return value;
}

export function checkBoolean(where: string, name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw new TypeError(`${where}: ${name} must be true or false, got ${show(value)}`);
  return value;
}

export function checkFinite(where: string, name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new RangeError(`${where}: ${name} must be a finite number, got ${show(value)}`);
  }
  return value;
}

/** Checks an [n, c, h, w] shape against the length of the array it describes. */
export function checkImageBatch(where: string, batch: Float32Array, shape: readonly number[]): [number, number, number, number] {
  if (!Array.isArray(shape) || shape.length !== 4) {
    throw new RangeError(`${where}: shape must be [n, c, h, w], got ${JSON.stringify(shape)}`);
  }
  shape.forEach((d, i) => checkNonNegativeInt(where, `shape[${i}]`, d));
  const [n, c, h, w] = shape;
  if (n * c * h * w !== batch.length) {
    throw new RangeError(`${where}: shape [${shape.join(', ')}] holds ${n * c * h * w} values but the batch has ${batch.length}`);
  }
  return [n, c, h, w];
}

/** Rejects option names the function does not know, so a typo is an error instead of a silent default. */
export function checkOptionNames(where: string, options: unknown, known: readonly string[]): void {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError(`${where}: options must be an object with ${known.join(', ')}, got ${show(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new TypeError(`${where}: unknown option ${JSON.stringify(key)}; known options: ${known.join(', ')}`);
    }
  }
}
