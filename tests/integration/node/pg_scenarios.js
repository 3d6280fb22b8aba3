// node-postgres scenarios for test_node_pg.py: one scenario per run, its outcome printed as one JSON line.
// Run as: node pg_scenarios.js <connectionString> <scenario>   (with `pg` resolvable via NODE_PATH)
'use strict';
const { Client } = require('pg');

const [dsn, scenario] = process.argv.slice(2);

function describe(err) {
  return err ? { code: err.code || null, message: err.message } : null;
}

const scenarios = {
  // connect() and end() in the same tick: end() runs while the startup is still in flight
  async endAtOnce() {
    const client = new Client({ connectionString: dsn });
    const outcome = { connect: 'pending', end: 'pending', errors: [] };
    client.on('error', (err) => outcome.errors.push(describe(err)));
    // node-postgres may leave connect() unsettled here; when nothing is left to run, report what settled
    process.on('beforeExit', () => { console.log(JSON.stringify(outcome)); process.exit(0); });
    const connecting = client.connect().then(() => { outcome.connect = 'connected'; },
      (err) => { outcome.connect = { connectError: describe(err) }; });
    const ending = client.end().then(() => { outcome.end = 'ended'; },
      (err) => { outcome.end = { endError: describe(err) }; });
    await Promise.all([connecting, ending]);
    return outcome;
  },
  // the usual short-lived use: connect, end, nothing in between
  async connectThenEnd() {
    const client = new Client({ connectionString: dsn });
    const errors = [];
    client.on('error', (err) => errors.push(describe(err)));
    await client.connect();
    await client.end();
    return { errors };
  },
  // backend identity: processID is the server's pid; a notification from ourselves carries it
  async identity() {
    const client = new Client({ connectionString: dsn });
    await client.connect();
    const { rows } = await client.query('SELECT pg_backend_pid() AS pid');
    await client.query('LISTEN node_identity');
    const notified = new Promise((resolve) => client.on('notification', (m) => resolve(m)));
    await client.query("NOTIFY node_identity, 'mine'");
    const message = await notified;
    await client.end();
    return { pidMatches: rows[0].pid === client.processID, notifyPidMatches: message.processId === client.processID,
             payload: message.payload };
  },
  // pg_terminate_backend on our own pid: the error the driver reports, then the client is unusable
  async terminateSelf() {
    const client = new Client({ connectionString: dsn });
    const errors = [];
    client.on('error', (err) => errors.push(describe(err)));
    await client.connect();
    let queryError = null;
    try {
      await client.query('SELECT pg_terminate_backend(pg_backend_pid())');
    } catch (err) {
      queryError = describe(err);
    }
    let after = null;
    try {
      await client.query('SELECT 1');
    } catch (err) {
      after = err.message;
    }
    return { queryError, after, errors: errors.map((e) => e.code) };
  },
};

scenarios[scenario]().then(
  (outcome) => { console.log(JSON.stringify(outcome)); process.exit(0); },
  (err) => { console.log(JSON.stringify({ failed: describe(err) })); process.exit(0); },
);
