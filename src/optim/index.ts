/** flatgrad.optim: optimizers, schedulers and the sharpness-aware family on fused kernels. */
import '../autograd/rules.js';
export { Optimizer, UnknownOptionError, type ParamGroup, type ParamsInput, type GroupInput, type OptimizerStateDict, type Closure, type CommonOptions } from './optimizer.js';
export { SGD, Adam, AdamW, type SGDOptions, type AdamOptions } from './sgd.js';
export { clipGradNorm, clipGradNormFused } from './clip.js';
export { Scheduler, StepLR, CosineAnnealingLR, LinearWarmup, OneCycleLR, LambdaLR, ProportionScheduler, type SchedulerOptions, type OneCycleOptions } from './lr_scheduler.js';
export { SharpnessAware, SAM, ASAM, type SAMOptions, type SharpnessOptions, type SharpnessStats, type BaseOptimizerClass } from './sam.js';
export { FlatArena, isWeightParam } from './arena.js';
export { defineSamVariant, runOnEngine, type SamVariantSpec, type SamVariantClass } from './sam-variant.js';
export { FlatEngine, LoopEngine, makeEngine, type Engine } from './engine.js';
export {
  MSAM,
  LookSAM,
  ESAM,
  RandomSAM,
  RWP,
  GSAM,
  topkIndices,
  type MSAMOptions,
  type LookSAMOptions,
  type ESAMOptions,
  type RWPOptions,
  type GSAMOptions,
  type MicroBatchClosure,
  type PerSampleClosure,
} from './variants.js';
/** m-sharpness under the name the literature uses. */
export { MSAM as mSAM } from './variants.js';
