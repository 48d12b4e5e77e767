/** A command: its flags, how many positional arguments it takes, and what it does with them. */
import { UsageError, describeFlags, parseFlags, type FlagSet, type Parsed } from '../args.js';
import type { CliIO } from '../io.js';

export const PROGRAM = 'flatgrad';

export interface Command {
  name: string;
  summary: string;
  /** What follows the command name in the usage line, e.g. `<checkpoint> [flags]`. */
  synopsis: string;
  /** The flags it parses (for help, and for tests that feed it arbitrary command lines). */
  flags: FlagSet;
  flagsHelp(): string;
  run(argv: readonly string[], io: CliIO): Promise<number>;
}

export interface CommandSpec<F extends FlagSet> {
  name: string;
  summary: string;
  synopsis: string;
  flags: F;
  positionals: { min: number; max: number; names: string };
  /** Extra lines for --help (examples, notes). */
  notes?: string;
  run(args: Parsed<F>, io: CliIO): Promise<number | void>;
}

export function commandUsage(cmd: Command): string {
  return [`usage: ${PROGRAM} ${cmd.name} ${cmd.synopsis}`, '', cmd.summary, '', 'flags:', cmd.flagsHelp()].join('\n');
}

/** The usage line and where to find more, printed under a usage error. */
export function shortUsage(cmd: Command): string {
  return `usage: ${PROGRAM} ${cmd.name} ${cmd.synopsis}\nRun '${PROGRAM} ${cmd.name} --help' for the flags.`;
}

export function defineCommand<F extends FlagSet>(spec: CommandSpec<F>): Command {
  const cmd: Command = {
    name: spec.name,
    summary: spec.summary,
    synopsis: spec.synopsis,
    flags: spec.flags,
    flagsHelp: () => describeFlags(spec.flags) + (spec.notes ? `\n\n${spec.notes}` : ''),
    async run(argv, io) {
      const args = parseFlags(argv, spec.flags);
      if (args.help) {
        io.stdout.write(commandUsage(cmd) + '\n');
        return 0;
      }
      const n = args.positionals.length;
      if (n < spec.positionals.min) throw new UsageError(`missing ${spec.positionals.names}`);
      if (n > spec.positionals.max) throw new UsageError(`unexpected argument '${args.positionals[spec.positionals.max]}'`);
      return (await spec.run(args, io)) ?? 0;
    },
  };
  return cmd;
}
