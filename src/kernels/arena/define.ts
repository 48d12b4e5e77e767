/**
 * defineArenaKernel: the one declarative definition of a kernel over the flat parameter arena
 * (src/optim/arena.ts), checked when it is defined. Everything a renderer needs is derived here
 * once: the vectors read and written, the coefficients (maximal uniform subtrees, computed once
 * per parameter), the elementwise nodes in order, and the reductions with their slots.
 */
import {
  ArenaDefinitionError,
  children,
  describe,
  isNode,
  isReduction,
  isUniform,
  k as builders,
  topo,
  type Builders,
  type Node,
  type Operand,
  type Reduction,
} from './expr.js';

export type VectorAccess = 'read' | 'write' | 'readwrite';

/** The values a body sees: arena vectors, hyper-parameters and scalar slots, by declared name. */
export type Vectors = Readonly<Record<string, Node>>;

export interface ArenaKernelSpec {
  /** Names the kernel in errors, labels and caches. */
  name: string;
  /**
   * The arena vectors and how the kernel uses them: 'p' (parameters), 'g' (gradients) or any named
   * optimizer state or SAM buffer ('exp_avg', 'aux', ...), as FlatArena.vec(name) allocates them.
   * 'write' vectors are only written (every element of an active parameter), never read.
   */
  vectors: Readonly<Record<string, VectorAccess>>;
  /** Per-group hyper-parameters and their defaults (host numbers, a value per parameter group). */
  hyper?: Readonly<Record<string, number>>;
  /** Scalar slots of S (src/kernels/fused.ts) the kernel reads or its reductions write, by name. */
  slots?: Readonly<Record<string, number>>;
  /**
   * Adds one to each active parameter's step count (torch's state['step']) before the body runs:
   * true, or a uniform condition (one value per parameter; it must not read the step count) under
   * which the step is counted, for a kernel that writes through a `where` rather than a guard
   * (a restore fused with a gated update restores every parameter, and counts only a taken step).
   */
  countSteps?: boolean | ((h: Vectors, s: Vectors, k: Builders) => Node);
  /** Also run on parameters without a gradient this step (default false: they are left alone). */
  includeInactive?: boolean;
  /** A uniform condition per parameter: where false, nothing is written and no step is counted. */
  guard?: (h: Vectors, s: Vectors, k: Builders) => Node;
  /** The elementwise body: the new value of each written vector. All reads see the old values. */
  body?: (v: Vectors, h: Vectors, s: Vectors, k: Builders) => Readonly<Record<string, Operand>>;
  /** Reductions over the active elements (the old values), each written to a declared slot. */
  reduce?: (v: Vectors, h: Vectors, s: Vectors, k: Builders) => Readonly<Record<string, Reduction>>;
  /**
   * A scalar program run once after the pass (after the reductions are stored): assignments
   * slot = expression over scalar slots and constants, in order, each seeing the slots the earlier
   * ones wrote (entries [slot, value] when a slot is assigned twice). Computed in float64 on the
   * host, in float32 on a GPU, and stored in the arena's dtype. A kernel may consist of this alone
   * (no vectors): a scalar program such as SAM's step commit.
   */
  after?: (s: Vectors, k: Builders) => Readonly<Record<string, Operand>> | readonly (readonly [string, Operand])[];
}

export interface KernelVector {
  readonly name: string;
  readonly access: VectorAccess;
  /** The body reads it (some elementwise node is this vector). */
  readonly read: boolean;
}

export interface KernelReduction extends Reduction {
  readonly slotName: string;
  readonly slot: number;
}

/** A checked, analysed kernel: what the renderers consume. */
export interface ArenaKernel {
  readonly kind: 'arena-kernel';
  readonly name: string;
  readonly vectors: readonly KernelVector[];
  readonly hyper: Readonly<Record<string, number>>;
  readonly slots: Readonly<Record<string, number>>;
  readonly countSteps: boolean;
  /** The condition of countSteps when it is one (null: every active parameter is counted). */
  readonly countIf: Node | null;
  readonly includeInactive: boolean;
  readonly guard: Node | null;
  /** Written vectors (indexes into `vectors`) and their values. */
  readonly writes: readonly { readonly vector: number; readonly value: Node }[];
  readonly reductions: readonly KernelReduction[];
  /** The scalar program run after the pass, in order. */
  readonly after: readonly { readonly slotName: string; readonly slot: number; readonly value: Node }[];
  /** Maximal uniform subtrees the elementwise code uses: computed once per parameter. */
  readonly coefs: readonly Node[];
  /** The non-uniform nodes in dependency order. */
  readonly elementwise: readonly Node[];
  /** A canonical text of the whole definition: equal exactly when two kernels compute the same. */
  readonly signature: string;
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;

function fail(kernel: string, part: string, msg: string): never {
  throw new ArenaDefinitionError(`arena kernel "${kernel}": ${part}: ${msg}`);
}

/** A read-only view of declared names that rejects any other name at once. */
function declared(kernel: string, part: string, what: string, values: Record<string, Node>, onRead?: (name: string) => void): Vectors {
  return new Proxy(values, {
    get(target, prop) {
      if (typeof prop !== 'string') return undefined;
      if (!Object.prototype.hasOwnProperty.call(target, prop)) {
        const known = Object.keys(target);
        fail(kernel, part, `undeclared ${what} '${prop}' (declared: ${known.length ? known.join(', ') : 'none'})`);
      }
      onRead?.(prop);
      return target[prop];
    },
    set() {
      fail(kernel, part, `${what}s are read-only here; return the new values from the body`);
    },
  });
}

export function defineArenaKernel(spec: ArenaKernelSpec): ArenaKernel {
  const name = spec?.name;
  if (typeof name !== 'string' || name.length === 0) throw new ArenaDefinitionError('arena kernel: a definition needs a non-empty name');
  if (!spec.body && !spec.reduce && !spec.after) fail(name, 'definition', 'has neither a body, reductions nor a scalar program (after)');
  const vecEntries = Object.entries(spec.vectors ?? {});
  if (vecEntries.length === 0 && (spec.body || spec.reduce)) fail(name, 'vectors', 'declares no arena vector');
  for (const [v, a] of vecEntries) {
    if (!IDENT.test(v)) fail(name, 'vectors', `'${v}' is not a valid name (letters, digits and _)`);
    if (a !== 'read' && a !== 'write' && a !== 'readwrite') fail(name, 'vectors', `'${v}' has access ${JSON.stringify(a)}; expected 'read', 'write' or 'readwrite'`);
  }
  const hyper = { ...(spec.hyper ?? {}) };
  for (const [h, d] of Object.entries(hyper)) {
    if (!IDENT.test(h)) fail(name, 'hyper', `'${h}' is not a valid name`);
    if (typeof d !== 'number' || Number.isNaN(d)) fail(name, 'hyper', `'${h}' needs a numeric default, got ${JSON.stringify(d)}`);
  }
  const slots = { ...(spec.slots ?? {}) };
  for (const [s, i] of Object.entries(slots)) {
    if (!IDENT.test(s)) fail(name, 'slots', `'${s}' is not a valid name`);
    if (!Number.isInteger(i) || i < 0 || i >= 16) fail(name, 'slots', `'${s}' must be a slot index 0..15 of S, got ${i}`);
  }

  const run = <T>(part: string, f: () => T): T => {
    try {
      return f();
    } catch (e) {
      if (e instanceof ArenaDefinitionError && !e.message.startsWith('arena kernel "')) fail(name, part, e.message);
      throw e;
    }
  };
  const vecNodes: Record<string, Node> = {};
  for (const [v] of vecEntries) vecNodes[v] = { op: 'vec', ty: 'f', name: v };
  const hypNodes: Record<string, Node> = {};
  for (const h of Object.keys(hyper)) hypNodes[h] = { op: 'hyper', ty: 'f', name: h };
  const slotNodes: Record<string, Node> = {};
  for (const s of Object.keys(slots)) slotNodes[s] = { op: 'slot', ty: 'f', name: s };

  const proxies = (part: string) => {
    const v = declared(name, part, 'vector', vecNodes, (vn) => {
      if (spec.vectors[vn] === 'write') fail(name, part, `reads vector '${vn}', which is declared 'write' (write-only); declare it 'readwrite'`);
    });
    return [v, declared(name, part, 'hyper-parameter', hypNodes), declared(name, part, 'scalar slot', slotNodes)] as const;
  };

  let guard: Node | null = null;
  if (spec.guard) {
    const [, h, s] = proxies('guard');
    const g = run('guard', () => spec.guard!(h, s, builders));
    if (!isNode(g) || g.ty !== 'b') fail(name, 'guard', `must be a boolean expression, got ${isNode(g) ? `a float (${describe(g)})` : JSON.stringify(g)}`);
    if (!isUniform(g)) fail(name, 'guard', `must be uniform (one value per parameter), but reads an arena vector: ${describe(g)}`);
    // The step count is advanced after the guard is decided; a guard that read it would be circular.
    if (topo([g]).some((n) => n.op === 'step')) fail(name, 'guard', 'must not read the step count (it is advanced only when the guard holds)');
    guard = g;
  }

  let countIf: Node | null = null;
  if (typeof spec.countSteps === 'function') {
    const [, h, s] = proxies('countSteps');
    const c = run('countSteps', () => (spec.countSteps as (h: Vectors, s: Vectors, k: Builders) => Node)(h, s, builders));
    if (!isNode(c) || c.ty !== 'b') fail(name, 'countSteps', `must be true or a boolean expression, got ${isNode(c) ? `a float (${describe(c)})` : JSON.stringify(c)}`);
    if (!isUniform(c)) fail(name, 'countSteps', `must be uniform (one value per parameter), but reads an arena vector: ${describe(c)}`);
    if (topo([c]).some((n) => n.op === 'step')) fail(name, 'countSteps', 'must not read the step count it decides on');
    countIf = c;
  } else if (spec.countSteps !== undefined && typeof spec.countSteps !== 'boolean') fail(name, 'countSteps', `must be true, false or a condition, got ${JSON.stringify(spec.countSteps)}`);

  const writes: { vector: number; value: Node }[] = [];
  const vecIndex = new Map(vecEntries.map(([v], i) => [v, i]));
  if (spec.body) {
    const [v, h, s] = proxies('body');
    const out = run('body', () => spec.body!(v, h, s, builders));
    if (typeof out !== 'object' || out === null || isNode(out)) fail(name, 'body', 'must return an object { vectorName: newValue }');
    for (const [vn, val] of Object.entries(out)) {
      const part = `body, write to '${vn}'`;
      if (!vecIndex.has(vn)) fail(name, part, `writes undeclared vector '${vn}'`);
      if (spec.vectors[vn] === 'read') fail(name, part, `write to read-only input '${vn}' (declared 'read')`);
      if (isReduction(val)) fail(name, part, `a reduction (${val.reduction} of ${describe(val.x)}) used as an elementwise value; reductions go in reduce and write a slot`);
      let node: Node;
      if (typeof val === 'number') node = builders.c(val);
      else if (isNode(val)) node = val;
      else fail(name, part, `expected an expression or a number, got ${JSON.stringify(val) ?? String(val)}`);
      if (node.ty !== 'f') fail(name, part, `type mismatch: a vector holds floats, got a boolean (${describe(node)}); use k.where(cond, a, b)`);
      writes.push({ vector: vecIndex.get(vn)!, value: node });
    }
  }
  for (const [vn, a] of vecEntries) {
    if (a !== 'read' && !writes.some((w) => w.vector === vecIndex.get(vn))) fail(name, 'body', `vector '${vn}' is declared '${a}' but never written`);
  }

  const reductions: KernelReduction[] = [];
  if (spec.reduce) {
    const [v, h, s] = proxies('reduce');
    const out = run('reduce', () => spec.reduce!(v, h, s, builders));
    if (typeof out !== 'object' || out === null || isNode(out) || isReduction(out)) fail(name, 'reduce', 'must return an object { slotName: k.norm(x) | k.sum(x) | ... }');
    for (const [sn, r] of Object.entries(out)) {
      const part = `reduce, slot '${sn}'`;
      if (!(sn in slots)) fail(name, part, `writes undeclared scalar slot '${sn}' (declare it in slots)`);
      if (!isReduction(r)) fail(name, part, `expected a reduction (k.norm, k.sum, k.sumSquares, k.dot, k.maxAbs, k.anyNonFinite), got ${isNode(r) ? `an elementwise expression (${describe(r)})` : JSON.stringify(r)}`);
      reductions.push({ ...r, slotName: sn, slot: slots[sn] });
    }
  }

  const after: { slotName: string; slot: number; value: Node }[] = [];
  if (spec.after) {
    const [, , s] = proxies('after');
    const out = run('after', () => spec.after!(s, builders));
    if (typeof out !== 'object' || out === null || isNode(out) || isReduction(out)) fail(name, 'after', 'must return { slotName: expression } or [[slotName, expression], ...]');
    const entries: (readonly [string, Operand])[] = Array.isArray(out) ? out : Object.entries(out);
    for (const e of entries) {
      if (!Array.isArray(e) || e.length !== 2 || typeof e[0] !== 'string') fail(name, 'after', `expected [slotName, expression] entries, got ${JSON.stringify(e)}`);
      const [sn, val] = e;
      const part = `after, slot '${sn}'`;
      if (!(sn in slots)) fail(name, part, `writes undeclared scalar slot '${sn}' (declare it in slots)`);
      if (isReduction(val)) fail(name, part, `a reduction (${val.reduction} of ${describe(val.x)}) in the scalar program; reductions go in reduce`);
      const node = typeof val === 'number' ? builders.c(val) : isNode(val) ? val : fail(name, part, `expected an expression or a number, got ${JSON.stringify(val) ?? String(val)}`);
      if (node.ty !== 'f') fail(name, part, `type mismatch: a slot holds a float, got a boolean (${describe(node)}); use k.where(cond, 1, 0)`);
      const bad = topo([node]).find((n) => n.op !== 'slot' && n.op !== 'const' && children(n).length === 0);
      if (bad) fail(name, part, `a scalar program reads only scalar slots and constants, got ${describe(bad)}`);
      if (topo([node]).some((n) => n.op === 'draw')) fail(name, part, 'a scalar program has no parameter to draw for (paramUniform)');
      after.push({ slotName: sn, slot: slots[sn], value: node });
    }
  }

  const roots = [...writes.map((w) => w.value), ...reductions.map((r) => r.x)];
  const order = topo(roots, true);
  const coefs = order.filter((n) => isUniform(n));
  const elementwise = order.filter((n) => !isUniform(n));
  const readSet = new Set(elementwise.filter((n) => n.op === 'vec').map((n) => (n as { name: string }).name));
  const vectors = vecEntries.map(([v, a]) => ({ name: v, access: a, read: readSet.has(v) }));
  const kernel = {
    kind: 'arena-kernel' as const,
    name,
    vectors,
    hyper,
    slots,
    countSteps: spec.countSteps === true || countIf !== null,
    countIf,
    includeInactive: spec.includeInactive === true,
    guard,
    writes,
    reductions,
    after,
    coefs,
    elementwise,
    signature: '',
  };
  kernel.signature = signatureOf(kernel);
  return Object.freeze(kernel);
}

/** Canonical text of a kernel: nodes numbered in dependency order, so sharing shows. */
function signatureOf(kd: Omit<ArenaKernel, 'signature'>): string {
  const ids = new Map<Node, number>();
  const lines: string[] = [];
  const all = topo([...(kd.guard ? [kd.guard] : []), ...(kd.countIf ? [kd.countIf] : []), ...kd.after.map((a) => a.value), ...kd.writes.map((w) => w.value), ...kd.reductions.map((r) => r.x)]);
  for (const n of all) {
    const args = children(n).map((c) => `t${ids.get(c)}`);
    const own = n.op === 'const' ? String(n.value) : 'name' in n ? n.name : n.op === 'flag' ? String(n.flag) : '';
    ids.set(n, ids.size);
    lines.push(`t${ids.get(n)}=${n.op}(${[own, ...args].filter(Boolean).join(',')})`);
  }
  return [
    `kernel ${kd.name}`,
    `vectors ${kd.vectors.map((v) => `${v.name}:${v.access}`).join(' ')}`,
    `hyper ${Object.keys(kd.hyper).join(' ')}`,
    `slots ${Object.entries(kd.slots).map(([s, i]) => `${s}=${i}`).join(' ')}`,
    `flags ${kd.countSteps ? 'countSteps ' : ''}${kd.includeInactive ? 'includeInactive' : ''}`,
    ...lines,
    `guard ${kd.guard ? `t${ids.get(kd.guard)}` : '-'}`,
    `countIf ${kd.countIf ? `t${ids.get(kd.countIf)}` : '-'}`,
    ...kd.writes.map((w) => `write ${kd.vectors[w.vector].name}=t${ids.get(w.value)}`),
    ...kd.reductions.map((r) => `reduce ${r.slotName}=${r.reduction}(t${ids.get(r.x)})`),
    ...kd.after.map((a) => `after ${a.slotName}=t${ids.get(a.value)}`),
  ].join('\n');
}

/** Whether the kernel counts or reads per-parameter step counts (it then needs the steps storage). */
export function usesSteps(kernel: ArenaKernel): boolean {
  const nodes = [...kernel.coefs, ...(kernel.guard ? [kernel.guard] : [])];
  const seen = new Set<Node>();
  const visit = (n: Node): boolean => {
    if (seen.has(n)) return false;
    seen.add(n);
    if (n.op === 'step') return true;
    return ('c' in n && visit(n.c)) || ('a' in n && visit(n.a)) || ('b' in n && visit(n.b));
  };
  return kernel.countSteps || nodes.some(visit);
}

const keysMemo = new WeakMap<ArenaKernel, Set<Node>>();
/** The coefficients that are keys of a normal draw (k.normal): passed as exact whole numbers, not rounded to the dtype. */
export function rngKeys(kernel: ArenaKernel): Set<Node> {
  let s = keysMemo.get(kernel);
  if (!s) {
    s = new Set(kernel.elementwise.flatMap((n) => (n.op === 'normal' ? [n.a, n.b] : [])));
    keysMemo.set(kernel, s);
  }
  return s;
}
