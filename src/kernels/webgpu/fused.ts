/**
 * The WebGPU backend's fused optimizer kernels: the arena kernels (src/kernels/arena/fused.ts,
 * rendered to WGSL by src/kernels/arena/wgsl.ts), Gaussian noise included (a definition over the
 * language's normal draw; RWP's row norms are in src/kernels/arena/webgpu.ts). Loaded by createWebGPUBackend through the loader that
 * src/kernels/arena/run.ts registers: only an app with both the WebGPU backend and the arena
 * kernels (the optimizers) ships it.
 */
import { ArenaFusedKernels } from '../arena/fused.js';
import { registerArenaWebGPU } from '../arena/webgpu.js';
import { registerFusedKernels } from '../fused.js';
import type { Runtime } from './runtime.js';

// The arena kernels' WGSL runner, which this backend's fused kernels run on.
registerArenaWebGPU();
registerFusedKernels('webgpu', (b) => {
  const rt = (b as unknown as { rt?: Runtime }).rt;
  return rt && typeof rt.dispatch === 'function' ? new ArenaFusedKernels(b) : null;
});
