// node-postgres client for test_masking_attacks.py: connects to pgcloak as a
// masked login with TLS (verified against the test CA) and SCRAM, runs
// parameterised queries over the protected shop tables (including guesses
// of real values and a named prepared statement) and statements pgcloak
// must refuse, and prints one JSON document. The test checks that no raw
// protected value is in it and that refusals carry SQLSTATE 42501.
//
// Environment: PGC_HOST PGC_PORT PGC_USER PGC_PASSWORD PGC_DB PGC_CA, and the
// guesses PGC_EMAIL PGC_CARD (real values of customer 1).
'use strict'

const fs = require('fs')
const { Client } = require('pg')

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

function errorFields(e) {
  // Every field of the ErrorResponse node-postgres exposes.
  const out = {}
  for (const k of ['code', 'message', 'severity', 'detail', 'hint', 'position', 'internalPosition',
    'internalQuery', 'where', 'schema', 'table', 'column', 'dataType', 'constraint']) {
    if (e[k] !== undefined) out[k] = e[k]
  }
  return out
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
    application_name: 'pgcloak-node-attacks',
    ssl: { ca: fs.readFileSync(env.PGC_CA), rejectUnauthorized: true, servername: 'localhost' },
  })
  const notices = []
  client.on('notice', (n) => notices.push(errorFields(n)))
  await client.connect()
  const out = { notices }
  const attempt = async (name, text, values) => {
    try {
      out[name] = normRows(await client.query(text, values))
    } catch (e) {
      out[name] = errorFields(e)
    }
  }
  try {
    out.tls = client.connection.stream.encrypted === true
    out.identity = normRows(await client.query('SELECT current_user AS u, current_database() AS d'))
    const ids = Array.from({ length: 50 }, (_, i) => i + 1)
    out.rows = normRows(
      await client.query(
        'SELECT id, full_name, email, phone, ssn, card_number, birth_date, address, notes, created_at ' +
          'FROM customers WHERE id = ANY($1::bigint[]) ORDER BY id',
        [ids]
      )
    )
    // Class 1: predicates with the real value find nothing (they see the mask).
    out.by_email = normRows(await client.query('SELECT count(*)::int AS n FROM customers WHERE email = $1', [env.PGC_EMAIL]))
    out.by_card = normRows(
      await client.query('SELECT count(*)::int AS n FROM payments WHERE card_number = $1', [env.PGC_CARD])
    )
    // Class 2: a prefix guess.
    out.like = normRows(
      await client.query('SELECT count(*)::int AS n FROM customers WHERE email LIKE $1', [env.PGC_EMAIL.slice(0, 4) + '%'])
    )
    // Class 11 and 8: the view and a partition.
    out.contacts = normRows(await client.query('SELECT * FROM customer_contacts WHERE id <= $1 ORDER BY id', [30]))
    out.payments = normRows(
      await client.query('SELECT customer_id, card_number FROM payments_2025_01 WHERE customer_id <= $1 ORDER BY id', [500])
    )
    // Class 14: a named prepared statement, parsed once, bound twice.
    out.prepared = []
    for (const id of [1, 2]) {
      const r = await client.query({
        name: 'attack_by_id',
        text: 'SELECT id, email, phone, card_number, address FROM customers WHERE id = $1',
        values: [id],
      })
      out.prepared.push(normRows(r))
    }
    // Class 7 and 5: whole row and derived values.
    await attempt('whole_row', 'SELECT row_to_json(c) AS j, md5(c.email) AS h FROM customers c WHERE id <= $1', [10])
    // Class 6: an error message printing the (masked) value.
    await attempt('cast_error', 'SELECT email::int FROM customers WHERE id = $1', [2])
    // Refused statements: 42501 naming the rule.
    await attempt('refused_file', 'SELECT pg_read_file($1)', ['/etc/hostname'])
    await attempt('refused_xml', "SELECT query_to_xml($1, true, true, '')", ['select email from customers'])
    await attempt('refused_role', 'SET ROLE data_admins')
    out.after_refusal = normRows(await client.query('SELECT count(*)::int AS n FROM customers WHERE id <= $1', [100]))
  } finally {
    await client.end()
  }
  process.stdout.write(JSON.stringify(out, null, 1) + '\n')
}

const timer = setTimeout(() => {
  console.error('masking_attacks.js: timed out')
  process.exit(3)
}, 60000)
main()
  .then(() => clearTimeout(timer))
  .catch((e) => {
    console.error('masking_attacks.js:', e && e.stack ? e.stack : e)
    process.exit(2)
  })
