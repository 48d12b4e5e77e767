/**
 * rho = 0 reduces every member of the sharpness-aware family to its base optimizer, bit for bit,
 * on every backend: with no perturbation the wrapper's extra passes, norms and mixes must not
 * change a single bit of the update. Each member runs a few steps of a fixture MLP next to the
 * plain base optimizer (SGD with Nesterov momentum and weight decay; AdamW), fused and unfused, on
 * cpu and wasm (float64 and float32) and WebGPU (float32), and the parameters are compared exactly.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { getBackend } from '../src/kernels/registry.js';
import { initBackend, useBackend } from './helpers/backend-scope.js';
import { batches, caseForward, caseParams, familyStep, FIXTURE_DIR, type SamCase } from './helpers/sam-fixture.js';
import { acquireWebGPU } from './helpers/webgpu.js';

const { nn, optim } = fg;
/** A 4-6-3 tanh MLP and two batches of 8 rows (only its weights and data are used here). */
const spec: SamCase = JSON.parse(readFileSync(`${FIXTURE_DIR}variants/msam_m2_mlp4-6-3_tanh_sgdm.json`, 'utf8')).case;
const STEPS = 4;

/**
 * Each member with its perturbation switched off, and whatever else makes it the base optimizer:
 * MSAM with one micro-batch, ESAM with the whole batch in the second pass (gamma = 1; beta < 1 only
 * selects which tensors would move), LookSAM over both of its kinds of step, RWP with zero noise
 * (its gamma) and a mix alpha whose arithmetic is not exact by luck, GSAM with a non-zero alpha.
 */
const MEMBERS: { name: string; make: (ps: fg.Tensor[], Base: fg.optim.BaseOptimizerClass, o: Record<string, unknown>) => fg.optim.Optimizer; kind?: string }[] = [
  { name: 'SAM', make: (ps, B, o) => new optim.SAM(ps, B, { ...o, rho: 0 }) },
  { name: 'ASAM', make: (ps, B, o) => new optim.ASAM(ps, B, { ...o, rho: 0 }) },
  { name: 'LookSAM k=3', make: (ps, B, o) => new optim.LookSAM(ps, B, { ...o, rho: 0, k: 3, alpha: 0.7 }) },
  { name: 'MSAM m=1', make: (ps, B, o) => new optim.MSAM(ps, B, { ...o, rho: 0, m: 1 }), kind: 'msam' },
  { name: 'ESAM beta=1 gamma=1', make: (ps, B, o) => new optim.ESAM(ps, B, { ...o, rho: 0, beta: 1, gamma: 1 }), kind: 'esam' },
  { name: 'ESAM beta=0.5 gamma=1', make: (ps, B, o) => new optim.ESAM(ps, B, { ...o, rho: 0, beta: 0.5, gamma: 1 }), kind: 'esam' },
  { name: 'RandomSAM', make: (ps, B, o) => new optim.RandomSAM(ps, B, { ...o, rho: 0 }) },
  { name: 'RWP gamma=0 alpha=0.3', make: (ps, B, o) => new optim.RWP(ps, B, { ...o, gamma: 0, alpha: 0.3 }) },
  { name: 'GSAM alpha=0.3', make: (ps, B, o) => new optim.GSAM(ps, B, { ...o, rho: 0, alpha: 0.3 }) },
  { name: 'GSAM rho schedule', make: (ps, B, o) => new optim.GSAM(ps, B, { ...o, rho: 0, rhoMin: 0, alpha: 0.3 }) },
];

const BASES: { name: string; Base: fg.optim.BaseOptimizerClass; opts: Record<string, unknown> }[] = [
  { name: 'SGD', Base: optim.SGD, opts: { lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 1e-3 } },
  { name: 'AdamW', Base: optim.AdamW, opts: { lr: 0.01, weightDecay: 0.01 } },
];

/** The parameters after STEPS steps of `make` (or of the plain base optimizer), on the current backend. */
async function trajectory(dtype: fg.DType, kind: string, make: (ps: fg.Tensor[]) => fg.optim.Optimizer): Promise<number[]> {
  const params = caseParams(spec, dtype);
  const opt = make(params);
  const data = batches(spec).map((b) => ({ x: fg.tensor(b.inputs, { dtype }).keep(), y: fg.tensor(Int32Array.from(b.labels), { dtype: 'int32' }).keep(), rows: b.inputs.length }));
  const perSample = (x: fg.Tensor, y: fg.Tensor) => nn.functional.crossEntropy(caseForward(spec, x, params), y, { reduction: 'none' });
  fg.manualSeed(5);
  for (let t = 0; t < STEPS; t++) {
    const b = data[t % data.length];
    const l = familyStep(opt, kind, (idx) => (idx ? perSample(b.x.indexSelect(0, idx), b.y.indexSelect(0, idx)) : perSample(b.x, b.y)), b.rows, 1);
    if (l instanceof fg.Tensor) l.dispose();
  }
  const out = (await Promise.all(params.map(async (p) => Array.from(await p.data())))).flat();
  opt.dispose();
  fg.dispose(params);
  for (const d of data) fg.dispose([d.x, d.y]);
  return out;
}

function expectBitEqual(ours: number[], base: number[]): void {
  expect(ours.length).toBe(base.length);
  const bad = ours.findIndex((v, i) => !Object.is(v, base[i]));
  if (bad >= 0) throw new Error(`parameter element ${bad}: ${ours[bad]} with rho = 0, ${base[bad]} with the base optimizer (not bit-equal)`);
}

function onBackend(title: string, backendName: string, acquire: () => Promise<Backend | null>, dtypes: ('float32' | 'float64')[]): void {
  describe(title, () => {
    const scope = useBackend(acquire, backendName);
    for (const dtype of dtypes) {
      for (const fused of [true, false]) {
        for (const { name: baseName, Base, opts } of BASES) {
          it(`${baseName} ${dtype} ${fused ? 'fused' : 'unfused'}: every member with rho = 0`, (ctx) =>
            scope.run(ctx, async () => {
              const o = { ...opts, fused };
              const base = await trajectory(dtype, 'base', (ps) => new Base(ps, o));
              const failures: string[] = [];
              for (const m of MEMBERS) {
                const ours = await trajectory(dtype, m.kind ?? 'closure', (ps) => {
                  const opt = m.make(ps, Base, o);
                  expect(opt.fused).toBe(fused);
                  return opt;
                });
                try {
                  expectBitEqual(ours, base);
                } catch (e) {
                  failures.push(`${m.name}: ${(e as Error).message}`);
                }
              }
              expect(failures).toEqual([]);
            }),
          );
        }
      }
    }
  });
}

onBackend('rho = 0 is the base optimizer, bit for bit, on the CPU', 'cpu', async () => getBackend(), ['float64', 'float32']);

onBackend(
  'rho = 0 is the base optimizer, bit for bit, on wasm',
  'wasm',
  () => initBackend('wasm', true),
  ['float64', 'float32'],
);

onBackend('rho = 0 is the base optimizer, bit for bit, on WebGPU', 'webgpu', async () => (await acquireWebGPU()).backend, ['float32']);
