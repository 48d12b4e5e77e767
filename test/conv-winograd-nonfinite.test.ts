/**
 * Winograd convolutions (src/kernels/wasm/conv-winograd.ts) keep conv.ts's infinities and NaNs:
 * the transforms mix a tile's 16 inputs (an Inf or NaN would reach the whole 2x2 output tile),
 * give NaN for Inf - Inf where the direct sum gives +-Inf, and can overflow where the direct form
 * does not. So wherever a weight or an input is not finite, or large enough for either form to
 * overflow, the call is recomputed by conv.ts. Here, with 'auto' and 'on', on 1 and 2 threads:
 * NaN, +Inf and -Inf at corners, edges and interiors of tiles and images, in the input, the
 * weights and dY (the input gradient), and huge finite inputs and weights: the result is
 * 'off' (conv.ts) bit for bit, and the CPU reference puts NaN, +Inf and -Inf at the same outputs.
 * Inputs large but far from overflow, and ordinary ones, still run by Winograd alone.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import { useWinogradConv, WinogradConv } from '../src/kernels/wasm/conv-winograd.js';
import { WasmConv } from '../src/kernels/wasm/conv.js';
import type { Conv2dLayout } from '../src/kernels/backend.js';
import { randomF32 } from './helpers/webgpu.js';
import { type Case, cpu, layoutOf, run, sizes, type Kernel } from './helpers/conv-parity.js';

const KERNELS = ['conv2d', 'conv2dBackwardInput'] as const satisfies readonly Kernel[];

const SHAPES: Case[] = [
  // Even output (6 x 6 tiles of 2x2), pad 1, 2 images (a split gives each thread one).
  { name: '2 x 16 -> 8, 12x12, pad 1', n: 2, c: 16, h: 12, w: 12, o: 8, k: [3, 3], pad: [1, 1] },
  // Odd output (9x7: partial tiles on the right and bottom), pad 0.
  { name: '2 x 3 -> 5, 11x9, pad 0', n: 2, c: 3, h: 11, w: 9, o: 5, k: [3, 3], pad: [0, 0] },
];

/** The operand a kernel reads besides the weights: the input (forward) or dY (input gradient), as [n, channels, H, W]. */
function spatialOf(kernel: Kernel, l: Conv2dLayout): { channels: number; H: number; W: number } {
  return kernel === 'conv2d' ? { channels: l.c, H: l.h, W: l.w } : { channels: l.outChannels, H: l.oh, W: l.ow };
}

interface Scenario {
  name: string;
  /** Changes the spatial operand (input or dY) and the weights in place. */
  put(a: Float32Array, w: Float32Array, at: (n: number, c: number, y: number, x: number) => number): void;
  /** Whether conv.ts's result holds a NaN or an infinity (else the case checks the fallback on finite data). */
  nonFinite: boolean;
  /** Infinities that come of float32 sums overflowing: the CPU reference, summing in float64, has none there. */
  float32Overflow?: boolean;
  /**
   * A weight not finite: conv.ts multiplies it by the zero border too (0 * Inf and 0 * NaN are
   * NaN), the CPU reference skips the border, so they agree on the outputs whose windows stay
   * inside the input only.
   */
  weights?: boolean;
}

/**
 * Positions in an H x W image relative to the 2x2 output tiles (forward, pad 1, tile (ty, tx)
 * reads inputs 2ty - 1 .. 2ty + 2): image corners and edges, a tile's corner, edge and interior.
 */
const spots = (H: number, W: number): [number, number][] => [
  [0, 0],
  [0, W - 1],
  [H - 1, 0],
  [H - 1, W - 1],
  [0, Math.floor(W / 2)],
  [Math.floor(H / 2), W - 1],
  [2, 2],
  [3, 4],
  [4, 5],
  [5, 3],
];

function scenarios(H: number, W: number): Scenario[] {
  const out: Scenario[] = [];
  const specials: [string, number][] = [
    ['NaN', NaN],
    ['+Inf', Infinity],
    ['-Inf', -Infinity],
  ];
  for (const [label, v] of specials) {
    for (const [y, x] of spots(H, W)) out.push({ name: `${label} in the input at (${y}, ${x})`, put: (a, _w, at) => void (a[at(0, 1, y, x)] = v), nonFinite: true });
    // In the last image only: in a split, another part than the first sees it.
    out.push({ name: `${label} in the last image's last channel`, put: (a, _w, at) => void (a[at(-1, -1, 3, 2)] = v), nonFinite: true });
    for (const tap of [0, 4, 8]) out.push({ name: `${label} in weight tap ${tap}`, put: (_a, w) => void (w[9 + tap] = v), nonFinite: true, weights: true });
  }
  // +Inf and -Inf in one window: Inf - Inf in the transforms, and NaN or +-Inf in the direct sums.
  out.push({
    name: '+Inf and -Inf side by side',
    put: (a, _w, at) => {
      a[at(0, 0, 2, 2)] = Infinity;
      a[at(0, 0, 2, 3)] = -Infinity;
      a[at(1, 0, 4, 4)] = Infinity;
      a[at(1, 1, 4, 4)] = Infinity;
    },
    nonFinite: true,
  });
  out.push({
    name: 'NaN, +Inf and -Inf together in input and weights',
    put: (a, w, at) => {
      a[at(0, 0, 0, 0)] = NaN;
      a[at(1, 0, H - 1, W - 1)] = -Infinity;
      w[w.length - 1] = Infinity;
    },
    nonFinite: true,
    weights: true,
  });
  // Huge finite inputs: sums of them overflow the direct form too (the results hold infinities).
  out.push({
    name: 'every input huge (1e37 .. 3e38, both signs)',
    put: (a) => a.forEach((v, i) => (a[i] = (v < 0 ? -1 : 1) * (1e37 + Math.abs(v) * 2.9e38))),
    nonFinite: true,
    float32Overflow: true,
  });
  out.push({
    name: 'a few inputs at 3e38 (same sign in a window, positive weights)',
    put: (a, w, at) => {
      // Weights of 0.5 .. 0.8: a window holding all four sums 6e38 or more.
      w.forEach((v, i) => (w[i] = 0.5 + Math.abs(v)));
      for (const [y, x] of [
        [2, 2],
        [2, 3],
        [3, 2],
        [3, 3],
      ])
        a[at(0, 0, y, x)] = 3e38;
    },
    nonFinite: true,
    float32Overflow: true,
  });
  // Huge inputs with small weights: the transforms' sums of 4 inputs overflow, the direct sums do not.
  out.push({
    name: 'inputs at 1e38 with weights of 1e-3: the transforms overflow, the direct form stays finite',
    put: (a, w) => {
      a.forEach((v, i) => (a[i] = v >= 0 ? 1e38 : -1e38));
      w.forEach((v, i) => (w[i] = v * 1e-3));
    },
    nonFinite: false,
  });
  out.push({
    name: 'weights at 3e38 over zero inputs (U overflows in float32, the direct form gives 0)',
    put: (a, w) => {
      a.fill(0);
      w.forEach((v, i) => (w[i] = v >= 0 ? 3e38 : -3e38));
    },
    nonFinite: false,
  });
  return out;
}

/** NaN / +Inf / -Inf / finite per element, as a string for a compact comparison. */
const classes = (r: Float32Array) => Array.from(r, (v) => (v !== v ? 'n' : v === Infinity ? '+' : v === -Infinity ? '-' : '.')).join('');

/**
 * Whether each output's window lies inside the input (no zero border): the forward's windows
 * read input rows oy - ph .. oy - ph + 2; the input gradient's pixel y gathers output rows
 * y + ph - 2 .. y + ph (and the same for columns).
 */
function inside(kernel: Kernel, l: Conv2dLayout): boolean[] {
  const [OH, OW, H, W, shift] = kernel === 'conv2d' ? [l.oh, l.ow, l.h, l.w, -1] : [l.h, l.w, l.oh, l.ow, 1];
  const ok = (o: number, p: number, size: number) => (shift < 0 ? o - p >= 0 && o - p + 2 < size : o + p - 2 >= 0 && o + p < size);
  const per = Array.from({ length: OH * OW }, (_, i) => ok(Math.floor(i / OW), l.ph, H) && ok(i % OW, l.pw, W));
  const planes = kernel === 'conv2d' ? l.n * l.outChannels : l.n * l.c;
  return Array.from({ length: planes }, () => per).flat();
}

/** Calls of conv.ts's forward and input gradient (the fallback, or 'off') and of the Winograd form's while f runs. */
async function counted<T>(f: () => Promise<T>): Promise<{ result: T; direct: number; winograd: number }> {
  const direct = (['forward', 'backwardInput'] as const).map((m) => vi.spyOn(WasmConv.prototype, m));
  const wino = (['forward', 'backwardInput'] as const).map((m) => vi.spyOn(WinogradConv.prototype, m));
  try {
    const result = await f();
    const n = (spies: typeof direct) => spies.reduce((s, sp) => s + sp.mock.calls.length, 0);
    return { result, direct: n(direct), winograd: n(wino) };
  } finally {
    for (const sp of [...direct, ...wino]) sp.mockRestore();
  }
}

describe('Winograd convolutions give conv.ts bits wherever a value is not finite', () => {
  let backends: WasmBackend[];
  beforeAll(async () => {
    backends = await Promise.all([1, 2].map((threads) => createWasmBackend({ threads, minThreadedWork: threads > 1 ? 1 : undefined })));
    expect(backends[1].threadsUnavailable).toBeNull();
  });
  afterAll(() => backends?.forEach((be) => be.dispose()));

  for (const t of SHAPES)
    for (const kernel of KERNELS)
      it(`${kernel}, ${t.name}`, async () => {
        const l = layoutOf(t);
        expect(useWinogradConv(l, kernel === 'conv2d' ? 'forward' : 'backwardInput'), "'auto' takes the form here").toBe(true);
        const s = sizes(kernel, l);
        const { channels, H, W } = spatialOf(kernel, l);
        const at = (n: number, c: number, y: number, x: number) => (((n < 0 ? l.n + n : n) * channels + (c < 0 ? channels + c : c)) * H + y) * W + x;
        for (const sc of scenarios(H, W)) {
          const a = randomF32(s.a, 3);
          const w = randomF32(s.b, 4).map((v) => v * 0.3);
          sc.put(a, w, at);
          const what = `${kernel}, ${t.name}: ${sc.name}`;
          const want = await run(cpu, kernel, l, a, w, s.out);
          for (const be of backends) {
            be.winogradConvs = 'off';
            const off = await counted(() => run(be, kernel, l, a, w, s.out));
            expect(off.winograd, what).toBe(0);
            expect(/[n+-]/.test(classes(off.result)), `${what}: conv.ts's result holds NaN or Inf`).toBe(sc.nonFinite);
            // The CPU reference places NaN and the infinities where conv.ts does (see Scenario).
            if (!sc.float32Overflow) {
              const keep = sc.weights ? inside(kernel, l) : null;
              const pick = (r: Float32Array) => classes(keep ? r.filter((_, i) => keep[i]) : r);
              expect(pick(off.result), `${what}: cpu reference vs conv.ts`).toBe(pick(want));
              if (keep) expect(pick(off.result), `${what}: the windows inside the input hold NaN or Inf`).toMatch(/[n+-]/);
            }
            for (const mode of ['auto', 'on'] as const) {
              be.winogradConvs = mode;
              const split = vi.spyOn(WasmConv.prototype, 'split');
              const got = await counted(() => run(be, kernel, l, a, w, s.out));
              const parts = split.mock.calls.map((c) => c[0]);
              split.mockRestore();
              const how = `${what} (${mode}, ${be.activeThreads} thread(s))`;
              // The form was asked, and handed the call to conv.ts.
              expect(got.winograd, how).toBe(1);
              expect(got.direct, `${how}: recomputed by conv.ts`).toBe(1);
              expect(new Uint32Array(got.result.buffer), how).toEqual(new Uint32Array(off.result.buffer));
              // On 2 threads the work was split (each part noting its inputs in its own slot), but
              // for an input gradient with a non-finite weight, which conv.ts sums as the reference
              // does, on one thread (torch's rule for padding: test/conv-padding-nonfinite.test.ts).
              if (be === backends[1] && !(kernel === 'conv2dBackwardInput' && sc.weights)) expect(parts[0], how).toBeGreaterThan(1);
            }
          }
        }
      });

  it('ordinary and large (1e15) finite operands run by Winograd alone, 1 and 2 threads', async () => {
    const t = SHAPES[0];
    const l = layoutOf(t);
    for (const kernel of KERNELS) {
      const s = sizes(kernel, l);
      for (const scale of [1, 1e15]) {
        const a = randomF32(s.a, 5).map((v) => v * scale);
        const w = randomF32(s.b, 6).map((v) => v * 0.3);
        for (const be of backends) {
          be.winogradConvs = 'auto';
          const got = await counted(() => run(be, kernel, l, a, w, s.out));
          expect([got.winograd, got.direct], `${kernel} at scale ${scale}`).toEqual([1, 0]);
          expect(classes(got.result)).not.toMatch(/[n+-]/);
          be.winogradConvs = 'off';
          const off = await run(be, kernel, l, a, w, s.out);
          // The forms differ in rounding only.
          const largest = off.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
          for (let i = 0; i < off.length; i++) expect(Math.abs(got.result[i] - off[i]), `${kernel} element ${i}`).toBeLessThanOrEqual(1e-5 * largest);
        }
      }
    }
  });
});
