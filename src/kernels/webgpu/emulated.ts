/**
 * The kernel family of CPU-emulated adapters (SwiftShader, lavapipe), one chunk that a GPU never
 * loads: once it is here, `install` gives the backend the packed matmul (matmul-emulated.ts) and
 * the fused attention (attention.ts). Until then (a browser fetching it) the backend runs the GPU
 * forms, with the same results up to rounding.
 */
import type { DirectParts } from './matmul.js';
import type { WebGPUBackend } from './index.js';
import type { GPUStorage } from './runtime.js';
import { attention, attentionBackward } from './attention.js';
import { matmulPacked, setInstalledParts } from './matmul-emulated.js';

export function install(backend: WebGPUBackend, parts: DirectParts): void {
  const rt = backend.rt;
  setInstalledParts(parts);
  backend.matmul = (a, b, out, l) => matmulPacked(rt, a as GPUStorage, b as GPUStorage, out as GPUStorage, l, parts);
  backend.attention = (...args) => attention(rt, ...args);
  backend.attentionBackward = (...args) => attentionBackward(rt, ...args);
}
