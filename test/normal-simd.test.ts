/**
 * Normal draws as one definition (src/kernels/rng.ts normalAt: Box-Muller with our own float64
 * series for log and cos) that every CPU path computes identically: the host function (the cpu
 * backend's `random`, the arena reference), the wasm SIMD code of src/kernels/wasm/rngsimd.ts (the
 * wasm backend's `random`, the arena wasm kernels' k.normal). Checked here:
 * - accuracy: logUnit and cosTurn over all 2^24 inputs against Math.log / Math.cos, and at a few
 *   thousand inputs against values computed to 128 bits (BigInt), Box-Muller against Math's at
 *   the ends of the u-range;
 * - the f64x2 code equals the host's boxMuller bit for bit over all 2^24 values of u1 and of u2;
 * - the draws are standard normal (mean, variance, Kolmogorov-Smirnov on 1e5 draws);
 * - the arena wasm kernel's noise equals the reference over odd lengths and element offsets
 *   (beyond 2^31, where 2i wraps around 2^32).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { defineArenaKernel, FLAG_ACTIVE, runPerTensor, S_SLOTS } from '../src/kernels/arena/index.js';
import { boxMuller, cosTurn, logUnit, normalAt } from '../src/kernels/normal.js';
import { boxMullerV } from '../src/kernels/wasm/rngsimd.js';
import { i32, ModuleBuilder, v128, ValType } from '../src/kernels/wasm/emit.js';
import { erf } from '../src/kernels/mathfns.js';
import { expectBits, runArena } from './helpers/arena-run.js';

const TWO24 = 1 << 24;
const SCALE = 2 ** -24;

// ---- references to 128 bits (fixed point, BigInt) ----
const FP = 2n ** 128n;
const PI_FP = (BigInt('314159265358979323846264338327950288419716939937510582097494') * FP) / 10n ** 59n;
const LN2_FP = (BigInt('693147180559945309417232121458176568075500134360255254120680') * FP) / 10n ** 60n;
/** A fixed-point value to the nearest double (BigInt to Number rounds to nearest; the scaling is exact). */
const toNumber = (x: bigint) => Number(x) / 2 ** 128;
/** cos(2 pi b 2^-24) by its Taylor series in 128-bit fixed point. */
function cosExact(b: number): number {
  const x = (2n * PI_FP * BigInt(b)) >> 24n;
  const x2 = (x * x) / FP;
  let term = FP;
  let sum = FP;
  for (let n = 1n; term !== 0n; n++) {
    term = -((term * x2) / FP) / ((2n * n - 1n) * (2n * n));
    sum += term;
  }
  return toNumber(sum);
}
/** log(a 2^-24) = (e - 24) ln 2 + 2 atanh((a - 2^e) / (a + 2^e)) in 128-bit fixed point. */
function logExact(a: number): number {
  const e = 31 - Math.clz32(a);
  const p = BigInt(2 ** e);
  const z = ((BigInt(a) - p) * FP) / (BigInt(a) + p);
  const z2 = (z * z) / FP;
  let pw = z;
  let sum = 0n;
  for (let k = 1n; pw !== 0n; k += 2n) {
    sum += pw / k;
    pw = (pw * z2) / FP;
  }
  return toNumber(BigInt(e - 24) * LN2_FP + 2n * sum);
}
/** The spacing of doubles at |x| (x normal and nonzero). */
function ulp(x: number): number {
  const e = Math.floor(Math.log2(Math.abs(x)));
  return 2 ** (e - 52 - (2 ** e > Math.abs(x) ? 1 : 0));
}

/** Every kth input plus the neighbourhoods of the given points. */
function sample(n: number, k: number, around: readonly number[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i += k) out.push(i);
  for (const c of around) for (let d = -3; d <= 3; d++) if (c + d >= 0 && c + d < n) out.push(c + d);
  return out;
}

describe('normalAt: accuracy of its float64 series', () => {
  it('logUnit is within 2.3e-16 relative of Math.log over all 2^24 values of u1, and within 1 ulp of the 128-bit value', () => {
    for (let a = 1; a <= TWO24; a++) {
      const m = Math.log(a * SCALE);
      if (!(Math.abs(logUnit(a) - m) <= 2.3e-16 * Math.abs(m))) expect.fail(`logUnit(${a}) = ${logUnit(a)}, Math.log ${m}`);
    }
    // Against the exact value: u1 = 2^-24 (the smallest), near 1, and at the split of m at sqrt(2).
    for (const a of [...sample(TWO24 + 1, 1021, [1, 2, 11863283, 11863284, TWO24 - 1, TWO24]), TWO24].filter((a) => a >= 1)) {
      const x = logExact(a);
      const d = Math.abs(logUnit(a) - x);
      if (x === 0 ? d !== 0 : d > ulp(x)) expect.fail(`logUnit(${a}) = ${logUnit(a)}, exact ${x}`);
    }
  });

  it('cosTurn is within 2 ulps of the 128-bit value (exactly 0 at u2 = 1/4, 3/4) and within 7e-16 of Math.cos everywhere', () => {
    for (const b of sample(TWO24, 509, [0, 1 << 22, 1 << 23, 3 << 22, TWO24])) {
      const x = cosExact(b);
      const c = cosTurn(b);
      if (x === 0 ? c !== 0 : Math.abs(c - x) > 2 * ulp(x)) expect.fail(`cosTurn(${b}) = ${c}, exact ${x}`);
    }
    expect([cosTurn(0), cosTurn(1 << 23), Math.abs(cosTurn(1 << 22)), Math.abs(cosTurn(3 << 22))]).toEqual([1, -1, 0, 0]);
    // Math.cos(2 pi u) carries the rounding of its argument (up to 4.4e-16 near u = 1), which
    // cosTurn avoids by reducing u exactly first: hence an absolute bound.
    let worst = 0;
    for (let b = 0; b < TWO24; b++) worst = Math.max(worst, Math.abs(cosTurn(b) - Math.cos(2 * Math.PI * b * SCALE)));
    expect(worst).toBeLessThan(7e-16);
  });

  it("Box-Muller: within a few 1e-16 of Math's over the u-range, u1 = 2^-24 and near 1, u2 near 0, 1/4, 1/2, 3/4, 1", () => {
    const as = [1, 2, 3, 1000, 11863283, 1 << 23, TWO24 - 2, TWO24 - 1, TWO24];
    const bs = [0, 1, 2, (1 << 22) - 1, 1 << 22, (1 << 22) + 1, (1 << 23) - 1, 1 << 23, (1 << 23) + 1, (3 << 22) - 1, 3 << 22, (3 << 22) + 1, TWO24 - 2, TWO24 - 1];
    for (const a of as) for (const b of bs) check(a, b);
    // And 1e5 pairs over the whole range.
    let seed = 12345;
    const next = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8;
    for (let n = 0; n < 100_000; n++) check(next() + 1, next());
    function check(a: number, b: number): void {
      const u1 = a * SCALE;
      const u2 = b * SCALE;
      const r = Math.sqrt(-2 * Math.log(u1));
      const math = r * Math.cos(2 * Math.PI * u2);
      const ours = boxMuller(a, b);
      // Relative 4e-16, plus Math.cos's absolute error (its argument's rounding, up to 4.4e-16
      // near u2 = 1; the cosTurn bound above) times the radius, which dominates where the cosine is near 0.
      if (!(Math.abs(ours - math) <= 4e-16 * Math.abs(math) + 7e-16 * r)) expect.fail(`boxMuller(${a}, ${b}) = ${ours}, Math's ${math}`);
    }
    // u1 = 1 gives 0; the largest draw, u1 = 2^-24 and u2 = 0, is sqrt(48 ln 2) to the last ulp.
    expect(Math.abs(boxMuller(TWO24, 5))).toBe(0);
    expect(Math.abs(boxMuller(1, 0) - Math.sqrt(-2 * logExact(1)))).toBeLessThanOrEqual(ulp(5.77));
  });
});

/** rngsimd.ts boxMullerV in a module of its own: out[i] = boxMuller(a[i], b[i]) in f64x2 lanes. */
function simdBoxMuller(chunk: number): (a: Int32Array, b: Int32Array) => Float64Array {
  const { i32: I32, v128: V128 } = ValType;
  const mb = new ModuleBuilder();
  mb.importMemory('env', 'memory', { initial: 1 });
  mb.func('bm', [I32, I32, I32, I32], [], (f, pa, pb, po, n) => {
    const [A, B] = f.localsOf(V128, 2);
    const i = f.local(I32);
    const draw = boxMullerV(f);
    f.for(i, 0, n, 4, () => {
      f.set(A, v128.load(i32.add(pa, i32.shl(i, 2))));
      f.set(B, v128.load(i32.add(pb, i32.shl(i, 2))));
      const [lo, hi] = draw(A, B);
      f.exec(v128.store(i32.add(po, i32.shl(i, 3)), lo), v128.store(i32.add(po, i32.shl(i, 3)), hi, 16));
    });
  });
  const memory = new WebAssembly.Memory({ initial: Math.ceil((16 * chunk) / 65536) });
  const bytes = mb.toBytes();
  const fn = new WebAssembly.Instance(new WebAssembly.Module(bytes as Uint8Array<ArrayBuffer>), { env: { memory } }).exports.bm as (...x: number[]) => void;
  return (a, b) => {
    new Int32Array(memory.buffer, 0, a.length).set(a);
    new Int32Array(memory.buffer, 4 * chunk, b.length).set(b);
    fn(0, 4 * chunk, 8 * chunk, a.length);
    return new Float64Array(memory.buffer, 8 * chunk, a.length).slice();
  };
}

describe('normalAt in f64x2 lanes (src/kernels/wasm/rngsimd.ts)', () => {
  it('equals the host boxMuller bit for bit over every u1 and every u2 (2^24 pairs)', () => {
    // Pair k: a = k + 1 (every u1) with b = k 0x9e3779b1 mod 2^24 (an odd multiplier: every u2 once).
    const CHUNK = 1 << 18;
    const run = simdBoxMuller(CHUNK);
    const a = new Int32Array(CHUNK);
    const b = new Int32Array(CHUNK);
    for (let k0 = 0; k0 < TWO24; k0 += CHUNK) {
      for (let j = 0; j < CHUNK; j++) {
        a[j] = k0 + j + 1;
        b[j] = Math.imul(k0 + j, 0x9e3779b1) & (TWO24 - 1);
      }
      const got = run(a, b);
      for (let j = 0; j < CHUNK; j++) {
        const want = boxMuller(a[j], b[j]);
        if (!Object.is(got[j], want)) expect.fail(`boxMuller(${a[j]}, ${b[j]}): f64x2 ${got[j]}, host ${want}`);
      }
    }
  }, 60_000);
});

let cpu: Backend;
let wasm: Backend;
beforeAll(async () => {
  cpu = new CpuBackend();
  wasm = await createWasmBackend({ threads: 1 });
});

/** The standard normal CDF. */
const phi = (x: number) => 0.5 * (1 + erf(x / Math.SQRT2));

describe('normal draws: distribution and bit equality across CPU paths', () => {
  it("1e5 draws of the wasm backend's random equal the cpu backend's and are standard normal (mean, variance, KS)", async () => {
    const N = 100_000;
    const draw = async (b: Backend, dtype: 'float32' | 'float64') => {
      const s = b.alloc(N, dtype);
      b.random(s, 0x12345678, 0xcafef00d, { kind: 'normal', mean: 0, std: 1 });
      const out = Float64Array.from(await b.read(s));
      b.release(s);
      return out;
    };
    const z = await draw(wasm, 'float32');
    expectBits(z, await draw(cpu, 'float32'), 'wasm random against cpu');
    const z64 = await draw(cpu, 'float64');
    z64.forEach((v, i) => {
      if (v !== normalAt(0x12345678, 0xcafef00d, i)) expect.fail(`cpu float64 draw ${i}: ${v}`);
    });
    let mean = 0;
    for (const v of z) mean += v / N;
    let variance = 0;
    for (const v of z) variance += (v - mean) ** 2 / (N - 1);
    // Five standard errors: sd(mean) = 1/sqrt(N), sd(variance) = sqrt(2/N).
    expect(Math.abs(mean)).toBeLessThan(5 / Math.sqrt(N));
    expect(Math.abs(variance - 1)).toBeLessThan(5 * Math.sqrt(2 / N));
    const sorted = z.slice().sort();
    let d = 0;
    sorted.forEach((v, i) => {
      const F = phi(v);
      d = Math.max(d, Math.abs(F - i / N), Math.abs((i + 1) / N - F));
    });
    // The Kolmogorov-Smirnov critical value at level 0.001 is 1.95 / sqrt(N).
    expect(d).toBeLessThan(1.95 / Math.sqrt(N));
    // Box-Muller's range from 24-bit uniforms: |z| <= sqrt(-2 log 2^-24) = 5.77.
    expect(Math.max(...sorted.map(Math.abs))).toBeLessThanOrEqual(5.7682);
  });

  /** out = x + sc z: a draw mixed with a vector and a coefficient. */
  const MIX = defineArenaKernel({
    name: 'normal-simd-mix',
    vectors: { out: 'write', x: 'read' },
    hyper: { key0: 0, key1: 0, sc: 1 },
    body: ({ x }, h, _s, k) => ({ out: k.add(x, k.mul(h.sc, k.normal(h.key0, h.key1))) }),
  });
  const HYPER = { key0: 0xfffffffe, key1: 0x80000001, sc: 0.75 };
  const R = Math.fround;

  it('arena wasm noise equals the reference over odd lengths (arena and per tensor)', async () => {
    const sizes = [1, 2, 3, 5, 7, 9, 15, 17, 31, 33, 63, 65, 127, 129, 255, 1001];
    const total = sizes.reduce((a, n) => a + n, 0);
    const x = Float32Array.from({ length: total }, (_, i) => R(Math.sin(i)));
    for (const perTensor of [false, true]) {
      const ref = await runArena(cpu, MIX, sizes, { x }, { hyper: [HYPER], perTensor });
      const simd = await runArena(wasm, MIX, sizes, { x }, { hyper: [HYPER], perTensor });
      expectBits(simd.vectors.out, ref.vectors.out, `wasm out${perTensor ? ' per tensor' : ''}`);
    }
  });

  it('arena wasm noise equals the reference and normalAt at odd element offsets, up to and past 2^31', async () => {
    const offsets = [1, 3, 13, 12345, 2 ** 31 - 5, 2 ** 31 + 3, 2 ** 32 - 7];
    const lengths = [1, 2, 3, 5, 6, 7, 66];
    const results = await Promise.all(
      [cpu, wasm].map(async (b) => {
        const params = offsets.map((index, k) => {
          const n = lengths[k % lengths.length];
          const x = Float32Array.from({ length: n }, (_, j) => R(0.25 * j - 1));
          return { vectors: { out: b.alloc(n, 'float32'), x: b.upload(x, 'float32') }, numel: n, group: 0, flags: FLAG_ACTIVE, index };
        });
        const S = b.upload(new Float32Array(S_SLOTS), 'float32');
        runPerTensor(MIX, b, { dtype: 'float32', params, S, hyper: [HYPER] });
        const out = await Promise.all(params.map((p) => b.read(p.vectors.out)));
        for (const p of params) Object.values(p.vectors).forEach((s) => b.release(s));
        b.release(S);
        return out.map((o) => Float32Array.from(o));
      }),
    );
    offsets.forEach((index, k) => {
      const want = results[0][k].map((_, j) => R(R(0.25 * j - 1) + R(R(HYPER.sc) * R(normalAt(HYPER.key0, HYPER.key1, index + j)))));
      expectBits(results[0][k], want, `reference at offset ${index}`);
      expectBits(results[1][k], want, `wasm at offset ${index}`);
    });
  });
});
