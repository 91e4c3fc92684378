// Node's cluster module in round-robin mode (the default except on
// Windows): the primary accepts every connection and hands it to a worker
// over the IPC channel (sendmsg with SCM_RIGHTS). N clients in the
// primary, each served by a worker: request, upper-cased reply with the
// worker's mark, then the worker's end (EOF). Exits 0 if all N are right.
const cluster = require('cluster');
const net = require('net');

cluster.schedulingPolicy = cluster.SCHED_RR;
const N = Number(process.env.CLIENTS || 8);
const port = Number(process.env.PORT);

if (cluster.isPrimary) {
  const workers = [cluster.fork(), cluster.fork()];
  let listening = 0;
  cluster.on('listening', () => {
    if (++listening < workers.length) return;
    let done = 0;
    let ok = 0;
    for (let i = 0; i < N; i++) {
      const c = net.connect(port, '127.0.0.1', () => c.write('hello' + i));
      let got = '';
      c.on('data', (d) => { got += d; });
      c.on('end', () => {
        if (got === 'HELLO' + i + ':w') ok++;
        else console.log('client', i, 'got', JSON.stringify(got));
      });
      c.on('error', (e) => console.log('client', i, 'error', e.message));
      c.on('close', () => {
        if (++done < N) return;
        console.log(`${ok} of ${N} clients ok`);
        for (const w of workers) w.kill();
        process.exitCode = ok === N ? 0 : 1;
      });
    }
  });
} else {
  net.createServer((s) => {
    s.on('data', (d) => s.end(d.toString().toUpperCase() + ':w'));
  }).listen(port, '127.0.0.1');
}
