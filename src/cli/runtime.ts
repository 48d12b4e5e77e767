/** Backend start-up for commands, and the facts about it that summaries record. */
import { init, type BackendChoice } from '../init.js';
import type { BackendInfo } from '../kernels/backend.js';
import type { CliIO } from './io.js';

export interface BackendFacts {
  backend: string;
  adapter: string;
  threads?: number;
}

export async function startBackend(choice: BackendChoice, threads: number | undefined, io: CliIO): Promise<BackendFacts> {
  const info: BackendInfo = await init({ backend: choice, threads, log: (line) => io.stderr.write(`${line}\n`) });
  const t = info.details?.threads;
  return { backend: info.name, adapter: info.adapter, ...(typeof t === 'number' ? { threads: t } : {}) };
}

export function resolvePath(io: CliIO, p: string): Promise<string> {
  return import('node:path').then(({ resolve }) => resolve(io.cwd ?? process.cwd(), p));
}
