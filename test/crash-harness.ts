/**
 * What the crash tests share: the real server as users run it (`node bin/keysmith.js serve
 * --config …`) as a child process, its output joined to the run's logs, and SIGKILL. Every death
 * of a child must be one of the test's kills; a server that ends on its own fails the test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, type WriteStream } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const BIN = join(ROOT, 'bin', 'keysmith.js');
const BUILT = join(ROOT, 'dist', 'src', 'cli', 'main.js');

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The CLI runs the compiled tree: `npm test` builds it first. */
export function requireBuilt(): void {
  if (!existsSync(BUILT)) throw new Error(`${BUILT} is missing: build first with \`npx tsc -p .\` (\`npm test\` does it)`);
}

/** The parent's environment without any KEYSMITH_* setting (the config file says everything). */
export function childEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('KEYSMITH_')) env[k] = v;
  return env;
}

export interface Life {
  proc: ChildProcess;
  /** Resolves with the base URL once the server says it listens; rejects if it exits first. */
  listening: Promise<string>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr: () => string;
  /** Milliseconds from spawn to listening, once it listens. */
  startupMs?: number;
}

const children = new Set<ChildProcess>();

/** Kills every server still running (each test file's afterAll). */
export function reapChildren(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  children.clear();
}

export function spawnServer(configFile: string, log: WriteStream): Life {
  const t = Date.now();
  const proc = spawn(process.execPath, [BIN, 'serve', '--config', configFile], { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(proc);
  let err = '';
  proc.stdout!.on('data', (c: Buffer) => log.write(c));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    proc.on('exit', (code, signal) => {
      children.delete(proc);
      r({ code, signal });
    }),
  );
  const listening = new Promise<string>((resolveUrl, reject) => {
    proc.stderr!.on('data', (c: Buffer) => {
      log.write(c);
      err += c.toString();
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m && life.startupMs === undefined) {
        life.startupMs = Date.now() - t;
        resolveUrl(m[1]);
      }
    });
    void exited.then(({ code, signal }) => reject(new Error(`server exited (code ${code}, signal ${signal}) before listening: ${err}`)));
  });
  listening.catch(() => undefined); // a life killed during start-up never listens: that is part of the tests
  const life: Life = { proc, listening, exited, stderr: () => err };
  return life;
}

export async function kill9(life: Life): Promise<void> {
  if (life.proc.exitCode === null && life.proc.signalCode === null) life.proc.kill('SIGKILL');
  const { signal, code } = await life.exited;
  // The server must not have died by itself: every death here is one of our kills.
  if (signal !== 'SIGKILL') throw new Error(`the server ended on its own (code ${code}, signal ${signal}): ${life.stderr()}`);
}

/** JSON over HTTP to a child server, with its bearer token. */
export function client(base: string, token: string) {
  return async (method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> => {
    const res = await fetch(base + path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };
}
