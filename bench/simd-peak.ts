/**
 * The core's f32x4 mul+add throughput, the ceiling that the wasm benches report their GFLOP/s
 * against (wasm.bench.ts per kernel, steps.bench.ts per step as a FLOP floor). One place, so that
 * every bench divides by the same measured peak.
 */
import { f32x4, ModuleBuilder, ValType, type Expr } from '../src/kernels/wasm/emit.js';

/**
 * GFLOP/s of one core: `chains` independent accumulators, acc += x * y, which is the matmul
 * micro-kernel's instruction mix without its loads. y changes each round so that nothing is
 * loop-invariant. The best of 25 rounds of about 20 ms: a peak is what the core does when nothing
 * else runs on it.
 */
export async function measureSimdPeak(): Promise<number> {
  const chains = 12;
  const mb = new ModuleBuilder();
  mb.importMemory('env', 'memory', { initial: 1 });
  mb.func('peak', [ValType.i32], [ValType.f32], (f, iters) => {
    const acc = f.localsOf(ValType.v128, chains);
    const xs = f.localsOf(ValType.v128, 3);
    const y = f.local(ValType.v128);
    const i = f.local(ValType.i32);
    f.set(y, f32x4.splat(1e-7));
    xs.forEach((x, j) => f.set(x, f32x4.splat(1 + j)));
    acc.forEach((a, j) => f.set(a, f32x4.splat(j)));
    f.for(i, 0, iters, 1, () => {
      for (let j = 0; j < chains; j++) f.set(acc[j], f32x4.add(acc[j], f32x4.mul(xs[j % 3], y)));
      f.set(y, f32x4.add(y, y));
    });
    f.push(f32x4.extractLane(acc.slice(1).reduce<Expr | (typeof acc)[number]>((s, a) => f32x4.add(s, a), acc[0]), 0));
  });
  const memory = new WebAssembly.Memory({ initial: 1 });
  const instance = await WebAssembly.instantiate(await WebAssembly.compile(mb.toBytes() as Uint8Array<ArrayBuffer>), { env: { memory } });
  const peak = instance.exports.peak as (n: number) => number;
  const iters = 1_000_000;
  for (let i = 0; i < 5; i++) peak(iters);
  const t0 = performance.now();
  peak(iters);
  const calls = Math.max(1, Math.round(20 / Math.max(performance.now() - t0, 1e-3)));
  let best = Infinity;
  for (let r = 0; r < 25; r++) {
    const s = performance.now();
    for (let j = 0; j < calls; j++) peak(iters);
    best = Math.min(best, (performance.now() - s) / calls);
  }
  // 8 flops per accumulator per round (4 lanes x mul and add); the y update is not counted.
  return (iters * chains * 8) / best / 1e6;
}
