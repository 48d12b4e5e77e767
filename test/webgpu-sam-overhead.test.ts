/**
 * What an eager SAM step costs on WebGPU beyond two SGD passes, counted through the runtime and
 * the device (issue 13: SAM / SGD should sit at or just under 2). A SAM step is the forward-backward
 * pass at w, the gradient norm and the perturbation, the pass at w + e with BatchNorm's running
 * statistics frozen, and the second gradient's check with the restore fused into the base update
 * (src/optim/sam.ts); bench/webgpu-sam-profile.ts times the same parts. Pinned here, for a small
 * ResNet (BatchNorm) and a small ViT of different parameter counts:
 * - the optimizer side is a constant number of dispatches, the SGD update's plus three (the norm's
 *   block and tree passes and the perturb), whatever the number of parameter tensors;
 * - the perturbed pass dispatches exactly the clean pass's kernels less one running-statistics
 *   call per BatchNorm layer (nothing recomputed, no second statistics update);
 * - nothing in the step reads back or waits for the queue, and once warm the step creates no
 *   buffer and no pipeline, and one bind group per dispatch, nothing more.
 */
import { describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { freezeRunningStats, unfreezeRunningStats } from '../src/nn/module.js';
import { BatchNorm2d } from '../src/nn/layers.js';
import type { WebGPUBackend } from '../src/kernels/webgpu/index.js';
import type { KernelCall } from '../src/kernels/webgpu/runtime.js';
import { initWebGPU, useBackend } from './helpers/backend-scope.js';
import { rng } from './helpers/random.js';

type Tensor = fg.Tensor;
const { nn, optim } = fg;

interface Counts {
  dispatches: number;
  reads: number;
  queueWaits: number;
  buffers: number;
  pipelines: number;
  bindGroups: number;
}

/** Counts what `f` makes the runtime and the device do (own-property wrappers, removed afterwards). */
function counting(gpu: WebGPUBackend, f: () => void): Counts {
  const c: Counts = { dispatches: 0, reads: 0, queueWaits: 0, buffers: 0, pipelines: 0, bindGroups: 0 };
  const rt = gpu.rt as unknown as Record<string, unknown>;
  const device = gpu.device as unknown as Record<string, unknown>;
  const queue = gpu.device.queue as unknown as Record<string, unknown>;
  const undo: (() => void)[] = [];
  const wrap = (o: Record<string, unknown>, name: string, count: (args: unknown[]) => void) => {
    const orig = o[name] as (...a: unknown[]) => unknown;
    const own = Object.prototype.hasOwnProperty.call(o, name);
    o[name] = function (this: unknown, ...a: unknown[]) {
      count(a);
      return orig.apply(this, a);
    };
    undo.push(() => (own ? (o[name] = orig) : delete o[name]));
  };
  // A call with no workgroups encodes nothing (Runtime.dispatch returns before encoding).
  wrap(rt, 'dispatch', (a) => ((a[0] as KernelCall).groups > 0 ? c.dispatches++ : 0));
  wrap(rt, 'read', () => c.reads++);
  wrap(rt, 'sync', () => c.queueWaits++);
  wrap(queue, 'onSubmittedWorkDone', () => c.queueWaits++);
  wrap(device, 'createBuffer', () => c.buffers++);
  wrap(device, 'createComputePipeline', () => c.pipelines++);
  wrap(device, 'createComputePipelineAsync', () => c.pipelines++);
  wrap(device, 'createBindGroup', () => c.bindGroups++);
  try {
    f();
  } finally {
    for (const u of undo.reverse()) u();
  }
  return c;
}

interface Case {
  name: string;
  make: () => fg.nn.Module & { forward(x: Tensor): Tensor };
  input: number[];
}

const CASES: Case[] = [
  { name: 'small ResNet (BatchNorm)', make: () => nn.models.resnetSmall({ inChannels: 1, numClasses: 4, widths: [4, 8, 8], blocksPerStage: 1 }), input: [4, 1, 8, 8] },
  { name: 'small ViT', make: () => nn.models.vit({ imageSize: 8, patchSize: 4, inChannels: 1, numClasses: 4, dim: 16, depth: 1, heads: 2, mlpRatio: 2 }), input: [4, 1, 8, 8] },
];

describe('an eager SAM step on WebGPU costs two passes and a constant optimizer side', () => {
  // No adapter: skipped, or a failure under REQUIRE_WEBGPU=1 (initWebGPU).
  const webgpu = useBackend(initWebGPU);

  const sides: Record<string, { sgd: number; sam: number; tensors: number }> = {};

  for (const c of CASES) {
    it(`${c.name}: dispatches, readbacks, waits and creations of a SAM step`, async (ctx) => {
      await webgpu.run(ctx, async () => {
        const gpu = webgpu.backend() as unknown as WebGPUBackend;
        fg.manualSeed(3);
        const sgdNet = c.make();
        fg.manualSeed(3);
        const samNet = c.make();
        sgdNet.train();
        samNet.train();
        const r = rng(11);
        const x = fg.tensor(Float32Array.from({ length: c.input.reduce((a, b) => a * b, 1) }, () => r() * 2 - 1), { shape: c.input });
        const y = fg.tensor(Int32Array.from({ length: c.input[0] }, (_, i) => i % 4), { dtype: 'int32' });
        const sgd = new optim.SGD(sgdNet.parameters(), { lr: 0.05 });
        const sam = new optim.SAM(samNet.parameters(), optim.SGD, { rho: 0.05, lr: 0.05 });
        const closure = (net: typeof sgdNet) => () => {
          const l = fg.crossEntropy(net.forward(x), y);
          l.backward();
          return l;
        };
        const sgdStep = () => fg.tidy(() => {
          sgd.zeroGrad();
          const l = closure(sgdNet)();
          sgd.step();
          return l;
        });
        const samStep = () => fg.tidy(() => sam.step(closure(samNet)) as Tensor);
        /** One forward-backward pass on the SGD copy, BatchNorm statistics frozen or not. */
        const pass = (frozen: boolean) => fg.tidy(() => {
          sgd.zeroGrad();
          if (frozen) freezeRunningStats();
          try {
            closure(sgdNet)();
          } finally {
            if (frozen) unfreezeRunningStats();
          }
        });
        // Warm: pipelines made, the buffer pool holding what a step uses.
        for (let i = 0; i < 3; i++) {
          for (const l of [sgdStep(), samStep()]) {
            expect(Number.isFinite(await l.item())).toBe(true);
            l.dispose();
          }
        }
        await gpu.sync();

        const clean = counting(gpu, () => pass(false));
        const frozen = counting(gpu, () => pass(true));
        await gpu.sync();
        let sgdLoss: Tensor | null = null;
        let samLoss: Tensor | null = null;
        const sgdCounts = counting(gpu, () => void (sgdLoss = sgdStep()));
        const samCounts = counting(gpu, () => void (samLoss = samStep()));
        // The steps really ran: their losses read back afterwards, outside the counted calls.
        for (const l of [sgdLoss!, samLoss!]) {
          expect(Number.isFinite(await (l as Tensor).item())).toBe(true);
          (l as Tensor).dispose();
        }

        const bnLayers = samNet.modules().filter((m) => m instanceof BatchNorm2d).length;
        expect(frozen.dispatches, 'the perturbed pass skips one running-statistics call per BatchNorm layer').toBe(clean.dispatches - bnLayers);
        const sgdSide = sgdCounts.dispatches - clean.dispatches;
        const samSide = samCounts.dispatches - clean.dispatches - frozen.dispatches;
        expect(samSide, `SAM's optimizer side (${samSide} dispatches) against SGD's (${sgdSide})`).toBe(sgdSide + 3);
        for (const [what, k] of [['SGD step', sgdCounts], ['SAM step', samCounts]] as const) {
          expect(k.reads, `${what}: readbacks`).toBe(0);
          expect(k.queueWaits, `${what}: queue waits`).toBe(0);
          expect(k.buffers, `${what}: buffers created once warm`).toBe(0);
          expect(k.pipelines, `${what}: pipelines created once warm`).toBe(0);
          expect(k.bindGroups, `${what}: bind groups (one per dispatch)`).toBe(k.dispatches);
        }
        sides[c.name] = { sgd: sgdSide, sam: samSide, tensors: samNet.parameters().length };
        fg.dispose([x, y]);
        sgd.dispose();
        sam.dispose();
      });
    });
  }

  it('the optimizer side does not grow with the number of parameter tensors', (ctx) => {
    if (!webgpu.backend()) return ctx.skip();
    const got = Object.values(sides);
    expect(got.length, 'every model recorded its optimizer sides').toBe(CASES.length);
    // The two models have different numbers of parameter tensors, and the same optimizer side.
    expect(new Set(got.map((s) => s.tensors)).size).toBe(got.length);
    expect(new Set(got.map((s) => `${s.sgd}/${s.sam}`)).size).toBe(1);
  });
});
