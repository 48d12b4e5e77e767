/** `flatgrad train`: one run, with a progress bar, into <out>/<name>/. */
import { join } from 'node:path';
import { UsageError } from '../args.js';
import { LEGACY_AUGMENT_PAD, RUN_FLAGS, TRAIN_FLAGS, defaultRunName, methodLabel, resolveTrainConfig, type TrainConfig } from '../config.js';
import { resolvePath, startBackend } from '../runtime.js';
import { formatSummaryLine, runTraining } from '../training.js';
import { defineCommand } from './define.js';

const NAME_PATTERN = /^[\w.=-]+$/;

export function checkRunName(name: string, flag = '--name'): string {
  if (!NAME_PATTERN.test(name)) throw new UsageError(`${flag} must be letters, digits and . _ = - only (it names a directory), got ${name}`);
  return name;
}

/** One line that says what a run is, for the log. */
export function describeConfig(cfg: TrainConfig): string {
  const hyper = Object.entries(cfg.wrapperParams).map(([k, v]) => `${k} ${v}`).join(', ');
  const base = cfg.optimizer === 'sgd' ? `sgd lr ${cfg.lr} momentum ${cfg.momentum}${cfg.nesterov ? ' nesterov' : ''}` : `adamw lr ${cfg.lr}`;
  const method = cfg.wrapper === 'none' ? base : `${methodLabel(cfg)} (${hyper}) over ${base}`;
  const noise = cfg.labelNoise ? `, ${cfg.labelNoise * 100}% label noise` : '';
  const rho = cfg.rhoSchedule === 'lr' ? ', rho following the lr' : '';
  const augment = cfg.augment ? `, crop (padding ${cfg.augmentPad ?? LEGACY_AUGMENT_PAD}) and flip` : '';
  return `${cfg.model} (width ${cfg.width}, depth ${cfg.depth}), ${method}${rho}, weight decay ${cfg.weightDecay}, ${cfg.epochs} epochs, batch ${cfg.batchSize}, ${cfg.schedule} schedule${noise}${augment}, seed ${cfg.seed}`;
}

export const trainCommand = defineCommand({
  name: 'train',
  summary: 'train a model on Fashion-MNIST and write <out>/<name>/: metrics.csv, summary.json, checkpoint, plots',
  synopsis: '[flags]',
  positionals: { min: 0, max: 0, names: '' },
  flags: { ...TRAIN_FLAGS, ...RUN_FLAGS },
  notes: 'example: flatgrad train --model mlp --wrapper sam --rho 0.05 --epochs 5 --data subset',
  async run({ flags, given }, io) {
    const cfg = resolveTrainConfig(flags, given as Set<string>);
    const name = checkRunName(flags.name ?? defaultRunName(cfg));
    const dir = join(await resolvePath(io, flags.out), name);
    const backend = await startBackend(cfg.backend, cfg.threads, io);
    io.stderr.write(`${name}: ${describeConfig(cfg)}; ${backend.backend} backend (${backend.adapter})\n`);
    const summary = await runTraining(cfg, { dir, name, resume: flags.resume, checkpointEvery: flags.checkpointEvery }, backend, io);
    io.stdout.write(formatSummaryLine(summary) + '\n');
  },
});
