/**
 * Reliability: checkpoints resume bit for bit (CPU) and within float tolerance (WebGPU), a crash
 * mid-write keeps the previous checkpoint, corrupt checkpoints are clear errors naming the file,
 * a long WebGPU training loop does not leak and the pool trims, device loss says so and training
 * resumes on the CPU backend from the last checkpoint, NaN batches are skipped and counted, and
 * the option errors not already covered by sam.test.ts / optim.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as fg from '../src/index.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import type { Backend } from '../src/kernels/backend.js';
import { disposeCheckpoint, loadCheckpoint, saveCheckpoint, type StateTree } from '../src/io/checkpoint.js';
import { writeFileAtomic } from '../src/io/atomic.js';
import { generator } from '../src/tensor/random.js';
import { acquireWebGPU, expectClose, expectExact } from './helpers/webgpu.js';

const { nn, optim } = fg;
type Tensor = fg.Tensor;

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'flatgrad-reliability-'));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------- helpers

/** Host data for step t (a pure function of t, so a resumed run sees the same batches). */
function batch(t: number, n: number, inDim: number, classes: number): { x: Float32Array; y: Int32Array } {
  let h = (t + 1) * 2654435761;
  const rnd = () => ((h = (Math.imul(h ^ (h >>> 15), 2246822507) + 0x6d2b79f5) >>> 0) / 2 ** 32) * 2 - 1;
  const y = Int32Array.from({ length: n }, (_, i) => (i + t) % classes);
  const x = Float32Array.from({ length: n * inDim }, () => rnd());
  for (let i = 0; i < n; i++) x[i * inDim] += y[i] - (classes - 1) / 2;
  return { x, y };
}

interface Run {
  model: fg.nn.Sequential;
  opt: fg.optim.Optimizer;
  kind: string;
  sizes: number[];
}

function makeModel(seed: number, sizes: number[]): fg.nn.Sequential {
  fg.manualSeed(seed);
  return nn.models.mlp(sizes, { activation: 'tanh', dtype: 'float32' });
}

const SGD_OPTS = { lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 1e-3 };
const ADAMW_OPTS = { lr: 0.01, weightDecay: 1e-2 };

function makeOpt(kind: string, params: fg.nn.Parameter[]): fg.optim.Optimizer {
  switch (kind) {
    case 'SGD':
      return new optim.SGD(params, SGD_OPTS);
    case 'AdamW':
      return new optim.AdamW(params, ADAMW_OPTS);
    case 'SAM(SGD)':
      return new optim.SAM(params, optim.SGD, { rho: 0.05, ...SGD_OPTS });
    case 'ASAM(AdamW)':
      return new optim.ASAM(params, optim.AdamW, { rho: 0.5, ...ADAMW_OPTS });
    case 'LookSAM(k=3)':
      return new optim.LookSAM(params, optim.SGD, { rho: 0.05, k: 3, alpha: 0.7, ...SGD_OPTS });
    case 'LookSAM(k=3, unfused)':
      return new optim.LookSAM(params, optim.SGD, { rho: 0.05, k: 3, alpha: 0.7, fused: false, ...SGD_OPTS });
    case 'RandomSAM(SGD)':
      return new optim.RandomSAM(params, optim.SGD, { rho: 0.05, ...SGD_OPTS });
    default:
      throw new Error(kind);
  }
}

function newRun(kind: string, seed: number, sizes = [4, 8, 3]): Run {
  const model = makeModel(seed, sizes);
  return { model, opt: makeOpt(kind, model.parameters()), kind, sizes };
}

/** One training step at batch t; returns the loss tensor (kept; the caller disposes it). */
function step(r: Run, t: number, n = 6, poison = false): Tensor {
  const [inDim, classes] = [r.sizes[0], r.sizes[r.sizes.length - 1]];
  const b = batch(t, n, inDim, classes);
  if (poison) b.x[1] = NaN;
  const closure = () =>
    fg.tidy(() => {
      const x = fg.tensor(b.x, { shape: [n, inDim], dtype: 'float32' });
      const y = fg.tensor(b.y, { dtype: 'int32' });
      const l = nn.functional.crossEntropy(r.model.forward(x), y);
      l.backward();
      return l;
    });
  if (r.opt instanceof optim.SharpnessAware) return fg.keep(r.opt.step(closure) as Tensor);
  r.opt.zeroGrad();
  const l = closure();
  r.opt.step();
  return l;
}

function train(r: Run, from: number, to: number): void {
  for (let t = from; t < to; t++) step(r, t).dispose();
}

async function params(r: { model: fg.nn.Module }): Promise<Float32Array> {
  const parts = await Promise.all(r.model.parameters().map((p) => p.data()));
  return Float32Array.from(parts.flatMap((a) => Array.from(a)));
}

async function save(path: string, r: Run): Promise<void> {
  await saveCheckpoint(path, { model: r.model.stateDict(), optimizer: r.opt.stateDict() as unknown as StateTree, rng: generator.getState(), meta: { kind: r.kind } });
}

/** A fresh model (different init) and optimizer, loaded from the checkpoint; the RNG is scrambled first. */
async function resume(path: string, kind: string, sizes = [4, 8, 3]): Promise<Run> {
  const r = newRun(kind, 999, sizes);
  fg.manualSeed(12345); // any RNG state the checkpoint must override
  generator.nextKey();
  const ck = await loadCheckpoint(path);
  try {
    r.model.loadStateDict(ck.model);
    r.opt.loadStateDict(ck.optimizer as unknown as fg.optim.OptimizerStateDict);
    generator.setState(ck.rng as { seed: number; draws: number });
  } finally {
    disposeCheckpoint(ck);
  }
  return r;
}

// ------------------------------------------------------------------- 1. exact resume (CPU)

describe('checkpoint resume', () => {
  const N = 4;
  const M = 5;
  for (const kind of ['SGD', 'AdamW', 'SAM(SGD)', 'ASAM(AdamW)', 'LookSAM(k=3)', 'LookSAM(k=3, unfused)', 'RandomSAM(SGD)']) {
    it(`${kind}: ${N} steps, save, load, ${M} steps equals ${N + M} steps bit for bit (cpu, float32)`, async () => {
      fg.manualSeed(7);
      const whole = newRun(kind, 1);
      train(whole, 0, N + M);
      const expected = await params(whole);

      fg.manualSeed(7);
      const first = newRun(kind, 1);
      train(first, 0, N);
      const path = join(dir, `${kind.replace(/\W/g, '_')}.safetensors`);
      await save(path, first);
      const atSave = await params(first);
      train(first, N, N + 2); // the original keeps going: the checkpoint must not alias its arena

      const resumed = await resume(path, kind);
      expectExact(await params(resumed), atSave, `${kind}: parameters at load`);
      train(resumed, N, N + M);
      const got = await params(resumed);
      expect(got.some((v, i) => v !== atSave[i]), 'training moved the parameters').toBe(true);
      expectExact(got, expected, `${kind}: resumed vs uninterrupted`);
      if (resumed.opt instanceof optim.SharpnessAware) {
        const s = await resumed.opt.stats();
        expect(s.attempted).toBe(N + M);
        expect(s.skipped).toBe(0);
      }
    });
  }

  it('LookSAM: without its saved counter and direction the resume would differ (the test can see the fix)', async () => {
    fg.manualSeed(7);
    const whole = newRun('LookSAM(k=3)', 1);
    train(whole, 0, N + M);
    fg.manualSeed(7);
    const first = newRun('LookSAM(k=3)', 1);
    train(first, 0, N);
    const sd = first.opt.stateDict() as unknown as Record<string, unknown>;
    expect(sd.looksam).toMatchObject({ iter: N });
    const stripped = newRun('LookSAM(k=3)', 999);
    stripped.model.loadStateDict(first.model.stateDict());
    const { looksam: _drop, ...rest } = sd;
    stripped.opt.loadStateDict(rest as unknown as fg.optim.OptimizerStateDict);
    train(stripped, N, N + M);
    const a = await params(stripped);
    const b = await params(whole);
    expect(a.some((v, i) => v !== b[i])).toBe(true);
  });
});

// ------------------------------------------------------------- 2. crash mid-write, corrupt files

describe('checkpoint files', () => {
  it('a crash mid-write leaves the previous checkpoint intact and loadable', async () => {
    fg.manualSeed(3);
    const r = newRun('SAM(SGD)', 3);
    train(r, 0, 2);
    const path = join(dir, 'crash.safetensors');
    await save(path, r);
    const before = await readFile(path);
    const good = await params(r);

    async function* dying(): AsyncIterable<Uint8Array> {
      yield before.subarray(0, 100); // part of a file is on disk ...
      throw new Error('simulated crash');
    }
    await expect(writeFileAtomic(path, dying())).rejects.toThrow('simulated crash');
    expect(Buffer.compare(await readFile(path), before)).toBe(0);
    const { readdir } = await import('node:fs/promises');
    expect((await readdir(dir)).filter((f) => f.startsWith('.crash.safetensors'))).toEqual([]);

    const resumed = await resume(path, 'SAM(SGD)');
    expectExact(await params(resumed), good, 'previous checkpoint');
  });

  it('truncated or garbage checkpoint files are errors naming the file', async () => {
    fg.manualSeed(3);
    const r = newRun('SGD', 3);
    train(r, 0, 1);
    const path = join(dir, 'ok.safetensors');
    await save(path, r);
    const bytes = await readFile(path);

    const truncated = join(dir, 'truncated.safetensors');
    await writeFile(truncated, bytes.subarray(0, bytes.length - 10));
    await expect(loadCheckpoint(truncated)).rejects.toThrow(/truncated\.safetensors/);

    const short = join(dir, 'short.safetensors');
    await writeFile(short, bytes.subarray(0, 5));
    await expect(loadCheckpoint(short)).rejects.toThrow(/short\.safetensors/);

    const garbage = join(dir, 'garbage.safetensors');
    const g = Buffer.from(bytes);
    g.write('{"this is not json', 8, 'latin1');
    await writeFile(garbage, g);
    await expect(loadCheckpoint(garbage)).rejects.toThrow(/garbage\.safetensors/);

    const missing = join(dir, 'missing.safetensors');
    await expect(loadCheckpoint(missing)).rejects.toThrow(/missing\.safetensors/);
  });
});

// -------------------------------------------------------------------- 5. NaN and zero gradients

describe('numerical faults (cpu)', () => {
  for (const kind of ['SGD', 'SAM(SGD)']) {
    it(`${kind}: a NaN in the input batch skips the step, counts it, and leaves the parameters unchanged`, async () => {
      fg.manualSeed(5);
      const r = newRun(kind, 5);
      train(r, 0, 2);
      const before = await params(r);
      const l = step(r, 2, 6, true);
      expect(Number.isNaN(await l.item())).toBe(true);
      l.dispose();
      expectExact(await params(r), before, `${kind}: after the NaN step`);
      const c = await r.opt.counters();
      expect(c).toEqual({ attempted: 3, taken: 2, skipped: 1 });
      // and the next clean step trains again
      train(r, 3, 4);
      expect((await params(r)).some((v, i) => v !== before[i])).toBe(true);
      expect((await r.opt.counters()).skipped).toBe(1);
    });
  }

  it('SAM with a zero gradient perturbs by nothing (no NaN), and the update is the base one', async () => {
    fg.manualSeed(6);
    const model = makeModel(6, [4, 8, 3]);
    const ps = model.parameters();
    const opt = new optim.SAM(ps, optim.SGD, { rho: 0.05, lr: 0.1 });
    const before = await params({ model });
    opt.step(() =>
      fg.tidy(() => {
        const x = fg.tensor(batch(0, 6, 4, 3).x, { shape: [6, 4], dtype: 'float32' });
        const l = fg.mul(fg.sum(model.forward(x)), 0);
        l.backward();
        return l;
      }),
    );
    const after = await params({ model });
    expect(after.every((v) => Number.isFinite(v))).toBe(true);
    expectExact(after, before, 'zero gradient, no weight decay');
    const s = await opt.stats();
    expect(s.skipped).toBe(0);
    expect(s.gradNorm).toBe(0);
    expect(Number.isFinite(s.perturbedGradNorm)).toBe(true);
  });
});

// ------------------------------------------------------------------------- 6. bad options

describe('option errors not covered elsewhere', () => {
  const ps = () => makeModel(1, [2, 2]).parameters();
  it('infinite rho, negative rho in the variants, non-finite lr in AdamW are errors naming the option', () => {
    expect(() => new optim.SAM(ps(), optim.SGD, { rho: Infinity, lr: 0.1 })).toThrow(/rho/);
    expect(() => new optim.LookSAM(ps(), optim.SGD, { rho: -1, lr: 0.1 })).toThrow(/rho/);
    expect(() => new optim.RandomSAM(ps(), optim.SGD, { rho: -1, lr: 0.1 })).toThrow(/rho/);
    expect(() => new optim.ASAM(ps(), optim.AdamW, { rho: NaN, lr: 0.01 })).toThrow(/rho/);
    expect(() => new optim.AdamW(ps(), { lr: NaN })).toThrow(/lr/);
    expect(() => new optim.AdamW(ps(), { lr: -1e-3 })).toThrow(/lr/);
    expect(() => new optim.SAM(ps(), optim.AdamW, { lr: -Infinity })).toThrow(/lr/);
  });
  it('an unknown option in the variants is an error naming it', () => {
    expect(() => new optim.RandomSAM(ps(), optim.SGD, { rhoo: 0.1, lr: 0.1 } as never)).toThrow(/"rhoo"/);
    expect(() => new optim.ASAM(ps(), optim.AdamW, { rhoo: 0.1 } as never)).toThrow(/"rhoo"/);
    expect(() => new optim.ESAM(ps(), optim.SGD, { rhoo: 0.1, lr: 0.1 } as never)).toThrow(/"rhoo"/);
  });
  it('a corrupt LookSAM state is an error naming the field', () => {
    const o = new optim.LookSAM(ps(), optim.SGD, { lr: 0.1 });
    const sd = { ...o.stateDict(), looksam: { iter: -1, gv: null } };
    expect(() => o.loadStateDict(sd as never)).toThrow(/looksam\.iter/);
  });
});

// ----------------------------------------------------------------------------------- WebGPU

describe('WebGPU (SwiftShader)', () => {
  let gpu: Backend | null = null;
  let prev: Backend;
  beforeAll(async () => {
    prev = getBackend();
    gpu = (await acquireWebGPU()).backend;
  });
  afterAll(() => setBackend(prev));
  const onGpu = async (ctx: { skip: () => void }, f: (b: Backend) => Promise<void> | void) => {
    if (!gpu) return ctx.skip();
    setBackend(gpu);
    try {
      await f(gpu);
    } finally {
      setBackend(prev);
    }
  };

  it('SAM(SGD): resume on WebGPU matches the uninterrupted run within float tolerance', async (ctx) => {
    await onGpu(ctx, async () => {
      fg.manualSeed(7);
      const whole = newRun('SAM(SGD)', 1);
      train(whole, 0, 5);
      const expected = await params(whole);
      fg.manualSeed(7);
      const first = newRun('SAM(SGD)', 1);
      train(first, 0, 2);
      const path = join(dir, 'gpu.safetensors');
      await save(path, first);
      const resumed = await resume(path, 'SAM(SGD)');
      train(resumed, 2, 5);
      expectClose(await params(resumed), expected, { atol: 1e-5, rtol: 1e-4 }, 'webgpu resume');
      for (const r of [whole, first, resumed]) r.opt.dispose();
    });
  });

  const LEAK_STEPS = Number(process.env.FLATGRAD_LEAK_STEPS ?? 2000);
  it(`${LEAK_STEPS} SAM steps (16-32-4, batch 16) keep live buffers and bytes flat; trim() empties the pool`, async (ctx) => {
    await onGpu(ctx, async () => {
      const r = newRun('SAM(SGD)', 11, [16, 32, 4]);
      const B = 16;
      const data = [0, 1, 2, 3].map((t) => batch(t, B, 16, 4));
      const oneStep = (t: number) => {
        const b = data[t % data.length];
        const l = (r.opt as fg.optim.SAM).step(() =>
          fg.tidy(() => {
            const x = fg.tensor(b.x, { shape: [B, 16], dtype: 'float32' });
            const l = nn.functional.crossEntropy(r.model.forward(x), fg.tensor(b.y, { dtype: 'int32' }));
            l.backward();
            return l;
          }),
        ) as Tensor;
        l.dispose();
      };
      const evalLoss = async () => {
        const l = fg.tidy(() => nn.functional.crossEntropy(r.model.forward(fg.tensor(data[0].x, { shape: [B, 16] })), fg.tensor(data[0].y, { dtype: 'int32' })));
        const v = await l.item();
        l.dispose();
        return v;
      };
      const t0 = performance.now();
      let at50 = fg.memory();
      let firstLoss = NaN;
      for (let t = 0; t < LEAK_STEPS; t++) {
        oneStep(t);
        if (t === 0) firstLoss = await evalLoss();
        if (t === 49) {
          await fg.getBackend().sync?.();
          at50 = fg.memory();
        }
        if (t % 100 === 99) await fg.getBackend().sync?.(); // bounds queued work, as a real loop's readbacks do
      }
      await fg.getBackend().sync?.();
      const end = fg.memory();
      const ms = performance.now() - t0;
      console.log(`[reliability] ${LEAK_STEPS} WebGPU SAM steps in ${(ms / 1000).toFixed(1)} s; memory at step 50 ${JSON.stringify(at50)}, at the end ${JSON.stringify(end)}`);
      expect(end.liveBuffers).toBe(at50.liveBuffers);
      expect(end.liveBytes).toBe(at50.liveBytes);
      const s = await (r.opt as fg.optim.SAM).stats();
      expect(s.skipped).toBe(0);
      const lastLoss = await evalLoss();
      expect(lastLoss).toBeLessThan(firstLoss);
      expect(end.pooledBytes ?? 0).toBeGreaterThan(0);
      fg.trim();
      const trimmed = fg.memory();
      expect(trimmed.pooledBytes ?? 0).toBe(0);
      expect(trimmed.liveBuffers).toBe(end.liveBuffers);
      r.opt.dispose();
    });
  });
});

// ------------------------------------------------------------------------------- 4. device loss

/** A WebGPU backend of its own (so the other WebGPU tests keep theirs), active while f runs, destroyed inside f. */
async function withDoomedGpu(ctx: { skip: () => void }, f: (gpu: Backend) => Promise<void>): Promise<void> {
  const prev = getBackend();
  if (!(await acquireWebGPU()).backend) return ctx.skip();
  try {
    await fg.init({ backend: 'webgpu' });
    await f(getBackend());
  } finally {
    setBackend(prev);
  }
}

describe('device loss', () => {
  it('after the WebGPU device is destroyed the next step says "device lost"; training resumes on the CPU from the checkpoint', async (ctx) => {
    await withDoomedGpu(ctx, async (gpu) => {
      fg.manualSeed(8);
      const r = newRun('SAM(SGD)', 8);
      train(r, 0, 3);
      const path = join(dir, 'lost.safetensors');
      await save(path, r);
      const saved = await params(r);

      gpu.destroy!();
      let err: unknown = null;
      try {
        const l = step(r, 3);
        await l.data();
      } catch (e) {
        err = e;
      }
      expect(err, 'the step after device loss must throw').toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(/device lost/i);

      // Training resumes on the CPU backend from the last checkpoint.
      await fg.init({ backend: 'cpu' });
      const resumed = await resume(path, 'SAM(SGD)');
      expectExact(await params(resumed), saved, 'parameters at load on the CPU');
      const l = step(resumed, 3);
      expect(Number.isFinite(await l.item())).toBe(true);
      l.dispose();
      train(resumed, 4, 6);
      const after = await params(resumed);
      expect(after.every(Number.isFinite)).toBe(true);
      expect(after.some((v, i) => v !== saved[i])).toBe(true);
    });
  });

  it('init({ backend: "cpu" }) works after the WebGPU device was lost', async (ctx) => {
    await withDoomedGpu(ctx, async (gpu) => {
      gpu.destroy!();
      await expect(fg.init({ backend: 'cpu' })).resolves.toBeDefined();
      expect(getBackend().name).toBe('cpu');
    });
  });
});
