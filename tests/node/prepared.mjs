// Many clients of each Node.js driver, prepared statements as the driver does them, on few servers.
// Usage: node prepared.mjs <pooler dsn> <clients> <rounds>. Prints one JSON line; exits non-zero on failure.
import pg from "pg";
import postgres from "postgres";

const [dsn, clientsArg = "20", roundsArg = "30"] = process.argv.slice(2);
const clients = Number(clientsArg);
const rounds = Number(roundsArg);

async function nodePostgres(i) {
  // Named queries: node-postgres prepares each `name` once per connection and binds it afterwards.
  const client = new pg.Client({ connectionString: dsn });
  await client.connect();
  try {
    for (let j = 0; j < rounds; j++) {
      const sum = await client.query({ name: "sum", text: "select $1::int + $2::int as v", values: [i, j] });
      if (sum.rows[0].v !== i + j) throw new Error(`node-postgres: ${sum.rows[0].v} != ${i + j}`);
      const rows = await client.query({ name: "series", text: "select generate_series(1, $1::int) as g", values: [(j % 3) + 1] });
      if (rows.rows.length !== (j % 3) + 1) throw new Error("node-postgres: wrong row count");
    }
  } finally {
    await client.end();
  }
}

async function postgresJs(i) {
  // postgres.js defaults: prepare: true, so every parameterised query is a named prepared statement.
  const sql = postgres(dsn, { max: 1, onnotice: () => {} });
  try {
    for (let j = 0; j < rounds; j++) {
      const [{ v }] = await sql`select ${i}::int + ${j}::int as v`;
      if (v !== i + j) throw new Error(`postgres.js: ${v} != ${i + j}`);
      const rows = await sql`select generate_series(1, ${(j % 3) + 1}::int) as g`;
      if (rows.length !== (j % 3) + 1) throw new Error("postgres.js: wrong row count");
      await sql.begin(async (tx) => {
        const [{ t }] = await tx`select ${String(i)}::text || 'x' as t`;
        if (t !== `${i}x`) throw new Error("postgres.js: transaction");
      });
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
}

const started = Date.now();
await Promise.all([
  ...Array.from({ length: clients }, (_, i) => nodePostgres(i)),
  ...Array.from({ length: clients }, (_, i) => postgresJs(i)),
]);
console.log(JSON.stringify({ ok: true, clients, rounds, ms: Date.now() - started }));
