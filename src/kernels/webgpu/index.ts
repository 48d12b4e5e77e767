/**
 * The WebGPU backend: every Backend kernel as a WGSL compute shader. The runtime (runtime.ts)
 * owns buffers, batching and pipelines; each kernel family lives in its own file and only
 * describes dispatches.
 */
import type { DType, TypedArray } from '../../tensor/dtype.js';
import type {
  ArgReduceOp,
  AvgPool2dLayout,
  Backend,
  BackendInfo,
  BroadcastLayout,
  CommandReplay,
  Conv2dLayout,
  CrossEntropyLayout,
  GatherLayout,
  LayerNormLayout,
  BatchNormLayout,
  MatmulLayout,
  MemoryInfo,
  RandomDist,
  ReduceLayout,
  ReduceOp,
  SoftmaxLayout,
  SortLayout,
  Storage,
  StridedCopyLayout,
  WhereLayout,
  Window2d,
} from '../backend.js';
import { BINARY_OPS, UNARY_OPS, type BinaryOp, type UnaryOp } from '../optable.js';
import { axpy, cast, fill, stridedCopy, where } from './copy.js';
import { describeAdapter, isCpuEmulated, type WebGPUOptions } from './device.js';
import { binary, unary } from './elementwise.js';
import { DIRECT_PARTS, matmul } from './matmul.js';
import { argReduce, reduce, sumSquares } from './reduce.js';
import { asGPU, deviceArray, hostArray, kernelFamily, Runtime } from './runtime.js';
import type { Recording } from './capture.js';
import { needsMath } from './wgsl.js';

// The kernel families that load on their first dispatch (Runtime.lazy), not with the backend: a
// program that only does arithmetic, reductions and matmuls (the minimal program of
// bench/size.programs.ts) never fetches them. Elementwise ops, copies, reductions and matmul stay
// eager: nearly every program, and every backward pass, uses them.
const CONV = kernelFamily('conv and pooling', () => import('./conv.js'));
const SOFTMAX = kernelFamily('softmax and cross-entropy', () => import('./softmax.js'));
const LAYERNORM = kernelFamily('layer norm', () => import('./layernorm.js'));
const BATCHNORM = kernelFamily('batch norm', () => import('./batchnorm.js'));
const GATHER = kernelFamily('gather and scatter', () => import('./gather.js'));
const SORT = kernelFamily('sort', () => import('./sort.js'));
const SCAN = kernelFamily('cumsum', () => import('./scan.js'));
const RNG = kernelFamily('random', () => import('./rng.js'));
// The math prelude (exp, log, tanh, erf, pow, ...), for the elementwise ops that call it.
const MATH = kernelFamily('math prelude', () => import('./wgsl-math.js'));
// The matmul and the fused attention of CPU-emulated adapters (SwiftShader): a GPU never loads them.
const EMULATED = kernelFamily('forms for CPU-emulated adapters', () => import('./emulated.js'));
const mathFor = (expr: string) => (needsMath(expr) ? MATH : null);

export { createWebGPUBackend, isCpuEmulated, requestAdapter, SWIFTSHADER_ICD, type WebGPUOptions } from './device.js';
export { GPUStorage } from './runtime.js';

const NO_FLOAT64 = 'webgpu backend does not support float64 (use the cpu backend for float64)';

export class WebGPUBackend implements Backend {
  readonly name = 'webgpu' as const;
  readonly rt: Runtime;

  constructor(
    readonly device: GPUDevice,
    readonly adapterInfo: GPUAdapterInfo | undefined,
    opts: WebGPUOptions = {},
  ) {
    this.rt = new Runtime(device, { cpuEmulated: isCpuEmulated(adapterInfo), ...opts });
    const rt = this.rt;
    // A CPU-emulated adapter's matmul and fused attention (emulated.ts) take over once loaded.
    if (rt.cpuEmulated) rt.lazy(EMULATED, (m) => m.install(this, DIRECT_PARTS));
    this.commandReplay = {
      begin: () => rt.beginRecording(),
      end: () => rt.endRecording(),
      replay: (r) => rt.replayRecording(r as Recording),
      release: (r) => rt.disposeRecording(r as Recording),
      holdSubmits: (on) => {
        rt.holdSubmits = on;
        if (!on) rt.flush();
      },
    };
  }

  readonly commandReplay: CommandReplay;
  /** Installed on CPU-emulated adapters only (emulated.ts): elsewhere attention is composed of matmuls and softmax. */
  declare attention?: Backend['attention'];
  declare attentionBackward?: Backend['attentionBackward'];

  info(): BackendInfo {
    const i = this.adapterInfo;
    // The limits kernels are checked against: the device's, or lower ones injected for tests.
    const l = this.rt.limits;
    return {
      name: 'webgpu',
      adapter: describeAdapter(i),
      details: {
        vendor: i?.vendor,
        architecture: i?.architecture,
        device: i?.device,
        description: i?.description,
        limits: {
          maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
          maxBufferSize: l.maxBufferSize,
          maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
          maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
          maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
          maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        },
      },
    };
  }
  supportsDtype(d: DType): boolean {
    return d !== 'float64';
  }

  // ---------------------------------------------------------------- memory

  alloc(numel: number, dtype: DType): Storage {
    if (dtype === 'float64') throw new TypeError(NO_FLOAT64);
    return this.rt.alloc(numel, dtype);
  }
  upload(data: TypedArray, dtype: DType): Storage {
    if (dtype === 'float64') throw new TypeError(NO_FLOAT64);
    const s = this.rt.alloc(data.length, dtype);
    this.rt.write(s, deviceArray(data, dtype));
    return s;
  }
  view(base: Storage, offset: number, numel: number): Storage {
    return this.rt.view(asGPU(base), offset, numel);
  }
  write(dst: Storage, data: TypedArray): void {
    const d = asGPU(dst);
    if (data.length !== d.numel) throw new RangeError(`write: ${data.length} values into a storage of ${d.numel}`);
    this.rt.write(d, deviceArray(data, d.dtype));
  }
  async read(s: Storage): Promise<TypedArray> {
    const g = asGPU(s);
    return hostArray(await this.rt.read(g), g.dtype);
  }
  release(s: Storage): void {
    this.rt.release(asGPU(s));
  }
  flush(): void {
    this.rt.checkAlive();
    this.rt.flush();
  }
  sync(): Promise<void> {
    return this.rt.sync();
  }
  memory(): MemoryInfo {
    return this.rt.memory();
  }
  /** Destroys the buffers the pool holds for reuse. */
  trim(): void {
    this.rt.trim();
  }
  /** Destroys the device; every later call throws "WebGPU device lost (destroyed)". */
  destroy(): void {
    this.rt.markDestroyed();
    this.device.destroy();
  }

  // ---------------------------------------------------------------- kernels

  fill(out: Storage, value: number): void {
    fill(this.rt, asGPU(out), value);
  }
  cast(x: Storage, out: Storage): void {
    cast(this.rt, asGPU(x), asGPU(out));
  }
  unary(op: UnaryOp, x: Storage, out: Storage, p0 = 0, p1 = 0): void {
    this.rt.lazy(mathFor(UNARY_OPS[op].wgsl), (m) => unary(this.rt, op, asGPU(x), asGPU(out), p0, p1, m?.MATH_FNS));
  }
  binary(op: BinaryOp, a: Storage, b: Storage, out: Storage, layout: BroadcastLayout): void {
    this.rt.lazy(mathFor(BINARY_OPS[op].wgsl), (m) => binary(this.rt, op, asGPU(a), asGPU(b), asGPU(out), layout, m?.MATH_FNS));
  }
  where(cond: Storage, a: Storage, b: Storage, out: Storage, layout: WhereLayout): void {
    where(this.rt, asGPU(cond), asGPU(a), asGPU(b), asGPU(out), layout);
  }
  axpy(dst: Storage, src: Storage, alpha: number): void {
    axpy(this.rt, asGPU(dst), asGPU(src), alpha);
  }
  stridedCopy(src: Storage, dst: Storage, layout: StridedCopyLayout): void {
    stridedCopy(this.rt, asGPU(src), asGPU(dst), layout);
  }
  reduce(op: ReduceOp, x: Storage, out: Storage, layout: ReduceLayout): void {
    reduce(this.rt, op, asGPU(x), asGPU(out), layout);
  }
  argReduce(op: ArgReduceOp, x: Storage, out: Storage, layout: ReduceLayout): void {
    argReduce(this.rt, op, asGPU(x), asGPU(out), layout);
  }
  softmax(x: Storage, out: Storage, layout: SoftmaxLayout): void {
    this.rt.lazy(SOFTMAX, (m) => m.softmax(this.rt, asGPU(x), asGPU(out), layout));
  }
  crossEntropy(logits: Storage, labels: Storage, out: Storage, layout: CrossEntropyLayout): void {
    this.rt.lazy(SOFTMAX, (m) => m.crossEntropy(this.rt, asGPU(logits), asGPU(labels), asGPU(out), layout));
  }
  crossEntropyBackward(logits: Storage, labels: Storage, gradRows: Storage, out: Storage, layout: CrossEntropyLayout): void {
    this.rt.lazy(SOFTMAX, (m) => m.crossEntropyBackward(this.rt, asGPU(logits), asGPU(labels), asGPU(gradRows), asGPU(out), layout));
  }
  layerNorm(x: Storage, weight: Storage | null, bias: Storage | null, out: Storage, mean: Storage, rstd: Storage, layout: LayerNormLayout): void {
    this.rt.lazy(LAYERNORM, (m) => m.layerNorm(this.rt, asGPU(x), weight && asGPU(weight), bias && asGPU(bias), asGPU(out), asGPU(mean), asGPU(rstd), layout));
  }
  layerNormBackward(
    grad: Storage,
    x: Storage,
    mean: Storage,
    rstd: Storage,
    weight: Storage | null,
    dx: Storage | null,
    dweight: Storage | null,
    dbias: Storage | null,
    layout: LayerNormLayout,
  ): void {
    const g = (s: Storage | null) => s && asGPU(s);
    this.rt.lazy(LAYERNORM, (m) => m.layerNormBackward(this.rt, asGPU(grad), asGPU(x), asGPU(mean), asGPU(rstd), g(weight), g(dx), g(dweight), g(dbias), layout));
  }
  batchNorm(x: Storage, weight: Storage | null, bias: Storage | null, out: Storage, mean: Storage, variance: Storage, rstd: Storage, layout: BatchNormLayout): void {
    const g = (s: Storage | null) => s && asGPU(s);
    this.rt.lazy(BATCHNORM, (m) => m.batchNorm(this.rt, asGPU(x), g(weight), g(bias), asGPU(out), asGPU(mean), asGPU(variance), asGPU(rstd), layout));
  }
  batchNormRunning(...a: Parameters<Backend['batchNormRunning']>): void {
    this.rt.lazy(BATCHNORM, (m) => m.batchNormRunning(this.rt, a));
  }
  batchNormEval(x: Storage, runningMean: Storage, runningVar: Storage, weight: Storage | null, bias: Storage | null, out: Storage, layout: BatchNormLayout): void {
    const g = (s: Storage | null) => s && asGPU(s);
    this.rt.lazy(BATCHNORM, (m) => m.batchNormEval(this.rt, asGPU(x), asGPU(runningMean), asGPU(runningVar), g(weight), g(bias), asGPU(out), layout));
  }
  batchNormBackward(
    grad: Storage,
    x: Storage,
    mean: Storage,
    rstd: Storage,
    weight: Storage | null,
    dx: Storage | null,
    dweight: Storage | null,
    dbias: Storage | null,
    layout: BatchNormLayout,
  ): void {
    const g = (s: Storage | null) => s && asGPU(s);
    this.rt.lazy(BATCHNORM, (m) => m.batchNormBackward(this.rt, asGPU(grad), asGPU(x), asGPU(mean), asGPU(rstd), g(weight), g(dx), g(dweight), g(dbias), layout));
  }
  matmul(a: Storage, b: Storage, out: Storage, layout: MatmulLayout): void {
    matmul(this.rt, asGPU(a), asGPU(b), asGPU(out), layout);
  }
  im2col(x: Storage, cols: Storage, g: Window2d): void {
    this.rt.lazy(CONV, (m) => m.im2col(this.rt, asGPU(x), asGPU(cols), g));
  }
  col2im(cols: Storage, out: Storage, g: Window2d): void {
    this.rt.lazy(CONV, (m) => m.col2im(this.rt, asGPU(cols), asGPU(out), g));
  }
  conv2d(x: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    this.rt.lazy(CONV, (m) => m.conv2d(this.rt, asGPU(x), asGPU(weight), asGPU(out), l));
  }
  conv2dBackwardInput(grad: Storage, weight: Storage, out: Storage, l: Conv2dLayout): void {
    this.rt.lazy(CONV, (m) => m.conv2dBackwardInput(this.rt, asGPU(grad), asGPU(weight), asGPU(out), l));
  }
  conv2dBackwardWeight(x: Storage, grad: Storage, out: Storage, l: Conv2dLayout): void {
    this.rt.lazy(CONV, (m) => m.conv2dBackwardWeight(this.rt, asGPU(x), asGPU(grad), asGPU(out), l, { fill, reduce }));
  }
  maxPool2d(x: Storage, out: Storage, argOut: Storage | null, g: Window2d): void {
    this.rt.lazy(CONV, (m) => m.maxPool2d(this.rt, asGPU(x), asGPU(out), argOut ? asGPU(argOut) : null, g));
  }
  maxPool2dBackward(grad: Storage, arg: Storage, out: Storage, g: Window2d): void {
    this.rt.lazy(CONV, (m) => m.maxPool2dBackward(this.rt, asGPU(grad), asGPU(arg), asGPU(out), g));
  }
  avgPool2d(x: Storage, out: Storage, g: AvgPool2dLayout): void {
    this.rt.lazy(CONV, (m) => m.avgPool2d(this.rt, asGPU(x), asGPU(out), g));
  }
  avgPool2dBackward(grad: Storage, out: Storage, g: AvgPool2dLayout): void {
    this.rt.lazy(CONV, (m) => m.avgPool2dBackward(this.rt, asGPU(grad), asGPU(out), g));
  }
  gather(x: Storage, idx: Storage, out: Storage, layout: GatherLayout): void {
    this.rt.lazy(GATHER, (m) => m.gather(this.rt, asGPU(x), asGPU(idx), asGPU(out), layout));
  }
  scatterAdd(src: Storage, idx: Storage, out: Storage, layout: GatherLayout): void {
    this.rt.lazy(GATHER, (m) => m.scatterAdd(this.rt, asGPU(src), asGPU(idx), asGPU(out), layout));
  }
  cumsum(x: Storage, out: Storage, layout: ReduceLayout): void {
    this.rt.lazy(SCAN, (m) => m.cumsum(this.rt, asGPU(x), asGPU(out), layout));
  }
  argsort(x: Storage, out: Storage, layout: SortLayout): void {
    this.rt.lazy(SORT, (m) => m.argsort(this.rt, asGPU(x), asGPU(out), layout));
  }
  random(out: Storage, key0: number, key1: number, dist: RandomDist): void {
    this.rt.lazy(RNG, (m) => m.random(this.rt, asGPU(out), key0, key1, dist));
  }

  // ---------------------------------------------------------------- beyond the Backend contract

  /**
   * out[0] = sum(x[i]^2) over a flat float32 storage, in two passes (per-workgroup partials, then
   * one workgroup), the result left on the GPU: the global gradient norm of a SAM step reads it
   * there without a readback.
   */
  sumSquares(x: Storage, out: Storage): void {
    sumSquares(this.rt, asGPU(x), asGPU(out));
  }
}

