/**
 * `flatgrad train --resume` after a kill in the middle of an epoch continues exactly where the
 * last checkpoint was: on the CPU backend, a run killed twice (each time after a few steps past a
 * --checkpoint-every checkpoint, mid-epoch) and resumed each time ends with the same checkpoint,
 * bit for bit, as the run that was never interrupted: weights, optimizer and scheduler state, RNG
 * and every metric except wall-clock times. For every wrapper, under a schedule with warmup, and
 * for the one-cycle schedule and AdamW.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { init, tensor } from '../src/index.js';
import { LambdaLR, SGD } from '../src/optim/index.js';
import { main, type CliIO } from '../src/cli/main.js';
import { parseFlags } from '../src/cli/args.js';
import { TRAIN_FLAGS, WRAPPERS, resolveTrainConfig } from '../src/cli/config.js';
import { runTraining, type RunTarget } from '../src/cli/training.js';
import { CHECKPOINT_FILE } from '../src/cli/restore.js';
import { decodeSafetensors } from '../src/io/safetensors.js';

const BACKEND = { backend: 'cpu', adapter: 'cpu', threads: 1 } as never;
/** 80 images in batches of 16: 5 steps an epoch, 10 in all; checkpoints every 3 steps and at epoch ends. */
const BASE = ['--model', 'mlp', '--width', '8', '--depth', '1', '--batch-size', '16', '--limit-train', '80', '--limit-test', '32', '--backend', 'cpu', '--seed', '3'];
const EVERY = 3;
/** Kill points: after step 4 (last checkpoint: step 3, in epoch 1) and after step 8 (step 6, in epoch 2). */
const KILLS = [4, 8];

class Killed extends Error {}

const sink = { write: () => true } as unknown as CliIO['stderr'];
const io: CliIO = { stdout: sink, stderr: sink };

let dir: string;
beforeAll(async () => {
  await init({ backend: 'cpu' });
  dir = await mkdtemp(join(tmpdir(), 'flatgrad-resume-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function config(extra: string[]) {
  const parsed = parseFlags([...BASE, ...extra], TRAIN_FLAGS);
  return resolveTrainConfig(parsed.flags, parsed.given as Set<string>);
}

/** The run's final checkpoint: every tensor's bytes, and its JSON state without wall-clock times. */
async function finalState(runDir: string): Promise<{ tensors: Record<string, number[]>; state: unknown }> {
  const file = decodeSafetensors(new Uint8Array(await readFile(join(runDir, CHECKPOINT_FILE))));
  const tensors = Object.fromEntries(Object.entries(file.tensors).map(([k, t]) => [k, Array.from(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength))]));
  const timing = new Set(['trainSeconds', 'wallSeconds', 'epochSeconds', 'msPerStep']);
  const state = JSON.parse(file.metadata.state, (k, v) => (timing.has(k) ? undefined : v));
  return { tensors, state };
}

/** Runs keep one name (it is in the checkpoint) in different folders. */
async function train(folder: string, extra: string[], more: Partial<RunTarget> = {}): Promise<void> {
  await runTraining(config(['--epochs', '2', ...extra]), { dir: join(dir, folder), name: 'run', resume: false, checkpointEvery: EVERY, ...more }, BACKEND, io);
}

async function killedAndResumed(folder: string, extra: string[]): Promise<number[]> {
  const resumedAt: number[] = [];
  let resume = false;
  for (const kill of [...KILLS, Infinity]) {
    let first = -1;
    const onStep = (step: number): void => {
      if (first < 0) first = step;
      if (step === kill) throw new Killed(`killed after step ${step}`);
    };
    const run = train(folder, extra, { resume, onStep });
    if (kill === Infinity) await run;
    else await expect(run).rejects.toBeInstanceOf(Killed);
    if (resume) resumedAt.push(first - 1);
    resume = true;
  }
  return resumedAt;
}

const CASES: [string, string[]][] = [
  ...WRAPPERS.map((w): [string, string[]] => [`${w}, cosine with warmup`, ['--wrapper', w, '--schedule', 'cosine', '--warmup', '0.5']]),
  ['sam over adamw, one-cycle with warmup', ['--wrapper', 'sam', '--optimizer', 'adamw', '--schedule', 'onecycle', '--warmup', '0.3']],
  ['gsam, step schedule with warmup, augmentation', ['--wrapper', 'gsam', '--schedule', 'step', '--warmup', '1', '--augment']],
];

describe('resume after a kill mid-epoch (cpu, bit for bit)', () => {
  for (const [label, extra] of CASES) {
    it(label, async () => {
      const slug = label.replace(/[^\w]+/g, '-');
      await train(`${slug}-straight`, extra);
      const resumedAt = await killedAndResumed(`${slug}-killed`, extra);
      // Each resume starts after the last checkpoint before the kill, mid-epoch.
      expect(resumedAt).toEqual([3, 6]);
      const straight = await finalState(join(dir, `${slug}-straight`));
      const resumed = await finalState(join(dir, `${slug}-killed`));
      expect(Object.keys(resumed.tensors).sort()).toEqual(Object.keys(straight.tensors).sort());
      for (const k of Object.keys(straight.tensors)) expect(resumed.tensors[k], k).toEqual(straight.tensors[k]);
      expect(resumed.state).toEqual(straight.state);
    }, 120_000);
  }
});

describe('--checkpoint-every', () => {
  it('writes a mid-epoch checkpoint that says where the run stands, and resumes from it', async () => {
    const err: string[] = [];
    const cli: CliIO = { stdout: sink, stderr: { write: (s: string) => err.push(s) } as never, cwd: dir };
    const argv = ['train', ...BASE, '--epochs', '1', '--checkpoint-every', '2', '--name', 'every', '--out', '.'];
    const target: RunTarget = { dir: join(dir, 'every'), name: 'every', resume: false, checkpointEvery: 2, onStep: (s) => { if (s === 4) throw new Killed(); } };
    await expect(runTraining(config(['--epochs', '1']), target, BACKEND, io)).rejects.toBeInstanceOf(Killed);
    const mid = decodeSafetensors(new Uint8Array(await readFile(join(dir, 'every', CHECKPOINT_FILE))));
    const meta = JSON.parse(mid.metadata.state).meta;
    expect(meta.position).toMatchObject({ epoch: 0, batch: 4, totals: { seen: 64 } });
    expect(meta.history.epochs).toEqual([]);
    expect(await main([...argv, '--resume'], cli)).toBe(0);
    expect(err.join('')).toContain('every: resuming in epoch 1 of 1 at step 4 of 5');
    expect(await main([...argv, '--resume'], cli)).toBe(0);
    expect(err.join('')).toContain('every: already finished (1 epochs)');
    expect(await main(['train', '--checkpoint-every', '0'], cli)).toBe(2);
    expect(err.join('')).toContain('--checkpoint-every');
  }, 120_000);
});

describe('scheduler state (torch state_dict)', () => {
  it('restores lastEpoch, the base values and the last values, so a resumed schedule continues', () => {
    const make = () => {
      const opt = new SGD([tensor([1, 2], { requiresGrad: true })], { lr: 0.1 });
      return { opt, lr: new LambdaLR(opt, (t) => (t < 2 ? (t + 1) / 3 : 0.5 ** t)) };
    };
    const a = make();
    for (let i = 0; i < 4; i++) a.lr.step();
    // The scheduler's state is plain JSON (it goes into the checkpoint's metadata).
    const saved = { opt: a.opt.stateDict(), lr: JSON.parse(JSON.stringify(a.lr.stateDict())) };
    const b = make();
    b.opt.loadStateDict(saved.opt);
    b.lr.loadStateDict(saved.lr);
    expect(b.lr.lastEpoch).toBe(4);
    expect(b.lr.getLastLr()).toEqual(a.lr.getLastLr());
    a.lr.step();
    b.lr.step();
    expect(b.lr.getLastLr()).toEqual(a.lr.getLastLr());
    expect(b.opt.paramGroups[0].lr).toBe(a.opt.paramGroups[0].lr);
  });
});
