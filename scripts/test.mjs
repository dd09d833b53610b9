#!/usr/bin/env node
// The project's test command: every test file (on SQLite and PostgreSQL), then the final check
// that no secret used anywhere in the run reached a log or an audit record.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const runDir = mkdtempSync(join(tmpdir(), 'keysmith-run-'));
const env = { ...process.env, KEYSMITH_TEST_RUN_DIR: runDir };
const vitest = join('node_modules', '.bin', 'vitest');
const extra = process.argv.slice(2);
let r = spawnSync(vitest, ['run', ...extra], { stdio: 'inherit', env });
if (r.status === 0 && extra.length === 0) r = spawnSync(vitest, ['run', '--config', 'vitest.final.config.ts'], { stdio: 'inherit', env });
if (!process.env.KEYSMITH_KEEP_TEST_RUN) rmSync(runDir, { recursive: true, force: true });
process.exit(r.status ?? 1);
