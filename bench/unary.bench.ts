/**
 * Unary elementwise kernels on wasm, one thread, 1M float32 values in and out: GB/s (8 bytes
 * moved per element) of each op's wasm path now (a SIMD body where module.ts has one), of the
 * per-element JS closure that was the fallback before (CpuBackend.unary, the same closure loop),
 * and the ratio to a SIMD pass that only moves the same bytes (the neg kernel: load, flip the
 * sign bit, store). All are timed round-robin in one process, so machine noise falls on all alike.
 *
 * Run:
 *   npx esbuild bench/unary.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/unary.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/unary.bench.mjs
 */
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { UNARY_OPS, type UnaryOp } from '../src/kernels/optable.js';
import { SIMD_UNARY_F32 } from '../src/kernels/wasm/module.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';

const N = 1 << 20;
const PARAMS: Partial<Record<UnaryOp, [number, number]>> = { elu: [1, 0], leakyRelu: [0.01, 0], powScalar: [2.5, 0], clamp: [-1, 1], affine: [2, 0.5] };
const SKIP: readonly UnaryOp[] = ['isnan', 'isinf', 'isfinite', 'logicalNot']; // bool outputs

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** Median ms per call over `rounds` rounds in which every runner runs about roundMs. */
function interleaved(runners: (() => void)[], rounds = 7, roundMs = 30): number[] {
  runners.forEach((r) => { r(); r(); });
  const times: number[][] = runners.map(() => []);
  for (let k = 0; k < rounds; k++) {
    runners.forEach((run, j) => {
      let calls = 0;
      const t0 = performance.now();
      let t = t0;
      while (t - t0 < roundMs) {
        run();
        calls++;
        t = performance.now();
      }
      times[j].push((t - t0) / calls);
    });
  }
  return times.map(median);
}

const wasm = await createWasmBackend({ threads: 1 });
const cpu = new CpuBackend();
const data = new Float32Array(N);
for (let i = 0; i < N; i++) data[i] = (Math.random() - 0.5) * 8;
const positive = data.map(Math.abs);
const gbs = (ms: number) => (8 * N) / (ms * 1e6);

const wx = wasm.upload(data, 'float32');
const wxPos = wasm.upload(positive, 'float32');
const wout = wasm.alloc(N, 'float32');
const cx = cpu.upload(data, 'float32');
const cxPos = cpu.upload(positive, 'float32');
const cout = cpu.alloc(N, 'float32');

console.log('| op | SIMD body | wasm now GB/s | closure before GB/s | copy GB/s | now / copy | before / copy |');
console.log('|---|---|---|---|---|---|---|');
for (const op of Object.keys(UNARY_OPS) as UnaryOp[]) {
  if (SKIP.includes(op)) continue;
  const [p0, p1] = PARAMS[op] ?? [0, 0];
  const pos = op === 'log' || op === 'sqrt' || op === 'rsqrt' || op === 'powScalar';
  const [now, before, copy] = interleaved([
    () => wasm.unary(op, pos ? wxPos : wx, wout, p0, p1),
    () => cpu.unary(op, pos ? cxPos : cx, cout, p0, p1),
    () => wasm.unary('neg', wx, wout),
  ]);
  const simd = (SIMD_UNARY_F32 as readonly string[]).includes(op) ? 'yes' : 'no';
  const f = (v: number) => v.toFixed(2);
  console.log(`| ${op} | ${simd} | ${f(gbs(now))} | ${f(gbs(before))} | ${f(gbs(copy))} | ${f(copy / now)} | ${f(copy / before)} |`);
}
wasm.dispose();
