/**
 * `keysmith init`: prepares the data directory and the store without serving — migrations, node
 * identity, cluster identity, the admin SVM — and prints the bootstrap admin token on the first
 * init only. It builds the app exactly as `serve` does (one composition root) and closes it
 * without listening.
 */
import { Writable } from 'node:stream';
import type { Command } from 'commander';
import { CliError } from '../client.js';
import { createOutput } from '../output.js';

export interface InitFlags {
  dataDir?: string;
  store?: string;
  config?: string;
  nodeName?: string;
  json?: boolean;
}

export async function init(flags: InitFlags, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  // Loaded here, not at the top: the client commands should not pay for the server's modules.
  const { createApp } = await import('../../app.js');
  const { ConfigError, envConfig, parseConfig, readConfigFile } = await import('../../config.js');
  const out = createOutput(!!flags.json);
  const file = flags.config ?? env.KEYSMITH_CONFIG;
  let config;
  try {
    config = parseConfig(file ? readConfigFile(file) : {}, envConfig(env), { dataDir: flags.dataDir, store: flags.store, nodeName: flags.nodeName });
  } catch (e) {
    if (e instanceof ConfigError) throw new CliError(e.message);
    throw e;
  }
  const started = new Date().toISOString();
  // Nothing here serves requests; the log would only be start-up noise on the terminal.
  const sink = new Writable({ write: (_c, _e, cb) => cb() });
  const app = await createApp(config, { logStream: sink });
  let fresh: boolean;
  try {
    const bootstrap = (await app.services.repos.principals.listTokens()).find((t) => t.name === 'bootstrap');
    fresh = !!bootstrap && bootstrap.created_at >= started;
  } finally {
    await app.close();
  }
  const { cluster } = app.services;
  const storeLabel = config.store.startsWith('sqlite:') ? config.store : 'postgres';
  if (out.json) {
    return out.data({
      initialized: fresh,
      data_dir: config.dataDir,
      store: storeLabel,
      cluster,
      ...(app.bootstrapSecret ? { bootstrap_token: app.bootstrapSecret } : {}),
    });
  }
  if (!fresh) {
    out.line(`${config.dataDir} is already initialized (cluster ${cluster.name}, ${cluster.uuid}; store ${storeLabel}): nothing to do`);
    return;
  }
  out.line(`initialized ${config.dataDir} (store ${storeLabel})`);
  out.line(`cluster ${cluster.name} (${cluster.uuid}), admin SVM ${cluster.name}`);
  if (app.bootstrapSecret) {
    out.line('bootstrap admin token (shown once, keep it safe):');
    out.line(app.bootstrapSecret);
  } else {
    out.line('bootstrap admin token: the one given in KEYSMITH_BOOTSTRAP_TOKEN');
  }
}

export function registerInit(program: Command): void {
  program
    .command('init')
    .description('prepare a data directory and store without serving; prints the bootstrap admin token on first init')
    .option('--data-dir <dir>', 'data directory (default ./.keysmith)')
    .option('--store <url>', 'sqlite:<file> or postgres://… (default: SQLite in the data directory)')
    .option('--config <file>', 'server JSON config file (as for serve)')
    .option('--node-name <name>', 'name of this node')
    .option('--json', 'print JSON')
    .action((opts: InitFlags) => init(opts));
}
