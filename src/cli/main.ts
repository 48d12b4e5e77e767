/**
 * The `flatgrad` command. `main(argv, io)` runs one command in-process and resolves to its exit
 * status (0 done, 1 failed, 2 bad command line); the bundle's entry calls it with process.argv.
 */
// The gradient rules and backward() register themselves on import, as the package entry does.
import '../autograd/rules.js';
// The CLI is Node code: the CPU backend is the default until a command calls init.
import '../node-default.js';
import { UsageError } from './args.js';
import { nodeIO, type CliIO } from './io.js';
import { COMMANDS } from './commands/index.js';
import { PROGRAM, shortUsage } from './commands/define.js';

export type { CliIO } from './io.js';

export function usage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    `usage: ${PROGRAM} <command> [flags]`,
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    `Run '${PROGRAM} <command> --help' for a command's flags.`,
  ].join('\n');
}

export async function main(argv: readonly string[], io: CliIO = nodeIO()): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    (name === undefined ? io.stderr : io.stdout).write(usage() + '\n');
    return name === undefined ? 2 : 0;
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) {
    io.stderr.write(`${PROGRAM}: unknown command '${name}'\n\n${usage()}\n`);
    return 2;
  }
  try {
    return await cmd.run(rest, io);
  } catch (e) {
    if (e instanceof UsageError) {
      io.stderr.write(`${PROGRAM} ${cmd.name}: ${e.message}\n${shortUsage(cmd)}\n`);
      return 2;
    }
    io.stderr.write(`${PROGRAM} ${cmd.name}: ${e instanceof Error ? e.message : String(e)}\n`);
    if (process.env.FLATGRAD_DEBUG && e instanceof Error) io.stderr.write(`${e.stack}\n`);
    return 1;
  }
}

async function isEntryPoint(): Promise<boolean> {
  if (typeof process === 'undefined' || !process.argv[1]) return false;
  const { realpathSync } = await import('node:fs');
  const { fileURLToPath } = await import('node:url');
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (await isEntryPoint()) {
  process.exitCode = await main(process.argv.slice(2));
}
