/** What the CLI prints: aligned tables for people, or the API's JSON with `--json` for scripts. */

export interface Output {
  readonly json: boolean;
  /** The API's answer (or a summary object) as JSON: `--json` mode. */
  data(value: unknown): void;
  /** A table of records: one row each, the given columns. */
  table<T>(rows: T[], columns: Column<T>[]): void;
  /** One record as `label  value` lines. */
  fields(pairs: [string, unknown][]): void;
  /** A plain line on stdout. */
  line(text: string): void;
  /** A note for people, on stderr, so stdout stays clean for pipes. */
  note(text: string): void;
}

export type Column<T> = [header: string, value: (row: T) => unknown];

export function cell(v: unknown): string {
  if (v === undefined || v === null || v === '') return '-';
  if (Array.isArray(v)) return v.length === 0 ? '-' : v.map(cell).join(',');
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v).replace(/[\r\n\t]+/g, ' ');
}

export function createOutput(json: boolean, stdout: NodeJS.WritableStream = process.stdout, stderr: NodeJS.WritableStream = process.stderr): Output {
  return {
    json,
    data(value) {
      stdout.write(JSON.stringify(value, null, 2) + '\n');
    },
    table(rows, columns) {
      const matrix = [columns.map(([h]) => h), ...rows.map((r) => columns.map(([, f]) => cell(f(r))))];
      const widths = columns.map((_, i) => Math.max(...matrix.map((row) => row[i].length)));
      for (const row of matrix) stdout.write(row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]))).join('  ') + '\n');
    },
    fields(pairs) {
      const w = Math.max(...pairs.map(([k]) => k.length));
      for (const [k, v] of pairs) stdout.write(`${k.padEnd(w)}  ${cell(v)}\n`);
    },
    line(text) {
      stdout.write(text + '\n');
    },
    note(text) {
      stderr.write(text + '\n');
    },
  };
}
