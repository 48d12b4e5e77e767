/**
 * The backends a fused-kernel parity test compares against the cpu reference: wasm (one thread),
 * WebGPU as this adapter picks its kernel forms, and the same device with the real-GPU choice
 * (`cpuEmulated: false`: a row or channel of more than 64 values gets a workgroup, where a
 * CPU-emulated adapter gives it one thread), so that both WGSL forms run. The wasm backend is
 * disposed and the previous backend restored after the file's tests. Also the float64
 * gradchecks every fused op gets on the cpu backend.
 */
import { afterAll, expect, it } from 'vitest';
import * as fg from '../../src/index.js';
import type { Backend } from '../../src/kernels/backend.js';
import { CpuBackend } from '../../src/kernels/cpu/index.js';
import { getBackend, setBackend } from '../../src/kernels/registry.js';
import { createWasmBackend } from '../../src/kernels/wasm/index.js';
import { createWebGPUBackend, type WebGPUBackend } from '../../src/kernels/webgpu/index.js';
import { withBackend } from './backend-scope.js';
import { acquireWebGPU } from './webgpu.js';

export interface ParityDevices {
  cpu: CpuBackend;
  wasm: Awaited<ReturnType<typeof createWasmBackend>>;
  webgpu: WebGPUBackend | null;
  /** `webgpu`'s device with the real-GPU kernel forms. */
  gpuWorkgroups: WebGPUBackend | null;
  /** [label, backend] for each device under test; a null backend is absent (no WebGPU adapter). */
  devices: [string, Backend | null][];
}

export async function parityDevices(workgroupLabel: string): Promise<ParityDevices> {
  const prev = getBackend();
  const cpu = new CpuBackend();
  const wasm = await createWasmBackend({ threads: 1 });
  const webgpu = (await acquireWebGPU()).backend;
  const gpuWorkgroups = webgpu ? await createWebGPUBackend({ device: webgpu.device, cpuEmulated: false }) : null;
  afterAll(() => {
    setBackend(prev);
    wasm.dispose();
  });
  return { cpu, wasm, webgpu, gpuWorkgroups, devices: [['wasm', wasm], ['webgpu', webgpu], [workgroupLabel, gpuWorkgroups]] };
}

/**
 * One test per case: gradcheck and gradgradcheck in float64 on the cpu backend, each input a
 * seeded standard normal tensor of the given shape.
 */
export function gradcheckCases(cpu: CpuBackend, cases: [string, number[][], (...t: fg.Tensor[]) => fg.Tensor][]): void {
  for (const [name, shapes, fn] of cases) {
    it(name, () =>
      withBackend(cpu, () => {
        fg.manualSeed(11);
        const xs = shapes.map((shape) => fg.randn(shape, { dtype: 'float64' }).detach().requiresGrad_());
        expect(fg.gradcheck(fn, xs)).toBe(true);
        expect(fg.gradgradcheck(fn, xs, { atol: 1e-4, rtol: 1e-3 })).toBe(true);
      }),
    );
  }
}
