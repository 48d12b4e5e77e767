/** Writing a run's files: CSV tables, JSON, and each chart as SVG plus its Vega-Lite spec. */
import { writeFileAtomic } from '../io/atomic.js';
import { heatmapSvg, heatmapVegaLite, lineChartSvg, lineChartVegaLite, type HeatmapSpec, type LineChartSpec } from './plot.js';

const utf8 = (s: string) => new TextEncoder().encode(s);

export function toCsv(rows: Record<string, number | string | null>[]): string {
  if (rows.length === 0) return '';
  const cols = Object.keys(rows[0]);
  const cell = (v: number | string | null) => {
    if (v === null || v === undefined) return '';
    const s = typeof v === 'number' ? String(Number.isInteger(v) ? v : Number(v.toPrecision(7))) : v;
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [cols.join(','), ...rows.map((r) => cols.map((c) => cell(r[c])).join(','))].join('\n') + '\n';
}

export async function writeText(path: string, text: string): Promise<void> {
  await writeFileAtomic(path, utf8(text));
}

export async function writeJson(path: string, value: unknown): Promise<void> {
  await writeText(path, JSON.stringify(value, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v), 2) + '\n');
}

/** `<base>.svg` and `<base>.vl.json`; returns the SVG path. */
export async function writeLineChart(base: string, spec: LineChartSpec): Promise<string> {
  await writeText(`${base}.svg`, lineChartSvg(spec));
  await writeJson(`${base}.vl.json`, lineChartVegaLite(spec));
  return `${base}.svg`;
}

export async function writeHeatmap(base: string, spec: HeatmapSpec): Promise<string> {
  await writeText(`${base}.svg`, heatmapSvg(spec));
  await writeJson(`${base}.vl.json`, heatmapVegaLite(spec));
  return `${base}.svg`;
}
