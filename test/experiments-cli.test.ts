/**
 * The CLI additions issue 16's experiments need: `--augment-pad` (the issue's 4-pixel crop
 * padding, with old runs keeping their padding 2), `--rho-schedule lr` (rho tied to the learning
 * rate, GSAM's schedule, for SAM and the other wrappers with a rho) and the per-configuration
 * flags `compare` takes (`sam:rho=0.1:rho-schedule=lr`).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { init, tensor } from '../src/index.js';
import { GSAM, ProportionScheduler, SGD } from '../src/optim/index.js';
import { followLr } from '../src/optim/lr_scheduler.js';
import { UsageError, parseFlags } from '../src/cli/args.js';
import { AUGMENT_PAD_DEFAULT, TRAIN_FLAGS, resolveTrainConfig } from '../src/cli/config.js';
import { parseConfigSpec } from '../src/cli/commands/compare.js';
import { describeConfig } from '../src/cli/commands/train.js';
import { buildModel } from '../src/cli/models.js';
import { buildTrainer } from '../src/cli/optimizers.js';
import { lineChartSvg, lineChartVegaLite, logTicks } from '../src/cli/plot.js';

beforeAll(async () => {
  await init({ backend: 'cpu' });
});

function config(argv: string[]) {
  const parsed = parseFlags(['--model', 'mlp', '--width', '4', '--depth', '1', ...argv], TRAIN_FLAGS);
  return resolveTrainConfig(parsed.flags, parsed.given as Set<string>);
}

describe('--augment-pad', () => {
  it('defaults to the issue\'s 4 pixels with --augment, and is recorded in the config', () => {
    expect(AUGMENT_PAD_DEFAULT).toBe(4);
    expect(config(['--augment']).augmentPad).toBe(4);
    expect(config(['--augment', '--augment-pad', '2']).augmentPad).toBe(2);
    expect(describeConfig(config(['--augment', '--augment-pad', '3']))).toContain('crop (padding 3) and flip');
  });
  it('leaves configs without --augment as they were (older checkpoints compare equal)', () => {
    const cfg = config([]);
    expect('augmentPad' in cfg).toBe(false);
    expect('rhoSchedule' in cfg).toBe(false);
  });
  it('refuses a padding without --augment, and a negative one', () => {
    expect(() => config(['--augment-pad', '4'])).toThrow(/--augment-pad applies only with --augment/);
    expect(() => config(['--augment', '--augment-pad', '-1'])).toThrow(UsageError);
  });
});

describe('--rho-schedule lr', () => {
  it('followLr is the line through (minLr, minValue) and (maxLr, maxValue)', () => {
    expect(followLr(0.05, 0, 0.05, 0, 0.1)).toBeCloseTo(0.1, 12);
    expect(followLr(0.025, 0, 0.05, 0, 0.1)).toBeCloseTo(0.05, 12);
    expect(followLr(0, 0, 0.05, 0.02, 0.1)).toBeCloseTo(0.02, 12);
    expect(followLr(0.01, 0.01, 0.01, 0, 0.3)).toBe(0.3);
  });

  it('GSAM with rhoMin and a ProportionScheduler on rho give the same rho at every learning rate', () => {
    const p = [tensor([1, 2], { requiresGrad: true })];
    const q = [tensor([1, 2], { requiresGrad: true })];
    const gsam = new GSAM(p, SGD, { lr: 0.08, rho: 0.2, rhoMin: 0.01 });
    const sgd = new SGD(q, { lr: 0.08 });
    sgd.paramGroups[0].rho = 0.2;
    const sched = new ProportionScheduler(sgd, { maxLr: 0.08, minLr: 0, minValue: 0.01 });
    for (const lr of [0.08, 0.05, 0.013, 0]) {
      gsam.paramGroups[0].lr = lr;
      sgd.paramGroups[0].lr = lr;
      sched.step();
      expect(gsam.rhoT()[0]).toBeCloseTo(sgd.paramGroups[0].rho as number, 12);
      expect(gsam.rhoT()[0]).toBeCloseTo(0.01 + (0.19 * lr) / 0.08, 12);
    }
  });

  it('makes SAM\'s rho follow the cosine learning rate, rho_t = rho * lr_t / lr, through a resume', () => {
    const cfg = config(['--wrapper', 'sam', '--rho', '0.1', '--rho-schedule', 'lr', '--lr', '0.05', '--epochs', '2', '--warmup', '0.5']);
    expect(cfg.rhoSchedule).toBe('lr');
    expect(describeConfig(cfg)).toContain('rho following the lr');
    const model = buildModel(cfg, 10);
    const trainer = buildTrainer(cfg, model, 4);
    const group = () => trainer.optimizer.paramGroups[0];
    const seen: number[] = [];
    for (let t = 0; t < 8; t++) {
      expect(group().rho as number).toBeCloseTo((0.1 * trainer.currentLr()) / 0.05, 12);
      seen.push(group().rho as number);
      if (t === 4) {
        // A second trainer restored from this one's state carries on with the same rho.
        const again = buildTrainer(cfg, buildModel(cfg, 10), 4);
        again.loadStateDict(trainer.stateDict());
        again.advance();
        trainer.advance();
        expect(again.optimizer.paramGroups[0].rho).toBe(group().rho);
        expect(again.currentLr()).toBe(trainer.currentLr());
        continue;
      }
      trainer.advance();
    }
    // Warmup, then cosine decay: rho rises and then falls, and is not constant.
    expect(Math.max(...seen)).toBeGreaterThan(seen[0]);
    expect(seen[7]).toBeLessThan(Math.max(...seen));
    // Without the flag rho stays put.
    const flat = buildTrainer(config(['--wrapper', 'sam', '--rho', '0.1', '--epochs', '2']), model, 4);
    for (let t = 0; t < 5; t++) flat.advance();
    expect(flat.optimizer.paramGroups[0].rho).toBe(0.1);
  });

  it('applies to the wrappers with a rho, except GSAM which has --rho-min', () => {
    expect(config(['--wrapper', 'asam', '--rho-schedule', 'lr']).rhoSchedule).toBe('lr');
    expect(() => config(['--rho-schedule', 'lr'])).toThrow(/needs a wrapper with a rho .* not --wrapper none/);
    expect(() => config(['--wrapper', 'rwp', '--rho-schedule', 'lr'])).toThrow(/not --wrapper rwp/);
    expect(() => config(['--wrapper', 'gsam', '--rho-schedule', 'lr'])).toThrow(/use --rho-min/);
    expect(() => config(['--wrapper', 'sam', '--rho-schedule', 'cosine'])).toThrow(UsageError);
  });
});

describe('compare configuration strings', () => {
  const base = parseFlags(['--model', 'mlp', '--width', '4', '--depth', '1'], TRAIN_FLAGS);
  it('carry per-configuration rho, rho schedule and augmentation', () => {
    const spec = parseConfigSpec('sam:rho=0.2:rho-schedule=lr:augment:augment-pad=3', base.flags, base.given as Set<string>, 1);
    const cfg = resolveTrainConfig(spec.values, spec.given);
    expect(cfg.wrapper).toBe('sam');
    expect(cfg.wrapperParams.rho).toBe(0.2);
    expect(cfg.rhoSchedule).toBe('lr');
    expect(cfg.augmentPad).toBe(3);
    expect(cfg.seed).toBe(1);
    const asam = resolveTrainConfig(...(() => {
      const s = parseConfigSpec('asam:rho=1', base.flags, base.given as Set<string>, 0);
      return [s.values, s.given] as const;
    })());
    expect(asam.wrapperParams).toEqual({ rho: 1, eta: 0.01 });
    expect('rhoSchedule' in asam).toBe(false);
  });
  it('name the bad flag value', () => {
    expect(() => parseConfigSpec('sam:rho-schedule=often', base.flags, base.given as Set<string>, 0)).toThrow(/--configs item 'sam:rho-schedule=often'/);
  });
});

// The model of the trainer test runs one real step with the rho it scheduled, so a scheduled rho
// reaches the fused kernels (not only the group option).
it('a SAM step with a scheduled rho trains (finite loss)', async () => {
  const cfg = config(['--wrapper', 'sam', '--rho-schedule', 'lr', '--epochs', '1']);
  const model = buildModel(cfg, 10);
  const trainer = buildTrainer(cfg, model, 2);
  const x = tensor(new Float32Array(2 * 784).map((_, i) => Math.sin(i)), { shape: [2, 1, 28, 28] });
  const y = tensor(new Int32Array([3, 7]));
  const r = trainer.step(x, y);
  trainer.advance();
  const loss = (await r.loss.data())[0];
  expect(Number.isFinite(loss)).toBe(true);
  expect(trainer.optimizer.paramGroups[0].rho).toBeCloseTo((0.05 * trainer.currentLr()) / 0.05, 12);
});

describe('plots with error bars, markers only and a log x axis', () => {
  const spec = {
    xLabel: 'rho',
    yLabel: 'test accuracy',
    xScale: 'log' as const,
    series: [
      { name: 'SAM', x: [0.01, 0.1, 1], y: [0.8, 0.85, 0.7], yError: [0.01, 0.02, 0.005] },
      { name: 'solutions', x: [0.02, 0.5], y: [0.75, 0.8], line: false },
    ],
  };

  it('logTicks gives 1-2-5 per decade over a short range and decades over a long one', () => {
    expect(logTicks(Math.log10(0.01), Math.log10(1))).toEqual([0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1]);
    expect(logTicks(-3, 3)).toEqual([0.001, 0.01, 0.1, 1, 10, 100, 1000]);
  });

  it('draws one error bar with two caps per point, a line only where asked, and log-spaced x', () => {
    const svg = lineChartSvg(spec);
    // One path: the SAM line; the scatter series has none.
    expect(svg.match(/<path d="M[^"]*"/g)).toHaveLength(1);
    // 3 points x (bar + 2 caps) in the SAM colour at stroke-width 1.5.
    expect(svg.match(/<line [^>]*stroke="#4e79a7" stroke-width="1.5"\/>/g)).toHaveLength(9);
    // Scatter markers (r=4) for the 2 points plus its legend marker.
    expect(svg.match(/<circle [^>]*r="4" fill="#f28e2b"\/>/g)).toHaveLength(3);
    // On a log axis 0.01, 0.1 and 1 are equally spaced.
    const xs = [...svg.matchAll(/<path d="M([\d.]+),[\d.]+L([\d.]+),[\d.]+L([\d.]+),/g)][0].slice(1).map(Number);
    expect(xs[1] - xs[0]).toBeCloseTo(xs[2] - xs[1], 1);
    // Tick labels are the values, not their logs.
    expect(svg).toContain('>0.05</text>');
  });

  it('the error bars widen the y range to hold them', () => {
    const svg = lineChartSvg({ xLabel: 'x', yLabel: 'y', series: [{ name: 'a', x: [1, 2], y: [0, 0], yError: [10, 10] }] });
    expect(svg).toContain('>10</text>');
    expect(svg).toContain('>-10</text>');
  });

  it('Vega-Lite gets the bounds as yLow/yHigh in an errorbar layer and a log scale', () => {
    const vl = lineChartVegaLite(spec) as { data: { values: Record<string, unknown>[] }; layer: { mark: { type: string }; encoding: { x: { scale?: { type: string } } } }[] };
    expect(vl.data.values[0]).toMatchObject({ series: 'SAM', x: 0.01, y: 0.8 });
    expect(vl.data.values[0].yLow).toBeCloseTo(0.79, 12);
    expect(vl.data.values[0].yHigh).toBeCloseTo(0.81, 12);
    expect(vl.layer.map((l) => l.mark.type)).toEqual(['line', 'errorbar']);
    expect(vl.layer[0].encoding.x.scale).toEqual({ type: 'log' });
    const scatter = lineChartVegaLite({ xLabel: 'x', yLabel: 'y', series: [spec.series[1]] }) as { mark: { type: string } };
    expect(scatter.mark.type).toBe('point');
  });

  it('refuses a log axis with x <= 0 and error bars of the wrong length, naming the series', () => {
    expect(() => lineChartSvg({ ...spec, series: [{ name: 'bad', x: [0, 1], y: [1, 2] }] })).toThrow(/series 'bad' has 0/);
    expect(() => lineChartSvg({ xLabel: 'x', yLabel: 'y', series: [{ name: 'e', x: [1, 2], y: [1, 2], yError: [1] }] })).toThrow(/'e' has 2 y values but 1 yError/);
  });
});
