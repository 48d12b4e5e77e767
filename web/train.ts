/**
 * The page's training engine, free of the DOM: one `Run` per configuration (model + base
 * optimizer + sharpness-aware wrapper from flatgrad.optim), stepped on shared batches, with its
 * own curves and timing.
 */
import * as fg from '../src/index.js';
import type { Tensor } from '../src/index.js';
import { evaluate, filterNormalizedDirection, landscape1d } from '../src/analysis/index.js';

const { nn, optim } = fg;

/** How many recent step times the steps/s figure takes its median over. */
const RECENT_STEPS = 51;

export type ModelName = 'mlp' | 'cnn' | 'vit';
export type BaseName = 'sgd' | 'adamw';
export type WrapperName = 'none' | 'sam' | 'asam' | 'looksam' | 'esam' | 'msam' | 'gsam' | 'rsam' | 'rwp';

type Model = InstanceType<typeof nn.Module> & { forward(x: Tensor): Tensor };

/** Sizes chosen to train at a few steps per second even on a software GPU. */
export function makeModel(name: ModelName): Model {
  if (name === 'mlp') return new nn.Sequential(new nn.Flatten(), nn.models.mlp([784, 128, 64, 10]));
  if (name === 'cnn') return nn.models.resnetSmall({ widths: [8, 16], blocksPerStage: 1 });
  return nn.models.vit({ imageSize: 28, patchSize: 7, dim: 32, depth: 1, heads: 2, mlpRatio: 2 });
}

export interface RunConfig {
  model: ModelName;
  base: BaseName;
  lr: number;
  wrapper: WrapperName;
  rho: number;
}

export const MODEL_NAMES: Record<ModelName, string> = {
  mlp: 'MLP (784-128-64-10)',
  cnn: 'CNN (small ResNet, 8-16 channels)',
  vit: 'ViT (1 block, width 32, 7x7 patches)',
};

export const BASE_NAMES: Record<BaseName, string> = { sgd: 'SGD (momentum 0.9)', adamw: 'AdamW' };

export const WRAPPER_NAMES: Record<WrapperName, string> = {
  none: 'none (plain base optimizer)',
  sam: 'SAM',
  asam: 'ASAM (adaptive SAM)',
  looksam: 'LookSAM (SAM every 5th step)',
  esam: 'ESAM (efficient SAM)',
  msam: 'm-SAM (4 micro-batches)',
  gsam: 'GSAM (surrogate gap)',
  rsam: 'Random-direction SAM',
  rwp: 'RWP (random weight perturbation)',
};

/** Wrappers that take rho (RWP's noise scale is its own gamma). */
export const USES_RHO: Record<WrapperName, boolean> = {
  none: false, sam: true, asam: true, looksam: true, esam: true, msam: true, gsam: true, rsam: true, rwp: false,
};

/** rho for a wrapper when the visitor picks it (ASAM's neighbourhood is relative to |w|, hence larger). */
export const DEFAULT_RHO: Record<WrapperName, number> = {
  none: 0.05, sam: 0.05, asam: 0.5, looksam: 0.05, esam: 0.05, msam: 0.05, gsam: 0.05, rsam: 0.05, rwp: 0.05,
};

/** The wrappers this build can run. */
export const AVAILABLE_WRAPPERS = Object.keys(WRAPPER_NAMES) as WrapperName[];

export function describeConfig(c: RunConfig): string {
  const name = WRAPPER_NAMES[c.wrapper].split(' (')[0];
  const wrap = c.wrapper === 'none' ? '' : USES_RHO[c.wrapper] ? ` + ${name} (rho ${c.rho})` : ` + ${name}`;
  return `${c.model.toUpperCase()} · ${BASE_NAMES[c.base].split(' (')[0]} lr ${c.lr}${wrap}`;
}

type Optimizer = InstanceType<typeof optim.Optimizer>;

function makeOptimizer(params: Tensor[], c: RunConfig): Optimizer {
  const Base = c.base === 'adamw' ? optim.AdamW : optim.SGD;
  const base = c.base === 'adamw' ? { lr: c.lr, weightDecay: 0.01 } : { lr: c.lr, momentum: 0.9 };
  const o = { ...base, rho: c.rho };
  switch (c.wrapper) {
    case 'none':
      return new Base(params, base);
    case 'sam':
      return new optim.SAM(params, Base, o);
    case 'asam':
      return new optim.ASAM(params, Base, o);
    case 'looksam':
      return new optim.LookSAM(params, Base, { ...o, k: 5 });
    case 'esam':
      return new optim.ESAM(params, Base, o);
    case 'msam':
      return new optim.MSAM(params, Base, { ...o, m: 4 });
    case 'gsam':
      return new optim.GSAM(params, Base, o);
    case 'rsam':
      return new optim.RandomSAM(params, Base, o);
    case 'rwp':
      return new optim.RWP(params, Base, base);
  }
}

export interface Curves {
  /** (step, training loss of that step's batch). */
  loss: [number, number][];
  /** (step, accuracy on that step's batch). */
  trainAcc: [number, number][];
  /** (step, accuracy on the held-out test images). */
  testAcc: [number, number][];
  testLoss: [number, number][];
}

export class Run {
  readonly net: Model;
  readonly opt: Optimizer;
  readonly curves: Curves = { loss: [], trainAcc: [], testAcc: [], testLoss: [] };
  steps = 0;
  /** Wall time of recent steps (ms), for steps per second. */
  private recent: number[] = [];
  totalMs = 0;
  /** The training step, captured (fg.compile: traced once, then replayed) unless the run is eager. */
  readonly trainStep: fg.CompiledStep<[Tensor, Tensor], Tensor>;

  constructor(
    readonly label: string,
    readonly config: RunConfig,
    seed: number,
    opts: { eager?: boolean } = {},
  ) {
    fg.manualSeed(seed);
    this.net = makeModel(config.model);
    this.net.train(true);
    this.opt = makeOptimizer(this.net.parameters(), config);
    this.trainStep = fg.compile((x: Tensor, y: Tensor) => this.lossAndHits(x, y), { eager: opts.eager });
  }

  /**
   * Steps per second from the median of the last steps' times. A median over a wide window, not
   * a mean over a few steps: the two runs step at different moments, and one stall (a GC, a
   * pipeline compile, the other tab) in a short mean made SAM look 3.1x SGD on a screenshot where
   * the device work is 2x (bench/README.md, steps).
   */
  get stepsPerSecond(): number {
    if (this.recent.length === 0) return 0;
    const sorted = [...this.recent].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    const ms = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    return ms > 0 ? 1000 / ms : 0;
  }

  get parameterCount(): number {
    return this.net.parameters().reduce((a, p) => a + p.size, 0);
  }

  /**
   * One optimizer step on (x, y); resolves with the batch loss and accuracy once the device is
   * done. The accuracy counts the first forward pass over each example (for SAM: at w).
   */
  async step(x: Tensor, y: Tensor): Promise<{ loss: number; acc: number }> {
    const t0 = performance.now();
    const n = x.shape[0];
    const out = this.trainStep(x, y);
    const [loss, h] = await out.data();
    out.dispose();
    const ms = performance.now() - t0;
    this.totalMs += ms;
    this.recent.push(ms);
    if (this.recent.length > RECENT_STEPS) this.recent.shift();
    this.steps++;
    const acc = h / n;
    this.curves.loss.push([this.steps, loss]);
    this.curves.trainAcc.push([this.steps, acc]);
    return { loss, acc };
  }

  /** The step itself: [loss, correct predictions] as one tensor, with no readback (so it can be captured). */
  private lossAndHits(x: Tensor, y: Tensor): Tensor {
    const hits: Tensor[] = [];
    const counted = new Set<string>();
    const count = (key: string, logits: Tensor, labels: Tensor) => {
      if (counted.has(key)) return;
      counted.add(key);
      hits.push(fg.noGrad(() => logits.argmax(1).eq(labels).float().sum()).keep());
    };
    const net = this.net;
    const n = x.shape[0];
    const out = fg.tidy(() => {
      let loss: Tensor | number | undefined;
      if (this.config.wrapper === 'esam') {
        // ESAM selects samples itself: the closure returns per-sample losses and runs no backward.
        loss = this.opt.step(((idx: Tensor | null) => {
          const xi = idx ? x.indexSelect(0, idx) : x;
          const yi = idx ? y.indexSelect(0, idx) : y;
          const logits = net.forward(xi);
          if (!idx) count('all', logits, yi);
          return fg.crossEntropy(logits, yi, { reduction: 'none' });
        }) as never);
      } else if (this.config.wrapper === 'msam') {
        loss = this.opt.step(((micro: number, m: number) => {
          const start = Math.floor((micro * n) / m);
          const len = Math.floor(((micro + 1) * n) / m) - start;
          const xi = x.narrow(0, start, len);
          const yi = y.narrow(0, start, len);
          const logits = net.forward(xi);
          count(`m${micro}`, logits, yi);
          const l = fg.crossEntropy(logits, yi);
          l.backward();
          return l;
        }) as never);
      } else {
        if (this.config.wrapper === 'none') this.opt.zeroGrad();
        loss = this.opt.step(() => {
          const logits = net.forward(x);
          count('all', logits, y);
          const l = fg.crossEntropy(logits, y);
          l.backward();
          return l;
        });
      }
      const l = typeof loss === 'number' || loss === undefined ? fg.tensor(loss ?? NaN) : loss.detach();
      const h = hits.reduce((a: Tensor | null, b) => (a ? a.add(b) : b), null) ?? fg.zeros([]);
      return fg.stack([l, h]);
    });
    fg.dispose(hits);
    return out;
  }

  async evaluate(batches: { x: Float32Array; xShape: number[]; y: Int32Array }[]): Promise<{ loss: number; accuracy: number }> {
    const r = await evaluate(this.net, batches);
    this.curves.testAcc.push([this.steps, r.accuracy]);
    this.curves.testLoss.push([this.steps, r.loss]);
    return r;
  }

  /** Loss along a filter-normalized random direction through the solution, alpha in [-1, 1]. */
  async landscape(x: Tensor, y: Tensor, points: number, seed: number): Promise<{ alphas: number[]; losses: number[] }> {
    const params = this.net.parameters();
    this.net.eval();
    try {
      fg.manualSeed(seed);
      const direction = filterNormalizedDirection(params);
      try {
        return await landscape1d(() => fg.crossEntropy(this.net.forward(x), y), params, { direction, points, range: [-1, 1] });
      } finally {
        fg.dispose(direction);
      }
    } finally {
      this.net.train(true);
    }
  }

  /** Predicted classes of x. */
  async predict(x: Tensor): Promise<Int32Array> {
    this.net.eval();
    try {
      const p = fg.noGrad(() => fg.tidy(() => this.net.forward(x).argmax(1)));
      const v = (await p.data()) as Int32Array;
      p.dispose();
      return v;
    } finally {
      this.net.train(true);
    }
  }

  dispose(): void {
    // The captured step's planned buffers and recorded command streams first.
    this.trainStep.dispose();
    this.opt.dispose();
    for (const p of this.net.parameters()) {
      p.grad?.dispose();
      p.grad = null;
    }
    fg.dispose([...this.net.parameters(), ...this.net.buffers()]);
  }
}
