#!/usr/bin/env node
/**
 * Builds .gpu-bench/, the self-contained folder that bench/gpu.sh runs from on a machine that has a
 * GPU but no node_modules (the device machine gets the working tree without the ignored
 * node_modules, 621 MB here, and carries at most 64 MiB). It holds:
 *
 *   bench/*.mjs                     webgpu.bench, steps.bench, sam.bench and gpu-adapter, each one
 *                                   esbuild bundle with tfjs, tfjs-backend-webgpu and jax-js inside
 *   node_modules/webgpu/            Dawn for Node: index.js and package.json; its linux-x64
 *  dawn.node.xz                    dawn.node (21 MB, 132 MB for the package with every platform),
 *                                   compressed: gpu.sh unpacks it into node_modules/webgpu/dist
 *   lib/libvulkan.so.1              the Vulkan loader of this machine, for a machine without one
 *   node.xz                         this Node binary, xz-compressed, for a machine without Node
 *
 *   node scripts/prepare-gpu-bench.mjs [--no-node]
 *
 * The bench bundles are rebuilt every time (a second or two); node.xz only when missing or older
 * than the Node binary. .gpu-bench/ is in .gitignore: it travels only when `carry` names it.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
process.chdir(root);
const dir = '.gpu-bench';
const withNode = !process.argv.includes('--no-node');

if (process.platform !== 'linux' || process.arch !== 'x64') {
  // The device machine is linux x86-64: a bundle made elsewhere would carry the wrong dawn.node and node.
  throw new Error(`prepare-gpu-bench: builds for linux-x64 only, this is ${process.platform}-${process.arch}`);
}

rmSync(path.join(dir, 'bench'), { recursive: true, force: true });
mkdirSync(path.join(dir, 'bench'), { recursive: true });
await build({
  entryPoints: ['webgpu', 'steps', 'sam'].map((b) => `bench/${b}.bench.ts`).concat('bench/gpu-adapter.ts'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // Dawn is a native addon found next to its index.js: it stays a package, resolved from
  // .gpu-bench/node_modules. Everything else (tfjs, jax-js, flatgrad's sources) goes in the bundles.
  external: ['webgpu'],
  // tfjs is CommonJS and requires Node built-ins: give the ESM bundles a real require.
  banner: { js: "import { createRequire as __fgCreateRequire } from 'node:module'; const require = __fgCreateRequire(import.meta.url);" },
  outdir: path.join(dir, 'bench'),
  outExtension: { '.js': '.mjs' },
  // Whitespace and syntax only: identifiers stay, so stack traces in a failed run still read.
  minifyWhitespace: true,
  minifySyntax: true,
  legalComments: 'none',
  logLevel: 'warning',
});

const dawnDir = path.join(dir, 'node_modules', 'webgpu');
mkdirSync(path.join(dawnDir, 'dist', 'linux-x64'), { recursive: true });
for (const f of ['index.js', 'package.json']) copyFileSync(path.join('node_modules', 'webgpu', f), path.join(dawnDir, f));
// dawn.node travels xz-compressed (21 MB -> about 6): gpu.sh unpacks it next to index.js.
const dawnNode = path.join('node_modules', 'webgpu', 'dist', 'linux-x64', 'dawn.node');
rmSync(path.join(dawnDir, 'dist', 'linux-x64', 'dawn.node'), { force: true });
xzIfStale(dawnNode, path.join(dir, 'dawn.node.xz'));

// The Vulkan loader (libvulkan.so.1) Dawn dlopens; gpu.sh puts lib/ on LD_LIBRARY_PATH only where
// the machine has none of its own.
mkdirSync(path.join(dir, 'lib'), { recursive: true });
const loader = ['/usr/lib/x86_64-linux-gnu/libvulkan.so.1', '/lib/x86_64-linux-gnu/libvulkan.so.1'].find((f) => existsSync(f));
if (loader) copyFileSync(realpathSync(loader), path.join(dir, 'lib', 'libvulkan.so.1'));
else console.error('prepare-gpu-bench: no libvulkan.so.1 on this machine (apt-get install libvulkan1): gpu.sh will need the machine\'s own or .gl/*.deb');

if (withNode) {
  xzIfStale(process.execPath, path.join(dir, 'node.xz'));
  writeFileSync(path.join(dir, 'node.version'), process.version + '\n');
}

/** Writes `to` = xz of `from`, unless it is already newer than `from` (xz of node takes ~20 s). */
function xzIfStale(from, to) {
  if (existsSync(to) && statSync(to).mtimeMs >= statSync(from).mtimeMs) return;
  console.error(`prepare-gpu-bench: compressing ${from} into ${to}`);
  writeFileSync(to, execFileSync('xz', ['-T0', '-9', '-c', from], { maxBuffer: 1 << 30 }));
}

/** Bytes under a folder: the carry limit is 64 MiB for everything that travels. */
function bytes(p) {
  const s = statSync(p);
  return s.isDirectory() ? readdirSync(p).reduce((sum, f) => sum + bytes(path.join(p, f)), 0) : s.size;
}
const total = bytes(dir);
console.error(`prepare-gpu-bench: ${dir} holds ${(total / 2 ** 20).toFixed(1)} MiB`);
if (total > 48 * 2 ** 20) console.error('prepare-gpu-bench: WARNING: with the working tree this may pass the 64 MiB the device tool carries');
