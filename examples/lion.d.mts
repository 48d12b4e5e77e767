// Types of examples/lion.mjs for TypeScript callers (the tests import it against the sources).
import type { defineOptimizer, OptimizerDefinition } from '../src/kernels/arena/index.js';

export default function defineLion(api: { defineOptimizer: typeof defineOptimizer; FLAG_DECAY: number }): OptimizerDefinition;
