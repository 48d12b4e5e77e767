/**
 * The library in a real browser: headless Chromium (Debian's, through puppeteer-core) on WebGPU,
 * which on this GPU-less machine is Chromium's SwiftShader adapter.
 *
 * 1. web/parity.html runs a parity subset of the kernel tests in the page on WebGPU and on
 *    WebAssembly, and every result must match the CPU backend's within float32 tolerance.
 * 2. The demo page (web/index.html) trains two configurations for a few dozen steps on WebGPU;
 *    the curves must be drawn (a screenshot, saved as docs/screenshot.png, must show them) and
 *    no console errors may appear.
 * 3. Without WebGPU (Chromium without --enable-unsafe-webgpu) the page says so and trains on
 *    WebAssembly instead.
 *
 * No WebGPU adapter: the WebGPU tests are skipped, or fail when REQUIRE_WEBGPU=1 (CI).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CHROMIUM_ARGS,
  ROOT,
  buildAndServe,
  collectProblems,
  decodePng,
  distinctColours,
  launchChromium,
  probeWebGPU,
  waitInPage,
  type Launched,
  type Served,
} from './helpers/browser.js';

const REQUIRE_WEBGPU = process.env.REQUIRE_WEBGPU === '1';
const ATOL = 1e-4;
const RTOL = 1e-3;

let served: Served;
let chrome: Launched;
let gpu: { ok: boolean; reason: string; adapter: string } = { ok: false, reason: 'not probed', adapter: '' };

beforeAll(async () => {
  served = await buildAndServe();
  chrome = await launchChromium();
  const page = await chrome.browser.newPage();
  try {
    await page.goto(served.url + 'style.css');
    gpu = await probeWebGPU(page);
  } finally {
    await page.close();
  }
  if (!gpu.ok && REQUIRE_WEBGPU) {
    throw new Error(`REQUIRE_WEBGPU=1 but headless Chromium (${CHROMIUM_ARGS.join(' ')}) has no WebGPU adapter: ${gpu.reason}`);
  }
}, 120_000);

afterAll(async () => {
  await chrome?.close();
  await served?.close();
});

/** Skips a WebGPU test when there is no adapter (beforeAll already failed the suite if one is required). */
function needWebGPU(ctx: { skip: (note?: string) => void }): void {
  if (!gpu.ok) ctx.skip(`no WebGPU adapter in headless Chromium: ${gpu.reason}`);
}

async function openPage(path: string): Promise<{ page: Page; problems: string[] }> {
  const page = await chrome.browser.newPage();
  const problems = collectProblems(page);
  await page.goto(served.url + path, { waitUntil: 'load' });
  return { page, problems };
}

interface ParityResult {
  status: string;
  error: string | null;
  adapter: string | null;
  backends: string[];
  fused: Record<string, boolean>;
  results: { name: string; exact: boolean; outputs: Record<string, number[][]> }[];
}

describe('browser: kernel parity in the page', () => {
  it('WebGPU and WebAssembly match the CPU backend', async (ctx) => {
    needWebGPU(ctx);
    const { page, problems } = await openPage('parity.html?backends=webgpu,wasm');
    try {
      const state = (await waitInPage(
        page,
        () => {
          const s = (globalThis as { __flatgradParity?: { status: string } }).__flatgradParity;
          return s && s.status !== 'running' ? s : null;
        },
        90_000,
        async () => `parity page still running: ${await page.$eval('#parity-status', (e) => e.textContent)}`,
      )) as unknown as ParityResult;
      expect(state.error).toBeNull();
      expect(state.status).toBe('done');
      expect(state.backends).toEqual(['cpu', 'webgpu', 'wasm']);
      expect(state.adapter).toBeTruthy();
      // The SAM cases ran the fused arena kernels (WGSL in this browser), not the per-tensor loop.
      expect(state.fused.webgpu).toBe(true);
      expect(state.results.length).toBeGreaterThanOrEqual(15);
      const names = state.results.map((r) => r.name).join(' | ');
      for (const op of ['matmul', 'add broadcast', 'softmax', 'crossEntropy', 'conv2d', 'reductions', 'SAM(SGD', 'ASAM(AdamW']) expect(names).toContain(op);

      const mismatches: string[] = [];
      for (const r of state.results) {
        const ref = r.outputs.cpu;
        for (const b of ['webgpu', 'wasm']) {
          const got = r.outputs[b];
          if (got.length !== ref.length) {
            mismatches.push(`${r.name} on ${b}: ${got.length} outputs, cpu has ${ref.length}`);
            continue;
          }
          got.forEach((xs, k) => {
            if (xs.length !== ref[k].length) return void mismatches.push(`${r.name} on ${b}, output ${k}: ${xs.length} values, cpu has ${ref[k].length}`);
            for (let i = 0; i < xs.length; i++) {
              const [x, y] = [xs[i], ref[k][i]];
              const ok = r.exact ? x === y : Number.isNaN(y) ? Number.isNaN(x) : Math.abs(x - y) <= ATOL + RTOL * Math.abs(y);
              if (!ok) return void mismatches.push(`${r.name} on ${b}, output ${k}[${i}]: ${x}, cpu ${y}`);
            }
          });
        }
      }
      expect(mismatches).toEqual([]);
      expect(problems).toEqual([]);
    } finally {
      await page.close();
    }
  }, 120_000);
});

interface DemoState {
  phase: string;
  error: string | null;
  backend: string | null;
  adapter: string | null;
  step: number;
  steps: number;
  webgpu: { available: boolean; reason: string; software: boolean };
  runs: {
    label: string;
    step: number;
    loss: number | null;
    testAccuracy: number | null;
    stepsPerSecond: number;
    description: string;
    capture: { replays: number; traces: number; fallback: string | null };
  }[];
  landscape: { label: string; alphas: number[]; losses: number[] }[] | null;
  predictions: { truth: number[]; a: number[]; b: number[] } | null;
  memory: { before: { liveBuffers: number } | null; after: { liveBuffers: number } | null };
}

const demoState = () => (globalThis as { __flatgradDemo?: unknown }).__flatgradDemo;

async function trainDemo(page: Page, timeoutMs: number): Promise<DemoState> {
  const describeState = async () => JSON.stringify(await page.evaluate(() => {
    const s = (globalThis as { __flatgradDemo?: { phase: string; message: string; step: number; error: string | null } }).__flatgradDemo;
    return s && { phase: s.phase, message: s.message, step: s.step, error: s.error };
  }));
  return (await waitInPage(
    page,
    () => {
      const s = (globalThis as { __flatgradDemo?: { phase: string } }).__flatgradDemo;
      return s && ['done', 'error', 'stopped'].includes(s.phase) ? s : null;
    },
    timeoutMs,
    describeState,
  )) as unknown as DemoState;
}

/** Pixels of a region within `tolerance` of an RGB colour. */
function pixelsNear(rgba: Uint8Array, width: number, r: { x: number; y: number; w: number; h: number }, hex: string, tolerance = 40): number {
  const [cr, cg, cb] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  let n = 0;
  for (let y = r.y; y < r.y + r.h; y++) {
    for (let x = r.x; x < r.x + r.w; x++) {
      const i = (y * width + x) * 4;
      if (Math.abs(rgba[i] - cr) + Math.abs(rgba[i + 1] - cg) + Math.abs(rgba[i + 2] - cb) <= tolerance) n++;
    }
  }
  return n;
}

async function region(page: Page, selector: string): Promise<{ x: number; y: number; w: number; h: number }> {
  return page.$eval(selector, (el) => {
    const b = el.getBoundingClientRect();
    return { x: Math.round(b.left + scrollX), y: Math.round(b.top + scrollY), w: Math.round(b.width), h: Math.round(b.height) };
  });
}

describe('browser: the demo page', () => {
  it('trains SGD against SAM on WebGPU, draws the curves, and logs no errors', async (ctx) => {
    needWebGPU(ctx);
    const steps = 40;
    const { page, problems } = await openPage(`?autostart=1&backend=webgpu&steps=${steps}&batch=32&evalEvery=10&evalSize=250&points=9`);
    try {
      const s = await trainDemo(page, 150_000);
      expect(s.error).toBeNull();
      expect(s.phase).toBe('done');
      expect(s.backend).toBe('webgpu');
      expect(s.webgpu.available).toBe(true);
      expect(s.step).toBe(steps);
      expect(s.runs.map((r) => r.step)).toEqual([steps, steps]);
      for (const r of s.runs) {
        expect(Number.isFinite(r.loss)).toBe(true);
        expect(r.stepsPerSecond).toBeGreaterThan(0);
        // After a few dozen steps both do better than chance (10%) on the test images.
        expect(r.testAccuracy).toBeGreaterThan(0.3);
        // The demo trains with the captured step: traced once per batch shape, replayed after.
        expect(r.capture.fallback).toBeNull();
        expect(r.capture.replays).toBeGreaterThan(steps / 2);
      }
      expect(s.runs[1].description).toContain('SAM');
      expect(s.landscape).toHaveLength(2);
      for (const l of s.landscape!) {
        expect(l.alphas).toHaveLength(9);
        expect(l.losses.every(Number.isFinite)).toBe(true);
        // The trained weights sit lower than the far ends of the slice.
        expect(l.losses[4]).toBeLessThan(Math.max(l.losses[0], l.losses[8]));
      }
      expect(s.predictions?.truth).toHaveLength(20);
      expect(await page.$$eval('#predictions .guess.ok, #predictions .guess.bad', (els) => els.length)).toBe(40);
      // Everything the run allocated on the GPU was freed when it ended.
      expect(s.memory.after?.liveBuffers).toBe(s.memory.before?.liveBuffers);

      // The screenshot is checked for drawn curves; UPDATE_SCREENSHOT=1 saves it as the README's
      // docs/screenshot.png (not on every run, so that the tests leave the tree clean).
      await page.evaluate(() => window.scrollTo(0, 0));
      const png = await page.screenshot({ fullPage: true, type: 'png' });
      if (process.env.UPDATE_SCREENSHOT === '1') {
        mkdirSync(join(ROOT, 'docs'), { recursive: true });
        writeFileSync(join(ROOT, 'docs', 'screenshot.png'), png);
      }
      const img = decodePng(png);
      for (const sel of ['#chart-loss', '#chart-acc', '#chart-landscape']) {
        const r = await region(page, sel);
        expect(r.x + r.w).toBeLessThanOrEqual(img.width);
        expect(r.y + r.h).toBeLessThanOrEqual(img.height);
        expect(distinctColours(img.rgba, img.width, r), `${sel}: distinct colours`).toBeGreaterThan(40);
        expect(pixelsNear(img.rgba, img.width, r, '#2563eb'), `${sel}: pixels of configuration A's colour`).toBeGreaterThan(100);
        expect(pixelsNear(img.rgba, img.width, r, '#ea580c'), `${sel}: pixels of configuration B's colour`).toBeGreaterThan(100);
      }
      expect(problems).toEqual([]);
    } finally {
      await page.close();
    }
  }, 180_000);
});

describe('browser: no WebGPU', () => {
  it('says so and trains on WebAssembly instead', async () => {
    // The same Chromium without --enable-unsafe-webgpu: navigator.gpu is there, requestAdapter() gives null.
    const noGpu = await launchChromium({ args: CHROMIUM_ARGS.filter((a) => a !== '--enable-unsafe-webgpu') });
    const browser = noGpu.browser;
    try {
      const page = await browser.newPage();
      const problems = collectProblems(page);
      await page.goto(served.url + '?autostart=1&steps=6&batch=16&evalEvery=100&evalSize=50&points=3&aModel=cnn&bWrapper=asam', { waitUntil: 'load' });
      const s = await trainDemo(page, 60_000);
      expect(s.webgpu.available).toBe(false);
      expect(s.webgpu.reason).toMatch(/requestAdapter\(\) returned null|navigator\.gpu is missing/);
      const banner = await page.$eval('#backend-banner', (e) => ({ text: e.textContent ?? '', cls: e.className }));
      expect(banner.cls).toContain('error');
      expect(banner.text).toContain('No WebGPU');
      expect(banner.text).toContain('Use WebAssembly');
      expect(await page.$eval('#backend option[value=webgpu]', (o) => (o as HTMLOptionElement).disabled)).toBe(true);
      expect(s.error).toBeNull();
      expect(s.phase).toBe('done');
      expect(s.backend).toBe('wasm');
      expect(s.runs.map((r) => r.step)).toEqual([6, 6]);
      expect(s.runs[0].description).toContain('CNN');
      expect(s.runs[1].description).toContain('ASAM');

      // The buttons: train again, stop after a couple of steps; the page ends in 'stopped' with results.
      await page.$eval('#steps', (e) => ((e as HTMLInputElement).value = '1000'));
      await page.click('#train');
      await waitInPage(page, () => ((globalThis as { __flatgradDemo?: { step: number } }).__flatgradDemo?.step ?? 0) >= 2, 30_000, async () => 'no steps after pressing Train');
      expect(await page.$eval('#train', (b) => (b as HTMLButtonElement).disabled)).toBe(true);
      await page.click('#stop');
      const stopped = await trainDemo(page, 60_000);
      expect(stopped.phase).toBe('stopped');
      expect(stopped.step).toBeLessThan(1000);
      expect(stopped.landscape).toHaveLength(2);
      expect(await page.$eval('#train', (b) => (b as HTMLButtonElement).disabled)).toBe(false);
      expect(problems).toEqual([]);
    } finally {
      await noGpu.close();
    }
  }, 90_000);
});

describe('web/serve.mjs', () => {
  it('serves the page, the bundles and the data with the right types, and nothing outside', async () => {
    const head = async (path: string) => {
      const { request } = await import('node:http');
      const u = new URL(served.url);
      return new Promise<{ status: number; type: string; encoding: string | undefined; length: number }>((ok, fail) => {
        const req = request({ host: u.hostname, port: u.port, path, method: 'GET' }, (res) => {
          let length = 0;
          res.on('data', (c: Buffer) => (length += c.length));
          res.on('end', () => ok({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), encoding: res.headers['content-encoding'], length }));
        });
        req.on('error', fail);
        req.end();
      });
    };
    expect(await head('/')).toMatchObject({ status: 200, type: 'text/html; charset=utf-8' });
    expect(await head('/dist/app.js')).toMatchObject({ status: 200, type: 'text/javascript; charset=utf-8' });
    expect(await head('/dist/flatgrad.js')).toMatchObject({ status: 200, type: 'text/javascript; charset=utf-8' });
    expect(await head('/style.css')).toMatchObject({ status: 200, type: 'text/css; charset=utf-8' });
    const gz = await head('/data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz');
    expect(gz).toMatchObject({ status: 200, type: 'application/octet-stream', encoding: undefined });
    expect(gz.length).toBeGreaterThan(100);
    expect((await head('/nope.html')).status).toBe(404);
    for (const escape of ['/%2e%2e/package.json', '/..%2fpackage.json', '/data/fashion-mnist-subset/..%2f..%2fpackage.json', '/lib/..%2fpackage.json']) {
      expect([403, 404], escape).toContain((await head(escape)).status);
    }
    const { MIME } = (await import(join(ROOT, 'web', 'serve.mjs'))) as { MIME: Record<string, string> };
    expect(MIME['.wasm']).toBe('application/wasm');
  });
});
