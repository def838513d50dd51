// A web app's use of the Node.js drivers' own pools: check a connection out, run a query, give it back, again.
// Whatever the drivers send on their own around that (connection setup, reuse) is what the test records.
// Usage: node pool_reuse.mjs <dsn> <rounds>. Prints one JSON line; exits non-zero on failure.
import pg from "pg";
import postgres from "postgres";

const [dsn, roundsArg = "5"] = process.argv.slice(2);
const rounds = Number(roundsArg);

async function nodePostgresPool() {
  const pool = new pg.Pool({ connectionString: dsn, max: 1 });
  for (let i = 0; i < rounds; i++) {
    const client = await pool.connect();  // checkout, as a request handler does
    try {
      await client.query("BEGIN");
      await client.query("select $1::int as v", [i]);
      await client.query("COMMIT");
    } finally {
      client.release();
    }
    await pool.query("select now()");  // the pool's own checkout/release
  }
  await pool.end();
}

async function postgresJs() {
  const sql = postgres(dsn, { max: 1, onnotice: () => {} });
  for (let i = 0; i < rounds; i++) {
    await sql`select ${i}::int as v`;
    await sql.begin(async (tx) => { await tx`select 1`; });
  }
  await sql.end();
}

async function oneHazard() {
  // The one statement the test expects to be flagged: proof that the recording and the checks see this driver.
  const client = new pg.Client({ connectionString: dsn });
  await client.connect();
  await client.query("SET search_path = public");
  await client.end();
}

await nodePostgresPool();
await postgresJs();
await oneHazard();
console.log(JSON.stringify({ ok: true }));
