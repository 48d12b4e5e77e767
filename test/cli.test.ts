import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import { main, type CliIO } from '../src/cli/main.js';
import { contourSegments, heatmapSvg, lineChartSvg, lineChartVegaLite, niceTicks } from '../src/cli/plot.js';
import { aggregate, markdownTable } from '../src/cli/commands/compare.js';
import { CheckpointError, loadCheckpoint, saveCheckpoint } from '../src/io/checkpoint.js';
import type { RunSummary } from '../src/cli/training.js';
import { lrFactor } from '../src/cli/optimizers.js';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'flatgrad-cli-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = { code: 0, out: '', err: '' };
  const io: CliIO = { stdout: { write: (s: string) => (r.out += s) }, stderr: { write: (s: string) => (r.err += s) }, cwd: dir };
  r.code = await main(argv, io);
  return r;
}

describe('command line errors', () => {
  it.each([
    [['train', '--rhoo', '0.1'], 'unknown flag --rhoo (did you mean --rho?)'],
    [['train', '--rho', 'abc', '--wrapper', 'sam'], '--rho must be a non-negative number, got abc'],
    [['train', '--rho=-1', '--wrapper', 'sam'], '--rho must be a non-negative number, got -1'],
    [['train', '--optimizer', 'adam'], '--optimizer must be one of sgd, adamw, got adam'],
    [['train', '--epochs', '1.5'], '--epochs must be an integer >= 1, got 1.5'],
    [['train', '--label-noise', '2'], '--label-noise must be a number in [0, 1], got 2'],
    [['train', '--lr'], '--lr needs a value'],
    [['train', '--k', '3', '--wrapper', 'sam'], '--k applies to --wrapper looksam, not --wrapper sam'],
    [['train', '--momentum', '0.5', '--optimizer', 'adamw'], '--momentum applies to --optimizer sgd'],
    [['train', 'extra'], "unexpected argument 'extra'"],
    [['train', '--name', 'a/b'], '--name must be letters'],
    [['compare', '--configs', 'sgd,adam'], "unknown method 'adam'"],
    [['compare', '--configs', 'sgd,sam:rhoo=1'], "--configs item 'sam:rhoo=1': unknown flag --rhoo"],
    [['compare', '--configs', 'sgd,sam', '--k', '2'], '--k applies to none of the configurations'],
    [['compare', '--seeds', '0,x'], '--seeds must be a non-negative integer, got x'],
    [['sharpness'], 'missing the checkpoint'],
    [['landscape', ...'abcdefghi'], "unexpected argument 'i'"],
    [['landscape', 'x', '--grid', '1'], '--grid must be 0 (no 2-D slice) or at least 2, got 1'],
  ])('%j is a usage error naming the flag', async (argv, message) => {
    const r = await run(argv);
    expect(r.code).toBe(2);
    expect(r.err).toContain(message);
    expect(r.err).toContain(`usage: flatgrad ${argv[0]}`);
  });

  it('answers an unknown command and no command with the usage', async () => {
    expect((await run(['trian'])).err).toContain("unknown command 'trian'");
    const none = await run([]);
    expect(none.code).toBe(2);
    expect(none.err).toMatch(/usage: flatgrad <command>[\s\S]*compare/);
  });

  it('prints each command\'s flags with --help', async () => {
    const r = await run(['train', '--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('--batch-size <n>');
    expect(r.out).toContain('(default 128)');
    expect((await run(['bench', '--help'])).out).toContain('--optimizer <a,b,...>');
  });

  it('reports a missing checkpoint as an error, not a crash', async () => {
    const r = await run(['sharpness', 'no-such-run', '--backend', 'cpu']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('checkpoint no-such-run does not exist');
  });
});

describe('train, sharpness and landscape end to end', () => {
  const runDir = () => join(dir, 'runs', 'tiny');
  const exists = (p: string) => stat(p).then(() => true, () => false);

  it('trains one epoch on a few hundred images and writes the run directory', async () => {
    const r = await run([
      'train', '--wrapper', 'sam', '--width', '32', '--epochs', '1', '--batch-size', '64', '--lr', '0.1',
      '--limit-train', '320', '--limit-test', '200', '--backend', 'cpu', '--name', 'tiny',
    ]);
    expect(r.err).not.toContain('flatgrad train:');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^tiny: test accuracy \d+\.\d\d% .* 1 epochs in .* ms\/step on cpu\), 0 skipped steps/);
    const metrics = (await readFile(join(runDir(), 'metrics.csv'), 'utf8')).trim().split('\n');
    expect(metrics[0]).toBe('epoch,steps,lr,train_loss,train_accuracy,test_loss,test_accuracy,epoch_seconds,ms_per_step,skipped_steps');
    expect(metrics).toHaveLength(2);
    const summary = JSON.parse(await readFile(join(runDir(), 'summary.json'), 'utf8')) as RunSummary;
    expect(summary.config.wrapper).toBe('sam');
    expect(summary.config.wrapperParams).toEqual({ rho: 0.05 });
    expect(summary.steps).toBe(5);
    expect(summary.data).toMatchObject({ train: 320, test: 200 });
    expect(summary.backend.backend).toBe('cpu');
    expect(summary.final.testAccuracy).toBeGreaterThan(summary.initial.testAccuracy + 0.1);
    expect(summary.msPerStep).toBeGreaterThan(0);
    for (const f of ['loss.svg', 'accuracy.svg']) expect(await readFile(join(runDir(), f), 'utf8')).toMatch(/^<svg[\s\S]*<\/svg>\n$/);
    expect(JSON.parse(await readFile(join(runDir(), 'loss.vl.json'), 'utf8')).$schema).toContain('vega-lite');
    expect(await exists(join(runDir(), 'checkpoint.safetensors'))).toBe(true);
  });

  it('resuming a finished run trains nothing more', async () => {
    const r = await run(['train', '--name', 'tiny', '--resume', '--backend', 'cpu']);
    expect(r.code).toBe(0);
    expect(r.err).toContain('tiny: already finished (1 epochs)');
    expect(r.err).not.toContain('epoch 1/1');
  });

  it('measures the sharpness of the checkpoint', async () => {
    const r = await run(['sharpness', 'runs/tiny', '--k', '2', '--iters', '5', '--trace-samples', '3', '--rho', '0.05', '--examples', '64', '--backend', 'cpu']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(await readFile(join(runDir(), 'sharpness.json'), 'utf8'));
    expect(report.examples).toBe(64);
    expect(report.eigenvalues).toHaveLength(2);
    expect(report.eigenvalues[0]).toBeGreaterThan(0);
    expect(Math.abs(report.eigenvalues[0])).toBeGreaterThanOrEqual(Math.abs(report.eigenvalues[1]) * 0.5);
    expect(report.rhoSharpness[0].sharpness).toBeGreaterThan(0);
    expect(r.out).toContain('Hessian top-2 eigenvalues');
  });

  it('draws the loss landscape of one checkpoint and of two on one figure', async () => {
    const one = await run(['landscape', 'runs/tiny', '--points', '5', '--grid', '3', '--examples', '64', '--backend', 'cpu']);
    expect(one.code).toBe(0);
    const slices = JSON.parse(await readFile(join(runDir(), 'landscape.json'), 'utf8')).slices;
    expect(slices[0].oneD.alphas).toEqual([-1, -0.5, 0, 0.5, 1]);
    // The checkpoint's own loss sits at alpha = 0, a local basin along a random direction.
    expect(slices[0].oneD.losses[2]).toBeLessThan(Math.max(slices[0].oneD.losses[0], slices[0].oneD.losses[4]));
    expect(await readFile(join(runDir(), 'landscape-2d.svg'), 'utf8')).toContain('<svg');
    const two = await run(['landscape', 'runs/tiny', join(runDir(), 'checkpoint.safetensors'), '--points', '3', '--grid', '0', '--examples', '32', '--out', 'both', '--backend', 'cpu']);
    expect(two.code).toBe(0);
    const both = JSON.parse(await readFile(join(dir, 'both', 'landscape.json'), 'utf8'));
    expect(both.slices).toHaveLength(2);
    // The line from a checkpoint to itself is flat.
    expect(new Set(both.interpolation.losses.map((l: number) => l.toFixed(5))).size).toBe(1);
    expect(await exists(join(dir, 'both', 'interpolation.svg'))).toBe(true);
  });
});

describe('compare end to end', () => {
  it('runs every wrapper and writes the table and the curves', async () => {
    const methods = 'sgd,adamw,sam,asam,msam:micro-batches=2,looksam:k=2,esam,randomsam,rwp,gsam';
    const r = await run([
      'compare', '--configs', methods, '--seeds', '0', '--width', '16', '--epochs', '1', '--batch-size', '32',
      '--limit-train', '64', '--limit-test', '64', '--backend', 'cpu', '--name', 'all',
    ]);
    expect(r.code).toBe(0);
    const md = await readFile(join(dir, 'runs', 'all', 'comparison.md'), 'utf8');
    for (const m of methods.split(',')) expect(md).toContain(`| ${m} | 1 |`);
    expect(md).toContain('SAM - SGD:');
    expect(r.out).toContain('table: ');
    expect(await readFile(join(dir, 'runs', 'all', 'curves.svg'), 'utf8')).toContain('gsam');
    const runs = (await readFile(join(dir, 'runs', 'all', 'runs.csv'), 'utf8')).trim().split('\n');
    expect(runs).toHaveLength(11);
  });

  it('reuses finished runs with --resume, and refuses runs made with another configuration', async () => {
    const flags = ['--seeds', '0', '--width', '16', '--epochs', '1', '--batch-size', '32', '--limit-train', '64', '--limit-test', '64', '--backend', 'cpu', '--name', 'all', '--resume'];
    const again = await run(['compare', '--configs', 'sgd,sam', ...flags]);
    expect(again.code).toBe(0);
    expect(again.err).toContain('sam-s0: already finished (1 epochs)');
    const changed = await run(['compare', '--configs', 'sgd', ...flags, '--lr', '0.2']);
    expect(changed.code).toBe(1);
    expect(changed.err).toContain('was trained with another configuration (lr differ)');
  });
});

describe('learning-rate schedules', () => {
  it('warms up linearly, then decays by the schedule', () => {
    expect(lrFactor('cosine', 0, 100, 0)).toBe(1);
    expect(lrFactor('cosine', 50, 100, 0)).toBeCloseTo(0.5, 12);
    expect(lrFactor('cosine', 100, 100, 0)).toBeCloseTo(0, 12);
    expect(lrFactor('none', 70, 100, 0)).toBe(1);
    expect([0, 1, 2, 3].map((t) => lrFactor('none', t, 100, 4))).toEqual([0.2, 0.4, 0.6, 0.8]);
    expect(lrFactor('cosine', 4, 104, 4)).toBe(1);
    expect([0, 34, 67, 99].map((t) => lrFactor('step', t, 100, 0))).toEqual([1, 0.1, 0.1 ** 2, 0.1 ** 2]);
  });
});

describe('plots', () => {
  it('picks round ticks', () => {
    expect(niceTicks(0, 1, 5)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(0.013, 0.087, 4)).toEqual([0.02, 0.04, 0.06, 0.08]);
    expect(niceTicks(-3, 7, 5)).toEqual([-2, 0, 2, 4, 6]);
  });

  it('draws line charts with a legend, skipping non-finite points, and the same data as Vega-Lite', () => {
    const spec = { title: 'a <b>', xLabel: 'x', yLabel: 'y', series: [{ name: 'one', x: [0, 1, 2], y: [1, NaN, 3] }, { name: 'two', x: [0, 2], y: [2, 2], dashed: true }] };
    const svg = lineChartSvg(spec);
    expect(svg).toContain('a &#60;b&#62;');
    expect(svg.match(/<path d="M[^"]*"/g)).toHaveLength(2);
    expect(svg).toContain('stroke-dasharray');
    const vl = lineChartVegaLite(spec) as { data: { values: { y: number | null }[] } };
    expect(vl.data.values).toHaveLength(5);
    expect(vl.data.values[1].y).toBeNull();
  });

  it('finds contour segments where the surface crosses the level', () => {
    // z = x on a 3x3 grid: the level 0.5 crosses each row between columns 0 and 1.
    const z = [[0, 1, 2], [0, 1, 2], [0, 1, 2]];
    const segs = contourSegments(z, 0.5);
    expect(segs).toHaveLength(2);
    for (const [x0, , x1] of segs) expect([x0, x1]).toEqual([0.5, 0.5]);
    const svg = heatmapSvg({ xLabel: 'a', yLabel: 'b', xs: [0, 1, 2], ys: [0, 1, 2], z });
    expect(svg.match(/<rect x=/g)!.length).toBeGreaterThanOrEqual(9);
  });
});

describe('compare table', () => {
  const summary = (acc: number, ms: number, seed: number) => ({ config: { seed }, final: { testAccuracy: acc, trainAccuracy: 1, testLoss: 0.3 }, bestTestAccuracy: acc, msPerStep: ms, msPerStepMedian: ms, skippedSteps: 0 }) as unknown as RunSummary;

  it('reports mean ± std, time relative to SGD and the share of SAM\'s gain', () => {
    const rows = aggregate(['sgd', 'sam', 'looksam'], [
      { label: 'sgd', summary: summary(0.8, 10, 0) },
      { label: 'sgd', summary: summary(0.82, 10, 1) },
      { label: 'sam', summary: summary(0.85, 20, 0) },
      { label: 'sam', summary: summary(0.85, 20, 1) },
      { label: 'looksam', summary: summary(0.83, 12, 0) },
      { label: 'looksam', summary: summary(0.83, 12, 1) },
    ]);
    expect(rows[0].testAccuracy.mean).toBeCloseTo(0.81, 12);
    expect(rows[0].testAccuracy.std).toBeCloseTo(Math.sqrt(2e-4), 12);
    expect(rows[1].relativeTime).toBeCloseTo(2, 12);
    expect(rows[2].gainKept).toBeCloseTo(0.5, 12);
    expect(rows[0].gainKept).toBeNull();
    const md = markdownTable(rows, 'sgd');
    expect(md.split('\n')[0]).toContain("share of SAM's gain");
    expect(md).toContain('| looksam | 2 | 83.00 ± 0.00 | 17.00 | 83.00 | 100.00 |');
    expect(md).toContain('1.20x | 50% |');
  });
});

describe('checkpoint files', () => {
  it('round-trips model tensors, nested optimizer state, typed arrays and non-finite numbers', async () => {
    await fg.init({ backend: 'cpu' });
    const w = fg.tensor([[1, 2], [3, 4]]);
    const m = fg.tensor([0.5, -0.5], { dtype: 'float64' });
    const path = join(dir, 'state.safetensors');
    await saveCheckpoint(path, {
      model: { '0.weight': w },
      optimizer: { state: { 0: { momentum_buffer: m, step: 3 } }, param_groups: [{ lr: 0.1, params: [0] }], host: new Int32Array([7, 8]) },
      rng: { seed: 5, draws: 12 },
      meta: { best: -Infinity, note: 'x' },
    });
    const c = await loadCheckpoint(path);
    expect(c.model['0.weight'].shape).toEqual([2, 2]);
    expect(Array.from(c.model['0.weight'].dataSync())).toEqual([1, 2, 3, 4]);
    const opt = c.optimizer as { state: Record<string, { momentum_buffer: fg.Tensor; step: number }>; param_groups: unknown[]; host: Int32Array };
    expect(opt.state['0'].momentum_buffer.dtype).toBe('float64');
    expect(Array.from(opt.state['0'].momentum_buffer.dataSync())).toEqual([0.5, -0.5]);
    expect(opt.state['0'].step).toBe(3);
    expect(opt.param_groups).toEqual([{ lr: 0.1, params: [0] }]);
    expect(opt.host).toEqual(new Int32Array([7, 8]));
    expect(c.rng).toEqual({ seed: 5, draws: 12 });
    expect(c.meta).toEqual({ best: -Infinity, note: 'x' });
    // A plain safetensors file is not a checkpoint.
    const { writeSafetensorsFile } = await import('../src/io/safetensors.js');
    await writeSafetensorsFile(join(dir, 'plain.safetensors'), { a: { dtype: 'F32', shape: [1], data: [1] } });
    await expect(loadCheckpoint(join(dir, 'plain.safetensors'))).rejects.toThrow(CheckpointError);
  });
});
