/**
 * Waiting for a CPU adapter (src/kernels/webgpu/dawn.ts): Dawn's Node binding polls from
 * setImmediate while one of its promises is pending, so an awaiting thread spins and takes a core
 * from SwiftShader's shader threads. pacedWait sleeps between polls; paceCpuAdapterWaits makes the
 * devices of CPU adapters wait that way and leaves other adapters alone.
 */
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import { paceCpuAdapterWaits, pacedWait } from '../src/kernels/webgpu/dawn.js';
import type { WebGPUBackend } from '../src/kernels/webgpu/index.js';
import { acquireWebGPU } from './helpers/webgpu.js';

const { backend: gpu } = await acquireWebGPU();
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

describe('pacedWait', () => {
  it('resolves with the promise, rejects with it, and sleeps (not spins) while it waits', async () => {
    await expect(pacedWait(Promise.resolve(7))).resolves.toBe(7);
    await expect(pacedWait(Promise.reject(new Error('lost device')))).rejects.toThrow('lost device');
    // Our own loop awaits setImmediate every turn: without the naps it would spin at 100 % of the
    // wall time, as Dawn's poll does.
    const w0 = performance.now();
    const c0 = cpuMs();
    const v = await pacedWait(new Promise<string>((r) => setTimeout(() => r('done'), 60)));
    const wall = performance.now() - w0;
    const cpu = cpuMs() - c0;
    expect(v).toBe('done');
    expect(wall).toBeGreaterThanOrEqual(59);
    expect(cpu, `CPU ${cpu.toFixed(1)} ms over a ${wall.toFixed(1)} ms wait`).toBeLessThan(0.4 * wall);
  });
});

describe('paceCpuAdapterWaits', () => {
  /** A stand-in GPU whose one adapter reports `info`; records what its device hands out. */
  const fakeGpu = (info: Partial<GPUAdapterInfo>) => {
    const queue = { onSubmittedWorkDone: () => Promise.resolve(undefined) };
    const buffer = { mapAsync: () => Promise.resolve(undefined) };
    const device = { queue, createBuffer: () => buffer };
    const adapter = { info, requestDevice: async () => device };
    return { gpu: { requestAdapter: async () => adapter } as unknown as GPU, queue, buffer, device, adapter };
  };

  it('wraps the queue and buffers of a CPU adapter, and nothing of another adapter', async () => {
    for (const [info, cpuAdapter] of [
      [{ isFallbackAdapter: true, architecture: 'swiftshader' }, true],
      [{ isFallbackAdapter: false, architecture: '', description: 'llvmpipe (LLVM 15.0.6, 256 bits)' }, true],
      [{ isFallbackAdapter: false, architecture: 'hopper', description: 'NVIDIA H200', device: '' }, false],
    ] as const) {
      const f = fakeGpu(info);
      const { onSubmittedWorkDone } = f.queue;
      const { mapAsync } = f.buffer;
      const { requestDevice } = f.adapter;
      const adapter = await paceCpuAdapterWaits(f.gpu).requestAdapter();
      const device = await adapter!.requestDevice();
      const buffer = device.createBuffer({ size: 4, usage: 1 });
      expect(device.queue.onSubmittedWorkDone !== onSubmittedWorkDone, JSON.stringify(info)).toBe(cpuAdapter);
      expect(buffer.mapAsync !== mapAsync, JSON.stringify(info)).toBe(cpuAdapter);
      expect((adapter!.requestDevice as unknown) !== requestDevice, JSON.stringify(info)).toBe(cpuAdapter);
      await expect(device.queue.onSubmittedWorkDone()).resolves.toBeUndefined();
    }
  });

  it.runIf(gpu)("is what fg.init's own Dawn device waits by, with readbacks unchanged", async () => {
    const prev = getBackend();
    await fg.init({ backend: 'webgpu' });
    try {
      const b = getBackend() as unknown as WebGPUBackend;
      // Dawn's own methods live on the prototype; the paced ones are the instance's own.
      expect(Object.hasOwn(b.device.queue, 'onSubmittedWorkDone')).toBe(b.info().adapter.includes('SwiftShader'));
      const x = fg.tensor(Float32Array.from({ length: 1000 }, (_, i) => i * 0.5 - 7), { shape: [10, 100] });
      const s = x.mul(2).sum(1);
      expect(Array.from(await s.data())).toEqual(Array.from({ length: 10 }, (_, r) => {
        let t = 0;
        for (let i = 0; i < 100; i++) t += Math.fround(((r * 100 + i) * 0.5 - 7) * 2);
        return t;
      }));
    } finally {
      setBackend(prev);
    }
  });
});
