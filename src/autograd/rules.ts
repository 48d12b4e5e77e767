/**
 * Importing this module registers the gradient rules (vjps.ts) and backward() (engine.ts). Every
 * published entry that records or runs graphs imports it (flatgrad, flatgrad/nn, flatgrad/optim,
 * flatgrad/analysis, the CLI), so that a program importing only one of them can train; it is
 * listed in package.json "sideEffects", as the two modules are.
 */
import './vjps.js';
import './engine.js';
