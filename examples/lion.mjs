// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2), written
// once with flatgrad's arena-kernel API. The one definition runs fused over the flat parameter
// arena on cpu (generated TypeScript), wasm (f32x4 SIMD) and WebGPU (WGSL), and per tensor.
//
//   c = beta1 m + (1 - beta1) g          (the interpolation that only the sign of is used)
//   p = p (1 - lr wd) - lr sign(c)       (decoupled weight decay, then the sign step)
//   m = beta2 m + (1 - beta2) g          (the momentum is tracked with beta2)
//
// The module's default export takes the API (so that `flatgrad bench --optimizer examples/lion.mjs`
// and the tests can load it against any build); run it directly to train a toy problem:
//   npm run build && node examples/lion.mjs

/** @param {{ defineOptimizer: typeof import('../dist/index.js').arena.defineOptimizer, FLAG_DECAY: number }} api */
export default function defineLion({ defineOptimizer, FLAG_DECAY }) {
  return defineOptimizer({
    name: 'lion',
    vectors: { p: 'readwrite', g: 'read', exp_avg: 'readwrite' },
    hyper: { lr: 1e-4, beta1: 0.9, beta2: 0.99, weight_decay: 0 },
    body: ({ p, g, exp_avg }, h, _slots, k) => {
      // Uniform expressions (hyper-parameters, flags) are per-parameter coefficients, computed once.
      const wd = k.where(k.flag(FLAG_DECAY), h.weight_decay, 0);
      const c = k.add(k.mul(exp_avg, h.beta1), k.mul(g, k.sub(1, h.beta1)));
      const decayed = k.mul(p, k.sub(1, k.mul(h.lr, wd)));
      return {
        p: k.add(decayed, k.mul(k.sign(c), k.neg(h.lr))),
        exp_avg: k.add(k.mul(exp_avg, h.beta2), k.mul(g, k.sub(1, h.beta2))),
      };
    },
  });
}

// Run directly: fit y = 3x - 1 with Lion on the chosen backend.
if (import.meta.url === new URL(process.argv[1] ?? '', 'file://').href) {
  const fg = await import('../dist/index.js');
  await fg.init({ backend: process.env.FLATGRAD_BACKEND ?? 'cpu' });
  const Lion = defineLion(fg.arena);
  const w = fg.zeros([1, 1], { requiresGrad: true });
  const b = fg.zeros([1], { requiresGrad: true });
  const opt = Lion.create([w, b], { lr: 0.05, weight_decay: 0 });
  const x = fg.tensor(Float32Array.from({ length: 64 }, (_, i) => i / 32 - 1), { shape: [64, 1] });
  const y = x.mul(3).sub(1);
  for (let step = 0; step <= 300; step++) {
    const loss = fg.tidy(() => {
      const l = fg.linear(x, w, b).sub(y).square().mean();
      l.backward();
      return l.keep();
    });
    opt.step();
    opt.zeroGrad();
    if (step % 100 === 0) console.log(`step ${step}: loss ${(await loss.item()).toFixed(5)}`);
    loss.dispose();
  }
  console.log(`w = ${(await w.item()).toFixed(3)}, b = ${(await b.item()).toFixed(3)} (target 3, -1)`);
}
