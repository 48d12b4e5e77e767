/**
 * Line charts on a 2-D canvas, drawn by hand: axes with "nice" ticks, one polyline per series
 * (optionally with point markers), a legend. Redrawn whole on every update; the data are small.
 */

export interface Series {
  label: string;
  color: string;
  points: [number, number][];
  dashed?: boolean;
  markers?: boolean;
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  /** Fixed y range; default: fitted to the data. */
  yRange?: [number, number];
  /** Fixed x range; default: fitted to the data. */
  xRange?: [number, number];
  /** Shown in the middle of an empty chart. */
  emptyText?: string;
  /** Format of y tick labels. */
  yFormat?: (v: number) => string;
}

const FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
const AXIS = '#5b6270';
const GRID = '#e4e7ec';
const TEXT = '#1f2430';

/** Tick values covering [lo, hi] at a 1-2-5 step, about `count` of them. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return ticks;
}

function fmtTick(v: number): string {
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (a >= 1e4 || a < 1e-3) return v.toExponential(0);
  return String(Number(v.toPrecision(3)));
}

export class LineChart {
  private series: Series[] = [];
  private readonly ctx: CanvasRenderingContext2D;

  constructor(
    readonly canvas: HTMLCanvasElement,
    public options: ChartOptions,
  ) {
    const ctx = canvas.getContext('2d');
    if (!ctx) throw new Error('this browser has no 2-D canvas');
    this.ctx = ctx;
    this.draw();
  }

  setSeries(series: Series[]): void {
    this.series = series;
    this.draw();
  }

  /** Matches the backing store to the element's CSS size and the device pixel ratio. */
  private fit(): { w: number; h: number } {
    const dpr = Math.max(1, Math.min(3, globalThis.devicePixelRatio || 1));
    const w = Math.max(200, this.canvas.clientWidth || Number(this.canvas.getAttribute('width')) || 480);
    const h = Math.max(150, this.canvas.clientHeight || Number(this.canvas.getAttribute('height')) || 260);
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return { w, h };
  }

  draw(): void {
    const { ctx } = this;
    const { w, h } = this.fit();
    const o = this.options;
    ctx.fillStyle = '#ffffff';
    ctx.fillRect(0, 0, w, h);
    ctx.font = FONT;
    ctx.textBaseline = 'alphabetic';

    const pad = { left: 54, right: 14, top: 28, bottom: 40 };
    const pw = w - pad.left - pad.right;
    const ph = h - pad.top - pad.bottom;

    ctx.fillStyle = TEXT;
    ctx.font = `600 ${FONT}`;
    ctx.textAlign = 'left';
    ctx.fillText(o.title, pad.left, 17);
    ctx.font = FONT;

    const pts = this.series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    let [x0, x1] = o.xRange ?? [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
    let [y0, y1] = o.yRange ?? [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
    const empty = pts.length === 0;
    if (empty) [x0, x1, y0, y1] = o.xRange ? [x0, x1, 0, 1] : [0, 1, 0, 1];
    if (!(x1 > x0)) [x0, x1] = [x0 - 0.5, x0 + 0.5];
    if (!(y1 > y0)) [y0, y1] = [y0 - 0.5, y0 + 0.5];
    if (!o.yRange) {
      const m = (y1 - y0) * 0.06;
      [y0, y1] = [y0 - m, y1 + m];
    }
    const X = (x: number) => pad.left + ((x - x0) / (x1 - x0)) * pw;
    const Y = (y: number) => pad.top + (1 - (y - y0) / (y1 - y0)) * ph;

    // grid and ticks
    ctx.lineWidth = 1;
    ctx.strokeStyle = GRID;
    ctx.fillStyle = AXIS;
    ctx.textAlign = 'right';
    for (const t of niceTicks(y0, y1, Math.max(2, Math.round(ph / 45)))) {
      const yy = Math.round(Y(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.left, yy);
      ctx.lineTo(pad.left + pw, yy);
      ctx.stroke();
      ctx.fillText((o.yFormat ?? fmtTick)(t), pad.left - 6, yy + 4);
    }
    ctx.textAlign = 'center';
    for (const t of niceTicks(x0, x1, Math.max(2, Math.round(pw / 80)))) {
      const xx = Math.round(X(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(xx, pad.top);
      ctx.lineTo(xx, pad.top + ph);
      ctx.stroke();
      ctx.fillText(fmtTick(t), xx, pad.top + ph + 16);
    }
    ctx.strokeStyle = AXIS;
    ctx.strokeRect(pad.left + 0.5, pad.top + 0.5, pw, ph);
    ctx.fillText(o.xLabel, pad.left + pw / 2, h - 6);
    ctx.save();
    ctx.translate(13, pad.top + ph / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(o.yLabel, 0, 0);
    ctx.restore();

    if (empty) {
      ctx.fillStyle = '#8a91a0';
      ctx.fillText(o.emptyText ?? 'no data yet', pad.left + pw / 2, pad.top + ph / 2);
      return;
    }

    // series, clipped to the plot area
    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.left, pad.top, pw, ph);
    ctx.clip();
    for (const s of this.series) {
      const p = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
      if (!p.length) continue;
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = 2;
      ctx.lineJoin = 'round';
      ctx.setLineDash(s.dashed ? [6, 4] : []);
      ctx.beginPath();
      p.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
      ctx.stroke();
      ctx.setLineDash([]);
      if (s.markers || p.length === 1) {
        for (const [x, y] of p) {
          ctx.beginPath();
          ctx.arc(X(x), Y(y), 3, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
    }
    ctx.restore();

    // legend, top right inside the plot
    ctx.textAlign = 'left';
    const labels = this.series.filter((s) => s.label);
    const widths = labels.map((s) => ctx.measureText(s.label).width + 30);
    let lx = pad.left + pw - widths.reduce((a, b) => a + b, 0) - 4;
    const ly = pad.top - 10;
    labels.forEach((s, i) => {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.setLineDash(s.dashed ? [4, 3] : []);
      ctx.beginPath();
      ctx.moveTo(lx, ly - 4);
      ctx.lineTo(lx + 20, ly - 4);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = TEXT;
      ctx.fillText(s.label, lx + 24, ly);
      lx += widths[i];
    });
  }
}
