/**
 * `flatgrad landscape <checkpoint> [<checkpoint2> ...]`: 1-D and 2-D loss slices along
 * filter-normalized random directions; several checkpoints share the 1-D figure, and two also
 * get the straight line between them.
 */
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import { filterNormalizedDirection, inEvalMode, landscape1d, landscape2d, type Landscape1d, type Landscape2d } from '../../analysis/index.js';
import { noGrad } from '../../tensor/graph.js';
import { manualSeed } from '../../tensor/random.js';
import { dispose, tidy } from '../../tensor/tensor.js';
import { UsageError, numberFlag, stringFlag } from '../args.js';
import { writeHeatmap, writeJson, writeLineChart } from '../report.js';
import { batchLoss, closeRun, evaluationBatch, openRun, type RestoredRun } from '../restore.js';
import { resolvePath, startBackend } from '../runtime.js';
import { defineCommand } from './define.js';
import { ANALYSIS_FLAGS } from './sharpness.js';

interface Slices {
  name: string;
  oneD: Landscape1d;
  twoD: Landscape2d | null;
}

/** One figure stays readable with this many curves. */
const MAX_CHECKPOINTS = 8;

/** Interpolation runs a little past both ends to show the walls around each solution. */
const INTERPOLATION_RANGE: [number, number] = [-0.25, 1.25];

export const landscapeCommand = defineCommand({
  name: 'landscape',
  summary: 'loss along filter-normalized random directions (1-D and 2-D), plotted; several checkpoints share the 1-D figure',
  synopsis: '<checkpoint> [<checkpoint2> ...] [flags]',
  positionals: { min: 1, max: MAX_CHECKPOINTS, names: 'the checkpoint (a run directory or its checkpoint.safetensors)' },
  flags: {
    range: numberFlag('slices span [-range, range] along each direction', { above: 0, default: 1 }),
    points: numberFlag('points of the 1-D slice', { integer: true, min: 2, default: 25 }),
    grid: numberFlag('points per axis of the 2-D slice; 0 skips it', { integer: true, min: 0, default: 13 }),
    out: stringFlag("directory for the plots [the first checkpoint's run dir]", { placeholder: '<dir>' }),
    ...ANALYSIS_FLAGS,
  },
  async run({ flags, positionals }, io) {
    if (flags.grid === 1) throw new UsageError('--grid must be 0 (no 2-D slice) or at least 2, got 1');
    await startBackend(flags.backend, flags.threads, io);
    const runs: RestoredRun[] = [];
    try {
      for (const p of positionals) runs.push(await openRun(io, p));
      const outDir = flags.out ? await resolvePath(io, flags.out) : runs[0].dir;
      await mkdir(outDir, { recursive: true });
      const batch = await evaluationBatch(runs[0].config, flags.split, flags.examples, flags.data);
      const slices: Slices[] = [];
      let interpolation: Landscape1d | null = null;
      try {
        for (const run of runs) {
          const params = run.model.parameters();
          const loss = batchLoss(run.model, batch);
          slices.push(
            await inEvalMode(run.model, async () => {
              // The same seed for every checkpoint: the same Gaussian draw, rescaled to each one's filters.
              manualSeed(flags.seed);
              const oneD = await landscape1d(loss, params, { range: [-flags.range, flags.range], points: flags.points });
              const twoD = flags.grid ? await landscape2d(loss, params, { range: [-flags.range, flags.range], points: flags.grid }) : null;
              return { name: run.name, oneD, twoD };
            }),
          );
        }
        if (runs.length === 2) interpolation = await interpolate(runs[0], runs[1], batch);
      } finally {
        batch.dispose();
      }
      const written = await writeLandscapePlots(outDir, slices, interpolation, `${batch.n} ${batch.split} examples`);
      await writeJson(join(outDir, 'landscape.json'), { examples: batch.n, split: batch.split, seed: flags.seed, slices, interpolation });
      for (const s of slices) {
        const mid = s.oneD.losses[Math.floor(s.oneD.losses.length / 2)];
        io.stdout.write(`${s.name}: loss ${mid.toFixed(4)} at the solution, ${Math.max(s.oneD.losses[0], s.oneD.losses[s.oneD.losses.length - 1]).toFixed(4)} at distance ${flags.range}\n`);
      }
      io.stdout.write(`wrote ${[...written, join(outDir, 'landscape.json')].join(', ')}\n`);
    } finally {
      runs.forEach(closeRun);
    }
  },
});

/** Loss along (1 - t) w1 + t w2: the first model's parameters are moved along w2 - w1. */
async function interpolate(a: RestoredRun, b: RestoredRun, batch: Awaited<ReturnType<typeof evaluationBatch>>): Promise<Landscape1d | null> {
  const pa = a.model.parameters();
  const pb = b.model.parameters();
  if (pa.length !== pb.length || pa.some((p, i) => p.size !== pb[i].size)) return null;
  const direction = noGrad(() => tidy(() => pa.map((p, i) => pb[i].detach().sub(p.detach()))));
  try {
    return await inEvalMode(a.model, () => landscape1d(batchLoss(a.model, batch), pa, { direction, range: INTERPOLATION_RANGE, points: 31 }));
  } finally {
    dispose(direction);
  }
}

export async function writeLandscapePlots(dir: string, slices: Slices[], interpolation: Landscape1d | null, what: string): Promise<string[]> {
  const written = [
    await writeLineChart(join(dir, 'landscape-1d'), {
      title: `Loss along a filter-normalized direction (${what})`,
      xLabel: 'alpha',
      yLabel: 'loss',
      series: slices.map((s) => ({ name: s.name, x: s.oneD.alphas, y: s.oneD.losses })),
    }),
  ];
  for (const s of slices) {
    if (!s.twoD) continue;
    const suffix = slices.length > 1 ? `-${s.name.replace(/[^\w.-]+/g, '_')}` : '';
    written.push(
      await writeHeatmap(join(dir, `landscape-2d${suffix}`), {
        title: `${s.name}: loss on a 2-D slice`,
        xLabel: 'alpha (direction 1)',
        yLabel: 'beta (direction 2)',
        xs: s.twoD.xs,
        ys: s.twoD.ys,
        z: s.twoD.losses,
        zLabel: 'loss',
      }),
    );
  }
  if (interpolation) {
    written.push(
      await writeLineChart(join(dir, 'interpolation'), {
        title: `Loss on the line from ${slices[0].name} (t=0) to ${slices[1].name} (t=1)`,
        xLabel: 't',
        yLabel: 'loss',
        series: [{ name: 'loss', x: interpolation.alphas, y: interpolation.losses }],
      }),
    );
  }
  return written;
}
