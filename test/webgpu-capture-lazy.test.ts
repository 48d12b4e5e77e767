/**
 * The captured-step recorder (src/kernels/webgpu/capture.ts) loads like a kernel family: a WebGPU
 * program that never captures a step does not fetch it (test/consumer.test.ts checks the bundle).
 * In a browser (no preload) the first beginRecording starts its import and declines, so that
 * step runs unrecorded, as while any family loads; once it is here the next one records, and the
 * recording replays. This file's backend is made with preloadKernels: false before anything else
 * loads the recorder.
 */
import { describe, expect, it } from 'vitest';
import type { BroadcastLayout } from '../src/kernels/backend.js';
import { createWebGPUBackend, type WebGPUBackend } from '../src/kernels/webgpu/index.js';

let gpu: WebGPUBackend | null = null;
let reason = '';
try {
  gpu = await createWebGPUBackend({ preloadKernels: false });
} catch (e) {
  if (process.env.REQUIRE_WEBGPU === '1') throw e;
  reason = (e as Error).message;
}

const N = 5;
const FLAT: BroadcastLayout = { shape: [N], aStrides: [1], bStrides: [1] };

describe.skipIf(!gpu)(`WebGPU captured-step recorder loaded on first use ${reason}`, () => {
  it('declines the first recording while the recorder loads, then records and replays', async () => {
    const b = gpu!;
    const cr = b.commandReplay!;
    const a = b.upload(Float32Array.of(1, 2, 3, 4, 5), 'float32');
    const out = b.alloc(N, 'float32');
    // Not loaded yet: declined, and the calls of this step run eagerly, unrecorded.
    expect(cr.begin()).toBe(false);
    b.binary('add', a, a, out, FLAT);
    expect(Array.from(await b.read(out))).toEqual([2, 4, 6, 8, 10]);
    // The import it started arrives within a few event-loop turns.
    let began = false;
    for (let i = 0; i < 200 && !began; i++) {
      await new Promise((r) => setTimeout(r, 10));
      began = cr.begin();
    }
    expect(began).toBe(true);
    b.binary('mul', a, a, out, FLAT);
    const rec = cr.end();
    expect(rec).not.toBeNull();
    expect(Array.from(await b.read(out))).toEqual([1, 4, 9, 16, 25]);
    b.fill(out, 0);
    expect(cr.replay(rec!)).toBe(true);
    expect(Array.from(await b.read(out))).toEqual([1, 4, 9, 16, 25]);
    cr.release(rec!);
    b.release(a);
    b.release(out);
  });
});
