/** `flatgrad sharpness <checkpoint>`: Hessian spectrum, trace and rho-sharpness at a trained solution. */
import { join } from 'node:path';
import { hessianEigenvalues, hessianTrace, inEvalMode, rhoSharpness } from '../../analysis/index.js';
import { manualSeed } from '../../tensor/random.js';
import { dispose } from '../../tensor/tensor.js';
import { choiceFlag, listFlag, numberFlag, parseNumber, stringFlag } from '../args.js';
import { BACKENDS } from '../config.js';
import type { CliIO } from '../io.js';
import { writeJson } from '../report.js';
import { batchLoss, closeRun, evaluationBatch, openRun } from '../restore.js';
import { resolvePath, startBackend } from '../runtime.js';
import { defineCommand } from './define.js';

export const ANALYSIS_FLAGS = {
  examples: numberFlag('size of the fixed evaluation batch (the first n images of the split)', { integer: true, min: 1, default: 512 }),
  split: choiceFlag(['train', 'test'] as const, 'which split the evaluation batch comes from', 'train'),
  data: stringFlag("data location if not the run's own: 'subset', 'full' or a directory", { placeholder: '<subset|full|dir>' }),
  seed: numberFlag('seed for the random vectors and directions', { integer: true, min: 0, default: 0 }),
  backend: choiceFlag(BACKENDS, 'compute backend', 'auto'),
  threads: numberFlag('worker threads for the wasm backend', { integer: true, min: 1 }),
};

export interface SharpnessReport {
  checkpoint: string;
  name: string;
  examples: number;
  split: string;
  loss: number;
  eigenvalues: number[];
  eigenIterations: number[];
  /** ||H v - lambda v|| / |lambda| of each eigenpair: above sqrt(tol) means power iteration stopped unconverged. */
  eigenResiduals: number[];
  trace: { mean: number; stderr: number; samples: number };
  rhoSharpness: { rho: number; sharpness: number; perturbedLoss: number; evaluations: number }[];
  backend: string;
  seconds: number;
}

const nonNegative = (raw: string, flag: string) => parseNumber(raw, flag, { min: 0 });

export const sharpnessCommand = defineCommand({
  name: 'sharpness',
  summary: 'Hessian top-k eigenvalues, Hutchinson trace and rho-sharpness of a checkpoint on a fixed batch',
  synopsis: '<checkpoint or run dir> [flags]',
  positionals: { min: 1, max: 1, names: 'the checkpoint (a run directory or its checkpoint.safetensors)' },
  flags: {
    k: numberFlag('how many top Hessian eigenvalues (power iteration with deflation)', { integer: true, min: 1, default: 3 }),
    iters: numberFlag('power-iteration steps per eigenvalue at most', { integer: true, min: 1, default: 100 }),
    tol: numberFlag('converged when the relative change is below tol and the relative residual below sqrt(tol)', { above: 0, default: 1e-4 }),
    traceSamples: numberFlag('Rademacher probes for the Hutchinson trace', { integer: true, min: 1, default: 20 }),
    rho: listFlag(nonNegative, 'radii for rho-sharpness', { default: [0.01, 0.05, 0.1], placeholder: '<r1,r2,...>' }),
    ascentSteps: numberFlag('projected gradient-ascent steps after the first for rho-sharpness', { integer: true, min: 0, default: 5 }),
    out: stringFlag('where to write the JSON report [<run dir>/sharpness.json]', { placeholder: '<file>' }),
    ...ANALYSIS_FLAGS,
  },
  async run({ flags, positionals }, io) {
    const facts = await startBackend(flags.backend, flags.threads, io);
    const report = await measureSharpness(io, positionals[0], flags, facts.backend);
    const out = flags.out ? await resolvePath(io, flags.out) : join(report.dirOfRun, 'sharpness.json');
    await writeJson(out, report.result);
    io.stdout.write(formatSharpness(report.result) + `\nwrote ${out}\n`);
  },
});

export interface SharpnessOptions {
  k: number;
  iters: number;
  tol: number;
  traceSamples: number;
  rho: number[];
  ascentSteps: number;
  examples: number;
  split: 'train' | 'test';
  data?: string;
  seed: number;
}

export async function measureSharpness(io: CliIO, checkpoint: string, o: SharpnessOptions, backend: string): Promise<{ result: SharpnessReport; dirOfRun: string }> {
  const t0 = performance.now();
  const run = await openRun(io, checkpoint);
  const batch = await evaluationBatch(run.config, o.split, o.examples, o.data);
  try {
    const params = run.model.parameters();
    const loss = batchLoss(run.model, batch);
    const result = await inEvalMode(run.model, async () => {
      manualSeed(o.seed);
      const eig = await hessianEigenvalues(loss, params, { k: o.k, maxIter: o.iters, tol: o.tol });
      dispose(eig.eigenvectors);
      const trace = await hessianTrace(loss, params, o.traceSamples);
      const rhos: SharpnessReport['rhoSharpness'] = [];
      let base = NaN;
      for (const rho of o.rho) {
        const r = await rhoSharpness(loss, params, rho, { steps: o.ascentSteps });
        base = r.loss;
        rhos.push({ rho, sharpness: r.sharpness, perturbedLoss: r.perturbedLoss, evaluations: r.evaluations });
      }
      return {
        checkpoint: run.file,
        name: run.name,
        examples: batch.n,
        split: batch.split,
        loss: base,
        eigenvalues: eig.eigenvalues,
        eigenIterations: eig.iterations,
        eigenResiduals: eig.residuals,
        trace: { mean: trace.mean, stderr: trace.std, samples: o.traceSamples },
        rhoSharpness: rhos,
        backend,
        seconds: (performance.now() - t0) / 1000,
      };
    });
    return { result, dirOfRun: run.dir };
  } finally {
    batch.dispose();
    closeRun(run);
  }
}

const num = (v: number) => (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : v.toFixed(4));

export function formatSharpness(r: SharpnessReport): string {
  return [
    `${r.name}: ${r.examples} ${r.split} examples, loss ${num(r.loss)}`,
    `  Hessian top-${r.eigenvalues.length} eigenvalues: ${r.eigenvalues.map(num).join(', ')} ` +
      `(iterations ${r.eigenIterations.join(', ')}; relative residuals ${r.eigenResiduals.map((x) => x.toExponential(1)).join(', ')})`,
    `  Hessian trace (Hutchinson, ${r.trace.samples} probes): ${num(r.trace.mean)} ± ${num(r.trace.stderr)}`,
    ...r.rhoSharpness.map((s) => `  rho-sharpness at rho ${s.rho}: ${num(s.sharpness)} (loss ${num(r.loss)} -> ${num(s.perturbedLoss)})`),
  ].join('\n');
}
