import { defineConfig } from 'vitest/config';

// Runs after every other test file has finished: reads what the whole run left behind.
export default defineConfig({ test: { include: ['test/final/**/*.test.ts'], testTimeout: 120_000 } });
