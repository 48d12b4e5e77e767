/**
 * Crash-safe file replacement (Node only): the data goes to a temporary file in the target's
 * directory, is flushed to disk, and is renamed over the target. A rename within one directory
 * is atomic, so readers and a crash see either the old file or the new one, never a mix.
 */

export type FileData = Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

export async function writeFileAtomic(path: string, data: FileData): Promise<void> {
  const fs = await import('node:fs/promises');
  const { dirname, basename, join } = await import('node:path');
  const dir = dirname(path);
  // pid + random keeps concurrent writers (threads, processes) off each other's temporary file.
  const random = Math.floor(Math.random() * 2 ** 32).toString(36);
  const temp = join(dir, `.${basename(path)}.${process.pid}.${random}.tmp`);
  const handle = await fs.open(temp, 'wx');
  try {
    for await (const chunk of data instanceof Uint8Array ? [data] : data) {
      for (let written = 0; written < chunk.length; ) {
        written += (await handle.write(chunk, written, chunk.length - written)).bytesWritten;
      }
    }
    await handle.sync();
    await handle.close();
    await fs.rename(temp, path);
  } catch (error) {
    await handle.close().catch(() => {});
    await fs.rm(temp, { force: true });
    throw error;
  }
  await syncDirectory(fs, dir);
}

/** Makes the rename itself durable. Best effort: some platforms cannot open a directory. */
async function syncDirectory(fs: typeof import('node:fs/promises'), dir: string): Promise<void> {
  try {
    const handle = await fs.open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // Windows and some network file systems refuse this; the rename has still happened.
  }
}
