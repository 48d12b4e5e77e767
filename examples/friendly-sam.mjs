// Friendly-SAM (Li, Zhou, Huang, Yang, "Friendly Sharpness-Aware Minimization", CVPR 2024), a
// member of the SAM family that flatgrad does not ship, written once with the arena-kernel API.
// SAM ascends along the minibatch gradient g, most of which is the full gradient shared by every
// batch; F-SAM removes that part, estimated by an EMA m of the gradients, and ascends along the
// batch-specific rest (Algorithm 1, m_0 = 0):
//
//   m = lambda m + (1 - lambda) g      d = g - sigma m      e = rho d / (||d|| + 1e-12)
//
// One arena kernel computes m and d in one pass; defineSamVariant does the rest as SAM does (the
// closure at w and at w + e, BatchNorm statistics frozen, the exact restore fused with the base
// optimizer's update, a step with a NaN or Inf gradient skipped and counted). It runs fused and per
// tensor (fused: false) on cpu, wasm and WebGPU.
//
// The default export takes the flatgrad module (so the tests and `flatgrad bench` can load it
// against any build) and returns the optimizer class:
//   const FriendlySAM = defineFriendlySAM(fg);
//   const opt = new FriendlySAM(model.parameters(), fg.optim.SGD, { rho: 0.05, sigma: 1, lmbda: 0.9, lr: 0.1, momentum: 0.9 });
//   opt.step(() => { const l = lossFn(model.forward(x), y); l.backward(); return l; });
// Run directly to train a toy problem:  npm run build && node examples/friendly-sam.mjs

/** @param {{ arena: typeof import('../dist/index.js').arena, optim: typeof import('../dist/index.js').optim }} fg */
export default function defineFriendlySAM({ arena, optim }) {
  const direction = arena.defineArenaKernel({
    name: 'friendly-sam-direction',
    vectors: { g: 'read', fsam_m: 'readwrite', fsam_d: 'write' },
    hyper: { sigma: 1, lmbda: 0.9 },
    slots: { flag: arena.S_FLAG },
    // S_FLAG holds "the gradient has a NaN or Inf": the EMA must not take it in (the step is skipped).
    guard: (_h, s, k) => k.eq(s.flag, 0),
    body: ({ g, fsam_m }, h, _s, k) => {
      const m = k.add(k.mul(h.lmbda, fsam_m), k.mul(k.sub(1, h.lmbda), g));
      return { fsam_m: m, fsam_d: k.sub(g, k.mul(h.sigma, m)) };
    },
  });
  return optim.defineSamVariant({
    name: 'FriendlySAM',
    hyper: { rho: 0.05, sigma: 1, lmbda: 0.9 },
    ascent: [direction],
    direction: 'fsam_d',
  });
}

// Run directly: fit y = 3x - 1 with Friendly-SAM over SGD on the chosen backend.
if (import.meta.url === new URL(process.argv[1] ?? '', 'file://').href) {
  const fg = await import('../dist/index.js');
  await fg.init({ backend: process.env.FLATGRAD_BACKEND ?? 'cpu' });
  const FriendlySAM = defineFriendlySAM(fg);
  const w = fg.zeros([1, 1], { requiresGrad: true });
  const b = fg.zeros([1], { requiresGrad: true });
  const opt = new FriendlySAM([w, b], fg.optim.SGD, { rho: 0.05, lr: 0.1, momentum: 0.9 });
  const x = fg.tensor(Float32Array.from({ length: 64 }, (_, i) => i / 32 - 1), { shape: [64, 1] });
  const y = x.mul(3).sub(1);
  for (let step = 0; step <= 200; step++) {
    const loss = opt.step(() =>
      fg.tidy(() => {
        const l = fg.linear(x, w, b).sub(y).square().mean();
        l.backward();
        return l.keep();
      }),
    );
    if (step % 50 === 0) console.log(`step ${step}: loss ${(await loss.item()).toFixed(5)}`);
    loss.dispose();
  }
  console.log(`w = ${(await w.item()).toFixed(3)}, b = ${(await b.item()).toFixed(3)} (target 3, -1)`);
}
