/**
 * Command-line flags: typed definitions, parsing of `--name value` / `--name=value`, and usage
 * errors that name the offending flag. A flag's key is camelCase in code and kebab-case on the
 * command line (`batchSize` is `--batch-size`).
 */

/** A bad command line: the CLI prints it with the usage and exits with status 2. */
export class UsageError extends Error {
  override name = 'UsageError';
  constructor(
    message: string,
    readonly command?: string,
  ) {
    super(message);
  }
}

export interface Flag<T> {
  /** What the value looks like in the usage text, e.g. `<n>`; '' for a switch. */
  placeholder: string;
  help: string;
  default?: T;
  /** A switch takes no value: present means true. */
  isSwitch?: boolean;
  /** Turns the raw text into a value or throws a UsageError phrased "must be ...". */
  parse(raw: string, flag: string): T;
}

/** A flag whose type records whether it has a default (D is undefined when not). */
export type FlagWith<T, D extends T | undefined> = Flag<T> & { default: D };

export type FlagSet = Record<string, Flag<any>>;
export type FlagValues<F extends FlagSet> = {
  [K in keyof F]: F[K] extends FlagWith<infer T, infer D> ? (undefined extends D ? T | undefined : T) : F[K] extends Flag<infer T> ? T | undefined : never;
};

export const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

const fail = (flag: string, what: string, raw: string): never => {
  throw new UsageError(`--${flag} must be ${what}, got ${raw === '' ? 'nothing' : raw}`);
};

interface NumberConstraints {
  min?: number;
  /** Exclusive lower bound. */
  above?: number;
  max?: number;
  integer?: boolean;
}

function describeNumber(c: NumberConstraints): string {
  const kind = c.integer ? 'integer' : 'number';
  if (c.min === 0 && c.max === 1) return `a ${kind} in [0, 1]`;
  if (c.above === 0) return `a positive ${kind}`;
  if (c.min === 0) return `a non-negative ${kind}`;
  if (c.min !== undefined && c.max !== undefined) return `a${kind === 'integer' ? 'n' : ''} ${kind} in [${c.min}, ${c.max}]`;
  if (c.min !== undefined) return `a${kind === 'integer' ? 'n' : ''} ${kind} >= ${c.min}`;
  return `a${kind === 'integer' ? 'n' : ''} ${kind}`;
}

export function parseNumber(raw: string, flag: string, c: NumberConstraints = {}): number {
  const v = raw.trim() === '' ? NaN : Number(raw);
  const ok =
    Number.isFinite(v) &&
    (!c.integer || Number.isInteger(v)) &&
    (c.min === undefined || v >= c.min) &&
    (c.above === undefined || v > c.above) &&
    (c.max === undefined || v <= c.max);
  return ok ? v : fail(flag, describeNumber(c), raw);
}

export function numberFlag<D extends number | undefined = undefined>(
  help: string,
  c: NumberConstraints & { default?: D; placeholder?: string } = {},
): FlagWith<number, D> {
  return { placeholder: c.placeholder ?? (c.integer ? '<n>' : '<x>'), help, default: c.default as D, parse: (raw, flag) => parseNumber(raw, flag, c) };
}

export function choiceFlag<const C extends string, D extends C | undefined = undefined>(choices: readonly C[], help: string, def?: D): FlagWith<C, D> {
  return {
    placeholder: `<${choices.join('|')}>`,
    help,
    default: def as D,
    parse: (raw, flag) => (choices.includes(raw as C) ? (raw as C) : fail(flag, `one of ${choices.join(', ')}`, raw)),
  };
}

export function stringFlag<D extends string | undefined = undefined>(help: string, opts: { default?: D; placeholder?: string } = {}): FlagWith<string, D> {
  return { placeholder: opts.placeholder ?? '<text>', help, default: opts.default as D, parse: (raw, flag) => (raw === '' ? fail(flag, 'non-empty', raw) : raw) };
}

export function switchFlag(help: string): FlagWith<boolean, boolean> {
  return { placeholder: '', help, default: false, isSwitch: true, parse: () => true };
}

/** A comma-separated list, each item checked by `item`. */
export function listFlag<T, D extends T[] | undefined = undefined>(
  item: (raw: string, flag: string) => T,
  help: string,
  opts: { default?: D; placeholder?: string } = {},
): FlagWith<T[], D> {
  return {
    placeholder: opts.placeholder ?? '<a,b,...>',
    help,
    default: opts.default as D,
    parse: (raw, flag) => {
      const parts = raw.split(',').map((s) => s.trim());
      if (parts.some((p) => p === '')) fail(flag, 'a comma-separated list without empty items', raw);
      return parts.map((p) => item(p, flag));
    },
  };
}

/** Levenshtein distance, for "did you mean" hints. */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const next = Math.min(row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = row[j];
      row[j] = next;
    }
  }
  return row[b.length];
}

export function closest(name: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = distance(name, c);
    if (d < bestD) [best, bestD] = [c, d];
  }
  return bestD <= Math.max(1, Math.floor(name.length / 3)) ? best : undefined;
}

export interface Parsed<F extends FlagSet> {
  flags: FlagValues<F>;
  positionals: string[];
  /** Keys given explicitly on the command line (so that a default can be told from a choice). */
  given: Set<keyof F>;
  help: boolean;
}

function unknownFlag(name: string, flags: FlagSet): never {
  const hint = closest(name, Object.keys(flags).map(kebab));
  throw new UsageError(`unknown flag --${name}${hint ? ` (did you mean --${hint}?)` : ''}`);
}

/** Parses argv (without the command name) against `flags`; `--` ends the flags. */
export function parseFlags<F extends FlagSet>(argv: readonly string[], flags: F): Parsed<F> {
  const byName = new Map(Object.keys(flags).map((k) => [kebab(k), k]));
  const values: Record<string, unknown> = {};
  const given = new Set<keyof F>();
  const positionals: string[] = [];
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg === '--help' || arg === '-h') {
      help = true;
      continue;
    }
    if (!arg.startsWith('--')) {
      if (arg.startsWith('-') && arg.length > 1 && Number.isNaN(Number(arg))) throw new UsageError(`unknown flag ${arg} (flags are spelled --name)`);
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq >= 0 ? eq : undefined);
    const key = byName.get(name);
    if (!key) unknownFlag(name, flags);
    const flag = flags[key!];
    let raw: string;
    if (flag.isSwitch) {
      if (eq >= 0) throw new UsageError(`--${name} is a switch and takes no value, got ${arg.slice(eq + 1)}`);
      raw = '';
    } else if (eq >= 0) raw = arg.slice(eq + 1);
    else {
      if (i + 1 >= argv.length || (argv[i + 1].startsWith('--') && argv[i + 1].length > 2)) throw new UsageError(`--${name} needs a value ${flag.placeholder}`);
      raw = argv[++i];
    }
    if (given.has(key!)) throw new UsageError(`--${name} is given twice`);
    values[key!] = flag.parse(raw, name);
    given.add(key!);
  }
  for (const [key, flag] of Object.entries(flags)) if (!(key in values) && flag.default !== undefined) values[key] = flag.default;
  return { flags: values as FlagValues<F>, positionals, given, help };
}

/** `key=value:key=value` overrides (the compare command's per-configuration settings), parsed by the same flags. */
export function parseOverrides<F extends FlagSet>(text: string, flags: F, where: string): Partial<FlagValues<F>> {
  const out: Record<string, unknown> = {};
  for (const part of text.split(':').filter(Boolean)) {
    const eq = part.indexOf('=');
    const name = eq >= 0 ? part.slice(0, eq) : part;
    const key = Object.keys(flags).find((k) => kebab(k) === name);
    try {
      if (!key) unknownFlag(name, flags);
      const flag = flags[key!];
      if (!flag.isSwitch && eq < 0) throw new UsageError(`--${name} needs a value ${flag.placeholder}`);
      out[key!] = flag.parse(part.slice(eq + 1), name);
    } catch (e) {
      if (e instanceof UsageError) throw new UsageError(`${where}: ${e.message}`);
      throw e;
    }
  }
  return out as Partial<FlagValues<F>>;
}

/** The flags section of a command's usage text, one flag per line with its default. */
export function describeFlags(flags: FlagSet): string {
  const rows = Object.entries(flags).map(([key, f]) => [`--${kebab(key)}${f.placeholder ? ` ${f.placeholder}` : ''}`, f.help + (f.default !== undefined && !f.isSwitch ? ` (default ${Array.isArray(f.default) ? f.default.join(',') : f.default})` : '')]);
  const width = Math.min(36, Math.max(...rows.map(([a]) => a.length)));
  return rows.map(([a, b]) => (a.length > width ? `  ${a}\n  ${' '.repeat(width)}  ${b}` : `  ${a.padEnd(width)}  ${b}`)).join('\n');
}
