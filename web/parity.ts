/**
 * Kernel parity in the browser: the same small programs (matmul, broadcasting, softmax,
 * cross-entropy and its gradient, conv2d forward and backward, pooling, layer norm, reductions,
 * the seeded generator) run on WebGPU (navigator.gpu), on WebAssembly, and on the CPU reference
 * backend, and the results are compared. It imports the library bundle (web/dist/flatgrad.js)
 * exactly as an application would. `window.__flatgradParity` holds the raw outputs for
 * test/browser.test.ts; the page shows a table.
 */
import * as fg from '../src/index.js';
import type { Tensor } from '../src/index.js';

type BackendName = 'webgpu' | 'wasm' | 'cpu';

interface Case {
  name: string;
  /** Outputs to compare; it may return gradients (kept tensors), which are disposed after reading. */
  run: () => Tensor[];
  /** Outputs compared exactly (indices, integers). */
  exact?: boolean;
}

interface ParityState {
  status: 'running' | 'done' | 'error';
  error: string | null;
  adapter: string | null;
  webgpu: { available: boolean; reason: string };
  /** The backends that ran, the first being the reference (cpu). */
  backends: BackendName[];
  /** results[case][backend] = one array per output. */
  results: { name: string; exact: boolean; outputs: Partial<Record<BackendName, number[][]>> }[];
  /** Per case and backend: the largest |x - ref| / (atol + rtol |ref|) (<= 1 passes). */
  summary: { name: string; backend: BackendName; worst: number; ok: boolean }[];
  elapsedMs: number;
  /** Whether the optimizer cases ran on the fused arena kernels, per backend. */
  fused: Partial<Record<BackendName, boolean>>;
}

const state: ParityState = {
  status: 'running',
  error: null,
  adapter: null,
  webgpu: { available: false, reason: 'not checked yet' },
  backends: [],
  results: [],
  summary: [],
  elapsedMs: 0,
  fused: {},
};
let current: BackendName = 'cpu';
(globalThis as unknown as { __flatgradParity: ParityState }).__flatgradParity = state;

export const ATOL = 1e-4;
export const RTOL = 1e-3;

/** Inputs made on the host by the library's seeded generator, identical for every backend. */
function rng(seed: number): () => number {
  const r = new fg.data.SeededRng(seed);
  return () => r.uniform();
}

let seedCounter = 1;
function rand(shape: number[], opts: { requiresGrad?: boolean; scale?: number } = {}): Tensor {
  const r = rng(seedCounter++ * 7919);
  const n = shape.reduce((a, b) => a * b, 1);
  const v = new Float32Array(n);
  const s = opts.scale ?? 1;
  for (let i = 0; i < n; i++) v[i] = (r() * 2 - 1) * s;
  return fg.tensor(v, { shape, requiresGrad: opts.requiresGrad });
}
function labels(n: number, classes: number): Tensor {
  const r = rng(seedCounter++ * 104729);
  return fg.tensor(Int32Array.from({ length: n }, () => Math.floor(r() * classes)));
}

type Optimizer = InstanceType<typeof fg.optim.Optimizer>;

/** Three steps of an optimizer on a tiny 5-8-3 tanh net; returns copies of the parameters and the losses. */
function optimizerSteps(make: (params: Tensor[]) => Optimizer): Tensor[] {
  const params = [rand([8, 5], { requiresGrad: true }), rand([8], { requiresGrad: true }), rand([3, 8], { requiresGrad: true })];
  const x = rand([6, 5]);
  const y = labels(6, 3);
  const opt = make(params);
  state.fused[current] = opt.fused;
  const losses: Tensor[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const l = opt.step(() => {
        const loss = fg.crossEntropy(fg.linear(fg.linear(x, params[0], params[1]).tanh(), params[2]), y);
        loss.backward();
        return loss;
      });
      if (typeof l === 'number' || l === undefined) throw new Error(`optimizer.step returned ${l}, not a tensor`);
      losses.push(l.detach());
    }
    return [...params.map((p) => p.detach().clone()), fg.stack(losses)];
  } finally {
    opt.dispose();
    for (const p of params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }
}

const CASES: Case[] = [
  { name: 'matmul 7x63 @ 63x65', run: () => [fg.matmul(rand([7, 63]), rand([63, 65]))] },
  { name: 'matmul batched, broadcast [2,3,5,7] @ [7,4]', run: () => [fg.matmul(rand([2, 3, 5, 7]), rand([7, 4]))] },
  { name: 'matmul transposed operands [65,33]^T @ [17,65]^T', run: () => [fg.matmul(rand([65, 33]).T, rand([17, 65]).T)] },
  {
    name: 'matmul backward',
    run: () => {
      const a = rand([9, 31], { requiresGrad: true });
      const b = rand([31, 5], { requiresGrad: true });
      fg.matmul(a, b).mul(rand([9, 5])).sum().backward();
      return [a.grad!, b.grad!];
    },
  },
  { name: 'add broadcast [3,1,65] + [7,1]', run: () => [fg.add(rand([3, 1, 65]), rand([7, 1]))] },
  { name: 'mul/sub/div broadcast [257] with [3,257]', run: () => [rand([257]).mul(rand([3, 257])).sub(rand([3, 1])).div(rand([257]).abs().add(0.5))] },
  { name: 'unary exp/tanh/gelu/sigmoid/relu', run: () => {
    const x = rand([63], { scale: 3 });
    return [x.exp(), x.tanh(), x.gelu(), x.sigmoid(), x.relu(), x.abs().add(1e-3).log()];
  } },
  { name: 'softmax [7,257] dim -1', run: () => [rand([7, 257], { scale: 5 }).softmax(-1)] },
  { name: 'logSoftmax [65,3] dim 0', run: () => [rand([65, 3], { scale: 5 }).logSoftmax(0)] },
  {
    name: 'crossEntropy + backward',
    run: () => {
      const logits = rand([63, 10], { requiresGrad: true, scale: 3 });
      const loss = fg.crossEntropy(logits, labels(63, 10));
      loss.backward();
      return [loss, logits.grad!];
    },
  },
  {
    name: 'crossEntropy label smoothing 0.1 + backward',
    run: () => {
      const logits = rand([7, 13], { requiresGrad: true, scale: 3 });
      const loss = fg.crossEntropy(logits, labels(7, 13), { labelSmoothing: 0.1 });
      loss.backward();
      return [loss, logits.grad!];
    },
  },
  {
    name: 'conv2d stride 2 pad 1 + backward',
    run: () => {
      const x = rand([2, 3, 9, 9], { requiresGrad: true });
      const w = rand([4, 3, 3, 3], { requiresGrad: true });
      const b = rand([4], { requiresGrad: true });
      const y = fg.conv2d(x, w, b, { stride: 2, padding: 1 });
      y.mul(rand(y.shape)).sum().backward();
      return [y, x.grad!, w.grad!, b.grad!];
    },
  },
  {
    name: 'conv2d 1->8 3x3 pad 1 on 28x28 + maxPool2d + backward',
    run: () => {
      const x = rand([2, 1, 28, 28], { requiresGrad: true });
      const w = rand([8, 1, 3, 3], { requiresGrad: true });
      const y = fg.maxPool2d(fg.conv2d(x, w, null, { padding: 1 }).relu(), 2);
      y.mul(rand(y.shape)).sum().backward();
      return [y, x.grad!, w.grad!];
    },
  },
  {
    name: 'layerNorm + backward',
    run: () => {
      const x = rand([5, 7, 32], { requiresGrad: true });
      const g = rand([32], { requiresGrad: true });
      const b = rand([32], { requiresGrad: true });
      const y = fg.layerNorm(x, [32], g, b);
      y.mul(rand(y.shape)).sum().backward();
      return [y, x.grad!, g.grad!, b.grad!];
    },
  },
  {
    name: 'reductions sum/mean/max/min/var/norm',
    run: () => {
      const x = rand([7, 63, 3]);
      return [x.sum(1), x.mean(), x.max(0), x.min([0, 2]), x.var(1), x.norm(), x.sum([0, 1], true), x.logsumexp(1)];
    },
  },
  { name: 'argmax/argmin', exact: true, run: () => {
    const x = rand([65, 10]);
    return [x.argmax(1), x.argmin(0)];
  } },
  { name: 'SAM(SGD momentum) fused steps on a 2-layer net', run: () => optimizerSteps((ps) => new fg.optim.SAM(ps, fg.optim.SGD, { lr: 0.1, momentum: 0.9, rho: 0.05 })) },
  { name: 'ASAM(AdamW) fused steps on a 2-layer net', run: () => optimizerSteps((ps) => new fg.optim.ASAM(ps, fg.optim.AdamW, { lr: 0.01, rho: 0.5 })) },
  { name: 'seeded randn/rand', run: () => {
    fg.manualSeed(1234);
    return [fg.randn([257]), fg.rand([3, 65])];
  } },
];

async function runOn(backend: BackendName): Promise<number[][][]> {
  await fg.init({ backend });
  current = backend;
  if (backend === 'webgpu') state.adapter = fg.backendInfo().adapter;
  seedCounter = 1;
  const out: number[][][] = [];
  for (const c of CASES) {
    const ts = fg.tidy(() => c.run());
    try {
      out.push(await Promise.all(ts.map(async (t) => Array.from(await t.data(), Number))));
    } catch (e) {
      throw new Error(`${c.name} on ${backend}: ${(e as Error).message}`);
    } finally {
      fg.dispose(ts);
    }
  }
  return out;
}

/** The largest |x - ref| / (atol + rtol |ref|) over all outputs; Infinity for a shape or NaN mismatch. */
export function worstError(x: number[][], ref: number[][], exact: boolean): number {
  let worst = 0;
  if (x.length !== ref.length) return Infinity;
  x.forEach((xs, i) => {
    const rs = ref[i];
    if (xs.length !== rs.length) worst = Infinity;
    else
      for (let j = 0; j < xs.length; j++) {
        if (Number.isNaN(xs[j]) !== Number.isNaN(rs[j])) worst = Infinity;
        else if (!Number.isNaN(rs[j])) {
          const e = exact ? (xs[j] === rs[j] ? 0 : Infinity) : Math.abs(xs[j] - rs[j]) / (ATOL + RTOL * Math.abs(rs[j]));
          if (e > worst) worst = e;
        }
      }
  });
  return worst;
}

async function probe(): Promise<{ available: boolean; reason: string }> {
  const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
  if (!gpu) return { available: false, reason: 'navigator.gpu is missing' };
  const a = await gpu.requestAdapter();
  return a ? { available: true, reason: '' } : { available: false, reason: 'navigator.gpu.requestAdapter() returned null' };
}

function render(): void {
  const el = document.getElementById('parity');
  const head = document.getElementById('parity-status');
  if (head) {
    const failed = state.summary.filter((s) => !s.ok).length;
    head.textContent =
      state.status === 'running'
        ? 'Running…'
        : state.status === 'error'
          ? `Error: ${state.error}`
          : `${failed === 0 ? 'All match' : `${failed} mismatches`} · backends: ${state.backends.join(', ')}` +
            (state.adapter ? ` · WebGPU adapter: ${state.adapter}` : ` · no WebGPU: ${state.webgpu.reason}`) +
            ` · ${(state.elapsedMs / 1000).toFixed(1)} s`;
    head.className = state.status === 'error' || failed ? 'banner error' : state.status === 'done' ? 'banner ok' : 'banner info';
  }
  if (!el) return;
  const others = state.backends.filter((b) => b !== 'cpu');
  const rows = state.results.map((r) => {
    const tr = document.createElement('tr');
    const name = document.createElement('td');
    name.textContent = r.name;
    tr.append(name);
    for (const b of others) {
      const s = state.summary.find((x) => x.name === r.name && x.backend === b);
      const td = document.createElement('td');
      td.textContent = s ? (s.ok ? `ok (${s.worst.toFixed(3)})` : `MISMATCH (${s.worst.toPrecision(3)})`) : '–';
      td.className = s ? (s.ok ? 'ok' : 'bad') : '';
      tr.append(td);
    }
    return tr;
  });
  const thead = document.createElement('tr');
  for (const h of ['case (compared with the cpu backend)', ...others]) thead.append(Object.assign(document.createElement('th'), { textContent: h }));
  el.replaceChildren(thead, ...rows);
}

async function main(): Promise<void> {
  const t0 = performance.now();
  state.webgpu = await probe();
  const wanted = new URLSearchParams(location.search).get('backends');
  const order: BackendName[] = wanted
    ? (wanted.split(',').filter((b) => b === 'webgpu' || b === 'wasm') as BackendName[])
    : state.webgpu.available
      ? ['webgpu', 'wasm']
      : ['wasm'];
  const runs: Partial<Record<BackendName, number[][][]>> = {};
  runs.cpu = await runOn('cpu');
  state.backends = ['cpu'];
  for (const b of order) {
    runs[b] = await runOn(b);
    state.backends.push(b);
  }
  state.results = CASES.map((c, i) => ({
    name: c.name,
    exact: !!c.exact,
    outputs: Object.fromEntries(state.backends.map((b) => [b, runs[b]![i]])),
  }));
  state.summary = CASES.flatMap((c, i) =>
    order.map((b) => {
      const worst = worstError(runs[b]![i], runs.cpu![i], !!c.exact);
      return { name: c.name, backend: b, worst, ok: worst <= 1 };
    }),
  );
  state.elapsedMs = performance.now() - t0;
  state.status = 'done';
  render();
}

render();
main().catch((e: Error) => {
  state.status = 'error';
  state.error = e.message;
  console.error(e);
  render();
});
