/**
 * Invariant 5 (Secret): after the whole run, no passphrase, password, token or plaintext key that
 * any test noted appears in any server log or audit record, in any of the encodings a leak would
 * take (as given, base64, hex).
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const runDir = process.env.KEYSMITH_TEST_RUN_DIR!;

function read(dir: string): string[] {
  const d = join(runDir, dir);
  return existsSync(d) ? readdirSync(d).map((f) => readFileSync(join(d, f), 'utf8')) : [];
}

describe('secrets never reach logs or audit', () => {
  it('finds none of the run’s secrets in any log or audit record', () => {
    expect(runDir).toBeTruthy();
    const secrets = [...new Set(readFileSync(join(runDir, 'secrets.txt'), 'utf8').split('\n').filter((s) => s.length >= 8))];
    const logs = read('logs');
    const audit = read('audit');
    // The run must have produced material to search, or this check proves nothing.
    expect(secrets.length).toBeGreaterThan(5);
    expect(logs.join('').length).toBeGreaterThan(1000);
    expect(audit.join('').length).toBeGreaterThan(1000);
    const haystack = logs.join('\n') + '\n' + audit.join('\n');
    const leaks: string[] = [];
    for (const s of secrets) {
      const forms = [s];
      if (/^[A-Za-z0-9+/]+=*$/.test(s) && s.length >= 16) {
        const raw = Buffer.from(s, 'base64');
        forms.push(raw.toString('hex'));
      } else forms.push(Buffer.from(s).toString('base64'));
      for (const f of forms) if (haystack.includes(f)) leaks.push(`${s.slice(0, 4)}… (as ${f === s ? 'given' : 'encoded'})`);
    }
    expect(leaks).toEqual([]);
  });
});
