/**
 * Device acquisition: a GPUDevice from the browser's `navigator.gpu`, or in Node from the `webgpu`
 * package (Dawn, through ./dawn.ts), loaded only when asked for.
 */
// The fused optimizer kernels (./fused.ts, with the arena kernels' WGSL renderer) load when both
// this backend and the optimizers are in the app: src/kernels/arena/run.ts registers the loader
// and createWebGPUBackend awaits it, so neither a cpu/wasm training app nor a WebGPU app without
// optimizers ships them.
import { loadFusedKernels } from '../fused.js';
import { WebGPUBackend } from './index.js';
import { CHECKED_LIMITS, preloadKernelFamilies, type RuntimeOptions } from './runtime.js';

export interface WebGPUOptions extends RuntimeOptions {
  /** A GPU object to request the adapter from (e.g. one made with Dawn's `create([...])`). */
  gpu?: GPU;
  /** An already-created device: used as is (its limits are whatever it was created with). */
  device?: GPUDevice;
  powerPreference?: GPUPowerPreference;
}

export const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

/**
 * The limits a tensor library leans on, each requested at the adapter's best value (WebGPU's
 * defaults are far below what adapters offer: 128 MiB bindings, 8 storage buffers): the ones the
 * runtime checks kernels against, and the bind groups a pipeline layout may hold.
 */
const WANTED_LIMITS = [...CHECKED_LIMITS, 'maxBindGroups'] as const;

function isNode(): boolean {
  return typeof process !== 'undefined' && !!process.versions?.node;
}

/**
 * GPU objects that handed out an adapter. Dawn's Node binding does not keep its instance alive
 * from the devices it made: a collected GPU object takes the device down with it (a crash, not an
 * error), so every one in use is held here for the life of the process.
 */
const gpusInUse = new Set<GPU>();

/** Finds an adapter or throws one error listing every attempt. */
export async function requestAdapter(opts: WebGPUOptions = {}): Promise<GPUAdapter> {
  const tried: string[] = [];
  // `what` is read after the attempt: Dawn's line names the Vulkan driver it was pointed at.
  const candidates: { what: () => string; gpu: () => Promise<GPU> }[] = [];
  if (opts.gpu) candidates.push({ what: () => 'the GPU object passed in', gpu: async () => opts.gpu! });
  else {
    const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
    if (nav?.gpu) candidates.push({ what: () => 'navigator.gpu', gpu: async () => nav.gpu! });
    else tried.push('navigator.gpu (not present)');
    if (isNode()) {
      const icd = () => (process.env.VK_ICD_FILENAMES ? ` with VK_ICD_FILENAMES=${process.env.VK_ICD_FILENAMES}` : '');
      candidates.push({ what: () => `Node 'webgpu' package (Dawn)${icd()}`, gpu: async () => (await import('./dawn.js')).dawnGpu() });
    }
  }
  for (const c of candidates) {
    try {
      const gpu = await c.gpu();
      const adapter = await gpu.requestAdapter({ powerPreference: opts.powerPreference });
      if (adapter) {
        gpusInUse.add(gpu);
        return adapter;
      }
      tried.push(`${c.what()}: requestAdapter() returned null`);
    } catch (e) {
      tried.push(`${c.what()}: ${(e as Error).message}`);
    }
  }
  if (isNode() && process.platform === 'linux' && !process.env.VK_ICD_FILENAMES) {
    tried.push(`no SwiftShader driver at ${SWIFTSHADER_ICD} (install Debian's chromium for a CPU adapter)`);
  }
  throw new Error(`no WebGPU adapter found; tried: ${tried.join('; ')}`);
}

export async function requestDevice(adapter: GPUAdapter): Promise<GPUDevice> {
  const requiredLimits: Record<string, number> = {};
  for (const name of WANTED_LIMITS) {
    const v = (adapter.limits as unknown as Record<string, number | undefined>)[name];
    if (typeof v === 'number') requiredLimits[name] = v;
  }
  return adapter.requestDevice({ requiredLimits, label: 'flatgrad' });
}

/** Describes an adapter in one line, e.g. "SwiftShader driver 5.0.0 (google swiftshader)". */
export function describeAdapter(info: GPUAdapterInfo | undefined): string {
  if (!info) return 'unknown WebGPU adapter';
  const main = info.description || info.device || 'WebGPU adapter';
  const extra = [info.vendor, info.architecture].filter(Boolean).join(' ');
  return extra ? `${main} (${extra})` : main;
}

/** Whether an adapter emulates the GPU on the CPU (SwiftShader, Mesa's lavapipe/llvmpipe). */
export function isCpuEmulated(info: GPUAdapterInfo | undefined): boolean {
  if (!info) return false;
  const text = `${info.vendor} ${info.architecture} ${info.device} ${info.description}`.toLowerCase();
  return /swiftshader|llvmpipe|lavapipe|software|warp/.test(text);
}

export async function createWebGPUBackend(opts: WebGPUOptions = {}): Promise<WebGPUBackend> {
  await loadFusedKernels('webgpu');
  if (opts.preloadKernels ?? isNode()) await preloadKernelFamilies();
  if (opts.device) return new WebGPUBackend(opts.device, (opts.device as { adapterInfo?: GPUAdapterInfo }).adapterInfo, opts);
  const adapter = await requestAdapter(opts);
  const device = await requestDevice(adapter);
  return new WebGPUBackend(device, adapter.info, opts);
}
