/**
 * A per-epoch progress bar on stderr: steps/s, ETA, running loss and accuracy. On a terminal it
 * redraws one line with \r; into a file or pipe it writes a plain line every `logEvery` ms, so
 * logs stay readable.
 */

export interface OutStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressStats {
  loss: number;
  accuracy: number;
}

export interface ProgressOptions {
  total: number;
  label: string;
  now?: () => number;
  /** Minimum ms between redraws on a terminal. */
  redrawEvery?: number;
  /** Ms between plain lines when not on a terminal. */
  logEvery?: number;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--:--';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

export class ProgressBar {
  private readonly start: number;
  private lastDraw = -Infinity;
  private drawnWidth = 0;
  private readonly now: () => number;

  constructor(
    private readonly out: OutStream,
    private readonly opts: ProgressOptions,
  ) {
    this.now = opts.now ?? (() => performance.now());
    this.start = this.now();
  }

  /** `done` steps of `total` are finished (stats: the running loss and accuracy, when there are any). */
  update(done: number, stats?: ProgressStats): void {
    const t = this.now();
    const interval = this.out.isTTY ? (this.opts.redrawEvery ?? 100) : (this.opts.logEvery ?? 10_000);
    // The final state is drawn by finish(), with the epoch's closing numbers.
    if (done >= this.opts.total || t - this.lastDraw < interval) return;
    this.lastDraw = t;
    this.draw(done, stats, t);
  }

  /** Draws the final state of the epoch and ends the line. */
  finish(done: number, stats?: ProgressStats, extra = ''): void {
    this.draw(done, stats, this.now(), extra);
    if (this.out.isTTY) this.out.write('\n');
  }

  private draw(done: number, stats: ProgressStats | undefined, t: number, extra = ''): void {
    const { total, label } = this.opts;
    const elapsed = (t - this.start) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const eta = done >= total ? `took ${formatDuration(elapsed)}` : `ETA ${formatDuration(rate > 0 ? (total - done) / rate : Infinity)}`;
    const width = 20;
    const filled = total > 0 ? Math.round((done / total) * width) : width;
    const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
    const count = `${String(done).padStart(String(total).length)}/${total}`;
    const line = [label, bar, count, `${rate.toFixed(1)} step/s`, eta, stats ? `loss ${stats.loss.toFixed(4)}` : '', stats ? `acc ${(stats.accuracy * 100).toFixed(1)}%` : '', extra]
      .filter(Boolean)
      .join('  ');
    if (this.out.isTTY) {
      const clipped = this.out.columns ? line.slice(0, this.out.columns - 1) : line;
      this.out.write(`\r${clipped.padEnd(this.drawnWidth)}`);
      this.drawnWidth = clipped.length;
    } else this.out.write(`${line}\n`);
  }
}
