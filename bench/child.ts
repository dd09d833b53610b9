/**
 * What the two benchmark servers share: the parent talks to a child over its stdin and stdout, one
 * JSON object per line. The child exits when its stdin closes, so a parent that dies for any
 * reason (even SIGKILL) never leaves a server behind.
 *
 * Commands (parent → child): {"cmd":"profile-start"}, {"cmd":"profile-stop","file":"…"},
 * {"cmd":"exit"}. Every command is answered with one line {"ok":true,…} or {"ok":false,"error":…}.
 */
import { Session } from 'node:inspector/promises';
import { writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

export function say(msg: unknown): void {
  process.stdout.write(JSON.stringify(msg) + '\n');
}

export function serveParent(shutdown: () => Promise<void>): void {
  let session: Session | null = null;
  let closing = false;
  const exit = async (code: number) => {
    if (closing) return;
    closing = true;
    try {
      await shutdown();
    } catch (e) {
      process.stderr.write(`bench child: shutdown failed: ${(e as Error).message}\n`);
      code = code || 1;
    }
    process.exit(code);
  };

  const rl = createInterface({ input: process.stdin });
  rl.on('line', async (line) => {
    let cmd: { cmd?: string; file?: string };
    try {
      cmd = JSON.parse(line) as typeof cmd;
    } catch {
      return say({ ok: false, error: 'not JSON' });
    }
    try {
      if (cmd.cmd === 'profile-start') {
        session = new Session();
        session.connect();
        await session.post('Profiler.enable');
        // 250 µs: enough samples in a few seconds to rank functions, little added cost.
        await session.post('Profiler.setSamplingInterval', { interval: 250 });
        await session.post('Profiler.start');
        say({ ok: true });
      } else if (cmd.cmd === 'profile-stop') {
        if (!session || !cmd.file) throw new Error('no profile running, or no file named');
        const { profile } = await session.post('Profiler.stop');
        writeFileSync(cmd.file, JSON.stringify(profile));
        session.disconnect();
        session = null;
        say({ ok: true, file: cmd.file });
      } else if (cmd.cmd === 'exit') {
        say({ ok: true });
        await exit(0);
      } else say({ ok: false, error: `unknown command ${String(cmd.cmd)}` });
    } catch (e) {
      say({ ok: false, error: (e as Error).message });
    }
  });
  // The lifeline: no parent, no server.
  rl.on('close', () => void exit(0));
  process.on('SIGTERM', () => void exit(0));
  process.on('SIGINT', () => void exit(0));
}
