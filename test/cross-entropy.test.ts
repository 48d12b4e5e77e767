/**
 * crossEntropy without class weights is one fused kernel whatever the labels' origin: rows
 * labelled ignoreIndex give loss 0 and gradient 0 inside the kernel, and 'mean' divides by the
 * number of rows not ignored, counted on the host or on the device to the same exact integer.
 * Checked here: the kernels of cpu (reference), wasm and WebGPU against each other; the op
 * against PyTorch 1.13 (test/fixtures/nn/cross-entropy-ignore.json, from
 * `/usr/bin/python3 scripts/gen-cross-entropy-fixtures.py test/fixtures/nn/cross-entropy-ignore.json`);
 * gradcheck and gradgradcheck with ignored rows; and the same bits for labels uploaded from the
 * host and labels computed on the device (indexSelect, narrow, arithmetic), on every backend.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend, CrossEntropyLayout } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { createWebGPUBackend } from '../src/kernels/webgpu/index.js';
import type { DType, TypedArray } from '../src/tensor/dtype.js';
import { withBackend } from './helpers/backend-scope.js';
import { decodeTensor, type EncodedTensor } from './helpers/torch-fixture.js';
import { acquireWebGPU, expectClose, randomF32, type Tolerance } from './helpers/webgpu.js';

const here = dirname(fileURLToPath(import.meta.url));

interface Case {
  name: string;
  opts: { reduction: 'mean' | 'sum' | 'none'; labelSmoothing: number; ignoreIndex: number };
  logits: EncodedTensor;
  labels: EncodedTensor;
  out: EncodedTensor;
  proj: EncodedTensor;
  grad: EncodedTensor;
}
const REF: { torch_version: string; cases: Case[] } = JSON.parse(readFileSync(join(here, 'fixtures/nn/cross-entropy-ignore.json'), 'utf8'));

const prev = getBackend();
const cpu = new CpuBackend();
const wasm = await createWasmBackend({ threads: 1 });
const webgpu = (await acquireWebGPU()).backend;
const gpu: Backend | null = webgpu;
// The same device with the real-GPU kernel choice: rows longer than 64 get a workgroup each (on a
// CPU-emulated adapter every row gets one thread), so both WGSL row reductions are tested here.
const gpuWorkgroupRows: Backend | null = webgpu ? await createWebGPUBackend({ device: webgpu.device, cpuEmulated: false }) : null;
afterAll(() => setBackend(prev));

const BACKENDS: [string, Backend | null][] = [
  ['cpu', cpu],
  ['wasm', wasm],
  ['webgpu', gpu],
];

/** The raw bits of float32 data, so that a comparison tells -0 from 0 and one ulp from none. */
const bits = (a: TypedArray): number[] => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

describe('the kernels: cpu reference, wasm and WebGPU agree, ignored rows are exactly 0', () => {
  // Awkward sizes, both reductions of a row on WebGPU (cols > 64 takes a workgroup per row on a real GPU),
  // ignoreIndex both outside the classes (-100) and naming one (2), and one out-of-range label that is not ignored.
  const shapes: [number, number][] = [
    [1, 1],
    [3, 7],
    [7, 3],
    [6, 65],
  ];
  for (const [rows, cols] of shapes) {
    for (const labelSmoothing of [0, 0.3]) {
      for (const ignoreIndex of cols > 2 ? [-100, 2] : [-100]) {
        const layout: CrossEntropyLayout = { rows, cols, labelSmoothing, ignoreIndex };
        const x = randomF32(rows * cols, rows * 131 + cols, -3, 3);
        const g = randomF32(rows, rows + cols + 7, 0.5, 2);
        // Row 0 is ignored with NaN and inf logits (they must not leak); the last row is out of range (NaN) when rows > 2.
        const labels = Int32Array.from({ length: rows }, (_, r) => (r === 0 ? ignoreIndex : r === rows - 1 && rows > 2 ? cols : (r * 5) % cols));
        x[0] = NaN;
        if (cols > 1) x[1] = Infinity;
        const name = `${rows}x${cols} s=${labelSmoothing} ignore=${ignoreIndex}`;
        const run = async (b: Backend) => {
          const [xs, ys, gs] = [b.upload(x, 'float32'), b.upload(labels, 'int32'), b.upload(g, 'float32')];
          const [loss, grad] = [b.alloc(rows, 'float32'), b.alloc(rows * cols, 'float32')];
          try {
            b.crossEntropy(xs, ys, loss, layout);
            b.crossEntropyBackward(xs, ys, gs, grad, layout);
            return { loss: await b.read(loss), grad: await b.read(grad) };
          } finally {
            for (const s of [xs, ys, gs, loss, grad]) b.release(s);
          }
        };
        it(name, async () => {
          const reference = await run(cpu);
          for (const [where, b] of [...BACKENDS, ['webgpu, a workgroup per row', gpuWorkgroupRows] as const]) {
            if (!b) continue;
            const got = b === cpu ? reference : await run(b);
            for (let r = 0; r < rows; r++) {
              const rowGrad = got.grad.subarray(r * cols, (r + 1) * cols);
              if (labels[r] === ignoreIndex) {
                expect(got.loss[r], `${where} ${name}: ignored row ${r} loss`).toBe(0);
                expect(Array.from(rowGrad), `${where} ${name}: ignored row ${r} gradient`).toEqual(new Array(cols).fill(0));
              } else if (!(labels[r] >= 0 && labels[r] < cols)) {
                expect(got.loss[r], `${where} ${name}: out-of-range row ${r} loss`).toBeNaN();
                expect(rowGrad.every(Number.isNaN), `${where} ${name}: out-of-range row ${r} gradient`).toBe(true);
              }
            }
            if (b === cpu) continue;
            expectClose(got.loss, reference.loss, { atol: 1e-5, rtol: 1e-5 }, `${where} ${name}: loss`);
            expectClose(got.grad, reference.grad, { atol: 2e-6, rtol: 1e-5 }, `${where} ${name}: gradient`);
          }
        });
      }
    }
  }
});

/** A fixture case on the active backend in `dtype`: the output and the gradient of sum(out * proj). */
async function checkCase(c: Case, dtype: DType, tol: Tolerance, where: string): Promise<void> {
  const x = fg.tensor(decodeTensor(c.logits), { shape: c.logits.shape, dtype, requiresGrad: true });
  const labels = fg.tensor(decodeTensor(c.labels), { shape: c.labels.shape, dtype: 'int32' });
  const out = fg.crossEntropy(x, labels, c.opts);
  const [grad] = fg.grad(fg.sum(fg.mul(out, fg.tensor(decodeTensor(c.proj), { shape: c.proj.shape, dtype }))), [x]);
  const typed = (v: number[]) => (dtype === 'float64' ? Float64Array.from(v) : Float32Array.from(v));
  expect(out.shape, `${where} ${c.name}: output shape`).toEqual(c.out.shape);
  expectClose(await out.data(), typed(decodeTensor(c.out)), tol, `${where} ${c.name}: output`);
  expectClose(await grad!.data(), typed(decodeTensor(c.grad)), tol, `${where} ${c.name}: gradient`);
  for (const t of [x, labels, out, grad!]) t.dispose();
}

describe('ignored rows against PyTorch 1.13', () => {
  it('the fixture comes from PyTorch 1.13', () => expect(REF.torch_version).toMatch(/^1\.13/));
  for (const c of REF.cases) {
    it(`${c.name}: float64 on cpu`, () => withBackend(cpu, () => checkCase(c, 'float64', { atol: 1e-12, rtol: 1e-10 }, 'cpu f64')));
    for (const [where, b] of BACKENDS) {
      it(`${c.name}: float32 on ${where}`, async (ctx) => {
        if (!b) return ctx.skip();
        await withBackend(b, () => checkCase(c, 'float32', { atol: 1e-5, rtol: 1e-4 }, where));
      });
    }
  }
});

describe('gradients with ignored rows (float64, cpu)', () => {
  const logits = () => {
    fg.manualSeed(5);
    return fg.randn([6, 4], { dtype: 'float64' }).mul(2).detach().requiresGrad_();
  };
  const cases: [string, number[], fg.CrossEntropyOptions][] = [
    ['mean, two rows ignored', [1, -100, 3, 0, -100, 2], {}],
    ['mean, smoothing 0.2, two rows ignored', [1, -100, 3, 0, -100, 2], { labelSmoothing: 0.2 }],
    ['sum, smoothing 0.1, ignoreIndex 3 (a class)', [1, 3, 3, 0, 2, 2], { labelSmoothing: 0.1, reduction: 'sum', ignoreIndex: 3 }],
    ['none, one row ignored', [1, 0, -100, 0, 2, 3], { reduction: 'none' }],
  ];
  for (const [name, values, opts] of cases) {
    const labels = () => fg.tensor(values, { dtype: 'int32' });
    it(`gradcheck: ${name}`, () => withBackend(cpu, () => expect(fg.gradcheck((x) => fg.crossEntropy(x, labels(), opts), [logits()])).toBe(true)));
    it(`gradgradcheck: ${name}`, () =>
      withBackend(cpu, () => expect(fg.gradgradcheck((x) => fg.crossEntropy(x, labels(), opts), [logits()], { atol: 1e-4 })).toBe(true)));
  }
  it('the double-backward gradient is 0 on ignored rows and equals the fused one', () =>
    withBackend(cpu, () => {
      const x = logits();
      const y = fg.tensor([1, -100, 3, 0, -100, 2], { dtype: 'int32' });
      const [fused] = fg.grad(fg.crossEntropy(x, y, { labelSmoothing: 0.2 }), [x]);
      const [composite] = fg.grad(fg.crossEntropy(x, y, { labelSmoothing: 0.2 }), [x], { createGraph: true });
      const [a, b] = [fused!.dataSync(), composite!.dataSync()];
      for (const r of [1, 4]) expect(Array.from(a.subarray(r * 4, r * 4 + 4))).toEqual([0, 0, 0, 0]);
      expectClose(b, a, { atol: 1e-15, rtol: 1e-12 }, 'createGraph vs fused');
    }));
});

describe('the same bits whether the labels have a host copy or were computed on the device', () => {
  const rows = 6;
  const cols = 5;
  const logits = randomF32(rows * cols, 99, -3, 3);
  // Each way of making the same labels: uploaded (a host copy), and three ways on the device (none on WebGPU).
  const makers: [string, (values: number[]) => fg.Tensor][] = [
    ['uploaded', (v) => fg.tensor(v, { dtype: 'int32' })],
    ['indexSelect', (v) => fg.indexSelect(fg.tensor([...v].reverse(), { dtype: 'int32' }), 0, fg.tensor(v.map((_, i) => v.length - 1 - i), { dtype: 'int32' }))],
    ['narrow', (v) => fg.narrow(fg.tensor([7, ...v, 7], { dtype: 'int32' }), 0, 1, v.length)],
    ['arithmetic', (v) => fg.tensor(v.map((l) => l - 1), { dtype: 'int32' }).add(1)],
  ];
  const labelSets: [string, number[]][] = [
    ['two rows ignored', [3, -100, 0, 4, -100, 1]],
    ['no row ignored', [3, 2, 0, 4, 1, 1]],
  ];
  for (const [where, b] of BACKENDS) {
    for (const [setName, values] of labelSets) {
      for (const labelSmoothing of [0, 0.1]) {
        it(`${where}, ${setName}, smoothing ${labelSmoothing}: mean loss and gradient`, async (ctx) => {
          if (!b) return ctx.skip();
          await withBackend(b, async () => {
            const results: { loss: number[]; grad: number[] }[] = [];
            for (const [how, make] of makers) {
              const labels = make(values);
              expect(Array.from(await labels.data()), `${how} labels`).toEqual(values);
              // On WebGPU only uploaded labels are on the host: the others exercise the device count.
              if (b === gpu) expect(labels.hostData === null, `${how}: host copy`).toBe(how !== 'uploaded');
              const x = fg.tensor(logits, { shape: [rows, cols], requiresGrad: true });
              const loss = fg.crossEntropy(x, labels, { labelSmoothing });
              const [grad] = fg.grad(loss, [x]);
              results.push({ loss: bits((await loss.data()) as Float32Array), grad: bits((await grad!.data()) as Float32Array) });
              for (const t of [labels, x, loss, grad!]) t.dispose();
            }
            expect(Number.isFinite(new Float32Array(Uint32Array.from(results[0].loss).buffer)[0])).toBe(true);
            for (let i = 1; i < makers.length; i++) {
              expect(results[i].loss, `${makers[i][0]} loss bits`).toEqual(results[0].loss);
              expect(results[i].grad, `${makers[i][0]} gradient bits`).toEqual(results[0].grad);
            }
          });
        });
      }
    }
  }
  // The mean's divisor is counted on the device: a count taken on the host while tracing would be
  // replayed as a constant, and a later batch with another number of ignored rows would be wrong.
  for (const [where, b] of BACKENDS.filter(([w]) => w !== 'webgpu')) {
    it(`${where}: a captured step replayed on labels with other ignored rows equals the eager step bit for bit`, () =>
      withBackend(b!, async () => {
        const w = fg.tensor(randomF32(cols * cols, 5, -1, 1), { shape: [cols, cols], requiresGrad: true });
        const step = (x: fg.Tensor, y: fg.Tensor) => {
          const loss = fg.crossEntropy(fg.matmul(x, w), y, { labelSmoothing: 0.1 });
          const [g] = fg.grad(loss, [w]);
          return fg.stack([loss, g!.sum()]);
        };
        const compiled = fg.compile(step, { onMessage: (m) => { throw new Error(`unexpected fall-back: ${m}`); } });
        const batches = [[3, 2, 0, 4, 1, 1], [3, -100, 0, 4, -100, 1], [-100, 2, 0, 4, 1, -100], [-100, -100, -100, 4, -100, 1], [3, 2, 0, 4, 1, 1]];
        for (const values of batches) {
          const x = fg.tensor(logits, { shape: [rows, cols] });
          const y = fg.tensor(values, { dtype: 'int32' });
          const [eager, captured] = [step(x, y), compiled(x, y)];
          expect(bits((await captured.data()) as Float32Array), `labels ${values}`).toEqual(bits((await eager.data()) as Float32Array));
          for (const t of [x, y, eager, captured]) t.dispose();
        }
        expect(compiled.stats().replays).toBeGreaterThan(0);
        compiled.dispose();
      }));
  }
  it('labels computed on the device take the fused node, ignored rows included', async (ctx) => {
    if (!gpu) return ctx.skip();
    await withBackend(gpu, () => {
      const x = fg.tensor(logits, { shape: [rows, cols], requiresGrad: true });
      const labels = fg.tensor([3, -101, 0, 4, -101, 1], { dtype: 'int32' }).add(1);
      expect(labels.hostData).toBeNull();
      expect(fg.crossEntropy(x, labels, { reduction: 'none' }).gradFn?.op).toBe('crossEntropy');
    });
  });
  it('on WebGPU, a label with no host copy that is out of range and not ignored gives NaN', async (ctx) => {
    if (!gpu) return ctx.skip();
    await withBackend(gpu, async () => {
      const labels = fg.tensor([3, -101, 5, 3, -101, 1], { dtype: 'int32' }).add(1); // [4, -100, 6, 4, -100, 2]
      const perRow = await fg.crossEntropy(fg.tensor(logits, { shape: [rows, cols] }), labels, { reduction: 'none' }).data();
      expect(Array.from(perRow).map(Number.isNaN)).toEqual([false, false, true, false, false, false]);
      expect([perRow[1], perRow[4]]).toEqual([0, 0]);
    });
  });
});
