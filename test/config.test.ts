import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, envConfig, parseConfig, readConfigFile } from '../src/config.js';

describe('configuration', () => {
  it('has working defaults: 127.0.0.1, SQLite in the data directory', () => {
    const c = parseConfig({ dataDir: '/tmp/ks-x' });
    expect(c.host).toBe('127.0.0.1');
    expect(c.store).toBe('sqlite:/tmp/ks-x/keysmith.db');
    expect(c.sealed).toBe(false);
    expect(c.bootstrapToken).toBeUndefined();
    expect(c.auditFsyncReads).toBe(false);
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('layers file < env < flags', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ks-cfg-'));
    const file = join(dir, 'c.json');
    writeFileSync(file, JSON.stringify({ port: 1000, host: '0.0.0.0', store: 'postgres://db/x' }));
    const c = parseConfig(readConfigFile(file), envConfig({ KEYSMITH_PORT: '2000', KEYSMITH_SEALED: 'true' }), { port: '3000' });
    expect(c.port).toBe(3000);
    expect(c.host).toBe('0.0.0.0');
    expect(c.store).toBe('postgres://db/x');
    expect(c.sealed).toBe(true);
  });

  it('refuses malformed settings instead of coercing them', () => {
    expect(() => parseConfig({ port: 'eighty' })).toThrow(ConfigError);
    expect(() => parseConfig({ store: 'mysql://x' })).toThrow(ConfigError);
    expect(() => parseConfig({ tlsCert: '/c.pem' })).toThrow(/together/);
    expect(() => parseConfig({ sealed: 'yes' })).toThrow(ConfigError);
    expect(() => parseConfig({ auditFsyncReads: 'always' })).toThrow(ConfigError);
    expect(parseConfig({}, envConfig({ KEYSMITH_AUDIT_FSYNC_READS: 'true' })).auditFsyncReads).toBe(true);
    expect(() => parseConfig({ bootstrapToken: 'short' })).toThrow(/16/);
    const dir = mkdtempSync(join(tmpdir(), 'ks-cfg-'));
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ prot: 1 }));
    expect(() => readConfigFile(join(dir, 'bad.json'))).toThrow(/unknown setting "prot"/);
  });
});
