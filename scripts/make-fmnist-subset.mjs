// Writes data/fashion-mnist-subset/, the class-balanced Fashion-MNIST subset shipped in the
// repository: the first 600 training and the first 100 test images of each class, in file order.
// Usage: node scripts/make-fmnist-subset.mjs [source dir, default /usr/share/datasets/fashion-mnist]
import { build } from 'esbuild';
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const PER_CLASS = { train: 600, test: 100 };
const root = new URL('../', import.meta.url);
const outDir = fileURLToPath(new URL('data/fashion-mnist-subset/', root));

// The reader is TypeScript: bundle it in memory so that this script uses the library's own code.
const bundle = await build({
  entryPoints: [fileURLToPath(new URL('src/data/index.ts', root))],
  bundle: true,
  platform: 'node',
  format: 'esm',
  write: false,
  logLevel: 'error',
});
const data = await import(`data:text/javascript;base64,${Buffer.from(bundle.outputFiles[0].contents).toString('base64')}`);

const sourceDir = process.argv[2] ?? data.DEFAULT_FASHION_MNIST_DIR;
await mkdir(outDir, { recursive: true });
for (const split of ['train', 'test']) {
  const set = await data.loadFashionMnist({ dir: sourceDir, split });
  const keep = data.selectClassBalanced(set.labels, PER_CLASS[split], set.classes.length);
  const images = data.gatherRows(set.images, set.rows * set.cols, keep);
  const labels = data.gatherRows(set.labels, 1, keep);
  const files = data.fashionMnistFiles(split);
  const write = (name, array) => writeFile(`${outDir}${name}`, gzipSync(data.encodeIdx(array), { level: 9 }));
  await write(files.images, { dtype: 'uint8', shape: [keep.length, set.rows, set.cols], data: images });
  await write(files.labels, { dtype: 'uint8', shape: [keep.length], data: labels });
  console.log(`${split}: ${keep.length} of ${set.n} images -> ${outDir}${files.images}, ${files.labels}`);
}
