/**
 * Convolutions whose windows tile the input (stride == kernel, no padding: patch embeddings) on
 * the wasm backend, one thread: the patch form (src/kernels/wasm/conv-patch.ts, gemms over the
 * patch matrix) against conv.ts's kernels (WasmBackend.patchConvs 'off'; 'on' forces the patch form), interleaved call by
 * call in one process, process CPU time, median of rounds; and a square matmul's GFLOP/s (the
 * issue's yardstick: conv forward and both gradients >= 70% of it).
 *
 *   npx esbuild bench/conv-patch.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/conv-patch.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/conv-patch.mjs [--rounds=7]
 *
 * Prints a markdown table: per shape and kernel, ms per call of each form, old / patch, and the
 * patch form's GFLOP/s as a fraction of the matmul's.
 */
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import type { Conv2dLayout, Storage } from '../src/kernels/backend.js';


const rounds = Number(process.argv.find((a) => a.startsWith('--rounds='))?.split('=')[1] ?? 7);
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** [name, n, c, h, w, outChannels, k] */
const SHAPES: [string, number, number, number, number, number, number][] = [
  ['ViT b32: 1->32, 28x28, k7', 32, 1, 28, 28, 32, 7],
  ['1->32, 28x28, k4', 32, 1, 28, 28, 32, 4],
  ['1->32, 28x28, k2', 32, 1, 28, 28, 32, 2],
  ['3->64, 32x32, k4', 16, 3, 32, 32, 64, 4],
  ['3->96, 64x64, k16', 8, 3, 64, 64, 96, 16],
  ['8->16, 28x28, k2', 16, 8, 28, 28, 16, 2],
  ['8->32, 28x28, k7', 16, 8, 28, 28, 32, 7],
  ['3->48, 32x32, k2', 8, 3, 32, 32, 48, 2],
  ['1->32, 27x27, k3', 32, 1, 27, 27, 32, 3],
  ['3->32, 30x30, k3', 16, 3, 30, 30, 32, 3],
];

const be = await createWasmBackend({ threads: 1 });
const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);

/** ms per call of f, given as many repeats as fit in ~20 ms. */
function timer(f: () => void): () => number {
  const t0 = performance.now();
  let reps = 0;
  while (performance.now() - t0 < 20) {
    f();
    reps++;
  }
  return () => {
    const c0 = cpuMs();
    for (let r = 0; r < reps; r++) f();
    return (cpuMs() - c0) / reps;
  };
}

// The square matmul's rate.
const S = 256;
const [ma, mb, mc] = [be.upload(rand(S * S), 'float32'), be.upload(rand(S * S), 'float32'), be.alloc(S * S, 'float32')];
const mm = timer(() => be.matmul(ma, mb, mc, { batch: 1, m: S, n: S, k: S, transA: false, transB: false, aBatchStride: 0, bBatchStride: 0 }));
const mmMs = median(Array.from({ length: rounds }, () => mm()));
const mmRate = (2 * S ** 3) / mmMs / 1e6;
console.log(`matmul ${S}^3: ${mmRate.toFixed(1)} GFLOP/s (one thread)\n`);
console.log('| shape | kernel | conv.ts ms | patch ms | conv.ts / patch | patch GFLOP/s | % of matmul |');
console.log('|---|---|---|---|---|---|---|');

for (const [name, n, c, h, w, o, k] of SHAPES) {
  const l: Conv2dLayout = { n, c, h, w, kh: k, kw: k, oh: h / k, ow: w / k, sh: k, sw: k, ph: 0, pw: 0, dh: 1, dw: 1, outChannels: o, groups: 1 };
  const x = be.upload(rand(n * c * h * w), 'float32');
  const wt = be.upload(rand(o * c * k * k), 'float32');
  const y = be.upload(rand(n * o * l.oh * l.ow), 'float32');
  const dx = be.alloc(n * c * h * w, 'float32');
  const dw = be.alloc(o * c * k * k, 'float32');
  const flops = 2 * n * o * l.oh * l.ow * c * k * k;
  const kernels: [string, () => void][] = [
    ['forward', () => be.conv2d(x, wt, y, l)],
    ['input grad', () => be.conv2dBackwardInput(y, wt, dx, l)],
    ['weight grad', () => be.conv2dBackwardWeight(x, y, dw, l)],
  ];
  for (const [kname, f] of kernels) {
    const form = (patch: 'on' | 'off') => {
      be.patchConvs = patch;
      const t = timer(f);
      return () => {
        be.patchConvs = patch;
        return t();
      };
    };
    const [old, patch] = [form('off'), form('on')];
    const ratios: number[] = [];
    const [olds, patches]: number[][] = [[], []];
    for (let r = 0; r < rounds; r++) {
      // Alternating which form runs first.
      let o1 = 0;
      let p1 = 0;
      if (r % 2) {
        p1 = patch();
        o1 = old();
      } else {
        o1 = old();
        p1 = patch();
      }
      olds.push(o1);
      patches.push(p1);
      ratios.push(o1 / p1);
    }
    const p = median(patches);
    const rate = flops / p / 1e6;
    console.log(`| ${name} | ${kname} | ${median(olds).toFixed(3)} | ${p.toFixed(3)} | ${median(ratios).toFixed(2)} | ${rate.toFixed(1)} | ${((100 * rate) / mmRate).toFixed(0)}% |`);
  }
  for (const s of [x, wt, y, dx, dw] as Storage[]) be.release(s);
}
be.patchConvs = 'auto';
be.dispose();
