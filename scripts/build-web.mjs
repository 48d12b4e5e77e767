// Builds the browser demo into web/dist/:
//   flatgrad.js  the library as one ESM bundle (src/index.ts, the options of scripts/build.mjs)
//   app.js       the demo page (web/main.ts), bundled whole: library, charts, training loop
//   parity.js    the parity checks page (web/parity.ts); it imports ./flatgrad.js, so the library
//                bundle itself is what runs there, from one <script type="module">.
import { build } from 'esbuild';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const out = resolve(root, 'web/dist');
mkdirSync(out, { recursive: true });

const common = {
  absWorkingDir: root,
  bundle: true,
  format: 'esm',
  target: 'es2022',
  sourcemap: true,
  external: ['webgpu', 'node:*'],
  logLevel: 'warning',
};

/** Resolves imports of the library entry (src/index.ts) to the separately built ./flatgrad.js. */
const libraryAsExternal = {
  name: 'flatgrad-external',
  setup(b) {
    b.onResolve({ filter: /(^|\/)src\/index(\.js|\.ts)?$/ }, () => ({ path: './flatgrad.js', external: true }));
    b.onResolve({ filter: /(^|\/)src\// }, (args) => ({
      errors: [{ text: `${args.path}: the parity page may import the library only through src/index.ts (one copy of its state)` }],
    }));
  },
};

await Promise.all([
  build({ ...common, entryPoints: ['src/index.ts'], outfile: 'web/dist/flatgrad.js', platform: 'neutral', mainFields: ['module', 'main'] }),
  build({ ...common, entryPoints: ['web/main.ts'], outfile: 'web/dist/app.js', platform: 'browser' }),
  build({ ...common, entryPoints: ['web/parity.ts'], outfile: 'web/dist/parity.js', platform: 'browser', plugins: [libraryAsExternal] }),
]);
console.log('built web/dist/ (app.js, parity.js, flatgrad.js)');
