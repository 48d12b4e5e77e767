/**
 * The CLI trains with the captured step (fg.compile) by default and eagerly with --eager: the two
 * must compute the same run bit for bit (cpu, wasm), and the scheduled learning rate (and rho) must
 * not make the captured step trace again.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { main, type CliIO } from '../src/cli/main.js';
import { buildTrainer } from '../src/cli/optimizers.js';
import { buildModel } from '../src/cli/models.js';
import type { TrainConfig } from '../src/cli/config.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { rng } from './helpers/random.js';
import { acquireWebGPU, expectClose } from './helpers/webgpu.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'flatgrad-compile-cli-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function cli(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = { code: 0, out: '', err: '' };
  const io: CliIO = { stdout: { write: (s: string) => (r.out += s) }, stderr: { write: (s: string) => (r.err += s) }, cwd: dir };
  r.code = await main(argv, io);
  return r;
}

/** The columns of metrics.csv that the training computes (not the timings). */
async function computed(name: string): Promise<string[]> {
  const rows = (await readFile(join(dir, 'runs', name, 'metrics.csv'), 'utf8')).trim().split('\n');
  const head = rows[0].split(',');
  const keep = ['epoch', 'steps', 'lr', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'skipped_steps'].map((k) => head.indexOf(k));
  expect(keep.every((i) => i >= 0)).toBe(true);
  return rows.slice(1).map((r) => keep.map((i) => r.split(',')[i]).join(','));
}

describe('flatgrad train: captured by default, --eager equal', () => {
  for (const [backend, flags] of [
    ['cpu', ['--wrapper', 'sam', '--rho-schedule', 'lr', '--width', '32']],
    ['wasm', ['--model', 'cnn', '--optimizer', 'adamw', '--width', '4', '--depth', '1']],
    ['webgpu', ['--wrapper', 'sam', '--width', '32']],
  ] as const) {
    it(`${backend}: ${flags.join(' ')}`, async (ctx) => {
      if (backend === 'webgpu' && !(await acquireWebGPU()).backend) ctx.skip();
      const common = ['train', ...flags, '--epochs', '2', '--batch-size', '32', '--limit-train', '128', '--limit-test', '64', '--backend', backend];
      const cap = await cli([...common, '--name', `${backend}-captured`]);
      const eager = await cli([...common, '--eager', '--name', `${backend}-eager`]);
      expect(cap.code, cap.err).toBe(0);
      expect(eager.code, eager.err).toBe(0);
      // No fall-back message: the CLI's step is capturable.
      expect(cap.err).not.toContain('running eagerly');
      const a = await computed(`${backend}-captured`);
      const e = await computed(`${backend}-eager`);
      expect(a).toHaveLength(2);
      if (backend !== 'webgpu') expect(a).toEqual(e);
      else {
        // Within float32 tolerance on WebGPU (the reductions' order may differ between runs).
        const nums = (rows: string[]) => rows.flatMap((r) => r.split(',').map(Number));
        expectClose(Float64Array.from(nums(a)), Float64Array.from(nums(e)), { atol: 1e-4, rtol: 1e-3 }, 'metrics');
      }
      const summary = JSON.parse(await readFile(join(dir, 'runs', `${backend}-eager`, 'summary.json'), 'utf8'));
      expect(summary.config.eager).toBe(true);
      // --eager is how this invocation runs, not what the run computes: resuming with it is the same run.
      const resumed = await cli([...common, '--eager', '--resume', '--name', `${backend}-captured`]);
      expect(resumed.code, resumed.err).toBe(0);
      expect(resumed.err).toContain('already finished');
    });
  }
});

describe('the CLI trainer traces once for the whole schedule', () => {
  let prev: Backend;
  beforeAll(() => {
    prev = getBackend();
    setBackend(new CpuBackend());
  });
  afterAll(() => setBackend(prev));

  it('cosine lr with warmup, rho following the lr: one trace, then replays', async () => {
    const cfg = {
      model: 'mlp', width: 16, depth: 1, optimizer: 'sgd', wrapper: 'sam', lr: 0.05, momentum: 0.9, nesterov: false, weightDecay: 5e-4,
      wrapperParams: { rho: 0.05 }, epochs: 1, batchSize: 8, schedule: 'cosine', warmup: 0.25, augment: false, rhoSchedule: 'lr',
      backend: 'cpu', data: 'subset', labelNoise: 0, seed: 0,
    } as TrainConfig;
    fg.manualSeed(0);
    const model = buildModel(cfg, 10);
    const steps = 8;
    const trainer = buildTrainer(cfg, model, steps, { onMessage: (m) => { throw new Error(m); } });
    const r = rng(5);
    const lrs = new Set<number>();
    for (let t = 0; t < steps; t++) {
      const x = fg.tensor(Float32Array.from({ length: 8 * 784 }, () => r()), { shape: [8, 1, 28, 28] });
      const y = fg.tensor(Int32Array.from({ length: 8 }, () => Math.floor(r() * 10)), { dtype: 'int32' });
      lrs.add(trainer.currentLr());
      fg.dispose(fg.tidy(() => Object.values(trainer.step(x, y))));
      trainer.advance();
      fg.dispose([x, y]);
    }
    expect(lrs.size).toBe(steps);
    expect(trainer.captured.stats()).toMatchObject({ eagerCalls: 1, traces: 1, replays: steps - 2 });
    expect(trainer.captured.fallback).toBeNull();
  });
});
