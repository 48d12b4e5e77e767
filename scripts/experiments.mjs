#!/usr/bin/env node
// The experiments of docs/RESULTS.md (issue 16), one command each:
//
//   npm run build && node scripts/experiments.mjs <N[:part]|all|report> [--seeds 0,1,2]
//
// N is the experiment (1-5); a part (e.g. `1:mlp`, `3:cnn`, `4:cost`) runs one leg of it.
//
// Each runs the flatgrad CLI (dist/cli.js, or $FLATGRAD_CLI), printing every CLI line it runs, and
// leaves the full runs under runs/ ($FLATGRAD_RUNS). Finished runs and finished analyses are
// reused (`--resume`, existing JSON reports), so an interrupted experiment continues where it
// stopped, and rerunning with more --seeds only trains the new seeds. `report` (no training)
// aggregates whatever has finished into docs/results/: tables, CSV, JSON and SVG plots.
//
// Sizes were chosen to fit about an hour of one CPU core (wasm backend, 1 thread) in all; each
// constant below is one flag away from the full-size experiment (docs/RESULTS.md says what was cut).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const CLI = process.env.FLATGRAD_CLI ?? 'dist/cli.js';
const RUNS = process.env.FLATGRAD_RUNS ?? 'runs';
const HERE = dirname(fileURLToPath(import.meta.url));
/** One thread on the wasm backend: the machine is shared, and ratios are what we quote. */
const BACKEND = ['--backend', process.env.FLATGRAD_BACKEND ?? 'wasm', '--threads', process.env.FLATGRAD_THREADS ?? '1'];

const seedsArg = process.argv.indexOf('--seeds');
const SEEDS = (fallback) => (seedsArg > 0 ? process.argv[seedsArg + 1] : fallback);

// ---------------------------------------------------------------------------------- settings
//
// Measured here before sizing (wasm, 1 thread, batch 128, machine shared): MLP 784-256-256-10
// SGD ~8 ms/step, SAM/ASAM ~18; the small ResNet (`--model cnn`) SGD ~145 ms, SAM ~260, and 3-4x
// that while the machine was loaded. The MLP legs are the main ones; the CNN legs are one seed
// each at the end of the queue (more with --seeds).

/** The MLP on the first 10k training images for 20 epochs: long enough to fit its training set (the regime of the claim). */
const MLP_FIT = ['--model', 'mlp', '--data', 'full', '--limit-train', '10000', '--epochs', '20'];
/** The same with the standard augmentation (random crop with 4-pixel padding, horizontal flip). */
const MLP_AUG = [...MLP_FIT, '--augment', '--augment-pad', '4'];
/** The MLP on all 60k training images with crop(4) + flip for 20 epochs (9,380 steps): experiment 1 as the seed states it. */
const MLP_FULL = ['--model', 'mlp', '--data', 'full', '--augment', '--augment-pad', '4', '--epochs', '20'];
/** The small ResNet on a 2,000-image subset, tested on the first 2,000 test images (evaluation would dominate otherwise). */
const CNN_SUBSET = ['--model', 'cnn', '--data', 'full', '--limit-train', '2000', '--limit-test', '2000'];
const CNN_AUG = [...CNN_SUBSET, '--augment', '--augment-pad', '4', '--epochs', '12'];
const CNN_NOISY = [...CNN_SUBSET, '--epochs', '12'];
/**
 * The CNN long enough to leave the under-fitting regime the 2k-image runs were stuck in: the first
 * 10k training images, crop(4) + flip, 40 epochs (3,125 steps); tested on the first 5,000 test
 * images. Sized to finish three seeds of SGD, SAM and ASAM in about 1.5 hours on one core
 * (SGD 82 ms/step, SAM/ASAM ~165 ms, captured, wasm, one thread).
 */
const CNN_FIT = ['--model', 'cnn', '--data', 'full', '--limit-train', '10000', '--limit-test', '5000', '--augment', '--augment-pad', '4', '--epochs', '40'];
const NOISE_LEVELS = [0.2, 0.4, 0.6];
/** Experiment 2: the MLP on the first 8k images, no augmentation. */
const MLP_RHO = ['--model', 'mlp', '--data', 'full', '--limit-train', '8000', '--epochs', '8'];
const RHO_CONFIGS = [
  'sgd',
  ...[0.01, 0.02, 0.05, 0.1, 0.2, 0.5].map((r) => `sam:rho=${r}`),
  ...[0.1, 0.5, 1, 2].map((r) => `asam:rho=${r}`),
  // rho tied to the learning rate (GSAM's schedule): 0.1 at the peak, 0.05 on average over the cosine.
  'sam:rho=0.1:rho-schedule=lr',
];
const VARIANT_CONFIGS = ['sgd', 'sam', 'looksam', 'looksam:k=10', 'esam', 'randomsam', 'rwp', 'msam', 'gsam'];

/** Flatness measures: the MLP gets the full set; the CNN's Hessian-vector products cost ~30x more, so fewer. */
const SHARPNESS = {
  mlp: ['--k', '3', '--iters', '100', '--tol', '1e-4', '--trace-samples', '20', '--rho', '0.01,0.05,0.1', '--ascent-steps', '5', '--examples', '1000'],
  cnn: ['--k', '1', '--iters', '20', '--tol', '1e-3', '--trace-samples', '3', '--rho', '0.05', '--ascent-steps', '2', '--examples', '256'],
  /** Experiment 2 needs lambda_max only. */
  lambdaMax: ['--k', '1', '--iters', '50', '--tol', '1e-4', '--trace-samples', '1', '--rho', '0.05', '--ascent-steps', '0', '--examples', '1000'],
};
const LANDSCAPE = {
  mlp: ['--points', '41', '--range', '1', '--grid', '21', '--examples', '1000'],
  cnn: ['--points', '21', '--range', '1', '--grid', '11', '--examples', '256'],
};

/** Experiment 1's comparisons (experiment 5 analyses their solutions). */
const CONVERGENCE = {
  mlp: () => compare('exp1-mlp-fit', ['--configs', 'sgd,sam,asam', '--seeds', SEEDS('0,1,2'), ...MLP_FIT]),
  'mlp-aug': () => compare('exp1-mlp-aug', ['--configs', 'sgd,sam,asam', '--seeds', SEEDS('0,1,2'), ...MLP_AUG]),
  cnn: () => compare('exp1-cnn-aug', ['--configs', 'sgd,sam,asam', '--seeds', SEEDS('0'), ...CNN_AUG]),
  'mlp-full': () => compare('exp1-mlp-full', ['--configs', 'sgd,sam,asam', '--seeds', SEEDS('0,1,2'), ...MLP_FULL]),
  'cnn-fit': () => compare('exp1-cnn-fit', ['--configs', 'sgd,sam,asam', '--seeds', SEEDS('0,1,2'), ...CNN_FIT]),
};
const noiseName = (model, p) => `exp3-${model}-noise${Math.round(p * 100)}`;

// ------------------------------------------------------------------------------- experiments
//
// Each experiment has parts (`node scripts/experiments.mjs 1:cnn` runs one); the bare number runs all.

const experiments = {
  1: {
    title: 'Convergence: SGD, SAM, ASAM, 3 seeds; MLP fitted to 10k images with and without crop+flip, MLP on all 60k with crop+flip; CNN with crop+flip on 2k images (12 epochs) and on 10k (40 epochs)',
    parts: CONVERGENCE,
  },
  2: {
    title: 'Rho: SAM rho 0.01-0.5, ASAM rho 0.1-2, SAM with rho tied to the lr; test accuracy and lambda_max (MLP, 8k images, 2 seeds)',
    parts: {
      mlp: () => sharpnessOfRuns(compare('exp2-rho', ['--configs', RHO_CONFIGS.join(','), '--seeds', SEEDS('0,1'), ...MLP_RHO]), SHARPNESS.lambdaMax),
    },
  },
  3: {
    title: 'Label noise 20/40/60%: SGD vs SAM, clean test accuracy final and best epoch (MLP on 10k images; CNN on 2k)',
    parts: {
      mlp: () => NOISE_LEVELS.forEach((p) => compare(noiseName('mlp', p), ['--configs', 'sgd,sam', '--seeds', SEEDS('0'), '--label-noise', String(p), ...MLP_FIT])),
      cnn: () => NOISE_LEVELS.forEach((p) => compare(noiseName('cnn', p), ['--configs', 'sgd,sam', '--seeds', SEEDS('0'), '--label-noise', String(p), ...CNN_NOISY])),
    },
  },
  4: {
    title: "Efficient variants: cost per step (interleaved, MLP and CNN) against share of SAM's gain (MLP, 40% label noise)",
    parts: {
      cost: () => {
        const out = join(RUNS, 'exp4-step-cost');
        mkdirSync(out, { recursive: true });
        stepCost('mlp', ['--rounds', '7', '--steps', '10'], join(out, 'mlp.json'));
        stepCost('cnn', ['--rounds', '3', '--steps', '5'], join(out, 'cnn.json'));
      },
      // Experiment 3's 40% runs (its SGD and SAM runs are reused), plus the variants.
      mlp: () => compare(noiseName('mlp', 0.4), ['--configs', VARIANT_CONFIGS.join(','), '--seeds', SEEDS('0'), '--label-noise', '0.4', ...MLP_FIT]),
    },
  },
  5: {
    title: "Flatness of experiment 1's solutions: lambda_1..k, trace, rho-sharpness for every method and seed; 2-D landscapes for seed 0",
    parts: {
      mlp: () => flatness('mlp', 'exp1-mlp-fit', CONVERGENCE.mlp),
      'mlp-aug': () => flatness('mlp', 'exp1-mlp-aug', CONVERGENCE['mlp-aug']),
      cnn: () => flatness('cnn', 'exp1-cnn-aug', CONVERGENCE.cnn),
      'mlp-full': () => flatness('mlp', 'exp1-mlp-full', CONVERGENCE['mlp-full']),
      'cnn-fit': () => flatness('cnn', 'exp1-cnn-fit', CONVERGENCE['cnn-fit']),
    },
  },
};

/** Sharpness of every solution of one experiment-1 comparison and the seed-0 landscapes (trains what is missing first). */
function flatness(model, name, train) {
  const dir = train(); // reuses finished runs
  sharpnessOfRuns(dir, SHARPNESS[model]);
  const out = join(RUNS, 'exp5-landscape', name);
  if (existsSync(join(out, 'landscape.json'))) return;
  mkdirSync(out, { recursive: true });
  cli(['landscape', ...['sgd', 'sam', 'asam'].map((m) => join(dir, `${m}-s0`)), ...LANDSCAPE[model], ...BACKEND, '--out', out]);
}

function cli(args) {
  console.log(`\n$ node ${CLI} ${args.join(' ')}`);
  const r = spawnSync(process.execPath, [CLI, ...args], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`flatgrad ${args[0]} failed with status ${r.status}`);
}

/**
 * FLATGRAD_SMOKE=1: every run cut to 1 epoch of 256 images, tested on 500, to check the whole
 * pipeline in a minute (use another FLATGRAD_RUNS: these runs are not the experiment's).
 */
const SMOKE = process.env.FLATGRAD_SMOKE === '1';
function smoke(args) {
  const out = [];
  for (let i = 0; i < args.length; i++) {
    if (['--epochs', '--limit-train', '--limit-test'].includes(args[i])) i++;
    else out.push(args[i]);
  }
  return [...out, '--epochs', '1', '--limit-train', '256', '--limit-test', '500'];
}

function compare(name, args) {
  cli(['compare', '--name', name, '--out', RUNS, '--resume', ...(SMOKE ? smoke(args) : args), ...BACKEND]);
  return join(RUNS, name);
}

/** `flatgrad sharpness` of every finished run of a comparison, into <dir>/sharpness/<run>.json (kept: reruns skip it). */
function sharpnessOfRuns(dir, flags) {
  const { runs } = JSON.parse(readFileSync(join(dir, 'comparison.json'), 'utf8'));
  mkdirSync(join(dir, 'sharpness'), { recursive: true });
  for (const run of runs) {
    const name = run.name;
    const file = join(dir, 'sharpness', `${name}.json`);
    if (existsSync(file)) continue;
    cli(['sharpness', join(dir, name), ...flags, ...BACKEND, '--out', file]);
  }
}

function stepCost(model, flags, file) {
  if (existsSync(file)) return;
  const sizes = SMOKE ? ['--rounds', '2', '--steps', '1'] : flags;
  const args = [join(HERE, 'step-cost.mjs'), '--model', model, '--configs', VARIANT_CONFIGS.join(','), ...sizes, ...BACKEND, '--out', file];
  console.log(`\n$ FLATGRAD_CLI=${CLI} node ${args.join(' ')}`);
  const r = spawnSync(process.execPath, args, { stdio: 'inherit', env: { ...process.env, FLATGRAD_CLI: CLI } });
  if (r.status !== 0) throw new Error(`step-cost failed with status ${r.status}`);
}

// ------------------------------------------------------------------------------------- main

const which = process.argv[2] ?? 'all';
if (which === 'report') {
  const { report } = await import('./experiments-report.mjs');
  await report({ runs: RUNS, cli: CLI, rhoConfigs: RHO_CONFIGS, variantConfigs: VARIANT_CONFIGS, noiseLevels: NOISE_LEVELS, noiseName });
} else {
  /** The queue's order: cheapest first, the MLP legs before the CNN legs. */
  const ALL = ['3:mlp', '2:mlp', '1:mlp', '5:mlp', '4:cost', '4:mlp', '1:mlp-aug', '5:mlp-aug', '3:cnn', '1:cnn', '5:cnn', '1:mlp-full', '5:mlp-full', '1:cnn-fit', '5:cnn-fit'];
  const chosen = which === 'all' ? ALL : [which];
  for (const item of chosen) {
    const [id, part] = item.split(':');
    const e = experiments[id];
    const parts = e && (part ? (e.parts[part] ? [part] : []) : Object.keys(e.parts));
    if (!e || parts.length === 0) {
      console.error(`usage: node scripts/experiments.mjs <N[:part]|all|report> [--seeds 0,1,2]; N[:part] one of ${ALL.join(', ')}`);
      process.exit(2);
    }
    for (const p of parts) {
      const t0 = Date.now();
      console.log(`\n=== experiment ${id}:${p}: ${e.title} (${new Date().toISOString()})`);
      e.parts[p]();
      console.log(`=== experiment ${id}:${p} done in ${((Date.now() - t0) / 60000).toFixed(1)} min`);
    }
  }
}
