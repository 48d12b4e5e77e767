/**
 * Whole training steps side by side, three models, float32, random inputs and labels from a fixed
 * seed and the same initial weights (every parameter from one LCG, in PyTorch's layout, converted
 * to each library's) in every library:
 *   mlp: 784-256-256-10, batch 128
 *   cnn: the small ResNet of `flatgrad train --model cnn` (nn.models.resnetSmall, widths 8/16/32,
 *        one BasicBlock per stage, BatchNorm in train mode), 28x28x1, batch 32
 *   vit: the ViT of `flatgrad train --model vit` (7x7 patches, dim 32, 2 pre-norm blocks, 4 heads,
 *        MLP 64 with exact GELU, class token), 28x28x1, batch 32
 *
 *   SGD step: forward, backward, p -= lr * g                (lr 0.01, no momentum)
 *   SAM step: forward-backward at w, e = rho g / ||g||, forward-backward at w + e, restore w,
 *             p -= lr * g(w + e)                           (rho 0.05)
 *
 * Two families, each model in its own process, every library of a family on the same device:
 *   webgpu: flatgrad webgpu (eager and captured), @tensorflow/tfjs-backend-webgpu, @jax-js/jax on
 *           webgpu (jit)
 *   wasm:   flatgrad wasm with 2 threads and with 1 thread (eager and captured),
 *           @tensorflow/tfjs-backend-wasm, @jax-js/jax on wasm (jit)
 * "captured": fg.compile around the whole step (zeroGrad, forward, backward, optimizer step; SAM's
 * two passes), as a user writes it; jax-js jit is its counterpart (jax-js's own captured mode).
 * A captured contender trains its own copy of the model, so its losses must equal its eager twin's
 * after the same steps (bit for bit on wasm): the report says whether they do.
 * Each library is written as its users would write it: flatgrad with nn.models and optim.SGD /
 * optim.SAM; tfjs with tf ops on tf.variables (no tf.layers), tf.variableGrads, a per-variable
 * perturb (backup + assign) and restore, and tf.train.sgd; jax-js with one jitted step function
 * over the parameter dict (valueAndGrad, and for SAM the perturbed gradient inside the same jit).
 * Where the math differs or a peer cannot run, the peer's code says why (tfjsModel) and the report
 * carries the peer's exact error. The SGD and the SAM step train separate copies of the model, so
 * the losses after the same number of steps agree across libraries (they are reported as a check
 * that all of them compute the same thing).
 *
 * Timing: warmup steps, then rounds; in each round every library (in a rotating order) does one
 * SGD step and one SAM step, each timed from the call to the end of an awaited readback of its
 * loss (so all of the step's work is complete). Every library does a minimum number of rounds,
 * then more until its own timed steps have used a time budget (so a library that takes seconds
 * per step does not starve the others of rounds). A process reports each library's median; the
 * whole measurement runs in several separate processes and the report is the median of those.
 * Each process first measures the one-core f32x4 peak (bench/simd-peak.ts): the report gives each
 * step's FLOP floor and, for flatgrad wasm with one thread, the time and GFLOP/s of every backend
 * kernel over a few extra SGD steps.
 *
 * Run (bundles the TypeScript, keeps the benchmark libraries as ordinary node_modules imports):
 *   npx esbuild bench/steps.bench.ts --bundle --platform=node --format=esm --packages=external \
 *     --outfile=node_modules/.cache/flatgrad/steps.bench.mjs --log-level=warning \
 *     && node node_modules/.cache/flatgrad/steps.bench.mjs [--quick] [--procs=3] [--families=webgpu,wasm] [--models=mlp,cnn,vit]
 * (or `npm run bench`, which runs every bench). Without --family it is the driver: it spawns
 * itself once per model, family and process (--family=F --model=M --out=FILE), then writes
 * bench/results/steps.json and bench/results/steps.md, keeping the sections (model x family) of
 * the previous steps.json that this run did not measure. Other processes on the machine skew
 * everything (on SwiftShader the GPU is the CPU cores): the CPU model and the load average are
 * recorded.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
// flatgrad does no work at import time and is handed its adapter by init({ gpu }), so a static
// import is safe; the peers are imported after Dawn is installed as navigator.gpu.
import * as flatgrad from '../src/index.js';
import * as flatgradRegistry from '../src/kernels/registry.js';
import { SWIFTSHADER_ICD } from '../src/kernels/webgpu/device.js';
import { measureSimdPeak } from './simd-peak.js';
import { instrumentCalls } from './instrument.js';
import { paceCpuAdapterWaits } from '../src/kernels/webgpu/dawn.js';

// ---------------------------------------------------------------------------------------------
// The problems, identical for every library

const LR = 0.01;
const RHO = 0.05;
const CLASSES = 10;
/** BatchNorm and LayerNorm epsilon (PyTorch's and flatgrad's default). */
const EPS = 1e-5;
const MLP_SIZES = [784, 256, 256, 10];
/** `flatgrad train --model cnn` at its defaults: resnetSmall, widths 8/16/32, one block per stage. */
const CNN_WIDTHS = [8, 16, 32];
/** `flatgrad train --model vit` at its defaults: 28x28 in 7x7 patches, dim 32, 2 blocks, 4 heads, MLP ratio 2. */
const VIT = { image: 28, patch: 7, dim: 32, depth: 2, heads: 4, hidden: 64 };

type ModelName = 'mlp' | 'cnn' | 'vit';
const MODEL_NAMES: ModelName[] = ['mlp', 'cnn', 'vit'];

interface ParamSpec {
  /** flatgrad's (and PyTorch's) parameter name; the array is in PyTorch's layout ([out, in], OIHW). */
  name: string;
  shape: number[];
  /** uniform(-1/sqrt(fan), 1/sqrt(fan)); ones, zeros (norm layers, as initialized); uniform(-0.02, 0.02) (tokens). */
  init: 'fan' | 'one' | 'zero' | 'small';
  fan?: number;
}

interface ModelSpec {
  name: ModelName;
  title: string;
  batch: number;
  /** One sample's shape: [784] or [C, H, W]. */
  input: number[];
  params: ParamSpec[];
  /**
   * Multiply-add FLOPs (2 per MAC) of the forward pass's matmuls and convolutions; elementwise
   * ops, norms, softmax and the loss are not counted. A SGD step is counted as 3x this (forward,
   * input gradient, weight gradient) and a SAM step as 6x: the FLOP floor of a step is that count
   * at the measured f32x4 peak.
   */
  forwardFlops: number;
}

function mlpSpec(): ModelSpec {
  const batch = 128;
  const params: ParamSpec[] = [];
  let flops = 0;
  for (let i = 0; i + 1 < MLP_SIZES.length; i++) {
    const [fi, fo] = [MLP_SIZES[i], MLP_SIZES[i + 1]];
    params.push({ name: `${2 * i}.weight`, shape: [fo, fi], init: 'fan', fan: fi }, { name: `${2 * i}.bias`, shape: [fo], init: 'fan', fan: fi });
    flops += 2 * batch * fi * fo;
  }
  return { name: 'mlp', title: `MLP ${MLP_SIZES.join('-')}`, batch, input: [MLP_SIZES[0]], params, forwardFlops: flops };
}

/** nn.models.resnetSmall's names: 0 = stem (conv, BN, ReLU), 1..3 = BasicBlocks, then pool, flatten, linear. */
function cnnSpec(): ModelSpec {
  const batch = 32;
  const params: ParamSpec[] = [];
  let flops = 0;
  const conv = (name: string, cin: number, cout: number, k: number, stride: number, hIn: number): number => {
    params.push({ name, shape: [cout, cin, k, k], init: 'fan', fan: cin * k * k });
    const hOut = Math.floor((hIn + 2 * (k >> 1) - k) / stride) + 1;
    flops += 2 * batch * hOut * hOut * cout * cin * k * k;
    return hOut;
  };
  const bn = (name: string, c: number) => params.push({ name: `${name}.weight`, shape: [c], init: 'one' }, { name: `${name}.bias`, shape: [c], init: 'zero' });
  let h = conv('0.0.weight', 1, CNN_WIDTHS[0], 3, 1, 28);
  bn('0.1', CNN_WIDTHS[0]);
  let c = CNN_WIDTHS[0];
  CNN_WIDTHS.forEach((w, s) => {
    const b = `${s + 1}`;
    const stride = s > 0 ? 2 : 1;
    const h1 = conv(`${b}.conv1.weight`, c, w, 3, stride, h);
    bn(`${b}.bn1`, w);
    conv(`${b}.conv2.weight`, w, w, 3, 1, h1);
    bn(`${b}.bn2`, w);
    if (stride !== 1 || c !== w) {
      conv(`${b}.shortcut.0.weight`, c, w, 1, stride, h);
      bn(`${b}.shortcut.1`, w);
    }
    h = h1;
    c = w;
  });
  const head = `${CNN_WIDTHS.length + 3}`;
  params.push({ name: `${head}.weight`, shape: [CLASSES, c], init: 'fan', fan: c }, { name: `${head}.bias`, shape: [CLASSES], init: 'fan', fan: c });
  flops += 2 * batch * c * CLASSES;
  return { name: 'cnn', title: `small ResNet (widths ${CNN_WIDTHS.join('/')}, BatchNorm in train mode)`, batch, input: [1, 28, 28], params, forwardFlops: flops };
}

/** nn.models.vit's names: class token, positions, patch embedding, pre-norm encoder blocks, norm, head. */
function vitSpec(): ModelSpec {
  const batch = 32;
  const { dim: d, patch, hidden, heads } = VIT;
  const patches = (VIT.image / patch) ** 2;
  const t = patches + 1;
  const params: ParamSpec[] = [
    { name: 'cls_token', shape: [1, 1, d], init: 'small' },
    { name: 'pos_embed', shape: [1, t, d], init: 'small' },
    { name: 'patch_embed.proj.weight', shape: [d, 1, patch, patch], init: 'fan', fan: patch * patch },
    { name: 'patch_embed.proj.bias', shape: [d], init: 'fan', fan: patch * patch },
  ];
  const norm = (name: string) => params.push({ name: `${name}.weight`, shape: [d], init: 'one' }, { name: `${name}.bias`, shape: [d], init: 'zero' });
  const linear = (name: string, fi: number, fo: number) => params.push({ name: `${name}.weight`, shape: [fo, fi], init: 'fan', fan: fi }, { name: `${name}.bias`, shape: [fo], init: 'fan', fan: fi });
  let flops = 2 * batch * patches * d * patch * patch;
  for (let i = 0; i < VIT.depth; i++) {
    const b = `blocks.${i}`;
    norm(`${b}.norm1`);
    params.push({ name: `${b}.attn.in_proj_weight`, shape: [3 * d, d], init: 'fan', fan: d }, { name: `${b}.attn.in_proj_bias`, shape: [3 * d], init: 'fan', fan: d });
    linear(`${b}.attn.out_proj`, d, d);
    norm(`${b}.norm2`);
    linear(`${b}.mlp.fc1`, d, hidden);
    linear(`${b}.mlp.fc2`, hidden, d);
    // qkv projection, q k^T and attn v over all heads, output projection, the two MLP layers.
    flops += 2 * batch * t * (3 * d * d + 2 * t * d + d * d + 2 * d * hidden);
  }
  norm('norm');
  linear('head', d, CLASSES);
  flops += 2 * batch * d * CLASSES;
  return { name: 'vit', title: `ViT (28x28, patch ${patch}, dim ${d}, depth ${VIT.depth}, ${heads} heads, MLP ${hidden}, exact GELU)`, batch, input: [1, VIT.image, VIT.image], params, forwardFlops: flops };
}

const SPECS: Record<ModelName, () => ModelSpec> = { mlp: mlpSpec, cnn: cnnSpec, vit: vitSpec };

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

type F32 = Float32Array<ArrayBuffer>;
interface Problem {
  spec: ModelSpec;
  /** Every parameter by flatgrad name, in PyTorch's layout. */
  params: Record<string, F32>;
  /** [batch, ...spec.input], NCHW for images. */
  x: F32;
  labels: Int32Array<ArrayBuffer>;
}

function makeProblem(model: ModelName): Problem {
  const spec = SPECS[model]();
  const r = lcg(1);
  const params: Record<string, F32> = {};
  for (const p of spec.params) {
    const n = p.shape.reduce((a, b) => a * b, 1);
    const bound = p.init === 'fan' ? 1 / Math.sqrt(p.fan!) : 0.02;
    params[p.name] = Float32Array.from({ length: n }, () => (p.init === 'one' ? 1 : p.init === 'zero' ? 0 : (2 * r() - 1) * bound));
  }
  const x = Float32Array.from({ length: spec.batch * spec.input.reduce((a, b) => a * b, 1) }, () => 2 * r() - 1);
  const labels = Int32Array.from({ length: spec.batch }, () => Math.floor(r() * CLASSES));
  return { spec, params, x, labels };
}

/** A row-major [rows, cols] matrix transposed: PyTorch's Linear weight [out, in] as the [in, out] that `x @ W` wants. */
function transpose(a: F32, rows: number, cols: number): F32 {
  const t = new Float32Array(a.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = a[i * cols + j];
  return t;
}

/** A conv weight OIHW -> HWIO (tfjs's filter layout). */
function oihwToHwio(a: F32, [o, i, h, w]: number[]): F32 {
  const t = new Float32Array(a.length);
  for (let oo = 0; oo < o; oo++) for (let ii = 0; ii < i; ii++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) t[((y * w + x) * i + ii) * o + oo] = a[((oo * i + ii) * h + y) * w + x];
  return t;
}

// ---------------------------------------------------------------------------------------------
// Contenders

type Family = 'webgpu' | 'wasm';

interface KernelProfile {
  kernel: string;
  callsPerStep: number;
  msPerStep: number;
  /** Multiply-add FLOPs per step (matmul and convolution kernels), 0 for the others. */
  flopsPerStep: number;
}

interface Contender {
  name: string;
  /** What it is, for the report (versions, threads, adapter). */
  describe: string;
  /** CPU cores it can use: the FLOP floor is the step's FLOPs at this many times the one-core peak. */
  cores: number;
  /** One SGD step on its SGD copy of the model; resolves to the loss, read back from the device. */
  sgd: () => Promise<number>;
  /** One SAM step on its SAM copy of the model; resolves to the (first-pass) loss. */
  sam: () => Promise<number>;
  /** Time per backend kernel over a few extra SGD steps (flatgrad wasm with one thread, after the rounds). */
  profile?: (steps: number) => Promise<KernelProfile[]>;
}

interface Failure {
  name: string;
  stage: string;
  error: string;
}

function errorText(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

type FG = typeof flatgrad;
type Registry = typeof flatgradRegistry;

/** Multiply-add FLOPs of one backend call, for the kernels that do matmuls and convolutions. */
function kernelFlops(kernel: string, args: unknown[]): number {
  if (kernel === 'matmul') {
    const l = args[3] as { batch: number; m: number; n: number; k: number };
    return 2 * l.batch * l.m * l.n * l.k;
  }
  if (kernel === 'conv2d' || kernel === 'conv2dBackwardInput' || kernel === 'conv2dBackwardWeight') {
    const l = args[3] as { n: number; c: number; oh: number; ow: number; kh: number; kw: number; outChannels: number; groups: number };
    return 2 * l.n * l.oh * l.ow * l.outChannels * (l.c / l.groups) * l.kh * l.kw;
  }
  return 0;
}

/**
 * flatgrad's contender. `captured`: the whole step (zeroGrad, forward, backward and the optimizer
 * step, SAM's two passes included) wrapped in fg.compile as a user writes it, with the batch as
 * its arguments; it runs eagerly on its first call, is traced on its second and replayed from the
 * third (the warm-up covers all three), and a fall-back to eager is an error of the contender.
 */
async function flatgradContender(fg: FG, registry: Registry, p: Problem, name: string, cores: number, initOpts: Parameters<FG['init']>[0], captured = false): Promise<Contender> {
  const info = await fg.init(initOpts);
  const backend = registry.getBackend();
  const { nn, optim } = fg;
  const spec = p.spec;
  const makeModel = () => {
    const model =
      spec.name === 'mlp'
        ? nn.models.mlp(MLP_SIZES)
        : spec.name === 'cnn'
          ? nn.models.resnetSmall({ inChannels: 1, numClasses: CLASSES, widths: CNN_WIDTHS, blocksPerStage: 1 })
          : nn.models.vit({ imageSize: VIT.image, patchSize: VIT.patch, inChannels: 1, numClasses: CLASSES, dim: VIT.dim, depth: VIT.depth, heads: VIT.heads, mlpRatio: VIT.hidden / VIT.dim });
    // The bench's parameter list must be the model's, name for name and shape for shape.
    const named = model.namedParameters().map(([n, t]) => `${n} ${t.shape.join('x')}`);
    const expected = spec.params.map((q) => `${q.name} ${q.shape.join('x')}`);
    if (named.slice().sort().join(',') !== expected.slice().sort().join(',')) throw new Error(`${spec.name}: model parameters [${named.join(', ')}] differ from the bench's [${expected.join(', ')}]`);
    model.loadStateDict(p.params, { strict: false });
    model.train();
    return model;
  };
  const x = fg.tensor(p.x, { shape: [spec.batch, ...spec.input] });
  const y = fg.tensor(p.labels, { dtype: 'int32' });
  const sgdModel = makeModel();
  const samModel = makeModel();
  const sgdOpt = new optim.SGD(sgdModel.parameters(), { lr: LR });
  const samOpt = new optim.SAM(samModel.parameters(), optim.SGD, { rho: RHO, lr: LR });
  type T = InstanceType<FG['Tensor']>;
  const lossOf = (model: ReturnType<typeof makeModel>, xs: T, ys: T) => nn.functional.crossEntropy(model.forward(xs), ys);
  const sgdStep = (xs: T, ys: T): T =>
    fg.tidy(() => {
      sgdOpt.zeroGrad();
      const l = lossOf(sgdModel, xs, ys);
      l.backward();
      sgdOpt.step();
      return l;
    });
  const samStep = (xs: T, ys: T): T =>
    fg.tidy(
      () =>
        samOpt.step(() => {
          const l = lossOf(samModel, xs, ys);
          l.backward();
          return l;
        }) as T,
    );
  const capture = <F extends (xs: T, ys: T) => T>(f: F) =>
    fg.compile(f, { onMessage: (m) => { throw new Error(`${name}: fg.compile fell back to eager: ${m}`); } });
  const [sgdRun, samRun] = captured ? [capture(sgdStep), capture(samStep)] : [sgdStep, samStep];
  const sgd = async () => {
    registry.setBackend(backend);
    const loss = sgdRun(x, y);
    const v = await loss.item();
    loss.dispose();
    return v;
  };
  // Times every backend kernel call over a few SGD steps (bench/instrument.ts: the outermost
  // call only). Synchronous kernels only (wasm with one thread): a call's wall time is then its
  // kernel's time.
  const profile = async (steps: number): Promise<KernelProfile[]> => {
    const acc = new Map<string, KernelProfile>();
    const remove = instrumentCalls([['', backend]], (n, a, run) => {
      const t0 = performance.now();
      try {
        return run();
      } finally {
        const r = acc.get(n) ?? { kernel: n, callsPerStep: 0, msPerStep: 0, flopsPerStep: 0 };
        r.callsPerStep++;
        r.msPerStep += performance.now() - t0;
        r.flopsPerStep += kernelFlops(n, a);
        acc.set(n, r);
      }
    });
    try {
      for (let i = 0; i < steps; i++) await sgd();
    } finally {
      remove();
    }
    return [...acc.values()].map((r) => ({ ...r, callsPerStep: r.callsPerStep / steps, msPerStep: r.msPerStep / steps, flopsPerStep: r.flopsPerStep / steps })).sort((a, b) => b.msPerStep - a.msPerStep);
  };
  return {
    name,
    describe: `flatgrad ${info.name}: ${info.adapter}${captured ? ', fg.compile of the whole step' : ''}`,
    cores,
    sgd,
    async sam() {
      registry.setBackend(backend);
      const loss = samRun(x, y);
      const v = await loss.item();
      loss.dispose();
      return v;
    },
    profile: info.name === 'wasm' && cores === 1 && !captured ? profile : undefined,
  };
}

type TF = typeof import('@tensorflow/tfjs');
type TfTensor = import('@tensorflow/tfjs').Tensor;

/**
 * The models in tfjs as its users write them without tf.layers: tf.variables in tfjs's layouts
 * (images NHWC, filters HWIO, dense weights [in, out]), tf.conv2d, tf.moments + tf.batchNorm for
 * BatchNorm in train mode, tf.moments for LayerNorm, GELU from tf.erf (tfjs has no gelu op). The
 * ViT's patch embedding is a reshape into patches and a matMul (the same math as the strided
 * conv): tfjs-backend-wasm has no Conv2DBackpropFilter, so a conv there could not train.
 */
function tfjsModel(tf: TF, p: Problem) {
  const spec = p.spec;
  const toTf = (q: ParamSpec): TfTensor => {
    const a = p.params[q.name];
    if (q.name === 'patch_embed.proj.weight') return tf.tensor2d(oihwToHwio(a, q.shape), [q.shape[2] * q.shape[3] * q.shape[1], q.shape[0]]);
    if (q.shape.length === 4) return tf.tensor4d(oihwToHwio(a, q.shape), [q.shape[2], q.shape[3], q.shape[1], q.shape[0]]);
    if (q.shape.length === 2) return tf.tensor2d(transpose(a, q.shape[0], q.shape[1]), [q.shape[1], q.shape[0]]);
    return tf.tensor(a, q.shape);
  };
  const makeVars = (prefix: string): Record<string, import('@tensorflow/tfjs').Variable> =>
    Object.fromEntries(spec.params.map((q) => [q.name, tf.variable(toTf(q), true, `${prefix}/${q.name}`)]));
  const b = spec.batch;
  // C = 1, so the NCHW data is already NHWC.
  const x = spec.name === 'mlp' ? tf.tensor2d(p.x, [b, spec.input[0]]) : tf.tensor4d(p.x, [b, spec.input[1], spec.input[2], spec.input[0]]);
  const y = tf.tidy(() => tf.oneHot(tf.tensor1d(p.labels, 'int32'), CLASSES));
  type V = ReturnType<typeof makeVars>;
  const dense = (h: TfTensor, v: V, name: string) => tf.add(tf.matMul(h, v[`${name}.weight`]), v[`${name}.bias`]);
  const mlp = (v: V): TfTensor => {
    let h: TfTensor = x;
    for (let i = 0; i + 1 < MLP_SIZES.length; i++) {
      h = dense(h, v, `${2 * i}`);
      if (i + 2 < MLP_SIZES.length) h = tf.relu(h);
    }
    return h;
  };
  const cnn = (v: V): TfTensor => {
    const conv = (h: TfTensor, name: string, stride: number) => {
      const w = v[name] as import('@tensorflow/tfjs').Tensor4D;
      return tf.conv2d(h as import('@tensorflow/tfjs').Tensor4D, w, stride, w.shape[0] >> 1);
    };
    const bn = (h: TfTensor, name: string) => {
      const { mean, variance } = tf.moments(h, [0, 1, 2]);
      return tf.batchNorm(h, mean, variance, v[`${name}.bias`], v[`${name}.weight`], EPS);
    };
    let h = tf.relu(bn(conv(x, '0.0.weight', 1), '0.1'));
    CNN_WIDTHS.forEach((_, s) => {
      const blk = `${s + 1}`;
      const stride = s > 0 ? 2 : 1;
      let out = tf.relu(bn(conv(h, `${blk}.conv1.weight`, stride), `${blk}.bn1`));
      out = bn(conv(out, `${blk}.conv2.weight`, 1), `${blk}.bn2`);
      const shortcut = v[`${blk}.shortcut.0.weight`] ? bn(conv(h, `${blk}.shortcut.0.weight`, stride), `${blk}.shortcut.1`) : h;
      h = tf.relu(tf.add(out, shortcut));
    });
    return dense(tf.mean(h, [1, 2]), v, `${CNN_WIDTHS.length + 3}`);
  };
  const vit = (v: V): TfTensor => {
    const { dim: d, patch, heads, depth } = VIT;
    const g = VIT.image / patch;
    const t = g * g + 1;
    const dh = d / heads;
    const ln = (h: TfTensor, name: string) => {
      const { mean, variance } = tf.moments(h, -1, true);
      return tf.add(tf.mul(tf.mul(tf.sub(h, mean), tf.rsqrt(tf.add(variance, EPS))), v[`${name}.weight`]), v[`${name}.bias`]);
    };
    const patches = tf.reshape(tf.transpose(tf.reshape(x, [b, g, patch, g, patch, 1]), [0, 1, 3, 2, 4, 5]), [b * g * g, patch * patch]);
    const tokens = tf.reshape(tf.add(tf.matMul(patches, v['patch_embed.proj.weight']), v['patch_embed.proj.bias']), [b, g * g, d]);
    let h = tf.add(tf.concat([tf.tile(v['cls_token'], [b, 1, 1]), tokens], 1), v['pos_embed']);
    const split = (a: TfTensor) => tf.transpose(tf.reshape(a, [b, t, heads, dh]), [0, 2, 1, 3]);
    for (let i = 0; i < depth; i++) {
      const blk = `blocks.${i}`;
      const a = tf.reshape(ln(h, `${blk}.norm1`), [b * t, d]);
      const qkv = tf.add(tf.matMul(a, v[`${blk}.attn.in_proj_weight`]), v[`${blk}.attn.in_proj_bias`]);
      const [q, k, vv] = tf.split(qkv, 3, 1).map(split);
      const attn = tf.softmax(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(dh)));
      const ctx = tf.reshape(tf.transpose(tf.matMul(attn, vv), [0, 2, 1, 3]), [b * t, d]);
      h = tf.add(h, tf.reshape(dense(ctx, v, `${blk}.attn.out_proj`), [b, t, d]));
      const f = dense(tf.reshape(ln(h, `${blk}.norm2`), [b * t, d]), v, `${blk}.mlp.fc1`);
      const gelu = tf.mul(tf.mul(f, 0.5), tf.add(1, tf.erf(tf.mul(f, Math.SQRT1_2))));
      h = tf.add(h, tf.reshape(dense(gelu, v, `${blk}.mlp.fc2`), [b, t, d]));
    }
    h = ln(h, 'norm');
    return dense(tf.reshape(tf.slice(h, [0, 0, 0], [b, 1, d]), [b, d]), v, 'head');
  };
  const logits = spec.name === 'mlp' ? mlp : spec.name === 'cnn' ? cnn : vit;
  const lossFn = (v: V) => () => tf.losses.softmaxCrossEntropy(y, logits(v)) as import('@tensorflow/tfjs').Scalar;
  return { makeVars, lossFn };
}

async function tfjsContender(tf: TF, p: Problem, name: string, backendName: 'webgpu' | 'wasm'): Promise<Contender> {
  const ok = await tf.setBackend(backendName);
  if (!ok) throw new Error(`tf.setBackend('${backendName}') returned false`);
  await tf.ready();
  const { makeVars, lossFn } = tfjsModel(tf, p);
  const sgdVars = makeVars(`${name}/sgd`);
  const samVars = makeVars(`${name}/sam`);
  const sgdList = Object.values(sgdVars);
  const samList = Object.values(samVars);
  const sgdLoss = lossFn(sgdVars);
  const samLoss = lossFn(samVars);
  const sgdOpt = tf.train.sgd(LR);
  const samBase = tf.train.sgd(LR);
  let extra = '';
  if (backendName === 'wasm') {
    extra = `, SIMD ${await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')}, multithread ${await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT')}`;
  }
  return {
    name,
    describe: `@tensorflow/tfjs-backend-${backendName} ${tf.version_core}${extra}`,
    cores: backendName === 'webgpu' ? os.cpus().length : 1,
    async sgd() {
      const loss = sgdOpt.minimize(sgdLoss, true, sgdList)!;
      const v = (await loss.data())[0];
      loss.dispose();
      return v;
    },
    async sam() {
      // As davda54/sam, per variable: e = rho g / ||g||, back up p, p += e; gradient at w + e;
      // restore p from the backup; base SGD step with the second gradient.
      const first = tf.variableGrads(samLoss, samList);
      const backups = tf.tidy(() => {
        // The global norm as davda54/sam takes it: the norm of the stacked per-tensor norms (tf.addN
        // of the ViT's 62 squared norms fails on tfjs-webgpu: its AddN shader exceeds the storage
        // buffers a stage may bind, and the pipeline is invalid).
        const norm = tf.norm(tf.stack(samList.map((v) => tf.norm(first.grads[v.name]))));
        const scale = tf.div(RHO, tf.add(norm, 1e-12));
        return samList.map((v) => {
          const old = tf.clone(v);
          v.assign(tf.add(v, tf.mul(first.grads[v.name], scale)));
          return old;
        });
      });
      tf.dispose(first.grads);
      const second = tf.variableGrads(samLoss, samList);
      second.value.dispose();
      samList.forEach((v, i) => v.assign(backups[i]));
      tf.dispose(backups);
      samBase.applyGradients(second.grads);
      tf.dispose(second.grads);
      const v = (await first.value.data())[0];
      first.value.dispose();
      return v;
    },
  };
}

type JAX = typeof import('@jax-js/jax');

async function jaxContender(jax: JAX, p: Problem, name: string, device: 'webgpu' | 'wasm'): Promise<Contender> {
  const devices = await jax.init(device);
  if (!devices.includes(device)) throw new Error(`jax.init('${device}') returned [${devices.join(', ')}]`);
  jax.defaultDevice(device);
  const { numpy: np, nn, lax, jit, valueAndGrad, grad, tree } = jax;
  type A = import('@jax-js/jax').numpy.Array;
  type P = Record<string, A>;
  const spec = p.spec;
  const b = spec.batch;
  // Dense weights as [in, out] (x @ W), conv weights OIHW (lax.conv's layout), images NCHW.
  const makeParams = (): P =>
    Object.fromEntries(spec.params.map((q) => [q.name, q.shape.length === 2 ? np.array(transpose(p.params[q.name], q.shape[0], q.shape[1])).reshape([q.shape[1], q.shape[0]]) : np.array(p.params[q.name]).reshape(q.shape)]));
  const x = np.array(p.x).reshape([b, ...spec.input]);
  const y = nn.oneHot(np.array(p.labels, { dtype: np.int32 }), CLASSES);
  // jax-js's ownership rules: every argument is consumed; .ref where a value is used again.
  const dense = (h: A, ps: P, name: string) => np.matmul(h, ps[`${name}.weight`]).add(ps[`${name}.bias`]);
  const mlp = (ps: P, xs: A): A => {
    let h = xs;
    for (let i = 0; i + 1 < MLP_SIZES.length; i++) {
      h = dense(h, ps, `${2 * i}`);
      if (i + 2 < MLP_SIZES.length) h = nn.relu(h);
    }
    return h;
  };
  const cnn = (ps: P, xs: A): A => {
    const conv = (h: A, name: string, stride: number) => {
      const pad = ps[name].shape[2] >> 1;
      return lax.conv(h, ps[name], [stride, stride], [[pad, pad], [pad, pad]]);
    };
    const bn = (h: A, name: string) => {
      const c = h.shape[1];
      const mu = h.ref.mean([0, 2, 3], { keepdims: true });
      const dev = h.sub(mu);
      const variance = np.square(dev.ref).mean([0, 2, 3], { keepdims: true });
      return dev.div(np.sqrt(variance.add(EPS))).mul(ps[`${name}.weight`].reshape([1, c, 1, 1])).add(ps[`${name}.bias`].reshape([1, c, 1, 1]));
    };
    let h = nn.relu(bn(conv(xs, '0.0.weight', 1), '0.1'));
    CNN_WIDTHS.forEach((_, s) => {
      const blk = `${s + 1}`;
      const stride = s > 0 ? 2 : 1;
      let out = nn.relu(bn(conv(h.ref, `${blk}.conv1.weight`, stride), `${blk}.bn1`));
      out = bn(conv(out, `${blk}.conv2.weight`, 1), `${blk}.bn2`);
      const shortcut = `${blk}.shortcut.0.weight` in ps ? bn(conv(h, `${blk}.shortcut.0.weight`, stride), `${blk}.shortcut.1`) : h;
      h = nn.relu(out.add(shortcut));
    });
    return dense(h.mean([2, 3]), ps, `${CNN_WIDTHS.length + 3}`);
  };
  const vit = (ps: P, xs: A): A => {
    const { dim: d, patch, heads, depth } = VIT;
    const g = VIT.image / patch;
    const t = g * g + 1;
    const dh = d / heads;
    const ln = (h: A, name: string) => {
      const mu = h.ref.mean(-1, { keepdims: true });
      const dev = h.sub(mu);
      const variance = np.square(dev.ref).mean(-1, { keepdims: true });
      return dev.div(np.sqrt(variance.add(EPS))).mul(ps[`${name}.weight`]).add(ps[`${name}.bias`]);
    };
    const emb = lax.conv(xs, ps['patch_embed.proj.weight'], [patch, patch], 'VALID').add(ps['patch_embed.proj.bias'].reshape([1, d, 1, 1]));
    const tokens = emb.reshape([b, d, g * g]).transpose([0, 2, 1]);
    let h = np.concatenate([np.broadcastTo(ps['cls_token'], [b, 1, d]), tokens], 1).add(ps['pos_embed']);
    const split = (a: A) => a.reshape([b, t, heads, dh]).transpose([0, 2, 1, 3]);
    for (let i = 0; i < depth; i++) {
      const blk = `blocks.${i}`;
      const qkv = np.matmul(ln(h.ref, `${blk}.norm1`), ps[`${blk}.attn.in_proj_weight`]).add(ps[`${blk}.attn.in_proj_bias`]);
      const q = split(qkv.ref.slice([], [], [0, d]));
      const k = split(qkv.ref.slice([], [], [d, 2 * d]));
      const v = split(qkv.slice([], [], [2 * d, 3 * d]));
      const attn = nn.softmax(np.matmul(q, k.transpose([0, 1, 3, 2])).mul(1 / Math.sqrt(dh)), -1);
      const ctx = np.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([b, t, d]);
      h = h.add(dense(ctx, ps, `${blk}.attn.out_proj`));
      const f = nn.gelu(dense(ln(h.ref, `${blk}.norm2`), ps, `${blk}.mlp.fc1`), { approximate: false });
      h = h.add(dense(f, ps, `${blk}.mlp.fc2`));
    }
    return dense(ln(h, 'norm').slice([], 0), ps, 'head');
  };
  const logits = spec.name === 'mlp' ? mlp : spec.name === 'cnn' ? cnn : vit;
  const lossFn = (ps: P, xs: A, ys: A): A => nn.logSoftmax(logits(ps, xs), -1).mul(ys).sum().mul(-1 / b);
  const update = (ps: P, g: P): P => Object.fromEntries(Object.entries(ps).map(([k, pi]) => [k, pi.sub(g[k].mul(LR))]));
  const sgdStep = jit((ps: P, xs: A, ys: A): [P, A] => {
    const [loss, g] = valueAndGrad(lossFn)(tree.ref(ps), xs, ys);
    return [update(ps, g), loss];
  });
  const samStep = jit((ps: P, xs: A, ys: A): [P, A] => {
    const [loss, g] = valueAndGrad(lossFn)(tree.ref(ps), xs.ref, ys.ref);
    const norm = np.sqrt(Object.values(g).map((gi) => np.square(gi.ref).sum()).reduce((a, c) => a.add(c)));
    const scale = np.divide(RHO, norm.add(1e-12));
    const perturbed = Object.fromEntries(Object.entries(ps).map(([k, pi]) => [k, pi.ref.add(g[k].mul(scale.ref))]));
    scale.dispose();
    const g2 = grad(lossFn)(perturbed, xs, ys);
    return [update(ps, g2), loss];
  });
  let sgdParams = makeParams();
  let samParams = makeParams();
  const run = async (step: typeof sgdStep, ps: P): Promise<[P, number]> => {
    const [next, loss] = step(ps, x.ref, y.ref);
    const v = (await loss.data())[0];
    // jax-js is lazy: make sure the updated parameters are computed too, not just the loss.
    await jax.blockUntilReady(next);
    return [next, v];
  };
  return {
    name,
    describe: `@jax-js/jax ${device} device, jit(valueAndGrad)`,
    cores: device === 'webgpu' ? os.cpus().length : 1,
    async sgd() {
      const [next, v] = await run(sgdStep, sgdParams);
      sgdParams = next;
      return v;
    },
    async sam() {
      const [next, v] = await run(samStep, samParams);
      samParams = next;
      return v;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// One process: one family

interface ContenderResult {
  name: string;
  describe: string;
  /** CPU cores it may use (its FLOP floor divides by this many one-core peaks). */
  cores: number;
  sgdMs: number | null;
  samMs: number | null;
  firstSgdMs: number | null;
  firstSamMs: number | null;
  sgdTimes: number[];
  samTimes: number[];
  /**
   * This process's CPU time (user + system, all threads) over the same steps: on a machine that
   * other work keeps busy, wall time counts the waits for a core and CPU time does not. Dawn and
   * SwiftShader run inside the process, so on WebGPU it is the emulated GPU's work too; for
   * flatgrad wasm 2T it is both threads' work (more than its wall time when both are busy).
   */
  sgdCpu?: number[];
  samCpu?: number[];
  initialLoss: number | null;
  /**
   * Loss read back by the SGD and the SAM step after warmup + minRounds steps of each (the same
   * number for every library: see runFamily; a library that fails before has none).
   */
  lastSgdLoss: number | null;
  lastSamLoss: number | null;
  steps: number;
  error?: string;
}

interface FamilyRun {
  model: ModelName;
  family: Family;
  date: string;
  pid: number;
  adapter: string;
  adapterDetails?: unknown;
  machine: { cpu: string; cores: number; node: string; loadavgBefore: number[]; loadavgAfter: number[] };
  warmup: number;
  /** Rounds run (the most any library did), and the minimum every library did (the loss check's count). */
  rounds: number;
  minRounds?: number;
  /** One core's f32x4 mul+add peak, GFLOP/s, measured in this process before the contenders start. */
  peakGflops: number;
  /** Per backend kernel, from a few SGD steps of flatgrad wasm with one thread after the rounds. */
  profile: KernelProfile[] | null;
  results: ContenderResult[];
  failures: Failure[];
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[n >> 1] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

async function runFamily(model: ModelName, family: Family, opts: { warmup: number; rounds: number; minRounds: number; budgetMs: number }): Promise<FamilyRun> {
  const loadavgBefore = os.loadavg();
  const peakGflops = await measureSimdPeak();
  const failures: Failure[] = [];
  const problem = makeProblem(model);
  const cores = os.cpus().length;
  const makers: { name: string; make: () => Promise<Contender> }[] = [];
  let adapter = '';
  let adapterDetails: unknown;

  if (family === 'webgpu') {
    // The peers find WebGPU as a browser exposes it: Dawn goes in as navigator.gpu before they load.
    if (process.platform === 'linux' && !process.env.VK_ICD_FILENAMES && existsSync(SWIFTSHADER_ICD)) process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
    const dawn = (await import('webgpu')) as unknown as { create: (o: string[]) => GPU; globals: object };
    Object.assign(globalThis, dawn.globals);
    // Every contender waits for the GPU alike: on a CPU adapter asleep between Dawn's polls (dawn.ts).
    const gpu = paceCpuAdapterWaits(dawn.create([]));
    (globalThis as Record<string, unknown>).__stepsBenchGpu = gpu; // Dawn's instance must outlive its devices
    Object.defineProperty(globalThis, 'navigator', { value: { gpu, userAgent: `Node.js ${process.version}` }, configurable: true, writable: true });
    const fg = flatgrad;
    const registry = flatgradRegistry;
    makers.push({
      name: 'flatgrad webgpu',
      make: async () => {
        const c = await flatgradContender(fg, registry, problem, 'flatgrad webgpu', cores, { backend: 'webgpu', gpu });
        const info = fg.backendInfo();
        adapter = info.adapter;
        adapterDetails = info.details;
        return c;
      },
    });
    makers.push({ name: 'flatgrad webgpu captured', make: async () => flatgradContender(fg, registry, problem, 'flatgrad webgpu captured', cores, { backend: 'webgpu', gpu }, true) });
    makers.push({
      name: 'tfjs-webgpu',
      make: async () => {
        const tf = await import('@tensorflow/tfjs');
        await import('@tensorflow/tfjs-backend-webgpu');
        return tfjsContender(tf, problem, 'tfjs-webgpu', 'webgpu');
      },
    });
    makers.push({ name: 'jax-js webgpu jit', make: async () => jaxContender(await import('@jax-js/jax'), problem, 'jax-js webgpu jit', 'webgpu') });
  } else {
    const fg = flatgrad;
    const registry = flatgradRegistry;
    makers.push({
      name: 'flatgrad wasm 2T',
      make: async () => {
        const c = await flatgradContender(fg, registry, problem, 'flatgrad wasm 2T', 2, { backend: 'wasm', threads: 2 });
        const info = fg.backendInfo();
        adapter = info.adapter;
        adapterDetails = info.details;
        return c;
      },
    });
    makers.push({ name: 'flatgrad wasm 1T', make: async () => flatgradContender(fg, registry, problem, 'flatgrad wasm 1T', 1, { backend: 'wasm', threads: 1 }) });
    makers.push({ name: 'flatgrad wasm 1T captured', make: async () => flatgradContender(fg, registry, problem, 'flatgrad wasm 1T captured', 1, { backend: 'wasm', threads: 1 }, true) });
    makers.push({
      name: 'tfjs-wasm',
      make: async () => {
        const tf = await import('@tensorflow/tfjs');
        await import('@tensorflow/tfjs-backend-wasm');
        return tfjsContender(tf, problem, 'tfjs-wasm', 'wasm');
      },
    });
    makers.push({ name: 'jax-js wasm jit', make: async () => jaxContender(await import('@jax-js/jax'), problem, 'jax-js wasm jit', 'wasm') });
  }

  const results: ContenderResult[] = [];
  const live: { c: Contender; r: ContenderResult }[] = [];
  for (const m of makers) {
    const r: ContenderResult = {
      name: m.name, describe: '', cores: 0, sgdMs: null, samMs: null, firstSgdMs: null, firstSamMs: null, sgdTimes: [], samTimes: [], sgdCpu: [], samCpu: [],
      initialLoss: null, lastSgdLoss: null, lastSamLoss: null, steps: 0,
    };
    results.push(r);
    try {
      const c = await m.make();
      r.describe = c.describe;
      r.cores = c.cores;
      live.push({ c, r });
    } catch (e) {
      r.error = `setup: ${errorText(e)}`;
      failures.push({ name: m.name, stage: 'setup', error: errorText(e) });
      console.error(`# ${m.name} failed in setup: ${errorText(e)}`);
    }
  }

  const cpuNow = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  let lastCpu = 0;
  const timed = async (f: () => Promise<number>): Promise<[number, number]> => {
    const c = cpuNow();
    const t = performance.now();
    const loss = await f();
    const ms = performance.now() - t;
    lastCpu = cpuNow() - c;
    return [ms, loss];
  };
  const drop = (x: { c: Contender; r: ContenderResult }, stage: string, e: unknown) => {
    x.r.error = `${stage}: ${errorText(e)}`;
    failures.push({ name: x.r.name, stage, error: errorText(e) });
    console.error(`# ${x.r.name} failed in ${stage}: ${errorText(e)}`);
    live.splice(live.indexOf(x), 1);
  };

  // Warmup (compiles pipelines, jit traces, fills pools); the first step of each kind is recorded.
  for (const x of live.slice()) {
    try {
      for (let i = 0; i < opts.warmup; i++) {
        const [ms, loss] = await timed(x.c.sgd);
        if (i === 0) {
          x.r.firstSgdMs = ms;
          x.r.initialLoss = loss;
        }
        x.r.lastSgdLoss = loss;
      }
      for (let i = 0; i < opts.warmup; i++) {
        const [ms, loss] = await timed(x.c.sam);
        if (i === 0) x.r.firstSamMs = ms;
        x.r.lastSamLoss = loss;
      }
      x.r.steps = opts.warmup;
      console.error(`# ${x.r.name}: warm (first SGD step ${x.r.firstSgdMs!.toFixed(0)} ms, first SAM step ${x.r.firstSamMs!.toFixed(0)} ms)`);
    } catch (e) {
      drop(x, 'warmup', e);
    }
  }

  // Rounds, interleaved, with a rotating order so that no library always follows the same one.
  // Every library does at least minRounds rounds; then each goes on until it has spent the budget
  // in timed steps (its own, so that a library taking seconds per step stops early and the fast
  // ones get enough rounds for a stable median) or reaches the cap. The losses reported as the
  // cross-library check are those after warmup + minRounds steps, a count that all of them reach.
  const minRounds = Math.min(opts.minRounds, opts.rounds);
  const spent = new Map<ContenderResult, number>();
  const wants = (x: { r: ContenderResult }) => x.r.sgdTimes.length < opts.rounds && (x.r.sgdTimes.length < minRounds || (spent.get(x.r) ?? 0) < opts.budgetMs);
  let rounds = 0;
  for (let active = live.filter(wants); active.length; active = live.filter(wants)) {
    const order = active.map((_, i) => active[(i + rounds) % active.length]);
    for (const x of order) {
      try {
        const [sgdMs, l1] = await timed(x.c.sgd);
        const sgdCpu = lastCpu;
        const [samMs, l2] = await timed(x.c.sam);
        x.r.sgdTimes.push(sgdMs);
        x.r.samTimes.push(samMs);
        x.r.sgdCpu!.push(sgdCpu);
        x.r.samCpu!.push(lastCpu);
        spent.set(x.r, (spent.get(x.r) ?? 0) + sgdMs + samMs);
        x.r.steps++;
        if (x.r.sgdTimes.length === minRounds) {
          x.r.lastSgdLoss = l1;
          x.r.lastSamLoss = l2;
        }
      } catch (e) {
        drop(x, `round ${x.r.sgdTimes.length + 1}`, e);
      }
    }
    rounds++;
  }
  let profile: KernelProfile[] | null = null;
  const profiled = live.find((x) => x.c.profile);
  if (profiled) {
    try {
      profile = await profiled.c.profile!(3);
    } catch (e) {
      failures.push({ name: profiled.r.name, stage: 'profile', error: errorText(e) });
    }
  }
  for (const r of results) {
    if (r.sgdTimes.length) r.sgdMs = median(r.sgdTimes);
    if (r.samTimes.length) r.samMs = median(r.samTimes);
    console.error(`# ${r.name}: SGD ${r.sgdMs?.toFixed(1) ?? '-'} ms, SAM ${r.samMs?.toFixed(1) ?? '-'} ms over ${r.sgdTimes.length} rounds (CPU ${r.sgdCpu?.length ? median(r.sgdCpu).toFixed(1) : '-'} / ${r.samCpu?.length ? median(r.samCpu).toFixed(1) : '-'} ms)`);
  }
  return {
    model,
    family,
    date: new Date().toISOString(),
    pid: process.pid,
    adapter,
    adapterDetails,
    machine: { cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length, node: process.version, loadavgBefore, loadavgAfter: os.loadavg() },
    warmup: opts.warmup,
    rounds,
    minRounds,
    peakGflops,
    profile,
    results,
    failures,
  };
}

// ---------------------------------------------------------------------------------------------
// The driver: processes, aggregation, report

interface Aggregate {
  family: Family;
  name: string;
  describe: string;
  cores: number;
  sgdMs: number | null;
  samMs: number | null;
  samOverSgd: number | null;
  /** Per-process medians, in process order. */
  sgdPerProcess: (number | null)[];
  samPerProcess: (number | null)[];
  /** The step's FLOP floor (its FLOPs at `cores` x the process's measured peak) / its time, in %, median over processes. */
  sgdFloorPct: number | null;
  samFloorPct: number | null;
  firstSgdMs: number | null;
  firstSamMs: number | null;
  initialLoss: number | null;
  lastSgdLoss: number | null;
  lastSamLoss: number | null;
  /** peer / flatgrad reference, per reference (>1: flatgrad is faster). */
  ratios: Record<string, { sgd: number | null; sam: number | null }>;
  /** The same from the process CPU time per step (null for sections measured without it). */
  sgdCpuMs: number | null;
  samCpuMs: number | null;
  samOverSgdCpu: number | null;
  sgdCpuPerProcess: (number | null)[];
  samCpuPerProcess: (number | null)[];
  ratiosCpu: Record<string, { sgd: number | null; sam: number | null }>;
  /**
   * A captured contender's last SGD and SAM losses against its eager twin's, per process: the
   * largest absolute difference over processes (0: equal, as they must be bit for bit on wasm),
   * null where either is missing or the row is not a captured one.
   */
  lossDiffVsEager: { sgd: number | null; sam: number | null } | null;
  errors: string[];
}

/** One model on one family: its processes and their aggregate. */
interface Section {
  model: ModelName;
  family: Family;
  date: string;
  procs: number;
  quick: boolean;
  problem: { title: string; batch: number; dtype: 'float32'; lr: number; rho: number; forwardFlops: number; sgdFlops: number; samFlops: number };
  runs: FamilyRun[];
  rows: Aggregate[];
  processErrors: string[];
}

const REFERENCES: Record<Family, string[]> = {
  webgpu: ['flatgrad webgpu', 'flatgrad webgpu captured'],
  wasm: ['flatgrad wasm 2T', 'flatgrad wasm 1T', 'flatgrad wasm 1T captured'],
};
/** Each captured contender and the eager contender whose losses it must reproduce (same steps, same weights). */
const CAPTURED_OF: Record<string, string> = { 'flatgrad webgpu captured': 'flatgrad webgpu', 'flatgrad wasm 1T captured': 'flatgrad wasm 1T' };

const med = (xs: (number | null | undefined)[]) => {
  const v = xs.filter((x): x is number => x != null);
  return v.length ? median(v) : null;
};

function aggregate(spec: ModelSpec, family: Family, runs: FamilyRun[]): Aggregate[] {
  const names = [...new Set(runs.flatMap((r) => r.results.map((x) => x.name)))];
  const floorPct = (flops: number, r: FamilyRun, x: ContenderResult | undefined, ms: number | null | undefined) =>
    x && ms != null && x.cores > 0 ? (100 * flops) / (r.peakGflops * 1e6 * x.cores) / ms : null;
  const rows: Aggregate[] = names.map((name) => {
    const per = runs.map((r) => r.results.find((x) => x.name === name));
    const sgdPerProcess = per.map((x) => x?.sgdMs ?? null);
    const samPerProcess = per.map((x) => x?.samMs ?? null);
    const last = per.filter((x) => x && x.lastSgdLoss !== null).at(-1);
    const cpuMed = (k: 'sgdCpu' | 'samCpu') => per.map((x) => (x?.[k]?.length ? median(x[k]!) : null));
    return {
      family,
      name,
      describe: per.find((x) => x?.describe)?.describe ?? '',
      cores: per.find((x) => x?.cores)?.cores ?? 0,
      sgdMs: med(sgdPerProcess),
      samMs: med(samPerProcess),
      // Each round's SAM step right after its SGD step: the ratio per round, then the median (a
      // change in the machine's load between rounds then moves both alike).
      samOverSgd: med(per.map((x) => (x?.sgdTimes.length && x.samTimes.length === x.sgdTimes.length ? median(x.samTimes.map((t, i) => t / x.sgdTimes[i])) : null))),
      sgdPerProcess,
      samPerProcess,
      sgdFloorPct: med(runs.map((r, i) => floorPct(3 * spec.forwardFlops, r, per[i], per[i]?.sgdMs))),
      samFloorPct: med(runs.map((r, i) => floorPct(6 * spec.forwardFlops, r, per[i], per[i]?.samMs))),
      firstSgdMs: med(per.map((x) => x?.firstSgdMs)),
      firstSamMs: med(per.map((x) => x?.firstSamMs)),
      initialLoss: per.find((x) => x?.initialLoss != null)?.initialLoss ?? null,
      lastSgdLoss: last?.lastSgdLoss ?? null,
      lastSamLoss: last?.lastSamLoss ?? null,
      ratios: {},
      sgdCpuMs: med(cpuMed('sgdCpu')),
      samCpuMs: med(cpuMed('samCpu')),
      samOverSgdCpu: med(per.map((x) => (x?.sgdCpu?.length && x.samCpu?.length === x.sgdCpu.length ? median(x.samCpu.map((t, i) => t / x.sgdCpu![i])) : null))),
      sgdCpuPerProcess: cpuMed('sgdCpu'),
      samCpuPerProcess: cpuMed('samCpu'),
      ratiosCpu: {},
      lossDiffVsEager: null,
      errors: [...new Set(per.map((x) => x?.error).filter((e): e is string => !!e))],
    };
  });
  for (const r of rows) {
    const twin = CAPTURED_OF[r.name];
    if (!twin) continue;
    const diff = (k: 'lastSgdLoss' | 'lastSamLoss') => {
      const ds = runs.map((run) => {
        const [a, b] = [run.results.find((x) => x.name === r.name)?.[k], run.results.find((x) => x.name === twin)?.[k]];
        return a != null && b != null ? Math.abs(a - b) : null;
      }).filter((d): d is number => d !== null);
      return ds.length ? Math.max(...ds) : null;
    };
    r.lossDiffVsEager = { sgd: diff('lastSgdLoss'), sam: diff('lastSamLoss') };
  }
  // Ratios side by side: within each process, then the median over processes.
  for (const ref of REFERENCES[family]) {
    const base = rows.find((r) => r.name === ref);
    for (const r of rows) {
      const ratio = (a: (number | null)[], b: (number | null)[] | undefined) => med(a.map((x, i) => (x !== null && b?.[i] != null ? x / b[i]! : null)));
      r.ratios[ref] = { sgd: ratio(r.sgdPerProcess, base?.sgdPerProcess), sam: ratio(r.samPerProcess, base?.samPerProcess) };
      r.ratiosCpu[ref] = { sgd: ratio(r.sgdCpuPerProcess, base?.sgdCpuPerProcess), sam: ratio(r.samCpuPerProcess, base?.samCpuPerProcess) };
    }
  }
  return rows;
}

function markdown(sections: Section[]): string {
  const lines: string[] = [];
  const out = (l = '') => lines.push(l);
  const f = (x: number | null | undefined, d = 1) => (x == null ? '-' : x.toFixed(d));
  // Percentages of a floor or a peak: two decimals below 1% (SwiftShader's steps are far below).
  const pct = (x: number | null | undefined) => (x == null ? '-' : `${x.toFixed(x < 1 ? 2 : 1)}%`);
  const m = sections.flatMap((s) => s.runs)[0]?.machine;
  out(`### Whole training steps: flatgrad against tfjs and jax-js (float32; SGD lr ${LR}; SAM rho ${RHO} over SGD)`);
  out();
  out(
    `Machine: ${m?.cores ?? '?'} x ${m?.cpu ?? '?'}, Node ${m?.node ?? '?'}. Each section: the median of its processes, ` +
      `each the median of its interleaved rounds; ratios are taken within each process (SAM / SGD per round: each SAM step runs right after its SGD step), then the median over processes. ` +
      `Every step ends with an awaited readback of its loss; on WebGPU every library waits through the one Dawn GPU object, which (on a CPU adapter) sleeps between Dawn's polls instead of spinning (src/kernels/webgpu/dawn.ts paceCpuAdapterWaits; from 2026-11-30 06:35 UTC, earlier WebGPU sections spun). The machine was shared with other work; on SwiftShader the GPU is these CPU cores, ` +
      `so the ratios measured side by side count, not the absolute times.`,
  );
  out();
  out(
    'FLOP floor: the multiply-add FLOPs of the matmuls and convolutions (forward x 3 for a SGD step, x 6 for SAM; elementwise ops, norms and softmax not counted) ' +
      'at the one-core f32x4 mul+add peak measured in the same process (bench/simd-peak.ts) times the cores a library may use: 1 for flatgrad 1T, tfjs-wasm ' +
      '(no threads) and jax-js wasm, 2 for flatgrad 2T, all cores on WebGPU (SwiftShader runs on them). "% floor" = floor / measured time.',
  );
  for (const sec of sections) {
    const refs = REFERENCES[sec.family];
    const peak = med(sec.runs.map((r) => r.peakGflops));
    out();
    out(`#### ${sec.problem.title}, batch ${sec.problem.batch}: ${sec.family} family${sec.runs[0]?.adapter ? ` (flatgrad adapter "${sec.runs[0].adapter}")` : ''}`);
    out();
    out(
      `Measured ${sec.runs.at(-1)?.date ?? sec.date}${sec.quick ? ' (--quick: not for figures)' : ''}; ${sec.procs} process(es); load average (1/5/15 min) at the start of each: ` +
        `${sec.runs.map((r) => r.machine.loadavgBefore.map((x) => x.toFixed(1)).join('/')).join(', ') || '-'}. ` +
        `Forward ${f(sec.problem.forwardFlops / 1e6)} MFLOP; SGD step ${f(sec.problem.sgdFlops / 1e6)} MFLOP, SAM step ${f(sec.problem.samFlops / 1e6)} MFLOP; ` +
        `one-core peak ${f(peak)} GFLOP/s: SGD floor ${f(peak ? sec.problem.sgdFlops / (peak * 1e6) : null, 2)} ms on one core.`,
    );
    out();
    const ratioHead = refs.flatMap((r) => [`SGD peer / ${r}`, `SAM peer / ${r}`]);
    out(`| library | SGD step ms | SAM step ms | SAM / SGD | ${ratioHead.join(' | ')} | SGD % floor | SAM % floor | SGD ms per process | SAM ms per process |`);
    out(`| --- | ---: | ---: | ---: | ${ratioHead.map(() => '---:').join(' | ')} | ---: | ---: | --- | --- |`);
    for (const r of sec.rows) {
      const ratios = refs.flatMap((ref) => [f(r.ratios[ref]?.sgd, 2), f(r.ratios[ref]?.sam, 2)]);
      if (r.sgdMs === null && r.errors.length) {
        out(`| ${r.name} | cannot run (see below) | - | - | ${ratios.join(' | ')} | - | - | - | - |`);
        continue;
      }
      out(
        `| ${r.name} | ${f(r.sgdMs)} | ${f(r.samMs)} | ${f(r.samOverSgd, 2)} | ${ratios.join(' | ')} | ${pct(r.sgdFloorPct)} | ${pct(r.samFloorPct)} | ` +
          `${r.sgdPerProcess.map((x) => f(x)).join(', ')} | ${r.samPerProcess.map((x) => f(x)).join(', ')} |`,
      );
    }
    if (sec.rows.some((r) => r.sgdCpuMs != null)) {
      out();
      out(
        'The same steps by process CPU time (user + system, all threads; Dawn and SwiftShader run in the process, so on WebGPU this is the emulated GPU\'s work too; ' +
          'flatgrad 2T counts both threads): what a busy machine distorts least. SAM / SGD per round, then the median.',
      );
      out();
      const cpuHead = refs.flatMap((r) => [`SGD peer / ${r}`, `SAM peer / ${r}`]);
      out(`| library | SGD CPU ms | SAM CPU ms | SAM / SGD (CPU) | ${cpuHead.join(' | ')} |`);
      out(`| --- | ---: | ---: | ---: | ${cpuHead.map(() => '---:').join(' | ')} |`);
      for (const r of sec.rows) {
        if (r.sgdCpuMs == null) continue;
        out(`| ${r.name} | ${f(r.sgdCpuMs)} | ${f(r.samCpuMs)} | ${f(r.samOverSgdCpu, 2)} | ${refs.flatMap((ref) => [f(r.ratiosCpu[ref]?.sgd, 2), f(r.ratiosCpu[ref]?.sam, 2)]).join(' | ')} |`);
      }
    }
    out();
    out('First step (pipeline compile / jit trace included), median over processes, and the losses as a check that every library computes the same steps:');
    out();
    // Sections measured before the minimum round count existed hold the losses of the last step.
    const r0 = sec.runs[0];
    const after = r0?.minRounds != null ? `after ${r0.warmup + r0.minRounds} steps` : 'of the last step';
    out(`| library | first SGD step ms | first SAM step ms | initial loss | SGD-model loss ${after} | SAM-model loss ${after} | captured: these losses vs eager (SGD, SAM) | what ran |`);
    out('| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |');
    const vsEager = (r: Aggregate) => {
      const d = r.lossDiffVsEager;
      if (!d) return '-';
      const one = (x: number | null) => (x == null ? 'n/a' : x === 0 ? 'equal' : `differ by ${x.toExponential(1)}`);
      return `${one(d.sgd)}, ${one(d.sam)}`;
    };
    for (const r of sec.rows) {
      out(`| ${r.name} | ${f(r.firstSgdMs, 0)} | ${f(r.firstSamMs, 0)} | ${f(r.initialLoss, 5)} | ${f(r.lastSgdLoss, 5)} | ${f(r.lastSamLoss, 5)} | ${vsEager(r)} | ${r.describe || '-'} |`);
    }
    // Per kernel: the profile of the last process that has one.
    const prof = sec.runs.filter((r) => r.profile).at(-1);
    if (prof?.profile) {
      const total = prof.profile.reduce((a, k) => a + k.msPerStep, 0);
      out();
      out(
        `flatgrad wasm 1T, one SGD step by backend kernel (mean of 3 extra steps after the rounds, last process; kernel calls timed one by one, ` +
          `${f(total)} ms of kernels per step; % peak = GFLOP/s / ${f(prof.peakGflops)}):`,
      );
      out();
      out('| kernel | calls per step | ms per step | share | MFLOP per step | GFLOP/s | % peak |');
      out('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
      for (const k of prof.profile) {
        if (k.msPerStep < 0.01 * total && !k.flopsPerStep) continue;
        const gflops = k.flopsPerStep ? k.flopsPerStep / (k.msPerStep * 1e6) : null;
        out(
          `| ${k.kernel} | ${f(k.callsPerStep, 0)} | ${f(k.msPerStep, 2)} | ${f((100 * k.msPerStep) / total)}% | ${k.flopsPerStep ? f(k.flopsPerStep / 1e6) : '-'} | ` +
            `${f(gflops)} | ${gflops ? pct((100 * gflops) / prof.peakGflops) : '-'} |`,
        );
      }
      const rest = prof.profile.filter((k) => k.msPerStep < 0.01 * total && !k.flopsPerStep);
      if (rest.length) out(`| ${rest.length} other kernels, each < 1% | ${f(rest.reduce((a, k) => a + k.callsPerStep, 0), 0)} | ${f(rest.reduce((a, k) => a + k.msPerStep, 0), 2)} | ${f((100 * rest.reduce((a, k) => a + k.msPerStep, 0)) / total)}% | - | - | - |`);
    }
    const errors = [...sec.processErrors.map((e) => `process: ${e}`), ...sec.rows.flatMap((r) => r.errors.map((e) => `${r.name}: ${e}`)), ...sec.runs.flatMap((r) => r.failures.filter((x) => x.stage === 'profile').map((x) => `${x.name} profile: ${x.error}`))];
    if (errors.length) {
      out();
      out('Failures (exact error text):');
      out();
      for (const e of [...new Set(errors)]) out(`- ${e.replace(/\n/g, ' ').slice(0, 600)}`);
    }
  }
  return lines.join('\n') + '\n';
}

const RESULTS_JSON = 'bench/results/steps.json';
/** Warm-up steps a captured contender needs before its steps are replays (see child()). */
const CAPTURED_WARMUP = 3;

async function driver(): Promise<void> {
  const arg = (k: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3);
  const quick = process.argv.includes('--quick');
  const procs = Number(arg('procs') ?? (quick ? 1 : 3));
  const families = (arg('families') ?? 'webgpu,wasm').split(',') as Family[];
  const models = (arg('models') ?? MODEL_NAMES.join(',')).split(',') as ModelName[];
  for (const mo of models) if (!MODEL_NAMES.includes(mo)) throw new RangeError(`--models: unknown model '${mo}' (known: ${MODEL_NAMES.join(', ')})`);
  const passThrough = process.argv.slice(2).filter((a) => /^--(quick|rounds=|warmup=|budget=)/.test(a));
  const self = process.argv[1];
  const tmp = path.join(os.tmpdir(), `flatgrad-steps-${process.pid}`);
  mkdirSync(tmp, { recursive: true });
  const fromJson = process.argv.includes('--from-json');
  const sections: Section[] = [];
  if (!fromJson) {
    const runs = new Map<string, { runs: FamilyRun[]; processErrors: string[] }>();
    for (const mo of models) for (const fam of families) runs.set(`${mo}/${fam}`, { runs: [], processErrors: [] });
    // Processes alternate between models and families, so that a change in the machine's load hits all of them.
    for (let p = 0; p < procs; p++) {
      for (const mo of models) {
        for (const fam of families) {
          const out = path.join(tmp, `${mo}-${fam}-${p}.json`);
          const slot = runs.get(`${mo}/${fam}`)!;
          console.error(`## steps: ${mo} on ${fam}, process ${p + 1} of ${procs} (load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')})`);
          const res = spawnSync(process.execPath, [self, `--family=${fam}`, `--model=${mo}`, `--out=${out}`, ...passThrough], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 20 * 60_000 });
          if (existsSync(out)) slot.runs.push(JSON.parse(readFileSync(out, 'utf8')) as FamilyRun);
          else slot.processErrors.push(`process ${p + 1} exited with ${res.error ? errorText(res.error) : `status ${res.status} signal ${res.signal}`} and wrote no result`);
        }
      }
    }
    for (const [key, slot] of runs) {
      const [mo, fam] = key.split('/') as [ModelName, Family];
      const spec = SPECS[mo]();
      sections.push({
        model: mo,
        family: fam,
        date: new Date().toISOString(),
        procs,
        quick,
        problem: { title: spec.title, batch: spec.batch, dtype: 'float32', lr: LR, rho: RHO, forwardFlops: spec.forwardFlops, sgdFlops: 3 * spec.forwardFlops, samFlops: 6 * spec.forwardFlops },
        runs: slot.runs,
        rows: [],
        processErrors: slot.processErrors,
      });
    }
  }
  rmSync(tmp, { recursive: true, force: true });
  // Sections of an earlier run that this one does not measure are kept, so that families and
  // models can be measured in separate runs into one report; the file is read now, after the
  // measurements, so that runs of different sections side by side keep each other's results.
  // --from-json: only the report again.
  const old: Section[] = existsSync(RESULTS_JSON) ? ((JSON.parse(readFileSync(RESULTS_JSON, 'utf8')) as { sections?: Section[] }).sections ?? []) : [];
  for (const o of old) if (!sections.some((s) => s.model === o.model && s.family === o.family)) sections.push(o);
  sections.sort((a, b) => MODEL_NAMES.indexOf(a.model) - MODEL_NAMES.indexOf(b.model) || a.family.localeCompare(b.family));
  for (const s of sections) s.rows = aggregate(SPECS[s.model](), s.family, s.runs);
  mkdirSync('bench/results', { recursive: true });
  writeFileSync(RESULTS_JSON, JSON.stringify({ sections }, null, 1) + '\n');
  const md = markdown(sections);
  writeFileSync('bench/results/steps.md', md);
  console.log(md);
}

async function child(model: ModelName, family: Family, outFile: string): Promise<void> {
  const arg = (k: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3);
  const quick = process.argv.includes('--quick');
  // SwiftShader runs a CNN step for tens of seconds and a ViT step for seconds (tfjs-webgpu's
  // longest): there, few required rounds keep a process within minutes, and the budget (each
  // library's own time in timed steps) gives the faster libraries more rounds.
  const defaults =
    family === 'wasm'
      ? { warmup: 3, rounds: quick ? 5 : 40, minRounds: 3, budgetMs: quick ? 2_000 : 8_000 }
      : model === 'cnn'
        ? { warmup: 3, rounds: quick ? 2 : 5, minRounds: 1, budgetMs: quick ? 0 : 15_000 }
        : model === 'vit'
          ? { warmup: 3, rounds: quick ? 2 : 7, minRounds: 2, budgetMs: quick ? 0 : 10_000 }
          : { warmup: 3, rounds: quick ? 3 : 9, minRounds: 3, budgetMs: quick ? 5_000 : 10_000 };
  const run = await runFamily(model, family, {
    // The captured contenders run eagerly on their first call, trace on their second and replay
    // from the third (WebGPU records its command streams on the first replay): at least three
    // warm-up steps, so that every timed step of theirs is a replay.
    warmup: Math.max(CAPTURED_WARMUP, Number(arg('warmup') ?? defaults.warmup)),
    rounds: Number(arg('rounds') ?? defaults.rounds),
    minRounds: defaults.minRounds,
    budgetMs: Number(arg('budget') ?? defaults.budgetMs / 1000) * 1000,
  });
  writeFileSync(outFile, JSON.stringify(run) + '\n');
}

const familyArg = process.argv.find((a) => a.startsWith('--family='))?.slice('--family='.length) as Family | undefined;
if (familyArg) {
  const model = (process.argv.find((a) => a.startsWith('--model='))?.slice('--model='.length) ?? 'mlp') as ModelName;
  const outFile = process.argv.find((a) => a.startsWith('--out='))?.slice('--out='.length) ?? `bench/results/steps-${model}-${familyArg}.tmp`;
  await child(model, familyArg, outFile);
} else {
  await driver();
}
// Worker threads (flatgrad's and tfjs's) and Dawn keep the event loop alive.
process.exit(0);
