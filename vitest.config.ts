import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Tests run as Node code does: the package's Node entry makes the CPU backend the default.
    setupFiles: ['./src/node-default.ts'],
    // Dawn (the `webgpu` package) is a native addon: separate processes keep each suite's device apart.
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
