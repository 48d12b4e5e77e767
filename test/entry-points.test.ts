/**
 * The two package entries, each bundled and run in its own Node process, as users' bundlers and
 * scripts load them: the plain entry (what a browser bundle resolves) has no backend until init;
 * Node's entries default to the CPU backend; and neither hangs when imported dynamically from
 * a bundle (a top-level await in the module graph did: esbuild's bundled `await import()` never
 * settled and Node exited with status 13).
 */
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const SRC = resolve(__dirname, '../src');
const dir = mkdtempSync(join(tmpdir(), 'flatgrad-entries-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function runBundled(name: string, program: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const entry = join(dir, `${name}.ts`);
  writeFileSync(entry, program.replaceAll('$SRC', SRC));
  const outfile = join(dir, `${name}.mjs`);
  await build({ entryPoints: [entry], bundle: true, platform: 'node', format: 'esm', outfile, logLevel: 'silent', external: ['webgpu'] });
  const r = spawnSync(process.execPath, [outfile], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('package entries', () => {
  it('the plain entry, imported dynamically from a bundle, loads and runs after init', async () => {
    const r = await runBundled('dynamic', `
      const fg = await import('$SRC/index.ts');
      let before = 'no error';
      try { fg.tensor([1]); } catch (e) { before = (e as Error).message; }
      await fg.init({ backend: 'cpu' });
      console.log(JSON.stringify({ before, sum: Array.from(fg.tensor([1, 2, 3]).sum().dataSync()) }));
    `);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.before).toMatch(/no backend yet: call `await init\(\{ backend \}\)`/);
    expect(out.sum).toEqual([6]);
  });

  it("Node's entries make the CPU backend the default before init, also when imported dynamically", async () => {
    // What dist/node/index.js (the "node" export condition, written by scripts/build.mjs) does.
    const r = await runBundled('node-entry', `
      await import('$SRC/node-default.ts');
      const fg = await import('$SRC/index.ts');
      const s = fg.tensor([1, 2, 3]).sum();
      console.log(JSON.stringify({ backend: fg.backendInfo().name, sum: Array.from(s.dataSync()) }));
    `);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ backend: 'cpu', sum: [6] });
  });
});
