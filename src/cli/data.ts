/** The Fashion-MNIST splits a run trains and evaluates on, as the --data flags choose them. */
import {
  ArrayDataset, DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, addSymmetricLabelNoise, fashionMnistDataset, loadFashionMnist, shippedSubsetDir,
} from '../data/index.js';

export interface DataConfig {
  /** 'subset' (shipped in the repository), 'full' (Debian's data set) or a directory. */
  data: string;
  limitTrain?: number;
  limitTest?: number;
  labelNoise: number;
  seed: number;
}

export interface RunData {
  train: ArrayDataset;
  test: ArrayDataset;
  /** Where the files came from, for summaries. */
  dir: string;
  /** Training examples whose label the noise changed. */
  noisyLabels: number;
  numClasses: number;
}

export async function resolveDataDir(data: string): Promise<string> {
  if (data === 'subset') return shippedSubsetDir();
  if (data === 'full') return DEFAULT_FASHION_MNIST_DIR;
  return data;
}

/** Label noise is seeded separately from the run's seed stream so that the same --seed gives the same noisy labels for every optimizer. */
const LABEL_NOISE_SEED_OFFSET = 1_000_003;

export async function loadRunData(cfg: DataConfig): Promise<RunData> {
  const dir = await resolveDataDir(cfg.data);
  const [trainSet, testSet] = await Promise.all([
    loadFashionMnist({ split: 'train', dir, limit: cfg.limitTrain }),
    loadFashionMnist({ split: 'test', dir, limit: cfg.limitTest }),
  ]);
  let train = fashionMnistDataset(trainSet);
  let noisyLabels = 0;
  if (cfg.labelNoise > 0) {
    const noisy = addSymmetricLabelNoise(train.labels, cfg.labelNoise, FASHION_MNIST_CLASSES.length, cfg.seed + LABEL_NOISE_SEED_OFFSET);
    train = new ArrayDataset(train.features, train.featureShape, noisy.labels);
    noisyLabels = noisy.flipped.length;
  }
  return { train, test: fashionMnistDataset(testSet), dir, noisyLabels, numClasses: FASHION_MNIST_CLASSES.length };
}
