/** The `keysmith` command line. */
import { Command } from 'commander';
import { serve } from './serve.js';

export async function main(argv: string[]): Promise<void> {
  const program = new Command('keysmith').description('Keysmith key manager').showHelpAfterError();
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
    .action((opts) => serve(opts));
  await program.parseAsync(argv);
}
