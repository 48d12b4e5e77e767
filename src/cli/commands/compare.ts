/**
 * `flatgrad compare`: several configurations over several seeds, one markdown table (mean and std
 * of test accuracy, time per step relative to SGD, the share of SAM's gain each method keeps) and
 * one plot of all the curves.
 */
import { readFile, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { UsageError, kebab, listFlag, parseNumber, parseOverrides, stringFlag, switchFlag, type FlagValues } from '../args.js';
import { OPTIMIZERS, RUN_FLAGS, TRAIN_FLAGS, WRAPPERS, WRAPPER_DEFAULTS, WRAPPER_PARAMS, resolveTrainConfig, type WrapperName, type WrapperParam } from '../config.js';
import type { CliIO } from '../io.js';
import { toCsv, writeJson, writeLineChart, writeText } from '../report.js';
import { CHECKPOINT_FILE } from '../restore.js';
import { resolvePath, startBackend, type BackendFacts } from '../runtime.js';
import { formatSummaryLine, runTraining, type RunSummary } from '../training.js';
import { defineCommand } from './define.js';
import { checkRunName, describeConfig } from './train.js';

const { seed: _seed, ...BASE_FLAGS } = TRAIN_FLAGS;
type BaseValues = FlagValues<typeof TRAIN_FLAGS>;

const METHODS = [...OPTIMIZERS, ...WRAPPERS.filter((w) => w !== 'none')];

export interface ConfigSpec {
  /** As given, e.g. `sam:rho=0.1`. */
  label: string;
  values: BaseValues;
  given: Set<string>;
}

/**
 * `method[:flag=value...]`: method is sgd or adamw (no wrapper) or a wrapper's name (over the
 * --optimizer given); the overrides are train flags. A wrapper hyper-parameter given as a
 * top-level flag applies to the configurations whose wrapper uses it.
 */
export function parseConfigSpec(spec: string, base: BaseValues, baseGiven: ReadonlySet<string>, seed: number): ConfigSpec {
  const [method, ...rest] = spec.split(':');
  if (!(METHODS as readonly string[]).includes(method)) {
    throw new UsageError(`--configs: unknown method '${method}' in '${spec}'; expected one of ${METHODS.join(', ')}`);
  }
  const methodValues = (OPTIMIZERS as readonly string[]).includes(method)
    ? { optimizer: method as BaseValues['optimizer'], wrapper: 'none' as const }
    : { wrapper: method as BaseValues['wrapper'] };
  const overrides = parseOverrides(rest.join(':'), BASE_FLAGS, `--configs item '${spec}'`);
  const wrapper = methodValues.wrapper;
  const given = new Set([...baseGiven].filter((k) => !isWrapperParam(k) || k in WRAPPER_DEFAULTS[wrapper]));
  for (const k of Object.keys(overrides)) given.add(k);
  return { label: spec, values: { ...base, ...methodValues, ...overrides, seed } as BaseValues, given };
}

function isWrapperParam(k: string): k is WrapperParam {
  return k in WRAPPER_PARAMS;
}

const asSeed = (raw: string, flag: string) => parseNumber(raw, flag, { integer: true, min: 0 });
const asSpec = (raw: string) => raw;

export const compareCommand = defineCommand({
  name: 'compare',
  summary: 'train several configurations over several seeds; markdown table of test accuracy and cost, one plot of all curves',
  synopsis: '[flags]',
  positionals: { min: 0, max: 0, names: '' },
  flags: {
    configs: listFlag(asSpec, `methods to compare, each 'method[:flag=value...]' (methods: ${METHODS.join(', ')})`, {
      default: ['sgd', 'sam', 'asam'],
      placeholder: '<sgd,sam:rho=0.1,...>',
    }),
    seeds: listFlag(asSeed, 'seeds to run each configuration with', { default: [0], placeholder: '<0,1,2>' }),
    ...BASE_FLAGS,
    name: stringFlag('comparison name: files go to <out>/<name>/', { default: 'compare' }),
    out: stringFlag('directory for runs', { default: 'runs', placeholder: '<dir>' }),
    resume: switchFlag('reuse finished runs and resume unfinished ones from their checkpoints (same configuration only)'),
    checkpointEvery: RUN_FLAGS.checkpointEvery,
  },
  notes: 'example: flatgrad compare --configs sgd,sam,asam:rho=1 --seeds 0,1,2 --epochs 10 --data full',
  async run({ flags, given }, io) {
    const name = checkRunName(flags.name);
    const labels = flags.configs;
    const dup = labels.find((l, i) => labels.indexOf(l) !== i);
    if (dup) throw new UsageError(`--configs lists '${dup}' twice`);
    const dupSeed = flags.seeds.find((s, i) => flags.seeds.indexOf(s) !== i);
    if (dupSeed !== undefined) throw new UsageError(`--seeds lists ${dupSeed} twice`);
    const base = { ...flags, seed: 0 } as unknown as BaseValues;
    const methods = labels.map((l) => l.split(':')[0]);
    for (const k of given as Set<string>) {
      if (isWrapperParam(k) && !methods.some((m) => (WRAPPERS as readonly string[]).includes(m) && k in WRAPPER_DEFAULTS[m as WrapperName])) {
        throw new UsageError(`--${kebab(k)} applies to none of the configurations ${labels.join(', ')}`);
      }
    }
    // Seed-major order: load from other work on the machine then falls on every method alike.
    const plan = flags.seeds.flatMap((seed) =>
      labels.map((label) => {
        const spec = parseConfigSpec(label, base, given as Set<string>, seed);
        return { label, seed, config: resolveTrainConfig(spec.values, spec.given) };
      }),
    );
    const dir = join(await resolvePath(io, flags.out), name);
    const backend = await startBackend(flags.backend, flags.threads, io);
    const results: { label: string; summary: RunSummary }[] = [];
    for (const [i, item] of plan.entries()) {
      const runName = `${sanitize(item.label)}-s${item.seed}`;
      const runDir = join(dir, runName);
      io.stderr.write(`[${i + 1}/${plan.length}] ${runName}: ${describeConfig(item.config)}\n`);
      const resume = flags.resume && (await hasCheckpoint(runDir));
      const summary = await runTraining(item.config, { dir: runDir, name: runName, resume, sameConfig: true, checkpointEvery: flags.checkpointEvery }, backend, io);
      io.stderr.write(formatSummaryLine(summary) + '\n');
      results.push({ label: item.label, summary });
    }
    const table = await writeComparison(dir, name, labels, results, backend);
    io.stdout.write(`\n${table.markdown}\n`);
    io.stdout.write(`table: ${table.files.markdown}\nplots: ${table.files.plots.join(', ')}\nruns:  ${dir}/<config>-s<seed>/\n`);
  },
});

const hasCheckpoint = (runDir: string) => stat(join(runDir, CHECKPOINT_FILE)).then(() => true, () => false);

const sanitize = (label: string) => label.replace(/[^\w.=-]+/g, '_');

export interface MethodStats {
  label: string;
  seeds: number[];
  testAccuracy: { mean: number; std: number };
  /** Mean over seeds of the best test accuracy of any epoch (what early stopping on the test set would give). */
  bestTestAccuracy: number;
  trainAccuracy: number;
  testLoss: number;
  /** Mean over seeds of each run's median epoch ms/step. */
  msPerStep: number;
  /** Time per step over the baseline's (SGD's when it is compared). */
  relativeTime: number;
  /** (acc - acc_sgd) / (acc_sam - acc_sgd) for the other methods, when SGD and SAM are compared and SAM gained. */
  gainKept: number | null;
  skippedSteps: number;
}

export function meanStd(xs: number[]): { mean: number; std: number } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const std = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1)) : 0;
  return { mean, std };
}

/** Aggregates runs by configuration; the baseline for time is the plain 'sgd' configuration if any, else the first. */
export function aggregate(labels: string[], results: { label: string; summary: RunSummary }[]): MethodStats[] {
  const mean = (xs: number[]) => meanStd(xs).mean;
  const rows = labels.map((label) => {
    const runs = results.filter((r) => r.label === label).map((r) => r.summary);
    return {
      label,
      seeds: runs.map((r) => r.config.seed),
      testAccuracy: meanStd(runs.map((r) => r.final.testAccuracy)),
      bestTestAccuracy: mean(runs.map((r) => r.bestTestAccuracy)),
      trainAccuracy: mean(runs.map((r) => r.final.trainAccuracy)),
      testLoss: mean(runs.map((r) => r.final.testLoss)),
      msPerStep: mean(runs.map((r) => r.msPerStepMedian)),
      skippedSteps: runs.reduce((a, r) => a + r.skippedSteps, 0),
    };
  });
  const baseline = rows.find((r) => r.label === 'sgd') ?? rows[0];
  const sam = rows.find((r) => r.label === 'sam');
  const sgd = rows.find((r) => r.label === 'sgd');
  const gap = sam && sgd ? sam.testAccuracy.mean - sgd.testAccuracy.mean : 0;
  return rows.map((r) => ({
    ...r,
    relativeTime: r.msPerStep / baseline.msPerStep,
    gainKept: sam && sgd && gap > 0 && r !== sgd && r !== sam ? (r.testAccuracy.mean - sgd.testAccuracy.mean) / gap : null,
  }));
}

/** What SAM gained over SGD, so that a reader can judge the shares computed from it. */
export function samGainNote(rows: MethodStats[]): string {
  const sam = rows.find((r) => r.label === 'sam');
  const sgd = rows.find((r) => r.label === 'sgd');
  if (!sam || !sgd) return '';
  const gap = (sam.testAccuracy.mean - sgd.testAccuracy.mean) * 100;
  const stderr = Math.hypot(sam.testAccuracy.std / Math.sqrt(sam.seeds.length), sgd.testAccuracy.std / Math.sqrt(sgd.seeds.length)) * 100;
  const share = gap > 0 ? "share of SAM's gain = (acc - acc_sgd) / (acc_sam - acc_sgd)" : "SAM did not gain, so no share of its gain is computed";
  return `SAM - SGD: ${gap >= 0 ? '+' : ''}${gap.toFixed(2)} points of test accuracy (standard error over seeds ${stderr.toFixed(2)}); ${share}.`;
}

export function markdownTable(rows: MethodStats[], baselineLabel: string): string {
  const pct = (v: number) => (v * 100).toFixed(2);
  const hasGain = rows.some((r) => r.gainKept !== null);
  const header = ['method', 'seeds', 'test acc % (mean ± std)', 'test error %', 'best-epoch test acc %', 'train acc %', 'test loss', 'ms/step (median epoch)', `time/step vs ${baselineLabel}`];
  if (hasGain) header.push("share of SAM's gain");
  header.push('skipped steps');
  const lines = [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`];
  for (const r of rows) {
    const cells = [
      r.label,
      String(r.seeds.length),
      `${pct(r.testAccuracy.mean)} ± ${pct(r.testAccuracy.std)}`,
      pct(1 - r.testAccuracy.mean),
      pct(r.bestTestAccuracy),
      pct(r.trainAccuracy),
      r.testLoss.toFixed(4),
      r.msPerStep.toFixed(1),
      `${r.relativeTime.toFixed(2)}x`,
    ];
    if (hasGain) cells.push(r.gainKept === null ? '' : `${(r.gainKept * 100).toFixed(0)}%`);
    cells.push(String(r.skippedSteps));
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

/** Mean over seeds of a per-epoch curve (runs of one configuration share their epoch grid). */
function meanCurve(histories: { epoch: number; value: number }[][]): { x: number[]; y: number[] } {
  if (histories.length === 0) return { x: [], y: [] };
  const n = Math.min(...histories.map((h) => h.length));
  const x = histories[0].slice(0, n).map((p) => p.epoch);
  return { x, y: x.map((_, i) => meanStd(histories.map((h) => h[i].value)).mean) };
}

async function readEpochCurves(summary: RunSummary): Promise<{ epoch: number; testAccuracy: number; trainLoss: number; testLoss: number }[]> {
  const text = await readFile(join(summary.dir, 'metrics.csv'), 'utf8');
  const [head, ...lines] = text.trim().split('\n');
  const cols = head.split(',');
  const col = (row: string[], name: string) => Number(row[cols.indexOf(name)]);
  const rows = lines.map((l) => l.split(','));
  return [
    { epoch: 0, testAccuracy: summary.initial.testAccuracy, trainLoss: NaN, testLoss: summary.initial.testLoss },
    ...rows.map((r) => ({ epoch: col(r, 'epoch'), testAccuracy: col(r, 'test_accuracy'), trainLoss: col(r, 'train_loss'), testLoss: col(r, 'test_loss') })),
  ];
}

async function writeComparison(
  dir: string,
  name: string,
  labels: string[],
  results: { label: string; summary: RunSummary }[],
  backend: BackendFacts,
): Promise<{ markdown: string; files: { markdown: string; plots: string[] } }> {
  const rows = aggregate(labels, results);
  const baselineLabel = rows.find((r) => r.label === 'sgd')?.label ?? rows[0].label;
  const first = results[0].summary;
  const setup =
    `${first.config.model} on ${first.data.train} training / ${first.data.test} test images (${first.data.dir})` +
    `${first.config.labelNoise ? `, ${first.config.labelNoise * 100}% label noise` : ''}, ${first.config.epochs} epochs, batch ${first.config.batchSize}, ` +
    `${backend.backend} backend (${backend.adapter})`;
  const note = samGainNote(rows);
  const markdown = `### ${name}\n\n${setup}\n\n${markdownTable(rows, baselineLabel)}\n${note ? `\n${note}\n` : ''}`;
  const curves = await Promise.all(results.map(async (r) => ({ label: r.label, summary: r.summary, curve: await readEpochCurves(r.summary) })));
  const series = (key: 'testAccuracy' | 'trainLoss' | 'testLoss') =>
    labels.map((label, colorIndex) => {
      const mine = curves.filter((c) => c.label === label);
      return { name: label, points: true, colorIndex, ...meanCurve(mine.map((m) => m.curve.map((p) => ({ epoch: p.epoch, value: p[key] })))) };
    });
  const seedsNote = `mean over seeds ${[...new Set(results.map((r) => r.summary.config.seed))].join(', ')}`;
  const plots = [
    await writeLineChart(join(dir, 'curves'), { title: `${name}: test accuracy (${seedsNote})`, xLabel: 'epoch', yLabel: 'test accuracy', series: series('testAccuracy') }),
    await writeLineChart(join(dir, 'curves-loss'), {
      title: `${name}: training loss (solid) and test loss (dashed)`,
      xLabel: 'epoch',
      yLabel: 'cross-entropy',
      series: [
        ...series('trainLoss').map((s) => ({ ...s, name: `${s.name} train`, x: s.x.slice(1), y: s.y.slice(1) })),
        ...series('testLoss').map((s) => ({ ...s, name: `${s.name} test`, dashed: true })),
      ],
    }),
  ];
  const mdPath = join(dir, 'comparison.md');
  await writeText(mdPath, markdown);
  await writeJson(join(dir, 'comparison.json'), { setup, backend, rows, runs: results.map((r) => ({ label: r.label, ...r.summary })) });
  await writeText(
    join(dir, 'runs.csv'),
    toCsv(results.map((r) => ({
      config: r.label, seed: r.summary.config.seed, test_accuracy: r.summary.final.testAccuracy, train_accuracy: r.summary.final.trainAccuracy,
      test_loss: r.summary.final.testLoss, ms_per_step: r.summary.msPerStep, ms_per_step_median_epoch: r.summary.msPerStepMedian, skipped_steps: r.summary.skippedSteps, dir: relative(dir, r.summary.dir),
    }))),
  );
  return { markdown, files: { markdown: mdPath, plots } };
}
