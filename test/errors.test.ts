/** Bad input gets an error that names the op, the shapes, dtypes or values at fault. */
import { beforeAll, describe, expect, it } from 'vitest';
import * as fg from '../src/index.js';

beforeAll(async () => {
  await fg.init({ backend: 'cpu' });
});

const i32 = (v: number[]) => fg.tensor(Int32Array.from(v));

describe('errors name what is wrong', () => {
  const cases: [string, () => unknown, RegExp][] = [
    ['matmul inner dims', () => fg.matmul(fg.ones([2, 3]), fg.ones([4, 5])), /matmul: \[2,3\] @ \[4,5\]: inner dims 3 and 4 differ/],
    ['broadcast', () => fg.ones([2, 3]).add(fg.ones([4])), /add: shapes \[2,3\] and \[4\] cannot be broadcast/],
    ['reshape size', () => fg.ones([2, 3]).reshape(4, 2), /reshape: shape \[4,2\] has 8 elements but the tensor \[2,3\] has 6/],
    ['dim out of range', () => fg.ones([2, 3]).sum(2), /sum: dim 2 is out of range for a tensor of rank 2/],
    ['backward non-scalar', () => fg.ones([3], { requiresGrad: true }).mul(2).backward(), /backward: the output has shape \[3\]/],
    ['backward without grad', () => fg.ones([1]).backward(), /does not require grad/],
    ['label out of range', () => fg.crossEntropy(fg.ones([2, 3]), i32([0, 3])), /crossEntropy: label 3 at position 1 is out of range \[0, 3\)/],
    ['negative label', () => fg.crossEntropy(fg.ones([2, 3]), i32([-1, 0])), /label -1 at position 0/],
    ['label dtype', () => fg.crossEntropy(fg.ones([2, 3]), fg.ones([2])), /labels must be int32 class indices, got float32/],
    ['label count', () => fg.crossEntropy(fg.ones([2, 3]), i32([0])), /labels \[1\] do not match logits \[2,3\]/],
    ['gather index range', () => fg.ones([2, 3]).gather(1, fg.tensor([[0], [5]], { dtype: 'int32' })), /gather: index 5 at position 1 is out of range \[0, 3\)/],
    ['indexSelect index dtype', () => fg.ones([2, 3]).indexSelect(0, fg.ones([1])), /index must be int32, got float32/],
    ['conv channels', () => fg.conv2d(fg.ones([1, 3, 4, 4]), fg.ones([2, 2, 3, 3])), /conv2d: input \[1,3,4,4\] has 3 channels but weight \[2,2,3,3\] expects 2/],
    ['conv too small', () => fg.conv2d(fg.ones([1, 1, 2, 2]), fg.ones([1, 1, 3, 3])), /too small for kernel 3x3/],
    ['int requiresGrad', () => i32([1]).requiresGrad_(), /only floating tensors can require gradients, this one is int32/],
    ['ragged array', () => fg.tensor([[1, 2], [3]] as never), /ragged nested array at root\[1\]/],
    ['unknown dtype', () => fg.zeros([2], { dtype: 'float16' as never }), /unknown dtype "float16"/],
    ['bad shape', () => fg.zeros([2, -1]), /shape must be an array of non-negative integers/],
    ['where condition dtype', () => fg.where(fg.ones([2]), 1, 0), /where: condition must be bool, got float32/],
    ['clamp bounds', () => fg.ones([2]).clamp(1, 0), /clamp: min 1 is greater than max 0/],
    ['permute dims', () => fg.ones([2, 3]).permute(0, 0), /permute: dims \[0,0\] repeat an axis/],
    ['concat shapes', () => fg.concat([fg.ones([2, 3]), fg.ones([3, 3])], 1), /concat: shapes \[2,3\], \[3,3\] differ outside dim 1/],
    ['expand', () => fg.ones([2, 3]).expand(4, 3), /expand: cannot expand \[2,3\] to \[4,3\]/],
    ['dropout p', () => fg.dropout(fg.ones([2]), 1.5), /dropout: p must be in \[0, 1\], got 1.5/],
    ['init backend', () => fg.init({ backend: 'tpu' as never }), /init: unknown backend "tpu"/],
    ['manualSeed', () => fg.manualSeed(-1), /seed must be a non-negative safe integer/],
    ['float64 default', () => fg.setDefaultDtype('int32'), /not a floating dtype/],
    ['hvp shapes', () => fg.hvp((a) => a.sum(), [fg.ones([2], { requiresGrad: true })], [fg.ones([3])]), /vector 0 has shape \[3\] but parameter 0 has \[2\]/],
    ['layerNorm shape', () => fg.layerNorm(fg.ones([2, 3]), [4]), /normalizedShape \[4\] must match the trailing dims of \[2,3\]/],
  ];
  for (const [name, fn, re] of cases) {
    it(name, async () => {
      let err: unknown = null;
      try {
        await fn();
      } catch (e) {
        err = e;
      }
      expect(err, `${name} did not throw`).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(re);
    });
  }
});
