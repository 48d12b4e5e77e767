/** Mean loss and accuracy of a classifier over a data set, in eval mode and without a graph. */
import { tensor } from '../tensor/creation.js';
import { noGrad } from '../tensor/graph.js';
import { crossEntropy } from '../tensor/ops/nn.js';
import { stack } from '../tensor/ops/shape.js';
import { tidy, type Tensor } from '../tensor/tensor.js';

/** What evaluate needs of a model: nn.Module fits. */
export interface Classifier {
  forward(x: Tensor): Tensor;
  training?: boolean;
  train?(mode?: boolean): unknown;
  eval?(): unknown;
}

/** A batch as src/data's DataLoader yields it. */
export interface LabeledBatch {
  x: Float32Array;
  xShape: number[];
  y: Int32Array;
}

export interface EvalResult {
  loss: number;
  accuracy: number;
  n: number;
}

/** Runs `fn` with the model in eval mode (dropout off, BatchNorm on running statistics), then restores its mode. */
export async function inEvalMode<T>(model: Classifier, fn: () => Promise<T>): Promise<T> {
  const wasTraining = model.training ?? false;
  model.eval?.();
  try {
    return await fn();
  } finally {
    if (wasTraining) model.train?.(true);
  }
}

export async function evaluate(model: Classifier, batches: Iterable<LabeledBatch>): Promise<EvalResult> {
  return inEvalMode(model, async () => {
    let lossSum = 0;
    let correct = 0;
    let n = 0;
    for (const b of batches) {
      const sums = noGrad(() =>
        tidy(() => {
          const logits = model.forward(tensor(b.x, { shape: b.xShape }));
          const labels = tensor(b.y);
          const hits = logits.argmax(1).eq(labels).to(logits.dtype).sum();
          return stack([crossEntropy(logits, labels, { reduction: 'sum' }), hits]);
        }),
      );
      const [l, c] = await sums.data();
      sums.dispose();
      lossSum += l;
      correct += c;
      n += b.y.length;
    }
    return { loss: n ? lossSum / n : NaN, accuracy: n ? correct / n : NaN, n };
  });
}
