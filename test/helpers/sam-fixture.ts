/** Loads the PyTorch reference cases (test/fixtures/sam, copied from ../shared/fixtures/sam). */
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as fg from '../../src/index.js';

export const FIXTURE_DIR = fileURLToPath(new URL('../fixtures/sam/', import.meta.url));

export interface SamCase {
  name: string;
  model: {
    layer_sizes: number[];
    activation: 'relu' | 'tanh';
    bias: boolean | boolean[];
    params: { weight: number[][]; bias: number[] | null }[];
  };
  data: { batches?: { inputs: number[][]; labels: number[] }[]; inputs?: number[][]; labels?: number[] };
  loss: { label_smoothing: number };
  optimizer: Record<string, unknown>;
  sharpness: Record<string, unknown>;
  steps: number;
}

export function caseNames(): string[] {
  return readdirSync(FIXTURE_DIR)
    .filter((f) => f.endsWith('.json') && !f.endsWith('.sam.json') && !f.endsWith('.hvp.json'))
    .map((f) => f.replace(/\.json$/, ''));
}

export function loadCase(name: string): { spec: SamCase; result: any; hvp: any | null } {
  const read = (f: string) => JSON.parse(readFileSync(FIXTURE_DIR + f, 'utf8'));
  let hvp = null;
  try {
    hvp = read(`${name}.hvp.json`);
  } catch {
    hvp = null;
  }
  return { spec: read(`${name}.json`), result: read(`${name}.sam.json`), hvp };
}

export function batches(spec: SamCase): { inputs: number[][]; labels: number[] }[] {
  return spec.data.batches ?? [{ inputs: spec.data.inputs!, labels: spec.data.labels! }];
}

/** The case's weights as leaf tensors in canonical order (w0, b0, w1, b1, ...). */
export function caseParams(spec: SamCase, dtype: fg.DType): fg.Tensor[] {
  const out: fg.Tensor[] = [];
  for (const layer of spec.model.params) {
    out.push(fg.tensor(layer.weight, { dtype, requiresGrad: true }).keep());
    if (layer.bias) out.push(fg.tensor(layer.bias, { dtype, requiresGrad: true }).keep());
  }
  return out;
}

/** The case's MLP applied to x (rows of inputs) with the given parameters (canonical order): the logits. */
export function caseForward(spec: SamCase, x: fg.Tensor, params: readonly fg.Tensor[]): fg.Tensor {
  let h = x;
  let p = 0;
  spec.model.params.forEach((layer, l) => {
    const w = params[p++];
    const b = layer.bias ? params[p++] : null;
    h = fg.linear(h, w, b);
    if (l < spec.model.params.length - 1) h = spec.model.activation === 'relu' ? h.relu() : h.tanh();
  });
  return h;
}

/** The case's loss as a function of its parameters, written with flatgrad's functional ops. */
export function caseLoss(spec: SamCase, batch: { inputs: number[][]; labels: number[] }, dtype: fg.DType) {
  const x = fg.tensor(batch.inputs, { dtype }).keep();
  const y = fg.tensor(Int32Array.from(batch.labels), { dtype: 'int32' }).keep();
  return (...params: fg.Tensor[]): fg.Tensor => fg.crossEntropy(caseForward(spec, x, params), y, { labelSmoothing: spec.loss.label_smoothing });
}

export const TOL = {
  float32: { loss: { atol: 1e-7, rtol: 1e-5 }, params: { atol: 1e-6, rtol: 1e-5 } },
  float64: { loss: { atol: 1e-12, rtol: 1e-9 }, params: { atol: 1e-12, rtol: 1e-9 } },
} as const;

export function close(ours: number, ref: number, t: { atol: number; rtol: number }): boolean {
  return Math.abs(ours - ref) <= t.atol + t.rtol * Math.abs(ref);
}

/**
 * One step of a sharpness-aware optimizer, or of a plain base optimizer (kind 'base'), given the
 * batch's per-sample losses: perSample(null) for every row, perSample(idx) for the rows idx (int32).
 * Each member gets the closure it takes: MSAM one per micro-batch (of `micro` micro-batches of
 * consecutive rows), ESAM the per-sample losses, the others forward and backward of the mean loss.
 */
export function familyStep(opt: fg.optim.Optimizer, kind: string, perSample: (idx: fg.Tensor | null) => fg.Tensor, rows: number, micro = 1): fg.Tensor | number | undefined {
  const meanLoss = () =>
    fg.tidy(() => {
      const l = perSample(null).mean();
      l.backward();
      return l;
    });
  if (kind === 'base') {
    opt.zeroGrad();
    const l = meanLoss();
    opt.step();
    return l;
  }
  if (kind === 'msam') {
    const per = rows / micro;
    return opt.step(((i: number) =>
      fg.tidy(() => {
        // One micro-batch is the whole batch, exactly as the base optimizer's closure computes it.
        const l = perSample(micro === 1 ? null : fg.tensor(Int32Array.from({ length: per }, (_, j) => i * per + j), { dtype: 'int32' })).mean();
        l.backward();
        return l;
      })) as never);
  }
  if (kind === 'esam') return opt.step(perSample as never);
  return opt.step(meanLoss);
}
