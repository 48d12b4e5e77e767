// Builds dist/ as one ES module per source file (dist/<path>.js, the layout of src/) plus the
// declarations (dist/types). Per-file output rather than one bundle (or esbuild's code-splitting
// chunks) because the consumer's bundler can then shake at module granularity with the
// package.json "sideEffects" list: an app that imports `init`, `tensor` and `matmul` ships the
// tensor core, the autograd rules and the backend it chooses, not nn/optim/data/io. Measured with
// bench/size.bench.mjs: per-file output gives the smallest minimal program (esbuild's shared
// chunks merge modules that a program may not need, and a chunk with one registration in it
// cannot be dropped). It also lets a browser load the package from an import map with no bundler.
// No source maps: they would point at src/, which the tarball does not hold, and tripled its size.
// The CLI (bin) is dist/cli.js, a two-line entry over the same per-file modules (dist/cli/*),
// which no library import reaches; `webgpu` (Dawn) and node:* are loaded only when asked for.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';

function sourceFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [join(dir, e.name)] : [],
  );
}

rmSync('dist', { recursive: true, force: true });
await build({
  entryPoints: sourceFiles('src'),
  outdir: 'dist',
  outbase: 'src',
  bundle: false,
  format: 'esm',
  target: 'es2022',
  platform: 'neutral',
  logLevel: 'warning',
});
writeFileSync(
  'dist/cli.js',
  "#!/usr/bin/env node\nimport { main } from './cli/main.js';\nprocess.exitCode = await main(process.argv.slice(2));\n",
);
chmodSync('dist/cli.js', 0o755);
// Node's entries (the "node" condition of each package.json export): the subpath itself, after
// src/node-default.ts made the CPU backend the default until init(). Generated from the exports
// map, so that a new subpath gets its Node entry without a second list to keep.
const { exports: entries } = JSON.parse(readFileSync('package.json', 'utf8'));
mkdirSync('dist/node', { recursive: true });
for (const [subpath, target] of Object.entries(entries)) {
  if (typeof target !== 'object' || !target.node) continue;
  const rel = (p) => relative('dist/node', p).replaceAll('\\', '/');
  writeFileSync(target.node, `import '${rel('dist/node-default.js')}';\nexport * from '${rel(target.import)}';\n`);
}
execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
console.log('built dist/');
