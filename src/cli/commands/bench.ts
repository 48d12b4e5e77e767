/** `flatgrad bench`: the benchmarks are a separate suite; this says how to run it. */
import { defineCommand } from './define.js';

export const benchCommand = defineCommand({
  name: 'bench',
  summary: 'how to run the benchmarks (npm run bench)',
  synopsis: '',
  positionals: { min: 0, max: 0, names: '' },
  flags: {},
  async run(_args, io) {
    io.stdout.write(
      [
        'The benchmarks live in bench/ of the flatgrad repository and need its dev dependencies',
        '(tfjs and jax-js run side by side with flatgrad). From a checkout:',
        '',
        '  npm install && npm run bench',
        '',
        'They write JSON results (with the adapter description) and a markdown table.',
        '',
      ].join('\n'),
    );
  },
});
