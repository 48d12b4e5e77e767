/**
 * Recorded command streams (src/kernels/webgpu/capture.ts), the WebGPU side of captured steps: a
 * recording encodes its kernels, clears, copies and host writes again with the values they had
 * when recorded, keeps the scratch buffers its calls released, and goes stale (replay refuses)
 * once a buffer it binds is released by its owner.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend, BroadcastLayout, Storage } from '../src/kernels/backend.js';
import { acquireWebGPU } from './helpers/webgpu.js';

const N = 37;
const FLAT: BroadcastLayout = { shape: [N], aStrides: [1], bStrides: [1] };

describe('WebGPU recorded command streams', () => {
  let gpu: Backend | null = null;
  beforeAll(async () => {
    gpu = (await acquireWebGPU()).backend;
  });
  const made: Storage[] = [];
  const alloc = (n = N): Storage => {
    const s = gpu!.alloc(n, 'float32');
    made.push(s);
    return s;
  };
  afterAll(() => {
    for (const s of made) if (!(s as { released?: boolean }).released) gpu?.release(s);
  });

  it('replays kernels and host writes with their recorded values, one submit, until a bound buffer is released', async (ctx) => {
    if (!gpu) ctx.skip();
    const b = gpu!;
    const cr = b.commandReplay!;
    const a = alloc();
    const c = alloc();
    const out = alloc();
    const live0 = b.memory().liveBuffers;
    b.write(a, Float32Array.from({ length: N }, (_, i) => i));
    expect(cr.begin()).toBe(true);
    // A host write inside the recording: replayed as a copy, in its place in the stream.
    b.write(c, new Float32Array(N).fill(10));
    // A scratch that the calls release: the recording keeps it (nobody else may be handed it).
    const scratch = b.alloc(N, 'float32');
    b.binary('mul', a, c, scratch, FLAT);
    b.binary('add', scratch, a, out, FLAT);
    b.release(scratch);
    const rec = cr.end();
    expect(rec).not.toBeNull();
    // Still counted live while the recording holds it.
    expect(b.memory().liveBuffers).toBe(live0 + 1);
    expect(Array.from(await b.read(out))).toEqual(Array.from({ length: N }, (_, i) => 11 * i));

    // New data in a and c; the replay rewrites c with the recorded 10s and recomputes out = 11 a.
    b.write(a, Float32Array.from({ length: N }, (_, i) => 2 * i + 1));
    b.write(c, new Float32Array(N).fill(-3));
    b.fill(out, 0);
    cr.holdSubmits(true);
    expect(cr.replay(rec!)).toBe(true);
    cr.holdSubmits(false);
    expect(Array.from(await b.read(out))).toEqual(Array.from({ length: N }, (_, i) => 11 * (2 * i + 1)));
    expect(Array.from(await b.read(c))).toEqual(new Array(N).fill(10));

    // The owner of a bound buffer releases it: the recording is stale and refuses to replay.
    b.release(made.splice(made.indexOf(c), 1)[0]);
    expect(cr.replay(rec!)).toBe(false);
    cr.release(rec!);
    expect(b.memory().liveBuffers).toBe(live0 - 1);
  });

  it('cannot begin a second recording inside one', async (ctx) => {
    if (!gpu) ctx.skip();
    const cr = gpu!.commandReplay!;
    expect(cr.begin()).toBe(true);
    expect(() => cr.begin()).toThrow(/already open/);
    const r = cr.end();
    if (r) cr.release(r);
  });
});
