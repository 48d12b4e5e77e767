/**
 * Bundle sizes: the programs of bench/size.programs.ts (the same minimal program with flatgrad,
 * @jax-js/jax and tfjs-core + tfjs-backend-webgpu, and flatgrad's training program with nn, optim
 * and the SAM family), each bundled by esbuild the way an app would (minified, ES modules, code
 * splitting) against the package as published: it runs `npm run build` first and resolves
 * `flatgrad` through its package.json (exports, sideEffects), as an installed copy would.
 * Writes bench/results/size.json and bench/results/size.md (with the largest modules of each, from
 * esbuild's metafile: where the bytes go). No timing: the figures are deterministic.
 *
 *   node bench/run-all.mjs --only=size
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { BUDGETS, bundleSize, PROGRAMS, type BundleSize } from './size.programs.js';

const root = resolve('.');
execFileSync(process.execPath, ['scripts/build.mjs'], { cwd: root, stdio: 'inherit' });
const work = mkdtempSync(join(tmpdir(), 'flatgrad-size-'));
mkdirSync(join(work, 'node_modules'));
symlinkSync(root, join(work, 'node_modules', 'flatgrad'), 'dir');

const version = (pkg: string): string => (JSON.parse(readFileSync(join(root, 'node_modules', pkg, 'package.json'), 'utf8')) as { version: string }).version;
const versions: Record<string, string> = {
  flatgrad: (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version,
  '@jax-js/jax': version('@jax-js/jax'),
  '@tensorflow/tfjs-core': version('@tensorflow/tfjs-core'),
  '@tensorflow/tfjs-backend-webgpu': version('@tensorflow/tfjs-backend-webgpu'),
};

const results: (BundleSize & { name: string; library: string; describe: string; budget?: number })[] = [];
try {
  for (const [name, p] of Object.entries(PROGRAMS)) {
    const size = await bundleSize(work, name, p.source, [join(root, 'node_modules')], p.families);
    const budget = name === 'flatgrad-minimal' ? BUDGETS.minimal : name === 'flatgrad-training' ? BUDGETS.training : undefined;
    results.push({ name, library: p.library, describe: p.describe, budget, ...size });
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

const kb = (n: number): string => (n / 1024).toFixed(1);
const lines = [
  '# Bundle sizes',
  '',
  `esbuild ${version('esbuild')}, minified ES modules with code splitting, gzip -9. "Loaded" is what a browser fetches to run`,
  'the program on WebGPU (the entry, its static imports, the WebGPU backend\'s chunks, and the kernel families it loads on',
  'first dispatch that the program uses: the training program\'s cross-entropy and random inputs); "all" adds the chunks',
  'only another backend or an unused kernel family loads. Versions: ' + Object.entries(versions).map(([k, v]) => `${k} ${v}`).join(', ') + '.',
  '',
  '| program | library | loaded KB gzip (raw) | all KB gzip | budget |',
  '| --- | --- | --- | --- | --- |',
  ...results.map(
    (r) =>
      `| ${r.name}: ${r.describe} | ${r.library} | ${kb(r.loaded.gzip)} (${kb(r.loaded.raw)}) | ${kb(r.all.gzip)} | ${
        r.budget ? `${kb(r.budget)} ${r.loaded.gzip <= r.budget ? 'met' : '**not met**'}` : ''
      } |`,
  ),
  '',
  '## Where the bytes go (largest modules loaded, minified bytes before gzip)',
  '',
  ...results.flatMap((r) => [`${r.name}:`, '', ...r.top.map(([m, b]) => `- ${kb(b)} KB ${m}`), '']),
];
mkdirSync('bench/results', { recursive: true });
writeFileSync('bench/results/size.json', JSON.stringify({ date: new Date().toISOString(), versions, results }, null, 2) + '\n');
writeFileSync('bench/results/size.md', lines.join('\n'));
console.log(lines.join('\n'));
