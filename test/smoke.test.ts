import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STORES, startWithOkm, noteSecret, type TestServer } from './helpers.js';

describe.each(STORES)('smoke on %s', (store) => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startWithOkm({ store });
  });
  afterAll(() => s?.close());

  it('generates a data key and unwraps it to the same bytes', async () => {
    const g = await s.call('POST', '/api/v1/svms/cluster1/data-keys', {});
    expect(g.status).toBe(201);
    noteSecret(g.body.plaintext);
    const u = await s.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: g.body.wrapped });
    expect(u.status).toBe(200);
    expect(u.body.plaintext).toBe(g.body.plaintext);
  });
});
