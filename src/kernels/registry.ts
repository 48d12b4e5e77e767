/**
 * The active backend. Tensors record which backend owns their storage; ops run on that one.
 *
 * Until `init()` chooses one, Node (scripts, tests, the CLI) runs on the CPU backend: the package's
 * Node entry (src/node.ts, the "node" export condition) registers it as the default. A browser
 * has no backend until `await init({ backend })`; the CPU backend is then imported only when
 * chosen (or as the last fallback of 'auto'), so a page that runs on WebGPU never fetches it
 * (bench/size.bench.ts). No top-level await here: it deadlocks bundles that import the package
 * dynamically (esbuild) and is refused by CommonJS/IIFE output.
 */
import type { Backend } from './backend.js';

let active: Backend | null = null;
let makeDefault: (() => Backend) | null = null;

/** The backend to create on first use when `init()` was not called (Node's entry sets the CPU). */
export function setDefaultBackend(factory: () => Backend): void {
  makeDefault = factory;
}

export function getBackend(): Backend {
  if (!active && makeDefault) active = makeDefault();
  if (!active) {
    throw new Error("flatgrad: no backend yet: call `await init({ backend })` ('webgpu', 'wasm', 'cpu' or 'auto') before creating tensors");
  }
  return active;
}

/** The active backend, or null before `init()` or a first use that creates the default. */
export function currentBackend(): Backend | null {
  return active;
}

export function setBackend(b: Backend): void {
  active = b;
}
