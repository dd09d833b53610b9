/**
 * Secrets the CLI needs (passphrases, passwords) come from stdin or the environment, never from a
 * command-line value: those stay in shell history and are visible to every user through `ps`.
 */
import { Option, type Command } from 'commander';
import { CliError } from './client.js';

/** Reads up to `n` lines (without their line ends) from a stream, stopping early at its end. */
export function readLines(stream: NodeJS.ReadableStream, n: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const lines: string[] = [];
    let buf = '';
    const finish = () => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
      stream.pause();
      // Do not let a terminal's stdin keep the process alive once we have what we need.
      (stream as { unref?: () => void }).unref?.();
      resolve(lines);
    };
    const onData = (chunk: Buffer | string) => {
      buf += chunk.toString();
      let i: number;
      while (lines.length < n && (i = buf.indexOf('\n')) >= 0) {
        lines.push(buf.slice(0, i).replace(/\r$/, ''));
        buf = buf.slice(i + 1);
      }
      if (lines.length >= n) finish();
    };
    const onEnd = () => {
      if (lines.length < n && buf.length > 0) lines.push(buf.replace(/\r$/, ''));
      finish();
    };
    const onError = (e: Error) => reject(new CliError(`cannot read stdin: ${e.message}`));
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('error', onError);
    stream.resume();
  });
}

export interface SecretSource {
  /** The flag that says "read it from stdin", e.g. `--passphrase-stdin`. */
  stdinFlag: string;
  /** Environment variables, in the order the values are wanted. */
  envNames: string[];
  /** What each value is, for messages. */
  labels: string[];
}

/**
 * Reads `labels.length` secrets: from stdin (one per line, in order) when `fromStdin`, else from
 * the environment variables. Only line ends are stripped: spaces are legitimate in a passphrase.
 */
export async function readSecrets(src: SecretSource, fromStdin: boolean, env: NodeJS.ProcessEnv = process.env, stdin: NodeJS.ReadableStream = process.stdin): Promise<string[]> {
  const n = src.labels.length;
  if (fromStdin) {
    const lines = await readLines(stdin, n);
    if (lines.length < n) {
      throw new CliError(`${src.stdinFlag}: expected ${n === 1 ? `the ${src.labels[0]}` : `${n} lines (${src.labels.join(', then ')})`} on stdin, got ${lines.length === 0 ? 'nothing' : `${lines.length} line(s)`}`);
    }
    lines.forEach((l, i) => {
      if (l.length === 0) throw new CliError(`${src.stdinFlag}: the ${src.labels[i]} on stdin (line ${i + 1}) is empty`);
    });
    return lines;
  }
  const values = src.envNames.map((name) => env[name]);
  const missing = src.envNames.filter((_, i) => !values[i]);
  if (missing.length > 0) {
    throw new CliError(`give the ${src.labels.join(' and the ')} on stdin with ${src.stdinFlag}${n > 1 ? ` (${n} lines)` : ''}, or set ${src.envNames.join(' and ')} (missing: ${missing.join(', ')})`);
  }
  return values as string[];
}

/**
 * Hidden flags that catch `--passphrase VALUE` and friends, so the user learns why they are refused
 * (rather than commander's bare "unknown option").
 */
export function refuseSecretFlags(cmd: Command, names: string[]): Command {
  for (const n of names) cmd.addOption(new Option(`--${n} <value>`).hideHelp());
  return cmd;
}

export function checkNoSecretFlags(opts: Record<string, unknown>, names: string[], hint: string): void {
  for (const n of names) {
    const key = n.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    if (opts[key] !== undefined) {
      throw new CliError(`--${n} is refused: a secret given as a command-line value lands in shell history and in \`ps\` output. ${hint}`);
    }
  }
}
