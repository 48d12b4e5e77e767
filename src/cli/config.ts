/**
 * A training run's configuration: the flags `train` and `compare` share, their defaults (which
 * depend on the model, the optimizer and the wrapper), and the checks between flags.
 */
import type { BackendChoice } from '../init.js';
import { UsageError, choiceFlag, kebab, numberFlag, stringFlag, switchFlag, type FlagValues } from './args.js';
import type { DataConfig } from './data.js';
import { MODEL_DEFAULTS, MODEL_NAMES, type ModelConfig } from './models.js';

export const OPTIMIZERS = ['sgd', 'adamw'] as const;
export const WRAPPERS = ['none', 'sam', 'asam', 'msam', 'looksam', 'esam', 'randomsam', 'rwp', 'gsam'] as const;
export const SCHEDULES = ['none', 'cosine', 'step', 'onecycle'] as const;
export const BACKENDS = ['auto', 'cpu', 'wasm', 'webgpu'] as const;
export const RHO_SCHEDULES = ['constant', 'lr'] as const;
/** Random-crop padding of `--augment` when `--augment-pad` is not given (runs made before that flag existed used 2). */
export const AUGMENT_PAD_DEFAULT = 4;
export const LEGACY_AUGMENT_PAD = 2;

export type OptimizerName = (typeof OPTIMIZERS)[number];
export type WrapperName = (typeof WRAPPERS)[number];
export type ScheduleName = (typeof SCHEDULES)[number];
export type RhoScheduleName = (typeof RHO_SCHEDULES)[number];

/** The sharpness-aware hyper-parameters, each used by the wrappers that list it below. */
export const WRAPPER_PARAMS = {
  rho: { help: 'perturbation radius', min: 0 },
  eta: { help: 'ASAM: T_w = |w| + eta', min: 0 },
  microBatches: { help: 'mSAM: micro-batches per batch, each perturbed by its own gradient', min: 1, integer: true },
  k: { help: 'LookSAM: the full SAM gradient every k steps', min: 1, integer: true },
  alpha: { help: 'LookSAM: weight of the reused component; RWP: weight of the noisy gradient; GSAM: ascent along the surrogate gap', min: 0 },
  beta: { help: 'ESAM: probability that a parameter tensor is perturbed', min: 0, max: 1 },
  gamma: { help: 'ESAM: fraction of the batch kept for the second pass; RWP: noise std relative to each filter norm', min: 0, max: 1 },
  rhoMin: { help: 'GSAM: rho at the end of the schedule (rho follows the learning rate from rho down to this)', min: 0 },
} as const;

export type WrapperParam = keyof typeof WRAPPER_PARAMS;

/**
 * Each wrapper's hyper-parameters with the defaults flatgrad's optimizers use (the papers' and
 * the reference implementations'). Runs pass all of them explicitly, so summaries record them.
 */
export const WRAPPER_DEFAULTS: Record<WrapperName, Partial<Record<WrapperParam, number>>> = {
  none: {},
  sam: { rho: 0.05 },
  asam: { rho: 0.5, eta: 0.01 },
  msam: { rho: 0.05, microBatches: 4 },
  looksam: { rho: 0.05, k: 5, alpha: 0.7 },
  esam: { rho: 0.05, beta: 0.6, gamma: 0.5 },
  randomsam: { rho: 0.05 },
  rwp: { gamma: 0.01, alpha: 0.5 },
  gsam: { rho: 0.05, rhoMin: 0, alpha: 0.4 },
};

const LR_DEFAULTS: Record<OptimizerName, number> = { sgd: 0.05, adamw: 1e-3 };
const WEIGHT_DECAY_DEFAULTS: Record<OptimizerName, number> = { sgd: 5e-4, adamw: 0.01 };

const wrapperParamFlags = Object.fromEntries(
  Object.entries(WRAPPER_PARAMS).map(([key, p]) => {
    const defaults = WRAPPERS.filter((w) => key in WRAPPER_DEFAULTS[w]).map((w) => `${w} ${WRAPPER_DEFAULTS[w][key as WrapperParam]}`);
    return [key, numberFlag(`${p.help} [${defaults.join(', ')}]`, p)];
  }),
) as Record<WrapperParam, ReturnType<typeof numberFlag<undefined>>>;

export const TRAIN_FLAGS = {
  model: choiceFlag(MODEL_NAMES, 'model', 'mlp'),
  width: numberFlag('hidden units (mlp), first-stage channels (cnn) or embedding size (vit) [mlp 256, cnn 8, vit 32]', { integer: true, min: 1 }),
  depth: numberFlag('hidden layers (mlp), blocks per stage (cnn) or encoder blocks (vit) [mlp 2, cnn 1, vit 2]', { integer: true, min: 1 }),
  optimizer: choiceFlag(OPTIMIZERS, 'base optimizer', 'sgd'),
  wrapper: choiceFlag(WRAPPERS, 'sharpness-aware wrapper around the base optimizer', 'none'),
  lr: numberFlag('peak learning rate [sgd 0.05, adamw 0.001]', { above: 0 }),
  momentum: numberFlag('SGD momentum', { min: 0, max: 1, default: 0.9 }),
  nesterov: switchFlag('SGD with Nesterov momentum'),
  weightDecay: numberFlag('weight decay [sgd 5e-4, adamw 0.01]', { min: 0 }),
  ...wrapperParamFlags,
  epochs: numberFlag('epochs', { integer: true, min: 1, default: 5 }),
  batchSize: numberFlag('batch size', { integer: true, min: 1, default: 128 }),
  schedule: choiceFlag(SCHEDULES, 'learning-rate schedule', 'cosine'),
  warmup: numberFlag('epochs of linear learning-rate warmup (may be fractional)', { min: 0, default: 0 }),
  labelNoise: numberFlag('fraction of training labels replaced by a wrong class', { min: 0, max: 1, default: 0 }),
  augment: switchFlag('random crop (padding --augment-pad) and horizontal flip'),
  augmentPad: numberFlag(`random-crop padding in pixels for --augment (runs before this flag existed used ${LEGACY_AUGMENT_PAD})`, { integer: true, min: 0, default: AUGMENT_PAD_DEFAULT }),
  rhoSchedule: choiceFlag(RHO_SCHEDULES, "rho over training: 'lr' ties it to the learning rate, rho_t = rho * lr_t / lr (GSAM's schedule; for gsam use --rho-min)", 'constant'),
  seed: numberFlag('seed for initialization, shuffling, noise and augmentation', { integer: true, min: 0, default: 0 }),
  eager: switchFlag('run each training step eagerly (op by op) instead of replaying it as a captured plan (fg.compile); results are the same'),
  backend: choiceFlag(BACKENDS, 'compute backend (auto: WebGPU on a hardware GPU, else wasm)', 'auto'),
  threads: numberFlag('worker threads for the wasm backend', { integer: true, min: 1 }),
  data: stringFlag("'subset' (shipped 6k/1k images), 'full' (/usr/share/datasets/fashion-mnist) or a directory", { default: 'subset', placeholder: '<subset|full|dir>' }),
  limitTrain: numberFlag('use only the first n training images', { integer: true, min: 1 }),
  limitTest: numberFlag('use only the first n test images', { integer: true, min: 1 }),
};

/** The flags that say where a run's files go; `compare` sets them per run. */
export const RUN_FLAGS = {
  name: stringFlag('run name: files go to <out>/<name> [<model>-<wrapper or optimizer>-s<seed>]'),
  out: stringFlag('directory for runs', { default: 'runs', placeholder: '<dir>' }),
  resume: switchFlag('continue the run <out>/<name> from its checkpoint'),
  checkpointEvery: numberFlag('also write the checkpoint every n steps, so that --resume after a kill loses at most n steps [at each epoch end only]', { integer: true, min: 1 }),
};

export type TrainFlagValues = FlagValues<typeof TRAIN_FLAGS>;

export interface TrainConfig extends ModelConfig, DataConfig {
  optimizer: OptimizerName;
  wrapper: WrapperName;
  lr: number;
  momentum: number;
  nesterov: boolean;
  weightDecay: number;
  /** The wrapper's hyper-parameters, defaults filled in. */
  wrapperParams: Partial<Record<WrapperParam, number>>;
  epochs: number;
  batchSize: number;
  schedule: ScheduleName;
  warmup: number;
  augment: boolean;
  /** Random-crop padding, present when `augment` is (absent in runs made before the flag: LEGACY_AUGMENT_PAD). */
  augmentPad?: number;
  /** Present only as 'lr' (rho follows the learning rate), so that older configs compare equal. */
  rhoSchedule?: 'lr';
  backend: BackendChoice;
  threads?: number;
  /** Present only as true (steps run eagerly rather than captured): an execution choice, not part of what a run computes. */
  eager?: true;
}

/** 'sgd', 'adamw', or the wrapper's name (with the base optimizer when it is not SGD). */
export function methodLabel(cfg: Pick<TrainConfig, 'optimizer' | 'wrapper'>): string {
  if (cfg.wrapper === 'none') return cfg.optimizer;
  return cfg.optimizer === 'sgd' ? cfg.wrapper : `${cfg.wrapper}-${cfg.optimizer}`;
}

export function defaultRunName(cfg: TrainConfig): string {
  return `${cfg.model}-${methodLabel(cfg)}-s${cfg.seed}`;
}

/** Applies the defaults that depend on other flags, and refuses hyper-parameters the wrapper does not use. */
export function resolveTrainConfig(v: TrainFlagValues, given: ReadonlySet<string>): TrainConfig {
  const defaults = WRAPPER_DEFAULTS[v.wrapper];
  const wrapperParams: Partial<Record<WrapperParam, number>> = { ...defaults };
  for (const key of Object.keys(WRAPPER_PARAMS) as WrapperParam[]) {
    if (!given.has(key)) continue;
    if (!(key in defaults)) {
      const users = WRAPPERS.filter((w) => key in WRAPPER_DEFAULTS[w]);
      throw new UsageError(`--${kebab(key)} applies to --wrapper ${users.join('|')}, not --wrapper ${v.wrapper}`);
    }
    wrapperParams[key] = v[key];
  }
  if (v.optimizer !== 'sgd') {
    for (const key of ['momentum', 'nesterov'] as const) if (given.has(key)) throw new UsageError(`--${key} applies to --optimizer sgd, not ${v.optimizer}`);
  }
  if (v.nesterov && v.momentum === 0) throw new UsageError('--nesterov needs a --momentum above 0');
  if (v.wrapper === 'esam' && (wrapperParams.beta === 0 || wrapperParams.gamma === 0)) throw new UsageError('--beta and --gamma must be above 0 for --wrapper esam');
  if (v.wrapper === 'msam' && wrapperParams.microBatches! > v.batchSize) {
    throw new UsageError(`--micro-batches (${wrapperParams.microBatches}) must not exceed --batch-size (${v.batchSize})`);
  }
  if (given.has('augmentPad') && !v.augment) throw new UsageError('--augment-pad applies only with --augment');
  if (v.rhoSchedule === 'lr') {
    if (v.wrapper === 'gsam') throw new UsageError('--rho-schedule lr: gsam ties rho to the learning rate itself; use --rho-min');
    if (!('rho' in defaults)) throw new UsageError(`--rho-schedule lr needs a wrapper with a rho (${WRAPPERS.filter((w) => w !== 'gsam' && 'rho' in WRAPPER_DEFAULTS[w]).join('|')}), not --wrapper ${v.wrapper}`);
  }
  const model = MODEL_DEFAULTS[v.model];
  return {
    model: v.model,
    width: v.width ?? model.width,
    depth: v.depth ?? model.depth,
    optimizer: v.optimizer,
    wrapper: v.wrapper,
    lr: v.lr ?? LR_DEFAULTS[v.optimizer],
    momentum: v.momentum,
    nesterov: v.nesterov,
    weightDecay: v.weightDecay ?? WEIGHT_DECAY_DEFAULTS[v.optimizer],
    wrapperParams,
    epochs: v.epochs,
    batchSize: v.batchSize,
    schedule: v.schedule,
    warmup: v.warmup,
    labelNoise: v.labelNoise,
    augment: v.augment,
    ...(v.augment ? { augmentPad: v.augmentPad } : {}),
    ...(v.rhoSchedule === 'lr' ? { rhoSchedule: 'lr' as const } : {}),
    seed: v.seed,
    ...(v.eager ? { eager: true as const } : {}),
    backend: v.backend,
    threads: v.threads,
    data: v.data,
    limitTrain: v.limitTrain,
    limitTest: v.limitTest,
  };
}
