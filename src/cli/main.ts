/**
 * The `keysmith` command line: `serve` and `init` run the server side; every other command is a
 * client of a running server's HTTP API. Every failure ends as one `keysmith: <message>` line on
 * stderr and a non-zero exit, never a stack trace (KEYSMITH_DEBUG=1 adds the stack of a bug).
 */
import { Command } from 'commander';
import { CliError } from './client.js';
import { ownFlagsFirst } from './command.js';
import { registerInit } from './commands/init.js';
import { registerSvm } from './commands/svm.js';
import { registerKeyManager } from './commands/key-manager.js';
import { registerKeys } from './commands/keys.js';
import { registerAuth } from './commands/auth.js';
import { registerAudit } from './commands/audit.js';

export function buildProgram(): Command {
  const program = new Command('keysmith')
    .description('Keysmith key manager')
    .showHelpAfterError('(add --help for the options and subcommands)')
    // usage errors look like every other failure: `keysmith: …`
    .configureOutput({ outputError: (text, write) => write(`keysmith: ${text.replace(/^error: /, '')}`) });
  program
    .command('serve')
    .description('run the Keysmith server')
    .option('--host <host>', 'address to listen on (default 127.0.0.1)')
    .option('--port <port>', 'port to listen on (default 8443)')
    .option('--data-dir <dir>', 'data directory (default ./.keysmith)')
    .option('--store <url>', 'sqlite:<file> or postgres://… (default: SQLite in the data directory)')
    .option('--tls-cert <file>', 'PEM certificate for HTTPS')
    .option('--tls-key <file>', 'PEM private key for HTTPS')
    .option('--sealed', 'start sealed: serve no key until unsealed with the passphrase')
    .option('--config <file>', 'JSON config file')
    .option('--log-level <level>', 'pino log level (default info)')
    .option('--node-name <name>', 'name of this node')
    .option('--kmip-port <port>', 'KMIP listener port (default 5696; needs the three KMIP TLS files)')
    .option('--kmip-tls-cert <file>', 'PEM certificate of the KMIP listener')
    .option('--kmip-tls-key <file>', 'PEM private key of the KMIP listener')
    .option('--kmip-client-ca <file>', 'PEM CA certificate(s) that KMIP client certificates must chain to')
    .option('--audit-fsync-reads', 'answer a key read only once its audit event is on disk (fsync), not only written')
    // Loaded on demand: the client commands should not pay for the server's modules.
    .action(async (opts) => (await import('./serve.js')).serve(opts));
  registerInit(program);
  registerAuth(program);
  registerSvm(program);
  registerKeyManager(program);
  registerKeys(program);
  registerAudit(program);
  ownFlagsFirst(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    const err = e as Error;
    process.stderr.write(`keysmith: ${err?.message ?? String(e)}\n`);
    if (!(e instanceof CliError) && process.env.KEYSMITH_DEBUG) process.stderr.write(`${err?.stack ?? ''}\n`);
    // exit now: a half-started server (say, a port in use) would otherwise keep the process alive
    process.exit(e instanceof CliError ? e.exitCode : 1);
  }
}
