/**
 * Small, dependency-free charts: line charts (several series, axes, ticks, legend) and a heatmap
 * with contour lines, each as a standalone SVG and as the equivalent Vega-Lite spec (so that a
 * reader with Vega tooling can restyle the same data).
 */

export interface Series {
  name: string;
  x: number[];
  y: number[];
  dashed?: boolean;
  /** Mark each point (for sparse series such as one evaluation per epoch). */
  points?: boolean;
  /** Palette slot; series that belong together (train and test of one method) share it. Default: the series' index. */
  colorIndex?: number;
  /** Error bars: y[i] ± yError[i] (a standard deviation or standard error; the caller's legend says which). */
  yError?: number[];
  /** false: markers only, no line (a scatter plot). Default true. */
  line?: boolean;
}

export interface LineChartSpec {
  title?: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** 'log': x positions and ticks in log10 (x must be positive). Default 'linear'. */
  xScale?: 'linear' | 'log';
  /** Of the plot area; the legend is added to the right. */
  width?: number;
  height?: number;
}

export interface HeatmapSpec {
  title?: string;
  xLabel: string;
  yLabel: string;
  xs: number[];
  ys: number[];
  /** z[j][i] is the value at (xs[i], ys[j]). */
  z: number[][];
  zLabel?: string;
  /** Number of contour levels (default 12). */
  levels?: number;
  width?: number;
  height?: number;
}

const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];
const FONT = 'font-family="Helvetica, Arial, sans-serif"';
const MARGIN = { left: 64, right: 16, top: 36, bottom: 48 };
const LEGEND_ROW = 18;

export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** About `count` round tick values (steps of 1, 2 or 5 times a power of ten) covering [min, max]. */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!(max > min)) return [min];
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** Ticks of a log axis over [10^min, 10^max] (log10 units): 1-2-5 per decade when few decades, else decades only. */
export function logTicks(min: number, max: number): number[] {
  if (!(max > min)) return [10 ** min];
  const mantissas = max - min <= 3 ? [1, 2, 5] : [1];
  const ticks: number[] = [];
  for (let d = Math.floor(min); d <= Math.ceil(max); d++) {
    for (const m of mantissas) {
      const v = Number((m * 10 ** d).toPrecision(12));
      const l = Math.log10(v);
      if (l >= min - 1e-9 && l <= max + 1e-9) ticks.push(v);
    }
  }
  return ticks;
}

export function formatTick(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

interface Extent {
  min: number;
  max: number;
}

function extent(values: number[], pad = 0): Extent {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return { min: 0, max: 1 };
  let min = Math.min(...finite);
  let max = Math.max(...finite);
  if (min === max) {
    const d = Math.abs(min) * 0.05 || 1;
    min -= d;
    max += d;
  }
  const p = (max - min) * pad;
  return { min: min - p, max: max + p };
}

const scale = (e: Extent, from: number, to: number) => (v: number) => from + ((v - e.min) / (e.max - e.min)) * (to - from);

function svgOpen(width: number, height: number, title?: string): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${FONT} font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    ...(title ? [`<text x="${width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(title)}</text>`] : []),
  ];
}

/**
 * Frame, ticks, grid and axis labels of a plot area; returns the SVG lines. With `logX` the x
 * extent is in log10 units and the ticks are labelled with the values themselves.
 */
function axes(x: Extent, y: Extent, box: { x0: number; x1: number; y0: number; y1: number }, xLabel: string, yLabel: string, grid: boolean, logX = false): string[] {
  const sx = scale(x, box.x0, box.x1);
  const sy = scale(y, box.y1, box.y0);
  const out: string[] = [];
  const xTicks = logX ? logTicks(x.min, x.max).map((v) => ({ at: Math.log10(v), label: formatTick(v) })) : niceTicks(x.min, x.max, 6).map((t) => ({ at: t, label: formatTick(t) }));
  for (const t of xTicks) {
    const px = sx(t.at).toFixed(1);
    if (grid) out.push(`<line x1="${px}" y1="${box.y0}" x2="${px}" y2="${box.y1}" stroke="#eee"/>`);
    out.push(`<line x1="${px}" y1="${box.y1}" x2="${px}" y2="${box.y1 + 5}" stroke="black"/>`);
    out.push(`<text x="${px}" y="${box.y1 + 18}" text-anchor="middle">${t.label}</text>`);
  }
  for (const t of niceTicks(y.min, y.max, 5)) {
    const py = sy(t).toFixed(1);
    if (grid) out.push(`<line x1="${box.x0}" y1="${py}" x2="${box.x1}" y2="${py}" stroke="#eee"/>`);
    out.push(`<line x1="${box.x0 - 5}" y1="${py}" x2="${box.x0}" y2="${py}" stroke="black"/>`);
    out.push(`<text x="${box.x0 - 8}" y="${py}" text-anchor="end" dominant-baseline="middle">${formatTick(t)}</text>`);
  }
  out.push(`<rect x="${box.x0}" y="${box.y0}" width="${box.x1 - box.x0}" height="${box.y1 - box.y0}" fill="none" stroke="black"/>`);
  out.push(`<text x="${(box.x0 + box.x1) / 2}" y="${box.y1 + 38}" text-anchor="middle">${escapeXml(xLabel)}</text>`);
  const cy = (box.y0 + box.y1) / 2;
  out.push(`<text x="16" y="${cy}" text-anchor="middle" transform="rotate(-90 16 ${cy})">${escapeXml(yLabel)}</text>`);
  return out;
}

/** Path data through the finite points; a NaN or infinity breaks the line. */
function linePath(xs: number[], ys: number[], sx: (v: number) => number, sy: (v: number) => number): string {
  let d = '';
  let pen = false;
  xs.forEach((x, i) => {
    const y = ys[i];
    if (!Number.isFinite(x) || !Number.isFinite(y)) {
      pen = false;
      return;
    }
    d += `${pen ? 'L' : 'M'}${sx(x).toFixed(2)},${sy(y).toFixed(2)}`;
    pen = true;
  });
  return d;
}

export function lineChartSvg(spec: LineChartSpec): string {
  // The legend gets the width its longest name needs, and the chart grows to hold all its rows.
  const legendWidth = Math.min(280, 48 + 7 * Math.max(0, ...spec.series.map((s) => s.name.length)));
  const width = MARGIN.left + (spec.width ?? 480) + MARGIN.right + legendWidth;
  const legendHeight = spec.series.length * LEGEND_ROW + 8;
  const height = Math.max(spec.height ?? 400, MARGIN.top + legendHeight + MARGIN.bottom);
  const box = { x0: MARGIN.left, x1: width - MARGIN.right - legendWidth, y0: MARGIN.top, y1: height - MARGIN.bottom };
  const logX = spec.xScale === 'log';
  if (logX) {
    const bad = spec.series.find((s) => s.x.some((v) => Number.isFinite(v) && v <= 0));
    if (bad) throw new RangeError(`lineChartSvg: xScale 'log' needs positive x, series '${bad.name}' has ${bad.x.find((v) => v <= 0)}`);
  }
  for (const s of spec.series) {
    if (s.yError && s.yError.length !== s.y.length) throw new RangeError(`lineChartSvg: series '${s.name}' has ${s.y.length} y values but ${s.yError.length} yError values`);
  }
  // Series in plot coordinates: x in log10 on a log axis.
  const xsOf = (s: Series) => (logX ? s.x.map(Math.log10) : s.x);
  const x = extent(spec.series.flatMap(xsOf), logX ? 0.05 : 0);
  const y = extent(
    spec.series.flatMap((s) => (s.yError ? s.y.flatMap((v, i) => [v - s.yError![i], v + s.yError![i]]) : s.y)),
    0.05,
  );
  const sx = scale(x, box.x0, box.x1);
  const sy = scale(y, box.y1, box.y0);
  const out = svgOpen(width, height, spec.title);
  out.push(...axes(x, y, box, spec.xLabel, spec.yLabel, true, logX));
  out.push(`<clipPath id="plot-area"><rect x="${box.x0}" y="${box.y0}" width="${box.x1 - box.x0}" height="${box.y1 - box.y0}"/></clipPath>`);
  spec.series.forEach((s, i) => {
    const color = PALETTE[(s.colorIndex ?? i) % PALETTE.length];
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : '';
    const xs = xsOf(s);
    if (s.line !== false) out.push(`<path d="${linePath(xs, s.y, sx, sy)}" fill="none" stroke="${color}" stroke-width="2"${dash} clip-path="url(#plot-area)"/>`);
    if (s.yError) {
      xs.forEach((xv, k) => {
        const [v, e] = [s.y[k], s.yError![k]];
        if (!Number.isFinite(xv) || !Number.isFinite(v) || !Number.isFinite(e)) return;
        const [px, lo, hi] = [sx(xv).toFixed(2), sy(v - e).toFixed(2), sy(v + e).toFixed(2)];
        const cap = (py: string) => `<line x1="${(sx(xv) - 4).toFixed(2)}" y1="${py}" x2="${(sx(xv) + 4).toFixed(2)}" y2="${py}" stroke="${color}" stroke-width="1.5"/>`;
        out.push(`<line x1="${px}" y1="${lo}" x2="${px}" y2="${hi}" stroke="${color}" stroke-width="1.5"/>`, cap(lo), cap(hi));
      });
    }
    if (s.points || s.line === false || s.x.length === 1) {
      const r = s.line === false ? 4 : 3;
      xs.forEach((xv, k) => {
        if (Number.isFinite(xv) && Number.isFinite(s.y[k])) out.push(`<circle cx="${sx(xv).toFixed(2)}" cy="${sy(s.y[k]).toFixed(2)}" r="${r}" fill="${color}"/>`);
      });
    }
    const ly = box.y0 + 8 + i * LEGEND_ROW;
    const lx = box.x1 + 12;
    out.push(
      s.line === false
        ? `<circle cx="${lx + 11}" cy="${ly}" r="4" fill="${color}"/>`
        : `<line x1="${lx}" y1="${ly}" x2="${lx + 22}" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/>`,
    );
    out.push(`<text x="${lx + 28}" y="${ly}" dominant-baseline="middle">${escapeXml(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

export interface BarChartSpec {
  title?: string;
  yLabel: string;
  /** One group of bars per category (the x axis). */
  categories: string[];
  /** One bar per series in each group; values[c] is the bar of category c (NaN: no bar). */
  series: { name: string; values: number[] }[];
  width?: number;
  height?: number;
}

/** Grouped bars from zero (`flatgrad bench`: ms per step of each optimizer, a bar per backend and mode). */
export function barChartSvg(spec: BarChartSpec): string {
  const legendWidth = Math.min(280, 48 + 7 * Math.max(0, ...spec.series.map((s) => s.name.length)));
  const width = MARGIN.left + (spec.width ?? Math.max(320, 40 + spec.categories.length * (16 * spec.series.length + 24))) + MARGIN.right + legendWidth;
  const height = Math.max(spec.height ?? 360, MARGIN.top + spec.series.length * LEGEND_ROW + 8 + MARGIN.bottom);
  const box = { x0: MARGIN.left, x1: width - MARGIN.right - legendWidth, y0: MARGIN.top, y1: height - MARGIN.bottom };
  const y = { min: 0, max: extent([0, ...spec.series.flatMap((s) => s.values)], 0.05).max };
  const sy = scale(y, box.y1, box.y0);
  const out = svgOpen(width, height, spec.title);
  for (const t of niceTicks(y.min, y.max, 5)) {
    const py = sy(t).toFixed(1);
    out.push(`<line x1="${box.x0}" y1="${py}" x2="${box.x1}" y2="${py}" stroke="#eee"/>`);
    out.push(`<text x="${box.x0 - 8}" y="${py}" text-anchor="end" dominant-baseline="middle">${formatTick(t)}</text>`);
  }
  out.push(`<rect x="${box.x0}" y="${box.y0}" width="${box.x1 - box.x0}" height="${box.y1 - box.y0}" fill="none" stroke="black"/>`);
  const cy = (box.y0 + box.y1) / 2;
  out.push(`<text x="16" y="${cy}" text-anchor="middle" transform="rotate(-90 16 ${cy})">${escapeXml(spec.yLabel)}</text>`);
  const groupWidth = (box.x1 - box.x0) / Math.max(1, spec.categories.length);
  const bar = (groupWidth - 16) / Math.max(1, spec.series.length);
  spec.categories.forEach((c, ci) => {
    const gx = box.x0 + ci * groupWidth;
    out.push(`<text x="${(gx + groupWidth / 2).toFixed(1)}" y="${box.y1 + 18}" text-anchor="middle">${escapeXml(c)}</text>`);
    spec.series.forEach((s, si) => {
      const v = s.values[ci];
      if (!Number.isFinite(v)) return;
      const top = sy(v);
      out.push(`<rect x="${(gx + 8 + si * bar).toFixed(1)}" y="${top.toFixed(1)}" width="${Math.max(1, bar - 2).toFixed(1)}" height="${(box.y1 - top).toFixed(1)}" fill="${PALETTE[si % PALETTE.length]}"><title>${escapeXml(`${s.name}, ${c}: ${formatTick(v)}`)}</title></rect>`);
    });
  });
  spec.series.forEach((s, i) => {
    const ly = box.y0 + 8 + i * LEGEND_ROW;
    const lx = box.x1 + 12;
    out.push(`<rect x="${lx}" y="${ly - 6}" width="22" height="12" fill="${PALETTE[i % PALETTE.length]}"/>`);
    out.push(`<text x="${lx + 28}" y="${ly}" dominant-baseline="middle">${escapeXml(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

const VEGA_LITE_SCHEMA = 'https://vega.github.io/schema/vega-lite/v5.json';

export function lineChartVegaLite(spec: LineChartSpec): object {
  const num = (v: number) => (Number.isFinite(v) ? v : null);
  const values = spec.series.flatMap((s) =>
    s.x.map((x, i) => ({
      series: s.name,
      x,
      y: num(s.y[i]),
      ...(s.yError ? { yLow: num(s.y[i] - s.yError[i]), yHigh: num(s.y[i] + s.yError[i]) } : {}),
    })),
  );
  const scatter = spec.series.length > 0 && spec.series.every((s) => s.line === false);
  const encoding = {
    x: { field: 'x', type: 'quantitative', title: spec.xLabel, ...(spec.xScale === 'log' ? { scale: { type: 'log' } } : {}) },
    y: { field: 'y', type: 'quantitative', title: spec.yLabel, scale: { zero: false } },
    color: { field: 'series', type: 'nominal', title: null, sort: spec.series.map((s) => s.name) },
    ...(spec.series.some((s) => s.dashed)
      ? { strokeDash: { field: 'series', type: 'nominal', legend: null, scale: { domain: spec.series.map((s) => s.name), range: spec.series.map((s) => (s.dashed ? [6, 4] : [1, 0])) } } }
      : {}),
  };
  const mark = scatter ? { type: 'point', filled: true } : { type: 'line', point: spec.series.some((s) => s.points) };
  const frame = {
    $schema: VEGA_LITE_SCHEMA,
    ...(spec.title ? { title: spec.title } : {}),
    width: spec.width ?? 480,
    height: (spec.height ?? 400) - MARGIN.top - MARGIN.bottom,
    data: { values },
  };
  if (!spec.series.some((s) => s.yError)) return { ...frame, mark, encoding };
  // Error bars as a second layer over the same data: a rule from yLow to yHigh per point.
  return {
    ...frame,
    layer: [
      { mark, encoding },
      { mark: { type: 'errorbar', ticks: true }, encoding: { x: encoding.x, y: { field: 'yLow', type: 'quantitative', title: spec.yLabel }, y2: { field: 'yHigh' }, color: encoding.color } },
    ],
  };
}

/** Viridis at 9 stops, interpolated linearly: perceptually ordered and readable in grey. */
const VIRIDIS = ['#440154', '#472d7b', '#3b528b', '#2c728e', '#21918c', '#28ae80', '#5ec962', '#addc30', '#fde725'];

function colorAt(t: number): string {
  const u = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(u));
  const f = u - i;
  const rgb = (h: string) => [1, 3, 5].map((k) => parseInt(h.slice(k, k + 2), 16));
  const [a, b] = [rgb(VIRIDIS[i]), rgb(VIRIDIS[i + 1])];
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(',')})`;
}

/**
 * Colours and contours are spaced in log10(z) when z is positive and spans more than a factor 3
 * (losses away from a minimum grow fast and would wash out the basin), otherwise linearly.
 */
function zTransform(z: number[][]): { f: (v: number) => number; inverse: (v: number) => number; label: string } {
  const finite = z.flat().filter(Number.isFinite);
  const logScale = finite.length > 0 && Math.min(...finite) > 0 && Math.max(...finite) / Math.min(...finite) > 3;
  return logScale ? { f: Math.log10, inverse: (v) => 10 ** v, label: 'log scale' } : { f: (v) => v, inverse: (v) => v, label: '' };
}

/** Marching squares: the segments where the bilinear surface through z crosses `level` (grid coordinates). */
export function contourSegments(z: number[][], level: number): [number, number, number, number][] {
  const segs: [number, number, number, number][] = [];
  const cross = (a: number, b: number) => (level - a) / (b - a);
  for (let j = 0; j + 1 < z.length; j++) {
    for (let i = 0; i + 1 < z[j].length; i++) {
      const c = [z[j][i], z[j][i + 1], z[j + 1][i + 1], z[j + 1][i]];
      if (!c.every(Number.isFinite)) continue;
      // Edge k joins corners k and k+1 (bottom, right, top, left); a crossing on it as a grid point.
      const corners: [number, number][] = [[i, j], [i + 1, j], [i + 1, j + 1], [i, j + 1]];
      const points: [number, number][] = [];
      for (let k = 0; k < 4; k++) {
        const a = c[k];
        const b = c[(k + 1) % 4];
        if ((a < level) !== (b < level)) {
          const t = cross(a, b);
          const [p, q] = [corners[k], corners[(k + 1) % 4]];
          points.push([p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t]);
        }
      }
      // Two crossings: one segment. Four (a saddle): the corners on the centre's side are joined
      // through the centre, so the segments cut off the two other corners.
      if (points.length === 2) segs.push([...points[0], ...points[1]]);
      else if (points.length === 4) {
        const centreAbove = (c[0] + c[1] + c[2] + c[3]) / 4 >= level;
        const firstAbove = c[0] >= level;
        const order = centreAbove === firstAbove ? [0, 1, 2, 3] : [3, 0, 1, 2];
        segs.push([...points[order[0]], ...points[order[1]]], [...points[order[2]], ...points[order[3]]]);
      }
    }
  }
  return segs;
}

export function heatmapSvg(spec: HeatmapSpec): string {
  const width = spec.width ?? 560;
  const height = spec.height ?? 480;
  const box = { x0: MARGIN.left, x1: width - MARGIN.right - 80, y0: MARGIN.top, y1: height - MARGIN.bottom };
  const { xs, ys, z } = spec;
  const tf = zTransform(z);
  const tz = z.map((row) => row.map((v) => (Number.isFinite(v) ? tf.f(v) : NaN)));
  const ze = extent(tz.flat());
  const norm = (v: number) => (v - ze.min) / (ze.max - ze.min);
  // Cells are centred on the grid points, so the axes reach half a step beyond the first and last.
  const half = (v: number[]) => (v.length > 1 ? (v[1] - v[0]) / 2 : 0.5);
  const x: Extent = { min: xs[0] - half(xs), max: xs[xs.length - 1] + half(xs) };
  const y: Extent = { min: ys[0] - half(ys), max: ys[ys.length - 1] + half(ys) };
  const sx = scale(x, box.x0, box.x1);
  const sy = scale(y, box.y1, box.y0);
  const out = svgOpen(width, height, spec.title);
  const cw = Math.abs(sx(xs[0] + 2 * half(xs)) - sx(xs[0]));
  const ch = Math.abs(sy(ys[0] + 2 * half(ys)) - sy(ys[0]));
  tz.forEach((row, j) =>
    row.forEach((v, i) => {
      const fill = Number.isFinite(v) ? colorAt(norm(v)) : '#bbb';
      out.push(`<rect x="${(sx(xs[i]) - cw / 2).toFixed(2)}" y="${(sy(ys[j]) - ch / 2).toFixed(2)}" width="${(cw + 0.5).toFixed(2)}" height="${(ch + 0.5).toFixed(2)}" fill="${fill}"/>`);
    }),
  );
  // Grid coordinates (i, j) to pixels: the grid is uniform, so interpolate between the ends.
  const gx = (i: number) => sx(xs[0] + (i / Math.max(1, xs.length - 1)) * (xs[xs.length - 1] - xs[0]));
  const gy = (j: number) => sy(ys[0] + (j / Math.max(1, ys.length - 1)) * (ys[ys.length - 1] - ys[0]));
  const levels = spec.levels ?? 12;
  for (let k = 1; k < levels; k++) {
    const level = ze.min + ((ze.max - ze.min) * k) / levels;
    const d = contourSegments(tz, level).map(([a, b, c, e]) => `M${gx(a).toFixed(2)},${gy(b).toFixed(2)}L${gx(c).toFixed(2)},${gy(e).toFixed(2)}`).join('');
    if (d) out.push(`<path d="${d}" fill="none" stroke="white" stroke-opacity="0.7" stroke-width="1"/>`);
  }
  out.push(...axes(x, y, box, spec.xLabel, spec.yLabel, false));
  // Colour bar with its own ticks in data units.
  const bx = box.x1 + 16;
  const steps = 40;
  for (let s = 0; s < steps; s++) {
    const top = box.y0 + ((box.y1 - box.y0) * s) / steps;
    out.push(`<rect x="${bx}" y="${top.toFixed(2)}" width="14" height="${((box.y1 - box.y0) / steps + 0.5).toFixed(2)}" fill="${colorAt(1 - s / steps)}"/>`);
  }
  const sb = scale(ze, box.y1, box.y0);
  // Ticks at round values of z itself: in log scale, niceTicks spaces them evenly in z's range and
  // their (transformed) positions crowd towards the top, which is what a log axis looks like.
  const zTicks = niceTicks(tf.inverse(ze.min), tf.inverse(ze.max), 5);
  for (const v of zTicks) {
    out.push(`<text x="${bx + 18}" y="${sb(tf.f(v)).toFixed(1)}" dominant-baseline="middle" font-size="10">${formatTick(v)}</text>`);
  }
  const label = [spec.zLabel ?? '', tf.label && `(${tf.label})`].filter(Boolean).join(' ');
  if (label) out.push(`<text x="${bx}" y="${box.y0 - 8}" font-size="10">${escapeXml(label)}</text>`);
  out.push('</svg>');
  return out.join('\n') + '\n';
}

export function heatmapVegaLite(spec: HeatmapSpec): object {
  const values = spec.ys.flatMap((yv, j) => spec.xs.map((xv, i) => ({ x: xv, y: yv, z: Number.isFinite(spec.z[j][i]) ? spec.z[j][i] : null })));
  const tf = zTransform(spec.z);
  return {
    $schema: VEGA_LITE_SCHEMA,
    ...(spec.title ? { title: spec.title } : {}),
    width: (spec.width ?? 560) - 160,
    height: (spec.height ?? 480) - MARGIN.top - MARGIN.bottom,
    data: { values },
    mark: 'rect',
    encoding: {
      x: { field: 'x', type: 'ordinal', title: spec.xLabel, axis: { format: '.2f' } },
      y: { field: 'y', type: 'ordinal', title: spec.yLabel, sort: 'descending', axis: { format: '.2f' } },
      color: { field: 'z', type: 'quantitative', title: spec.zLabel ?? 'z', scale: { scheme: 'viridis', type: tf.label ? 'log' : 'linear' } },
    },
  };
}
