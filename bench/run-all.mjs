#!/usr/bin/env node
/**
 * `npm run bench`: bundles and runs every bench/*.bench.ts, each in its own process (steps.bench
 * spawns its own processes, one per family and repetition), then collects bench/results/*.md into
 * bench/results/SUMMARY.md.
 *
 *   node bench/run-all.mjs [--only=webgpu,wasm,sam,steps] [--quick] [--timeout=MIN] [--summary]
 *
 * --quick is passed to every bench (fewer repetitions; for a smoke run, not for figures). A bench
 * that prints its markdown to stdout without writing bench/results/<name>.md gets its stdout saved
 * there. Benches run one after another: they time the same cores, so they must not overlap. A
 * bench that fails or times out is reported in SUMMARY.md and the others still run; the exit code
 * is 1 if any failed.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
process.chdir(root); // the benches write bench/results relative to the repository root
const args = process.argv.slice(2);
const arg = (k) => args.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3);
const quick = args.includes('--quick');
const timeoutMin = Number(arg('timeout') ?? 20);
const ORDER = ['webgpu', 'wasm', 'sam', 'steps'];
const found = readdirSync('bench')
  .filter((f) => f.endsWith('.bench.ts'))
  .map((f) => f.slice(0, -'.bench.ts'.length))
  .sort((a, b) => (ORDER.indexOf(a) + 1 || 99) - (ORDER.indexOf(b) + 1 || 99) || a.localeCompare(b));
const only = arg('only')?.split(',');
// --summary: run nothing, only write SUMMARY.md from the markdown already in bench/results.
const benches = args.includes('--summary') ? [] : only ? found.filter((b) => only.includes(b)) : found;
if (only) for (const b of only) if (!found.includes(b)) console.error(`run-all: no bench/${b}.bench.ts`);

const resultsDir = 'bench/results';
const cacheDir = 'node_modules/.cache/flatgrad';
mkdirSync(resultsDir, { recursive: true });
mkdirSync(cacheDir, { recursive: true });

const mtime = (f) => (existsSync(f) ? statSync(f).mtimeMs : 0);
const load = () => os.loadavg().map((x) => x.toFixed(2)).join(' ');

/** Runs `node file args`, echoing its stdout and keeping a copy; resolves with how it ended. */
function run(file, benchArgs) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [file, ...benchArgs], { stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    let timedOut = false;
    child.stdout.on('data', (d) => {
      stdout += d;
      process.stdout.write(d);
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 5000).unref();
    }, timeoutMin * 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, timedOut, stdout, spawnError: String(e) });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, timedOut, stdout });
    });
  });
}

const outcomes = [];
for (const name of benches) {
  const started = Date.now();
  const md = path.join(resultsDir, `${name}.md`);
  const mdBefore = mtime(md);
  const loadBefore = load();
  console.error(`\n=== bench/${name}.bench.ts (load average ${loadBefore}) ===`);
  const outfile = path.join(cacheDir, `${name}.bench.mjs`);
  let status;
  try {
    await build({
      entryPoints: [`bench/${name}.bench.ts`],
      bundle: true,
      platform: 'node',
      format: 'esm',
      packages: 'external',
      outfile,
      logLevel: 'warning',
    });
    const r = await run(outfile, quick ? ['--quick'] : []);
    status = r.timedOut
      ? `timed out after ${timeoutMin} min`
      : r.spawnError
        ? `could not start: ${r.spawnError}`
        : r.code === 0
          ? 'ok'
          : `failed (exit ${r.code ?? r.signal})`;
    if (mtime(md) <= mdBefore && r.stdout.trim()) {
      // The bench printed its tables without writing a markdown file: keep what it printed.
      writeFileSync(md, `_Printed by bench/${name}.bench.ts on ${new Date().toISOString()} (load average before: ${loadBefore})._\n\n${r.stdout.trim()}\n`);
    }
  } catch (e) {
    status = `build failed: ${e instanceof Error ? e.message : String(e)}`;
  }
  const seconds = (Date.now() - started) / 1000;
  outcomes.push({ name, status, seconds, loadBefore, mdFresh: mtime(md) > mdBefore });
  console.error(`=== ${name}: ${status} in ${seconds.toFixed(0)} s ===`);
}

// SUMMARY.md: every results/*.md, those of this run first, each under its bench's name.
const cpus = os.cpus();
const lines = [
  '# Benchmark summary',
  '',
  `Written ${new Date().toISOString()} by \`npm run bench\`${quick ? ' --quick (smoke run: fewer repetitions)' : ''} on ${cpus.length} x ${cpus[0]?.model ?? 'unknown CPU'}, Node ${process.version}; load average now ${load()}.`,
  '',
  ...(outcomes.length ? ['| bench | this run | seconds | load average before |', '| --- | --- | ---: | --- |'] : ['(No bench was run this time: the sections below are the latest results on disk.)']),
  ...outcomes.map((o) => `| ${o.name} | ${o.status}${o.mdFresh ? '' : ' (markdown not updated)'} | ${o.seconds.toFixed(0)} | ${o.loadBefore} |`),
];
const mds = readdirSync(resultsDir)
  .filter((f) => f.endsWith('.md') && f !== 'SUMMARY.md')
  .map((f) => f.slice(0, -3))
  .sort((a, b) => (ORDER.indexOf(a) + 1 || 99) - (ORDER.indexOf(b) + 1 || 99) || a.localeCompare(b));
for (const name of mds) {
  const file = path.join(resultsDir, `${name}.md`);
  const ran = outcomes.find((o) => o.name === name);
  lines.push('', `## ${name}`, '', `_bench/results/${name}.md, written ${new Date(mtime(file)).toISOString()}${ran ? '' : ' (not run this time)'}._`, '');
  lines.push(readFileSync(file, 'utf8').trim());
}
writeFileSync(path.join(resultsDir, 'SUMMARY.md'), lines.join('\n') + '\n');
console.error(`\nwrote ${resultsDir}/SUMMARY.md`);
process.exit(outcomes.every((o) => o.status === 'ok') ? 0 : 1);
