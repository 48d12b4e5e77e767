/**
 * Elementwise kernels on wasm, one thread. Unary: 1M float32 values in and out, GB/s (bytes moved:
 * 4 in + 4 out per element, 4 + 1 for the bool-valued ops) of each op's wasm path now, of the
 * per-element JS closure that was the fallback before (CpuBackend.unary, the same closure loop),
 * and each one's bandwidth as a fraction of a SIMD pass that only moves bytes (the neg kernel:
 * load, flip the sign bit, store). Binary: the broadcast shapes of a CNN step (a per-channel bias
 * or BatchNorm scale over [128, 16, 28, 28], an MLP bias over [128, 256]) and a same-shape add,
 * against the same copy bandwidth (bytes moved: each operand read once, the output written). All
 * are timed round-robin in one process, so machine noise falls on all alike, in this process's CPU
 * time (user + system), which unlike wall time leaves out the time other processes of a busy
 * machine hold the core. Inputs are uniform in [-4, 4], their absolute values for the ops whose
 * domain is x >= 0 or x > -1 (log, log1p, sqrt, rsqrt, powScalar).
 *
 * Reading the ratios: 1M floats stay in cache, so the copy is bound by instructions, not memory
 * (its TurboFan loop is about 5 instructions per f32x4). A transcendental body is tens of SIMD
 * instructions per f32x4 (exp 38, tanh 59, erf 189 in the hot loop, counted with
 * node --print-wasm-code), all packed, with no calls, lane extracts or scalar fallbacks, and runs
 * at roughly 2.5-3 instructions per cycle: its ratio to copy is about 5 / (its instruction count),
 * so no transcendental op can reach 0.8 of copy on one core.
 *
 * Run:
 *   npx esbuild bench/unary.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/unary.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/unary.bench.mjs
 */
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { UNARY_OPS, type BinaryOp, type UnaryOp } from '../src/kernels/optable.js';
import { SIMD_UNARY_BOOL_F32, SIMD_UNARY_F32 } from '../src/kernels/wasm/module.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';

const N = 1 << 20;
const PARAMS: Partial<Record<UnaryOp, [number, number]>> = { elu: [1, 0], leakyRelu: [0.01, 0], powScalar: [2.5, 0], clamp: [-1, 1], affine: [2, 0.5] };

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** This process's CPU time in ms. */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Median ms (CPU time) per call over `rounds` rounds in which every runner runs about roundMs. */
function interleaved(runners: (() => void)[], rounds = 7, roundMs = 30): number[] {
  runners.forEach((r) => { r(); r(); });
  const times: number[][] = runners.map(() => []);
  for (let k = 0; k < rounds; k++) {
    runners.forEach((run, j) => {
      let calls = 0;
      const t0 = cpuMs();
      let t = t0;
      while (t - t0 < roundMs) {
        run();
        calls++;
        t = cpuMs();
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
/** GB/s of a call that moves `bytes` in `ms`. */
const gbs = (bytes: number, ms: number) => bytes / (ms * 1e6);

const wx = wasm.upload(data, 'float32');
const wxPos = wasm.upload(positive, 'float32');
const wout = wasm.alloc(N, 'float32');
const woutBool = wasm.alloc(N, 'bool');
const cx = cpu.upload(data, 'float32');
const cxPos = cpu.upload(positive, 'float32');
const cout = cpu.alloc(N, 'float32');
const coutBool = cpu.alloc(N, 'bool');
const f = (v: number) => v.toFixed(2);

console.log('| op | SIMD body | wasm now GB/s | closure before GB/s | copy GB/s | now / copy | before / copy |');
console.log('|---|---|---|---|---|---|---|');
for (const op of Object.keys(UNARY_OPS) as UnaryOp[]) {
  const [p0, p1] = PARAMS[op] ?? [0, 0];
  const pos = op === 'log' || op === 'log1p' || op === 'sqrt' || op === 'rsqrt' || op === 'powScalar';
  const bool = (SIMD_UNARY_BOOL_F32 as readonly string[]).includes(op);
  const [now, before, copy] = interleaved([
    () => wasm.unary(op, pos ? wxPos : wx, bool ? woutBool : wout, p0, p1),
    () => cpu.unary(op, pos ? cxPos : cx, bool ? coutBool : cout, p0, p1),
    () => wasm.unary('neg', wx, wout),
  ]);
  const simd = bool || (SIMD_UNARY_F32 as readonly string[]).includes(op) ? 'yes' : 'no';
  const bytes = (bool ? 5 : 8) * N;
  const copyGbs = gbs(8 * N, copy);
  console.log(`| ${op} | ${simd} | ${f(gbs(bytes, now))} | ${f(gbs(bytes, before))} | ${f(copyGbs)} | ${f(gbs(bytes, now) / copyGbs)} | ${f(gbs(bytes, before) / copyGbs)} |`);
}

// Binary ops over broadcast shapes: [shape of a] op [shape of b], contiguous strides, 0 where b broadcasts.
const contiguous = (shape: number[]) => shape.map((_, i) => shape.slice(i + 1).reduce((p, q) => p * q, 1));
const broadcastStrides = (shape: number[], of: number[]) => contiguous(of).map((s, i) => (of[i] === 1 && shape[i] !== 1 ? 0 : s));
const BINARY: [BinaryOp, number[], number[]][] = [
  ['add', [128, 16, 28, 28], [1, 16, 1, 1]],
  ['mul', [128, 16, 28, 28], [1, 16, 1, 1]],
  ['sub', [128, 16, 28, 28], [1, 16, 1, 1]],
  ['add', [128, 16, 28, 28], [128, 16, 28, 28]],
  ['add', [128, 256], [1, 256]],
];
console.log('');
console.log('| binary op | a | b | wasm GB/s | copy GB/s | wasm / copy |');
console.log('|---|---|---|---|---|---|');
for (const [op, aShape, bShape] of BINARY) {
  const n = aShape.reduce((p, q) => p * q, 1);
  const nb = bShape.reduce((p, q) => p * q, 1);
  const a = wasm.upload(Float32Array.from({ length: n }, () => Math.random()), 'float32');
  const b = wasm.upload(Float32Array.from({ length: nb }, () => Math.random() + 0.5), 'float32');
  const out = wasm.alloc(n, 'float32');
  const copyOut = wasm.alloc(n, 'float32');
  const layout = { shape: aShape, aStrides: contiguous(aShape), bStrides: broadcastStrides(aShape, bShape) };
  const [t, copy] = interleaved([() => wasm.binary(op, a, b, out, layout), () => wasm.unary('neg', a, copyOut)]);
  const bytes = 4 * (2 * n + nb);
  const copyGbs = gbs(8 * n, copy);
  console.log(`| ${op} | [${aShape.join(', ')}] | [${bShape.join(', ')}] | ${f(gbs(bytes, t))} | ${f(copyGbs)} | ${f(gbs(bytes, t) / copyGbs)} |`);
  [a, b, out, copyOut].forEach((s) => wasm.release(s));
}
wasm.dispose();
