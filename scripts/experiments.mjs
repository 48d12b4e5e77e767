#!/usr/bin/env node
// The experiments of docs/RESULTS.md, one command each:
//
//   npm run build && node scripts/experiments.mjs <1|2|3|4|all>
//
// Each runs the flatgrad CLI (dist/cli.js, or $FLATGRAD_CLI), leaves the full runs under runs/,
// and copies the tables, JSON and plots into docs/results/exp<N>/. Finished runs are reused
// (--resume), so an interrupted experiment continues where it stopped.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const CLI = process.env.FLATGRAD_CLI ?? 'dist/cli.js';
const RUNS = 'runs';
const RESULTS = 'docs/results';
const BACKEND = process.env.FLATGRAD_BACKEND ?? 'auto';

/** Experiment 1's runs; experiment 3 analyses their seed-0 solutions. */
const GENERALIZATION = ['--data', 'full', '--epochs', '6', '--model', 'mlp', '--batch-size', '128', '--backend', BACKEND];
/**
 * Experiments 2 and 4: 40% symmetric label noise on 10k training images for 30 epochs, long
 * enough for SGD to start memorizing the wrong labels, so that SAM has a gain to share out.
 */
const NOISY = ['--label-noise', '0.4', '--data', 'full', '--limit-train', '10000', '--epochs', '30', '--backend', BACKEND];

const experiments = {
  1: {
    title: 'Generalization: SGD vs SAM vs ASAM on full Fashion-MNIST (MLP, 3 seeds)',
    run: () => compare('exp1-generalization', ['--configs', 'sgd,sam,asam', '--seeds', '0,1,2', ...GENERALIZATION]),
  },
  2: {
    title: 'Label noise: SGD vs SAM vs ASAM with 40% symmetric noise (10k training images, 3 seeds)',
    run: () => compare('exp2-label-noise', ['--configs', 'sgd,sam,asam', '--seeds', '0,1,2', ...NOISY]),
  },
  3: {
    title: 'Flatness: Hessian spectrum, trace, rho-sharpness and 1-D landscapes of the SGD, SAM and ASAM solutions of experiment 1',
    run: flatness,
  },
  4: {
    title: 'Cost against benefit: the variants against SGD and SAM, in the label-noise setting of experiment 2 (3 seeds)',
    // SGD and SAM run again here so that every time ratio is measured side by side in one process.
    run: () => compare('exp4-cost-benefit', ['--configs', 'sgd,sam,looksam,esam,randomsam,rwp,msam,gsam', '--seeds', '0,1,2', ...NOISY]),
  },
};

function cli(args) {
  console.log(`\n$ node ${CLI} ${args.join(' ')}`);
  const r = spawnSync(process.execPath, [CLI, ...args], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`flatgrad ${args[0]} failed with status ${r.status}`);
}

function collect(exp, files) {
  const dest = join(RESULTS, `exp${exp}`);
  mkdirSync(dest, { recursive: true });
  for (const [from, to] of files) if (existsSync(from)) copyFileSync(from, join(dest, to));
  return dest;
}

const chart = (dir, base) => [`${base}.svg`, `${base}.vl.json`].map((f) => [join(dir, f), f]);

function compare(name, args) {
  cli(['compare', '--name', name, '--out', RUNS, '--resume', ...args]);
  const dir = join(RUNS, name);
  const exp = name.match(/^exp(\d)/)[1];
  return collect(exp, [
    [join(dir, 'comparison.md'), 'comparison.md'],
    [join(dir, 'runs.csv'), 'runs.csv'],
    ...chart(dir, 'curves'),
    ...chart(dir, 'curves-loss'),
  ]);
}

function flatness() {
  const dir = join(RUNS, 'exp1-generalization');
  const methods = ['sgd', 'sam', 'asam'];
  // The seed-0 runs of experiment 1 (trained here if experiment 1 has not run).
  for (const m of methods) {
    const method = m === 'sgd' ? [] : ['--wrapper', m];
    cli(['train', ...method, ...GENERALIZATION, '--seed', '0', '--name', `${m}-s0`, '--out', dir, '--resume']);
  }
  const out = join(RUNS, 'exp3-flatness');
  mkdirSync(out, { recursive: true });
  const reports = methods.map((m) => {
    const file = join(out, `sharpness-${m}.json`);
    cli(['sharpness', join(dir, `${m}-s0`), '--k', '3', '--iters', '300', '--tol', '1e-5', '--trace-samples', '50', '--rho', '0.01,0.05,0.1', '--ascent-steps', '5', '--examples', '1000', '--backend', BACKEND, '--out', file]);
    return { method: m, ...JSON.parse(readFileSync(file, 'utf8')) };
  });
  cli(['landscape', ...methods.map((m) => join(dir, `${m}-s0`)), '--points', '41', '--range', '1', '--grid', '21', '--examples', '1000', '--backend', BACKEND, '--out', out]);
  writeFileSync(join(out, 'flatness.md'), flatnessTable(reports));
  return collect(3, [
    [join(out, 'flatness.md'), 'flatness.md'],
    ...methods.map((m) => [join(out, `sharpness-${m}.json`), `sharpness-${m}.json`]),
    [join(out, 'landscape.json'), 'landscape.json'],
    ...chart(out, 'landscape-1d'),
    ...methods.flatMap((m) => chart(out, `landscape-2d-${m}-s0`)),
  ]);
}

function flatnessTable(reports) {
  const rhos = reports[0].rhoSharpness.map((s) => s.rho);
  const head = ['method', 'train loss (1000 ex.)', 'lambda_1', 'lambda_2', 'lambda_3', 'max relative residual', 'trace (Hutchinson)', ...rhos.map((r) => `rho-sharpness ${r}`)];
  const f = (v) => (Math.abs(v) >= 100 ? v.toFixed(1) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(4));
  const rows = reports.map((r) => [
    r.method, f(r.loss), ...r.eigenvalues.map(f), Math.max(...r.eigenResiduals).toExponential(1), `${f(r.trace.mean)} ± ${f(r.trace.stderr)}`,
    ...r.rhoSharpness.map((s) => f(s.sharpness)),
  ]);
  return [head, head.map(() => '---'), ...rows].map((row) => `| ${row.join(' | ')} |`).join('\n') + '\n';
}

const which = process.argv[2] ?? 'all';
const chosen = which === 'all' ? Object.keys(experiments) : [which];
for (const id of chosen) {
  const e = experiments[id];
  if (!e) {
    console.error(`usage: node scripts/experiments.mjs <${Object.keys(experiments).join('|')}|all>`);
    process.exit(2);
  }
  const t0 = Date.now();
  console.log(`\n=== experiment ${id}: ${e.title}`);
  const dest = e.run();
  console.log(`=== experiment ${id} done in ${((Date.now() - t0) / 60000).toFixed(1)} min; results in ${dest}`);
}
