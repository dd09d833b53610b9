/**
 * Summarizes a V8 .cpuprofile: where the time went, by function (self and inclusive) and by area
 * (a Keysmith source file, an npm package, a part of Node, GC, idle).
 * Usage: node dist/bench/profile-summary.js FILE.cpuprofile [--top N]
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface Row {
  name: string;
  ms: number;
  pct: number;
}

export interface Summary {
  totalMs: number;
  /** Share of samples in which the thread was doing something (not idle). */
  busyPct: number;
  self: Row[];
  inclusive: Row[];
  areas: Row[];
}

function shortUrl(url: string): string {
  if (!url) return '';
  let u = url.startsWith('file://') ? fileURLToPath(url) : url;
  const nm = u.lastIndexOf('/node_modules/');
  if (nm >= 0) return u.slice(nm + '/node_modules/'.length);
  const dist = u.indexOf('/dist/');
  if (dist >= 0) u = u.slice(dist + '/dist/'.length);
  return u;
}

function area(cf: CallFrame): string {
  const name = cf.functionName;
  if (name === '(garbage collector)' || name === '(idle)' || name === '(program)' || name === '(root)') return name;
  const u = shortUrl(cf.url);
  if (!u) return '(native / V8 builtins)';
  if (cf.url.includes('/node_modules/')) {
    const parts = u.split('/');
    return parts[0].startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0];
  }
  if (u.startsWith('node:')) {
    const m = /^node:(internal\/[^/]+|[^/]+)/.exec(u);
    return m ? `node:${m[1].replace(/\.js$/, '')}` : u;
  }
  if (u.startsWith('src/') || u.startsWith('bench/')) return u.replace(/\.js$/, '.ts');
  return u;
}

function fnKey(cf: CallFrame): string {
  const name = cf.functionName || '(anonymous)';
  const u = shortUrl(cf.url);
  return u ? `${name}  ${u}:${cf.lineNumber + 1}` : name;
}

function rank(m: Map<string, number>, total: number, top: number): Row[] {
  return [...m.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([name, us]) => ({ name, ms: us / 1000, pct: (100 * us) / total }));
}

export function summarize(p: CpuProfile, top = 20): Summary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) byId.set(n.id, n);
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  const areas = new Map<string, number>();
  let total = 0;
  let idle = 0;
  const add = (m: Map<string, number>, k: string, v: number) => m.set(k, (m.get(k) ?? 0) + v);
  for (let i = 0; i < p.samples.length; i++) {
    // A sample's weight is the time until the next sample.
    const dt = p.timeDeltas[i + 1] ?? p.timeDeltas[i] ?? 0;
    const node = byId.get(p.samples[i]);
    if (!node) continue;
    total += dt;
    if (node.callFrame.functionName === '(idle)') idle += dt;
    add(self, fnKey(node.callFrame), dt);
    add(areas, area(node.callFrame), dt);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const cf = byId.get(id)!.callFrame;
      if (cf.functionName === '(root)') continue;
      const k = fnKey(cf);
      if (!seen.has(k)) {
        seen.add(k);
        add(incl, k, dt);
      }
    }
  }
  return { totalMs: total / 1000, busyPct: total ? (100 * (total - idle)) / total : 0, self: rank(self, total, top), inclusive: rank(incl, total, top), areas: rank(areas, total, top) };
}

export function formatSummary(s: Summary, title: string): string {
  const lines: string[] = [];
  const table = (head: string, rows: Row[]) => {
    lines.push(`  ${head}`);
    for (const r of rows) lines.push(`    ${r.pct.toFixed(1).padStart(5)}%  ${r.ms.toFixed(0).padStart(6)} ms  ${r.name}`);
  };
  lines.push(`${title}: ${s.totalMs.toFixed(0)} ms sampled, thread busy ${s.busyPct.toFixed(0)}%`);
  table('self time by area', s.areas);
  table('self time by function', s.self);
  table('inclusive time by function (time with the function on the stack)', s.inclusive);
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } });
  if (positionals.length === 0) {
    process.stderr.write('usage: node dist/bench/profile-summary.js FILE.cpuprofile [--top N]\n');
    process.exit(2);
  }
  for (const f of positionals) {
    console.log(formatSummary(summarize(JSON.parse(readFileSync(f, 'utf8')) as CpuProfile, Number(values.top)), f));
  }
}
