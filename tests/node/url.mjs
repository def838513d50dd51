// node-postgres and postgres.js with nothing but a URL, as an app would use DATABASE_URL.
// Usage: node url.mjs <url>. Prints one JSON line; exits non-zero on failure.
import pg from "pg";
import postgres from "postgres";

const url = process.argv[2];
const client = new pg.Client({ connectionString: url });
await client.connect();
let nodePostgres;
try {
  const { rows } = await client.query("select current_user as who, 1 + 1 as two");
  nodePostgres = { encrypted: client.connection.stream.encrypted === true, ...rows[0] };
} finally {
  await client.end();
}
const sql = postgres(url, { max: 1, onnotice: () => {} });
let postgresJs;
try {
  const [row] = await sql`select current_user as who, 1 + 1 as two`;
  postgresJs = { ...row };
} finally {
  await sql.end();
}
console.log(JSON.stringify({ pg: nodePostgres, postgres: postgresJs }));
