/**
 * The optimizer a run trains with (the base optimizer, optionally inside a sharpness-aware
 * wrapper), its schedules, and one training step on a batch.
 */
import * as optim from '../optim/index.js';
import { compile, type CompiledStep } from '../compile/compile.js';
import { crossEntropy } from '../tensor/ops/nn.js';
import { Tensor } from '../tensor/tensor.js';
import type { ScheduleName, TrainConfig, WrapperName, WrapperParam } from './config.js';
import type { Classifier } from './models.js';

type Optimizer = optim.Optimizer;

export interface StepResult {
  /** The loss at w (the first pass for the sharpness-aware family). */
  loss: Tensor;
  /** Correct predictions in the batch, from the same pass. */
  correct: Tensor;
}

export interface Trainer {
  optimizer: Optimizer;
  /** One step on a batch; call inside tidy() and read the results later. */
  step(x: Tensor, y: Tensor): StepResult;
  /** Advances the schedules by one step (after `step`). */
  advance(): void;
  currentLr(): number;
  skippedSteps(): Promise<number>;
  stateDict(): Record<string, unknown>;
  loadStateDict(sd: Record<string, unknown>): void;
  /** The captured step (fg.compile; it runs eagerly with cfg.eager): its statistics and fall-back reason. */
  captured: CompiledStep<[Tensor, Tensor], StepResult>;
}

type WrapperClass = new (params: Tensor[], base: optim.BaseOptimizerClass, opts: Record<string, unknown>) => Optimizer;

const WRAPPER_CLASSES: Record<Exclude<WrapperName, 'none'>, WrapperClass> = {
  sam: optim.SAM,
  asam: optim.ASAM,
  msam: optim.MSAM,
  looksam: optim.LookSAM,
  esam: optim.ESAM,
  randomsam: optim.RandomSAM,
  rwp: optim.RWP,
  gsam: optim.GSAM,
};

/** Where a CLI flag's name differs from the optimizer option it sets. */
const OPTION_NAMES: Partial<Record<WrapperParam, string>> = { microBatches: 'm' };

function baseOptions(cfg: TrainConfig): Record<string, unknown> {
  return cfg.optimizer === 'sgd'
    ? { lr: cfg.lr, momentum: cfg.momentum, nesterov: cfg.nesterov, weightDecay: cfg.weightDecay }
    : { lr: cfg.lr, weightDecay: cfg.weightDecay };
}

export function buildOptimizer(cfg: TrainConfig, params: Tensor[]): Optimizer {
  const Base = cfg.optimizer === 'sgd' ? optim.SGD : optim.AdamW;
  if (cfg.wrapper === 'none') return new Base(params, baseOptions(cfg));
  const Wrapper = WRAPPER_CLASSES[cfg.wrapper];
  const hyper = Object.fromEntries(Object.entries(cfg.wrapperParams).map(([k, v]) => [OPTION_NAMES[k as WrapperParam] ?? k, v]));
  // GSAM scales rho by lr / lrMax; --lr is the peak of every schedule here (one-cycle starts below it).
  const gsam = cfg.wrapper === 'gsam' ? { lrMax: cfg.lr } : {};
  return new Wrapper(params, Base, { ...baseOptions(cfg), ...hyper, ...gsam });
}

/**
 * Learning-rate factor at step t of `total`: linear warmup over `warm` steps, then the schedule's
 * decay. One closed form (run by optim.LambdaLR) covers warmup followed by any decay, which the
 * separate scheduler classes would need chaining for.
 */
export function lrFactor(schedule: Exclude<ScheduleName, 'onecycle'>, t: number, total: number, warm: number): number {
  if (t < warm) return (t + 1) / (warm + 1);
  const progress = total > warm ? (t - warm) / (total - warm) : 1;
  if (schedule === 'cosine') return (1 + Math.cos(Math.PI * Math.min(1, progress))) / 2;
  // 'step': a tenth at one third and a hundredth at two thirds of the post-warmup steps.
  if (schedule === 'step') return 0.1 ** Math.min(2, Math.floor(progress * 3));
  return 1;
}

function lrScheduler(cfg: TrainConfig, opt: Optimizer, totalSteps: number, stepsPerEpoch: number): optim.Scheduler {
  const warm = Math.min(totalSteps - 1, Math.round(cfg.warmup * stepsPerEpoch));
  if (cfg.schedule === 'onecycle') {
    // One-cycle has its own warmup; --warmup sets its length.
    const pctStart = warm > 0 ? warm / totalSteps : 0.3;
    return new optim.OneCycleLR(opt, { maxLr: cfg.lr, totalSteps, pctStart, cycleMomentum: false });
  }
  const schedule = cfg.schedule;
  return new optim.LambdaLR(opt, (t) => lrFactor(schedule, t, totalSteps, warm));
}

/** Rows [from, to) of micro-batch i of m (sizes differ by at most one). */
function microRange(batch: number, i: number, m: number): [number, number] {
  return [Math.floor((i * batch) / m), Math.floor(((i + 1) * batch) / m)];
}

/**
 * The optimizer, its schedules and the training step, captured (fg.compile: traced once per batch
 * shape and replayed, with the scheduled lr and rho as inputs of the plan) unless `cfg.eager`.
 * `onMessage` receives the one-time message of a step that cannot be captured and runs eagerly.
 */
export function buildTrainer(cfg: TrainConfig, model: Classifier, stepsPerEpoch: number, opts: { onMessage?: (message: string) => void } = {}): Trainer {
  const optimizer = buildOptimizer(cfg, model.parameters());
  const totalSteps = Math.max(1, cfg.epochs * stepsPerEpoch);
  const lr = lrScheduler(cfg, optimizer, totalSteps, stepsPerEpoch);
  // --rho-schedule lr: rho_t = rho * lr_t / lr_peak, the library's ProportionScheduler (GSAM's formula).
  const rho = cfg.rhoSchedule === 'lr' ? new optim.ProportionScheduler(optimizer, { maxLr: cfg.lr, minLr: 0, minValue: 0 }) : null;

  const captured = compile(function trainStep(x: Tensor, y: Tensor): StepResult {
    // Accuracy comes from the first pass over each part of the batch (the clean one, except for
    // RandomSAM whose only pass is perturbed); later passes of the same rows are not counted.
    const counted = new Set<number>();
    const counts: Tensor[] = [];
    const count = (part: number, logits: Tensor, labels: Tensor) => {
      if (counted.has(part)) return;
      counted.add(part);
      counts.push(logits.detach().argmax(1).eq(labels).sum());
    };
    const wholeBatch = () => {
      const logits = model.forward(x);
      count(0, logits, y);
      const loss = crossEntropy(logits, y);
      loss.backward();
      return loss;
    };
    let loss: Tensor | number | undefined;
    if (optimizer instanceof optim.MSAM) {
      loss = optimizer.step((i: number, m: number) => {
        const [from, to] = microRange(x.shape[0], i, m);
        const xs = x.narrow(0, from, to - from);
        const ys = y.narrow(0, from, to - from);
        const logits = model.forward(xs);
        count(i, logits, ys);
        const l = crossEntropy(logits, ys);
        l.backward();
        return l;
      });
    } else if (optimizer instanceof optim.ESAM) {
      loss = optimizer.step((indices: Tensor | null) => {
        const logits = model.forward(indices ? x.indexSelect(0, indices) : x);
        const labels = indices ? y.indexSelect(0, indices) : y;
        if (!indices) count(0, logits, labels);
        return crossEntropy(logits, labels, { reduction: 'none' });
      });
    } else if (optimizer instanceof optim.SharpnessAware) loss = optimizer.step(wholeBatch);
    else {
      optimizer.zeroGrad();
      loss = wholeBatch();
      optimizer.step();
    }
    if (!(loss instanceof Tensor) || counts.length === 0) throw new Error('internal: the training step returned no loss tensor');
    return { loss: loss.detach(), correct: counts.reduce((a, b) => a.add(b)) };
  }, { eager: cfg.eager === true, onMessage: opts.onMessage });

  return {
    optimizer,
    captured,
    step: captured,
    advance() {
      lr.step();
      rho?.step();
    },
    currentLr: () => optimizer.paramGroups[0].lr as number,
    async skippedSteps() {
      return (await optimizer.counters()).skipped;
    },
    stateDict: () => ({ optimizer: optimizer.stateDict(), lr: lr.stateDict(), ...(rho ? { rho: rho.stateDict() } : {}) }),
    loadStateDict(sd) {
      optimizer.loadStateDict(sd.optimizer as optim.OptimizerStateDict);
      lr.loadStateDict(sd.lr as { lastEpoch: number });
      if (rho) rho.loadStateDict(sd.rho as { lastEpoch: number });
    },
  };
}
