/**
 * The reduction rules of captured steps (src/compile/fuse-reduce.ts) and their kernels
 * (Backend.layerNormBackwardFused, crossEntropyWithSum, crossEntropyBackwardWithSums,
 * attentionBackwardWithSums: src/kernels/cpu/rowfused.ts, src/kernels/wasm/lnfused.ts,
 * layernorm.ts, module.ts, attention.ts):
 * - each kernel equals the separate calls it replaces (the row kernel, binary add, strided copy,
 *   reduce sum) bit for bit, on cpu and on wasm (one and two threads), rows of any length;
 * - a replay of the ViT, MLP and CNN steps (SGD, SAM, AdamW) equals the eager step bit for bit with
 *   the rules on, and makes as many fewer add, copy and reduce calls as it folded;
 * - the rules leave the calls alone where dx escapes (read by another call, or a step output),
 *   where a call in between touches what the kernel would write early or writes dx, and on a
 *   backend without the kernels (WebGPU).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend, BlockSum, LayerNormBackwardFusedLayout, Storage } from '../src/kernels/backend.js';
import { createWasmBackend } from '../src/kernels/wasm/index.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { fuseReductions, type ReduceFusionContext } from '../src/compile/fuse-reduce.js';
import type { StorageRecord, Trace, TraceEvent } from '../src/compile/trace.js';
import { withBackend } from './helpers/backend-scope.js';
import { rng } from './helpers/random.js';
import { expectBitEqual, expectSameRun, runSteps, trainingStep, type StepRun } from './helpers/train-steps.js';

const { nn } = fg;
type Tensor = fg.Tensor;
type ModelKind = 'mlp' | 'cnn' | 'vit';
type OptKind = 'SGD' | 'SAM' | 'AdamW';
type Net = fg.nn.Module & { forward(x: Tensor): Tensor };
type Which = 'cpu' | 'wasm' | 'wasm2';

function makeModel(m: ModelKind): Net {
  if (m === 'mlp') return nn.models.mlp([12, 16, 16, 4]);
  if (m === 'cnn') return nn.models.resnetSmall({ inChannels: 1, numClasses: 4, widths: [4, 8] });
  // dim 6: rows of a length that is not a multiple of 4 (the kernels' tail windows).
  return nn.models.vit({ imageSize: 8, patchSize: 4, dim: 6, depth: 1, heads: 2, mlpRatio: 2, numClasses: 4 });
}
const inputShape = (m: ModelKind, n: number) => (m === 'mlp' ? [n, 12] : [n, 1, 8, 8]);

/** Calls of these backend methods over a run. */
const COUNTED = ['binary', 'reduce', 'stridedCopy', 'layerNormBackward', 'layerNormBackwardFused', 'crossEntropyWithSum', 'crossEntropyBackwardWithSums', 'attentionBackwardWithSums'] as const;
const FUSED_METHODS = ['layerNormBackwardFused', 'crossEntropyWithSum', 'crossEntropyBackwardWithSums', 'attentionBackwardWithSums'];
type Counts = Record<(typeof COUNTED)[number], number>;

/**
 * Four steps from seed 7 on the same data (test/helpers/train-steps.ts): eager or compiled. The
 * backend's methods are wrapped (own properties) to count the run's calls; `withoutRules` hides
 * the fused methods, so the pass leaves the calls as they were.
 */
async function run(b: Backend, m: ModelKind, o: OptKind, compiled: boolean, withoutRules = false): Promise<StepRun & { counts: Counts }> {
  const rec = b as unknown as Record<string, unknown>;
  const counts = Object.fromEntries(COUNTED.map((k) => [k, 0])) as Counts;
  for (const k of COUNTED) {
    const orig = rec[k] as ((...a: unknown[]) => unknown) | undefined;
    if (!orig) continue;
    rec[k] = function (this: unknown, ...a: unknown[]) {
      counts[k]++;
      return orig.apply(this, a);
    };
  }
  if (withoutRules) for (const k of FUSED_METHODS) rec[k] = undefined;
  try {
    fg.manualSeed(7);
    const model = makeModel(m);
    model.train();
    const got = await runSteps(model, trainingStep(model, o), { shape: inputShape(m, 4), steps: 4, seed: 500, compile: compiled ? {} : null });
    return { ...got, counts };
  } finally {
    for (const k of COUNTED) delete rec[k];
  }
}

/** A backend of the describe block's own. */
function hostBackend(which: Which): () => Backend {
  let b: Backend | null = null;
  beforeAll(async () => {
    b = which === 'cpu' ? new CpuBackend() : await createWasmBackend({ threads: which === 'wasm2' ? 2 : 1, ...(which === 'wasm2' ? { minThreadedWork: 1 } : {}) });
  });
  afterAll(() => (b as { dispose?: () => void } | null)?.dispose?.());
  return () => b!;
}

const WHICH: Which[] = ['cpu', 'wasm', 'wasm2'];

for (const which of WHICH) {
  describe(`layerNormBackwardFused on ${which}: the separate calls' bits`, () => {
    const backend = hostBackend(which);
    const shapes: [number, number][] = [[7, 6], [5, 8], [12, 3], [3, 13], [1, 1]];
    for (const [rows, cols] of shapes) {
      for (const weight of [true, false]) {
        it(`rows ${rows}, cols ${cols}, weight ${weight}`, () => {
          const b = backend();
          const r = rng(rows * 100 + cols + (weight ? 7 : 0));
          const n = rows * cols;
          const up = (len: number, f: () => number) => b.upload(Float32Array.from({ length: len }, f), 'float32');
          const grad = up(n, () => r() * 2 - 1);
          const x = up(n, () => r() * 6 - 3 + 100 * Math.floor(r() * 2));
          const mean = b.alloc(rows * 2, 'float32');
          const rstd = b.alloc(rows, 'float32');
          const w = weight ? up(cols, () => r() + 0.5) : null;
          const lnOut = b.alloc(n, 'float32');
          b.layerNorm(x, w, null, lnOut, mean, rstd, { rows, cols, eps: 1e-5 });
          const residual = up(n, () => r() * 4 - 2);
          // Block sums: over all rows (a bias gradient); over k blocks of rows (a position
          // embedding's over the batch); of every other row from row 1 (a slice, as the class
          // token's gradient is summed: a strided copy, then a reduce).
          const k = [2, 3, 4].find((d) => rows % d === 0 && d < rows);
          const blocks: BlockSum[] = [
            { offset: 0, period: cols, width: cols, count: rows },
            ...(k ? [{ offset: 0, period: n / k, width: n / k, count: k }] : []),
            ...(rows > 2 ? [{ offset: cols, period: 2 * cols, width: cols, count: Math.floor((rows - 1) / 2) }] : []),
          ].filter((bs) => bs.width > 1);
          for (const addFirst of [true, false, null]) {
            // The separate calls.
            const dx = b.alloc(n, 'float32');
            const [dw, db] = [b.alloc(cols, 'float32'), b.alloc(cols, 'float32')];
            b.layerNormBackward(grad, x, mean, rstd, w, dx, dw, db, { rows, cols, eps: 1e-5 });
            let y: Storage = dx;
            if (addFirst !== null) {
              y = b.alloc(n, 'float32');
              const l = { shape: [n], aStrides: [1], bStrides: [1] };
              if (addFirst) b.binary('add', residual, dx, y, l);
              else b.binary('add', dx, residual, y, l);
            }
            const want = blocks.map((bs) => {
              const s = b.alloc(bs.width, 'float32');
              let src = y;
              if (bs.period !== bs.width || bs.offset !== 0) {
                src = b.alloc(bs.count * bs.width, 'float32');
                b.stridedCopy(y, src, { shape: [bs.count, bs.width], srcStrides: [bs.period, 1], srcOffset: bs.offset, dstStrides: [bs.width, 1], dstOffset: 0 });
              }
              b.reduce('sum', src, s, { outer: 1, size: bs.count, inner: bs.width });
              if (src !== y) b.release(src);
              return s;
            });
            // The fused call.
            const fdx = b.alloc(n, 'float32');
            const [fdw, fdb] = [b.alloc(cols, 'float32'), b.alloc(cols, 'float32')];
            const got = blocks.map((bs) => b.alloc(bs.width, 'float32'));
            const layout: LayerNormBackwardFusedLayout = { rows, cols, eps: 1e-5, addFirst: !!addFirst, sums: blocks };
            b.layerNormBackwardFused!(grad, x, mean, rstd, w, addFirst === null ? null : residual, fdx, fdw, fdb, got, layout);
            const read = (s: Storage) => Float32Array.from(b.readSync!(s) as Float32Array);
            const tag = `add ${addFirst}`;
            expectBitEqual(read(fdx), read(y), `${tag}: dx`);
            expectBitEqual(read(fdw), read(dw), `${tag}: dweight`);
            expectBitEqual(read(fdb), read(db), `${tag}: dbias`);
            blocks.forEach((bs, i) => expectBitEqual(read(got[i]), read(want[i]), `${tag}: sum ${JSON.stringify(bs)}`));
            // Without the parameter gradients (scratch takes them) the rest is the same.
            const gdx = b.alloc(n, 'float32');
            const got2 = blocks.map((bs) => b.alloc(bs.width, 'float32'));
            b.layerNormBackwardFused!(grad, x, mean, rstd, w, addFirst === null ? null : residual, gdx, null, null, got2, layout);
            expectBitEqual(read(gdx), read(y), `${tag}: dx (no parameter gradients)`);
            blocks.forEach((bs, i) => expectBitEqual(read(got2[i]), read(want[i]), `${tag}: sum ${JSON.stringify(bs)} (no parameter gradients)`));
            for (const s of [dx, dw, db, fdx, fdw, fdb, gdx, ...want, ...got, ...got2, ...(y !== dx ? [y] : [])]) b.release(s);
          }
          for (const s of [grad, x, mean, rstd, lnOut, residual, ...(w ? [w] : [])]) b.release(s);
        });
      }
    }
    for (const [rows, cols, smoothing] of [[6, 5, 0], [9, 4, 0.1], [4, 10, 0], [1, 2, 0.2]] as const) {
      it(`crossEntropy (rows ${rows}, cols ${cols}, smoothing ${smoothing}) with the loss sum and the bias-gradient sums`, () => {
        const b = backend();
        const r = rng(rows * 31 + cols);
        const up = (len: number, f: () => number) => b.upload(Float32Array.from({ length: len }, f), 'float32');
        const logits = up(rows * cols, () => r() * 8 - 4);
        // Some rows ignored (-100), as a padded batch's.
        const labels = b.upload(Int32Array.from({ length: rows }, (_, i) => (i % 4 === 3 ? -100 : Math.floor(r() * cols))), 'int32');
        const gradRows = up(rows, () => r() + 0.25);
        const l = { rows, cols, labelSmoothing: smoothing, ignoreIndex: -100 };
        const read = (s: Storage) => Float32Array.from(b.readSync!(s) as Float32Array);
        const [loss, total, fLoss, fTotal] = [b.alloc(rows, 'float32'), b.alloc(1, 'float32'), b.alloc(rows, 'float32'), b.alloc(1, 'float32')];
        b.crossEntropy(logits, labels, loss, l);
        b.reduce('sum', loss, total, { outer: 1, size: rows, inner: 1 });
        b.crossEntropyWithSum!(logits, labels, fLoss, fTotal, l);
        expectBitEqual(read(fLoss), read(loss), 'row losses');
        expectBitEqual(read(fTotal), read(total), 'their sum');
        const [d, sums, fd, fSums] = [b.alloc(rows * cols, 'float32'), b.alloc(cols, 'float32'), b.alloc(rows * cols, 'float32'), b.alloc(cols, 'float32')];
        b.crossEntropyBackward(logits, labels, gradRows, d, l);
        b.reduce('sum', d, sums, { outer: 1, size: rows, inner: cols });
        b.crossEntropyBackwardWithSums!(logits, labels, gradRows, fd, fSums, l);
        expectBitEqual(read(fd), read(d), 'gradient');
        expectBitEqual(read(fSums), read(sums), 'column sums');
        for (const s of [logits, labels, gradRows, loss, total, fLoss, fTotal, d, sums, fd, fSums]) b.release(s);
      });
    }
    for (const [n, heads, len, d, extra] of [[2, 2, 5, 3, 2], [3, 1, 4, 4, 0], [1, 3, 7, 2, 1]] as const) {
      it(`attentionBackward (n ${n}, heads ${heads}, l = s = ${len}, d ${d}, ${extra} columns past v) with the projection's bias-gradient sums`, () => {
        const b = backend();
        const r = rng(n * 100 + heads * 10 + len + d);
        const hd = heads * d;
        const width = 3 * hd + extra;
        const rows = n * len;
        const up = (count: number) => b.upload(Float32Array.from({ length: count }, () => r() * 2 - 1), 'float32');
        // q, k and v: the three parts of a packed projection's rows, as a ViT's attention reads them.
        const qkv = up(rows * width);
        const l = { n, heads, l: len, s: len, d, scale: 1 / Math.sqrt(d), q: { offset: 0, row: width }, k: { offset: hd, row: width }, v: { offset: 2 * hd, row: width } };
        const out = b.alloc(rows * hd, 'float32');
        const probs = b.alloc(n * heads * len * len, 'float32');
        b.attention!(qkv, qkv, qkv, out, probs, l);
        const grad = up(rows * hd);
        // The columns past v are not written by the kernel: the sums take them as they are.
        const init = Float32Array.from({ length: rows * width }, () => r());
        const [x1, x2] = [b.upload(init, 'float32'), b.upload(init, 'float32')];
        const [s1, s2] = [b.alloc(width, 'float32'), b.alloc(width, 'float32')];
        b.attentionBackward!(grad, qkv, qkv, qkv, probs, x1, x1, x1, l);
        b.reduce('sum', x1, s1, { outer: 1, size: rows, inner: width });
        b.attentionBackwardWithSums!(grad, qkv, qkv, qkv, probs, x2, s2, l);
        const read = (st: Storage) => Float32Array.from(b.readSync!(st) as Float32Array);
        expectBitEqual(read(x2), read(x1), 'dq, dk, dv');
        expectBitEqual(read(s2), read(s1), 'column sums');
        // A layout whose rows are not the packed storage's: named.
        expect(() => b.attentionBackwardWithSums!(grad, qkv, qkv, qkv, probs, x2, b.alloc(width + 1, 'float32'), l)).toThrow(/attentionBackwardWithSums: x \(\d+ elements\) must be \[n \* l, width\]/);
        for (const st of [qkv, out, probs, grad, x1, x2, s1, s2]) b.release(st);
      });
    }
    it('names the bad operand', () => {
      const b = backend();
      const s = (n: number) => b.alloc(n, 'float32');
      const ce = { rows: 4, cols: 3, labelSmoothing: 0, ignoreIndex: -100 };
      const labels = b.alloc(4, 'int32');
      expect(() => b.crossEntropyWithSum!(s(12), labels, s(4), s(2), ce)).toThrow(/crossEntropyWithSum: out must hold rows = 4 elements and total 1, got 4 and 2/);
      expect(() => b.crossEntropyBackwardWithSums!(s(12), labels, s(4), s(12), s(4), ce)).toThrow(/sums cols = 3 \(more than 1\), got 12 and 4/);
    });
    it('names the bad operand of layerNormBackwardFused', () => {
      const b = backend();
      const s = (n: number) => b.alloc(n, 'float32');
      const l = (sums: BlockSum[]): LayerNormBackwardFusedLayout => ({ rows: 4, cols: 3, eps: 1e-5, addFirst: false, sums });
      expect(() => b.layerNormBackwardFused!(s(12), s(12), s(8), s(4), null, null, s(11), null, null, [], l([]))).toThrow(/dx \(11 elements\).*rows \* cols = 4 \* 3 = 12/);
      // Not whole rows; then blocks past the end of dx.
      expect(() => b.layerNormBackwardFused!(s(12), s(12), s(8), s(4), null, null, s(12), null, null, [s(4)], l([{ offset: 0, period: 4, width: 4, count: 3 }]))).toThrow(/sum 0 \(offset 0, period 4, width 4, count 3, 4 elements\) must cover whole rows of 3/);
      expect(() => b.layerNormBackwardFused!(s(12), s(12), s(8), s(4), null, null, s(12), null, null, [s(3)], l([{ offset: 3, period: 3, width: 3, count: 4 }]))).toThrow(/inside dx's 12 elements/);
    });
  });
}

const CASES: [ModelKind, OptKind][] = (['vit', 'mlp', 'cnn'] as const).flatMap((m) => (['SGD', 'SAM', 'AdamW'] as const).map((o): [ModelKind, OptKind] => [m, o]));

for (const which of WHICH) {
  describe(`captured steps on ${which} with the reduction rules: bit for bit the eager step`, () => {
    const backend = hostBackend(which);
    for (const [m, o] of CASES) {
      it(`${m} + ${o}`, () => withBackend(backend(), async () => {
        const b = backend();
        const eager = await run(b, m, o, false);
        const fused = await run(b, m, o, true);
        const plain = await run(b, m, o, true, true);
        expectSameRun(fused, eager);
        expectSameRun(plain, eager);
        // Two eager steps (warm-up, trace), then replays: the counts differ by the replays'.
        const replays = fused.stats!.replays;
        expect(replays).toBe(2);
        expect(plain.stats!.replays).toBe(replays);
        const f = fused.counts;
        const p = plain.counts;
        const perReplay = (n: number) => n * replays;
        const fCalls = fused.stats!.plan!.calls;
        const pCalls = plain.stats!.plan!.calls;
        // Every model's loss: the sum of crossEntropy's row losses, and the bias gradient of the
        // head (crossEntropyBackward's column sums), once per forward and backward. SAM runs two.
        const passes = o === 'SAM' ? 2 : 1;
        expect([p.crossEntropyWithSum, p.crossEntropyBackwardWithSums]).toEqual([0, 0]);
        expect([f.crossEntropyWithSum, f.crossEntropyBackwardWithSums]).toEqual([perReplay(passes), perReplay(passes)]);
        if (m !== 'vit') {
          // No layer norm: the loss's two reduces are all that go.
          expect(p.reduce - f.reduce).toBe(perReplay(2 * passes));
          expect([f.binary, f.stridedCopy, f.layerNormBackwardFused, f.attentionBackwardWithSums]).toEqual([p.binary, p.stridedCopy, 0, 0]);
          expect(pCalls - fCalls).toBe(2 * passes);
          return;
        }
        // The ViT (depth 1) folds per backward: the final norm's dx with the MLP's second bias
        // gradient; the block's second norm with its residual add and the attention projection's
        // bias gradient; the first norm with its residual add, the position embedding's gradient
        // (a sum over the batch) and the class token's (a strided copy of token 0, then a sum);
        // the attention's backward with the q, k, v projection's bias gradient.
        expect([p.layerNormBackwardFused, p.attentionBackwardWithSums]).toEqual([0, 0]);
        expect(f.attentionBackwardWithSums).toBe(perReplay(passes));
        expect(f.layerNormBackwardFused).toBe(perReplay(3 * passes));
        // (The CPU backend's fused method runs its layerNormBackward inside: counted there too.)
        expect(f.layerNormBackward).toBe(p.layerNormBackward - (which === 'cpu' ? 0 : perReplay(3 * passes)));
        expect(p.reduce - f.reduce).toBe(perReplay((4 + 2 + 1) * passes));
        expect(p.binary - f.binary).toBe(perReplay(2 * passes));
        expect(p.stridedCopy - f.stridedCopy).toBe(perReplay(passes));
        expect(pCalls - fCalls).toBe((7 + 2 + 1) * passes);
      }));
    }
  });
}

/**
 * The pass on hand-made traces: a layerNormBackward [4, 3] (slots 0-3: grad, x, mean, rstd; 4:
 * its dx), the residual add into slot 6 and the reduce of that into slot 7.
 */
describe('reduction rules: what stays unfused', () => {
  const cpu = new CpuBackend();
  function trace(extra: TraceEvent[] = [], opts: { dxReadLater?: boolean; dxOutput?: boolean; between?: TraceEvent[] } = {}): { events: TraceEvent[]; ctx: ReduceFusionContext } {
    const numel = [12, 12, 8, 4, 12, 12, 12, 3, 12, 12, 6, 3];
    const recs: StorageRecord[] = numel.map((n, id) => ({
      id, storage: {} as Storage, origin: id < 4 ? 'pre' : 'made', inputIndex: -1, numel: n, dtype: 'float32', viewOf: null,
      released: id >= 4, firstUse: -1, lastUse: -1, firstUseWritesAll: false,
    }));
    const s = (i: number) => ({ $s: i });
    const same = { shape: [4, 3], aStrides: [3, 1], bStrides: [3, 1] };
    const events: TraceEvent[] = [
      { kind: 'call', target: 'backend', method: 'layerNormBackward', args: [s(0), s(1), s(2), s(3), null, s(4), null, null, { rows: 4, cols: 3, eps: 1e-5 }] },
      ...(opts.between ?? []),
      { kind: 'call', target: 'backend', method: 'binary', args: ['add', s(5), s(4), s(6), same] },
      { kind: 'call', target: 'backend', method: 'reduce', args: ['sum', s(6), s(7), { outer: 1, size: 4, inner: 3 }] },
      ...(opts.dxReadLater ? [{ kind: 'call', target: 'backend', method: 'unary', args: ['exp', s(4), s(8)] } as TraceEvent] : []),
      ...extra,
    ];
    const walk = (x: unknown, out: number[]): void => {
      if (typeof x !== 'object' || x === null) return;
      if ('$s' in x) out.push((x as { $s: number }).$s);
      else Object.values(x).forEach((v) => walk(v, out));
    };
    const t = { backend: cpu, events, storages: recs } as unknown as Trace;
    const ctx: ReduceFusionContext = {
      trace: t, recs,
      isTemp: (i) => recs[i].origin === 'made' && !(opts.dxOutput && i === 4),
      overlap: (a, b) => a === b,
      touched: (e) => {
        const out: number[] = [];
        if (e.kind === 'call') e.args.forEach((a) => walk(a, out));
        return out;
      },
      noteOutputs: () => {},
    };
    return { events, ctx };
  }
  const methods = (evs: TraceEvent[]) => evs.map((e) => (e.kind === 'call' ? e.method : 'write'));

  it('folds the add and the reduce where dx is a temporary only the add reads', () => {
    const { events, ctx } = trace();
    const got = fuseReductions(events, ctx);
    expect(methods(got.events)).toEqual(['layerNormBackwardFused']);
    expect(got.replaced).toBe(3);
  });
  it('keeps the add when dx escapes: read by a later call, or a step output (the reduce of dx + r still folds)', () => {
    for (const opts of [{ dxReadLater: true }, { dxOutput: true }]) {
      const { events, ctx } = trace([], opts);
      const got = fuseReductions(events, ctx);
      // The reduce reads the add's result, not dx: with the add kept, it stays too.
      expect(methods(got.events).slice(0, 3), JSON.stringify(opts)).toEqual(['layerNormBackward', 'binary', 'reduce']);
    }
  });
  it('keeps the add when a call in between reads the residual or touches its output', () => {
    for (const slot of [5, 6]) {
      const between: TraceEvent[] = [{ kind: 'call', target: 'backend', method: 'unary', args: ['exp', { $s: slot === 5 ? 9 : slot }, { $s: slot === 5 ? 5 : 9 }] }];
      const { events, ctx } = trace([], { between });
      expect(methods(fuseReductions(events, ctx).events), `slot ${slot}`).toContain('binary');
    }
  });
  it('stops folding reduces at a call that writes the summed tensor', () => {
    const { events, ctx } = trace([
      { kind: 'call', target: 'backend', method: 'unary', args: ['neg', { $s: 8 }, { $s: 6 }] },
      { kind: 'call', target: 'backend', method: 'reduce', args: ['sum', { $s: 6 }, { $s: 9 }, { outer: 1, size: 4, inner: 3 }] },
    ]);
    // Slot 9 is 12 long: make it the sum's 3 by a reduce of the right size instead.
    ctx.recs[9].numel = 3;
    const got = fuseReductions(events, ctx);
    expect(methods(got.events)).toEqual(['layerNormBackwardFused', 'unary', 'reduce']);
  });
  it('leaves sums of another shape (over the columns, inner 1) to the reduce kernel', () => {
    const { events, ctx } = trace();
    (events[2] as { args: unknown[] }).args[3] = { outer: 12, size: 1, inner: 1 };
    ctx.recs[7].numel = 12;
    expect(methods(fuseReductions(events, ctx).events)).toEqual(['layerNormBackwardFused', 'reduce']);
  });
  // Rows 1 and 3 of dx + r (a class token's slice), copied out and summed.
  const slice: TraceEvent[] = [
    { kind: 'call', target: 'backend', method: 'stridedCopy', args: [{ $s: 6 }, { $s: 10 }, { shape: [2, 1, 3], srcStrides: [6, 3, 1], srcOffset: 3, dstStrides: [3, 3, 1], dstOffset: 0 }] },
    { kind: 'call', target: 'backend', method: 'reduce', args: ['sum', { $s: 10 }, { $s: 11 }, { outer: 1, size: 2, inner: 3 }] },
  ];
  it('folds a strided copy of a slice of dx that only a reduce reads, as a block sum', () => {
    const { events, ctx } = trace(slice);
    // A backend that only notes the layout its fused method receives.
    let layout: LayerNormBackwardFusedLayout | null = null;
    ctx.trace = { ...ctx.trace, backend: { name: 'spy', layerNormBackwardFused: (...a: unknown[]) => { layout = a[10] as LayerNormBackwardFusedLayout; } } as unknown as Backend };
    const got = fuseReductions(events, ctx);
    expect(methods(got.events)).toEqual(['layerNormBackwardFused']);
    expect(got.replaced).toBe(5);
    const call = got.events[0] as { args: unknown[]; fn: (...a: unknown[]) => void };
    // Its storages: grad, x, mean, rstd, weight, the residual, dx (the add's output), dweight, dbias, the sums.
    expect(call.args).toEqual([{ $s: 0 }, { $s: 1 }, { $s: 2 }, { $s: 3 }, null, { $s: 5 }, { $s: 6 }, null, null, { $s: 7 }, { $s: 11 }]);
    call.fn(...call.args);
    expect(layout).toEqual({ rows: 4, cols: 3, eps: 1e-5, addFirst: true, sums: [{ offset: 0, period: 3, width: 3, count: 4 }, { offset: 3, period: 6, width: 3, count: 2 }] });
  });
  it('keeps the copy and its reduce when the copy escapes (another call reads it)', () => {
    const { events, ctx } = trace([...slice, { kind: 'call', target: 'backend', method: 'unary', args: ['exp', { $s: 10 }, { $s: 8 }] }]);
    expect(methods(fuseReductions(events, ctx).events)).toEqual(['layerNormBackwardFused', 'stridedCopy', 'reduce', 'unary']);
  });
  it('does nothing on a backend without the kernel (WebGPU)', () => {
    const { events, ctx } = trace();
    ctx.trace = { ...ctx.trace, backend: { name: 'webgpu' } as unknown as Backend };
    expect(methods(fuseReductions(events, ctx).events)).toEqual(['layerNormBackward', 'binary', 'reduce']);
  });
  it('folds the projection bias gradient into attentionBackward only where dq, dk and dv are rows of one storage', () => {
    // Slots 0-4: grad, q, k, v, probs; 5-7: dq, dk, dv; 8: the sums. n 1, heads 1, l = s = 4, d 3: x [4, 9].
    const l = { n: 1, heads: 1, l: 4, s: 4, d: 3, scale: 0.5, q: { offset: 0, row: 9 }, k: { offset: 3, row: 9 }, v: { offset: 6, row: 9 } };
    for (const packed of [true, false]) {
      const { ctx } = trace();
      const numel = [12, 36, 36, 36, 16, 36, 36, 36, 9];
      ctx.recs.length = 0;
      numel.forEach((n, id) => ctx.recs.push({ id, storage: {} as Storage, origin: 'made', inputIndex: -1, numel: n, dtype: 'float32', viewOf: null, released: true, firstUse: -1, lastUse: -1, firstUseWritesAll: false }));
      const [dq, dk, dv] = packed ? [5, 5, 5] : [5, 6, 7];
      const events: TraceEvent[] = [
        { kind: 'call', target: 'backend', method: 'attentionBackward', args: [0, 1, 2, 3, 4, dq, dk, dv].map((x) => ({ $s: x })).concat([l as never]) },
        { kind: 'call', target: 'backend', method: 'reduce', args: ['sum', { $s: 5 }, { $s: 8 }, { outer: 1, size: 4, inner: 9 }] },
      ];
      const got = fuseReductions(events, ctx);
      expect(methods(got.events), `packed ${packed}`).toEqual(packed ? ['attentionBackwardWithSums'] : ['attentionBackward', 'reduce']);
    }
  });
});
