/**
 * The programs whose bundle sizes bench/size.bench.ts reports and test/consumer.test.ts bounds,
 * and the one way both measure them: esbuild, minified, ES modules with code splitting (as an app
 * bundler ships a lazily loaded backend), browser platform. "Loaded" counts what a browser fetches
 * to run the program on WebGPU: the entry, its static imports, the dynamically imported chunks
 * that hold WebGPU code (with their static imports), except the kernel families that the backend
 * itself imports on their first dispatch (dynamic imports made inside src/kernels/webgpu/: conv,
 * softmax, sort, ..., see Runtime.lazy), of which it counts those the program dispatches (its
 * `families`). A chunk behind a dynamic import that only the wasm backend reaches is built but
 * never fetched on WebGPU. test/consumer.test.ts runs the programs in Chromium and checks that
 * every file the page fetched is counted. Sizes are gzip level 9.
 */
import { build, type Metafile } from 'esbuild';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';
import { gzipSync } from 'node:zlib';

/** The budgets of issue 15, in gzipped bytes. */
export const BUDGETS = { minimal: 40 * 1024, training: 70 * 1024 } as const;

/** The same minimal program, three ways: tensors, one matmul, a gradient, WebGPU, one readback. */
export const PROGRAMS: Record<string, { library: string; describe: string; source: string; families?: string[] }> = {
  'flatgrad-minimal': {
    library: 'flatgrad',
    describe: 'init (WebGPU), tensor, matmul, sum, grad, readback',
    source: `import { init, tensor, matmul, sum, grad } from 'flatgrad';
await init({ backend: 'webgpu' });
const x = tensor([[1, 2], [3, 4]], { requiresGrad: true });
const [g] = grad(sum(matmul(x, x)), x);
globalThis.result = Array.from(await g.data());
`,
  },
  'flatgrad-training': {
    library: 'flatgrad',
    describe: 'the minimal program + nn (Sequential MLP, cross-entropy) + optim (SGD, AdamW, the SAM family)',
    // Kernel families it dispatches (loaded on first use): cross-entropy (with the math prelude it
    // calls) and the random inputs.
    families: ['softmax', 'rng'],
    source: `import { init, randn, randint, crossEntropy, tidy } from 'flatgrad';
import { Sequential, Linear, ReLU } from 'flatgrad/nn';
import { SGD, AdamW, SAM, ASAM, MSAM, LookSAM, ESAM, RandomSAM, RWP, GSAM } from 'flatgrad/optim';
await init({ backend: 'webgpu' });
const families = { SAM, ASAM, MSAM, LookSAM, ESAM, RandomSAM, RWP, GSAM };
const bases = { SGD, AdamW };
const model = new Sequential(new Linear(8, 16), new ReLU(), new Linear(16, 4));
const Wrapper = families[globalThis.wrapper ?? 'SAM'];
const opt = new Wrapper(model.parameters(), bases[globalThis.base ?? 'SGD'], { rho: 0.05, lr: 0.1 });
const x = randn([32, 8]).keep();
const y = randint(0, 4, [32]).keep();
let loss;
for (let step = 0; step < 3; step++) {
  loss = tidy(() => opt.step(() => { const l = crossEntropy(model.forward(x), y); l.backward(); return l; }));
}
globalThis.result = await loss.item();
`,
  },
  'jax-js-minimal': {
    library: '@jax-js/jax',
    describe: 'init (WebGPU), array, matmul, sum, grad, readback',
    source: `import { init, defaultDevice, numpy as np, grad } from '@jax-js/jax';
await init('webgpu');
defaultDevice('webgpu');
const g = grad((x) => np.matmul(x.ref, x).sum())(np.array([[1, 2], [3, 4]]));
globalThis.result = Array.from(await g.data());
`,
  },
  'tfjs-minimal': {
    library: '@tensorflow/tfjs-core + @tensorflow/tfjs-backend-webgpu',
    describe: 'setBackend (WebGPU), tensor, matMul, sum, grad, readback',
    source: `import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-webgpu';
await tf.setBackend('webgpu');
const g = tf.grad((x) => tf.matMul(x, x).sum())(tf.tensor2d([[1, 2], [3, 4]]));
globalThis.result = Array.from(await g.data());
`,
  },
};

export interface BundleSize {
  /** Bytes a browser fetches to run the program on WebGPU (see the file comment). */
  loaded: { raw: number; gzip: number; files: number };
  /** The output files counted in `loaded`, relative to the output folder. */
  loadedFiles: string[];
  /** Every file the bundler wrote, including chunks behind dynamic imports never taken on WebGPU. */
  all: { raw: number; gzip: number; files: number };
  /** The largest source modules in the loaded files: [path, minified bytes]. */
  top: [string, number][];
  /** Every source module in the loaded files (paths as esbuild names them). */
  modules: string[];
}

/**
 * Bundles `source` (written to <dir>/<name>.mjs, resolved from <dir>'s node_modules and any
 * `nodePaths`) into <dir>/out-<name>/ and measures it; `families` names the lazily loaded WebGPU
 * kernel families (file names under kernels/webgpu/) that the program dispatches.
 */
export async function bundleSize(dir: string, name: string, source: string, nodePaths: string[] = [], families: readonly string[] = []): Promise<BundleSize> {
  const entry = join(dir, `${name}.mjs`);
  const outdir = join(dir, `out-${name}`);
  mkdirSync(outdir, { recursive: true });
  writeFileSync(entry, source);
  const result = await build({
    entryPoints: [entry],
    outdir,
    bundle: true,
    splitting: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    metafile: true,
    write: false,
    nodePaths,
    // Dawn (Node's WebGPU) and node:* are reached only in Node, behind runtime checks.
    external: ['webgpu', 'node:*'],
    logLevel: 'error',
  });
  const meta: Metafile = result.metafile!;
  const outputs = meta.outputs;
  // The program's own entry (dynamically imported modules are entry points of their chunks too).
  const entryOut = Object.keys(outputs).find((o) => outputs[o].entryPoint === relative(process.cwd(), entry).split(sep).join('/'))!;
  // Kernel families the WebGPU backend imports on first dispatch: the modules that only code
  // inside kernels/webgpu/ imports dynamically. Counted when the program names them.
  const inner = new Set<string>();
  const outer = new Set<string>();
  for (const [file, input] of Object.entries(meta.inputs)) {
    for (const imp of input.imports) if (imp.kind === 'dynamic-import') (/kernels\/webgpu\//.test(file) ? inner : outer).add(imp.path);
  }
  const onDemand = (chunk: string): boolean => {
    const module = outputs[chunk].entryPoint;
    if (!module || !inner.has(module) || outer.has(module)) return false;
    return !families.some((f) => new RegExp(`kernels/webgpu/${f}\\.[jt]s$`).test(module));
  };
  const loaded = new Set<string>();
  const visit = (o: string): void => {
    if (loaded.has(o)) return;
    loaded.add(o);
    for (const imp of outputs[o].imports) {
      if (imp.external || !outputs[imp.path]) continue;
      // A chunk of a dynamically imported module may hold none of its code (moved to a chunk it
      // shares with another): its entry point says what it is.
      const holdsWebGPU = [outputs[imp.path].entryPoint ?? '', ...Object.keys(outputs[imp.path].inputs)].some((i) => /webgpu/i.test(i));
      if (imp.kind === 'import-statement' || (imp.kind === 'dynamic-import' && holdsWebGPU && !onDemand(imp.path))) visit(imp.path);
    }
  };
  visit(entryOut);
  const sizeOf = (files: string[]): { raw: number; gzip: number; files: number } => {
    let raw = 0;
    let gzip = 0;
    for (const f of files) {
      const bytes = result.outputFiles!.find((x) => x.path === resolve(f))!.contents;
      raw += bytes.length;
      gzip += gzipSync(bytes, { level: 9 }).length;
    }
    return { raw, gzip, files: files.length };
  };
  for (const f of result.outputFiles!) writeFileSync(f.path, f.contents);
  const jsOutputs = Object.keys(outputs).filter((o) => o.endsWith('.js'));
  const inLoaded = [...loaded]
    .flatMap((o) => Object.entries(outputs[o].inputs).map(([i, v]) => [i.replace(/^.*node_modules\//, ''), v.bytesInOutput] as [string, number]))
    .sort((a, b) => b[1] - a[1]);
  return {
    loaded: sizeOf([...loaded]),
    loadedFiles: [...loaded].map((o) => relative(outdir, resolve(o)).split(sep).join('/')),
    all: sizeOf(jsOutputs),
    top: inLoaded.slice(0, 12),
    modules: inLoaded.map(([i]) => i),
  };
}
