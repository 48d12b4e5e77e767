/**
 * The expression language of arena kernels: typed nodes that the renderers (reference.ts, wasm.ts,
 * wgsl.ts) turn into code. A kernel body is a DAG of these nodes built by plain function calls
 * (`k.add(k.mul(beta1, m), g)`); a node used twice is computed once (sharing is by identity).
 *
 * Two value types: 'f' (a float of the arena's dtype) and 'b' (a boolean). Each node is either
 * *uniform* (it reads no arena vector: constants, per-group hyper-parameters, scalar slots of S,
 * the parameter's flags and step count, and arithmetic over those) or *elementwise*. Uniform
 * subtrees are coefficients: the host backends compute them once per parameter in float64 and
 * round them to the arena's dtype where they enter the elementwise body; the elementwise
 * operations round after every operation (see reference.ts). Reductions (norm, sum, max |x|, any
 * non-finite) are not nodes: they are separate values that write scalar slots, so a reduction
 * can never be used as an elementwise value by mistake.
 */

export type Ty = 'f' | 'b';

export type BinaryOp = 'add' | 'sub' | 'mul' | 'div' | 'min' | 'max';
export type UnaryOp = 'neg' | 'abs' | 'sqrt' | 'sign';
export type CompareOp = 'lt' | 'le' | 'gt' | 'ge' | 'eq' | 'ne';
export type LogicOp = 'and' | 'or';

export type Node =
  | { readonly op: 'vec'; readonly ty: 'f'; readonly name: string }
  | { readonly op: 'hyper'; readonly ty: 'f'; readonly name: string }
  | { readonly op: 'slot'; readonly ty: 'f'; readonly name: string }
  | { readonly op: 'const'; readonly ty: 'f'; readonly value: number }
  | { readonly op: 'flag'; readonly ty: 'b'; readonly flag: number }
  | { readonly op: 'step'; readonly ty: 'f' }
  | { readonly op: BinaryOp; readonly ty: 'f'; readonly a: Node; readonly b: Node }
  | { readonly op: UnaryOp; readonly ty: 'f'; readonly a: Node }
  | { readonly op: CompareOp; readonly ty: 'b'; readonly a: Node; readonly b: Node }
  | { readonly op: LogicOp; readonly ty: 'b'; readonly a: Node; readonly b: Node }
  | { readonly op: 'not'; readonly ty: 'b'; readonly a: Node }
  | { readonly op: 'nonfinite'; readonly ty: 'b'; readonly a: Node }
  | { readonly op: 'where'; readonly ty: 'f'; readonly c: Node; readonly a: Node; readonly b: Node }
  /** b^e for uniform b and e (Adam's bias correction beta^t): float64 on the host, repeated squaring on a GPU. */
  | { readonly op: 'pow'; readonly ty: 'f'; readonly a: Node; readonly b: Node }
  /**
   * A per-parameter uniform draw in [0, 1): uniformAt(a, b, index of the parameter) of
   * src/kernels/rng.ts, with uniform keys a and b (ESAM's random choice of parameters).
   */
  | { readonly op: 'draw'; readonly ty: 'f'; readonly a: Node; readonly b: Node }
  /**
   * A standard normal draw per element: normalAt(a, b, i) of src/kernels/normal.ts for the element's
   * arena index i (a per-tensor run passes each tensor's arena offset), with uniform keys a and b
   * (hyper-parameters or constants: whole numbers below 2^32). Elementwise, though it reads no vector.
   */
  | { readonly op: 'normal'; readonly ty: 'f'; readonly a: Node; readonly b: Node };

export type ReductionKind = 'sum' | 'maxabs' | 'nonfinite' | 'norm';

/**
 * A reduction over the active elements of the arena, written to a scalar slot. The summation
 * order is fixed (reduce.ts): per 64-element block, sixteen accumulators (element 16q + 4m + L
 * to quad m, lane L), combined quad by quad then lane by lane; then the block partials in a
 * fixed pairwise tree. `norm` is scaled by the largest magnitude, so it never overflows while the
 * norm itself is representable.
 */
export interface Reduction {
  readonly reduction: ReductionKind;
  readonly x: Node;
}

/** Anything a builder accepts where a float is expected: a node or a number (a constant). */
export type Operand = Node | number;

/** Thrown by the builders; defineArenaKernel adds the kernel's name and the part being defined. */
export class ArenaDefinitionError extends Error {
  override name = 'ArenaDefinitionError';
}

const TY_NAME: Record<Ty, string> = { f: 'a float', b: 'a boolean' };

export function isNode(x: unknown): x is Node {
  return typeof x === 'object' && x !== null && typeof (x as { op?: unknown }).op === 'string' && 'ty' in x;
}
export function isReduction(x: unknown): x is Reduction {
  return typeof x === 'object' && x !== null && typeof (x as { reduction?: unknown }).reduction === 'string';
}

/** A short text of a node for error messages. */
export function describe(n: Node, depth = 2): string {
  switch (n.op) {
    case 'vec':
      return n.name;
    case 'hyper':
      return `hyper.${n.name}`;
    case 'slot':
      return `slot.${n.name}`;
    case 'const':
      return String(n.value);
    case 'flag':
      return `flag(${n.flag})`;
    case 'step':
      return 'step';
  }
  if (depth === 0) return `${n.op}(...)`;
  const args = 'c' in n ? [n.c, n.a, n.b] : 'b' in n ? [n.a, n.b] : [n.a];
  return `${n.op}(${args.map((x) => describe(x, depth - 1)).join(', ')})`;
}

function operand(x: unknown, where: string, want: Ty): Node {
  if (typeof x === 'number') {
    if (want === 'b') throw new ArenaDefinitionError(`${where}: expected a boolean, got the number ${x}`);
    return { op: 'const', ty: 'f', value: x };
  }
  if (isReduction(x)) {
    throw new ArenaDefinitionError(`${where}: a reduction (${x.reduction} of ${describe(x.x)}) used as an elementwise value; reductions write a scalar slot, read it with slots.<name> in a later kernel`);
  }
  if (!isNode(x)) throw new ArenaDefinitionError(`${where}: expected an expression or a number, got ${x === undefined ? 'undefined' : JSON.stringify(x) ?? String(x)}`);
  if (x.ty !== want) throw new ArenaDefinitionError(`${where}: type mismatch: expected ${TY_NAME[want]}, got ${TY_NAME[x.ty]} (${describe(x)})`);
  return x;
}

const bin = (op: BinaryOp) => (a: Operand, b: Operand): Node => ({ op, ty: 'f', a: operand(a, `${op}: first operand`, 'f'), b: operand(b, `${op}: second operand`, 'f') });
const un = (op: UnaryOp) => (a: Operand): Node => ({ op, ty: 'f', a: operand(a, `${op}: operand`, 'f') });
const cmp = (op: CompareOp) => (a: Operand, b: Operand): Node => ({ op, ty: 'b', a: operand(a, `${op}: first operand`, 'f'), b: operand(b, `${op}: second operand`, 'f') });
const logic = (op: LogicOp) => (a: Node, b: Node): Node => ({ op, ty: 'b', a: operand(a, `${op}: first operand`, 'b'), b: operand(b, `${op}: second operand`, 'b') });

function reduction(kind: ReductionKind, x: Operand): Reduction {
  const n = operand(x, `${kind}: operand`, 'f');
  if (isUniform(n)) throw new ArenaDefinitionError(`${kind}: reduces a uniform value (${describe(n)}); a reduction must read an arena vector`);
  return { reduction: kind, x: n };
}

/** The builders of the expression language (passed to every body as `k`). */
export const k = {
  add: bin('add'),
  sub: bin('sub'),
  mul: bin('mul'),
  div: bin('div'),
  min: bin('min'),
  max: bin('max'),
  neg: un('neg'),
  abs: un('abs'),
  sqrt: un('sqrt'),
  /** 1 for x > 0, -1 for x < 0, x itself for +-0 and NaN (Math.sign; torch.sign agrees on the finite values). */
  sign: un('sign'),
  lt: cmp('lt'),
  le: cmp('le'),
  gt: cmp('gt'),
  ge: cmp('ge'),
  eq: cmp('eq'),
  ne: cmp('ne'),
  and: logic('and'),
  or: logic('or'),
  not: (a: Node): Node => ({ op: 'not', ty: 'b', a: operand(a, 'not: operand', 'b') }),
  /** NaN or +-Inf, tested on the bits (not through a comparison that NaN would fail). */
  nonfinite: (a: Operand): Node => ({ op: 'nonfinite', ty: 'b', a: operand(a, 'nonfinite: operand', 'f') }),
  where: (c: Node, a: Operand, b: Operand): Node => ({ op: 'where', ty: 'f', c: operand(c, 'where: condition', 'b'), a: operand(a, 'where: value if true', 'f'), b: operand(b, 'where: value if false', 'f') }),
  /** base^exponent over uniform values only (e.g. beta1 ** step). */
  pow: (a: Operand, b: Operand): Node => {
    const n: Node = { op: 'pow', ty: 'f', a: operand(a, 'pow: base', 'f'), b: operand(b, 'pow: exponent', 'f') };
    if (!isUniform(n)) throw new ArenaDefinitionError(`pow: takes uniform operands (hyper-parameters, slots, step, constants), got ${describe(n)}`);
    return n;
  },
  /**
   * A uniform random number in [0, 1) per parameter: uniformAt(key0, key1, parameter index) of
   * src/kernels/rng.ts (exact in float32). The keys are uniform (hyper-parameters: whole numbers
   * below 2^32).
   */
  paramUniform: (key0: Operand, key1: Operand): Node => {
    const n: Node = { op: 'draw', ty: 'f', a: operand(key0, 'paramUniform: key0', 'f'), b: operand(key1, 'paramUniform: key1', 'f') };
    if (!isUniform(n)) throw new ArenaDefinitionError(`paramUniform: takes uniform keys (hyper-parameters, constants), got ${describe(n)}`);
    return n;
  },
  /**
   * Gaussian noise: a standard normal per element, normalAt(key0, key1, arena index) of
   * src/kernels/normal.ts (Box-Muller in float64 on the host and in wasm, rounded to the arena's dtype; float32
   * on WebGPU). The keys are hyper-parameters or constants (whole numbers below 2^32), so that an
   * element draws the same number on every backend, per arena or per tensor.
   */
  normal: (key0: Operand, key1: Operand): Node => {
    const a = operand(key0, 'normal: key0', 'f');
    const b = operand(key1, 'normal: key1', 'f');
    for (const key of [a, b]) {
      if (!topo([key]).every((n) => n.op === 'hyper' || n.op === 'const')) throw new ArenaDefinitionError(`normal: keys must be hyper-parameters or constants, got ${describe(key)}`);
    }
    return { op: 'normal', ty: 'f', a, b };
  },
  c: (value: number): Node => ({ op: 'const', ty: 'f', value }),
  /** Whether the parameter has `flag` (FLAG_WEIGHT, FLAG_DECAY, FLAG_VECTOR of src/kernels/fused.ts). */
  flag: (flag: number): Node => {
    if (!Number.isInteger(flag) || flag <= 0) throw new ArenaDefinitionError(`flag: expected a positive integer bit, got ${flag}`);
    return { op: 'flag', ty: 'b', flag };
  },
  /** The parameter's count of updates taken (after this kernel's own count when it counts steps). */
  step: (): Node => ({ op: 'step', ty: 'f' }),
  /** a + t (b - a), as torch.lerp for t < 0.5 (a + weight * (end - self)). */
  lerp: (a: Operand, b: Operand, t: Operand): Node => k.add(a, k.mul(t, k.sub(b, a))),
  sum: (x: Operand): Reduction => reduction('sum', x),
  sumSquares: (x: Operand): Reduction => {
    const n = operand(x, 'sumSquares: operand', 'f');
    return reduction('sum', k.mul(n, n));
  },
  dot: (x: Operand, y: Operand): Reduction => reduction('sum', k.mul(x, y)),
  maxAbs: (x: Operand): Reduction => reduction('maxabs', x),
  anyNonFinite: (x: Operand): Reduction => reduction('nonfinite', x),
  norm: (x: Operand): Reduction => reduction('norm', x),
};
export type Builders = typeof k;

const uniformCache = new WeakMap<Node, boolean>();
/** A node that reads no arena vector (a per-parameter coefficient). */
export function isUniform(n: Node): boolean {
  const hit = uniformCache.get(n);
  if (hit !== undefined) return hit;
  let u: boolean;
  switch (n.op) {
    case 'vec':
    case 'normal':
      u = false;
      break;
    case 'hyper':
    case 'slot':
    case 'const':
    case 'flag':
    case 'step':
      u = true;
      break;
    default:
      u = children(n).every(isUniform);
  }
  uniformCache.set(n, u);
  return u;
}

export function children(n: Node): Node[] {
  if ('c' in n) return [n.c, n.a, n.b];
  if ('b' in n) return [n.a, n.b];
  if ('a' in n) return [n.a];
  return [];
}

/**
 * The nodes of `ordered` (a kernel's elementwise nodes, in dependency order) that `roots` need,
 * in that order; the search stops at `precomputed` nodes (the per-parameter coefficients) and
 * sees each node through `resolve` (the wasm renderer's aliases). Every renderer emits these.
 */
export function neededNodes(roots: readonly Node[], ordered: readonly Node[], precomputed: { has(n: Node): boolean }, resolve: (n: Node) => Node = (n) => n): Node[] {
  const need = new Set<Node>();
  const visit = (n0: Node) => {
    const n = resolve(n0);
    if (need.has(n) || precomputed.has(n)) return;
    need.add(n);
    for (const c of children(n)) visit(c);
  };
  roots.forEach(visit);
  return ordered.filter((n) => need.has(n));
}

/** Nodes in dependency order (each after its operands), each once. */
export function topo(roots: readonly Node[], stopAtUniform = false): Node[] {
  const out: Node[] = [];
  const seen = new Set<Node>();
  const visit = (n: Node) => {
    if (seen.has(n)) return;
    seen.add(n);
    if (!(stopAtUniform && isUniform(n))) for (const c of children(n)) visit(c);
    out.push(n);
  };
  for (const r of roots) visit(r);
  return out;
}
