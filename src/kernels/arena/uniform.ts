/**
 * The uniform side of an arena kernel, evaluated on the host by every backend: coefficients,
 * guards and scalar programs in float64. Its own module because the WebGPU renderer needs it and
 * the reference code generator (reference.ts, host backends only) must not come along.
 */
import type { Node } from './expr.js';
import { uniformAt } from '../rng.js';

/** What a coefficient may read: the group's hyper-parameters, the slots of S, the parameter's flags and step count. */
export interface UniformEnv {
  hyper(name: string): number;
  slot(name: string): number;
  flags: number;
  step: number;
  /** The parameter's index (in the arena, or in the per-tensor list): what paramUniform draws for. */
  param?: number;
}

/** A uniform expression in float64 (booleans as 1 and 0). */
export function evalUniform(n: Node, env: UniformEnv): number {
  const a = () => evalUniform((n as { a: Node }).a, env);
  const b = () => evalUniform((n as { b: Node }).b, env);
  switch (n.op) {
    case 'const': return n.value;
    case 'hyper': return env.hyper(n.name);
    case 'slot': return env.slot(n.name);
    case 'flag': return env.flags & n.flag ? 1 : 0;
    case 'step': return env.step;
    case 'vec': throw new Error(`arena kernel: internal: vector ${n.name} in a uniform expression`);
    case 'add': return a() + b();
    case 'sub': return a() - b();
    case 'mul': return a() * b();
    case 'div': return a() / b();
    case 'min': return Math.min(a(), b());
    case 'max': return Math.max(a(), b());
    case 'neg': return -a();
    case 'abs': return Math.abs(a());
    case 'sqrt': return Math.sqrt(a());
    case 'sign': return Math.sign(a());
    case 'lt': return a() < b() ? 1 : 0;
    case 'le': return a() <= b() ? 1 : 0;
    case 'gt': return a() > b() ? 1 : 0;
    case 'ge': return a() >= b() ? 1 : 0;
    case 'eq': return a() === b() ? 1 : 0;
    case 'ne': return a() !== b() ? 1 : 0;
    case 'and': return a() !== 0 && b() !== 0 ? 1 : 0;
    case 'or': return a() !== 0 || b() !== 0 ? 1 : 0;
    case 'not': return a() === 0 ? 1 : 0;
    case 'nonfinite': return Number.isFinite(a()) ? 0 : 1;
    case 'where': return evalUniform(n.c, env) !== 0 ? a() : b();
    case 'pow': return Math.pow(a(), b());
    case 'draw': return uniformAt(a() >>> 0, b() >>> 0, env.param ?? 0);
    case 'normal': throw new Error('arena kernel: internal: a normal draw in a uniform expression');
  }
}
