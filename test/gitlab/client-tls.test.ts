// The manager's own calls to GitLab trust gitlab.tlsCaFile (before, only the jobs did: a GitLab
// behind a private CA was unreachable for the manager without NODE_EXTRA_CA_CERTS).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GitLabClient } from '../../src/gitlab/client.js';

const hasOpenssl = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

let dir: string;
let server: Server;
let url: string;
let ca: string;
let requests = 0;

beforeAll(async () => {
  if (!hasOpenssl) return;
  dir = mkdtempSync(join(tmpdir(), 'rf-tls-'));
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  // A private CA and a server certificate for 127.0.0.1 signed by it.
  run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=rf test CA');
  run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  execFileSync('sh', ['-c', 'printf "subjectAltName=IP:127.0.0.1\\n" > ext.cnf'], { cwd: dir });
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '1', '-extfile', 'ext.cnf');
  ca = readFileSync(join(dir, 'ca.pem'), 'utf8');
  server = createServer({ key: readFileSync(join(dir, 'server.key')), cert: readFileSync(join(dir, 'server.pem')) }, (req, res) => {
    requests++;
    req.resume();
    res.writeHead(req.url === '/api/v4/jobs/request' ? 204 : 404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  if (!hasOpenssl) return;
  await new Promise((r) => server.close(r));
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!hasOpenssl)('GitLabClient over TLS with gitlab.tlsCaFile', () => {
  const log = pino({ level: 'silent' });

  it('reaches a GitLab whose certificate chains to the configured CA', async () => {
    const client = new GitLabClient({ url, timeoutMs: 3000, log, systemId: 's_tls', tlsCa: ca, retries: 0 });
    const before = requests;
    expect(await client.requestJob('tok')).toEqual({ kind: 'none' });
    expect(requests).toBe(before + 1);
    await client.close();
  });

  it('refuses that certificate without the CA, naming why', async () => {
    const client = new GitLabClient({ url, timeoutMs: 3000, log, systemId: 's_tls', retries: 0 });
    const before = requests;
    const err = (await client.requestJob('tok').catch((e: unknown) => e)) as Error;
    expect(err.message).toMatch(/^job request: .*(self[- ]signed|unable to (get|verify)|UNABLE_TO|CERT)/i);
    expect(requests).toBe(before);
    await client.close();
  });
});
