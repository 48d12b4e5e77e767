/**
 * Decoding of the values the python generators in scripts/ write into test/fixtures/: JSON has no
 * NaN or infinities, so they are written as the strings 'nan', 'inf' and '-inf'; bool tensors are
 * written as true/false and read back as 1/0, as flatgrad's bool dtype stores them.
 */

/** One value as a generator writes it. */
export type EncodedValue = number | string | boolean;

/** A tensor as a generator writes it: its shape and its row-major values. */
export interface EncodedTensor {
  shape: number[];
  data: EncodedValue[];
}

/** The number a generator's value stands for. */
export const decodeValue = (v: EncodedValue): number =>
  v === 'nan' ? NaN : v === 'inf' ? Infinity : v === '-inf' ? -Infinity : typeof v === 'boolean' ? Number(v) : (v as number);

/** The row-major values of an encoded tensor. */
export const decodeTensor = (e: EncodedTensor): number[] => e.data.map(decodeValue);
