// node-postgres with nothing but a URL, as an app would use DATABASE_URL. Usage: node url.mjs <url>.
// Prints one JSON line; exits non-zero on failure.
import pg from "pg";

const client = new pg.Client({ connectionString: process.argv[2] });
await client.connect();
try {
  const { rows } = await client.query("select current_user as who, 1 + 1 as two");
  console.log(JSON.stringify({ encrypted: client.connection.stream.encrypted === true, ...rows[0] }));
} finally {
  await client.end();
}
