/**
 * Golden trajectories for the rest of the sharpness-aware family (MSAM, LookSAM, ESAM, RandomSAM,
 * RWP, GSAM): PyTorch implementations written from the papers (scripts/gen-variant-fixtures.py)
 * ran a few steps of each on small MLPs with its distinctive options; flatgrad loads the same
 * weights, runs the same steps, and must land on the same losses and parameters after every
 * step. Fused equal to unfused proves the kernels; only these prove the algorithms.
 *
 * The random members draw their noise from flatgrad's counter-based generator, which the script
 * re-implements: the test seeds it with the case's `rng_seed` before step 1 and also checks, at
 * every step, that the noise the library drew (its 'z' state vector) is the recorded one.
 *
 * cpu: float64 (tight) and float32, fused and unfused; wasm: float64 and float32 (fused); WebGPU:
 * float32, fused and unfused.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { getBackend } from '../src/kernels/registry.js';
import { initBackend, useBackend } from './helpers/backend-scope.js';
import { batches, caseForward, caseParams, close, familyStep, FIXTURE_DIR, TOL, type SamCase } from './helpers/sam-fixture.js';
import { acquireWebGPU } from './helpers/webgpu.js';

const { nn, optim } = fg;
const DIR = `${FIXTURE_DIR}variants/`;

type Sharpness = {
  type: 'msam' | 'looksam' | 'esam' | 'randomsam' | 'rwp' | 'gsam';
  rho?: number;
  m?: number;
  k?: number;
  alpha?: number;
  beta?: number;
  gamma?: number;
  rho_min?: number | null;
  lr_min?: number;
  norm_eps?: number;
};
type BaseSpec =
  | { type: 'sgd'; lr: number; momentum: number; dampening: number; nesterov: boolean; weight_decay: number }
  | { type: 'adamw'; lr: number; betas: [number, number]; eps: number; weight_decay: number };
type VariantCase = SamCase & { sharpness: Sharpness; optimizer: BaseSpec; rng_seed?: number; lr_schedule?: number[] };
interface StepRef {
  loss: number;
  params: { weight: number[][]; bias: number[] | null }[];
  noise?: number[];
}
interface Ref {
  float64: { steps: StepRef[]; final_params_flat: number[] };
}

function loadCases(): { spec: VariantCase; ref: Ref }[] {
  return readdirSync(DIR)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => {
      const { case: spec, reference: ref } = JSON.parse(readFileSync(DIR + f, 'utf8'));
      return { spec, ref };
    });
}

type Tol = { atol: number; rtol: number };

function expectAllClose(what: string, ours: number[], want: number[], tol: Tol): void {
  expect(ours.length, `${what}: length`).toBe(want.length);
  const bad = ours.findIndex((v, i) => !close(v, want[i], tol));
  if (bad >= 0) throw new Error(`${what}[${bad}]: ours ${ours[bad]} vs reference ${want[bad]} (|diff| ${Math.abs(ours[bad] - want[bad]).toExponential(3)}, atol ${tol.atol}, rtol ${tol.rtol})`);
}

function flatParams(ps: { weight: number[][]; bias: number[] | null }[]): number[] {
  return ps.flatMap((p) => [...p.weight.flat(), ...(p.bias ?? [])]);
}

async function values(ts: readonly fg.Tensor[]): Promise<number[]> {
  return (await Promise.all(ts.map(async (t) => Array.from(await t.data())))).flat();
}

/**
 * The case's wrapper over its base optimizer. AdamW's eps and the wrapper's norm epsilon are left
 * at their defaults (the fixtures use exactly those), so the test does not depend on the options'
 * names.
 */
function makeOptimizer(spec: VariantCase, params: fg.Tensor[], fused: boolean): fg.optim.Optimizer {
  const o = spec.optimizer;
  const s = spec.sharpness;
  if (s.norm_eps !== undefined) expect(s.norm_eps, 'the fixture uses the default norm epsilon').toBe(1e-12);
  let Base: fg.optim.BaseOptimizerClass;
  let base: Record<string, unknown>;
  if (o.type === 'sgd') {
    Base = optim.SGD;
    base = { lr: o.lr, momentum: o.momentum, dampening: o.dampening, nesterov: o.nesterov, weightDecay: o.weight_decay };
  } else {
    expect(o.eps, "the fixture uses AdamW's default eps").toBe(1e-8);
    Base = optim.AdamW;
    base = { lr: o.lr, betas: o.betas, weightDecay: o.weight_decay };
  }
  const opts = { ...base, fused };
  switch (s.type) {
    case 'msam':
      return new optim.MSAM(params, Base, { ...opts, rho: s.rho, m: s.m });
    case 'looksam':
      return new optim.LookSAM(params, Base, { ...opts, rho: s.rho, k: s.k, alpha: s.alpha });
    case 'esam':
      return new optim.ESAM(params, Base, { ...opts, rho: s.rho, beta: s.beta, gamma: s.gamma });
    case 'randomsam':
      return new optim.RandomSAM(params, Base, { ...opts, rho: s.rho });
    case 'rwp':
      return new optim.RWP(params, Base, { ...opts, gamma: s.gamma, alpha: s.alpha });
    case 'gsam':
      return new optim.GSAM(params, Base, { ...opts, rho: s.rho, alpha: s.alpha, ...(s.rho_min === null ? {} : { rhoMin: s.rho_min, lrMin: s.lr_min }) });
    default:
      throw new Error(`unknown sharpness type ${JSON.stringify(s)}`);
  }
}

/** Runs the case's steps on the current backend, comparing every step with the float64 reference. */
async function runCase(spec: VariantCase, ref: Ref, dtype: 'float32' | 'float64', fused: boolean): Promise<void> {
  const tol = TOL[dtype];
  const params = caseParams(spec, dtype);
  expect(params[0].backend).toBe(getBackend());
  const opt = makeOptimizer(spec, params, fused);
  expect(opt.fused).toBe(fused);
  const kind = spec.sharpness.type;
  const data = batches(spec).map((b) => ({
    x: fg.tensor(b.inputs, { dtype }).keep(),
    y: fg.tensor(Int32Array.from(b.labels), { dtype: 'int32' }).keep(),
    rows: b.inputs.length,
  }));
  const perSample = (x: fg.Tensor, y: fg.Tensor) => nn.functional.crossEntropy(caseForward(spec, x, params), y, { reduction: 'none', labelSmoothing: spec.loss.label_smoothing });
  // Seed flatgrad's generator as the script's replica was seeded: its first draw is step 1's.
  fg.manualSeed(spec.rng_seed ?? 0);
  for (let t = 1; t <= spec.steps; t++) {
    const st = ref.float64.steps[t - 1];
    const b = data[(t - 1) % data.length];
    if (spec.lr_schedule) for (const g of opt.paramGroups) g.lr = spec.lr_schedule[t - 1];
    const loss = familyStep(opt, kind, (idx) => (idx ? perSample(b.x.indexSelect(0, idx), b.y.indexSelect(0, idx)) : perSample(b.x, b.y)), b.rows, spec.sharpness.m);
    if (loss === undefined) throw new Error(`step ${t}: ${kind} returned no loss`);
    const lossValue = typeof loss === 'number' ? loss : await loss.item();
    if (!close(lossValue, st.loss, tol.loss)) throw new Error(`step ${t} loss: ours ${lossValue} vs reference ${st.loss}`);
    if (st.noise) {
      const z = opt.engine.stateTensors('z');
      expect(z, `step ${t}: the library drew no noise`).not.toBeNull();
      expectAllClose(`step ${t} noise`, await values(z!), st.noise, tol.params);
    }
    expectAllClose(`step ${t} params`, await values(params), flatParams(st.params), tol.params);
  }
  expectAllClose('final params', await values(params), ref.float64.final_params_flat, tol.params);
  const stats = await (opt as fg.optim.SharpnessAware).stats();
  expect(stats.skipped).toBe(0);
  opt.dispose();
  fg.dispose(params);
  for (const d of data) fg.dispose([d.x, d.y]);
}

const cases = loadCases();

describe('variant fixtures', () => {
  it('finds a case of every variant', () => {
    const kinds = new Set(cases.map((c) => c.spec.sharpness.type));
    expect([...kinds].sort()).toEqual(['esam', 'gsam', 'looksam', 'msam', 'randomsam', 'rwp']);
  });
});

/** Runs the suite's cases on a backend acquired in beforeAll (or skips when it has none). */
function onBackend(title: string, backendName: string, acquire: () => Promise<Backend | null>, runs: { dtype: 'float32' | 'float64'; fused: boolean }[]): void {
  describe(title, () => {
    const scope = useBackend(acquire, backendName);
    for (const { spec, ref } of cases) {
      for (const { dtype, fused } of runs) {
        it(`${spec.name} ${dtype} ${fused ? 'fused' : 'unfused'}`, (ctx) => scope.run(ctx, () => runCase(spec, ref, dtype, fused)));
      }
    }
  });
}

onBackend('variant fixtures on the CPU', 'cpu', async () => getBackend(), [
  { dtype: 'float64', fused: true },
  { dtype: 'float64', fused: false },
  { dtype: 'float32', fused: true },
  { dtype: 'float32', fused: false },
]);

onBackend(
  'variant fixtures on wasm',
  'wasm',
  () => initBackend('wasm', true),
  [
    { dtype: 'float64', fused: true },
    { dtype: 'float32', fused: true },
  ],
);

onBackend('variant fixtures on WebGPU (float32)', 'webgpu', async () => (await acquireWebGPU()).backend, [
  { dtype: 'float32', fused: true },
  { dtype: 'float32', fused: false },
]);
