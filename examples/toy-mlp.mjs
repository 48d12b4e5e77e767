// Trains a small MLP on a toy two-spirals problem with the CPU backend and prints its loss.
// Run: npm run example (after npm run build).
import * as fg from '../dist/index.js';

await fg.init({ backend: process.env.FLATGRAD_BACKEND ?? 'cpu' });
fg.manualSeed(0);

// Two interleaved spirals, 200 points each.
const n = 200;
const xs = new Float32Array(2 * n * 2);
const ys = new Int32Array(2 * n);
for (let c = 0; c < 2; c++)
  for (let i = 0; i < n; i++) {
    const r = (i / n) * 4;
    const a = (i / n) * 3 * Math.PI + c * Math.PI;
    xs.set([r * Math.cos(a) / 4, r * Math.sin(a) / 4], (c * n + i) * 2);
    ys[c * n + i] = c;
  }
const x = fg.tensor(xs, { shape: [2 * n, 2] });
const y = fg.tensor(ys);

const init = (shape, fanIn) => fg.randn(shape).mul(Math.sqrt(2 / fanIn)).detach().requiresGrad_();
const params = [init([64, 2], 2), fg.zeros([64], { requiresGrad: true }), init([64, 64], 64), fg.zeros([64], { requiresGrad: true }), init([2, 64], 64), fg.zeros([2], { requiresGrad: true })];
const model = (inp) => fg.linear(fg.linear(fg.linear(inp, params[0], params[1]).tanh(), params[2], params[3]).tanh(), params[4], params[5]);

const lr = 0.5;
for (let step = 0; step <= 1000; step++) {
  const loss = fg.tidy(() => {
    const l = fg.crossEntropy(model(x), y);
    l.backward();
    for (const p of params) {
      p.backend.axpy(p.storage, p.grad.storage, -lr);
      p.grad.dispose();
      p.grad = null;
    }
    return l;
  });
  if (step % 200 === 0) {
    const acc = fg.tidy(() => model(x).argmax(1).eq(y).float().mean());
    console.log(`step ${String(step).padStart(4)}  loss ${(await loss.item()).toFixed(4)}  accuracy ${((await acc.item()) * 100).toFixed(1)}%`);
    acc.dispose();
  }
  loss.dispose();
}
