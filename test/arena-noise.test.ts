/**
 * Gaussian noise in the arena kernel language (k.normal): one definition whose float32 reference
 * (generated and interpreted) and wasm f32x4 kernel agree bit for bit, draw normalAt of
 * src/kernels/rng.ts at each element's arena index (per tensor too, at the tensor's arena
 * offset), take keys up to 2^32 exactly, and agree with WebGPU within a few ulps. The optimizers'
 * noise (random-SAM, RWP) is this definition (src/kernels/arena/fused.ts noiseCall); its PyTorch
 * fixtures are test/sam-variants-fixtures.test.ts.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { defineArenaKernel } from '../src/kernels/arena/index.js';
import { noiseCall } from '../src/kernels/arena/fused.js';
import { normalAt } from '../src/kernels/normal.js';
import { expectBits, runArena } from './helpers/arena-run.js';
import { acquireWebGPU, rng } from './helpers/webgpu.js';

let cpu: Backend;
let wasm: Backend;
beforeAll(async () => {
  cpu = new CpuBackend();
  wasm = await createWasmBackend({ threads: 1 });
});

/** out = x + sc z: the draw mixed with a vector and a coefficient, on active parameters. */
const MIX = defineArenaKernel({
  name: 'noise-mix-test',
  vectors: { out: 'write', x: 'read' },
  hyper: { key0: 0, key1: 0, sc: 1 },
  body: ({ x }, h, _s, k) => ({ out: k.add(x, k.mul(h.sc, k.normal(h.key0, h.key1))) }),
});

const SIZES = [1, 3, 63, 65, 257, 1000];
const TOTAL = SIZES.reduce((a, n) => a + n, 0);
/** Keys above 2^31 (and one above 2^24, where float32 would round it). */
const HYPER = [{ key0: 0xdeadbeef, key1: 0x9e3779b9, sc: 0.3 }];
const x = (() => {
  const r = rng(5);
  return Float32Array.from({ length: TOTAL }, () => Math.fround(r() * 2 - 1));
})();

/** The arena index of each element (parameters at 64-aligned offsets), in the runArena order. */
function arenaIndexes(sizes: readonly number[]): number[] {
  const out: number[] = [];
  let off = 0;
  for (const n of sizes) {
    for (let j = 0; j < n; j++) out.push(off + j);
    off += Math.ceil(n / 64) * 64;
  }
  return out;
}

describe('arena kernels: the normal draw (k.normal)', () => {
  it('rejects keys that are not hyper-parameters or constants, when the kernel is defined', () => {
    expect(() =>
      defineArenaKernel({ name: 'bad-noise', vectors: { out: 'write' }, slots: { s: 0 }, body: (_v, _h, s, k) => ({ out: k.normal(s.s, 1) }) }),
    ).toThrow(/"bad-noise": body: normal: keys must be hyper-parameters or constants, got slot.s/);
  });

  it('float32 reference (generated, interpreted) and wasm agree bit for bit, and draw normalAt at the arena index', async () => {
    const ref = await runArena(cpu, MIX, SIZES, { x }, { hyper: HYPER });
    const interp = await runArena(cpu, MIX, SIZES, { x }, { hyper: HYPER, path: 'interpret' });
    const simd = await runArena(wasm, MIX, SIZES, { x }, { hyper: HYPER });
    expectBits(interp.vectors.out, ref.vectors.out, 'interpreted out');
    expectBits(simd.vectors.out, ref.vectors.out, 'wasm out');
    // The definition's semantics spelled out: each operation rounded to float32, the draw too.
    const R = Math.fround;
    const { key0, key1, sc } = HYPER[0];
    const want = arenaIndexes(SIZES).map((i, e) => R(x[e] + R(R(sc) * R(normalAt(key0, key1, i)))));
    expectBits(ref.vectors.out, want, 'reference out against normalAt');
  });

  it('the per-tensor baseline draws the arena numbers (cpu and wasm)', async () => {
    for (const b of [cpu, wasm]) {
      const arena = await runArena(b, MIX, SIZES, { x }, { hyper: HYPER });
      const perTensor = await runArena(b, MIX, SIZES, { x }, { hyper: HYPER, perTensor: true });
      expectBits(perTensor.vectors.out, arena.vectors.out, `${b.name} per-tensor out`);
    }
  });

  it("the optimizers' noise definition: scale z on active parameters, 0 on inactive ones; filter-wise multiplies the row norms in", async () => {
    for (const filterwise of [false, true]) {
      const call = noiseCall('out', 123, 456, [2], filterwise);
      const rowNorm = Float32Array.from({ length: TOTAL }, (_, i) => 1 + (i % 7));
      const outs = await Promise.all([cpu, wasm].map((b) => runArena(b, call.kernel, SIZES, { out: rowNorm }, { hyper: call.hyper, inactive: [1] })));
      expectBits(outs[1].vectors.out, outs[0].vectors.out, `wasm noise (filterwise ${filterwise})`);
      const idx = arenaIndexes(SIZES);
      const R = Math.fround;
      let e = 0;
      SIZES.forEach((n, k) => {
        for (let j = 0; j < n; j++, e++) {
          const std = filterwise ? R(2 * rowNorm[e]) : 2;
          const want = k === 1 ? 0 : R(std * R(normalAt(123, 456, idx[e])));
          if (!Object.is(outs[0].vectors.out[e], want)) expect.fail(`filterwise ${filterwise}, element ${e}: ${outs[0].vectors.out[e]} vs ${want}`);
        }
      });
    }
  });

  it('webgpu agrees with the float32 reference within a few ulps (arena and per tensor)', async () => {
    const { backend: gpu, reason } = await acquireWebGPU();
    if (!gpu) {
      console.warn(`skipped: no WebGPU adapter (${reason})`);
      return;
    }
    const ref = await runArena(cpu, MIX, SIZES, { x }, { hyper: HYPER });
    for (const perTensor of [false, true]) {
      const dev = await runArena(gpu, MIX, SIZES, { x }, { hyper: HYPER, perTensor });
      dev.vectors.out.forEach((v, i) => {
        const w = ref.vectors.out[i];
        if (!(Math.abs(v - w) <= 1e-5 * Math.max(1, Math.abs(w)))) expect.fail(`webgpu${perTensor ? ' per tensor' : ''} out[${i}]: ${v}, reference ${w}`);
      });
    }
  }, 120_000);
});
