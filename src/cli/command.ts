/** Shared shape of the client commands: connection flags, `--json`, and one way to run an action. */
import type { Command } from 'commander';
import { CliError, createClient, resolveTarget, type Client, type ClientFlags } from './client.js';
import { createOutput, type Output } from './output.js';

export interface Ctx {
  /** Created on first use, so a command that fails its own checks never needs a server. */
  readonly client: Client;
  readonly out: Output;
  readonly env: NodeJS.ProcessEnv;
}

const CONNECTION_FLAGS = ['--url', '--token', '--config', '--ca', '--insecure', '--json'];
const clientCommands = new WeakSet<Command>();

/** Adds a client subcommand with the connection flags every one of them takes. */
export function clientCommand(parent: Command, nameAndArgs: string, description: string): Command {
  const cmd = parent.command(nameAndArgs);
  clientCommands.add(cmd);
  return cmd
    .description(description)
    .option('--url <url>', 'server URL (env KEYSMITH_URL; default http://127.0.0.1:8443)')
    .option('--token <token>', 'API token (env KEYSMITH_TOKEN, or the client config file)')
    .option('--config <file>', 'client config file {url, token, insecure?, ca?} (env KEYSMITH_CLIENT_CONFIG; default ~/.config/keysmith/client.json)')
    .option('--ca <file>', 'PEM certificate(s) to trust for https (env KEYSMITH_CA)')
    .option('--insecure', 'do not verify the server certificate (env KEYSMITH_INSECURE)')
    .option('--json', 'print JSON instead of a table');
}

/** Lists each client command's own flags in its help before the connection flags they all share. */
export function ownFlagsFirst(cmd: Command): void {
  if (clientCommands.has(cmd)) {
    const shared = (o: { long?: string }) => CONNECTION_FLAGS.includes(o.long ?? '');
    const sorted = [...cmd.options.filter((o) => !shared(o)), ...cmd.options.filter(shared)];
    (cmd.options as unknown as unknown[]).splice(0, cmd.options.length, ...sorted);
  }
  for (const sub of cmd.commands) ownFlagsFirst(sub);
}

type Action = (ctx: Ctx, opts: Record<string, any>, ...args: string[]) => Promise<void>;

/** Wraps an action: builds the context from the command's flags and hands over positional args. */
export function act(fn: Action, env: NodeJS.ProcessEnv = process.env) {
  return async (...a: unknown[]): Promise<void> => {
    const cmd = a[a.length - 1] as Command;
    const opts = cmd.opts() as ClientFlags & { json?: boolean } & Record<string, unknown>;
    const positional = a.slice(0, -2) as string[];
    const out = createOutput(!!opts.json);
    let client: Client | undefined;
    const ctx: Ctx = {
      get client() {
        client ??= createClient(resolveTarget(opts, env, (m) => out.note(`keysmith: warning: ${m}`)));
        return client;
      },
      out,
      env,
    };
    await fn(ctx, opts, ...positional);
  };
}

/** Parses a whole, non-negative integer flag value. */
export function intFlag(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d{1,15}$/.test(v)) throw new CliError(`${name} must be a whole number, not "${v}"`);
  return Number(v);
}

/** Collects a repeatable flag (`--svm a --svm b`, or `--svm a,b`). */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, ...value.split(',').map((s) => s.trim()).filter(Boolean)];
}
