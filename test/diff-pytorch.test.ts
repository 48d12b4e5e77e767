/**
 * The differential suite against PyTorch 1.13: every public op, on cpu (float32 and float64), wasm
 * (float32) and WebGPU (float32), compared with the cases that scripts/gen-diff-fixtures.py wrote to
 * test/fixtures/diff/<op>.json (torch is not a test dependency). Per case: the output (shape, dtype
 * kind, values), the gradient of sum(out * G) for the fixture's random upstream G with respect to
 * every float input, and for twice-differentiable ops the Hessian-vector product of that scalar
 * along the fixture's v (through fg.hvp, i.e. double backward). Where PyTorch raises, flatgrad must
 * throw an error whose message names the op.
 *
 * The references are float64 results of inputs that are exactly float32, so one reference serves
 * both dtypes, plus PyTorch's float32 results where those depart from the float64 ones; the
 * tolerances (TOLERANCES below) are per op family and say why.
 *
 * Adding an op: one `op(...)` entry in the generator, one entry in OPS below (a test fails while a
 * public function has neither an OPS entry nor a NOT_OPS reason).
 *
 * Deliberate differences from PyTorch (not tested as disagreements):
 * - Index results and integer tensors are int32, not int64 (WebGPU has no 64-bit integers); the
 *   fixture's 'int' kind matches flatgrad's int32.
 * - clamp with min > max, or with a NaN bound, throws a RangeError; PyTorch returns max (or NaN)
 *   silently. A bound mix-up is far more likely a bug than an intent.
 * - The sign of zero is not compared (0 equals -0), as PyTorch's own assert_close does.
 * - softplus, gelu, silu, leakyRelu and elu of an int tensor promote to float like every
 *   float-only op; PyTorch 1.13 has no integer kernel for some of them and raises, so the
 *   generator has no int case for these.
 * - sort and argsort are stable (PyTorch's default sort is not): the fixtures ask PyTorch for a
 *   stable sort, so that ties have one right answer.
 * - mm(a, b, transA, transB) is flatgrad's own primitive; it is compared with torch.matmul of the
 *   transposed operands.
 * - The random functions (rand, randn, randint, uniform, dropout with p > 0) use a counter-based
 *   generator, so their numbers differ from torch's by design; see NOT_OPS.
 * - An error that depends on float input values (binaryCrossEntropy of a probability outside
 *   [0, 1]) is raised where the values are on the host; on WebGPU the result is NaN instead, as
 *   checking would need a readback (see VALUE_ERRORS).
 *
 * Cases that fail today because of a disagreement that is being fixed (or not yet routed) are listed
 * in KNOWN with the reason; they run with it.fails, so a fix makes them fail here until the entry is
 * removed (the list cannot go stale silently).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';
import type { Backend } from '../src/kernels/backend.js';
import { CpuBackend } from '../src/kernels/cpu/index.js';
import { getBackend, setBackend } from '../src/kernels/registry.js';
import { createWasmBackend, type WasmBackend } from '../src/kernels/wasm/index.js';
import type { DType, TypedArray } from '../src/tensor/dtype.js';
import { Tensor } from '../src/tensor/tensor.js';
import { acquireWebGPU } from './helpers/webgpu.js';

// ---- fixtures ----

type Num = number | 'NaN' | 'Infinity' | '-Infinity';
interface FixtureArray {
  kind: 'float' | 'int' | 'bool';
  shape: number[];
  data: Num[];
  /** false for a float input that takes no gradient (a loss's class weights or targets). */
  grad?: boolean;
}
type Args = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
interface Case {
  name: string;
  args: Args;
  inputs: FixtureArray[];
  error?: string;
  outputs?: FixtureArray[];
  upstream?: Num[][];
  grads?: Num[][];
  hvp?: { v: Num[][]; out: Num[][] };
  /**
   * PyTorch's float32 results where they depart from its float64 ones (null for the arrays that
   * do not): a float32 run may match either.
   */
  float32?: { outputs?: (Num[] | null)[]; grads?: (Num[] | null)[]; hvp?: (Num[] | null)[] };
}
interface Fixture {
  op: string;
  cases: Case[];
}

const FIXTURE_DIR = fileURLToPath(new URL('./fixtures/diff/', import.meta.url));
const fixtures: Fixture[] = readdirSync(FIXTURE_DIR)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((f) => JSON.parse(readFileSync(join(FIXTURE_DIR, f), 'utf8')) as Fixture);

const decode = (v: Num): number => (v === 'NaN' ? NaN : v === 'Infinity' ? Infinity : v === '-Infinity' ? -Infinity : v);
/** Scalar arguments use the same spelling for non-finite numbers as the data. */
const decodeArgs = (a: Args): Args =>
  Object.fromEntries(Object.entries(a).map(([k, v]) => [k, v === 'NaN' || v === 'Infinity' || v === '-Infinity' ? decode(v) : v]));

// ---- the op table: flatgrad's call for each fixture op ----

/**
 * Tolerances, in ulps of the dtype under test (2^-23 for float32, 2^-52 for float64) so that one
 * table serves both: element e of an array passes when
 *   |actual - e| <= (abs * scale + rel * |e|) * ulp,
 * where scale is the largest finite |e| in that array: rounding errors of sums and differences are
 * proportional to the size of the terms, which the array's largest entry measures, not to the
 * entry itself (which may have cancelled to near 0). Gradients and HVPs are sums of products of G
 * and v (|G|, |v| ~ 1) with derivatives of order 1, so their scale is at least 1: where they cancel
 * to near 0 (softmax rows, 1 - 2 sigmoid(x) near 0) the error is still an ulp of those terms.
 * NaN must match NaN and infinities exactly. `grad` and `hvp` are the first and second backward
 * passes. For float32, PyTorch's own float32 result is a second reference: where it departs from
 * the float64 one (a derivative that underflows in float32), flatgrad may depart the same way.
 */
type Family = 'exact' | 'arith' | 'transcendental' | 'reduction' | 'matmul';
interface Tol {
  abs: number;
  rel: number;
}
interface FamilyTol {
  value: Tol;
  grad: Tol;
  hvp: Tol;
}
const EPS: Record<'float32' | 'float64', number> = { float32: 2 ** -23, float64: 2 ** -52 };
const TOLERANCES: Record<Family, FamilyTol> = {
  // Copies and selections (shape ops, comparisons, casts, max/min, gather, where, relu, clamp...):
  // the values are moved, never computed, so they must be equal. Their gradients may add up a few
  // entries of G (broadcast, repeated indices): a few roundings of the largest.
  exact: { value: { abs: 0, rel: 0 }, grad: { abs: 4, rel: 1 }, hvp: { abs: 4, rel: 1 } },
  // One IEEE operation (add, mul, div, sqrt, ...): correctly rounded on cpu/wasm (half an ulp);
  // WGSL allows 2.5 ulps for division and 2 for inverseSqrt, hence 3. The gradient is one to three
  // more such operations (d/db a/b = -g*a/b^2) and, where an operand was broadcast, a sum over the
  // broadcast dims; the HVP a few more again.
  arith: { value: { abs: 0, rel: 3 }, grad: { abs: 4, rel: 4 }, hvp: { abs: 8, rel: 8 } },
  // exp, log, tanh, erf, pow, ...: a few ulps of the result, relative (tanh(1e-5) and erf near 0
  // must be accurate relatively, as the issue demands): libm's functions are within 1-2 ulps,
  // flatgrad's float64 erf (a Taylor series below 2) within 5. Derivatives such as 1 - tanh^2
  // cancel near saturation, so theirs is partly absolute.
  transcendental: { value: { abs: 0, rel: 8 }, grad: { abs: 4, rel: 4 }, hvp: { abs: 8, rel: 8 } },
  // Sums of up to ~25 terms (sum, mean, var, softmax, logsumexp, layerNorm, losses) in another
  // order than PyTorch's (pairwise, SIMD lanes, workgroup trees): the error is a few ulps of the
  // terms, which the largest output measures.
  reduction: { value: { abs: 8, rel: 4 }, grad: { abs: 4, rel: 4 }, hvp: { abs: 8, rel: 8 } },
  // Dot products of length <= 18 (matmul, linear, conv, pooling, interpolation) in tiles and lanes:
  // as for sums, with more terms per output.
  matmul: { value: { abs: 8, rel: 4 }, grad: { abs: 8, rel: 4 }, hvp: { abs: 8, rel: 8 } },
};

type Run = (x: Tensor[], a: Args) => Tensor | Tensor[];
interface OpEntry {
  family: Family;
  run: Run;
  /** The name flatgrad's errors use, when it is not the op's (default: the op's name). */
  errorName?: string;
  /**
   * The op's rounding error is proportional to |x| rather than to its result: the softmax family,
   * logsumexp and crossEntropy subtract the row's max or log-sum-exp from x (logits near 1000 in
   * the large_* cases), gelu computes x/2 (1 + erf(x/sqrt2)), which cancels for x < 0. In float64
   * both PyTorch's results and flatgrad's then carry ulps of the largest |x|, so the float64 scale
   * includes it. Not in float32, where PyTorch's float32 result is the second reference and shows
   * what it achieves.
   */
  errorScalesWithInput?: boolean;
  /** Where one op needs other bounds than its family; the comment at the entry says why. */
  tol?: { float32?: Partial<FamilyTol>; float64?: Partial<FamilyTol> };
}

const unary = (family: Family, f: (x: Tensor) => Tensor): OpEntry => ({ family, run: (x) => f(x[0]) });
/** A binary op; the case's `scalar` replaces one operand with a JS number (side 'right' or 'left'). */
const binary =
  (family: Family, f: (a: Tensor | number, b: Tensor | number) => Tensor): OpEntry => ({
    family,
    run: (x, a) => (a.scalar === undefined ? f(x[0], x[1]) : a.side === 'right' ? f(x[0], a.scalar) : f(a.scalar, x[0])),
  });
/** sort, topk, max/min with indices: PyTorch's (values, indices) tuple. */
const valuesIndices = (r: fg.ValuesIndices): Tensor[] => [r.values, r.indices];
/**
 * A loss's options: the reduction and ignoreIndex from the case's args, and the tensors named in
 * args.tensorOptions (weight, posWeight) from the inputs after the first two.
 */
const lossOptions = (x: Tensor[], a: Args): Args => {
  const named: Args = { reduction: a.reduction, ignoreIndex: a.ignoreIndex };
  (a.tensorOptions ?? []).forEach((name: string, i: number) => (named[name] = x[2 + i]));
  return named;
};
/** The fixture's dtype names: 'float' is the dtype under test. */
const dtypeArg = (d: string): DType => (d === 'float' ? fg.getDefaultDtype() : (d as DType));

const OPS: Record<string, OpEntry> = {
  neg: unary('exact', fg.neg),
  exp: unary('transcendental', fg.exp),
  log: unary('transcendental', fg.log),
  sqrt: unary('arith', fg.sqrt),
  rsqrt: unary('arith', fg.rsqrt),
  abs: unary('exact', fg.abs),
  sign: unary('exact', fg.sign),
  square: unary('arith', fg.square),
  reciprocal: unary('arith', fg.reciprocal),
  relu: unary('exact', fg.relu),
  tanh: unary('transcendental', fg.tanh),
  sigmoid: unary('transcendental', fg.sigmoid),
  softplus: unary('transcendental', fg.softplus),
  sin: unary('transcendental', fg.sin),
  cos: unary('transcendental', fg.cos),
  erf: unary('transcendental', fg.erf),
  gelu: {
    family: 'transcendental',
    errorScalesWithInput: true,
    run: (x, a) => fg.gelu(x[0], a.approximate ?? 'none'),
    // x/2 (1 + erf(x/sqrt2)) and x/2 (1 + tanh(...)) cancel for x < 0 (PyTorch's formulas): their
    // error is an ulp of 1 times |x|/2 absolute (PyTorch's float64 gelu(-2.2947) is 11 ulps from
    // the exact value). The scale is the largest |x| in float64 (see errorScalesWithInput) and the
    // largest |gelu| in float32, where PyTorch's own float32 result is the second reference.
    tol: { float32: { value: { abs: 2, rel: 8 } }, float64: { value: { abs: 2, rel: 8 } } },
  },
  add: binary('arith', fg.add),
  sub: binary('arith', fg.sub),
  mul: binary('arith', fg.mul),
  div: binary('arith', fg.div),
  pow: binary('transcendental', fg.pow),
  maximum: binary('exact', fg.maximum),
  minimum: binary('exact', fg.minimum),
  eq: binary('exact', fg.eq),
  ne: binary('exact', fg.ne),
  lt: binary('exact', fg.lt),
  le: binary('exact', fg.le),
  gt: binary('exact', fg.gt),
  ge: binary('exact', fg.ge),
  clamp: { family: 'exact', run: (x, a) => fg.clamp(x[0], a.min, a.max) },
  where: { family: 'exact', run: (x, a) => fg.where(x[0], x[1], x.length > 2 ? x[2] : a.other) },
  cast: { family: 'exact', run: (x, a) => fg.cast(x[0], dtypeArg(a.dtype)) },
  sum: { family: 'reduction', run: (x, a) => fg.sum(x[0], a.dims, a.keepdim ?? false) },
  mean: { family: 'reduction', run: (x, a) => fg.mean(x[0], a.dims, a.keepdim ?? false) },
  max: { family: 'exact', run: (x, a) => fg.max(x[0], a.dims, a.keepdim ?? false) },
  min: { family: 'exact', run: (x, a) => fg.min(x[0], a.dims, a.keepdim ?? false) },
  argmax: { family: 'exact', run: (x, a) => fg.argmax(x[0], a.dim, a.keepdim ?? false) },
  argmin: { family: 'exact', run: (x, a) => fg.argmin(x[0], a.dim, a.keepdim ?? false) },
  variance: { family: 'reduction', errorName: 'var', run: (x, a) => fg.variance(x[0], a.dims, { correction: a.correction, keepdim: a.keepdim }) },
  logsumexp: { family: 'reduction', errorScalesWithInput: true, run: (x, a) => fg.logsumexp(x[0], a.dims, a.keepdim ?? false) },
  norm: { family: 'reduction', run: (x) => fg.norm(x[0]) },
  softmax: { family: 'reduction', errorScalesWithInput: true, run: (x, a) => fg.softmax(x[0], a.dim) },
  logSoftmax: { family: 'reduction', errorScalesWithInput: true, run: (x, a) => fg.logSoftmax(x[0], a.dim) },
  reshape: { family: 'exact', run: (x, a) => fg.reshape(x[0], a.shape) },
  flatten: { family: 'exact', run: (x, a) => fg.flatten(x[0], a.startDim, a.endDim) },
  squeeze: { family: 'exact', run: (x, a) => fg.squeeze(x[0], a.dim) },
  unsqueeze: { family: 'exact', run: (x, a) => fg.unsqueeze(x[0], a.dim) },
  permute: { family: 'exact', run: (x, a) => fg.permute(x[0], a.dims) },
  transpose: { family: 'exact', run: (x, a) => fg.transpose(x[0], a.dim0, a.dim1) },
  expand: { family: 'exact', run: (x, a) => fg.expand(x[0], a.shape) },
  broadcastTo: { family: 'exact', run: (x, a) => fg.broadcastTo(x[0], a.shape) },
  slice: { family: 'exact', run: (x, a) => fg.slice(x[0], a.dim, a.start, a.end, a.step) },
  narrow: { family: 'exact', run: (x, a) => fg.narrow(x[0], a.dim, a.start, a.length) },
  concat: { family: 'exact', run: (x, a) => fg.concat(x, a.dim) },
  stack: { family: 'exact', run: (x, a) => fg.stack(x, a.dim) },
  pad: { family: 'exact', run: (x, a) => fg.pad(x[0], a.pads, a.value) },
  clone: { family: 'exact', run: (x) => fg.clone(x[0]) },
  matmul: { family: 'matmul', run: (x) => fg.matmul(x[0], x[1]) },
  mm: { family: 'matmul', errorName: 'matmul', run: (x, a) => fg.mm(x[0], x[1], a.transA ?? false, a.transB ?? false) },
  linear: { family: 'matmul', run: (x) => fg.linear(x[0], x[1], x[2]) },
  crossEntropy: { family: 'reduction', errorScalesWithInput: true, run: (x, a) => fg.crossEntropy(x[0], x[1], { ...lossOptions(x, a), labelSmoothing: a.labelSmoothing }) },
  oneHot: { family: 'exact', run: (x, a) => fg.oneHot(x[0], a.numClasses) },
  gather: { family: 'exact', run: (x, a) => fg.gather(x[0], a.dim, x[1]) },
  indexSelect: { family: 'exact', run: (x, a) => fg.indexSelect(x[0], a.dim, x[1]) },
  conv2d: {
    family: 'matmul',
    run: (x, a) => fg.conv2d(x[0], x[1], x[2], { stride: a.stride, padding: a.padding, dilation: a.dilation, groups: a.groups }),
  },
  maxPool2d: {
    family: 'exact',
    run: (x, a) => fg.maxPool2d(x[0], a.kernelSize, { stride: a.stride, padding: a.padding, dilation: a.dilation, ceilMode: a.ceilMode }),
  },
  avgPool2d: {
    family: 'matmul',
    run: (x, a) =>
      fg.avgPool2d(x[0], a.kernelSize, { stride: a.stride, padding: a.padding, ceilMode: a.ceilMode, countIncludePad: a.countIncludePad, divisorOverride: a.divisorOverride }),
  },
  adaptiveAvgPool2d: { family: 'matmul', run: (x, a) => fg.adaptiveAvgPool2d(x[0], a.outputSize) },
  dropout: { family: 'exact', run: (x, a) => fg.dropout(x[0], a.p, a.training ?? true) },
  // PyTorch computes x * a + (beta - mean * a) with a = rstd * gamma, so its float64 result carries
  // ulps of |x| * a (offset_rows: 1.4e-14 off the exact value, where flatgrad's (x - mean) * a is
  // 1.1e-15 off): the float64 scale includes |x|.
  layerNorm: { family: 'reduction', errorScalesWithInput: true, run: (x, a) => fg.layerNorm(x[0], a.normalizedShape, x[1], x[2], a.eps) },
  expm1: unary('transcendental', fg.expm1),
  log1p: unary('transcendental', fg.log1p),
  silu: unary('transcendental', fg.silu),
  floor: unary('exact', fg.floor),
  ceil: unary('exact', fg.ceil),
  round: unary('exact', fg.round),
  isnan: unary('exact', fg.isnan),
  isinf: unary('exact', fg.isinf),
  isfinite: unary('exact', fg.isfinite),
  logicalNot: unary('exact', fg.logicalNot),
  leakyRelu: { family: 'arith', run: (x, a) => fg.leakyRelu(x[0], a.negativeSlope) },
  elu: {
    family: 'transcendental',
    run: (x, a) => fg.elu(x[0], a.alpha),
    // PyTorch 1.13's CPU elu is alpha (exp(x) - 1): exact to an ulp of alpha absolute, not
    // relative, near 0 (its float64 elu(-1e-5) is off by 4.9e-12 relative); flatgrad uses expm1.
    tol: { float64: { value: { abs: 0, rel: 1e-11 / EPS.float64 } } },
  },
  logicalAnd: binary('exact', fg.logicalAnd),
  logicalOr: binary('exact', fg.logicalOr),
  logicalXor: binary('exact', fg.logicalXor),
  prod: { family: 'reduction', run: (x, a) => fg.prod(x[0], a.dims, a.keepdim ?? false) },
  std: { family: 'reduction', run: (x, a) => fg.std(x[0], a.dims, { correction: a.correction, keepdim: a.keepdim }) },
  any: { family: 'exact', run: (x, a) => fg.any(x[0], a.dims, a.keepdim ?? false) },
  all: { family: 'exact', run: (x, a) => fg.all(x[0], a.dims, a.keepdim ?? false) },
  cumsum: { family: 'reduction', run: (x, a) => fg.cumsum(x[0], a.dim) },
  sort: { family: 'exact', run: (x, a) => valuesIndices(fg.sort(x[0], a.dim, a.descending)) },
  argsort: { family: 'exact', run: (x, a) => fg.argsort(x[0], a.dim, a.descending) },
  topk: { family: 'exact', run: (x, a) => valuesIndices(fg.topk(x[0], a.k, a.dim, a.largest)) },
  maxWithIndices: { family: 'exact', run: (x, a) => valuesIndices(fg.maxWithIndices(x[0], a.dim, a.keepdim)) },
  minWithIndices: { family: 'exact', run: (x, a) => valuesIndices(fg.minWithIndices(x[0], a.dim, a.keepdim)) },
  flip: { family: 'exact', run: (x, a) => fg.flip(x[0], a.dims) },
  split: { family: 'exact', run: (x, a) => fg.split(x[0], a.sizeOrSections, a.dim) },
  chunk: { family: 'exact', run: (x, a) => fg.chunk(x[0], a.chunks, a.dim) },
  bmm: { family: 'matmul', run: (x) => fg.bmm(x[0], x[1]) },
  outer: { family: 'arith', run: (x) => fg.outer(x[0], x[1]) },
  tril: { family: 'exact', run: (x, a) => fg.tril(x[0], a.diagonal) },
  triu: { family: 'exact', run: (x, a) => fg.triu(x[0], a.diagonal) },
  scatterAdd: { family: 'reduction', run: (x, a) => fg.scatterAdd(x[0], a.dim, x[1], x[2]) },
  indexAdd: { family: 'reduction', run: (x, a) => fg.indexAdd(x[0], a.dim, x[1], x[2], a.alpha) },
  maskedFill: { family: 'exact', run: (x, a) => fg.maskedFill(x[0], x[1], x.length > 2 ? x[2] : a.value) },
  einsum: { family: 'matmul', run: (x, a) => fg.einsum(a.equation, ...x) },
  embedding: { family: 'exact', run: (x, a) => fg.embedding(x[0], x[1], a.paddingIdx) },
  conv1d: {
    family: 'matmul',
    run: (x, a) => fg.conv1d(x[0], x[1], x[2], { stride: a.stride, padding: a.padding, dilation: a.dilation, groups: a.groups }),
  },
  convTranspose2d: {
    family: 'matmul',
    run: (x, a) =>
      fg.convTranspose2d(x[0], x[1], x[2], { stride: a.stride, padding: a.padding, outputPadding: a.outputPadding, dilation: a.dilation, groups: a.groups }),
  },
  interpolate: {
    family: 'matmul',
    run: (x, a) => fg.interpolate(x[0], { size: a.size, scaleFactor: a.scaleFactor, mode: a.mode, alignCorners: a.alignCorners }),
  },
  groupNorm: { family: 'reduction', run: (x, a) => fg.groupNorm(x[0], a.numGroups, x[1], x[2], a.eps) },
  normalize: { family: 'reduction', run: (x, a) => fg.normalize(x[0], { p: a.p, dim: a.dim, eps: a.eps }) },
  cosineSimilarity: { family: 'reduction', run: (x, a) => fg.cosineSimilarity(x[0], x[1], { dim: a.dim, eps: a.eps }) },
  nllLoss: { family: 'reduction', run: (x, a) => fg.nllLoss(x[0], x[1], lossOptions(x, a)) },
  binaryCrossEntropy: {
    family: 'reduction',
    run: (x, a) => fg.binaryCrossEntropy(x[0], x[1], lossOptions(x, a)),
    // PyTorch's double backward of binary_cross_entropy adds EPSILON = 1e-12 to x(1 - x): a relative
    // error of 1e-12 / (x(1 - x)), 2e-11 at x = 0.05. flatgrad matches the closed form
    // t/x^2 + (1-t)/(1-x)^2 to rounding (checked in float64 against the fixture's inputs).
    tol: { float64: { hvp: { abs: 64, rel: 5e-11 / EPS.float64 } } },
  },
  binaryCrossEntropyWithLogits: { family: 'reduction', run: (x, a) => fg.binaryCrossEntropyWithLogits(x[0], x[1], lossOptions(x, a)) },
  l1Loss: { family: 'reduction', run: (x, a) => fg.l1Loss(x[0], x[1], { reduction: a.reduction }) },
  smoothL1Loss: { family: 'reduction', run: (x, a) => fg.smoothL1Loss(x[0], x[1], { reduction: a.reduction, beta: a.beta }) },
  huberLoss: { family: 'reduction', run: (x, a) => fg.huberLoss(x[0], x[1], { reduction: a.reduction, delta: a.delta }) },
  klDiv: { family: 'reduction', run: (x, a) => fg.klDiv(x[0], x[1], { reduction: a.reduction, logTarget: a.logTarget }) },
  linspace: { family: 'arith', run: (_, a) => fg.linspace(a.start, a.end, a.steps) },
  arange: { family: 'exact', run: (_, a) => fg.arange(a.start, a.end, a.step) },
  zeros: { family: 'exact', run: (_, a) => fg.zeros(a.shape) },
  ones: { family: 'exact', run: (_, a) => fg.ones(a.shape) },
  zerosLike: { family: 'exact', run: (x) => fg.zerosLike(x[0]) },
  onesLike: { family: 'exact', run: (x) => fg.onesLike(x[0]) },
  eye: { family: 'exact', run: (_, a) => fg.eye(a.n, a.m) },
  full: { family: 'exact', run: (_, a) => fg.full(a.shape, a.value) },
};

// ---- known disagreements (see the header) ----

/**
 * `op/case` -> the configurations where it fails today ('*' for all) and why. Empty: every
 * disagreement this suite found has been fixed or listed as deliberate in the header.
 */
const KNOWN: Record<string, { on: string[]; why: string }> = {};

/**
 * Errors that depend on the input's values (a probability outside [0, 1]): flatgrad checks them
 * where the values are on the host; on a device without synchronous reads (WebGPU) a check would
 * need a readback, so the result is NaN instead (see the header).
 */
const VALUE_ERRORS = new Set(['binaryCrossEntropy/input_out_of_range']);

// ---- running a case ----

interface Config {
  name: string;
  dtype: 'float32' | 'float64';
  backend: () => Backend | null;
}

function makeInput(f: FixtureArray, dtype: DType, requiresGrad: boolean): Tensor {
  const values = f.data.map(decode);
  if (f.kind === 'int') return fg.tensor(Int32Array.from(values), { shape: f.shape, dtype: 'int32' });
  if (f.kind === 'bool') return fg.tensor(Uint8Array.from(values), { shape: f.shape, dtype: 'bool' });
  const data = dtype === 'float64' ? Float64Array.from(values) : Float32Array.from(values);
  return fg.tensor(data, { shape: f.shape, dtype, requiresGrad });
}

const asList = (r: Tensor | Tensor[]): Tensor[] => (Array.isArray(r) ? r : [r]);
const isFloatTensor = (t: Tensor) => t.dtype === 'float32' || t.dtype === 'float64';

/** sum over the differentiable outputs of sum(out * G). */
function weightedSum(outs: Tensor[], upstream: Tensor[]): Tensor {
  const diff = outs.filter((o) => isFloatTensor(o) && o.requiresGrad);
  if (diff.length !== upstream.length) {
    throw new Error(`flatgrad gives ${diff.length} differentiable outputs, PyTorch ${upstream.length}`);
  }
  return diff.map((o, i) => fg.sum(fg.mul(o, upstream[i]))).reduce((s, t) => fg.add(s, t));
}

/**
 * Compares one array; `minScale` is the least term size the array's errors are measured against
 * (see TOLERANCES). A float32 run may match PyTorch's float32 result (`alternative`) instead.
 */
function compare(actual: TypedArray, expected: Num[], kind: FixtureArray['kind'], tol: Tol, eps: number, minScale: number, what: string, alternative?: Num[] | null): void {
  expect(actual.length, `${what}: number of elements`).toBe(expected.length);
  const scale = expected.reduce<number>((m, v) => (Number.isFinite(decode(v)) ? Math.max(m, Math.abs(decode(v))) : m), minScale);
  const atol = tol.abs * scale * eps;
  const rtol = tol.rel * eps;
  const bad: string[] = [];
  for (let i = 0; i < expected.length; i++) {
    const e = decode(expected[i]);
    const a = Number(actual[i]);
    const near = (e: number) =>
      kind !== 'float' ? a === e
      : Number.isNaN(e) ? Number.isNaN(a)
      : !Number.isFinite(e) ? a === e
      : Math.abs(a - e) <= atol + rtol * Math.abs(e);
    const ok = near(e) || (alternative != null && near(decode(alternative[i])));
    if (!ok) bad.push(`[${i}] got ${a}, expected ${e}`);
  }
  if (bad.length) {
    expect.fail(`${what}: ${bad.length}/${expected.length} differ (${tol.abs} ulps of ${scale} + ${tol.rel} ulps relative): ${bad.slice(0, 6).join('; ')}`);
  }
}

const kindOf = (t: Tensor): FixtureArray['kind'] => (isFloatTensor(t) ? 'float' : t.dtype === 'bool' ? 'bool' : 'int');

async function runCase(opName: string, fixtureCase: Case, cfg: Config): Promise<void> {
  const entry = OPS[opName];
  const c = { ...fixtureCase, args: decodeArgs(fixtureCase.args) };
  const dtype = cfg.dtype;
  if (c.error !== undefined) {
    // PyTorch raised; flatgrad must throw too, naming the op.
    const name = entry.errorName ?? opName;
    let thrown: unknown = null;
    let result: Tensor[] = [];
    try {
      result = fg.tidy(() => {
        const xs = c.inputs.map((f) => makeInput(f, dtype, false));
        return asList(entry.run(xs, c.args));
      });
    } catch (e) {
      thrown = e;
    }
    if (!thrown && VALUE_ERRORS.has(`${opName}/${c.name}`) && !getBackend().readSync) {
      for (const o of result) expect(Array.from(await o.data()).every(Number.isNaN), `no error on ${cfg.name}: the result must be NaN`).toBe(true);
      fg.dispose(result);
      return;
    }
    fg.dispose(result);
    expect(thrown, `PyTorch raised "${c.error}" but flatgrad returned a result`).toBeInstanceOf(Error);
    expect((thrown as Error).message, `the error should name ${name} (PyTorch: ${c.error})`).toContain(name);
    return;
  }
  const withGrad = c.grads !== undefined;
  const made = fg.tidy(() => {
    const differentiable = (f: FixtureArray) => withGrad && f.kind === 'float' && f.grad !== false;
    const xs = c.inputs.map((f) => makeInput(f, dtype, differentiable(f)));
    const params = xs.filter((_, i) => differentiable(c.inputs[i]));
    const outs = asList(entry.run(xs, c.args));
    if (!withGrad) return { outs, grads: [] as Tensor[], hvps: [] as Tensor[] };
    const upstream = c.upstream!.map((g, i) => makeInput({ kind: 'float', shape: c.outputs!.filter((o) => o.kind === 'float')[i].shape, data: g }, dtype, false));
    const lossOf = (ps: Tensor[]) => {
      const ins = xs.map((t) => (params.includes(t) ? ps[params.indexOf(t)] : t));
      return weightedSum(asList(entry.run(ins, c.args)), upstream);
    };
    const grads = fg.grad(weightedSum(outs, upstream), params, { allowUnused: true }).map((g, i) => g ?? fg.zerosLike(params[i]));
    let hvps: Tensor[] = [];
    if (c.hvp) {
      const vs = c.hvp.v.map((v, i) => makeInput({ kind: 'float', shape: params[i].shape, data: v }, dtype, false));
      hvps = fg.hvp((...ps) => lossOf(ps), params, vs);
    }
    return { outs, grads: grads.map((g) => g.detach()), hvps: hvps.map((h) => h.detach()) };
  });
  try {
    const tol = { ...TOLERANCES[entry.family], ...entry.tol?.[dtype] };
    const eps = EPS[dtype];
    const alt = dtype === 'float32' ? c.float32 : undefined;
    const inputScale =
      entry.errorScalesWithInput && dtype === 'float64'
        ? Math.max(...c.inputs.filter((f) => f.kind === 'float').flatMap((f) => f.data.map(decode).filter(Number.isFinite).map(Math.abs)), 0)
        : 0;
    expect(made.outs.length, 'number of outputs').toBe(c.outputs!.length);
    for (const [i, o] of made.outs.entries()) {
      const ref = c.outputs![i];
      expect(o.shape, `output ${i} shape`).toEqual(ref.shape);
      expect(kindOf(o), `output ${i} dtype ${o.dtype}`).toBe(ref.kind);
      if (ref.kind === 'float') expect(o.dtype, `output ${i} dtype`).toBe(dtype);
      compare(await o.data(), ref.data, ref.kind, tol.value, eps, inputScale, `output ${i} value`, alt?.outputs?.[i]);
    }
    for (const [i, g] of made.grads.entries()) compare(await g.data(), c.grads![i], 'float', tol.grad, eps, Math.max(1, inputScale), `gradient of input ${i}`, alt?.grads?.[i]);
    for (const [i, h] of made.hvps.entries()) compare(await h.data(), c.hvp!.out[i], 'float', tol.hvp, eps, Math.max(1, inputScale), `HVP for input ${i}`, alt?.hvp?.[i]);
  } finally {
    fg.dispose([made.outs, made.grads, made.hvps]);
  }
}

// ---- the configurations ----

let wasmBackend: WasmBackend | null = null;
let gpuBackend: Backend | null = null;
let gpuReason = '';
const cpu = new CpuBackend();
const CONFIGS: Config[] = [
  { name: 'cpu float64', dtype: 'float64', backend: () => cpu },
  { name: 'cpu float32', dtype: 'float32', backend: () => cpu },
  { name: 'wasm float32', dtype: 'float32', backend: () => wasmBackend },
  { name: 'webgpu float32', dtype: 'float32', backend: () => gpuBackend },
];

beforeAll(async () => {
  wasmBackend = await createWasmBackend({ threads: 1 });
  const acquired = await acquireWebGPU();
  gpuBackend = acquired.backend;
  gpuReason = acquired.reason;
});
afterAll(() => wasmBackend?.dispose());

/**
 * The functions flatgrad exports that are not tensor ops, or whose results PyTorch cannot
 * reproduce: everything else exported from src/index.ts must have an entry in OPS.
 */
const NOT_OPS: Record<string, string> = {
  ...Object.fromEntries(['rand', 'randn', 'randint', 'uniform', 'manualSeed'].map((n) => [n, "counter-based RNG: other numbers than torch's generator by design"])),
  ...Object.fromEntries(['backward', 'grad', 'hvp', 'gradcheck', 'gradgradcheck', 'noGrad', 'isGradEnabled'].map((n) => [n, 'autograd: exercised by every case'])),
  tensor: 'creation from data: makes every input here',
  compile: 'traces a step into a plan of the same ops; compared with eager mode by its own tests',
  toBackend: 'moves storage between backends',
  ...Object.fromEntries(
    ['Tensor', 'tidy', 'keep', 'dispose', 'init', 'backendInfo', 'memory', 'flush', 'trim', 'isSoftwareAdapter', 'getBackend', 'setDefaultDtype', 'getDefaultDtype'].map(
      (n) => [n, 'runtime and memory management'],
    ),
  ),
  ...Object.fromEntries(
    ['encodeSafetensors', 'decodeSafetensors', 'readSafetensorsFile', 'writeSafetensorsFile', 'SafetensorsError', 'writeFileAtomic', 'saveCheckpoint', 'loadCheckpoint', 'disposeCheckpoint', 'CheckpointError'].map(
      (n) => [n, 'file formats'],
    ),
  ),
};

it('every fixture op has an entry in OPS and every OPS entry a fixture', () => {
  const inFixtures = fixtures.map((f) => f.op).sort();
  expect(inFixtures).toEqual(Object.keys(OPS).sort());
});

it('every KNOWN and VALUE_ERRORS entry names a fixture case and a configuration', () => {
  const cases = new Set(fixtures.flatMap((f) => f.cases.map((c) => `${f.op}/${c.name}`)));
  const configs = new Set(['*', ...CONFIGS.map((c) => c.name)]);
  for (const [key, { on }] of Object.entries(KNOWN)) {
    expect(cases.has(key), `KNOWN ${key}`).toBe(true);
    for (const name of on) expect(configs.has(name), `KNOWN ${key} on ${name}`).toBe(true);
  }
  for (const key of VALUE_ERRORS) expect(cases.has(key), `VALUE_ERRORS ${key}`).toBe(true);
});

it('every public function of flatgrad is in OPS or in NOT_OPS', () => {
  const exported = Object.keys(fg).filter((k) => typeof (fg as Record<string, unknown>)[k] === 'function');
  const uncovered = exported.filter((k) => !(k in OPS) && !(k in NOT_OPS));
  expect(uncovered, 'public ops without a differential case (add them to the generator and OPS)').toEqual([]);
});

for (const cfg of CONFIGS) {
  describe(cfg.name, () => {
    let prevBackend: Backend;
    let prevDtype: DType;
    beforeAll(() => {
      prevBackend = getBackend();
      prevDtype = fg.getDefaultDtype();
    });
    afterAll(() => {
      setBackend(prevBackend);
      fg.setDefaultDtype(prevDtype);
    });
    for (const fx of fixtures) {
      describe(fx.op, () => {
        for (const c of fx.cases) {
          const known = KNOWN[`${fx.op}/${c.name}`];
          const expectFail = known && (known.on.includes('*') || known.on.includes(cfg.name));
          (expectFail ? it.fails : it)(`${c.name}${expectFail ? ` (known: ${known.why})` : ''}`, async (ctx) => {
            const b = cfg.backend();
            if (!b) {
              ctx.skip(`no ${cfg.name} backend: ${gpuReason}`);
              return;
            }
            setBackend(b);
            fg.setDefaultDtype(cfg.dtype);
            try {
              await runCase(fx.op, c, cfg);
            } finally {
              setBackend(prevBackend);
              fg.setDefaultDtype(prevDtype);
            }
          });
        }
      });
    }
  });
}
