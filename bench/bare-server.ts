/**
 * The first ceiling: a bare Fastify JSON POST route on this machine, in its own process, loaded
 * by the same autocannon as Keysmith. It parses a body shaped like an unwrap request and answers
 * one shaped like an unwrap response, with no logger, no schema, no auth, no store.
 */
import Fastify from 'fastify';
import { say, serveParent } from './child.js';

const app = Fastify({ logger: false, bodyLimit: 64 * 1024 * 1024 });
const PLAINTEXT = Buffer.alloc(32, 7).toString('base64');

app.post('/unwrap', async (req) => {
  const { wrapped } = req.body as { wrapped: string };
  return { key_id: `dek_${String(wrapped).length}`, plaintext: PLAINTEXT };
});

const url = await app.listen({ host: '127.0.0.1', port: 0 });
serveParent(() => app.close());
say({ ready: true, url, pid: process.pid });
