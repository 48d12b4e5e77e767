/** flatgrad/io: safetensors read/write, checkpoints, atomic file writes. */
export {
  encodeSafetensors, decodeSafetensors, readSafetensorsFile, writeSafetensorsFile, SafetensorsError,
  type SafetensorsDtype, type SafetensorsTensor, type SafetensorsFile,
} from './safetensors.js';
export { writeFileAtomic } from './atomic.js';
export { saveCheckpoint, loadCheckpoint, disposeCheckpoint, CheckpointError, type Checkpoint } from './checkpoint.js';
