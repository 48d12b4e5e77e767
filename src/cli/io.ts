/** What a command may touch of the outside world: injected so that tests can run the CLI in-process. */
import type { OutStream } from './progress.js';

export interface CliIO {
  stdout: OutStream;
  stderr: OutStream;
  /** Relative paths resolve against this (default: process.cwd()). */
  cwd?: string;
}

export function nodeIO(): CliIO {
  return { stdout: process.stdout, stderr: process.stderr, cwd: process.cwd() };
}
