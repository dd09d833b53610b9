/** Keeps the error catalog, its documentation and the code in step (Fastify's errors test, in spirit). */
import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ERRORS, KeysmithError } from '../src/errors.js';

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) return sources(p);
    return p.endsWith('.ts') && !p.endsWith('.test.ts') ? [p] : [];
  });
}

describe('error catalog', () => {
  const doc = readFileSync('docs/errors.md', 'utf8');
  const code = sources('src')
    .filter((f) => !f.endsWith('errors.ts'))
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n');

  it('documents every entry with its code and status', () => {
    for (const [name, spec] of Object.entries(ERRORS)) {
      const row = doc.split('\n').find((l) => l.startsWith(`| \`${name}\` |`));
      expect(row, `docs/errors.md has no row for ${name}`).toBeTruthy();
      expect(row).toContain(`| ${spec.code} | ${spec.status} |`);
    }
  });

  it('documents nothing that is not in the catalog', () => {
    const names = [...doc.matchAll(/^\| `([a-z_]+)` \|/gm)].map((m) => m[1]);
    expect(names.sort()).toEqual(Object.keys(ERRORS).sort());
  });

  it('uses every entry somewhere in the code', () => {
    for (const name of Object.keys(ERRORS)) expect(code.includes(`'${name}'`), `${name} is never raised`).toBe(true);
  });

  it('gives each entry a distinct code and a valid HTTP status', () => {
    const codes = Object.values(ERRORS).map((e) => e.code);
    expect(new Set(codes).size).toBe(codes.length);
    for (const e of Object.values(ERRORS)) expect(e.status >= 400 && e.status < 600).toBe(true);
  });

  it('renders the ONTAP error body', () => {
    const e = new KeysmithError('passphrase_mismatch', undefined, 'onboard.existing_passphrase');
    expect(e.status).toBe(400);
    expect(e.toBody()).toEqual({ error: { code: '65536139', message: ERRORS.passphrase_mismatch.message, target: 'onboard.existing_passphrase' } });
  });
});
