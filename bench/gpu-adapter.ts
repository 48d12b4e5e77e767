/**
 * The first step of bench/gpu.sh: finds the WebGPU adapter Dawn gives this process, prints it in
 * one line, writes its details as JSON, and refuses a CPU-emulated one (SwiftShader, lavapipe)
 * unless --allow-software is given, so that a GPU run without a working driver fails in seconds
 * instead of timing SwiftShader for minutes and reporting it as GPU figures.
 *
 *   node .gpu-bench/bench/gpu-adapter.mjs [--out=FILE.json] [--allow-software]
 *
 * Exit codes: 0 a hardware adapter (or a software one with --allow-software), 2 no adapter at all,
 * 3 only a software adapter. Not a .bench.ts: run-all.mjs does not collect it.
 */
import { writeFileSync } from 'node:fs';
import { describeAdapter, isCpuEmulated, requestAdapter } from '../src/kernels/webgpu/device.js';

const arg = (k: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3);
const allowSoftware = process.argv.includes('--allow-software');
const outFile = arg('out');

let adapter: GPUAdapter;
try {
  adapter = await requestAdapter({ powerPreference: 'high-performance' });
} catch (e) {
  console.error(`gpu-adapter: ${(e as Error).message}`);
  process.exit(2);
}
const info = adapter.info;
const described = describeAdapter(info);
const software = isCpuEmulated(info);
const details = {
  adapter: described,
  software,
  vendor: info.vendor,
  architecture: info.architecture,
  device: info.device,
  description: info.description,
  isFallbackAdapter: (info as { isFallbackAdapter?: boolean }).isFallbackAdapter ?? null,
  features: [...adapter.features].sort(),
  limits: Object.fromEntries(
    ['maxStorageBufferBindingSize', 'maxBufferSize', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup', 'maxStorageBuffersPerShaderStage'].map((k) => [
      k,
      (adapter.limits as unknown as Record<string, number>)[k],
    ]),
  ),
  env: { VK_ICD_FILENAMES: process.env.VK_ICD_FILENAMES ?? null, VK_DRIVER_FILES: process.env.VK_DRIVER_FILES ?? null },
  node: process.version,
  date: new Date().toISOString(),
};
if (outFile) writeFileSync(outFile, JSON.stringify(details, null, 2) + '\n');
console.log(`adapter: ${described}${software ? ' [software: CPU-emulated]' : ''}`);
if (software && !allowSoftware) {
  console.error(
    `gpu-adapter: the only WebGPU adapter found is ${described}, which emulates the GPU on the CPU; ` +
      `no hardware (Vulkan) driver was found (VK_ICD_FILENAMES=${process.env.VK_ICD_FILENAMES ?? 'unset'}). ` +
      'Timings on it are not GPU figures: pass --allow-software (or --dry-run) to run anyway.',
  );
  process.exit(3);
}
// Dawn's instance keeps the event loop alive.
process.exit(0);
