/**
 * The demo page: loads the shipped Fashion-MNIST subset, trains two configurations side by side
 * (one step each in turn, awaiting each so the page stays live), draws their curves, and at the
 * end a 1-D loss-landscape slice of both solutions and a grid of test predictions.
 *
 * URL parameters (for links and for test/browser.test.ts): steps, batch, evalEvery, evalSize,
 * points (landscape), seed, backend (webgpu|wasm|cpu), autostart=1, and per configuration
 * aModel/aBase/aLr/aWrapper/aRho and the same with b. `window.__flatgradDemo` mirrors the state.
 */
import * as fg from '../src/index.js';
import type { Tensor } from '../src/index.js';
import { LineChart, type Series } from './chart.js';
import {
  AVAILABLE_WRAPPERS,
  BASE_NAMES,
  DEFAULT_RHO,
  USES_RHO,
  MODEL_NAMES,
  Run,
  WRAPPER_NAMES,
  describeConfig,
  type BaseName,
  type ModelName,
  type RunConfig,
  type WrapperName,
} from './train.js';

type BackendName = 'webgpu' | 'wasm' | 'cpu';
type Phase = 'loading' | 'ready' | 'training' | 'landscape' | 'done' | 'stopped' | 'error';

interface RunState {
  label: string;
  config: RunConfig;
  description: string;
  step: number;
  loss: number | null;
  batchAccuracy: number | null;
  testAccuracy: number | null;
  stepsPerSecond: number;
  parameters: number;
  /** The captured step (fg.compile): calls replayed and traced, and why it runs eagerly (null: it does not). */
  capture: { replays: number; traces: number; fallback: string | null };
}

interface DemoState {
  phase: Phase;
  message: string;
  error: string | null;
  webgpu: { available: boolean; reason: string; adapter: string | null; software: boolean };
  backend: string | null;
  adapter: string | null;
  step: number;
  steps: number;
  runs: RunState[];
  landscape: { label: string; alphas: number[]; losses: number[] }[] | null;
  predictions: { truth: number[]; a: number[]; b: number[] } | null;
  /** Milliseconds of the last training, start to end (landscape included). */
  elapsedMs: number;
  /** The backend's live buffers before the last training and after it was cleaned up (a leak check). */
  memory: { before: fg.MemoryInfo | null; after: fg.MemoryInfo | null };
}

const state: DemoState = {
  phase: 'loading',
  message: 'Loading Fashion-MNIST…',
  error: null,
  webgpu: { available: false, reason: 'not checked yet', adapter: null, software: false },
  backend: null,
  adapter: null,
  step: 0,
  steps: 0,
  runs: [],
  landscape: null,
  predictions: null,
  elapsedMs: 0,
  memory: { before: null, after: null },
};
(globalThis as unknown as { __flatgradDemo: DemoState }).__flatgradDemo = state;

const COLORS = { a: '#2563eb', b: '#ea580c' };
const params = new URLSearchParams(location.search);
const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`page is missing #${id}`);
  return el as T;
};

// ------------------------------------------------------------------ data

interface Split {
  images: Uint8Array;
  labels: Uint8Array;
  features: Float32Array;
  n: number;
}
let train: Split | null = null;
let test: Split | null = null;

async function fetchBytes(url: string): Promise<Uint8Array> {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`could not fetch ${url}: HTTP ${res.status} ${res.statusText}`);
  return new Uint8Array(await res.arrayBuffer());
}

async function loadSplit(split: 'train' | 'test'): Promise<Split> {
  const files = fg.data.fashionMnistFiles(split);
  const base = 'data/fashion-mnist-subset/';
  const [imgBytes, lblBytes] = await Promise.all([fetchBytes(base + files.images), fetchBytes(base + files.labels)]);
  const [images, labels] = await Promise.all([fg.data.decodeIdx(imgBytes, files.images), fg.data.decodeIdx(lblBytes, files.labels)]);
  const set = fg.data.fashionMnistFromIdx(images, labels, files);
  const features = fg.data.normalize(set.images, fg.data.FASHION_MNIST_MEAN, fg.data.FASHION_MNIST_STD);
  return { images: set.images, labels: set.labels, features, n: set.n };
}

function batchOf(s: Split, indices: ArrayLike<number>): { x: Float32Array; xShape: number[]; y: Int32Array } {
  const x = new Float32Array(indices.length * 784);
  const y = new Int32Array(indices.length);
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k];
    x.set(s.features.subarray(i * 784, (i + 1) * 784), k * 784);
    y[k] = s.labels[i];
  }
  return { x, xShape: [indices.length, 1, 28, 28], y };
}

/** Two test images per class, the first ones in file order: the prediction grid. */
function gridIndices(s: Split, perClass = 2): number[] {
  const out: number[] = [];
  for (let c = 0; c < 10; c++) {
    let taken = 0;
    for (let i = 0; i < s.n && taken < perClass; i++) if (s.labels[i] === c) (out.push(i), taken++);
  }
  return out;
}

// ------------------------------------------------------------------ WebGPU detection

async function probeWebGPU(): Promise<DemoState['webgpu']> {
  const nav = navigator as Navigator & { gpu?: GPU };
  if (!nav.gpu) {
    const reason = window.isSecureContext
      ? 'this browser has no WebGPU (navigator.gpu is missing). Recent Chrome and Edge have it; in Firefox and Safari it may need turning on.'
      : 'this page is not a secure context, and browsers offer WebGPU only to https:// pages and http://localhost or 127.0.0.1.';
    return { available: false, reason, adapter: null, software: false };
  }
  try {
    const adapter = await nav.gpu.requestAdapter();
    if (!adapter) {
      return {
        available: false,
        reason: 'WebGPU is there, but the browser offers no GPU adapter (navigator.gpu.requestAdapter() returned null): the GPU or its driver may be blocklisted, or WebGPU is disabled.',
        adapter: null,
        software: false,
      };
    }
    const i = adapter.info;
    const name = [i.description || i.device || 'WebGPU adapter', [i.vendor, i.architecture].filter(Boolean).join(' ')].filter(Boolean).join(' · ');
    const software = /swiftshader|llvmpipe|lavapipe|software|warp|basic render/i.test(`${i.vendor} ${i.architecture} ${i.device} ${i.description}`);
    return { available: true, reason: '', adapter: name, software };
  } catch (e) {
    return { available: false, reason: `requesting a WebGPU adapter failed: ${(e as Error).message}`, adapter: null, software: false };
  }
}

function showBanner(): void {
  const el = $('backend-banner');
  const w = state.webgpu;
  el.replaceChildren();
  if (w.available && !w.software) {
    el.className = 'banner ok';
    el.textContent = `WebGPU is available: training runs on your GPU (${w.adapter}).`;
    return;
  }
  if (w.available) {
    el.className = 'banner warn';
    el.append(
      `WebGPU is available, but on a software adapter (${w.adapter}) that emulates a GPU on the processor: correct, and slow. ` +
        'The WebAssembly backend is faster here.',
    );
    el.append(button('Use WebAssembly', () => chooseBackend('wasm')));
    return;
  }
  el.className = 'banner error';
  const b = document.createElement('b');
  b.textContent = 'No WebGPU: ';
  el.append(b, `${w.reason} You can still train here, on the processor (WebAssembly is selected below): `);
  el.append(button('Use WebAssembly', () => chooseBackend('wasm')), button('Use plain TypeScript', () => chooseBackend('cpu')));
}

function button(text: string, onClick: () => void): HTMLButtonElement {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.addEventListener('click', onClick);
  return b;
}

function chooseBackend(name: BackendName): void {
  $<HTMLSelectElement>('backend').value = name;
  setStatus(`Backend: ${backendLabel(name)}. Press “Train both”.`);
}

function backendLabel(name: string): string {
  return name === 'webgpu' ? 'WebGPU' : name === 'wasm' ? 'WebAssembly' : 'plain TypeScript (CPU)';
}

// ------------------------------------------------------------------ controls

/** A setting the visitor can fix: shown in the status line, not logged as a page error. */
class InputError extends RangeError {
  override name = 'InputError';
}

interface ConfigControls {
  model: HTMLSelectElement;
  base: HTMLSelectElement;
  lr: HTMLInputElement;
  wrapper: HTMLSelectElement;
  rho: HTMLInputElement;
}

const DEFAULTS: Record<'a' | 'b', RunConfig> = {
  a: { model: 'mlp', base: 'sgd', lr: 0.05, wrapper: 'none', rho: 0.05 },
  b: { model: 'mlp', base: 'sgd', lr: 0.05, wrapper: 'sam', rho: 0.05 },
};
const DEFAULT_LR: Record<BaseName, number> = { sgd: 0.05, adamw: 0.001 };

function select<T extends string>(options: Record<T, string>, value: T, enabled: (k: T) => boolean = () => true): HTMLSelectElement {
  const s = document.createElement('select');
  for (const [k, text] of Object.entries(options) as [T, string][]) {
    const o = document.createElement('option');
    o.value = k;
    o.textContent = enabled(k) ? text : `${text} (not in this build)`;
    o.disabled = !enabled(k);
    s.append(o);
  }
  s.value = value;
  return s;
}

function numberInput(value: number, min: number, max: number, step: number): HTMLInputElement {
  const i = document.createElement('input');
  i.type = 'number';
  i.min = String(min);
  i.max = String(max);
  i.step = String(step);
  i.value = String(value);
  return i;
}

function labeled(text: string, control: HTMLElement, title?: string): HTMLLabelElement {
  const l = document.createElement('label');
  l.append(text, control);
  if (title) l.title = title;
  return l;
}

function urlConfig(key: 'a' | 'b'): RunConfig {
  const d = DEFAULTS[key];
  const get = (name: string) => params.get(key + name);
  const num = (name: string, fallback: number) => {
    const v = Number(get(name));
    return get(name) !== null && Number.isFinite(v) ? v : fallback;
  };
  const pick = <T extends string>(name: string, allowed: Record<T, string>, fallback: T): T => {
    const v = get(name);
    return v !== null && v in allowed ? (v as T) : fallback;
  };
  const base = pick('Base', BASE_NAMES, d.base);
  return {
    model: pick('Model', MODEL_NAMES, d.model),
    base,
    lr: num('Lr', base === d.base ? d.lr : DEFAULT_LR[base]),
    wrapper: pick('Wrapper', WRAPPER_NAMES, d.wrapper),
    rho: num('Rho', get('Wrapper') !== null ? DEFAULT_RHO[pick('Wrapper', WRAPPER_NAMES, d.wrapper)] : d.rho),
  };
}

function buildConfig(key: 'a' | 'b'): ConfigControls {
  const c = urlConfig(key);
  const box = $(`config-${key}`);
  const controls: ConfigControls = {
    model: select(MODEL_NAMES, c.model),
    base: select(BASE_NAMES, c.base),
    lr: numberInput(c.lr, 0, 10, 0.001),
    wrapper: select(WRAPPER_NAMES, c.wrapper, (w) => AVAILABLE_WRAPPERS.includes(w)),
    rho: numberInput(c.rho, 0, 5, 0.01),
  };
  box.append(
    labeled('Model', controls.model),
    labeled('Base optimizer', controls.base),
    labeled('Learning rate', controls.lr),
    labeled('Sharpness-aware', controls.wrapper, 'The wrapper around the base optimizer'),
    labeled('rho', controls.rho, 'Radius of the neighbourhood SAM looks at (0 gives the base optimizer)'),
  );
  const syncRho = () => (controls.rho.disabled = !USES_RHO[controls.wrapper.value as WrapperName] || running);
  controls.wrapper.addEventListener('change', () => {
    controls.rho.value = String(DEFAULT_RHO[controls.wrapper.value as WrapperName]);
    syncRho();
  });
  controls.base.addEventListener('change', () => (controls.lr.value = String(DEFAULT_LR[controls.base.value as BaseName])));
  syncRho();
  return controls;
}

function readConfig(c: ConfigControls, key: string): RunConfig {
  const lr = Number(c.lr.value);
  const rho = Number(c.rho.value);
  if (!(lr > 0 && Number.isFinite(lr))) throw new InputError(`configuration ${key}: the learning rate must be a positive number, got “${c.lr.value}”`);
  if (!(rho >= 0 && Number.isFinite(rho))) throw new InputError(`configuration ${key}: rho must be zero or positive, got “${c.rho.value}”`);
  return { model: c.model.value as ModelName, base: c.base.value as BaseName, lr, wrapper: c.wrapper.value as WrapperName, rho };
}

function intInput(id: string, min: number, max: number): number {
  const el = $<HTMLInputElement>(id);
  const v = Number(el.value);
  if (!Number.isInteger(v) || v < min || v > max) {
    const name = el.closest('label')?.firstChild?.textContent?.trim() ?? id;
    throw new InputError(`${name} must be a whole number from ${min} to ${max}, got “${el.value}”`);
  }
  return v;
}

let controlsA: ConfigControls;
let controlsB: ConfigControls;
let running = false;
let stopRequested = false;

function setRunning(on: boolean): void {
  running = on;
  for (const el of document.querySelectorAll<HTMLInputElement | HTMLSelectElement>('.controls input, .controls select')) el.disabled = on;
  if (!on) for (const c of [controlsA, controlsB]) c.rho.disabled = !USES_RHO[c.wrapper.value as WrapperName];
  $<HTMLButtonElement>('train').disabled = on || !train;
  $<HTMLButtonElement>('stop').disabled = !on;
}

function setStatus(text: string, error = false): void {
  const el = $('status');
  el.textContent = text;
  el.className = error ? 'status error' : 'status';
  state.message = text;
}

function setProgress(fraction: number): void {
  $('progress-bar').style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
}

// ------------------------------------------------------------------ charts and tables

let lossChart: LineChart;
let accChart: LineChart;
let landscapeChart: LineChart;

/** Exponential running mean, for readable curves from noisy per-batch values. */
function smooth(points: [number, number][], beta = 0.9): [number, number][] {
  let m = 0;
  return points.map(([x, y], i) => {
    m = beta * m + (1 - beta) * y;
    return [x, m / (1 - beta ** (i + 1))];
  });
}

function drawCharts(runs: Run[]): void {
  const loss: Series[] = [];
  const acc: Series[] = [];
  runs.forEach((r, i) => {
    const color = i === 0 ? COLORS.a : COLORS.b;
    loss.push({ label: '', color: color + '55', points: r.curves.loss });
    loss.push({ label: r.label, color, points: smooth(r.curves.loss) });
    acc.push({ label: `${r.label} train`, color, points: smooth(r.curves.trainAcc) });
    acc.push({ label: `${r.label} test`, color, points: r.curves.testAcc, dashed: true, markers: true });
  });
  lossChart.setSeries(loss);
  accChart.setSeries(acc);
}

function fmt(v: number | null, digits = 3): string {
  return v === null || !Number.isFinite(v) ? '–' : v.toFixed(digits);
}
function pct(v: number | null): string {
  return v === null || !Number.isFinite(v) ? '–' : `${(v * 100).toFixed(1)}%`;
}

function renderStats(): void {
  const body = document.querySelector('#stats tbody')!;
  body.replaceChildren(
    ...state.runs.map((r, i) => {
      const tr = document.createElement('tr');
      const sw = document.createElement('span');
      sw.className = `swatch ${i === 0 ? 'a' : 'b'}`;
      const cells = [
        r.description,
        `${r.step} / ${state.steps}`,
        fmt(r.loss),
        pct(r.batchAccuracy),
        pct(r.testAccuracy),
        r.stepsPerSecond ? r.stepsPerSecond.toFixed(2) : '–',
        r.parameters.toLocaleString('en-US'),
      ];
      const first = document.createElement('td');
      first.append(sw, r.label);
      tr.append(first, ...cells.map((c) => Object.assign(document.createElement('td'), { textContent: c })));
      return tr;
    }),
  );
}

function syncRunState(runs: Run[]): void {
  state.runs = runs.map((r) => {
    const last = <T>(a: T[]): T | null => (a.length ? a[a.length - 1] : null);
    return {
      label: r.label,
      config: r.config,
      description: describeConfig(r.config),
      step: r.steps,
      loss: last(r.curves.loss)?.[1] ?? null,
      batchAccuracy: last(smooth(r.curves.trainAcc))?.[1] ?? null,
      testAccuracy: last(r.curves.testAcc)?.[1] ?? null,
      stepsPerSecond: r.stepsPerSecond,
      parameters: r.parameterCount,
      capture: { replays: r.trainStep.stats().replays, traces: r.trainStep.stats().traces, fallback: r.trainStep.fallback },
    };
  });
  renderStats();
}

function drawDigit(canvas: HTMLCanvasElement, pixels: Uint8Array): void {
  canvas.width = 28;
  canvas.height = 28;
  const ctx = canvas.getContext('2d')!;
  const img = ctx.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const v = pixels[i];
    img.data.set([v, v, v, 255], i * 4);
  }
  ctx.putImageData(img, 0, 0);
}

function renderPredictions(indices: number[], preds: (Int32Array | null)[], labels: string[]): void {
  if (!test) return;
  const classes = fg.data.FASHION_MNIST_CLASSES;
  const cells = indices.map((idx, k) => {
    const cell = document.createElement('div');
    cell.className = 'pred';
    const c = document.createElement('canvas');
    drawDigit(c, test!.images.subarray(idx * 784, (idx + 1) * 784));
    const truth = test!.labels[idx];
    const t = document.createElement('div');
    t.className = 'truth';
    t.textContent = classes[truth];
    cell.append(c, t);
    preds.forEach((p, j) => {
      const g = document.createElement('span');
      if (!p) {
        g.className = 'guess none';
        g.textContent = `${labels[j]}: ?`;
      } else {
        const ok = p[k] === truth;
        g.className = `guess ${ok ? 'ok' : 'bad'}`;
        g.textContent = `${labels[j]}: ${classes[p[k]]}`;
        g.title = `${labels[j]} says ${classes[p[k]]} (${ok ? 'right' : 'wrong'})`;
      }
      cell.append(g);
    });
    return cell;
  });
  $('predictions').replaceChildren(...cells);
}

// ------------------------------------------------------------------ training

let currentBackend: string | null = null;

async function ensureBackend(name: BackendName): Promise<void> {
  if (currentBackend === name) return;
  setStatus(`Starting the ${backendLabel(name)} backend…`);
  const info = await fg.init({ backend: name });
  currentBackend = name;
  state.backend = info.name;
  state.adapter = info.adapter;
}

const nextTick = () => new Promise<void>((r) => setTimeout(r, 0));

async function trainBoth(): Promise<void> {
  if (running || !train || !test) return;
  const trainSet = train;
  const testSet = test;
  let runs: Run[] = [];
  const live: Tensor[] = [];
  const t0 = performance.now();
  try {
    const cfgA = readConfig(controlsA, 'A');
    const cfgB = readConfig(controlsB, 'B');
    const steps = intInput('steps', 1, 100000);
    const batch = intInput('batch', 1, 1024);
    const evalEvery = intInput('eval-every', 1, 100000);
    const seed = intInput('seed', 0, 2 ** 31 - 1);
    const evalSize = Math.min(testSet.n, Math.max(10, Number(params.get('evalSize')) || 1000));
    const points = Math.max(3, Math.min(101, Number(params.get('points')) || 21));
    const backend = $<HTMLSelectElement>('backend').value as BackendName;
    if ([cfgA, cfgB].some((c) => c.wrapper === 'msam') && batch < 4) throw new InputError('m-SAM splits each batch into 4 micro-batches: the batch size must be at least 4');

    setRunning(true);
    stopRequested = false;
    Object.assign(state, { phase: 'training', error: null, step: 0, steps, landscape: null, predictions: null });
    landscapeChart.setSeries([]);
    await ensureBackend(backend);
    state.memory = { before: fg.memory(), after: null };
    setStatus(`Building the networks on ${backendLabel(backend)} (${state.adapter})…`);
    const eager = !$<HTMLInputElement>('captured').checked;
    runs = [new Run('A', cfgA, seed, { eager }), new Run('B', cfgB, seed, { eager })];
    syncRunState(runs);
    drawCharts(runs);

    const loader = new fg.data.DataLoader(
      new fg.data.ArrayDataset(trainSet.features, [1, 28, 28], Int32Array.from(trainSet.labels)),
      { batchSize: batch, shuffle: true, seed, dropLast: true },
    );
    let epoch = loader[Symbol.iterator]();
    const evalBatches: { x: Float32Array; xShape: number[]; y: Int32Array }[] = [];
    for (let s = 0; s < evalSize; s += 250) {
      evalBatches.push(batchOf(testSet, Array.from({ length: Math.min(250, evalSize - s) }, (_, i) => s + i)));
    }

    const evaluateAll = async () => {
      for (const r of runs) await r.evaluate(evalBatches);
      syncRunState(runs);
      drawCharts(runs);
    };

    let step = 0;
    for (; step < steps && !stopRequested; step++) {
      let next = epoch.next();
      if (next.done) {
        epoch = loader[Symbol.iterator]();
        next = epoch.next();
      }
      const b = next.value;
      const x = fg.tensor(b.x, { shape: b.xShape });
      const y = fg.tensor(b.y);
      live.push(x, y);
      for (const r of runs) {
        const { loss } = await r.step(x, y);
        if (!Number.isFinite(loss)) console.warn(`flatgrad demo: configuration ${r.label} had a non-finite loss at step ${r.steps}`);
        await nextTick();
      }
      fg.dispose(live.splice(0));
      state.step = step + 1;
      if ((step + 1) % evalEvery === 0 && step + 1 < steps) await evaluateAll();
      syncRunState(runs);
      drawCharts(runs);
      setProgress((step + 1) / steps);
      setStatus(`Training on ${backendLabel(backend)}: step ${step + 1} of ${steps}…`);
    }
    if (step === 0) {
      state.phase = 'stopped';
      setStatus('Stopped before the first step.');
      return;
    }
    setStatus('Measuring test accuracy…');
    await evaluateAll();

    state.phase = 'landscape';
    setStatus('Computing the loss landscape around both solutions…');
    const probe = batchOf(trainSet, Array.from({ length: Math.min(256, trainSet.n) }, (_, i) => i));
    const px = fg.tensor(probe.x, { shape: probe.xShape });
    const py = fg.tensor(probe.y);
    live.push(px, py);
    const slices: { label: string; alphas: number[]; losses: number[] }[] = [];
    for (const r of runs) {
      const s = await r.landscape(px, py, points, seed + 1);
      slices.push({ label: r.label, ...s });
      landscapeChart.setSeries(
        slices.map((sl, i) => ({ label: `${sl.label}`, color: i === 0 ? COLORS.a : COLORS.b, points: sl.alphas.map((a, j): [number, number] => [a, sl.losses[j]]), markers: true })),
      );
      await nextTick();
    }
    state.landscape = slices;

    const idx = gridIndices(testSet);
    const gb = batchOf(testSet, idx);
    const gx = fg.tensor(gb.x, { shape: gb.xShape });
    live.push(gx);
    const preds: Int32Array[] = [];
    for (const r of runs) preds.push(await r.predict(gx));
    renderPredictions(idx, preds, runs.map((r) => r.label));
    state.predictions = { truth: idx.map((i) => testSet.labels[i]), a: Array.from(preds[0]), b: Array.from(preds[1]) };

    state.phase = stopRequested ? 'stopped' : 'done';
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    const [ra, rb] = state.runs;
    setStatus(
      `${stopRequested ? 'Stopped' : 'Done'} after ${step} steps in ${secs} s. Test accuracy: A ${pct(ra.testAccuracy)}, B ${pct(rb.testAccuracy)}.`,
    );
  } catch (e) {
    const err = e as Error;
    state.phase = 'error';
    state.error = err.message;
    setStatus(err instanceof InputError ? err.message : `Error: ${err.message}`, true);
    if (!(err instanceof InputError)) console.error(err);
  } finally {
    fg.dispose(live);
    for (const r of runs) r.dispose();
    if (currentBackend) {
      fg.flush();
      state.memory.after = fg.memory();
    }
    state.elapsedMs = performance.now() - t0;
    setRunning(false);
  }
}

// ------------------------------------------------------------------ start-up

async function main(): Promise<void> {
  lossChart = new LineChart($('chart-loss'), { title: 'Training loss', xLabel: 'step', yLabel: 'cross-entropy', emptyText: 'press “Train both”' });
  accChart = new LineChart($('chart-acc'), {
    title: 'Accuracy',
    xLabel: 'step',
    yLabel: 'accuracy',
    yRange: [0, 1],
    yFormat: (v) => `${Math.round(v * 100)}%`,
    emptyText: 'press “Train both”',
  });
  landscapeChart = new LineChart($('chart-landscape'), {
    title: 'Loss landscape (1-D slice)',
    xLabel: 'distance along a random filter-normalised direction (0 = trained weights)',
    yLabel: 'training loss',
    xRange: [-1, 1],
    emptyText: 'drawn when training ends',
  });
  controlsA = buildConfig('a');
  controlsB = buildConfig('b');
  for (const [id, key] of [['steps', 'steps'], ['batch', 'batch'], ['eval-every', 'evalEvery'], ['seed', 'seed']] as const) {
    const v = params.get(key);
    if (v !== null) $<HTMLInputElement>(id).value = v;
  }
  $('train').addEventListener('click', () => void trainBoth());
  $('stop').addEventListener('click', () => {
    stopRequested = true;
    setStatus('Stopping after this step…');
  });
  window.addEventListener('resize', () => [lossChart, accChart, landscapeChart].forEach((c) => c.draw()));

  const [gpu] = await Promise.all([
    probeWebGPU(),
    (async () => {
      [train, test] = await Promise.all([loadSplit('train'), loadSplit('test')]);
    })().catch((e: Error) => {
      state.phase = 'error';
      state.error = e.message;
      setStatus(`Could not load the data set: ${e.message}`, true);
      console.error(e);
    }),
  ]);
  state.webgpu = gpu;
  showBanner();
  const backendSel = $<HTMLSelectElement>('backend');
  const wanted = params.get('backend');
  if (wanted === 'webgpu' || wanted === 'wasm' || wanted === 'cpu') backendSel.value = wanted;
  else backendSel.value = gpu.available ? 'webgpu' : 'wasm';
  (backendSel.querySelector('option[value=webgpu]') as HTMLOptionElement).disabled = !gpu.available;
  if (!gpu.available && backendSel.value === 'webgpu') backendSel.value = 'wasm';
  if (state.phase === 'error') return;

  renderPredictions(gridIndices(test!), [null, null], ['A', 'B']);
  state.phase = 'ready';
  setRunning(false);
  setStatus(`Loaded ${train!.n.toLocaleString('en-US')} training and ${test!.n.toLocaleString('en-US')} test images. Press “Train both”.`);
  if (params.get('autostart') === '1') await trainBoth();
}

main().catch((e: Error) => {
  state.phase = 'error';
  state.error = e.message;
  console.error(e);
  try {
    setStatus(`Error: ${e.message}`, true);
  } catch {
    /* the page itself is broken */
  }
});
