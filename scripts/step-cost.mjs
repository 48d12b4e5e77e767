#!/usr/bin/env node
// Cost per training step of several `flatgrad compare` configurations, measured interleaved in
// one process: rounds of --steps steps per configuration, round-robin, so that load from other
// work on the machine falls on every method alike; the first round is a warm-up and is dropped.
// Reported: the median over rounds of each configuration's ms/step and its ratio to the first
// configuration's (put sgd first). The steps are the CLI's own (`buildTrainer(...).step`), on one
// fixed random batch of real shape, so the figure is what `flatgrad train` pays per step, without
// data loading and evaluation.
//
//   node scripts/step-cost.mjs --model cnn --configs sgd,sam,looksam:k=10 --rounds 5 --steps 2 --out cost.json
//
// Uses the built CLI modules next to $FLATGRAD_CLI (default dist/cli.js).
import { writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const CLI = resolve(process.env.FLATGRAD_CLI ?? 'dist/cli.js');
const dist = dirname(CLI);
const load = (p) => import(pathToFileURL(join(dist, p)).href);
const [{ init, tensor, tidy }, { parseFlags, parseNumber }, config, { parseConfigSpec }, { buildModel }, { buildTrainer }] = await Promise.all([
  load('index.js'),
  load('cli/args.js'),
  load('cli/config.js'),
  load('cli/commands/compare.js'),
  load('cli/models.js'),
  load('cli/optimizers.js'),
]);

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const model = option('model', 'mlp');
const configs = option('configs', 'sgd,sam').split(',');
const rounds = parseNumber(option('rounds', '5'), 'rounds', { integer: true, min: 2 });
const steps = parseNumber(option('steps', '5'), 'steps', { integer: true, min: 1 });
const batch = parseNumber(option('batch-size', '128'), 'batch-size', { integer: true, min: 1 });
const backend = option('backend', 'wasm');
const threads = parseNumber(option('threads', '1'), 'threads', { integer: true, min: 1 });
const out = option('out', null);

const info = await init({ backend, threads });
// The same flag parsing as `flatgrad compare`, so that a label means the same configuration.
const base = parseFlags(['--model', model, '--batch-size', String(batch), '--backend', backend], config.TRAIN_FLAGS);
const stepsPerEpoch = 100;
const methods = configs.map((label) => {
  const spec = parseConfigSpec(label, base.flags, base.given, 0);
  const cfg = config.resolveTrainConfig(spec.values, spec.given);
  const net = buildModel(cfg, 10);
  net.train();
  return { label, trainer: buildTrainer(cfg, net, stepsPerEpoch), times: [] };
});

// One fixed batch (values do not change the work done by any of these steps).
let s = 12345;
const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
const xs = new Float32Array(batch * 28 * 28).map(() => rand() * 2 - 1);
const ys = new Int32Array(batch).map(() => Math.floor(rand() * 10));

async function timeSteps(m) {
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) {
    const stats = tidy(() => {
      const r = m.trainer.step(tensor(xs, { shape: [batch, 1, 28, 28] }), tensor(ys));
      return r.loss.add(r.correct.to(r.loss.dtype).mul(0));
    });
    m.trainer.advance();
    await stats.data(); // waits for the step's work on asynchronous backends
    stats.dispose();
  }
  return (performance.now() - t0) / steps;
}

for (let r = 0; r < rounds; r++) {
  for (const m of methods) {
    const ms = await timeSteps(m);
    if (r > 0) m.times.push(ms);
  }
  process.stderr.write(`round ${r + 1}/${rounds}${r === 0 ? ' (warm-up, dropped)' : ''}: ${methods.map((m) => `${m.label} ${(m.times.at(-1) ?? NaN).toFixed(1)}`).join(', ')}\n`);
}

const median = (xs) => {
  const a = [...xs].sort((p, q) => p - q);
  return a.length % 2 ? a[(a.length - 1) / 2] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2;
};
const rows = methods.map((m) => ({ config: m.label, msPerStep: median(m.times), rounds: m.times }));
for (const row of rows) row.relative = row.msPerStep / rows[0].msPerStep;
const result = { model, batch, backend: info.name, adapter: info.adapter, threads, rounds: rounds - 1, stepsPerRound: steps, baseline: rows[0].config, rows };
const table = [
  `| config | ms/step (median of ${rounds - 1} rounds of ${steps}) | vs ${rows[0].config} |`,
  '| --- | --- | --- |',
  ...rows.map((r) => `| ${r.config} | ${r.msPerStep.toFixed(1)} | ${r.relative.toFixed(2)}x |`),
].join('\n');
console.log(`${model}, batch ${batch}, ${info.name} (${info.adapter}), ${threads} thread(s)\n\n${table}`);
if (out) writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
