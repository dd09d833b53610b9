/** `keysmith serve`: parse configuration, build the app, listen, shut down in order on a signal. */
import { createApp } from '../app.js';
import { envConfig, parseConfig, readConfigFile, type ConfigInput } from '../config.js';

export interface ServeFlags {
  host?: string;
  port?: string;
  dataDir?: string;
  store?: string;
  tlsCert?: string;
  tlsKey?: string;
  sealed?: boolean;
  config?: string;
  logLevel?: string;
  nodeName?: string;
  kmipPort?: string;
  kmipTlsCert?: string;
  kmipTlsKey?: string;
  kmipClientCa?: string;
  auditFsyncReads?: boolean;
}

export async function serve(flags: ServeFlags, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const file = flags.config ?? env.KEYSMITH_CONFIG;
  const fromFlags: ConfigInput = {
    host: flags.host,
    port: flags.port,
    dataDir: flags.dataDir,
    store: flags.store,
    tlsCert: flags.tlsCert,
    tlsKey: flags.tlsKey,
    sealed: flags.sealed,
    logLevel: flags.logLevel,
    nodeName: flags.nodeName,
    kmipPort: flags.kmipPort,
    kmipTlsCert: flags.kmipTlsCert,
    kmipTlsKey: flags.kmipTlsKey,
    kmipClientCa: flags.kmipClientCa,
    auditFsyncReads: flags.auditFsyncReads,
  };
  const config = parseConfig(file ? readConfigFile(file) : {}, envConfig(env), fromFlags);
  const app = await createApp(config);
  const address = await app.listen();
  const out = process.stderr;
  out.write(`keysmith: listening on ${address} (store: ${config.store.startsWith('sqlite:') ? config.store : 'postgres'}, data dir: ${config.dataDir})\n`);
  out.write(`keysmith: API reference at ${address}/docs, OpenAPI document at ${address}/api/openapi.json\n`);
  if (app.kmip) out.write(`keysmith: KMIP (TTLV over mutual TLS) on ${config.host}:${app.kmip.port}\n`);
  if (app.bootstrapSecret) {
    out.write(`keysmith: first start: bootstrap admin token (shown once, keep it safe):\n${app.bootstrapSecret}\n`);
  }
  if (config.sealed) out.write('keysmith: started sealed: POST /api/v1/sys/unseal with the passphrase to serve keys\n');
  if (app.unsynchronized.length > 0) out.write(`keysmith: this node holds no copy of ${app.unsynchronized.length} key manager(s): synchronize with the passphrase\n`);

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    out.write(`keysmith: ${signal}: shutting down\n`);
    app.close().then(
      () => process.exit(0),
      (e) => {
        out.write(`keysmith: shutdown failed: ${(e as Error).message}\n`);
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
}
