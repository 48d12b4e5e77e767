/**
 * Recorded command streams for captured steps (src/compile): while a plan runs a stretch of its
 * calls for the first time, the runtime hands this recorder every command it encodes (dispatches
 * with their pipeline, bindings and uniform values; clears; copies; host writes). Later replays
 * encode the recorded commands again into the open encoder: no WGSL text, no pipeline lookup, no
 * bind group or uniform work per dispatch, and the plan submits once at its end.
 *
 * What makes the recorded commands valid later:
 * - bind groups are built at the end of the recording against the recording's own uniform buffer
 *   (the values the calls computed, which are constants of the plan's static calls);
 * - host writes become copies from the recording's own staging buffer, so they keep their place
 *   in the command stream;
 * - a buffer that a call allocates and releases while recording (a scratch, an alias copy) is kept
 *   by the recording instead of going back to the pool, so no one else is handed it;
 * - a buffer the recording binds that its owner releases later (state moved elsewhere, a disposed
 *   model) invalidates every recording: `epoch` moves on and the plan records those calls again.
 */
import type { GPUStorage, PooledBuffer } from './runtime.js';

export type RecordedCommand =
  | { kind: 'dispatch'; pipeline: GPUComputePipeline; bindGroup: GPUBindGroup; x: number; y: number }
  | { kind: 'clear'; buffer: GPUBuffer; offset: number; size: number }
  | { kind: 'copy'; src: GPUBuffer; srcOffset: number; dst: GPUBuffer; dstOffset: number; size: number };

/** A finished recording: what a replay encodes, and what it holds. */
export interface Recording {
  readonly commands: readonly RecordedCommand[];
  /** Every buffer the commands touch (marked as used by the batch on each replay). */
  readonly touched: readonly PooledBuffer[];
  /** Buffers released while recording: kept here until dispose. */
  readonly owned: PooledBuffer[];
  /** The recording's uniform and staging buffers (destroyed on dispose). */
  readonly own: GPUBuffer[];
  /** The recorder's epoch when this was recorded: stale once it moves on. */
  readonly epoch: number;
  /** Dispatches among the commands. */
  readonly dispatches: number;
}

interface PendingDispatch {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  name: string;
  /** Uniform bytes (copied from the ring) and their place in the recording's uniform buffer. */
  uniformOffset: number;
  uniformSize: number;
  entries: { buffer: GPUBuffer; offset: number; size: number }[];
  x: number;
  y: number;
}

/** Uniform bindings must start at multiples of minUniformBufferOffsetAlignment (256 on every adapter we know). */
const UNIFORM_ALIGN = 256;

export class CommandRecorder {
  /** Moves on when a buffer bound by some recording is released: recordings of older epochs are stale. */
  epoch = 0;
  /** Buffers some live recording binds. */
  private readonly bound = new WeakSet<PooledBuffer>();
  private active: {
    items: (PendingDispatch | RecordedCommand)[];
    touched: Set<PooledBuffer>;
    owned: PooledBuffer[];
    uniforms: Uint8Array[];
    uniformBytes: number;
    writes: { dst: GPUBuffer; dstOffset: number; data: Uint8Array; stagingOffset: number }[];
    writeBytes: number;
  } | null = null;

  constructor(private readonly device: GPUDevice) {}

  get recording(): boolean {
    return this.active !== null;
  }

  begin(): void {
    if (this.active) throw new Error('internal: a command recording is already open');
    this.active = { items: [], touched: new Set(), owned: [], uniforms: [], uniformBytes: 0, writes: [], writeBytes: 0 };
  }

  dispatch(name: string, pipeline: GPUComputePipeline, layout: GPUBindGroupLayout, uniform: Uint8Array, binds: readonly { s: GPUStorage; size: number }[], x: number, y: number): void {
    const a = this.active!;
    const uniformOffset = a.uniformBytes;
    a.uniforms.push(uniform.slice());
    a.uniformBytes += Math.ceil(uniform.byteLength / UNIFORM_ALIGN) * UNIFORM_ALIGN;
    for (const b of binds) a.touched.add(b.s.buf);
    a.items.push({ pipeline, layout, name, uniformOffset, uniformSize: uniform.byteLength, entries: binds.map((b) => ({ buffer: b.s.buffer, offset: b.s.offset, size: b.size })), x, y });
  }

  clear(s: PooledBuffer, offset: number, size: number): void {
    this.active!.touched.add(s);
    this.active!.items.push({ kind: 'clear', buffer: s.buffer, offset, size });
  }

  copy(src: PooledBuffer, srcOffset: number, dst: PooledBuffer, dstOffset: number, size: number): void {
    this.active!.touched.add(src);
    this.active!.touched.add(dst);
    this.active!.items.push({ kind: 'copy', src: src.buffer, srcOffset, dst: dst.buffer, dstOffset, size });
  }

  /** A host write (queue.writeBuffer) becomes a copy from the recording's staging buffer. */
  write(dst: PooledBuffer, dstOffset: number, data: Uint8Array): void {
    const a = this.active!;
    a.touched.add(dst);
    const stagingOffset = a.writeBytes;
    a.writes.push({ dst: dst.buffer, dstOffset, data: data.slice(), stagingOffset });
    a.writeBytes += Math.ceil(data.byteLength / 4) * 4;
    // A placeholder copy; its source is the staging buffer made at the end.
    a.items.push({ kind: 'copy', src: null as unknown as GPUBuffer, srcOffset: stagingOffset, dst: dst.buffer, dstOffset, size: data.byteLength });
  }

  /**
   * A buffer is being released. While recording, the recording keeps it (true: do not pool it).
   * Otherwise, if a recording binds it, every recording is stale from now on.
   */
  released(b: PooledBuffer): boolean {
    if (this.active) {
      this.active.owned.push(b);
      return true;
    }
    if (this.bound.has(b)) {
      this.bound.delete(b);
      this.epoch++;
    }
    return false;
  }

  /** Closes the recording: builds its uniform and staging buffers and its bind groups. */
  end(): Recording {
    const a = this.active!;
    this.active = null;
    const own: GPUBuffer[] = [];
    let uniformBuffer: GPUBuffer | null = null;
    if (a.uniformBytes > 0) {
      uniformBuffer = this.device.createBuffer({ label: 'flatgrad recorded uniforms', size: a.uniformBytes, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
      const all = new Uint8Array(a.uniformBytes);
      let u = 0;
      for (const it of a.items) if (!('kind' in it)) all.set(a.uniforms[u++], it.uniformOffset);
      this.device.queue.writeBuffer(uniformBuffer, 0, all);
      own.push(uniformBuffer);
    }
    let staging: GPUBuffer | null = null;
    if (a.writeBytes > 0) {
      staging = this.device.createBuffer({ label: 'flatgrad recorded writes', size: a.writeBytes, usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
      const all = new Uint8Array(a.writeBytes);
      for (const w of a.writes) all.set(w.data, w.stagingOffset);
      this.device.queue.writeBuffer(staging, 0, all);
      own.push(staging);
    }
    let dispatches = 0;
    const commands: RecordedCommand[] = a.items.map((it) => {
      if ('kind' in it) return it.kind === 'copy' && it.src === null ? { ...it, src: staging! } : it;
      dispatches++;
      const bindGroup = this.device.createBindGroup({
        label: `${it.name} (recorded)`,
        layout: it.layout,
        entries: [
          { binding: 0, resource: { buffer: uniformBuffer!, offset: it.uniformOffset, size: it.uniformSize } },
          ...it.entries.map((e, i) => ({ binding: i + 1, resource: e })),
        ],
      });
      return { kind: 'dispatch', pipeline: it.pipeline, bindGroup, x: it.x, y: it.y };
    });
    // The buffers it owns are nobody else's: their release (at dispose) must not stale the others.
    const ownedSet = new Set(a.owned);
    for (const b of a.touched) if (!ownedSet.has(b)) this.bound.add(b);
    return { commands, touched: [...a.touched], owned: a.owned, own, epoch: this.epoch, dispatches };
  }

  /** Abandons an open recording (an error in the calls it was recording). */
  abort(): PooledBuffer[] {
    const owned = this.active?.owned ?? [];
    this.active = null;
    return owned;
  }
}
