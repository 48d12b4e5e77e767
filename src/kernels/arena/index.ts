/**
 * Arena kernels: write an optimizer kernel once, run it fused on cpu, wasm and WebGPU.
 * See docs/KERNELS.md.
 */
export { k, ArenaDefinitionError, type Builders, type Node, type Operand, type Reduction, type ReductionKind, type Ty } from './expr.js';
export { defineArenaKernel, type ArenaKernel, type ArenaKernelSpec, type KernelReduction, type KernelVector, type VectorAccess, type Vectors } from './define.js';
export { coefficientValues, interpretRange, referenceKernel, renderReference, type RangeFn } from './reference.js';
export { evalUniform, type UniformEnv } from './uniform.js';
export { combinePartials } from './reduce.js';
import type { ArenaKernel } from './define.js';
export { hostPassObservers, runArenaKernel, runPerTensor, runScalarProgram, type ArenaBuffers, type GroupHyper, type PerTensorBuffers, type PerTensorParam, type RunOptions } from './run.js';
export { ArenaOptimizer, defineOptimizer, type ArenaOptimizerOptions, type OptimizerDefinition } from './optimizer.js';
export { builtinKernels, type KernelCall } from './fused.js';
export { FLAG_ACTIVE, FLAG_DECAY, FLAG_VECTOR, FLAG_WEIGHT, S_FLAG, S_NORM, S_SLOTS } from '../fused.js';

// The wasm and WGSL renderers belong to their backends (they load with them, see arenaBackends in
// ./run.ts): exported for inspection, they load on demand so that importing flatgrad fetches neither.
/** The f32x4 module bytes of a kernel (shared: over a shared memory, as the threaded wasm backend's). */
export async function renderWasm(kernel: ArenaKernel, shared: boolean): Promise<Uint8Array> {
  return (await import('./wasm.js')).renderWasm(kernel, shared);
}
/** The WGSL block kernel of a definition, for `groups` parameter groups. */
export async function renderWgsl(kernel: ArenaKernel, groups: number): Promise<string> {
  return (await import('./wgsl.js')).renderWgsl(kernel, groups);
}
/** The WGSL tree pass that combines a kernel's block partials. */
export async function renderWgslTree(kernel: ArenaKernel): Promise<string> {
  return (await import('./wgsl.js')).renderWgslTree(kernel);
}
/** The WGSL of a kernel's scalar program (one invocation). */
export async function renderWgslScalars(kernel: ArenaKernel): Promise<string> {
  return (await import('./wgsl.js')).renderWgslScalars(kernel);
}
/** The WGSL step-count pass (one invocation per parameter). */
export async function renderWgslSteps(kernel: ArenaKernel, groups: number): Promise<string> {
  return (await import('./wgsl.js')).renderWgslSteps(kernel, groups);
}
