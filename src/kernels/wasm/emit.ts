/**
 * A small WebAssembly binary emitter: just enough of the format (types, imports, functions,
 * exports, code) and of the instruction set (i32/f32/f64, bulk memory, 128-bit SIMD) for the
 * kernels in module.ts. Emitting the bytes from TypeScript keeps flatgrad free of a toolchain at
 * install time and lets kernels be generated in variants (micro-kernel shapes, per-op bodies).
 *
 * Instructions are written as expressions: `f32x4.add(acc, f32x4.mul(a, b))` is a function that,
 * given a FuncBuilder, emits its operands and then its opcode (a stack machine's post-order).
 * Operands may be other expressions, locals (read with local.get) or plain numbers (a constant of
 * the instruction's operand type; a splatted constant for vector types).
 */

export const ValType = { i32: 0x7f, i64: 0x7e, f32: 0x7d, f64: 0x7c, v128: 0x7b } as const;
export type ValType = (typeof ValType)[keyof typeof ValType];

/** Writes the pieces of the binary format. */
class ByteWriter {
  readonly bytes: number[] = [];
  byte(...b: number[]): this {
    for (const x of b) this.bytes.push(x & 0xff);
    return this;
  }
  /** Unsigned LEB128. */
  u32(v: number): this {
    let x = v >>> 0;
    do {
      let b = x & 0x7f;
      x >>>= 7;
      if (x !== 0) b |= 0x80;
      this.bytes.push(b);
    } while (x !== 0);
    return this;
  }
  /** Signed LEB128 of a 32-bit integer. */
  s32(v: number): this {
    let x = v | 0;
    for (;;) {
      const b = x & 0x7f;
      x >>= 7;
      const done = (x === 0 && (b & 0x40) === 0) || (x === -1 && (b & 0x40) !== 0);
      this.bytes.push(done ? b : b | 0x80);
      if (done) return this;
    }
  }
  f32(v: number): this {
    const buf = new DataView(new ArrayBuffer(4));
    buf.setFloat32(0, v, true);
    for (let i = 0; i < 4; i++) this.bytes.push(buf.getUint8(i));
    return this;
  }
  f64(v: number): this {
    const buf = new DataView(new ArrayBuffer(8));
    buf.setFloat64(0, v, true);
    for (let i = 0; i < 8; i++) this.bytes.push(buf.getUint8(i));
    return this;
  }
  name(s: string): this {
    const utf8 = new TextEncoder().encode(s);
    this.u32(utf8.length);
    for (const b of utf8) this.bytes.push(b);
    return this;
  }
  /** A vector: its length then its items. */
  vec<T>(items: readonly T[], write: (w: this, item: T) => void): this {
    this.u32(items.length);
    for (const it of items) write(this, it);
    return this;
  }
  /** A section or code body: its byte size, then the bytes. */
  sized(inner: ByteWriter): this {
    this.u32(inner.bytes.length);
    for (const b of inner.bytes) this.bytes.push(b);
    return this;
  }
}

export class Local {
  constructor(
    readonly index: number,
    readonly type: ValType,
  ) {}
}

/** Something that leaves one value (or, for stores and void calls, nothing) on the stack. */
export type Expr = (f: FuncBuilder) => void;
export type Operand = Expr | Local | number;

/** A block or loop, as a branch target. */
export class Label {
  constructor(readonly isLoop: boolean) {}
}

function emitConst(f: FuncBuilder, type: ValType, v: number): void {
  switch (type) {
    case ValType.i32:
      f.raw.byte(0x41).s32(v);
      return;
    case ValType.f32:
      f.raw.byte(0x43).f32(v);
      return;
    case ValType.f64:
      f.raw.byte(0x44).f64(v);
      return;
    default:
      throw new Error(`emit: no scalar constant of type 0x${type.toString(16)}`);
  }
}

/** How a plain number operand becomes a constant for a given operand kind. */
type Lanes = 'i32x4' | 'f32x4' | 'f64x2';
type OperandKind = typeof ValType.i32 | typeof ValType.f32 | typeof ValType.f64 | Lanes | 'v128';

function emitOperand(f: FuncBuilder, x: Operand, kind: OperandKind): void {
  if (typeof x === 'number') {
    if (kind === 'v128') throw new Error('emit: a plain number is ambiguous as a v128 operand');
    if (typeof kind === 'string') {
      const w = new ByteWriter();
      for (let i = 0; i < (kind === 'f64x2' ? 2 : 4); i++) {
        if (kind === 'i32x4') w.byte(x & 0xff, (x >> 8) & 0xff, (x >> 16) & 0xff, (x >> 24) & 0xff);
        else if (kind === 'f32x4') w.f32(x);
        else w.f64(x);
      }
      f.raw.byte(0xfd).u32(0x0c).byte(...w.bytes);
    } else emitConst(f, kind, x);
  } else if (x instanceof Local) f.raw.byte(0x20).u32(x.index);
  else x(f);
}

/** An instruction with a one-byte opcode over operands of one kind. */
function plain(code: number, kind: OperandKind) {
  return (...xs: Operand[]): Expr =>
    (f) => {
      for (const x of xs) emitOperand(f, x, kind);
      f.raw.byte(code);
    };
}

/** A 0xFD-prefixed SIMD instruction over operands of one kind (the last operand may differ: shifts take an i32). */
function simd(code: number, kind: OperandKind, lastKind: OperandKind = kind) {
  return (...xs: Operand[]): Expr =>
    (f) => {
      xs.forEach((x, i) => emitOperand(f, x, i === xs.length - 1 ? lastKind : kind));
      f.raw.byte(0xfd).u32(code);
    };
}

function simdLane(code: number, kind: OperandKind) {
  return (x: Operand, lane: number): Expr =>
    (f) => {
      emitOperand(f, x, kind);
      f.raw.byte(0xfd).u32(code).byte(lane);
    };
}

/** Loads take an address (i32) and a constant byte offset; alignment is the natural one (a hint). */
function load(prefix: number | null, code: number, alignLog2: number) {
  return (addr: Operand, offset = 0): Expr =>
    (f) => {
      emitOperand(f, addr, ValType.i32);
      if (prefix !== null) f.raw.byte(prefix).u32(code);
      else f.raw.byte(code);
      f.raw.u32(alignLog2).u32(offset);
    };
}

function store(prefix: number | null, code: number, alignLog2: number, valueKind: OperandKind) {
  return (addr: Operand, value: Operand, offset = 0): Expr =>
    (f) => {
      emitOperand(f, addr, ValType.i32);
      emitOperand(f, value, valueKind);
      if (prefix !== null) f.raw.byte(prefix).u32(code);
      else f.raw.byte(code);
      f.raw.u32(alignLog2).u32(offset);
    };
}

export const i32 = {
  const: (v: number): Expr => (f) => emitConst(f, ValType.i32, v),
  load: load(null, 0x28, 2),
  load8u: load(null, 0x2d, 0),
  store: store(null, 0x36, 2, ValType.i32),
  store8: store(null, 0x3a, 0, ValType.i32),
  eqz: plain(0x45, ValType.i32),
  eq: plain(0x46, ValType.i32),
  ne: plain(0x47, ValType.i32),
  ltS: plain(0x48, ValType.i32),
  ltU: plain(0x49, ValType.i32),
  gtS: plain(0x4a, ValType.i32),
  gtU: plain(0x4b, ValType.i32),
  leS: plain(0x4c, ValType.i32),
  geS: plain(0x4e, ValType.i32),
  geU: plain(0x4f, ValType.i32),
  add: plain(0x6a, ValType.i32),
  sub: plain(0x6b, ValType.i32),
  mul: plain(0x6c, ValType.i32),
  divS: plain(0x6d, ValType.i32),
  divU: plain(0x6e, ValType.i32),
  and: plain(0x71, ValType.i32),
  or: plain(0x72, ValType.i32),
  xor: plain(0x73, ValType.i32),
  shl: plain(0x74, ValType.i32),
  shrS: plain(0x75, ValType.i32),
  shrU: plain(0x76, ValType.i32),
  truncF32S: plain(0xa8, ValType.f32),
  reinterpretF32: plain(0xbc, ValType.f32),
};

export const f32 = {
  const: (v: number): Expr => (f) => emitConst(f, ValType.f32, v),
  load: load(null, 0x2a, 2),
  store: store(null, 0x38, 2, ValType.f32),
  eq: plain(0x5b, ValType.f32),
  ne: plain(0x5c, ValType.f32),
  lt: plain(0x5d, ValType.f32),
  gt: plain(0x5e, ValType.f32),
  le: plain(0x5f, ValType.f32),
  ge: plain(0x60, ValType.f32),
  abs: plain(0x8b, ValType.f32),
  neg: plain(0x8c, ValType.f32),
  sqrt: plain(0x91, ValType.f32),
  add: plain(0x92, ValType.f32),
  sub: plain(0x93, ValType.f32),
  mul: plain(0x94, ValType.f32),
  div: plain(0x95, ValType.f32),
  min: plain(0x96, ValType.f32),
  max: plain(0x97, ValType.f32),
  convertI32S: plain(0xb2, ValType.i32),
  demoteF64: plain(0xb6, ValType.f64),
  reinterpretI32: plain(0xbe, ValType.i32),
};

export const f64 = {
  const: (v: number): Expr => (f) => emitConst(f, ValType.f64, v),
  load: load(null, 0x2b, 3),
  store: store(null, 0x39, 3, ValType.f64),
  ne: plain(0x62, ValType.f64),
  gt: plain(0x64, ValType.f64),
  abs: plain(0x99, ValType.f64),
  sqrt: plain(0x9f, ValType.f64),
  add: plain(0xa0, ValType.f64),
  sub: plain(0xa1, ValType.f64),
  mul: plain(0xa2, ValType.f64),
  div: plain(0xa3, ValType.f64),
  convertI32S: plain(0xb7, ValType.i32),
  promoteF32: plain(0xbb, ValType.f32),
};

export const v128 = {
  load: load(0xfd, 0x00, 4),
  load32Splat: load(0xfd, 0x09, 2),
  store: store(0xfd, 0x0b, 4, 'v128'),
  /** Loads 32 bits into lane 0 and zeroes the rest. */
  load32Zero: load(0xfd, 0x5c, 2),
  /** Stores byte `lane` of a vector. */
  store8Lane: (addr: Operand, value: Operand, lane: number, offset = 0): Expr =>
    (f) => {
      emitOperand(f, addr, ValType.i32);
      emitOperand(f, value, 'v128');
      f.raw.byte(0xfd).u32(0x58).u32(0).u32(offset).byte(lane);
    },
  /** Stores lane `lane` of a vector as 32 bits. */
  store32Lane: (addr: Operand, value: Operand, lane: number, offset = 0): Expr =>
    (f) => {
      emitOperand(f, addr, ValType.i32);
      emitOperand(f, value, 'v128');
      f.raw.byte(0xfd).u32(0x5a).u32(2).u32(offset).byte(lane);
    },
  /** Loads 64 bits into lane 0 (of i64x2) and zeroes the rest. */
  load64Zero: load(0xfd, 0x5d, 3),
  /** Stores lane `lane` of a vector as 64 bits. */
  store64Lane: (addr: Operand, value: Operand, lane: number, offset = 0): Expr =>
    (f) => {
      emitOperand(f, addr, ValType.i32);
      emitOperand(f, value, 'v128');
      f.raw.byte(0xfd).u32(0x5b).u32(3).u32(offset).byte(lane);
    },
  not: simd(0x4d, 'v128'),
  and: simd(0x4e, 'v128'),
  xor: simd(0x51, 'v128'),
  andnot: simd(0x4f, 'v128'),
  or: simd(0x50, 'v128'),
  /** bitselect(a, b, mask): bits of a where mask is 1, of b elsewhere. */
  bitselect: simd(0x52, 'v128'),
  anyTrue: simd(0x53, 'v128'),
  /** A vector constant from four i32 lanes. */
  i32x4: (lanes: readonly [number, number, number, number]): Expr =>
    (f) => {
      const w = new ByteWriter();
      for (const x of lanes) w.byte(x & 0xff, (x >> 8) & 0xff, (x >> 16) & 0xff, (x >> 24) & 0xff);
      f.raw.byte(0xfd).u32(0x0c).byte(...w.bytes);
    },
  /** Shuffles the bytes of two vectors: `lanes` holds 16 byte indexes into a ++ b. */
  shuffle: (a: Operand, b: Operand, lanes: readonly number[]): Expr =>
    (f) => {
      emitOperand(f, a, 'v128');
      emitOperand(f, b, 'v128');
      f.raw.byte(0xfd).u32(0x0d).byte(...lanes);
    },
};

export const i32x4 = {
  splat: simd(0x11, ValType.i32),
  extractLane: simdLane(0x1b, 'v128'),
  /** v with lane `lane` replaced by the i32 x. */
  replaceLane: (v: Operand, lane: number, x: Operand): Expr =>
    (f) => {
      emitOperand(f, v, 'v128');
      emitOperand(f, x, ValType.i32);
      f.raw.byte(0xfd).u32(0x1c).byte(lane);
    },
  eq: simd(0x37, 'i32x4'),
  ne: simd(0x38, 'i32x4'),
  ltS: simd(0x39, 'i32x4'),
  gtS: simd(0x3b, 'i32x4'),
  leS: simd(0x3d, 'i32x4'),
  geS: simd(0x3f, 'i32x4'),
  extendLowI16x8U: simd(0xa9, 'v128'),
  abs: simd(0xa0, 'i32x4'),
  neg: simd(0xa1, 'i32x4'),
  shl: simd(0xab, 'i32x4', ValType.i32),
  shrS: simd(0xac, 'i32x4', ValType.i32),
  shrU: simd(0xad, 'i32x4', ValType.i32),
  add: simd(0xae, 'i32x4'),
  sub: simd(0xb1, 'i32x4'),
  mul: simd(0xb5, 'i32x4'),
  minS: simd(0xb6, 'i32x4'),
  maxS: simd(0xb8, 'i32x4'),
  truncSatF32x4S: simd(0xf8, 'f32x4'),
  /** The lanes' sign bits as an i32 (bit k from lane k). */
  bitmask: simd(0xa4, 'v128'),
};

export const i64x2 = {
  /** Full 64-bit products of the low (high) two unsigned i32 lanes. */
  extmulLowI32x4U: simd(0xde, 'i32x4'),
  extmulHighI32x4U: simd(0xdf, 'i32x4'),
  // Operands are v128 (constants via v128.i32x4): a plain number has no i64x2 constant form here.
  shl: simd(0xcb, 'v128', ValType.i32),
  shrU: simd(0xcd, 'v128', ValType.i32),
  add: simd(0xce, 'v128'),
  sub: simd(0xd1, 'v128'),
};

export const i16x8 = {
  narrowI32x4S: simd(0x85, 'v128'),
  narrowI32x4U: simd(0x86, 'v128'),
  extendLowI8x16U: simd(0x89, 'v128'),
};

export const i8x16 = {
  narrowI16x8S: simd(0x65, 'v128'),
  narrowI16x8U: simd(0x66, 'v128'),
  sub: simd(0x71, 'v128'),
  /** swizzle(a, idx): byte idx[j] of a in byte j (0 where idx[j] > 15). */
  swizzle: simd(0x0e, 'v128'),
};

export const f32x4 = {
  splat: simd(0x13, ValType.f32),
  extractLane: simdLane(0x1f, 'v128'),
  /** v with lane `lane` replaced by the f32 x. */
  replaceLane: (v: Operand, lane: number, x: Operand): Expr =>
    (f) => {
      emitOperand(f, v, 'v128');
      emitOperand(f, x, ValType.f32);
      f.raw.byte(0xfd).u32(0x20).byte(lane);
    },
  eq: simd(0x41, 'f32x4'),
  ne: simd(0x42, 'f32x4'),
  lt: simd(0x43, 'f32x4'),
  gt: simd(0x44, 'f32x4'),
  le: simd(0x45, 'f32x4'),
  ge: simd(0x46, 'f32x4'),
  ceil: simd(0x67, 'f32x4'),
  floor: simd(0x68, 'f32x4'),
  nearest: simd(0x6a, 'f32x4'),
  abs: simd(0xe0, 'f32x4'),
  neg: simd(0xe1, 'f32x4'),
  sqrt: simd(0xe3, 'f32x4'),
  add: simd(0xe4, 'f32x4'),
  sub: simd(0xe5, 'f32x4'),
  mul: simd(0xe6, 'f32x4'),
  div: simd(0xe7, 'f32x4'),
  /** NaN-propagating minimum and maximum (IEEE-754 2019 minimum/maximum). */
  min: simd(0xe8, 'f32x4'),
  max: simd(0xe9, 'f32x4'),
  /**
   * Pseudo-minimum and -maximum: pmin(a, b) = b < a ? b : a, pmax(a, b) = a < b ? b : a. One
   * instruction on x64 (the NaN-propagating min/max take about eight), and a NaN in b is ignored.
   */
  pmin: simd(0xea, 'f32x4'),
  pmax: simd(0xeb, 'f32x4'),
  convertI32x4S: simd(0xfa, 'i32x4'),
  demoteF64x2Zero: simd(0x5e, 'f64x2'),
};

export const f64x2 = {
  splat: simd(0x14, ValType.f64),
  extractLane: simdLane(0x21, 'v128'),
  eq: simd(0x47, 'f64x2'),
  ne: simd(0x48, 'f64x2'),
  lt: simd(0x49, 'f64x2'),
  gt: simd(0x4a, 'f64x2'),
  le: simd(0x4b, 'f64x2'),
  ge: simd(0x4c, 'f64x2'),
  floor: simd(0x75, 'f64x2'),
  nearest: simd(0x94, 'f64x2'),
  abs: simd(0xec, 'f64x2'),
  neg: simd(0xed, 'f64x2'),
  sqrt: simd(0xef, 'f64x2'),
  add: simd(0xf0, 'f64x2'),
  sub: simd(0xf1, 'f64x2'),
  mul: simd(0xf2, 'f64x2'),
  div: simd(0xf3, 'f64x2'),
  convertLowI32x4S: simd(0xfe, 'i32x4'),
  promoteLowF32x4: simd(0x5f, 'f32x4'),
  /** pmin(a, b) = b < a ? b : a, pmax(a, b) = a < b ? b : a (a NaN in a passes through). */
  pmin: simd(0xf6, 'f64x2'),
  pmax: simd(0xf7, 'f64x2'),
};

/** select(a, b, cond): a when cond is nonzero, else b. */
export function select(a: Operand, b: Operand, cond: Operand, kind: OperandKind = ValType.i32): Expr {
  return (f) => {
    emitOperand(f, a, kind);
    emitOperand(f, b, kind);
    emitOperand(f, cond, ValType.i32);
    f.raw.byte(0x1b);
  };
}

export interface FuncRef {
  readonly index: number;
  readonly params: readonly ValType[];
  readonly results: readonly ValType[];
}

/** call(fn, ...args): args are i32 operands unless given as expressions or locals of their own type. */
export function call(fn: FuncRef, ...args: Operand[]): Expr {
  return (f) => {
    args.forEach((a, i) => emitOperand(f, a, fn.params[i] as OperandKind));
    f.raw.byte(0x10).u32(fn.index);
  };
}

/** memory.fill(dst, byte, len) and memory.copy(dst, src, len) (bulk memory). */
export const memory = {
  fill: (dst: Operand, value: Operand, len: Operand): Expr =>
    (f) => {
      for (const x of [dst, value, len]) emitOperand(f, x, ValType.i32);
      f.raw.byte(0xfc).u32(11).byte(0);
    },
  copy: (dst: Operand, src: Operand, len: Operand): Expr =>
    (f) => {
      for (const x of [dst, src, len]) emitOperand(f, x, ValType.i32);
      f.raw.byte(0xfc).u32(10).byte(0, 0);
    },
};

/** Builds one function body: locals, statements and structured control flow. */
export class FuncBuilder {
  readonly raw = new ByteWriter();
  readonly params: Local[];
  private readonly locals: ValType[] = [];
  private readonly labels: Label[] = [];

  constructor(params: readonly ValType[]) {
    this.params = params.map((t, i) => new Local(i, t));
  }

  local(type: ValType): Local {
    this.locals.push(type);
    return new Local(this.params.length + this.locals.length - 1, type);
  }
  localsOf(type: ValType, n: number): Local[] {
    return Array.from({ length: n }, () => this.local(type));
  }

  /** Evaluates an expression whose value (if any) is the function's result or is consumed later. */
  push(x: Operand, kind: OperandKind = ValType.i32): void {
    emitOperand(this, x, kind);
  }
  /** Runs expressions that leave nothing on the stack (stores, void calls). */
  exec(...xs: Expr[]): void {
    for (const x of xs) x(this);
  }
  drop(x: Expr): void {
    x(this);
    this.raw.byte(0x1a);
  }
  set(l: Local, x: Operand): void {
    emitOperand(this, x, l.type === ValType.v128 ? 'v128' : (l.type as OperandKind));
    this.raw.byte(0x21).u32(l.index);
  }
  /** l += step, for an i32 local. */
  inc(l: Local, step: Operand = 1): void {
    this.set(l, i32.add(l, step));
  }

  block(body: (exit: Label) => void): void {
    this.structured(0x02, false, body);
  }
  loop(body: (top: Label) => void): void {
    this.structured(0x03, true, body);
  }
  if(cond: Operand, then: () => void, otherwise?: () => void): void {
    emitOperand(this, cond, ValType.i32);
    const label = new Label(false);
    this.raw.byte(0x04, 0x40);
    this.labels.push(label);
    then();
    if (otherwise) {
      this.raw.byte(0x05);
      otherwise();
    }
    this.labels.pop();
    this.raw.byte(0x0b);
  }
  br(label: Label): void {
    this.raw.byte(0x0c).u32(this.depth(label));
  }
  brIf(label: Label, cond: Operand): void {
    emitOperand(this, cond, ValType.i32);
    this.raw.byte(0x0d).u32(this.depth(label));
  }
  ret(x?: Operand, kind: OperandKind = ValType.i32): void {
    if (x !== undefined) emitOperand(this, x, kind);
    this.raw.byte(0x0f);
  }

  /** for (i = start; i < end; i += step) body(), with a signed comparison. */
  for(i: Local, start: Operand, end: Operand, step: Operand, body: () => void): void {
    this.set(i, start);
    this.block((exit) =>
      this.loop((top) => {
        this.brIf(exit, i32.geS(i, end));
        body();
        this.inc(i, step);
        this.br(top);
      }),
    );
  }

  /** The code entry: locals (run-length encoded by type) and the body. */
  encode(): ByteWriter {
    const runs: [number, ValType][] = [];
    for (const t of this.locals) {
      const last = runs[runs.length - 1];
      if (last && last[1] === t) last[0]++;
      else runs.push([1, t]);
    }
    const w = new ByteWriter();
    w.vec(runs, (w, [n, t]) => w.u32(n).byte(t));
    w.byte(...this.raw.bytes, 0x0b);
    return w;
  }

  private structured(code: number, isLoop: boolean, body: (l: Label) => void): void {
    const label = new Label(isLoop);
    this.raw.byte(code, 0x40);
    this.labels.push(label);
    body(label);
    this.labels.pop();
    this.raw.byte(0x0b);
  }
  private depth(label: Label): number {
    const i = this.labels.lastIndexOf(label);
    if (i < 0) throw new Error('emit: branch to a label that is not in scope');
    return this.labels.length - 1 - i;
  }
}

interface FuncDef extends FuncRef {
  name: string;
  exported: boolean;
  body: FuncBuilder;
}

export interface MemoryLimits {
  initial: number;
  maximum?: number;
  shared?: boolean;
}

/** Builds a module that imports its memory (and any host functions) and exports its kernels. */
export class ModuleBuilder {
  private readonly types: string[] = [];
  private readonly funcImports: { module: string; name: string; type: number }[] = [];
  private memoryImport: { module: string; name: string; limits: MemoryLimits } | null = null;
  private readonly funcs: FuncDef[] = [];

  importMemory(module: string, name: string, limits: MemoryLimits): void {
    this.memoryImport = { module, name, limits };
  }

  importFunction(module: string, name: string, params: ValType[], results: ValType[]): FuncRef {
    if (this.funcs.length > 0) throw new Error('emit: import functions before defining any');
    this.funcImports.push({ module, name, type: this.typeIndex(params, results) });
    return { index: this.funcImports.length - 1, params, results };
  }

  /** Defines a function; `body` receives the builder and the parameter locals. */
  func(
    name: string,
    params: ValType[],
    results: ValType[],
    body: (f: FuncBuilder, ...args: Local[]) => void,
    opts: { exported?: boolean } = {},
  ): FuncRef {
    const f = new FuncBuilder(params);
    body(f, ...f.params);
    const def: FuncDef = {
      name,
      exported: opts.exported ?? true,
      body: f,
      params,
      results,
      index: this.funcImports.length + this.funcs.length,
    };
    this.typeIndex(params, results);
    this.funcs.push(def);
    return def;
  }

  toBytes(): Uint8Array {
    const out = new ByteWriter().byte(0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00);
    const section = (id: number, fill: (w: ByteWriter) => void) => {
      const w = new ByteWriter();
      fill(w);
      out.byte(id).sized(w);
    };
    section(1, (w) =>
      w.vec(this.types, (w, key) => {
        const [params, results] = key.split('|').map((s) => (s ? s.split(',').map(Number) : []));
        w.byte(0x60).vec(params, (w, t) => w.byte(t)).vec(results, (w, t) => w.byte(t));
      }),
    );
    const mem = this.memoryImport;
    const imports = this.funcImports.length + (mem ? 1 : 0);
    section(2, (w) => {
      w.u32(imports);
      for (const imp of this.funcImports) w.name(imp.module).name(imp.name).byte(0x00).u32(imp.type);
      if (mem) {
        const { initial, maximum, shared } = mem.limits;
        w.name(mem.module).name(mem.name).byte(0x02);
        if (shared) w.byte(0x03).u32(initial).u32(maximum ?? 65536);
        else if (maximum !== undefined) w.byte(0x01).u32(initial).u32(maximum);
        else w.byte(0x00).u32(initial);
      }
    });
    section(3, (w) => w.vec(this.funcs, (w, fn) => w.u32(this.typeIndex(fn.params, fn.results))));
    const exported = this.funcs.filter((fn) => fn.exported);
    section(7, (w) => w.vec(exported, (w, fn) => w.name(fn.name).byte(0x00).u32(fn.index)));
    section(10, (w) => w.vec(this.funcs, (w, fn) => w.sized(fn.body.encode())));
    return Uint8Array.from(out.bytes);
  }

  private typeIndex(params: readonly ValType[], results: readonly ValType[]): number {
    const key = `${params.join(',')}|${results.join(',')}`;
    let i = this.types.indexOf(key);
    if (i < 0) i = this.types.push(key) - 1;
    return i;
  }
}
