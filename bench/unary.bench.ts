/**
 * Elementwise kernels on wasm, one thread, against a SIMD pass that only moves bytes (the neg
 * kernel: load, flip the sign bit, store), timed round-robin in one process (machine noise falls
 * on all alike) in this process's CPU time (user + system, which unlike wall time leaves out the
 * time other processes of a busy machine hold the core). GB/s counts bytes moved: 4 in + 4 out
 * per element, 4 + 1 for the bool-valued ops; each op's ratio to copy is the ratio of those.
 *
 * Two sizes: 2^20 floats (4 MiB in, 4 out), which stay in the caches, so that copy is bound by
 * its instructions (9.5 per f32x4) and every op by its own; and 2^24 floats (64 MiB each way),
 * past the last-level cache, where copy runs at memory speed and an op that needs fewer cycles
 * per vector than memory gives keeps pace with it. The compute bound of each op is its loop's
 * x64 instruction count per f32x4 as V8's optimizing compiler emits it (counted from
 * node --print-wasm-code in a child process, along each path from the loop head back to it: a
 * body with a per-vector fast path shows fast / full); the in-cache ratio to copy is roughly
 * copy's count over the op's, so no transcendental (43 instructions and up: wasm SIMD has no
 * fused multiply-add, and a float32 exp is a range reduction and a degree-6 polynomial) reaches
 * 0.8 of copy on one core, in cache or at memory speed. bench/results/unary.md reads the table.
 *
 * Inputs are uniform in [-4, 4], their absolute values for the ops whose domain is x >= 0 or
 * x > -1 (log, log1p, sqrt, rsqrt, powScalar).
 *
 * Then every binary op of the op table (its SIMD row kernel; int32 pow alone runs the reference
 * closure) over the broadcast patterns models use (same shape; a row bias
 * [R, C] + [1, C] for C = 10, 256, 784; a per-channel bias over NCHW; a per-row scale [R, 256] +
 * [R, 1]; a scalar), each at about 2^18 floats (1 MiB per operand) and 2^24, against copy over
 * the same n elements in the same rounds. GB/s counts a + b + out (1 byte per bool output).
 *
 * Run:
 *   npx esbuild bench/unary.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/unary.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/unary.bench.mjs   # add --count for the instruction counts alone
 *   (--binary: the binary tables alone; --ops=add,eq: only those binary ops; --closure: pow also
 *   through the CPU backend's closure loop, what the wasm backend ran before pow had a SIMD
 *   kernel, interleaved in the same rounds: the row "pow (closure)")
 */
import { execFileSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { BINARY_OPS, UNARY_OPS, type BinaryOp, type UnaryOp } from '../src/kernels/optable.js';
import { ModuleBuilder } from '../src/kernels/wasm/emit.js';
import { emitUnary, emitUnaryF32, SIMD_UNARY_BOOL_F32, SIMD_UNARY_F32, UNARY_BOOL_F32_BODIES } from '../src/kernels/wasm/module.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';

const SIZES = [1 << 20, 1 << 24];
const PARAMS: Partial<Record<UnaryOp, [number, number]>> = { elu: [1, 0], leakyRelu: [0.01, 0], powScalar: [2.5, 0], clamp: [-1, 1], affine: [2, 0.5] };
const isBool = (op: string) => (SIMD_UNARY_BOOL_F32 as readonly string[]).includes(op);
const isSimd = (op: string) => isBool(op) || (SIMD_UNARY_F32 as readonly string[]).includes(op);

/**
 * Child mode (`--disasm op`, run under --print-wasm-code): compiles a module holding only op's
 * float32 kernel with the optimizing compiler and calls it, so that V8 prints its code.
 */
const disasmAt = process.argv.indexOf('--disasm');
if (disasmAt >= 0) {
  const op = process.argv[disasmAt + 1];
  const mb = new ModuleBuilder();
  mb.importMemory('env', 'memory', { initial: 1 });
  if (isBool(op)) emitUnary(mb, 'k', UNARY_BOOL_F32_BODIES[op as keyof typeof UNARY_BOOL_F32_BODIES], { outBool: true });
  else emitUnaryF32(mb, op as (typeof SIMD_UNARY_F32)[number], 'k');
  const instance = new WebAssembly.Instance(new WebAssembly.Module(new Uint8Array(mb.toBytes())), { env: { memory: new WebAssembly.Memory({ initial: 1 }) } });
  (instance.exports.k as (...a: number[]) => void)(256, 1024, 64, 1, 0);
  process.exit(0);
}

/**
 * x64 instructions per f32x4 of op's main loop: the lengths of the paths from the loop head (the
 * target of the first backward jump) back to it, each branch that leaves the loop's span not
 * followed, over the output vectors each path stores; "min / max" where a body branches per vector.
 */
function instructionsPerVector(op: UnaryOp): string {
  let text: string;
  try {
    text = execFileSync(process.execPath, ['--print-wasm-code', '--no-liftoff', '--no-wasm-lazy-compilation', process.argv[1], '--disasm', op], { encoding: 'utf8', maxBuffer: 1 << 26 });
  } catch {
    return '?';
  }
  const code: { at: number; jump?: number; conditional: boolean; store: boolean }[] = [];
  for (const line of text.split('\n')) {
    const m = /^0x[0-9a-f]+\s+([0-9a-f]+)\s+[0-9a-f]+\s+(\S+)(.*)$/.exec(line);
    if (!m) continue;
    const target = /<\+0x([0-9a-f]+)>/.exec(m[3]);
    const isJump = m[2].startsWith('j') && target !== null;
    // A 16-byte store to the heap (not a spill to the stack frame): one output vector.
    const store = /^vmov(dqu|ups|aps|dqa)$/.test(m[2]) && /^\s*\[(?!rbp|rsp)/.test(m[3]);
    code.push({ at: parseInt(m[1], 16), jump: isJump ? parseInt(target![1], 16) : undefined, conditional: isJump && m[2] !== 'jmp', store });
  }
  const index = new Map(code.map((c, k) => [c.at, k]));
  const back = code.find((c) => c.jump !== undefined && c.jump < c.at);
  if (!back) return '?';
  const head = index.get(back.jump!)!;
  const last = Math.max(...code.filter((c) => c.jump === back.jump).map((c) => index.get(c.at)!));
  // Instructions per output vector along each path (V8 unrolls small loops: a path may store
  // several vectors; a bool store is four f32x4 of input).
  const perVector: number[] = [];
  const walk = (k: number, n: number, stores: number, depth: number): void => {
    if (depth > 16 || perVector.length > 64) return;
    for (; k <= last; k++, n++) {
      const c = code[k];
      if (c.store) stores++;
      if (c.jump === undefined) continue;
      const t = index.get(c.jump);
      if (c.jump === back.jump) {
        if (stores) perVector.push((n + 1) / (stores * (isBool(op) ? 4 : 1)));
        if (!c.conditional) return;
      } else if (t !== undefined && t > head && t <= last) {
        if (!c.conditional) return walk(t, n + 1, stores, depth + 1);
        walk(t, n + 1, stores, depth + 1);
      } else if (!c.conditional) return;
    }
  };
  walk(head, 0, 0, 0);
  if (!perVector.length) return '?';
  const [lo, hi] = [Math.min(...perVector), Math.max(...perVector)].map((v) => Math.round(v * 10) / 10);
  return lo === hi ? `${lo}` : `${lo} / ${hi}`;
}

// `--count`: only the instruction counts (seconds, no timing).
if (process.argv.includes('--count')) {
  for (const op of Object.keys(UNARY_OPS) as UnaryOp[]) if (isSimd(op)) console.log(`${op}: ${instructionsPerVector(op)}`);
  process.exit(0);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** This process's CPU time in ms. */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/**
 * Median ms (CPU time) per call over `rounds` rounds in which every runner runs at least roundMs,
 * after 300 ms of calls not counted: a case's first half second measured up to 1.25x slower than
 * the same case run again after it (add over [26214, 10] + [1, 10], 0.16 against 0.13 ns per
 * element), even as the median of 15 rounds.
 */
function interleaved(runners: (() => void)[], rounds = 7, roundMs = 30): number[] {
  for (const t0 = cpuMs(); cpuMs() - t0 < 300; ) runners.forEach((r) => r());
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
/** GB/s of a call that moves `bytes` in `ms`. */
const gbs = (bytes: number, ms: number) => bytes / (ms * 1e6);
const f = (v: number) => v.toFixed(2);

console.log(`_Printed by bench/unary.bench.ts on ${new Date().toISOString()} (load average before: ${loadavg().map((l) => l.toFixed(2)).join(' ')})._`);
console.log('');
// `--binary`: the binary tables alone (and `--ops=add,mul` only those ops).
const binaryOnly = process.argv.includes('--binary');
// Per size: [op] -> [op GB/s, copy GB/s].
const results = (binaryOnly ? [] : SIZES).map((n) => {
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = (Math.random() - 0.5) * 8;
  const x = wasm.upload(data, 'float32');
  const xPos = wasm.upload(data.map(Math.abs), 'float32');
  const out = wasm.alloc(n, 'float32');
  const outBool = wasm.alloc(n, 'bool');
  const copyOut = wasm.alloc(n, 'float32');
  const byOp = new Map<UnaryOp, [number, number]>();
  // At 2^24 a call takes tens of ms: fewer, longer rounds.
  const [rounds, roundMs] = n > 1 << 20 ? [5, 120] : [7, 30];
  for (const op of Object.keys(UNARY_OPS) as UnaryOp[]) {
    const [p0, p1] = PARAMS[op] ?? [0, 0];
    const pos = op === 'log' || op === 'log1p' || op === 'sqrt' || op === 'rsqrt' || op === 'powScalar';
    const bool = isBool(op);
    const [t, copy] = interleaved([() => wasm.unary(op, pos ? xPos : x, bool ? outBool : out, p0, p1), () => wasm.unary('neg', x, copyOut)], rounds, roundMs);
    byOp.set(op, [gbs((bool ? 5 : 8) * n, t), gbs(8 * n, copy)]);
  }
  [x, xPos, out, outBool, copyOut].forEach((s) => wasm.release(s));
  return byOp;
});

if (!binaryOnly) console.log('| op | SIMD body | x64 instr. / f32x4 | 2^20 GB/s | copy GB/s | / copy | 2^24 GB/s | copy GB/s | / copy |');
if (!binaryOnly) console.log('|---|---|---|---|---|---|---|---|---|');
for (const op of binaryOnly ? [] : (Object.keys(UNARY_OPS) as UnaryOp[])) {
  const [[c, cc], [m, mc]] = results.map((r) => r.get(op)!);
  const instr = isSimd(op) ? instructionsPerVector(op) : '-';
  console.log(`| ${op} | ${isSimd(op) ? 'yes' : 'no'} | ${instr} | ${f(c)} | ${f(cc)} | ${f(c / cc)} | ${f(m)} | ${f(mc)} | ${f(m / mc)} |`);
}

// Binary ops: every one of the op table (a SIMD kernel or the reference closure: the wasm backend
// picks) over the broadcast patterns models use, each pattern at about 2^18 floats (1 MiB per
// operand: the caches) and 2^24 (memory speed), interleaved with copy over the same n elements.
// Bytes moved: a + b + out (4 per float, 1 per bool), against copy's 8 per element.
const contiguous = (shape: number[]) => shape.map((_, i) => shape.slice(i + 1).reduce((p, q) => p * q, 1));
const broadcastStrides = (shape: number[], of: number[]) => contiguous(of).map((s, i) => (of[i] === 1 && shape[i] !== 1 ? 0 : s));
const BINARY_PATTERNS: { name: string; shapes: (n: number) => [number[], number[]] }[] = [
  { name: 'same shape', shapes: (n) => [[n], [n]] },
  ...[10, 256, 784].map((c) => ({ name: `[R, ${c}] + [1, ${c}]`, shapes: (n: number): [number[], number[]] => [[Math.round(n / c), c], [1, c]] })),
  { name: '[N, 16, 28, 28] + [1, 16, 1, 1]', shapes: (n) => [[Math.max(1, Math.round(n / 12544)), 16, 28, 28], [1, 16, 1, 1]] },
  { name: '[R, 256] + [R, 1]', shapes: (n) => [[Math.round(n / 256), 256], [Math.round(n / 256), 1]] },
  { name: '[n] + [1]', shapes: (n) => [[n], [1]] },
];
const BINARY_SIZES = [1 << 18, 1 << 24];
const onlyOps = process.argv.find((a) => a.startsWith('--ops='))?.slice(6).split(',');
const binaryOps = (Object.keys(BINARY_OPS) as BinaryOp[]).filter((op) => !onlyOps || onlyOps.includes(op));
const withClosure = process.argv.includes('--closure') && binaryOps.includes('pow');
const cpu = new CpuBackend();
/** [size][pattern] -> [closure pow GB/s, copy GB/s] (--closure). */
const closurePow: [number, number][][] = BINARY_SIZES.map(() => []);
// [size][pattern][op] -> [op GB/s, copy GB/s]
const binary = BINARY_SIZES.map((size, s) =>
  BINARY_PATTERNS.map(({ shapes }) => {
    const [aShape, bShape] = shapes(size);
    const n = aShape.reduce((p, q) => p * q, 1);
    const nb = bShape.reduce((p, q) => p * q, 1);
    const a = wasm.upload(Float32Array.from({ length: n }, () => Math.random() * 4 - 2), 'float32');
    // Positive and away from 0 (div, pow), with exact zeros now and then (the logical ops).
    const bData = Float32Array.from({ length: nb }, () => (Math.random() < 0.1 ? 0 : Math.random() + 0.5));
    const aPosData = Float32Array.from({ length: n }, () => Math.random() * 4);
    const b = wasm.upload(bData, 'float32');
    const aPos = wasm.upload(aPosData, 'float32');
    const out = wasm.alloc(n, 'float32');
    const outBool = wasm.alloc(n, 'bool');
    const copyOut = wasm.alloc(n, 'float32');
    const layout = { shape: aShape, aStrides: contiguous(aShape), bStrides: broadcastStrides(aShape, bShape) };
    const [rounds, roundMs] = size > 1 << 20 ? [5, 120] : [7, 30];
    const byOp = new Map<BinaryOp, [number, number]>();
    for (const op of binaryOps) {
      const bool = 'compare' in BINARY_OPS[op];
      const runners = [() => wasm.binary(op, op === 'pow' ? aPos : a, b, bool ? outBool : out, layout), () => wasm.unary('neg', a, copyOut)];
      const closure = withClosure && op === 'pow' ? [cpu.upload(aPosData, 'float32'), cpu.upload(bData, 'float32'), cpu.alloc(n, 'float32')] : null;
      if (closure) runners.push(() => cpu.binary('pow', closure[0], closure[1], closure[2], layout));
      const [t, copy, tClosure] = interleaved(runners, rounds, roundMs);
      byOp.set(op, [gbs(4 * (n + nb) + (bool ? 1 : 4) * n, t), gbs(8 * n, copy)]);
      if (closure) closurePow[s].push([gbs(4 * (n + nb) + 4 * n, tClosure), gbs(8 * n, copy)]);
      closure?.forEach((st) => cpu.release(st));
    }
    [a, b, aPos, out, outBool, copyOut].forEach((s) => wasm.release(s));
    return byOp;
  }),
);
for (const [s, size] of BINARY_SIZES.entries()) {
  console.log('');
  console.log(`Binary ops at about 2^${Math.log2(size)} floats: op GB/s (op / copy over the same n)`);
  console.log('');
  console.log(`| op | ${BINARY_PATTERNS.map((p) => p.name).join(' | ')} |`);
  console.log(`|---|${BINARY_PATTERNS.map(() => '---').join('|')}|`);
  for (const op of binaryOps) console.log(`| ${op} | ${binary[s].map((byOp) => { const [g, c] = byOp.get(op)!; return `${f(g)} (${f(g / c)})`; }).join(' | ')} |`);
  if (withClosure) console.log(`| pow (closure) | ${closurePow[s].map(([g, c]) => `${f(g)} (${f(g / c)})`).join(' | ')} |`);
  console.log(`| copy | ${binary[s].map((byOp) => f(median(binaryOps.map((op) => byOp.get(op)![1])))).join(' | ')} |`);
}
wasm.dispose();
