// `node scripts/experiments.mjs report`: aggregates the finished runs of scripts/experiments.mjs
// into docs/results/ (tables as markdown, CSV and JSON; plots as SVG plus Vega-Lite). Reads only
// what the CLI wrote (comparison.json of each `flatgrad compare`, the `flatgrad sharpness` JSON
// reports, `landscape` plots, step-cost JSON); trains nothing, so it runs at any time and reports
// whatever has finished. Uses the chart and table code of the built CLI next to $FLATGRAD_CLI.
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const RESULTS = process.env.FLATGRAD_RESULTS ?? 'docs/results';

export async function report({ runs, cli, rhoConfigs, variantConfigs, noiseLevels, noiseName }) {
  const dist = dirname(resolve(cli));
  const load = (p) => import(pathToFileURL(join(dist, p)).href);
  const [{ lineChartSvg, lineChartVegaLite }, { toCsv }, { meanStd }] = await Promise.all([load('cli/plot.js'), load('cli/report.js'), load('cli/commands/compare.js')]);
  const chart = (file, spec) => {
    writeFileSync(`${file}.svg`, lineChartSvg(spec));
    writeFileSync(`${file}.vl.json`, JSON.stringify(lineChartVegaLite(spec), null, 2) + '\n');
  };
  const done = [];

  // ------------------------------------------------------------------ helpers over comparisons

  const comparison = (name) => {
    const f = join(runs, name, 'comparison.json');
    return existsSync(f) ? JSON.parse(readFileSync(f, 'utf8')) : null;
  };
  /** The comparison's own files, copied as `flatgrad compare` wrote them. */
  const copyComparison = (name, dest) => {
    mkdirSync(dest, { recursive: true });
    for (const f of ['comparison.md', 'runs.csv', 'curves.svg', 'curves.vl.json', 'curves-loss.svg', 'curves-loss.vl.json']) {
      const from = join(runs, name, f);
      if (existsSync(from)) copyFileSync(from, join(dest, f));
    }
  };
  const byLabel = (cmp, label) => cmp.runs.filter((r) => r.label === label);
  const pct = (v, d = 2) => (v * 100).toFixed(d);
  const pm = (ms) => `${pct(ms.mean)} ± ${pct(ms.std)}`;
  /** a - b over the seeds both have: mean, paired standard error, and the unpaired one. */
  const difference = (a, b, key = (r) => r.final.testAccuracy) => {
    const seeds = a.map((r) => r.config.seed).filter((s) => b.some((q) => q.config.seed === s));
    const d = seeds.map((s) => key(a.find((r) => r.config.seed === s)) - key(b.find((r) => r.config.seed === s)));
    if (d.length === 0) return null;
    const dd = meanStd(d);
    const [ma, mb] = [meanStd(a.map(key)), meanStd(b.map(key))];
    return {
      seeds: d.length,
      mean: dd.mean,
      perSeed: d,
      pairedStderr: d.length > 1 ? dd.std / Math.sqrt(d.length) : null,
      unpairedStderr: a.length > 1 && b.length > 1 ? Math.hypot(ma.std / Math.sqrt(a.length), mb.std / Math.sqrt(b.length)) : null,
    };
  };
  const fmtDiff = (d) =>
    d === null ? '' : `${d.mean >= 0 ? '+' : ''}${pct(d.mean)}${d.pairedStderr === null ? '' : ` (SE ${pct(d.pairedStderr)} paired, ${pct(d.unpairedStderr)} unpaired)`}`;
  const table = (head, rows) => [head, head.map(() => '---'), ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n') + '\n';
  const setupLine = (cmp) => `${cmp.setup}; seeds ${[...new Set(cmp.runs.map((r) => r.config.seed))].join(', ')}`;

  // ------------------------------------------------------------------- 1. convergence

  const exp1 = ['exp1-mlp-fit', 'exp1-mlp-aug', 'exp1-mlp-full', 'exp1-cnn-aug', 'exp1-cnn-fit'].filter((n) => comparison(n));
  if (exp1.length) {
    const dest = join(RESULTS, 'exp1');
    const out = [];
    const json = {};
    for (const name of exp1) {
      const cmp = comparison(name);
      copyComparison(name, join(dest, name));
      const sgd = byLabel(cmp, 'sgd');
      const rows = ['sgd', 'sam', 'asam'].map((label) => {
        const rs = byLabel(cmp, label);
        if (rs.length === 0) return null;
        const err = meanStd(rs.map((r) => 1 - r.final.testAccuracy));
        const train = meanStd(rs.map((r) => r.final.trainAccuracy));
        const best = meanStd(rs.map((r) => 1 - r.bestTestAccuracy));
        const diff = label === 'sgd' ? null : difference(rs.map((r) => ({ ...r, final: { testAccuracy: 1 - r.final.testAccuracy } })), sgd.map((r) => ({ ...r, final: { testAccuracy: 1 - r.final.testAccuracy } })));
        const ms = meanStd(rs.map((r) => r.msPerStepMedian)).mean;
        json[name] = { ...(json[name] ?? {}), [label]: { seeds: rs.map((r) => r.config.seed), testError: err, bestEpochTestError: best, trainAccuracy: train, errorMinusSgd: diff, msPerStep: ms } };
        return [label, String(rs.length), pm(err), pm(best), pm(train), diff ? fmtDiff(diff) : '', ms.toFixed(1)];
      }).filter(Boolean);
      out.push(`### ${name}\n\n${setupLine(cmp)}\n\n` + table(['method', 'seeds', 'test error % (mean ± std)', 'best-epoch test error %', 'final train acc %', 'error - SGD error, points', 'ms/step (median epoch)'], rows));
    }
    writeFileSync(join(dest, 'summary.md'), out.join('\n'));
    writeFileSync(join(dest, 'summary.json'), JSON.stringify(json, null, 2) + '\n');
    done.push(dest);
  }

  // ------------------------------------------------------------------- 2. rho

  const rho = comparison('exp2-rho');
  if (rho) {
    const dest = join(RESULTS, 'exp2');
    copyComparison('exp2-rho', dest);
    const lambda = (r) => {
      const f = join(runs, 'exp2-rho', 'sharpness', `${r.name}.json`);
      return existsSync(f) ? JSON.parse(readFileSync(f, 'utf8')).eigenvalues[0] : NaN;
    };
    const rows = rhoConfigs.map((label) => {
      const rs = byLabel(rho, label);
      const [method, ...opts] = label.split(':');
      const kv = Object.fromEntries(opts.map((o) => o.split('=')));
      const family = kv['rho-schedule'] === 'lr' ? `${method} (rho follows lr)` : method;
      const lam = rs.map(lambda).filter(Number.isFinite);
      return {
        label, family, rho: kv.rho === undefined ? null : Number(kv.rho), seeds: rs.length,
        acc: rs.length ? meanStd(rs.map((r) => r.final.testAccuracy)) : null,
        best: rs.length ? meanStd(rs.map((r) => r.bestTestAccuracy)).mean : null,
        train: rs.length ? meanStd(rs.map((r) => r.final.trainAccuracy)).mean : null,
        lambdaMax: lam.length ? meanStd(lam) : null,
      };
    }).filter((r) => r.seeds > 0);
    const md = table(
      ['config', 'rho', 'seeds', 'test acc % (mean ± std)', 'best-epoch test acc %', 'train acc %', 'lambda_max (mean ± std)'],
      rows.map((r) => [r.label, r.rho ?? '', String(r.seeds), pm(r.acc), pct(r.best), pct(r.train), r.lambdaMax ? `${r.lambdaMax.mean.toFixed(2)} ± ${r.lambdaMax.std.toFixed(2)}` : '']),
    );
    writeFileSync(join(dest, 'rho.md'), `${setupLine(rho)}\n\n${md}`);
    writeFileSync(join(dest, 'rho.csv'), toCsv(rows.map((r) => ({ config: r.label, family: r.family, rho: r.rho, seeds: r.seeds, test_acc_mean: r.acc.mean, test_acc_std: r.acc.std, best_epoch_test_acc: r.best, train_acc: r.train, lambda_max_mean: r.lambdaMax?.mean ?? null, lambda_max_std: r.lambdaMax?.std ?? null }))));
    writeFileSync(join(dest, 'rho.json'), JSON.stringify(rows, null, 2) + '\n');
    // One plot per quantity, rho on a log axis; SGD (rho = 0) as a dashed level across the range.
    const swept = rows.filter((r) => r.rho !== null);
    const span = [Math.min(...swept.map((r) => r.rho)), Math.max(...swept.map((r) => r.rho))];
    const sgd = rows.find((r) => r.label === 'sgd');
    for (const [file, what, pick, unit] of [
      ['rho-accuracy', 'test accuracy (%)', (r) => r.acc && { y: r.acc.mean * 100, e: r.acc.std * 100 }, 'mean ± std over seeds'],
      ['rho-lambda-max', 'lambda_max (Hessian, 1000 train images)', (r) => r.lambdaMax && { y: r.lambdaMax.mean, e: r.lambdaMax.std }, 'mean ± std over seeds'],
    ]) {
      const families = [...new Set(swept.map((r) => r.family))];
      const series = families.map((f, i) => {
        const pts = swept.filter((r) => r.family === f && pick(r)).sort((a, b) => a.rho - b.rho);
        return { name: f, x: pts.map((r) => r.rho), y: pts.map((r) => pick(r).y), yError: pts.map((r) => pick(r).e), points: true, line: pts.length > 1, colorIndex: i };
      });
      if (sgd && pick(sgd)) series.push({ name: 'sgd (no rho)', x: span, y: [pick(sgd).y, pick(sgd).y], dashed: true, colorIndex: families.length });
      chart(join(dest, file), { title: `${what} against rho (${unit})`, xLabel: 'rho (log scale)', yLabel: what, xScale: 'log', series });
    }
    done.push(dest);
  }

  // ------------------------------------------------------------------- 3. label noise

  const noise = [];
  for (const model of ['mlp', 'cnn']) {
    for (const p of noiseLevels) {
      const name = noiseName(model, p);
      const cmp = comparison(name);
      if (!cmp) continue;
      copyComparison(name, join(RESULTS, 'exp3', name));
      const [sgd, sam] = [byLabel(cmp, 'sgd'), byLabel(cmp, 'sam')];
      if (!sgd.length || !sam.length) continue;
      const m = (rs, f) => meanStd(rs.map(f));
      noise.push({
        model, noise: p, seeds: Math.min(sgd.length, sam.length),
        sgd: { final: m(sgd, (r) => r.final.testAccuracy), best: m(sgd, (r) => r.bestTestAccuracy), train: m(sgd, (r) => r.final.trainAccuracy).mean },
        sam: { final: m(sam, (r) => r.final.testAccuracy), best: m(sam, (r) => r.bestTestAccuracy), train: m(sam, (r) => r.final.trainAccuracy).mean },
        finalDiff: difference(sam, sgd),
        bestDiff: difference(sam, sgd, (r) => r.bestTestAccuracy),
        epochs: sgd[0].config.epochs, trainImages: sgd[0].data.train,
      });
    }
  }
  if (noise.length) {
    const dest = join(RESULTS, 'exp3');
    const md = table(
      ['model', 'noise', 'seeds', 'SGD final %', 'SAM final %', 'SAM - SGD final', 'SGD best epoch %', 'SAM best epoch %', 'SAM - SGD best', 'train acc (noisy labels) SGD / SAM %'],
      noise.map((r) => [r.model, `${r.noise * 100}%`, String(r.seeds), pm(r.sgd.final), pm(r.sam.final), fmtDiff(r.finalDiff), pct(r.sgd.best.mean), pct(r.sam.best.mean), fmtDiff(r.bestDiff), `${pct(r.sgd.train)} / ${pct(r.sam.train)}`]),
    );
    writeFileSync(join(dest, 'summary.md'), md);
    writeFileSync(join(dest, 'summary.json'), JSON.stringify(noise, null, 2) + '\n');
    done.push(dest);
  }

  // ------------------------------------------------------------------- 4. variants

  const costs = Object.fromEntries(['mlp', 'cnn'].map((m) => {
    const f = join(runs, 'exp4-step-cost', `${m}.json`);
    return [m, existsSync(f) ? JSON.parse(readFileSync(f, 'utf8')) : null];
  }));
  const variants = comparison(noiseName('mlp', 0.4));
  if (costs.mlp || costs.cnn || variants) {
    const dest = join(RESULTS, 'exp4');
    mkdirSync(dest, { recursive: true });
    for (const m of ['mlp', 'cnn']) if (costs[m]) writeFileSync(join(dest, `step-cost-${m}.json`), JSON.stringify(costs[m], null, 2) + '\n');
    if (variants) copyComparison(noiseName('mlp', 0.4), dest);
    const CLAIMS = { sam: 'about 2x', looksam: '1.1-1.5x, 95-99%', 'looksam:k=10': '1.1-1.5x, 95-99%', esam: '1.3-1.5x, 95-98%', randomsam: '1x, 90-95%' };
    const rate = (m, label) => costs[m]?.rows.find((r) => r.config === label);
    const acc = (label) => (variants ? byLabel(variants, label) : []);
    const sgdAcc = acc('sgd').length ? meanStd(acc('sgd').map((r) => r.final.testAccuracy)).mean : null;
    const samAcc = acc('sam').length ? meanStd(acc('sam').map((r) => r.final.testAccuracy)).mean : null;
    const sgdMs = acc('sgd').length ? acc('sgd')[0].msPerStepMedian : null;
    const rows = variantConfigs.map((label) => {
      const rs = acc(label);
      const a = rs.length ? meanStd(rs.map((r) => r.final.testAccuracy)) : null;
      const share = a && sgdAcc !== null && samAcc !== null && samAcc > sgdAcc ? (a.mean - sgdAcc) / (samAcc - sgdAcc) : null;
      return {
        label,
        costMlp: rate('mlp', label)?.relative ?? null,
        costCnn: rate('cnn', label)?.relative ?? null,
        costInRun: rs.length && sgdMs ? meanStd(rs.map((r) => r.msPerStepMedian)).mean / sgdMs : null,
        seeds: rs.length, acc: a, best: rs.length ? meanStd(rs.map((r) => r.bestTestAccuracy)).mean : null,
        train: rs.length ? meanStd(rs.map((r) => r.final.trainAccuracy)).mean : null,
        share, claim: CLAIMS[label] ?? '',
      };
    });
    const x = (v) => (v === null ? '' : `${v.toFixed(2)}x`);
    const md = table(
      ['method', 'cost vs SGD, MLP (interleaved)', 'cost vs SGD, CNN (interleaved)', 'cost vs SGD in the training run (MLP)', 'seeds', 'test acc % (40% noise)', 'best-epoch test acc %', 'train acc % (noisy labels)', "share of SAM's gain", "seed's claim (cost, share)"],
      rows.map((r) => [r.label, x(r.costMlp), x(r.costCnn), x(r.costInRun), String(r.seeds), r.acc ? pm(r.acc) : '', r.best === null ? '' : pct(r.best), r.train === null ? '' : pct(r.train), r.share === null ? '' : `${(r.share * 100).toFixed(0)}%`, r.claim]),
    );
    const costNote = ['mlp', 'cnn'].filter((m) => costs[m]).map((m) => `${m}: ${costs[m].backend} (${costs[m].adapter}), batch ${costs[m].batch}, median of ${costs[m].rounds} rounds of ${costs[m].stepsPerRound} steps per method, interleaved; SGD ${costs[m].rows[0].msPerStep.toFixed(1)} ms/step`).join('; ');
    writeFileSync(join(dest, 'summary.md'), `${variants ? setupLine(variants) + '\n\n' : ''}${costNote}\n\n${md}`);
    writeFileSync(join(dest, 'summary.json'), JSON.stringify(rows, null, 2) + '\n');
    done.push(dest);
  }

  // ------------------------------------------------------------------- 5. flatness

  const flat = [];
  for (const name of exp1) {
    const cmp = comparison(name);
    for (const r of cmp.runs) {
      const f = join(runs, name, 'sharpness', `${r.name}.json`);
      if (!existsSync(f)) continue;
      const s = JSON.parse(readFileSync(f, 'utf8'));
      flat.push({
        experiment: name, run: r.name, method: r.label, seed: r.config.seed, testError: 1 - r.final.testAccuracy, trainAccuracy: r.final.trainAccuracy,
        loss: s.loss, eigenvalues: s.eigenvalues, maxResidual: Math.max(...s.eigenResiduals), trace: s.trace.mean, traceStderr: s.trace.stderr,
        rhoSharpness: Object.fromEntries(s.rhoSharpness.map((q) => [q.rho, q.sharpness])), examples: s.examples,
      });
    }
  }
  if (flat.length) {
    const dest = join(RESULTS, 'exp5');
    mkdirSync(dest, { recursive: true });
    const f4 = (v) => (Math.abs(v) >= 100 ? v.toFixed(1) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(4));
    const parts = [];
    const correlation = {};
    for (const name of [...new Set(flat.map((r) => r.experiment))]) {
      const rs = flat.filter((r) => r.experiment === name);
      const rhos = Object.keys(rs[0].rhoSharpness);
      const k = rs[0].eigenvalues.length;
      const head = ['run', 'test error %', 'train loss', ...Array.from({ length: k }, (_, i) => `lambda_${i + 1}`), 'max rel. residual', 'trace', ...rhos.map((q) => `rho-sharpness ${q}`)];
      const perRun = rs.map((r) => [r.run, pct(r.testError), f4(r.loss), ...r.eigenvalues.map(f4), r.maxResidual.toExponential(1), `${f4(r.trace)} ± ${f4(r.traceStderr)}`, ...rhos.map((q) => f4(r.rhoSharpness[q]))]);
      const methods = [...new Set(rs.map((r) => r.method))];
      const perMethod = methods.map((m) => {
        const ms = rs.filter((r) => r.method === m);
        const ev = (i) => meanStd(ms.map((r) => r.eigenvalues[i]));
        return [`**${m}** (mean ± std, ${ms.length} seeds)`, pm(meanStd(ms.map((r) => r.testError))), f4(meanStd(ms.map((r) => r.loss)).mean), ...Array.from({ length: k }, (_, i) => `${f4(ev(i).mean)} ± ${f4(ev(i).std)}`), '', `${f4(meanStd(ms.map((r) => r.trace)).mean)} ± ${f4(meanStd(ms.map((r) => r.trace)).std)}`, ...rhos.map((q) => f4(meanStd(ms.map((r) => r.rhoSharpness[q])).mean))];
      });
      // Does flatness track test error? Pearson and Spearman over all solutions of this leg.
      const xs = rs.map((r) => r.eigenvalues[0]);
      const ys = rs.map((r) => r.testError);
      correlation[name] = { solutions: rs.length, pearson: pearson(xs, ys), spearman: pearson(ranks(xs), ranks(ys)), traceVsErrorPearson: pearson(rs.map((r) => r.trace), ys) };
      parts.push(`### ${name} (${rs[0].examples} training images per measure)\n\n` + table(head, [...perRun, ...perMethod]) +
        `\nlambda_1 against test error over the ${rs.length} solutions: Pearson r = ${correlation[name].pearson.toFixed(2)}, Spearman rho = ${correlation[name].spearman.toFixed(2)}; trace against test error: Pearson r = ${correlation[name].traceVsErrorPearson.toFixed(2)}.\n`);
      chart(join(dest, `scatter-${name}`), {
        title: `${name}: top Hessian eigenvalue against test error, every method and seed`,
        xLabel: 'lambda_1 (Hessian top eigenvalue)',
        yLabel: 'test error (%)',
        series: methods.map((m, i) => {
          const ms = rs.filter((r) => r.method === m);
          return { name: m, x: ms.map((r) => r.eigenvalues[0]), y: ms.map((r) => r.testError * 100), line: false, colorIndex: i };
        }),
      });
      // The seed-0 landscapes, as `flatgrad landscape` drew them.
      const land = join(runs, 'exp5-landscape', name);
      if (existsSync(land)) {
        const to = join(dest, `landscape-${name}`);
        mkdirSync(to, { recursive: true });
        for (const f of readdirSync(land)) if (/\.(svg|vl\.json)$/.test(f)) copyFileSync(join(land, f), join(to, f));
      }
    }
    writeFileSync(join(dest, 'flatness.md'), parts.join('\n'));
    writeFileSync(join(dest, 'flatness.json'), JSON.stringify({ solutions: flat, correlation }, null, 2) + '\n');
    writeFileSync(join(dest, 'flatness.csv'), toCsv(flat.map((r) => ({
      experiment: r.experiment, run: r.run, method: r.method, seed: r.seed, test_error: r.testError, train_accuracy: r.trainAccuracy, loss: r.loss,
      ...Object.fromEntries(r.eigenvalues.map((v, i) => [`lambda_${i + 1}`, v])), trace: r.trace, trace_stderr: r.traceStderr,
      ...Object.fromEntries(Object.entries(r.rhoSharpness).map(([q, v]) => [`rho_sharpness_${q}`, v])),
    }))));
    done.push(dest);
  }

  console.log(done.length ? `report: wrote ${done.join(', ')}` : 'report: no finished experiment to report');
}

function pearson(xs, ys) {
  const n = xs.length;
  if (n < 3) return NaN;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
    syy += (ys[i] - my) ** 2;
  }
  return sxy / Math.sqrt(sxx * syy);
}

/** Ranks 1..n, ties sharing their mean rank (for Spearman's rho as Pearson's r of ranks). */
function ranks(xs) {
  const order = xs.map((v, i) => [v, i]).sort((a, b) => a[0] - b[0]);
  const r = new Array(xs.length);
  for (let i = 0; i < order.length; ) {
    let j = i;
    while (j + 1 < order.length && order[j + 1][0] === order[i][0]) j++;
    for (let k = i; k <= j; k++) r[order[k][1]] = (i + j) / 2 + 1;
    i = j + 1;
  }
  return r;
}
