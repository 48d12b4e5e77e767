/**
 * Reopening a run from its checkpoint for analysis: the model rebuilt from the saved config with
 * the saved weights, and a fixed evaluation batch from the same data.
 */
import { basename, dirname, join } from 'node:path';
import { stat } from 'node:fs/promises';
import type { LossFn } from '../analysis/index.js';
import { disposeCheckpoint, loadCheckpoint } from '../io/checkpoint.js';
import { tensor } from '../tensor/creation.js';
import { crossEntropy } from '../tensor/ops/nn.js';
import { dispose, type Tensor } from '../tensor/tensor.js';
import { UsageError } from './args.js';
import type { TrainConfig } from './config.js';
import { loadRunData } from './data.js';
import type { CliIO } from './io.js';
import { buildModel, type Classifier } from './models.js';
import { resolvePath } from './runtime.js';

export const CHECKPOINT_FILE = 'checkpoint.safetensors';

/** A run directory stands for the checkpoint inside it. */
export async function checkpointPath(io: CliIO, given: string): Promise<string> {
  const p = await resolvePath(io, given);
  const s = await stat(p).catch(() => null);
  if (!s) throw new UsageError(`checkpoint ${given} does not exist`);
  return s.isDirectory() ? join(p, CHECKPOINT_FILE) : p;
}

export interface RestoredRun {
  file: string;
  /** The run directory (where analysis files are written by default). */
  dir: string;
  name: string;
  config: TrainConfig;
  model: Classifier;
}

export function isTrainConfig(x: unknown): x is TrainConfig {
  const c = x as Partial<TrainConfig> | null;
  return !!c && typeof c === 'object' && typeof c.model === 'string' && typeof c.width === 'number' && typeof c.depth === 'number';
}

/** Rebuilds the run's model with the checkpoint's weights on the active backend; `closeRun` frees it. */
export async function openRun(io: CliIO, given: string): Promise<RestoredRun> {
  const file = await checkpointPath(io, given);
  const checkpoint = await loadCheckpoint(file);
  try {
    const { config, name, numClasses } = checkpoint.meta;
    if (!isTrainConfig(config)) throw new Error(`${file}: the checkpoint holds no training config (was it written by flatgrad train?)`);
    const model = buildModel(config, typeof numClasses === 'number' ? numClasses : 10);
    model.loadStateDict(checkpoint.model);
    return { file, dir: dirname(file), name: typeof name === 'string' ? name : basename(dirname(file)), config, model };
  } finally {
    disposeCheckpoint(checkpoint);
  }
}

export function closeRun(run: RestoredRun): void {
  dispose(run.model.stateDict());
}

export interface EvaluationBatch {
  x: Tensor;
  y: Tensor;
  n: number;
  split: 'train' | 'test';
  dispose(): void;
}

/**
 * The first `examples` images of a split, with the run's own data settings (the same label
 * noise on the training split, since that is the loss the run minimized). `data` overrides the
 * directory when the run's is not here.
 */
export async function evaluationBatch(config: TrainConfig, split: 'train' | 'test', examples: number, data?: string): Promise<EvaluationBatch> {
  // The whole training split is loaded so that label noise lands where it did in training.
  const set = (await loadRunData({ ...config, data: data ?? config.data }))[split];
  const n = Math.min(examples, set.length);
  const { x, y } = set.gather(Array.from({ length: n }, (_, i) => i));
  const xt = tensor(x, { shape: [n, ...set.featureShape] }).keep();
  const yt = tensor(y).keep();
  return { x: xt, y: yt, n, split, dispose: () => dispose([xt, yt]) };
}

/** Mean cross-entropy of the model on the batch: the objective every analysis measures. */
export function batchLoss(model: Classifier, batch: EvaluationBatch): LossFn {
  return () => crossEntropy(model.forward(batch.x), batch.y);
}
