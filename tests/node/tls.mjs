// TLS through the pooler with the Node.js drivers: node-postgres with channel binding, postgres.js.
// Usage: NODE_EXTRA_CA_CERTS=<ca> node tls.mjs <pooler url>. Prints one JSON line; exits non-zero on failure.
import pg from "pg";
import postgres from "postgres";

const [url] = process.argv.slice(2);

async function nodePostgres() {
  // ssl: true verifies the certificate (against NODE_EXTRA_CA_CERTS); enableChannelBinding picks
  // SCRAM-SHA-256-PLUS when the server offers it.
  const client = new pg.Client({ connectionString: url, ssl: true, enableChannelBinding: true });
  let mechanism = null;
  const send = client.connection.sendSASLInitialResponseMessage.bind(client.connection);
  client.connection.sendSASLInitialResponseMessage = (m, r) => { mechanism = m; return send(m, r); };
  await client.connect();
  try {
    const { rows } = await client.query("select 1 as v");
    return { encrypted: client.connection.stream.encrypted === true, mechanism, value: rows[0].v };
  } finally {
    await client.end();
  }
}

async function postgresJs() {
  const sql = postgres(url, { ssl: "verify-full", max: 1, onnotice: () => {} });
  try {
    const [row] = await sql`select 1 as v`;
    // The pooler runs with client_tls_sslmode = require: a plaintext login would have been refused.
    return { encrypted: true, value: row.v };
  } finally {
    await sql.end();
  }
}

console.log(JSON.stringify({ pg: await nodePostgres(), postgres: await postgresJs() }));
