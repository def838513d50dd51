// Neon's serverless driver (@neondatabase/serverless) configured with nothing but the neonConfig lines
// `pooler up` prints (HTTPS and WSS when the pooled port does TLS), as an app would paste them.
// Usage: NODE_EXTRA_CA_CERTS=<ca.crt> node neon_tls.mjs <postgres URL> <file holding the neonConfig lines>
// Prints one JSON line: each scenario's name -> {value} or {error: {message, code}}.
import { readFileSync } from 'node:fs';
import { neon, neonConfig, Pool, Client } from '@neondatabase/serverless';
import ws from 'ws';

const [url, linesFile] = process.argv.slice(2);
new Function('neonConfig', readFileSync(linesFile, 'utf8'))(neonConfig); // the printed lines, as printed
if (typeof WebSocket === 'undefined') neonConfig.webSocketConstructor = ws; // Node.js < 22, as printed

const results = { config: { fetchEndpoint: neonConfig.fetchEndpoint, useSecureWebSocket: neonConfig.useSecureWebSocket } };
async function scenario(name, fn) {
  try {
    results[name] = { value: await fn() };
  } catch (err) {
    results[name] = { error: { message: err.message, code: err.code ?? err.cause?.code } };
  }
}

const sql = neon(url);
await scenario('http', () => sql`SELECT ${7}::int AS n, current_user AS who`);
await scenario('httpBatch', () => sql.transaction([sql`SELECT 1 AS a`, sql`SELECT 2 AS b`]));
await scenario('httpError', () => sql`SELECT 1/0`);
await scenario('wsPool', async () => {
  const pool = new Pool({ connectionString: url, max: 2 });
  try {
    const all = await Promise.all([1, 2, 3].map((i) => pool.query('SELECT $1::int * 2 AS x', [i])));
    return all.map((r) => r.rows[0].x);
  } finally {
    await pool.end();
  }
});
for (const pipeline of ['password', false]) { // cleartext pipelined, and the configured auth_type (SCRAM)
  await scenario(`wsClient_${pipeline}`, async () => {
    const client = new Client(url);
    client.neonConfig.pipelineConnect = pipeline;
    let event = null;
    client.on('error', (err) => { event = err; });
    await client.connect();
    try {
      const { rows } = await client.query('SELECT $1::text AS hello', ['world']);
      if (event) throw event;
      return rows;
    } finally {
      await client.end().catch(() => {});
    }
  });
}
console.log(JSON.stringify(results));
