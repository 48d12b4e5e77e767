/**
 * Every unary op of the table, on every backend, over a dense sweep of the whole float32 range:
 * NaN, ±Inf, ±0, subnormals, the regions near 0 and near 1, each op's own edges, large
 * magnitudes and random bit patterns (which land on every exponent alike). Each result is compared
 * with the op's float64 closure (the CPU oracle, itself checked against PyTorch in
 * test/elementwise-edges.test.ts) in float32 ulps: the distance between the result and the
 * float64 value rounded to float32, counted in representable float32 values, so a correctly
 * rounded result scores 0. NaN must give NaN and an infinity the same infinity.
 *
 * WGSL lets arithmetic flush subnormals (SwiftShader flushes inputs and outputs). The math
 * functions of the WebGPU prelude assemble subnormal results and read subnormal inputs from bits,
 * so they are held to the same tolerance as everything else; the few plain-arithmetic ops listed
 * in FLUSHING_ARITHMETIC may instead return the value for a flushed input or a flushed output.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { UNARY_OPS, type UnaryOp, type UnaryOpDef } from '../src/kernels/optable.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { acquireWebGPU, rng } from './helpers/webgpu.js';

const { backend: gpu, reason } = await acquireWebGPU();

/** Max error in float32 ulps per op and backend; ops not listed must be exact (0 ulp). */
interface Tolerance {
  wasm?: number;
  webgpu?: number;
  /** The parameters (p0, p1) to sweep with. */
  params?: [number, number][];
  /**
   * Extra ulps on webgpu where a float32 formula carries an error proportional to an intermediate
   * (an exponent y rounded to float32 costs |y| 2^-24 relative in e^y).
   */
  webgpuExtra?: (x: number, p0: number) => number;
  /** Another correct answer, e.g. one rounding per float32 operation as PyTorch's separate ops give. */
  alternative?: (x: number, p0: number, p1: number) => number;
}

const TOLERANCES: Record<UnaryOp, Tolerance> = {
  neg: {},
  abs: {},
  sign: {},
  exp: { wasm: 1, webgpu: 1 },
  // The wasm bodies of expm1, log, log1p, tanh, elu, silu, softplus, erf, sin and cos compute in
  // float32 (mostly the WebGPU prelude's algorithms; log1p as log u + c / u and erf's tail as
  // 1 - e^(-x^2) g(x), wasm's own, two to four times the f64x2 throughput); geluTanh,
  // geluErf and powScalar compute in float64 and round once (0 ulp). The wasm tolerances are the
  // worst errors over a dense grid of [-16, 16] (2M points) as well as over this sweep.
  expm1: { wasm: 1, webgpu: 1 },
  log: { wasm: 1, webgpu: 1 },
  log1p: { wasm: 1, webgpu: 2 },
  sqrt: {},
  rsqrt: { wasm: 1, webgpu: 1 },
  square: {},
  // Beyond 2^126 the result is subnormal, made as (1 / (x 2^-64)) 2^-64: two roundings.
  reciprocal: { webgpu: 1 },
  relu: {},
  leakyRelu: { params: [[0.01, 0], [0.2, 0]] },
  elu: { wasm: 1, webgpu: 3, params: [[1, 0], [1.5, 0]] },
  silu: { wasm: 3, webgpu: 3 },
  tanh: { wasm: 2, webgpu: 2 },
  sigmoid: { wasm: 2, webgpu: 2 },
  softplus: { wasm: 3, webgpu: 2 },
  // In x sigmoid(w), w = 1.6 (x + 0.044715 x^3), the exponent's exact heads leave a float32-rounded
  // rest of up to 5% of |w|: |w| / 6 ulp more far left (about 12 at w = -87, x = -10).
  geluTanh: { webgpu: 4, webgpuExtra: (x) => Math.abs(1.5957691216057308 * (x + 0.044715 * x * x * x)) / 6 },
  geluErf: { webgpu: 4 },
  erf: { wasm: 2, webgpu: 2 },
  sin: { wasm: 2, webgpu: 2 },
  cos: { wasm: 2, webgpu: 2 },
  floor: {},
  ceil: {},
  round: {},
  isnan: {},
  isinf: {},
  isfinite: {},
  logicalNot: {},
  affine: { params: [[2, 0.5], [-0.75, 3]], alternative: (x, p0, p1) => f32(f32(p0 * x) + p1) },
  powScalar: { webgpu: 2, params: [[2.5, 0], [-1.5, 0], [0.5, 0], [3, 0], [-2, 0]] },
  clamp: { params: [[-1, 2], [0, 0]] },
  insideMask: { params: [[-1, 2], [0, 0]] },
};

/** Plain arithmetic that WGSL may run with subnormals flushed (inputs read as 0, outputs written as 0). */
const FLUSHING_ARITHMETIC: readonly UnaryOp[] = ['square', 'affine', 'clamp', 'insideMask', 'leakyRelu', 'elu'];

const f32 = Math.fround;
const MIN_NORMAL = 2 ** -126;

/** The sweep: specials, subnormals, every exponent, the neighbourhoods of 0 and 1, op edges, a uniform grid. */
function sweepInputs(): Float32Array {
  const v: number[] = [NaN, Infinity, -Infinity, 0, -0, 2 ** -149, -(2 ** -149), MIN_NORMAL, -MIN_NORMAL, 3.4028234663852886e38, -3.4028234663852886e38];
  const bits = new Uint32Array(1);
  const asFloat = new Float32Array(bits.buffer);
  const r = rng(20261129);
  // Subnormals: random mantissas, both signs.
  for (let i = 0; i < 2000; i++) {
    bits[0] = (Math.floor(r() * 2 ** 23) | (i % 2 ? 0x80000000 : 0)) >>> 0;
    v.push(asFloat[0]);
  }
  // Random bit patterns: every exponent (subnormals included) equally often, both signs.
  for (let i = 0; i < 60000; i++) {
    bits[0] = Math.floor(r() * 2 ** 32);
    v.push(asFloat[0]);
  }
  // Each binade from 2^-149 to 2^127, a few mantissas, both signs.
  for (let e = -149; e <= 127; e++) for (const m of [1, 1.1, 1.25, 1.5, 1.75, 1.999]) v.push(f32(m * 2 ** e), f32(-m * 2 ** e));
  // Near 0 and 1 (the cancellation regions of log, log1p, expm1, tanh, erf) and near -1.
  for (let i = 1; i <= 3000; i++) {
    const t = 2 ** (-40 * (i / 3000));
    v.push(f32(t), f32(-t), f32(1 + t), f32(1 - t), f32(-1 + t), f32(-1 - t));
  }
  for (let k = -64; k <= 64; k++) v.push(f32(1 + k * 2 ** -23), f32(-1 + k * 2 ** -23));
  // Op edges: overflow and underflow of exp (88.72, -87.33, -103.97), tanh's and erf's switch
  // points, sigmoid's and softplus' tails, gelu's left tail, the sin/cos quadrants.
  for (const c of [88.7228, -87.3365, -103.972, 0.625, 1, 1.4142135, 10, 17, -17, -13, -14, 20, 30, Math.PI / 4, Math.PI / 2, 44]) {
    for (let k = -200; k <= 200; k++) v.push(f32(c + k * Math.abs(c) * 2 ** -18), f32(-c - k * Math.abs(c) * 2 ** -18));
  }
  // A uniform grid over [-120, 120].
  for (let i = 0; i <= 48000; i++) v.push(f32(-120 + (240 * i) / 48000));
  while (v.length % 4 !== 0) v.push(0.5);
  return Float32Array.from(v);
}

const INPUTS = sweepInputs();

/** Ordered integer of a float32 (±0 both 0), so that neighbours differ by 1. */
function ordered(x: number): number {
  const b = new Float32Array([x]);
  const i = new Int32Array(b.buffer)[0];
  return i >= 0 ? i : -(i & 0x7fffffff);
}

/** Error of a float32 result against a float64 value, in float32 ulps (Infinity for a NaN mismatch). */
function ulpError(actual: number, expected: number): number {
  if (Number.isNaN(expected) || Number.isNaN(actual)) return Number.isNaN(expected) && Number.isNaN(actual) ? 0 : Infinity;
  return Math.abs(ordered(actual) - ordered(f32(expected)));
}

/** A float32 as WGSL may see it with subnormals flushed. */
const flushed = (x: number) => (Math.abs(x) < MIN_NORMAL ? (x < 0 || Object.is(x, -0) ? -0 : 0) : x);

/** SWEEP_REPORT=1 prints each op's worst error per backend (for setting the tolerances). */
function note(op: UnaryOp, backend: string, p: [number, number], worst: number): void {
  if (process.env.SWEEP_REPORT === '1') console.log(`sweep ${op} ${backend} p=${p.join(',')}: worst ${worst} ulp`);
}

interface Failure {
  x: number;
  got: number;
  want: number;
  ulps: number;
}

async function runOp(b: Backend, op: UnaryOp, xs: Float32Array, p0: number, p1: number): Promise<Float32Array | Uint8Array> {
  const def: UnaryOpDef = UNARY_OPS[op];
  const x = b.upload(xs, 'float32');
  const out = b.alloc(xs.length, def.bool ? 'bool' : 'float32');
  b.unary(op, x, out, p0, p1);
  const r = (await b.read(out)) as Float32Array | Uint8Array;
  b.release(x);
  b.release(out);
  return r;
}

/** Compares one backend's results with the float64 closure; returns the failures and the worst error seen. */
function check(op: UnaryOp, backend: string, xs: Float32Array, got: ArrayLike<number>, p0: number, p1: number): { failures: Failure[]; worst: number } {
  const def: UnaryOpDef = UNARY_OPS[op];
  const tol = TOLERANCES[op];
  const base = (backend === 'wasm' ? tol.wasm : backend === 'webgpu' ? tol.webgpu : 0) ?? 0;
  const mayFlush = backend === 'webgpu' && FLUSHING_ARITHMETIC.includes(op);
  const failures: Failure[] = [];
  let worst = 0;
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i];
    const want = def.cpu(x, p0, p1);
    const extra = backend === 'webgpu' && tol.webgpuExtra ? tol.webgpuExtra(x, p0) : 0;
    const limit = base + (Number.isFinite(extra) ? extra : 0);
    let ulps = ulpError(got[i], want);
    if (tol.alternative) ulps = Math.min(ulps, ulpError(got[i], tol.alternative(x, p0, p1)));
    if (ulps > limit && mayFlush) {
      const fromFlushedInput = ulpError(got[i], def.cpu(flushed(x), p0, p1));
      const flushedOutput = got[i] === 0 && Math.abs(f32(want)) < MIN_NORMAL ? 0 : Infinity;
      ulps = Math.min(ulps, fromFlushedInput, flushedOutput);
    }
    if (ulps !== Infinity) worst = Math.max(worst, ulps);
    if (ulps > limit) failures.push({ x, got: got[i], want, ulps });
  }
  return { failures, worst };
}

/** Names the op, the backend, the parameters and the first inputs beyond tolerance with their errors. */
function report(op: UnaryOp, backend: string, p: [number, number], failures: Failure[], n: number): string {
  const shown = failures
    .slice(0, 6)
    .map((f) => `${op}(${f.x}) = ${f.got}, float64 ${f.want} (${f.ulps} ulp)`)
    .join('; ');
  return `${op} on ${backend} (p0 ${p[0]}, p1 ${p[1]}): ${failures.length} of ${n} inputs beyond tolerance: ${shown}`;
}

const OPS = Object.keys(UNARY_OPS) as UnaryOp[];
/** The parameters as a float32 tensor's kernels take them: rounded to float32 (as PyTorch does). */
const floatParams = (op: UnaryOp) => (TOLERANCES[op].params ?? [[0, 0]]).map(([p0, p1]) => [f32(p0), f32(p1)] as [number, number]);
const cpu = new CpuBackend();
let wasm: WasmBackend;

beforeAll(async () => {
  wasm = await createWasmBackend({ threads: 1 });
});
afterAll(() => wasm?.dispose());

describe('unary ops over the float32 range', () => {
  it('the sweep covers every exponent, the subnormals and the specials', () => {
    const exps = new Set<number>();
    for (const x of INPUTS) if (Number.isFinite(x) && x !== 0) exps.add(Math.max(Math.floor(Math.log2(Math.abs(x))), -127));
    // 254 binades of normal numbers and the subnormals (counted as one).
    expect(exps.size).toBe(254 + 1);
    expect(INPUTS.some((x) => Number.isNaN(x))).toBe(true);
    expect(INPUTS.filter((x) => x !== 0 && Math.abs(x) < MIN_NORMAL).length).toBeGreaterThan(1000);
  });

  it('ulpError counts representable float32 values between result and rounded reference', () => {
    expect(ulpError(1, 1)).toBe(0);
    expect(ulpError(f32(1 + 2 ** -23), 1)).toBe(1);
    expect(ulpError(-0, 0)).toBe(0);
    expect(ulpError(2 ** -149, 0)).toBe(1);
    expect(ulpError(Infinity, 3.5e38)).toBe(0);
    expect(ulpError(3.4028234663852886e38, Infinity)).toBe(1);
    expect(ulpError(NaN, 1)).toBe(Infinity);
    expect(ulpError(1, NaN)).toBe(Infinity);
    expect(ulpError(NaN, NaN)).toBe(0);
  });

  for (const op of OPS) {
    const params = floatParams(op);
    it(`${op}: cpu and wasm within tolerance`, async () => {
      const messages: string[] = [];
      for (const p of params) {
        for (const [name, b] of [['cpu', cpu], ['wasm', wasm]] as const) {
          const got = await runOp(b, op, INPUTS, p[0], p[1]);
          const { failures, worst } = check(op, name, INPUTS, got, p[0], p[1]);
          note(op, name, p, worst);
          if (failures.length) messages.push(report(op, name, p, failures, INPUTS.length));
        }
      }
      expect(messages, messages.join('\n')).toEqual([]);
    });
  }
});

describe.skipIf(!gpu)(`unary ops over the float32 range on webgpu${gpu ? '' : ` (skipped: ${reason})`}`, { timeout: 300_000 }, () => {
  // One odd-length call per op also runs the scalar (non-vec4) form of each shader.
  const scalarInputs = INPUTS.subarray(0, 4001);
  for (const op of OPS) {
    const params = floatParams(op);
    it(`${op}: webgpu within tolerance`, async () => {
      const messages: string[] = [];
      for (const p of params) {
        for (const xs of [INPUTS, scalarInputs]) {
          const got = await runOp(gpu!, op, xs, p[0], p[1]);
          const { failures, worst } = check(op, 'webgpu', xs, got, p[0], p[1]);
          note(op, 'webgpu', p, worst);
          if (failures.length) messages.push(report(op, `webgpu${xs.length % 4 ? ' (scalar form)' : ''}`, p, failures, xs.length));
        }
      }
      expect(messages, messages.join('\n')).toEqual([]);
    });
  }
});
