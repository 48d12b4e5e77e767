/** flatgrad.testing: checks a researcher runs on a new optimizer kernel or SAM-family member (docs/KERNELS.md). */
export { checkOptimizer, CheckOptimizerError, type CheckName, type CheckOptions, type CheckReport, type CheckResult, type CheckSubject, type OptimizerFactory, type WorstElement } from './check-optimizer.js';
