/**
 * The three models of bench/steps.bench.ts, for the benches that profile one of them: the MLP
 * 784-256-256-10, the small ResNet of `flatgrad train --model cnn` (widths 8/16/32, one block per
 * stage) and the ViT (28x28, patch 7, dim 32, depth 2, 4 heads, MLP 64); Fashion-MNIST-shaped input.
 */
import * as fg from '../src/index.js';

export type StepModelName = 'mlp' | 'cnn' | 'vit';

export function stepModel(name: string): ReturnType<typeof fg.nn.models.mlp> | ReturnType<typeof fg.nn.models.vit> {
  const { models } = fg.nn;
  if (name === 'mlp') return models.mlp([784, 256, 256, 10]);
  if (name === 'vit') return models.vit({ imageSize: 28, patchSize: 7, inChannels: 1, numClasses: 10, dim: 32, depth: 2, heads: 4, mlpRatio: 2 });
  if (name === 'cnn') return models.resnetSmall({ inChannels: 1, numClasses: 10, widths: [8, 16, 32], blocksPerStage: 1 });
  throw new Error(`unknown model '${name}': expected mlp, cnn or vit`);
}

/** The input of a batch for `name`: flat images for the MLP, [batch, 1, 28, 28] otherwise. */
export const stepInputShape = (name: string, batch: number): number[] => (name === 'mlp' ? [batch, 784] : [batch, 1, 28, 28]);
