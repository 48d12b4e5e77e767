/**
 * Under Node, the CPU backend is the default until `init()`, so that scripts, the REPL, the CLI
 * and the tests can create tensors at once. Every "node" condition of package.json "exports"
 * resolves to a wrapper (written by scripts/build.mjs) that imports this module before the
 * subpath it stands for; browser bundles resolve the plain entries and never load the CPU
 * backend unless `init` chooses it (see src/kernels/registry.ts).
 */
import { CpuBackend } from './kernels/cpu/index.js';
import { setDefaultBackend } from './kernels/registry.js';

setDefaultBackend(() => new CpuBackend());
