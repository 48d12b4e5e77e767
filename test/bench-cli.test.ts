/**
 * `flatgrad bench` run in-process with tiny settings: a researcher's optimizer file
 * (examples/lion.mjs, examples/friendly-sam.mjs) against the built-ins on a ViT, fused and per
 * tensor; it writes the table as markdown, JSON and SVG. Bad flags are usage errors naming them.
 * No timing is asserted: only that each measurement exists and the counts are consistent.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main, type CliIO } from '../src/cli/main.js';
import type { BenchRow } from '../src/cli/commands/bench.js';
import { acquireWebGPU } from './helpers/webgpu.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'flatgrad-bench-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = { code: 0, out: '', err: '' };
  const io: CliIO = { stdout: { write: (s: string) => (r.out += s) }, stderr: { write: (s: string) => (r.err += s) }, cwd: REPO };
  r.code = await main(argv, io);
  return r;
}

const TINY = ['--batch', '2', '--steps', '1', '--width', '8', '--depth', '1'];

describe('flatgrad bench', () => {
  it('--optimizer examples/lion.mjs --model vit: every optimizer, fused and per tensor, as markdown, JSON and SVG', async () => {
    const out = join(dir, 'lion');
    const r = await run(['bench', '--optimizer', 'examples/lion.mjs,sam', '--model', 'vit', '--backend', 'cpu,wasm', ...TINY, '--out', out]);
    expect(r.code, r.err).toBe(0);
    expect(r.err).not.toMatch(/error|Error/);
    const { rows, info } = JSON.parse(await readFile(join(out, 'bench.json'), 'utf8')) as { rows: BenchRow[]; info: Record<string, unknown> };
    expect(info.model).toBe('vit');
    expect(info.tensors).toBeGreaterThan(10);
    // SGD is always timed (the ratio column is to it), and each config runs on each engine and backend.
    const keys = rows.map((x) => `${x.optimizer} ${x.backend} ${x.engine}`).sort();
    expect(keys).toEqual(['cpu', 'wasm'].flatMap((b) => ['lion', 'sam', 'sgd'].flatMap((o) => [`${o} ${b} fused`, `${o} ${b} per tensor`])).sort());
    for (const row of rows) {
      expect(row.note, `${row.optimizer} ${row.backend} ${row.engine}`).toBeUndefined();
      expect(row.stepMs).toBeGreaterThan(0);
      expect(row.optimizerMs).toBeGreaterThan(0);
      expect(row.dispatches).toBeGreaterThan(0);
      expect(row.bytes).toBeGreaterThan(0);
      expect(row.copyGbPerS).toBeGreaterThan(0);
    }
    const get = (o: string, b: string, e: string) => rows.find((x) => x.optimizer === o && x.backend === b && x.engine === e)!;
    expect(get('sgd', 'cpu', 'fused').ratioToSgd).toBe(1);
    // Lion fused is the non-finite check and one arena pass; per tensor, both run once per tensor.
    expect(get('lion', 'cpu', 'fused').dispatches).toBe(2);
    expect(get('lion', 'cpu', 'per tensor').dispatches).toBe(2 * (info.tensors as number));
    // Lion reads p, g, exp_avg and writes p, exp_avg over the arena; the check reads g.
    expect(get('lion', 'wasm', 'fused').bytes).toBeGreaterThanOrEqual(6 * 4 * (info.parameters as number));
    const md = await readFile(join(out, 'bench.md'), 'utf8');
    expect(md).toContain('| optimizer | backend | engine | ms/step | ratio to SGD | optimizer ms | dispatches | MB moved | GB/s | copy GB/s | of copy |');
    expect(md).toMatch(/\| lion \| wasm \| per tensor \| [\d.]+ \| [\d.]+ \|/);
    expect(r.out).toContain(md.split('\n')[0]);
    const svg = await readFile(join(out, 'bench.svg'), 'utf8');
    expect(svg).toMatch(/^<svg /);
    for (const name of ['lion', 'sam', 'sgd', 'cpu fused', 'wasm per tensor']) expect(svg).toContain(`>${name}<`);
    // The progress bar went to stderr.
    expect(r.err).toMatch(/bench +\[#+\] +12\/12/);
  }, 300_000);

  it('on WebGPU: compute passes counted from the runtime, fused and per tensor', async () => {
    const { backend: gpu, reason } = await acquireWebGPU();
    if (!gpu) {
      console.warn(`skipped: no WebGPU adapter (${reason})`);
      return;
    }
    const out = join(dir, 'webgpu');
    const r = await run(['bench', '--optimizer', 'examples/lion.mjs', '--model', 'mlp', '--backend', 'webgpu', ...TINY, '--out', out]);
    expect(r.code, r.err).toBe(0);
    const { rows, info } = JSON.parse(await readFile(join(out, 'bench.json'), 'utf8')) as { rows: BenchRow[]; info: Record<string, unknown> };
    // Every engine of every optimizer is measured: no row says n/a.
    for (const row of rows) {
      expect(row.note, `${row.optimizer} ${row.engine}`).toBeUndefined();
      expect(row.stepMs).toBeGreaterThan(0);
      expect(row.optimizerMs).toBeGreaterThan(0);
      expect(row.bytes).toBeGreaterThan(0);
    }
    const lion = rows.find((x) => x.optimizer === 'lion' && x.engine === 'fused')!;
    // The non-finite check (a block pass and its tree pass) and Lion's pass.
    expect(lion.dispatches).toBe(3);
    // Per tensor, both block passes run once per tensor; the check's partials still meet in one tree pass.
    const tensors = info.tensors as number;
    expect(tensors).toBeGreaterThan(1);
    expect(rows.find((x) => x.optimizer === 'lion' && x.engine === 'per tensor')!.dispatches).toBe(2 * tensors + 1);
    const md = await readFile(join(out, 'bench.md'), 'utf8');
    expect(md).toMatch(/\| lion \| webgpu \| per tensor \| [\d.]+ \| [\d.]+ \| [\d.]+ \| \d+ \|/);
    expect(md).not.toContain('n/a');
  }, 300_000);

  it('times a SAM-family member from a file, and a derived optimizer side for LookSAM', async () => {
    const out = join(dir, 'fsam');
    const r = await run(['bench', '--optimizer', 'examples/friendly-sam.mjs,looksam', '--model', 'mlp', '--backend', 'cpu', ...TINY, '--out', out]);
    expect(r.code, r.err).toBe(0);
    const { rows } = JSON.parse(await readFile(join(out, 'bench.json'), 'utf8')) as { rows: BenchRow[] };
    const fsam = rows.find((x) => x.optimizer === 'FriendlySAM' && x.engine === 'fused')!;
    expect(fsam.optimizerTiming).toBe('direct');
    expect(fsam.dispatches).toBeGreaterThan(rows.find((x) => x.optimizer === 'sgd' && x.engine === 'fused')!.dispatches);
    expect(rows.find((x) => x.optimizer === 'looksam' && x.engine === 'fused')!.optimizerTiming).toBe('derived');
  }, 300_000);

  it.each([
    [['--model', 'resnet'], '--model must be one of mlp, cnn, vit or a module file (.mjs/.js), got resnet'],
    [['--optimizer', 'sgd,adam'], "--optimizer: unknown optimizer 'adam'; expected sgd, adamw, sam, asam, looksam or a file"],
    [['--backend', 'tpu'], '--backend must be a list of cpu, wasm, webgpu, got tpu'],
    [['--steps', '0'], '--steps must be an integer >= 1, got 0'],
    [['--batch', 'x'], '--batch must be an integer >= 1, got x'],
    [['--optimzer', 'sgd'], 'unknown flag --optimzer (did you mean --optimizer?)'],
    [['--optimizer', 'no-such-file.mjs'], '--optimizer no-such-file.mjs: cannot load it'],
    [['--optimizer', 'NOT_A_FACTORY'], 'not-a-factory.mjs: its default export must be a function (fg) => ..., got number'],
  ])('%j is a usage error naming the flag', async (argvIn, message) => {
    const bad = join(dir, 'not-a-factory.mjs');
    await writeFile(bad, 'export default 42;\n');
    const argv = argvIn.map((a) => (a === 'NOT_A_FACTORY' ? bad : a));
    const r = await run(['bench', ...argv, '--backend', argv[0] === '--backend' ? argv[1] : 'cpu', '--out', join(dir, 'bad')].slice(0, argv[0] === '--backend' ? 2 + argv.length : undefined));
    expect(r.err).toContain(message);
    expect(r.code).toBe(2);
    expect(r.err).toContain('usage: flatgrad bench');
  });

  it('--help lists the flags and examples', async () => {
    const r = await run(['bench', '--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('--optimizer <a,b,...>');
    expect(r.out).toContain('flatgrad bench --model vit --optimizer examples/lion.mjs');
  });
});
