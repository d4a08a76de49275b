// A loopback port for a service that a test starts (and may restart on the
// same address), shared by the Node tests.
//
// Why not listen(0): the kernel hands such ports out of its ephemeral range,
// the range every outgoing connection's source port and every other test's
// listen(0) also draw from. Between our close and the service's bind, a test
// running beside this one can take the port (seen in CI: the kv-store test's
// store failed to bind). Below that range only explicit binds take ports, so
// this helper walks it from a random start, one port after the other within
// this process, and returns the first one it can bind.
import fs from 'node:fs';
import net from 'node:net';

const ephemeralLow = (() => {
  try {
    return Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
  } catch {
    return 32768; // Linux's default
  }
})();
const low = 10000;
const high = Math.min(ephemeralLow, 32768);
let next = low + Math.floor(Math.random() * Math.max(high - low, 1));

function listenOn(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(null));
    server.listen(port, '127.0.0.1', () => {
      const bound = server.address().port;
      server.close(() => resolve(bound));
    });
  });
}

export async function freePort() {
  if (high - low < 100) return listenOn(0); // no room below a custom ephemeral range
  for (let tries = 0; tries < 1000; ++tries) {
    const port = next;
    next = next + 1 < high ? next + 1 : low;
    if ((await listenOn(port)) !== null) return port;
  }
  throw new Error(`freePort: no free loopback port in ${low}-${high - 1}`);
}
