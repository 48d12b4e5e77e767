import type { Bind, Runtime } from './runtime.js';
import { entry } from './wgsl.js';

/**
 * Dispatches a kernel over `count` independent items (layer norm's rows, batch norm's channels),
 * each reduced over its values: one thread per item (`perThread`: short items, or a CPU-emulated
 * adapter, where every barrier costs a coroutine switch per invocation) or one workgroup of `wg`
 * per item with tree reductions in workgroup memory. `body(total)` is the WGSL after the
 * invocation has its item `item` (returned early past `P.<countParam>`), its first value `first`
 * and value step `step`; `total(v)` sums an invocation's partial over the item.
 */
export function itemReduceKernel(
  rt: Runtime,
  o: {
    name: string;
    variant: string;
    binds: Bind[];
    params: { name: string; type: 'u32' | 'f32'; value: number }[];
    count: number;
    countParam: string;
    perThread: boolean;
    wg: number;
    names: { item: string; first: string; step: string };
    body: (total: (v: string) => string) => string;
  },
): void {
  const { item, first, step } = o.names;
  const prologue = o.perThread
    ? `let ${item} = fg_group(wg, nwg) * ${o.wg}u + lid;
  if (${item} >= P.${o.countParam}) { return; }
  let ${first} = 0u;
  let ${step} = 1u;`
    : // The item is uniform over the workgroup, so the early return keeps the barriers uniform.
      `let ${item} = fg_group(wg, nwg);
  if (${item} >= P.${o.countParam}) { return; }
  let ${first} = lid;
  let ${step} = ${o.wg}u;`;
  rt.dispatch({
    name: o.name,
    key: `${o.name}:${o.perThread ? 't' : `w${o.wg}`}:${o.variant}`,
    binds: o.binds,
    params: o.params,
    groups: o.perThread ? Math.ceil(o.count / o.wg) : o.count,
    wgsl: () => `${o.perThread ? '' : workgroupReduce(o.wg)}
${entry(o.wg)} {
  ${prologue}
  ${o.body(o.perThread ? (v) => v : (v) => `fg_wg_reduce(${v}, lid, false)`)}
}`,
  });
}

/**
 * `fg_wg_reduce(v, lid, is_max)` -> the sum (or max) of v over a workgroup of `wg` (a power of
 * two) invocations, a tree in workgroup memory; every invocation gets the result. Shared by
 * the row kernels of softmax.ts and layernorm.ts: a module of its own, so that loading either
 * of those lazily loaded families does not load the other.
 */
export function workgroupReduce(wg: number): string {
  return `var<workgroup> red: array<f32, ${wg}>;
fn fg_wg_reduce(v: f32, lid: u32, is_max: bool) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), is_max); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}`;
}
