/**
 * Parity of the convolution kernels (conv2d and its input and weight gradients) of a backend with
 * the CPU reference on one geometry: shared by conv-kernels.test.ts and webgpu-cnn-forms.test.ts.
 */
import { expect } from 'vitest';
import { CpuBackend } from '../../src/kernels/cpu/index.js';
import type { Backend, Conv2dLayout } from '../../src/kernels/backend.js';
import { randomF32 } from './webgpu.js';

export interface Case {
  name: string;
  n: number;
  c: number;
  h: number;
  w: number;
  o: number;
  k: [number, number];
  stride?: [number, number];
  pad?: [number, number];
  dil?: [number, number];
  groups?: number;
  /** Too large for SwiftShader's direct kernels in a test. */
  wasmOnly?: boolean;
}

export function layoutOf(t: Case): Conv2dLayout {
  const [sh, sw] = t.stride ?? [1, 1];
  const [ph, pw] = t.pad ?? [0, 0];
  const [dh, dw] = t.dil ?? [1, 1];
  const [kh, kw] = t.k;
  const oh = Math.floor((t.h + 2 * ph - dh * (kh - 1) - 1) / sh) + 1;
  const ow = Math.floor((t.w + 2 * pw - dw * (kw - 1) - 1) / sw) + 1;
  return { n: t.n, c: t.c, h: t.h, w: t.w, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw, outChannels: t.o, groups: t.groups ?? 1 };
}

export type Kernel = 'conv2d' | 'conv2dBackwardInput' | 'conv2dBackwardWeight';
export const KERNELS: Kernel[] = ['conv2d', 'conv2dBackwardInput', 'conv2dBackwardWeight'];

/** Sizes of a kernel's two operands and its output, and how many products each output sums. */
export function sizes(kernel: Kernel, l: Conv2dLayout): { a: number; b: number; out: number; terms: number } {
  const x = l.n * l.c * l.h * l.w;
  const wt = l.outChannels * (l.c / l.groups) * l.kh * l.kw;
  const y = l.n * l.outChannels * l.oh * l.ow;
  const K = (l.c / l.groups) * l.kh * l.kw;
  if (kernel === 'conv2d') return { a: x, b: wt, out: y, terms: K };
  if (kernel === 'conv2dBackwardInput') return { a: y, b: wt, out: x, terms: (l.outChannels / l.groups) * l.kh * l.kw };
  return { a: x, b: y, out: wt, terms: l.n * l.oh * l.ow };
}

export async function run(be: Backend, kernel: Kernel, l: Conv2dLayout, a: Float32Array, b: Float32Array, outNumel: number): Promise<Float32Array> {
  const sa = be.upload(a, 'float32');
  const sb = be.upload(b, 'float32');
  const out = be.alloc(outNumel, 'float32');
  // Garbage in the output first: a kernel must write (not accumulate onto) every element.
  be.write(out, new Float32Array(outNumel).fill(NaN));
  be[kernel](sa, sb, out, l);
  const r = (await be.read(out)) as Float32Array;
  for (const s of [sa, sb, out]) be.release(s);
  return r;
}

/** float32 sums of `terms` products of values in [-1, 1]: error grows with the number of terms. */
export function expectNear(got: Float32Array, want: Float32Array, terms: number, what: string): void {
  expect(got.length).toBe(want.length);
  const tol = 4e-6 * Math.sqrt(terms) * 8;
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i] - want[i]) <= tol * (1 + Math.abs(want[i])))) {
      throw new Error(`${what}: element ${i} is ${got[i]}, the reference says ${want[i]} (tolerance ${tol})`);
    }
  }
}

export const cpu = new CpuBackend();

export async function checkParity(be: Backend, t: Case, seed: number): Promise<void> {
  const l = layoutOf(t);
  for (const kernel of KERNELS) {
    const s = sizes(kernel, l);
    const a = randomF32(s.a, seed);
    const b = randomF32(s.b, seed + 1);
    const want = await run(cpu, kernel, l, a, b, s.out);
    const got = await run(be, kernel, l, a, b, s.out);
    expectNear(got, want, s.terms, `${be.name} ${kernel} (${t.name})`);
  }
}
