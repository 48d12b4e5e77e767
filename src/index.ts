/** flatgrad's public surface: re-exports only. */
import './autograd/rules.js';

export type { DType, TypedArray } from './tensor/dtype.js';
export { setDefaultDtype, getDefaultDtype } from './tensor/dtype.js';
export { Tensor, tidy, keep, dispose, leaks, type NestedArray } from './tensor/tensor.js';
export { tensor, full, zeros, ones, zerosLike, onesLike, arange, eye, toBackend, type TensorOptions } from './tensor/creation.js';
export { rand, randn, randint, uniform, manualSeed, generator } from './tensor/random.js';
export { noGrad, isGradEnabled } from './tensor/graph.js';
export {
  add, sub, mul, div, pow, neg, exp, log, sqrt, rsqrt, abs, sign, square, reciprocal, relu, gelu, tanh, sigmoid,
  softplus, sin, cos, erf, maximum, minimum, clamp, where, eq, ne, lt, le, gt, ge, cast,
  expm1, log1p, floor, ceil, round, isnan, isinf, isfinite, logicalNot, logicalAnd, logicalOr, logicalXor, leakyRelu, elu, silu,
} from './tensor/ops/elementwise.js';
export { sum, mean, max, min, argmax, argmin, variance, logsumexp, softmax, logSoftmax, norm } from './tensor/ops/reduce.js';
export { prod, std, any, all, cumsum } from './tensor/ops/reduce.js';
export { sort, argsort, topk, maxWithIndices, minWithIndices, type ValuesIndices } from './tensor/ops/sort.js';
export { flip, split, chunk } from './tensor/ops/shape.js';
export { bmm, outer, tril, triu } from './tensor/ops/linalg.js';
export { scatterAdd, indexAdd, maskedFill } from './tensor/ops/indexing.js';
export { einsum } from './tensor/ops/einsum.js';
export { linspace } from './tensor/creation.js';
export { reshape, flatten, squeeze, unsqueeze, permute, transpose, expand, broadcastTo, slice, narrow, concat, stack, pad, copy as clone } from './tensor/ops/shape.js';
export { matmul, linear, mm } from './tensor/ops/linalg.js';
export { crossEntropy, oneHot, gather, indexSelect, dropout, type CrossEntropyOptions } from './tensor/ops/nn.js';
export { conv2d, maxPool2d, avgPool2d, adaptiveAvgPool2d, type Conv2dOptions, type Pool2dOptions, type AvgPool2dOptions } from './tensor/ops/window.js';
export { embedding } from './tensor/ops/nn.js';
export { conv1d, convTranspose2d, type Conv1dOptions, type ConvTranspose2dOptions } from './tensor/ops/conv.js';
export { interpolate, type InterpolateOptions } from './tensor/ops/interpolate.js';
export { groupNorm, normalize, cosineSimilarity, layerNorm } from './tensor/ops/normalization.js';
export {
  nllLoss, binaryCrossEntropy, binaryCrossEntropyWithLogits, l1Loss, smoothL1Loss, huberLoss, klDiv,
  type NllLossOptions, type BinaryCrossEntropyOptions, type BinaryCrossEntropyWithLogitsOptions, type KlDivOptions,
} from './tensor/ops/losses.js';
export { backward, grad, type BackwardOptions } from './autograd/engine.js';
export { gradcheck, gradgradcheck, type GradcheckOptions } from './autograd/gradcheck.js';
export { hvp } from './autograd/hvp.js';
export { compile, type CompileOptions, type CompiledStep, type CompileStats } from './compile/compile.js';
export { init, backendInfo, memory, flush, trim, isSoftwareAdapter, type InitOptions, type BackendChoice, type GPULike, type GPUDeviceLike } from './init.js';
export type { Backend, BackendInfo, BackendName, MemoryInfo, Storage } from './kernels/backend.js';
export { getBackend } from './kernels/registry.js';
export * as data from './data/index.js';
export {
  encodeSafetensors, decodeSafetensors, readSafetensorsFile, writeSafetensorsFile, SafetensorsError,
  type SafetensorsDtype, type SafetensorsTensor, type SafetensorsFile,
} from './io/safetensors.js';
export { writeFileAtomic } from './io/atomic.js';
export * as analysis from './analysis/index.js';
export { saveCheckpoint, loadCheckpoint, disposeCheckpoint, CheckpointError, type Checkpoint } from './io/checkpoint.js';
export * as nn from './nn/index.js';
export * as optim from './optim/index.js';
/** Arena kernels: an optimizer kernel defined once, run fused on cpu, wasm and WebGPU (docs/KERNELS.md). */
export * as arena from './kernels/arena/index.js';
/** Checks for a new optimizer kernel or SAM-family member on every backend (fg.testing.checkOptimizer). */
export * as testing from './testing/index.js';
