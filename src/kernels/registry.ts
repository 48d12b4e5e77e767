/** The active backend. Tensors record which backend owns their storage; ops run on that one. */
import type { Backend } from './backend.js';
import { CpuBackend } from './cpu/index.js';

let active: Backend = new CpuBackend();

export function getBackend(): Backend {
  return active;
}

export function setBackend(b: Backend): void {
  active = b;
}
