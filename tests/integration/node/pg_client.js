// node-postgres client for test_drivers.py. Connects with TLS (verified
// against the test CA) and SCRAM, runs parameterised queries and prints one
// JSON document. The test runs it against pgcloak and against PostgreSQL
// directly and compares the two outputs.
//
// Environment: PGC_HOST PGC_PORT PGC_USER PGC_PASSWORD PGC_DB PGC_CA
'use strict'

const fs = require('fs')
const crypto = require('crypto')
const { Client } = require('pg')

const UNICODE = 'h\u00e9llo w\u00f6rld \u65e5\u672c\u8a9e \u{1F418} \u0645\u0631\u062d\u0628\u0627'

function norm(v) {
  if (v === null || v === undefined) return null
  if (Buffer.isBuffer(v)) return { bytea: v.toString('hex') }
  if (v instanceof Date) return { timestamp: v.toISOString() }
  if (Array.isArray(v)) return v.map(norm)
  return v
}

function normRows(res) {
  return res.rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, norm(v)])))
}

async function main() {
  const env = process.env
  const client = new Client({
    host: env.PGC_HOST,
    port: Number(env.PGC_PORT),
    user: env.PGC_USER,
    password: env.PGC_PASSWORD,
    database: env.PGC_DB,
    connectionTimeoutMillis: 10000,
    query_timeout: 30000,
    application_name: 'pgcloak-node-test',
    ssl: { ca: fs.readFileSync(env.PGC_CA), rejectUnauthorized: true, servername: 'localhost' },
  })
  await client.connect()
  const out = {}
  try {
    out.tls = client.connection.stream.encrypted === true
    out.identity = normRows(await client.query('SELECT current_user AS u, current_database() AS d'))
    out.types = normRows(
      await client.query(
        'SELECT $1::text AS t, $2::int AS i, $3::numeric AS n, $4::timestamptz AS ts, $5::bytea AS b, ' +
          '$6::text AS nul, $7::int[] AS ints, $8::text[] AS texts, $9::text AS uni, $10::bool AS flag, ' +
          '$11::float8 AS f',
        [
          'plain text',
          -2147483648,
          '12345678901234567890.123456789',
          '2024-02-29T12:34:56.789Z',
          Buffer.from([0, 1, 2, 254, 255]),
          null,
          [1, 2, 3],
          ['a', null, '\u00f6'],
          UNICODE,
          true,
          3.25,
        ]
      )
    )
    out.customers = normRows(
      await client.query(
        'SELECT id, name, balance, created_at FROM customers WHERE country = $1 AND id <= $2 ORDER BY id',
        ['JP', 60]
      )
    )
    // The same named prepared statement twice (Parse once, then Bind/Execute).
    out.prepared = []
    for (const id of [7, 4242]) {
      const r = await client.query({ name: 'by_id', text: 'SELECT id, email FROM customers WHERE id = $1', values: [id] })
      out.prepared.push(normRows(r))
    }
    try {
      await client.query('SELECT 1 / $1::int AS boom', [0])
      out.error = null
    } catch (e) {
      out.error = { code: e.code, message: e.message, severity: e.severity }
    }
    out.after_error = normRows(await client.query('SELECT $1::int + 1 AS next', [41]))
    await client.query('BEGIN')
    await client.query('CREATE TEMP TABLE t (v text)')
    await client.query('INSERT INTO t SELECT $1 || g FROM generate_series(1, 10) g', ['row-'])
    out.in_tx = normRows(await client.query('SELECT count(*)::int AS c FROM t'))
    await client.query('ROLLBACK')
    const big = await client.query("SELECT g, md5(g::text) AS h FROM generate_series(1, $1::int) g", [20000])
    const h = crypto.createHash('md5')
    for (const r of big.rows) h.update(`${r.g}:${r.h}\n`)
    out.big = { rows: big.rowCount, md5: h.digest('hex') }
  } finally {
    await client.end()
  }
  process.stdout.write(JSON.stringify(out, null, 1) + '\n')
}

const timer = setTimeout(() => {
  console.error('pg_client.js: timed out')
  process.exit(3)
}, 60000)
main()
  .then(() => clearTimeout(timer))
  .catch((e) => {
    console.error('pg_client.js:', e && e.stack ? e.stack : e)
    process.exit(2)
  })
