// Neon's serverless driver (@neondatabase/serverless) against pooler, configured for a local endpoint
// exactly as the README tells users to. Run by tests/test_neon_driver.py:
//   node neon.mjs http|ws|drizzle <postgres URL through the pooler> <port serving HTTP/WebSocket>
// Prints one JSON line: each scenario's name -> {value} or {error: {message, code, ...}}.
import { neon, neonConfig, Pool, Client } from '@neondatabase/serverless';
import ws from 'ws';

const [mode, url, port] = process.argv.slice(2);

// The lines `pooler up` prints (see README, "Neon's drivers and URLs, locally").
neonConfig.fetchEndpoint = `http://127.0.0.1:${port}/sql`;
neonConfig.wsProxy = (host) => `${host}:${port}/v2`;
neonConfig.useSecureWebSocket = false;
neonConfig.pipelineTLS = false;
neonConfig.pipelineConnect = 'password';
neonConfig.webSocketConstructor = ws; // Node.js < 22 has no global WebSocket

const ERROR_KEYS = ['message', 'code', 'detail', 'hint', 'position', 'severity', 'where', 'table', 'column',
  'schema', 'dataType', 'constraint', 'routine', 'name'];

function errorOf(err) {
  const out = {};
  for (const key of ERROR_KEYS) if (err[key] !== undefined) out[key] = err[key];
  out.class = err.constructor?.name;
  return out;
}

function plain(value) {
  // Dates and Buffers as tagged strings, so the Python side can check what the driver parsed.
  return JSON.parse(JSON.stringify(value, function (key, v) {
    const raw = this[key];
    if (raw instanceof Date) return { date: raw.toISOString() };
    if (Buffer.isBuffer(raw)) return { bytes: raw.toString('hex') };
    if (v && v.type === 'Buffer' && Array.isArray(v.data)) return { bytes: Buffer.from(v.data).toString('hex') };
    return v;
  }));
}

const results = {};
async function scenario(name, fn) {
  try {
    results[name] = { value: plain(await fn()) };
  } catch (err) {
    results[name] = { error: errorOf(err) };
  }
}

function withPassword(u, password) {
  const parsed = new URL(u);
  parsed.password = password;
  return parsed.toString();
}

function withDatabase(u, db) {
  const parsed = new URL(u);
  parsed.pathname = '/' + db;
  return parsed.toString();
}

if (mode === 'http') {
  const sql = neon(url);
  await scenario('params', () => sql`SELECT ${7}::int AS n, ${'it\'s'} AS s, ${null}::text AS z`);
  await scenario('types', () => sql`SELECT 1::int8 AS big, 1.5::float8 AS f, true AS b, '{"a":[1]}'::jsonb AS j,
      ARRAY[1,2,3] AS arr, '\\x0102'::bytea AS bin, '2026-01-02T03:04:05Z'::timestamptz AS ts, 12.30::numeric AS num`);
  await scenario('fullResults', () => sql.query('SELECT 1 AS one', [], { fullResults: true }));
  await scenario('arrayMode', () => neon(url, { arrayMode: true })`SELECT 1 AS a, 2 AS b`);
  await scenario('division', () => sql`SELECT 1/0`);
  await scenario('syntax', () => sql.query('SELECT * FROM', []));
  await scenario('unique', () => sql.query("INSERT INTO neon_http_items (id, name) VALUES (1, 'a'), (1, 'b')", []));
  await scenario('paramCount', () => sql.query('SELECT $1::int + $2::int', [1]));
  await scenario('batchModes', () => sql.transaction([
    sql`SELECT current_setting('transaction_isolation') AS iso`,
    sql`SELECT current_setting('transaction_read_only') AS ro`,
    sql`SELECT current_setting('transaction_deferrable') AS d`,
  ], { isolationLevel: 'Serializable', readOnly: true, deferrable: true }));
  await scenario('batchDefault', () => sql.transaction([
    sql`SELECT current_setting('transaction_isolation') AS iso`,
    sql`SELECT txid_current() AS a`,
    sql`SELECT txid_current() AS b`,
  ]));
  await scenario('batchRollback', () => sql.transaction([
    sql`INSERT INTO neon_http_items (id, name) VALUES (100, 'kept?')`,
    sql`SELECT 1/0`,
  ]));
  await scenario('afterRollback', () => sql`SELECT count(*)::int AS n FROM neon_http_items WHERE id = 100`);
  await scenario('emptyBatch', () => sql.transaction([]));
  await scenario('insert', () => sql.query("INSERT INTO neon_http_items (id, name) VALUES (2, 'x'), (3, 'y')", [],
    { fullResults: true }));
  await scenario('wrongPassword', () => neon(withPassword(url, 'wrong'))`SELECT 1`);
  await scenario('poolQueryViaFetch', async () => {
    neonConfig.poolQueryViaFetch = true; // Pool.query() over HTTP: why fetchEndpoint is a fixed string
    const pool = new Pool({ connectionString: url });
    try {
      const result = await pool.query('SELECT $1::int + 1 AS n', [41]);
      return { rows: result.rows, viaNeonFetch: result.viaNeonFetch === true };
    } finally {
      neonConfig.poolQueryViaFetch = false;
      await pool.end();
    }
  });
  await scenario('unknownDatabase', () => neon(withDatabase(url, 'no_such_db_here'))`SELECT 1`);
} else if (mode === 'ws') {
  await scenario('pool', async () => {
    const pool = new Pool({ connectionString: url, max: 3 });
    try {
      const all = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => pool.query('SELECT $1::int * 2 AS x', [i])));
      return all.map((r) => r.rows[0].x);
    } finally {
      await pool.end();
    }
  });
  for (const pipeline of ['password', false]) {
    await scenario(`client_${pipeline}`, async () => {
      const client = new Client(url);
      client.neonConfig.pipelineConnect = pipeline;
      await client.connect();
      try {
        const { rows } = await client.query('SELECT $1::text AS hello', ['world']);
        return rows;
      } finally {
        await client.end();
      }
    });
  }
  await scenario('transaction', async () => {
    const client = new Client(url);
    await client.connect();
    try {
      await client.query('BEGIN');
      await client.query("INSERT INTO neon_http_items (id, name) VALUES (200, 'in tx')");
      const inside = await client.query('SELECT count(*)::int AS n FROM neon_http_items WHERE id = 200');
      await client.query('ROLLBACK');
      const after = await client.query('SELECT count(*)::int AS n FROM neon_http_items WHERE id = 200');
      return { inside: inside.rows[0].n, after: after.rows[0].n };
    } finally {
      await client.end();
    }
  });
  await scenario('cancel', async () => {
    const client = new Client(url);
    await client.connect();
    try {
      const started = Date.now();
      const query = client.query('SELECT pg_sleep(30)');
      await new Promise((r) => setTimeout(r, 300));
      new Client(url).cancel(client, client.activeQuery);
      try {
        await query;
        return { cancelled: false };
      } catch (err) {
        return { cancelled: true, code: err.code, seconds: (Date.now() - started) / 1000 };
      }
    } finally {
      await client.end();
    }
  });
  await scenario('wrongPassword', async () => {
    const client = new Client(withPassword(url, 'wrong'));
    let event = null;
    client.on('error', (err) => { event = err; }); // a pipelined connect resolves before the login is checked
    try {
      await client.connect();
      await client.query('SELECT 1');
    } catch (err) {
      throw err;
    } finally {
      await client.end().catch(() => {});
    }
    if (event) throw event;
    return 'logged in';
  });
} else if (mode === 'drizzle') {
  const { drizzle } = await import('drizzle-orm/neon-http');
  const { sql: dsql } = await import('drizzle-orm');
  const db = drizzle(neon(url));
  await scenario('drizzle', async () => (await db.execute(dsql`SELECT ${5}::int AS five`)).rows);
  const { drizzle: drizzleWs } = await import('drizzle-orm/neon-serverless');
  await scenario('drizzleWs', async () => {
    const pool = new Pool({ connectionString: url });
    try {
      return (await drizzleWs(pool).execute(dsql`SELECT ${6}::int AS six`)).rows;
    } finally {
      await pool.end();
    }
  });
}

console.log(JSON.stringify(results));
