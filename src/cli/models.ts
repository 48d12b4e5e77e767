/** The three models `flatgrad train --model` offers, sized for 28x28 grey images. */
import { Flatten, Sequential, models, type Layer, type Module } from '../nn/index.js';
import type { Tensor } from '../tensor/tensor.js';

export const MODEL_NAMES = ['mlp', 'cnn', 'vit'] as const;
export type ModelName = (typeof MODEL_NAMES)[number];

export interface ModelConfig {
  model: ModelName;
  /** Hidden units (mlp), channels of the first stage (cnn) or embedding size (vit). */
  width: number;
  /** Hidden layers (mlp), residual blocks per stage (cnn) or encoder blocks (vit). */
  depth: number;
}

export type Classifier = Module & { forward(x: Tensor): Tensor };

/** Small enough to train in minutes on two CPU cores. */
export const MODEL_DEFAULTS: Record<ModelName, { width: number; depth: number }> = {
  mlp: { width: 256, depth: 2 },
  cnn: { width: 8, depth: 1 },
  vit: { width: 32, depth: 2 },
};

const IMAGE = { size: 28, channels: 1, pixels: 784 };

export function buildModel(cfg: ModelConfig, numClasses: number): Classifier {
  switch (cfg.model) {
    case 'mlp': {
      const sizes = [IMAGE.pixels, ...Array.from({ length: cfg.depth }, () => cfg.width), numClasses];
      // nn.Sequential(nn.Flatten(), nn.Linear, nn.ReLU, ...) as in PyTorch: names 1.weight, 3.weight, ...
      return new Sequential(new Flatten(), ...(models.mlp(sizes).children() as Layer[]));
    }
    case 'cnn':
      return models.resnetSmall({
        inChannels: IMAGE.channels,
        numClasses,
        widths: [cfg.width, 2 * cfg.width, 4 * cfg.width],
        blocksPerStage: cfg.depth,
      });
    case 'vit':
      return models.vit({ imageSize: IMAGE.size, patchSize: 7, inChannels: IMAGE.channels, numClasses, dim: cfg.width, depth: cfg.depth, heads: 4 });
  }
}
