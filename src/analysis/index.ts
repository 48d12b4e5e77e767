/** flatgrad.analysis: Hessian spectra, rho-sharpness and loss landscapes (all run backward). */
import '../autograd/rules.js';
export { hessianEigenvalues, hessianTrace, type EigenResult, type PowerIterationOptions } from './hessian.js';
export { rhoSharpness, type RhoSharpnessOptions, type RhoSharpnessResult } from './sharpness.js';
export {
  filterNormalizedDirection, landscape1d, landscape2d, linspace,
  type Landscape1d, type Landscape1dOptions, type Landscape2d, type Landscape2dOptions,
} from './landscape.js';
export { evaluate, inEvalMode, type Classifier, type EvalResult, type LabeledBatch } from './evaluate.js';
export type { LossFn } from './vectors.js';
