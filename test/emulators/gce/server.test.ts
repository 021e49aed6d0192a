// The GCE emulator through the real @google-cloud/compute clients (REST fallback).
import { constants, privateDecrypt } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InstancesClient, ZoneOperationsClient, type protos } from '@google-cloud/compute';
import { PassThroughClient } from 'google-auth-library';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connectSsh } from '../../../src/connect/ssh.js';
import { startGceEmulator, type GceEmulator } from '../../../emulators/gce/server.js';
import { generateVmKeyPair } from '../../../src/isolation/keys.js';
import { windowsKeyEntry } from '../../../src/providers/gcp/windows.js';

type Instance = protos.google.cloud.compute.v1.IInstance;
type Operation = protos.google.cloud.compute.v1.IOperation;

const PROJECT = 'emu-proj';
const ZONE = 'us-central1-a';
let emu: GceEmulator;
let dataDir: string;
let instances: InstancesClient;
let ops: ZoneOperationsClient;
let seq = 0;
const uniq = (p: string) => `${p}-${process.pid}-${++seq}`;

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'gce-emu-test-'));
  emu = await startGceEmulator({ host: '127.0.0.1', port: 0, dataDir });
  const opts: Record<string, unknown> = {
    apiEndpoint: '127.0.0.1',
    port: emu.port,
    protocol: 'http',
    fallback: true,
    projectId: PROJECT,
    // gax's AnyAuthClient union omits PassThroughClient, which it accepts at run time.
    authClient: new PassThroughClient(),
  };
  instances = new InstancesClient(opts as ConstructorParameters<typeof InstancesClient>[0]);
  ops = new ZoneOperationsClient(opts as ConstructorParameters<typeof ZoneOperationsClient>[0]);
});

afterEach(() => {
  Object.assign(emu.faults, { rateLimitNext: 0, hangNext: 0, quotaExceeded: false, stockoutAsHttp: false, failNextWith: undefined, errorRate: 0, errorAfterRate: 0, lostShare: 0 });
  emu.faults.stockoutZones.clear();
  emu.faults.unreachableZones.clear();
});

afterAll(async () => {
  await instances?.close();
  await ops?.close();
  try {
    await emu?.close();
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

function body(name: string, labels: Record<string, string>, publicKey?: string): Instance {
  return {
    name,
    machineType: `zones/${ZONE}/machineTypes/e2-small`,
    labels,
    metadata: { items: publicKey ? [{ key: 'ssh-keys', value: `runner:${publicKey}` }] : [] },
    disks: [{ boot: true, autoDelete: true, initializeParams: { sourceImage: 'projects/debian-cloud/global/images/family/debian-12' } }],
    networkInterfaces: [{ network: 'global/networks/default' }],
    scheduling: { automaticRestart: false },
  };
}

async function waitOp(op: Operation, zone = ZONE): Promise<Operation> {
  let cur = op;
  while (cur.status !== 'DONE') [cur] = await ops.wait({ project: PROJECT, zone, operation: cur.name! });
  return cur;
}

async function insert(name: string, labels: Record<string, string> = {}, publicKey?: string, requestId?: string): Promise<Operation> {
  const [lro] = await instances.insert({ project: PROJECT, zone: ZONE, instanceResource: body(name, labels, publicKey), ...(requestId ? { requestId } : {}) });
  return lro.latestResponse as Operation;
}

async function get(name: string): Promise<Instance> {
  const [inst] = await instances.get({ project: PROJECT, zone: ZONE, instance: name });
  return inst;
}

describe('GCE emulator through the real InstancesClient', () => {
  it('inserts an instance that becomes RUNNING with an address, labels and a reachable SSH sandbox', async () => {
    const name = uniq('vm');
    const keys = generateVmKeyPair(name);
    const op = await insert(name, { team: 'ci' }, keys.publicKey);
    expect(op).toMatchObject({ kind: 'compute#operation', operationType: 'insert', name: expect.stringMatching(/^operation-/) });
    expect(op.targetLink).toMatch(new RegExp(`/zones/${ZONE}/instances/${name}$`));
    const done = await waitOp(op);
    expect(done.status).toBe('DONE');
    expect(done.error).toBeFalsy();

    const inst = await get(name);
    expect(inst.status).toBe('RUNNING');
    expect(inst.labels).toEqual({ team: 'ci' });
    expect(inst.zone).toMatch(new RegExp(`/zones/${ZONE}$`));
    expect(inst.machineType).toMatch(/machineTypes\/e2-small$/);
    const ip = inst.networkInterfaces?.[0]?.networkIP;
    expect(ip).toMatch(/^127\./);
    // The sandbox's port is the emulator's to tell test tools; nothing in the instance says it.
    expect(JSON.stringify(inst)).not.toMatch(/ssh-port/);
    const port = emu.connectOverride({ name, zone: ZONE, internalIp: ip! })!.port;
    expect(port).toBeGreaterThan(0);
    expect(emu.inserted(name)).toMatchObject({ name, labels: { team: 'ci' } });

    const ssh = await connectSsh({ protocol: 'ssh', os: 'linux', host: ip!, port, username: 'runner', privateKey: keys.privateKey });
    try {
      let out = '';
      const res = await ssh.exec('echo hi', { onData: (c) => (out += c.toString()) });
      expect(res.exitCode).toBe(0);
      expect(out.trim()).toBe('hi');
    } finally {
      ssh.close();
    }
    // Another key is refused.
    await expect(connectSsh({ protocol: 'ssh', os: 'linux', host: ip!, port, username: 'runner', privateKey: generateVmKeyPair('x').privateKey })).rejects.toThrow();

    const [serial] = await instances.getSerialPortOutput({ project: PROJECT, zone: ZONE, instance: name, port: 1 });
    expect(serial.contents).toContain('listening');
    expect(Number(serial.next)).toBeGreaterThan(0);
  });

  it('lists and aggregatedLists with a label filter, with paging', async () => {
    const shard = uniq('shard');
    const a = uniq('la');
    const b = uniq('lb');
    const c = uniq('lc');
    await Promise.all([insert(a, { shard, team: 'x' }), insert(b, { shard, team: 'y' }), insert(c, { shard: `${shard}-other` })].map(async (p) => waitOp(await p)));

    const [listed] = await instances.list({ project: PROJECT, zone: ZONE, filter: `labels.shard = "${shard}"` });
    expect(listed.map((i) => i.name).sort()).toEqual([a, b].sort());
    const [anded] = await instances.list({ project: PROJECT, zone: ZONE, filter: `(labels.shard = "${shard}") (labels.team = "y")` });
    expect(anded.map((i) => i.name)).toEqual([b]);

    const agg: string[] = [];
    const scopes: string[] = [];
    for await (const [scope, scoped] of instances.aggregatedListAsync({ project: PROJECT, filter: `labels.shard=${shard}` })) {
      scopes.push(scope);
      // Every zone of the project is named; one with nothing matching says so.
      if (scope !== `zones/${ZONE}`) expect(scoped).toMatchObject({ warning: { code: 'NO_RESULTS_ON_PAGE' } });
      for (const i of scoped.instances ?? []) agg.push(i.name!);
    }
    expect(agg.sort()).toEqual([a, b].sort());
    expect(scopes).toEqual(expect.arrayContaining([`zones/${ZONE}`, 'zones/us-central1-b', 'zones/europe-west1-b']));

    // Paging: one per page, the client follows nextPageToken.
    const before = emu.calls.list;
    const [paged] = await instances.list({ project: PROJECT, zone: ZONE, filter: `labels.shard = "${shard}"`, maxResults: 1 });
    expect(paged.map((i) => i.name).sort()).toEqual([a, b].sort());
    expect(emu.calls.list - before).toBe(2);
  });

  it('makes a retried insert idempotent with requestId, and answers 409 for an existing name', async () => {
    const name = uniq('rid');
    const rid = '8f7c3e5a-0000-4000-8000-0000000000' + String(seq).padStart(2, '0');
    const first = await insert(name, {}, undefined, rid);
    const second = await insert(name, {}, undefined, rid);
    expect(second.name).toBe(first.name);
    await waitOp(first);
    expect(emu.instances().filter((i) => i['name'] === name)).toHaveLength(1);

    const err = await insert(name).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 409 });
    expect(String((err as Error).message)).toContain('alreadyExists');
  });

  it('deletes an instance and its sandbox', async () => {
    const name = uniq('del');
    await waitOp(await insert(name, {}, generateVmKeyPair(name).publicKey));
    expect(existsSync(join(emu.sandboxRoot, name))).toBe(true);
    const [lro] = await instances.delete({ project: PROJECT, zone: ZONE, instance: name, requestId: `d-${name}` });
    const done = await waitOp(lro.latestResponse as Operation);
    expect(done).toMatchObject({ status: 'DONE', operationType: 'delete' });
    expect(existsSync(join(emu.sandboxRoot, name))).toBe(false);
    await expect(get(name)).rejects.toMatchObject({ status: 404 });
    // The same requestId again: the same finished operation, not a 404.
    const [again] = await instances.delete({ project: PROJECT, zone: ZONE, instance: name, requestId: `d-${name}` });
    expect((again.latestResponse as Operation).name).toBe(done.name);
  });

  it('reports a stockout as a DONE operation with ZONE_RESOURCE_POOL_EXHAUSTED', async () => {
    emu.faults.stockoutZones.add(ZONE);
    const name = uniq('so');
    const done = await waitOp(await insert(name));
    expect(done.status).toBe('DONE');
    expect(done.error?.errors?.[0]?.code).toBe('ZONE_RESOURCE_POOL_EXHAUSTED');
    expect(done.httpErrorStatusCode).toBe(503);
    await expect(get(name)).rejects.toMatchObject({ status: 404 });
  });

  it('surfaces rate limits as 429 and quota as 403 quotaExceeded', async () => {
    const name = uniq('rl');
    emu.faults.rateLimitNext = 1;
    const err = await insert(name).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 429 });
    expect(String((err as Error).message)).toContain('rateLimitExceeded');
    emu.faults.quotaExceeded = true;
    const q = await insert(name).catch((e: unknown) => e);
    expect(q).toMatchObject({ status: 403 });
    expect(String((q as Error).message)).toContain('quotaExceeded');
    emu.faults.quotaExceeded = false;
    emu.faults.failNextWith = { status: 503, reason: 'backendError', message: 'try later' };
    await expect(insert(name)).rejects.toMatchObject({ status: 503 });
    await waitOp(await insert(name));
  });

  it('holds a hung call open until released; the client bounds it with its own timer', async () => {
    emu.faults.hangNext = 1;
    // google-gax (compute 6.15) does not bound REST fallback calls with the `timeout` call option,
    // and the generated client drops gax's cancel(): a caller races a timer, as the GCP provider does.
    const call = instances.get({ project: PROJECT, zone: ZONE, instance: 'nope' }, { timeout: 300 });
    const outcome = await Promise.race([
      call.then(
        () => 'answered',
        () => 'failed',
      ),
      new Promise<string>((r) => setTimeout(() => r('timed out'), 300)),
    ]);
    expect(outcome).toBe('timed out');
    expect(emu.hungCalls()).toBe(1);
    expect(emu.faults.hangNext).toBe(0);
    // The next call answers while the first still hangs.
    await expect(get('nope')).rejects.toMatchObject({ status: 404 });
    expect(emu.releaseHung()).toBe(1);
    await expect(call).rejects.toMatchObject({ status: 503 });
    expect(emu.hungCalls()).toBe(0);
  });

  it('answers hung calls after hangForMs', async () => {
    Object.assign(emu.faults, { hangNext: 1, hangForMs: 200 });
    const started = Date.now();
    await expect(get('nope')).rejects.toMatchObject({ status: 503 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    emu.faults.hangForMs = 0;
  });

  it('bulkInserts N instances by namePattern and by perInstanceProperties', async () => {
    const prefix = uniq('bulk');
    const [lro] = await instances.bulkInsert({
      project: PROJECT,
      zone: ZONE,
      bulkInsertInstanceResourceResource: { count: 3, minCount: 3, namePattern: `${prefix}-##`, instanceProperties: { machineType: 'e2-small', labels: { bulk: prefix } } },
    });
    const done = await waitOp(lro.latestResponse as Operation);
    expect(done).toMatchObject({ status: 'DONE', operationType: 'bulkInsert' });
    const [listed] = await instances.list({ project: PROJECT, zone: ZONE, filter: `labels.bulk = "${prefix}"` });
    expect(listed.map((i) => [i.name, i.status]).sort()).toEqual([`${prefix}-01`, `${prefix}-02`, `${prefix}-03`].map((n) => [n, 'RUNNING']));

    const names = [uniq('per'), uniq('per')];
    const [lro2] = await instances.bulkInsert({
      project: PROJECT,
      zone: ZONE,
      bulkInsertInstanceResourceResource: { count: 2, minCount: 2, perInstanceProperties: Object.fromEntries(names.map((n) => [n, {}])), instanceProperties: { machineType: 'e2-small', labels: { bulk: `${prefix}-per` } } },
    });
    await waitOp(lro2.latestResponse as Operation);
    for (const n of names) expect((await get(n)).labels).toEqual({ bulk: `${prefix}-per` });
    expect(emu.inserted(names[0]!)).toMatchObject({ name: names[0], machineType: 'e2-small' });
  });

  it('answers windows-keys with an RSA-OAEP encrypted password on serial port 4', async () => {
    const name = uniq('win');
    await waitOp(await insert(name));
    const inst = await get(name);
    const { entry, privateKey } = windowsKeyEntry('ci-admin', Date.now());
    const items = [...(inst.metadata?.items ?? []), { key: 'windows-keys', value: JSON.stringify(entry) }];
    const [lro] = await instances.setMetadata({ project: PROJECT, zone: ZONE, instance: name, metadataResource: { items, fingerprint: inst.metadata?.fingerprint ?? null } });
    await waitOp(lro.latestResponse as Operation);

    let line: { encryptedPassword?: string; modulus?: string; userName?: string; passwordFound?: boolean } | undefined;
    for (let i = 0; i < 50 && !line; i++) {
      const [out] = await instances.getSerialPortOutput({ project: PROJECT, zone: ZONE, instance: name, port: 4 });
      line = (out.contents ?? '')
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as typeof line)
        .find((j) => j?.modulus === entry.modulus);
      if (!line) await new Promise((r) => setTimeout(r, 50));
    }
    expect(line).toMatchObject({ userName: 'ci-admin', passwordFound: true });
    const plain = privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.from(line!.encryptedPassword!, 'base64')).toString('utf8');
    expect(plain).toBe(emu.windowsPasswords.get(`${name}/ci-admin`));
    expect(plain.length).toBeGreaterThanOrEqual(12);

    // A stale fingerprint is refused.
    await expect(instances.setMetadata({ project: PROJECT, zone: ZONE, instance: name, metadataResource: { items: [], fingerprint: inst.metadata?.fingerprint ?? null } })).rejects.toMatchObject({ status: 412 });
  });

  it('stops (sandbox gone, TERMINATED), starts again, and sets labels with a fingerprint', async () => {
    const name = uniq('ss');
    await waitOp(await insert(name, { a: '1' }, generateVmKeyPair(name).publicKey));
    const [stop] = await instances.stop({ project: PROJECT, zone: ZONE, instance: name });
    await waitOp(stop.latestResponse as Operation);
    expect((await get(name)).status).toBe('TERMINATED');
    expect(existsSync(join(emu.sandboxRoot, name))).toBe(false);
    const [start] = await instances.start({ project: PROJECT, zone: ZONE, instance: name });
    await waitOp(start.latestResponse as Operation);
    const inst = await get(name);
    expect(inst.status).toBe('RUNNING');
    expect(existsSync(join(emu.sandboxRoot, name))).toBe(true);
    const [set] = await instances.setLabels({ project: PROJECT, zone: ZONE, instance: name, instancesSetLabelsRequestResource: { labels: { a: '2' }, labelFingerprint: inst.labelFingerprint ?? null } });
    await waitOp(set.latestResponse as Operation);
    expect((await get(name)).labels).toEqual({ a: '2' });
    await expect(
      instances.setLabels({ project: PROJECT, zone: ZONE, instance: name, instancesSetLabelsRequestResource: { labels: { a: '3' }, labelFingerprint: inst.labelFingerprint ?? null } }),
    ).rejects.toMatchObject({ status: 412 });
    // Serial output from an offset.
    const [all] = await instances.getSerialPortOutput({ project: PROJECT, zone: ZONE, instance: name, port: 1 });
    const [tail] = await instances.getSerialPortOutput({ project: PROJECT, zone: ZONE, instance: name, port: 1, start: all.next });
    expect(tail.contents ?? '').toBe('');
    expect(tail.start).toBe(all.next);
  });

  it('suspends (sandbox frozen, memory kept), refuses start while suspended, and resumes the same sandbox without a boot', async () => {
    const name = uniq('sr');
    const keys = generateVmKeyPair(name);
    await waitOp(await insert(name, { a: '1' }, keys.publicKey));
    const running = await get(name);
    const ip = running.networkInterfaces![0]!.networkIP!;
    const port = emu.connectOverride({ name, zone: ZONE, internalIp: ip })!.port;
    const pid = Number(readFileSync(join(emu.sandboxRoot, name, 'pid'), 'utf8'));
    const procState = () => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]![0];
    expect(procState()).not.toBe('T');

    const [suspend] = await instances.suspend({ project: PROJECT, zone: ZONE, instance: name });
    await waitOp(suspend.latestResponse as Operation);
    expect((await get(name)).status).toBe('SUSPENDED');
    expect(procState()).toBe('T'); // frozen, not gone
    await expect(connectSsh({ protocol: 'ssh', os: 'linux', host: ip, port, username: 'runner', privateKey: keys.privateKey }, { timeoutMs: 500 })).rejects.toThrow();
    await expect(instances.start({ project: PROJECT, zone: ZONE, instance: name })).rejects.toMatchObject({ status: 400 });

    const [resume] = await instances.resume({ project: PROJECT, zone: ZONE, instance: name });
    await waitOp(resume.latestResponse as Operation);
    const after = await get(name);
    expect(after.status).toBe('RUNNING');
    expect(after.lastSuspendedTimestamp).toBeTruthy();
    expect(Number(readFileSync(join(emu.sandboxRoot, name, 'pid'), 'utf8'))).toBe(pid); // the same guest, not a new boot
    const ssh = await connectSsh({ protocol: 'ssh', os: 'linux', host: ip, port, username: 'runner', privateKey: keys.privateKey });
    try {
      expect((await ssh.exec('true')).exitCode).toBe(0);
    } finally {
      ssh.close();
    }
  });

  it('counts calls per method', () => {
    expect(emu.calls.insert).toBeGreaterThan(0);
    expect(emu.calls.operationsWait).toBeGreaterThan(0);
    expect(emu.calls.bulkInsert).toBe(2);
    expect(emu.calls.setMetadata).toBe(2);
    expect(emu.calls.stop).toBe(1);
    expect(emu.calls.suspend).toBe(1);
    expect(emu.calls.resume).toBe(1);
    expect(emu.calls.setLabels).toBe(2);
  });
});

describe('GCE emulator faults: partial aggregated lists and answers lost after the fact', () => {
  const ZONE_B = 'us-central1-b';
  async function insertIn(zone: string, name: string, labels: Record<string, string>): Promise<void> {
    const [lro] = await instances.insert({ project: PROJECT, zone, instanceResource: { ...body(name, labels), machineType: `zones/${zone}/machineTypes/e2-small` } });
    await waitOp(lro.latestResponse as Operation, zone);
  }

  it('answers an unreachable zone with an UNREACHABLE warning and no instances, then answers it again', async () => {
    const shard = uniq('partial');
    const [a, b] = [uniq('pa'), uniq('pb')];
    await insertIn(ZONE, a, { shard });
    await insertIn(ZONE_B, b, { shard });
    emu.faults.unreachableZones.set(ZONE_B, Date.now() + 800);

    const scopes: Record<string, { names: string[]; warning?: string | null }> = {};
    for await (const [scope, scoped] of instances.aggregatedListAsync({ project: PROJECT, filter: `labels.shard = "${shard}"`, returnPartialSuccess: true })) {
      scopes[scope] = { names: (scoped.instances ?? []).map((i) => i.name!), warning: scoped.warning?.code ?? null };
    }
    expect(scopes[`zones/${ZONE}`]).toEqual({ names: [a], warning: null });
    expect(scopes[`zones/${ZONE_B}`]).toEqual({ names: [], warning: 'UNREACHABLE' });
    // The page itself names the scopes that did not answer (the client's iterator hides that field).
    const raw = (await (await fetch(`${emu.url}/compute/v1/projects/${PROJECT}/aggregated/instances?returnPartialSuccess=true&filter=${encodeURIComponent(`labels.shard = "${shard}"`)}`)).json()) as { unreachables?: string[] };
    expect(raw.unreachables).toEqual([`zones/${ZONE_B}`]);

    await new Promise((r) => setTimeout(r, 900));
    const names: string[] = [];
    for await (const [, scoped] of instances.aggregatedListAsync({ project: PROJECT, filter: `labels.shard = "${shard}"`, returnPartialSuccess: true })) {
      expect(scoped.warning?.code).not.toBe('UNREACHABLE');
      names.push(...(scoped.instances ?? []).map((i) => i.name!));
    }
    expect(names.sort()).toEqual([a, b].sort());
  });

  it('makes an instance although the insert answers 503, and the retry with the same requestId gets the same operation', async () => {
    const name = uniq('after');
    emu.faults.errorAfterRate = 1;
    await expect(insert(name, {}, undefined, `rid-${name}`)).rejects.toMatchObject({ status: 503 });
    emu.faults.errorAfterRate = 0;
    expect(emu.instance(name)).toBeDefined();
    const op = await insert(name, {}, undefined, `rid-${name}`);
    expect((await waitOp(op)).error).toBeFalsy();
    expect(emu.instances().filter((i) => i['name'] === name)).toHaveLength(1);
  });

  it('answers a share of calls 429 or 503 before acting', async () => {
    const name = uniq('before');
    emu.faults.errorRate = 1;
    await expect(insert(name)).rejects.toMatchObject({ status: expect.toSatisfy((s: number) => s === 429 || s === 503) });
    emu.faults.errorRate = 0;
    expect(emu.instance(name)).toBeUndefined();
  });
});
