/**
 * Arena kernels: write an optimizer kernel once, run it fused on cpu, wasm and WebGPU.
 * See docs/KERNELS.md.
 */
export { k, ArenaDefinitionError, type Builders, type Node, type Operand, type Reduction, type ReductionKind, type Ty } from './expr.js';
export { defineArenaKernel, type ArenaKernel, type ArenaKernelSpec, type KernelReduction, type KernelVector, type VectorAccess, type Vectors } from './define.js';
export { coefficientValues, evalUniform, interpretRange, referenceKernel, renderReference, type RangeFn, type UniformEnv } from './reference.js';
export { combinePartials } from './reduce.js';
export { renderWasm } from './wasm.js';
export { renderWgsl, renderWgslScalars, renderWgslTree, renderWgslSteps } from './wgsl.js';
export { hostPassObservers, runArenaKernel, runPerTensor, runScalarProgram, type ArenaBuffers, type GroupHyper, type PerTensorBuffers, type PerTensorParam, type RunOptions } from './run.js';
export { ArenaOptimizer, defineOptimizer, type ArenaOptimizerOptions, type OptimizerDefinition } from './optimizer.js';
export { builtinKernels, type KernelCall } from './fused.js';
export { FLAG_ACTIVE, FLAG_DECAY, FLAG_VECTOR, FLAG_WEIGHT, S_FLAG, S_NORM, S_SLOTS } from '../fused.js';
