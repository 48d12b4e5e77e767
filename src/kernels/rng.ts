/**
 * Counter-based randomness shared by every backend: element i of a draw is a pure function of
 * (key0, key1, i), so the CPU, WebAssembly and WebGPU backends produce the same numbers for the
 * same seed without sharing any state. The hash is PCG-RXS-M-XS (Jarzynski and Olano, "Hash
 * Functions for GPU Rendering", 2020), applied twice with the key mixed in between.
 */

export function pcgHash(v: number): number {
  const s = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const w = Math.imul(((s >>> ((s >>> 28) + 4)) ^ s) >>> 0, 277803737) >>> 0;
  return ((w >>> 22) ^ w) >>> 0;
}

/** The 32 random bits of element i. */
export function hashBits(key0: number, key1: number, i: number): number {
  return pcgHash((pcgHash((i + key0) >>> 0) ^ key1) >>> 0);
}

/** Uniform in [0, 1): the top 24 bits, exact in float32. */
export function uniformAt(key0: number, key1: number, i: number): number {
  return (hashBits(key0, key1, i) >>> 8) * 5.9604644775390625e-8;
}

/** Integer in [low, high): low + bits mod (high - low). */
export function intAt(key0: number, key1: number, i: number, low: number, high: number): number {
  return low + (hashBits(key0, key1, i) % (high - low));
}

/** The same functions in WGSL, for the WebGPU backend. */
export const WGSL_RNG = /* wgsl */ `
fn fg_pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}
fn fg_bits(k0: u32, k1: u32, i: u32) -> u32 { return fg_pcg(fg_pcg(i + k0) ^ k1); }
fn fg_uniform(k0: u32, k1: u32, i: u32) -> f32 { return f32(fg_bits(k0, k1, i) >> 8u) * 5.9604644775390625e-8; }
fn fg_normal(k0: u32, k1: u32, i: u32) -> f32 {
  let u1 = f32((fg_bits(k0, k1, 2u * i) >> 8u) + 1u) * 5.9604644775390625e-8;
  let u2 = f32(fg_bits(k0, k1, 2u * i + 1u) >> 8u) * 5.9604644775390625e-8;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
`;

/**
 * The global generator: a seed and a count of draws. Each draw takes the next key pair, so
 * `manualSeed(s)` followed by the same sequence of calls gives the same numbers on every backend.
 */
export class Generator {
  seed = 0;
  draws = 0;
  constructor(seed = Date.now() % 2 ** 31) {
    this.manualSeed(seed);
  }
  manualSeed(seed: number): void {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`manualSeed: seed must be a non-negative safe integer, got ${seed}`);
    this.seed = seed;
    this.draws = 0;
  }
  /** The key pair of the next draw. */
  nextKey(): [number, number] {
    const lo = this.seed >>> 0;
    const hi = Math.floor(this.seed / 2 ** 32) >>> 0;
    const d = this.draws++;
    const k0 = pcgHash((lo ^ pcgHash(d)) >>> 0);
    const k1 = pcgHash((hi ^ pcgHash((k0 + d + 0x9e3779b9) >>> 0)) >>> 0);
    return [k0, k1];
  }
  getState(): { seed: number; draws: number } {
    return { seed: this.seed, draws: this.draws };
  }
  setState(s: { seed: number; draws: number }): void {
    this.manualSeed(s.seed);
    this.draws = s.draws;
  }
}
