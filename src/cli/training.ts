/**
 * One training run: data, model and optimizer from a TrainConfig, the epoch loop with its progress
 * bar, test evaluation after each epoch, and the run directory: metrics.csv, steps.csv,
 * summary.json, checkpoint.safetensors and the loss and accuracy plots.
 */
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { evaluate } from '../analysis/index.js';
import { DataLoader, cropAndFlip } from '../data/index.js';
import { disposeCheckpoint, loadCheckpoint, saveCheckpoint, type StateTree } from '../io/checkpoint.js';
import { tensor } from '../tensor/creation.js';
import { stack } from '../tensor/ops/shape.js';
import { generator, manualSeed } from '../tensor/random.js';
import { dispose, tidy, type Tensor } from '../tensor/tensor.js';
import { LEGACY_AUGMENT_PAD, type TrainConfig } from './config.js';
import { loadRunData } from './data.js';
import type { CliIO } from './io.js';
import { buildModel } from './models.js';
import { buildTrainer } from './optimizers.js';
import { ProgressBar, formatDuration } from './progress.js';
import { toCsv, writeJson, writeLineChart, writeText } from './report.js';
import { CHECKPOINT_FILE, isTrainConfig } from './restore.js';
import type { BackendFacts } from './runtime.js';

export interface EpochMetrics {
  epoch: number;
  steps: number;
  lr: number;
  trainLoss: number;
  trainAccuracy: number;
  testLoss: number;
  testAccuracy: number;
  epochSeconds: number;
  msPerStep: number;
  skippedSteps: number;
}

/** Running training loss and accuracy over a window of steps; `epoch` is fractional. */
export interface StepPoint {
  epoch: number;
  step: number;
  trainLoss: number;
  trainAccuracy: number;
}

export interface RunSummary {
  name: string;
  dir: string;
  config: TrainConfig;
  backend: BackendFacts;
  data: { dir: string; train: number; test: number; noisyLabels: number };
  epochs: number;
  steps: number;
  final: { trainLoss: number; trainAccuracy: number; testLoss: number; testAccuracy: number };
  bestTestAccuracy: number;
  /** Seconds in training steps (evaluation and file writing excluded), across resumes. */
  trainSeconds: number;
  msPerStep: number;
  /**
   * The median over epochs of each epoch's ms/step: on a machine shared with other work, load
   * spikes land in some epochs, and the median keeps them out of cost comparisons.
   */
  msPerStepMedian: number;
  /** Steps skipped because a gradient held NaN or Inf. */
  skippedSteps: number;
  wallSeconds: number;
  /** The test evaluation before the first step (epoch 0). */
  initial: { testLoss: number; testAccuracy: number };
  files: Record<string, string>;
}

interface History {
  epochs: EpochMetrics[];
  points: StepPoint[];
  initial: { testLoss: number; testAccuracy: number };
  trainSeconds: number;
  wallSeconds: number;
}

export interface RunTarget {
  dir: string;
  name: string;
  resume: boolean;
  /** When resuming, refuse a checkpoint trained with another configuration (backend and threads aside). */
  sameConfig?: boolean;
  /** Also write the checkpoint after every this many steps (it is always written at each epoch's end). */
  checkpointEvery?: number;
  /** Called after each training step with the number of steps taken in the run so far (embedders' progress). */
  onStep?: (step: number) => void;
}

/**
 * Where a run stands, saved in each checkpoint: the data loader's position (the next batch of
 * `epoch`; an epoch's order and augmentation are pure functions of (seed, epoch, batch)) and the
 * running totals of the unfinished epoch, so that a run killed mid-epoch and resumed from its last
 * checkpoint continues exactly there, bit for bit on the CPU.
 */
interface Position {
  epoch: number;
  batch: number;
  /** The learning rate the epoch started with (its metrics row reports it). */
  lr: number;
  totals: Totals;
  window: Totals;
  /** Seconds of training steps already spent in this epoch. */
  seconds: number;
}

interface Totals {
  loss: number;
  correct: number;
  seen: number;
}

/** Readbacks are batched: one per this many steps (or per progress redraw), not one per step. */
const READ_EVERY = 8;
const POINTS_PER_EPOCH = 10;
/** Large enough to be quick, small enough that a CNN's im2col buffers stay modest. */
const EVAL_BATCH = 500;

async function exists(p: string): Promise<boolean> {
  return !!(await stat(p).catch(() => null));
}

export async function runTraining(requested: TrainConfig, target: RunTarget, backend: BackendFacts, io: CliIO): Promise<RunSummary> {
  const wallStart = performance.now();
  await mkdir(target.dir, { recursive: true });
  const ckptPath = join(target.dir, CHECKPOINT_FILE);
  const saved = target.resume && (await exists(ckptPath)) ? await loadCheckpoint(ckptPath) : null;
  if (target.resume && !saved) io.stderr.write(`${target.name}: no checkpoint in ${target.dir}, starting from scratch\n`);
  if (saved && !isTrainConfig(saved.meta.config)) throw new Error(`${ckptPath}: the checkpoint holds no training config`);
  if (saved && target.sameConfig) checkSameConfig(ckptPath, saved.meta.config as unknown as TrainConfig, requested);
  // A resumed run keeps the configuration it was started with (its schedules depend on it).
  const cfg: TrainConfig = saved ? { ...(saved.meta.config as unknown as TrainConfig), backend: requested.backend, threads: requested.threads } : requested;
  // How steps run (--eager or captured) is this invocation's choice, as the backend is.
  if (saved) {
    delete cfg.eager;
    if (requested.eager) cfg.eager = true;
  }

  const data = await loadRunData(cfg);
  manualSeed(cfg.seed);
  const model = buildModel(cfg, data.numClasses);
  const dropLast = data.train.length >= cfg.batchSize;
  const loader = new DataLoader(data.train, { batchSize: cfg.batchSize, shuffle: true, seed: cfg.seed, dropLast, transform: cfg.augment ? cropAndFlip(cfg.augmentPad ?? LEGACY_AUGMENT_PAD) : undefined });
  const testBatches = () => new DataLoader(data.test, { batchSize: EVAL_BATCH }).batches(0);
  const stepsPerEpoch = loader.length;
  const trainer = buildTrainer(cfg, model, stepsPerEpoch, { onMessage: (m) => io.stderr.write(`${m}\n`) });

  let history: History;
  let position: Position | null = null;
  if (saved) {
    model.loadStateDict(saved.model);
    trainer.loadStateDict(saved.optimizer as Record<string, unknown>);
    generator.setState(saved.rng as { seed: number; draws: number });
    history = saved.meta.history as unknown as History;
    position = (saved.meta.position as unknown as Position | undefined) ?? null;
    disposeCheckpoint(saved);
    const done = history.epochs.length;
    io.stderr.write(
      done >= cfg.epochs
        ? `${target.name}: already finished (${done} epochs)\n`
        : position
          ? `${target.name}: resuming in epoch ${position.epoch + 1} of ${cfg.epochs} at step ${position.batch} of ${stepsPerEpoch}\n`
          : `${target.name}: resuming after epoch ${done} of ${cfg.epochs}\n`,
    );
  } else {
    const initial = await evaluate(model, testBatches());
    history = { epochs: [], points: [], initial: { testLoss: initial.loss, testAccuracy: initial.accuracy }, trainSeconds: 0, wallSeconds: 0 };
  }
  const wallBefore = history.wallSeconds;

  const files = {
    metrics: join(target.dir, 'metrics.csv'),
    steps: join(target.dir, 'steps.csv'),
    summary: join(target.dir, 'summary.json'),
    checkpoint: ckptPath,
    lossPlot: join(target.dir, 'loss.svg'),
    accuracyPlot: join(target.dir, 'accuracy.svg'),
  };

  const save = async (at: Position | null): Promise<void> => {
    history.wallSeconds = wallBefore + (performance.now() - wallStart) / 1000;
    const meta: Record<string, StateTree> = { config: cfg as unknown as StateTree, name: target.name, numClasses: data.numClasses, history: history as unknown as StateTree };
    if (at) meta.position = at as unknown as StateTree;
    await saveCheckpoint(ckptPath, { model: model.stateDict(), optimizer: trainer.stateDict() as StateTree, rng: generator.getState(), meta });
  };

  // A checkpoint written mid-epoch resumes in that epoch; one written at an epoch's end, after it.
  const firstEpoch = position ? position.epoch : history.epochs.length;
  for (let epoch = firstEpoch; epoch < cfg.epochs; epoch++) {
    model.train();
    const resumeAt = position && position.epoch === epoch ? position : null;
    const bar = new ProgressBar(io.stderr, { total: stepsPerEpoch, label: `${target.name} epoch ${epoch + 1}/${cfg.epochs}` });
    const epochStart = performance.now() - (resumeAt?.seconds ?? 0) * 1000;
    const lr = resumeAt?.lr ?? trainer.currentLr();
    const totals: Totals = { ...(resumeAt?.totals ?? { loss: 0, correct: 0, seen: 0 }) };
    const windowTotals: Totals = { ...(resumeAt?.window ?? { loss: 0, correct: 0, seen: 0 }) };
    const pointEvery = Math.max(1, Math.floor(stepsPerEpoch / POINTS_PER_EPOCH));
    let pending: { stats: Tensor; size: number }[] = [];
    let done = resumeAt?.batch ?? 0;

    const drain = async () => {
      if (pending.length === 0) return;
      const all = tidy(() => stack(pending.map((p) => p.stats)));
      const values = await all.data();
      all.dispose();
      pending.forEach((p, i) => {
        const [loss, correct] = [values[2 * i], values[2 * i + 1]];
        for (const t of [totals, windowTotals]) {
          t.loss += loss * p.size;
          t.correct += correct;
          t.seen += p.size;
        }
        const step = done - pending.length + i + 1;
        if (step % pointEvery === 0 || step === stepsPerEpoch) {
          history.points.push({
            epoch: epoch + step / stepsPerEpoch,
            step: epoch * stepsPerEpoch + step,
            trainLoss: windowTotals.loss / windowTotals.seen,
            trainAccuracy: windowTotals.correct / windowTotals.seen,
          });
          Object.assign(windowTotals, { loss: 0, correct: 0, seen: 0 });
        }
      });
      dispose(pending.map((p) => p.stats));
      pending = [];
      bar.update(done, { loss: totals.loss / totals.seen, accuracy: totals.correct / totals.seen });
    };

    for (const b of loader.batches(epoch, done)) {
      const stats = tidy(() => {
        const r = trainer.step(tensor(b.x, { shape: b.xShape }), tensor(b.y));
        return stack([r.loss, r.correct.to(r.loss.dtype)]);
      });
      trainer.advance();
      pending.push({ stats, size: b.y.length });
      done++;
      const step = epoch * stepsPerEpoch + done;
      if (pending.length >= READ_EVERY) await drain();
      if (target.checkpointEvery && step % target.checkpointEvery === 0 && done < stepsPerEpoch) {
        await drain();
        const seconds = (performance.now() - epochStart) / 1000;
        await save({ epoch, batch: done, lr, totals: { ...totals }, window: { ...windowTotals }, seconds });
      }
      target.onStep?.(step);
    }
    await drain();
    const epochSeconds = (performance.now() - epochStart) / 1000;
    history.trainSeconds += epochSeconds;

    const test = await evaluate(model, testBatches());
    const skippedSteps = await trainer.skippedSteps();
    const row: EpochMetrics = {
      epoch: epoch + 1,
      steps: (epoch + 1) * stepsPerEpoch,
      lr,
      trainLoss: totals.loss / totals.seen,
      trainAccuracy: totals.correct / totals.seen,
      testLoss: test.loss,
      testAccuracy: test.accuracy,
      epochSeconds,
      msPerStep: (epochSeconds * 1000) / stepsPerEpoch,
      skippedSteps,
    };
    history.epochs.push(row);
    bar.finish(stepsPerEpoch, { loss: row.trainLoss, accuracy: row.trainAccuracy }, `test acc ${(row.testAccuracy * 100).toFixed(1)}%${skippedSteps ? `  skipped ${skippedSteps}` : ''}`);
    await save(null);
    await writeRunFiles(files, target.name, history);
  }

  const last = history.epochs[history.epochs.length - 1];
  const steps = last.steps;
  history.wallSeconds = wallBefore + (performance.now() - wallStart) / 1000;
  const summary: RunSummary = {
    name: target.name,
    dir: target.dir,
    config: cfg,
    backend,
    data: { dir: data.dir, train: data.train.length, test: data.test.length, noisyLabels: data.noisyLabels },
    epochs: history.epochs.length,
    steps,
    final: { trainLoss: last.trainLoss, trainAccuracy: last.trainAccuracy, testLoss: last.testLoss, testAccuracy: last.testAccuracy },
    bestTestAccuracy: Math.max(...history.epochs.map((e) => e.testAccuracy)),
    trainSeconds: history.trainSeconds,
    msPerStep: (history.trainSeconds * 1000) / steps,
    msPerStepMedian: median(history.epochs.map((e) => e.msPerStep)),
    skippedSteps: last.skippedSteps,
    wallSeconds: history.wallSeconds,
    initial: history.initial,
    files,
  };
  await writeJson(files.summary, summary);
  trainer.captured.dispose();
  dispose(model.stateDict());
  trainer.optimizer.dispose();
  return summary;
}

async function writeRunFiles(files: Record<'metrics' | 'steps' | 'lossPlot' | 'accuracyPlot', string>, name: string, h: History): Promise<void> {
  await writeText(files.metrics, toCsv(h.epochs.map((e) => ({
    epoch: e.epoch, steps: e.steps, lr: e.lr, train_loss: e.trainLoss, train_accuracy: e.trainAccuracy, test_loss: e.testLoss,
    test_accuracy: e.testAccuracy, epoch_seconds: e.epochSeconds, ms_per_step: e.msPerStep, skipped_steps: e.skippedSteps,
  }))));
  await writeText(files.steps, toCsv(h.points.map((p) => ({ epoch: p.epoch, step: p.step, train_loss: p.trainLoss, train_accuracy: p.trainAccuracy }))));
  const testX = [0, ...h.epochs.map((e) => e.epoch)];
  const base = (f: string) => f.replace(/\.svg$/, '');
  await writeLineChart(base(files.lossPlot), {
    title: `${name}: loss`,
    xLabel: 'epoch',
    yLabel: 'cross-entropy',
    series: [
      { name: 'train (running)', x: h.points.map((p) => p.epoch), y: h.points.map((p) => p.trainLoss) },
      { name: 'test', x: testX, y: [h.initial.testLoss, ...h.epochs.map((e) => e.testLoss)], points: true },
    ],
  });
  await writeLineChart(base(files.accuracyPlot), {
    title: `${name}: accuracy`,
    xLabel: 'epoch',
    yLabel: 'accuracy',
    series: [
      { name: 'train (running)', x: h.points.map((p) => p.epoch), y: h.points.map((p) => p.trainAccuracy) },
      { name: 'test', x: testX, y: [h.initial.testAccuracy, ...h.epochs.map((e) => e.testAccuracy)], points: true },
    ],
  });
}

function checkSameConfig(path: string, saved: TrainConfig, requested: TrainConfig): void {
  const runtime = new Set(['backend', 'threads', 'eager']);
  const keys = [...new Set([...Object.keys(saved), ...Object.keys(requested)])].filter((k) => !runtime.has(k));
  const differ = keys.filter((k) => JSON.stringify(saved[k as keyof TrainConfig]) !== JSON.stringify(requested[k as keyof TrainConfig]));
  if (differ.length) {
    throw new Error(`${path} was trained with another configuration (${differ.join(', ')} differ); use another --name, or drop --resume to start over`);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export function formatSummaryLine(s: RunSummary): string {
  const pct = (v: number) => `${(v * 100).toFixed(2)}%`;
  return (
    `${s.name}: test accuracy ${pct(s.final.testAccuracy)} (loss ${s.final.testLoss.toFixed(4)}), train ${pct(s.final.trainAccuracy)}, ` +
    `${s.epochs} epochs in ${formatDuration(s.wallSeconds)} (${s.msPerStep.toFixed(1)} ms/step on ${s.backend.backend}), ` +
    `${s.skippedSteps} skipped steps -> ${s.dir}`
  );
}
