/**
 * Issue 13 (the eager step's host time): the host-side shortcuts of the eager path (leak-reporter
 * registration only for tensors that leave tidy(), convolution layouts built without an object
 * spread, lighter autograd bookkeeping) must leave every bit as it was. The fixture
 * test/fixtures/eager-host-cost.json was written by the code BEFORE those changes: for the small
 * ResNet and the MLP 784-256-256-10, three SGD (momentum) steps and three SAM steps each, on cpu
 * and wasm (one thread), the loss of every step and a SHA-256 of every parameter afterwards
 * (and of BatchNorm's running statistics). A deliberate change of a kernel's arithmetic rewrites
 * it: FLATGRAD_WRITE_FIXTURE=1 npx vitest run test/eager-host-cost.test.ts.
 * The captured step (fg.compile) of each gives the same bits (it did before the changes too).
 * And the leak reporter, which now registers a tensor only when it leaves the tidy() scopes alive,
 * still reports every tensor that can leak.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { trainStep } from '../bench/instrument.js';

const fixtureFile = new URL('./fixtures/eager-host-cost.json', import.meta.url);
const write = process.env.FLATGRAD_WRITE_FIXTURE === '1';
type Run = { losses: number[]; state: Record<string, string> };
const fixture: Record<string, Run> = !write && existsSync(fixtureFile) ? JSON.parse(readFileSync(fixtureFile, 'utf8')) : {};
const written: Record<string, Run> = {};
afterAll(() => {
  if (write) writeFileSync(fixtureFile, `${JSON.stringify({ ...fixture, ...written }, null, 1)}\n`);
});

const batch = 16;
const models = {
  mlp: { make: () => fg.nn.models.mlp([784, 256, 256, 10]), shape: [batch, 784] },
  cnn: { make: () => fg.nn.models.resnetSmall({ inChannels: 1, numClasses: 10, widths: [8, 16, 32], blocksPerStage: 1 }), shape: [batch, 1, 28, 28] },
};

/** Three steps of `kind` on `model` from seed 1; the losses and the hashes of the state after them. */
function train(model: keyof typeof models, kind: 'sgd' | 'sam', captured: boolean): Run {
  fg.manualSeed(1);
  const net = models[model].make();
  net.train();
  const shape = models[model].shape;
  const x = fg.tensor(Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(i)), { shape }).keep();
  const y = fg.tensor(Int32Array.from({ length: batch }, (_, i) => (i * 7) % 10), { dtype: 'int32' }).keep();
  const sgd = { lr: 0.05, momentum: 0.9 };
  const opt = kind === 'sam' ? new fg.optim.SAM(net.parameters(), fg.optim.SGD, { ...sgd, rho: 0.05 }) : new fg.optim.SGD(net.parameters(), sgd);
  const closure = () => {
    const l = fg.crossEntropy(net.forward(x), y);
    l.backward();
    return l;
  };
  const eager = trainStep(opt, closure);
  const step = captured ? fg.compile(eager) : eager;
  const losses: number[] = [];
  for (let i = 0; i < 3; i++) {
    const l = step();
    losses.push((l.dataSync() as Float32Array)[0]);
    l.dispose();
  }
  const state: Record<string, string> = {};
  for (const [k, t] of Object.entries(net.stateDict())) {
    const d = t.dataSync();
    state[k] = createHash('sha256').update(new Uint8Array(d.buffer, d.byteOffset, d.byteLength)).digest('hex').slice(0, 16);
  }
  x.dispose();
  y.dispose();
  opt.dispose();
  return { losses, state };
}

for (const backend of ['cpu', 'wasm'] as const) {
  describe(`eager steps on ${backend} are bit for bit those recorded before the host-time changes`, () => {
    for (const model of ['mlp', 'cnn'] as const) {
      for (const kind of ['sgd', 'sam'] as const) {
        it(`${model} ${kind}: losses and parameters after three steps`, async () => {
          await fg.init({ backend, threads: 1 });
          const key = `${backend} ${model} ${kind}`;
          const run = train(model, kind, false);
          if (write) {
            written[key] = run;
            return;
          }
          expect(fixture[key], `no fixture for ${key}: run with FLATGRAD_WRITE_FIXTURE=1`).toBeDefined();
          expect(run.losses).toEqual(fixture[key].losses);
          expect(run.state).toEqual(fixture[key].state);
          expect(Object.keys(run.state).length).toBeGreaterThan(model === 'cnn' ? 20 : 5);
        }, 120_000);
        it(`${model} ${kind}: the captured step (fg.compile) gives the same bits`, async () => {
          await fg.init({ backend, threads: 1 });
          const run = train(model, kind, true);
          const key = `${backend} ${model} ${kind}`;
          expect(run.losses).toEqual(fixture[key].losses);
          expect(run.state).toEqual(fixture[key].state);
        }, 120_000);
      }
    }
  });
}

describe('leak reporter: a tensor is watched once it leaves the tidy() scopes alive', () => {
  it('reports tensors kept inside tidy() or returned from the outermost one, not those tidy() disposed', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    await fg.init({ backend: 'cpu' });
    const messages: string[] = [];
    fg.leaks.report = (m) => messages.push(m);
    const before = fg.leaks.count;
    const reported = (shape: string) => messages.some((m) => m.includes(`a int32 tensor of shape ${shape} on cpu was garbage-collected`));
    try {
      // Made and dropped in a function of its own, so that nothing here still refers to them.
      (() => {
        fg.tidy(() => {
          fg.zeros([3, 1, 7], { dtype: 'int32' }).keep(); // kept: outlives the scope, never disposed
          fg.zeros([5, 1, 1], { dtype: 'int32' }); // disposed by the scope
          const inner = fg.tidy(() => fg.zeros([4, 4, 1], { dtype: 'int32' })); // moves to the outer scope, which disposes it
          expect(inner.isDisposed).toBe(false);
        });
        const out = fg.tidy(() => fg.tidy(() => fg.zeros([2, 9], { dtype: 'int32' }))); // returned from the outermost scope
        expect(out.isDisposed).toBe(false);
        fg.zeros([6, 1, 1, 1], { dtype: 'int32' }).keep(); // made outside any scope (watched at once), then kept
      })();
      for (let i = 0; i < 50 && !(reported('[3,1,7]') && reported('[2,9]') && reported('[6,1,1,1]')); i++) {
        gc();
        await new Promise((r) => setTimeout(r, 10));
      }
    } finally {
      fg.leaks.report = null;
    }
    expect(reported('[3,1,7]'), 'a tensor kept inside tidy()').toBe(true);
    expect(reported('[2,9]'), 'a tensor returned from the outermost tidy()').toBe(true);
    expect(messages.filter((m) => m.includes('shape [6,1,1,1] ')).length, 'kept outside any scope: reported once').toBe(1);
    expect(reported('[5,1,1]'), 'a tensor tidy() disposed').toBe(false);
    expect(reported('[4,4,1]'), 'a tensor the outer tidy() disposed').toBe(false);
    expect(fg.leaks.count - before).toBeGreaterThanOrEqual(2);
  });
});
