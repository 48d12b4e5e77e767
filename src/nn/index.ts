/** flatgrad.nn: modules, layers, initializers, losses and ready models (PyTorch layouts and names). */
import '../autograd/rules.js';
export {
  Module,
  Parameter,
  param,
  buffer,
  copyInto,
  runningStatsFrozen,
  withFrozenRunningStats,
  freezeRunningStats,
  unfreezeRunningStats,
  type ModuleOptions,
  type StateDict,
  type StateDictInput,
  type LoadStateDictResult,
} from './module.js';
export {
  Layer,
  Identity,
  Linear,
  Conv2d,
  Conv1d,
  ConvTranspose2d,
  Embedding,
  GroupNorm,
  Upsample,
  MaxPool2d,
  AvgPool2d,
  AdaptiveAvgPool2d,
  Flatten,
  ReLU,
  GELU,
  Tanh,
  Sigmoid,
  Softmax,
  Dropout,
  LayerNorm,
  BatchNorm1d,
  BatchNorm2d,
  Sequential,
  ModuleList,
  type Conv2dOptions,
  type Conv1dOptions,
  type ConvTranspose2dOptions,
  type BatchNormOptions,
} from './layers.js';
export { MultiheadAttention, type MultiheadAttentionOptions, type AttentionCallOptions } from './attention.js';
export * as init from './init.js';
export * as functional from './functional.js';
export * as models from './models.js';
