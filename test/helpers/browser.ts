/**
 * Headless Chromium for the browser suite: Debian's /usr/bin/chromium driven by puppeteer-core
 * (never the `puppeteer` package, whose browser download fails here), a fresh profile per launch,
 * and the page served by web/serve.mjs on an ephemeral 127.0.0.1 port (a secure context: a
 * data: URL has no navigator.gpu).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { inflateSync } from 'node:zlib';
import type { Browser, ConsoleMessage, Page } from 'puppeteer-core';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/**
 * `--enable-unsafe-webgpu` is the one flag WebGPU needs here: without it requestAdapter() returns
 * null on this GPU-less machine; with it Chromium offers its SwiftShader adapter. The others keep
 * Chromium from reaching for the network (there is none) and from first-run chores.
 */
export const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-default-apps',
  '--no-first-run',
  '--no-default-browser-check',
  '--disable-dev-shm-usage',
  '--window-size=1280,1600',
];

export interface Served {
  url: string;
  close(): Promise<void>;
}

/** Builds web/dist (esbuild: a second or two) and starts web/serve.mjs on a free port. */
export async function buildAndServe(): Promise<Served> {
  await promisify(execFile)(process.execPath, [join(ROOT, 'scripts', 'build-web.mjs')], { cwd: ROOT });
  const mod = (await import(join(ROOT, 'web', 'serve.mjs'))) as {
    startServer(o: { port: number; host?: string }): Promise<{ url: string; close(): Promise<void> }>;
  };
  return mod.startServer({ port: 0 });
}

export interface Launched {
  browser: Browser;
  close(): Promise<void>;
}

/** Launches Chromium with a fresh profile (removed again by close()); `args` replaces CHROMIUM_ARGS. */
export async function launchChromium(opts: { args?: string[] } = {}): Promise<Launched> {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (Debian: apt-get install chromium)`);
  const { default: puppeteer } = await import('puppeteer-core');
  const profile = mkdtempSync(join(tmpdir(), 'flatgrad-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    // The --headless=new in CHROMIUM_ARGS is the one that counts.
    headless: true,
    ignoreDefaultArgs: ['--headless'],
    userDataDir: profile,
    args: opts.args ?? CHROMIUM_ARGS,
    defaultViewport: { width: 1280, height: 1500 },
    protocolTimeout: 180_000,
  });
  return {
    browser,
    async close() {
      try {
        await browser.close();
      } finally {
        rmSync(profile, { recursive: true, force: true });
      }
    },
  };
}

/** Console errors, uncaught exceptions and failed requests of a page, as lines. */
export function collectProblems(page: Page): string[] {
  const problems: string[] = [];
  page.on('console', (m: ConsoleMessage) => {
    if (m.type() === 'error') problems.push(`console.error: ${m.text()}${m.location()?.url ? ` (${m.location().url})` : ''}`);
  });
  page.on('pageerror', (e: unknown) => problems.push(`uncaught: ${e instanceof Error ? e.stack ?? e.message : String(e)}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} (${r.failure()?.errorText})`));
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
  });
  return problems;
}

/** Whether this Chromium gives a page a WebGPU adapter, and if not, why. */
export async function probeWebGPU(page: Page): Promise<{ ok: boolean; reason: string; adapter: string }> {
  return page.evaluate(async () => {
    const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
    if (!gpu) return { ok: false, reason: 'navigator.gpu is missing', adapter: '' };
    const a = await gpu.requestAdapter();
    if (!a) return { ok: false, reason: 'navigator.gpu.requestAdapter() returned null', adapter: '' };
    const i = a.info;
    return { ok: true, reason: '', adapter: [i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(' ') };
  });
}

/** Polls `fn` in the page until it returns a truthy value; throws with `describe()`'s text on timeout. */
export async function waitInPage<T>(page: Page, fn: () => T, timeoutMs: number, describe: () => Promise<string>): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = (await page.evaluate(fn)) as T;
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms: ${await describe()}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Distinct colours (RGBA) among the pixels of a region of an RGBA image. */
export function distinctColours(rgba: Uint8Array | Buffer, width: number, region: { x: number; y: number; w: number; h: number }): number {
  const seen = new Set<number>();
  for (let y = region.y; y < region.y + region.h; y++) {
    for (let x = region.x; x < region.x + region.w; x++) {
      const i = (y * width + x) * 4;
      seen.add(((rgba[i] << 24) | (rgba[i + 1] << 16) | (rgba[i + 2] << 8) | rgba[i + 3]) >>> 0);
    }
  }
  return seen.size;
}

/** Decodes an 8-bit, non-interlaced PNG (what Chromium's screenshots are) into RGBA. */
export function decodePng(png: Uint8Array): { width: number; height: number; rgba: Uint8Array } {
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (!sig.every((b, i) => png[i] === b)) throw new Error('decodePng: not a PNG');
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let width = 0;
  let height = 0;
  let depth = 0;
  let colour = 0;
  let interlace = 0;
  const idat: Uint8Array[] = [];
  for (let off = 8; off < png.length; ) {
    const len = view.getUint32(off);
    const type = String.fromCharCode(...png.subarray(off + 4, off + 8));
    const data = png.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      width = view.getUint32(off + 8);
      height = view.getUint32(off + 12);
      [depth, colour] = [data[8], data[9]];
      interlace = data[12];
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    off += 12 + len;
  }
  const channels = ({ 0: 1, 2: 3, 4: 2, 6: 4 } as Record<number, number>)[colour];
  if (depth !== 8 || !channels || interlace) throw new Error(`decodePng: unsupported PNG (depth ${depth}, colour type ${colour}, interlace ${interlace})`);
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const out = new Uint8Array(width * height * 4);
  let prev = new Uint8Array(stride);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const cur = new Uint8Array(stride);
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? cur[x - channels] : 0;
      const b = prev[x];
      const c = x >= channels ? prev[x - channels] : 0;
      let p = line[x];
      if (f === 1) p += a;
      else if (f === 2) p += b;
      else if (f === 3) p += (a + b) >> 1;
      else if (f === 4) {
        const pa = Math.abs(b - c);
        const pb = Math.abs(a - c);
        const pc = Math.abs(a + b - 2 * c);
        p += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      cur[x] = p & 255;
    }
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 4;
      const s = x * channels;
      if (channels >= 3) out.set([cur[s], cur[s + 1], cur[s + 2], channels === 4 ? cur[s + 3] : 255], o);
      else out.set([cur[s], cur[s], cur[s], channels === 2 ? cur[s + 1] : 255], o);
    }
    prev = cur;
  }
  return { width, height, rgba: out };
}
