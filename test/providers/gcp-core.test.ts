// Pure parts of the GCP provider: insert body, error classification, zones, config, request ids.
import { constants, publicEncrypt } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { parseGcpConfig, parseGcpMachine, validateGcpMachine } from '../../src/providers/gcp/config.js';
import { classifyError, errorKind, isAlreadyExists } from '../../src/providers/gcp/errors.js';
import { HOST_KEY_ITEM, LINUX_HOST_KEY_SCRIPT, bulkProperties, instanceBody, vmMetadataItems } from '../../src/providers/gcp/insert-body.js';
import { clientOptions, labelFilter, quotaGroup, vmState } from '../../src/providers/gcp/provider.js';
import { TokenBucket } from '../../src/providers/shared/rate-limit.js';
import { requestId } from '../../src/providers/gcp/request-id.js';
import { decryptWindowsPassword, findEncryptedPassword, mergeWindowsKeys, retrieveWindowsPassword, windowsKeyEntry } from '../../src/providers/gcp/windows.js';
import { coolDown, pickZone, usableZones } from '../../src/providers/shared/placement.js';
import { LABEL_SHARD, LABEL_VM, type VmSpec } from '../../src/providers/provider.js';

const linux = {
  machineType: 'n2d-standard-2',
  image: 'projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64',
  zones: ['us-east1-b', 'us-east1-c'],
  labels: { team: 'ci' },
  networkTags: ['runner-vm'],
};
const spec = (over: Partial<VmSpec> = {}): VmSpec => ({
  vmId: 'abc123',
  name: 'rf-s1-abc123',
  shard: 's1',
  className: 'small',
  labels: { [LABEL_SHARD]: 's1', [LABEL_VM]: 'abc123' },
  publicKey: 'ssh-ed25519 AAAAC3Nza rf-s1-abc123',
  machine: linux,
  maxRunSeconds: 25_000,
  ...over,
});
const cfg = { project: 'my-proj', subnetwork: 'runners' };
const meta = (body: { metadata?: { items?: { key?: string | null; value?: string | null }[] | null } | null }) =>
  Object.fromEntries((body.metadata?.items ?? []).map((i) => [i.key, i.value]));

describe('gcp insert body', () => {
  const body = instanceBody(spec(), parseGcpMachine('small', linux), cfg, 'us-east1-b');

  it('has no external IP and no service account', () => {
    expect(body.networkInterfaces).toEqual([{ network: 'projects/my-proj/global/networks/default', subnetwork: 'projects/my-proj/regions/us-east1/subnetworks/runners' }]);
    expect(body.networkInterfaces![0]).not.toHaveProperty('accessConfigs');
    expect(body).not.toHaveProperty('serviceAccounts');
  });

  it('names the VM deterministically and labels it with class labels plus shard and VM id', () => {
    expect(body.name).toBe('rf-s1-abc123');
    expect(body.labels).toEqual({ team: 'ci', [LABEL_SHARD]: 's1', [LABEL_VM]: 'abc123' });
    expect(body.tags).toEqual({ items: ['runner-vm'] });
    expect(body.machineType).toBe('zones/us-east1-b/machineTypes/n2d-standard-2');
  });

  it("carries only the VM's own key, blocks project keys and OS Login", () => {
    const m = meta(body);
    expect(m['ssh-keys']).toBe('runner:ssh-ed25519 AAAAC3Nza rf-s1-abc123');
    expect(m['block-project-ssh-keys']).toBe('TRUE');
    expect(m['enable-oslogin']).toBe('FALSE');
    expect(m['enable-windows-ssh']).toBeUndefined();
  });

  it('boots from the image with an auto-deleted disk of the given size and type', () => {
    expect(body.disks).toHaveLength(1);
    expect(body.disks![0]).toMatchObject({
      boot: true,
      autoDelete: true,
      initializeParams: { sourceImage: linux.image, diskSizeGb: 50, diskType: 'zones/us-east1-b/diskTypes/pd-balanced' },
    });
  });

  it('deletes itself after the max run duration and never restarts', () => {
    expect(body.scheduling).toMatchObject({
      maxRunDuration: { seconds: 25_000 },
      instanceTerminationAction: 'DELETE',
      onHostMaintenance: 'MIGRATE',
      automaticRestart: false,
    });
    expect(body.shieldedInstanceConfig).toEqual({ enableSecureBoot: true, enableVtpm: true, enableIntegrityMonitoring: true });
  });

  it('attaches a GPU and terminates on host maintenance', () => {
    const gpu = { ...linux, machineType: 'n1-standard-4', gpu: { type: 'nvidia-tesla-t4', count: 1 } };
    const b = instanceBody(spec({ machine: gpu }), parseGcpMachine('gpu', gpu), cfg, 'us-east1-c');
    expect(b.guestAccelerators).toEqual([{ acceleratorType: 'projects/my-proj/zones/us-east1-c/acceleratorTypes/nvidia-tesla-t4', acceleratorCount: 1 }]);
    expect(b.scheduling?.onHostMaintenance).toBe('TERMINATE');
    expect(b.shieldedInstanceConfig?.enableSecureBoot).toBe(false);
  });

  it('uses the arm64 image on arm machine types, with Hyperdisk on C4A', () => {
    const arm = { ...linux, machineType: 'c4a-standard-4', imageArch: 'arm64', image: 'projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-arm64' };
    const b = instanceBody(spec({ machine: arm }), parseGcpMachine('arm', arm), cfg, 'us-east1-b');
    expect(b.disks![0]!.initializeParams).toMatchObject({ sourceImage: arm.image, diskType: 'zones/us-east1-b/diskTypes/hyperdisk-balanced' });
    expect(b.shieldedInstanceConfig).toBeUndefined();
  });

  it('enables SSH on Windows with the key installed by the guest environment', () => {
    const win = { ...linux, os: 'windows', image: 'projects/windows-cloud/global/images/family/windows-2022' };
    const m = meta(instanceBody(spec({ machine: win }), parseGcpMachine('win', win), cfg, 'us-east1-b'));
    expect(m['enable-windows-ssh']).toBe('TRUE');
    expect(m['sysprep-specialize-script-cmd']).toMatch(/google-compute-engine-ssh/);
    // cmd.exe as sshd's default shell: the PowerShell job command relies on it for exit codes.
    expect(m['sysprep-specialize-script-cmd']).toContain('reg add HKLM\\SOFTWARE\\OpenSSH /v DefaultShell /t REG_SZ /d C:\\Windows\\System32\\cmd.exe /f');
    expect(m['ssh-keys']).toBe('runner:ssh-ed25519 AAAAC3Nza rf-s1-abc123');
    const pw = { ...win, windowsAccess: 'password' };
    expect(meta(instanceBody(spec({ machine: pw }), parseGcpMachine('win', pw), cfg, 'us-east1-b'))['ssh-keys']).toBeUndefined();
  });

  it('bulk properties share the class parts, and leave the VM label and the VM key to each VM', () => {
    const b = spec({ vmId: 'def456', name: 'rf-s1-def456', publicKey: 'ssh-ed25519 BBBB rf-s1-def456', labels: { [LABEL_SHARD]: 's1', [LABEL_VM]: 'def456' } });
    const p = bulkProperties([spec(), b], parseGcpMachine('small', linux), cfg, 'us-east1-b');
    expect(p.machineType).toBe('n2d-standard-2');
    expect(p.labels).toEqual({ team: 'ci', [LABEL_SHARD]: 's1' });
    // No key in the shared body: each VM gets only its own afterwards (vmMetadataItems).
    expect(meta(p)['ssh-keys']).toBeUndefined();
    expect(meta(p)['block-project-ssh-keys']).toBe('TRUE');
    const own = vmMetadataItems(p.metadata!.items!, parseGcpMachine('small', linux), b.publicKey);
    expect(own.find((i) => i.key === 'ssh-keys')?.value).toBe('runner:ssh-ed25519 BBBB rf-s1-def456');
    expect(own.filter((i) => i.key === 'ssh-keys')).toHaveLength(1);
    expect(p.networkInterfaces![0]).not.toHaveProperty('accessConfigs');
    expect(p).not.toHaveProperty('serviceAccounts');
  });

  it('hands each VM the host key the manager made, never in the shared bulk body', () => {
    const machine = parseGcpMachine('small', linux);
    const body = instanceBody(spec({ hostKey: 'HOST-KEY-A' }), machine, cfg, 'us-east1-b');
    expect(meta(body)[HOST_KEY_ITEM]).toBe('HOST-KEY-A');
    expect(meta(body)['startup-script']).toBe(LINUX_HOST_KEY_SCRIPT);
    expect(LINUX_HOST_KEY_SCRIPT).toContain(`/instance/attributes/${HOST_KEY_ITEM}`);
    const p = bulkProperties([spec({ hostKey: 'HOST-KEY-A' }), spec({ vmId: 'b', name: 'rf-s1-b', hostKey: 'HOST-KEY-B' })], machine, cfg, 'us-east1-b');
    expect(meta(p)[HOST_KEY_ITEM]).toBeUndefined();
    const own = vmMetadataItems(vmMetadataItems(p.metadata!.items!, machine, 'ssh-ed25519 BBBB b', 'HOST-KEY-B'), machine, 'ssh-ed25519 BBBB b', 'HOST-KEY-B');
    expect(own.filter((i) => i.key === HOST_KEY_ITEM)).toEqual([{ key: HOST_KEY_ITEM, value: 'HOST-KEY-B' }]);
  });
});

const gaxios = (status: number, reason: string, message = 'cloud says no') =>
  Object.assign(new Error(JSON.stringify({ error: { code: status, message, errors: [{ reason, message, domain: 'global' }] } })), { status });

describe('gcp error classification', () => {
  it.each([
    [gaxios(503, 'resourcePoolExhausted'), 'stockout'],
    [gaxios(503, 'insufficientCapacity'), 'stockout'],
    [{ error: { errors: [{ code: 'ZONE_RESOURCE_POOL_EXHAUSTED', message: 'The zone does not have enough resources' }] } }, 'stockout'],
    [{ error: { errors: [{ code: 'ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS', message: 'x' }] } }, 'stockout'],
    [gaxios(429, 'rateLimitExceeded'), 'rateLimited'],
    [gaxios(403, 'userRateLimitExceeded'), 'rateLimited'],
    [gaxios(403, 'quotaExceeded', "Quota 'CPUS' exceeded. Limit: 24.0 in region us-east1."), 'quota'],
    [{ error: { errors: [{ code: 'QUOTA_EXCEEDED', message: "Quota 'CPUS' exceeded" }] } }, 'quota'],
    [gaxios(404, 'notFound'), 'notFound'],
    [gaxios(500, 'backendError'), 'retryable'],
    [gaxios(502, 'badGateway'), 'retryable'],
    [Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' }), 'retryable'],
    [Object.assign(new Error('listInstances timed out after 50 ms'), { name: 'TimeoutError' }), 'retryable'],
    [Object.assign(new Error('deadline'), { code: 4 }), 'retryable'],
    [gaxios(400, 'invalid', "Invalid value for field 'resource.machineType'"), 'fatal'],
    [gaxios(403, 'forbidden'), 'fatal'],
  ])('%# classifies as %s', (err, kind) => {
    expect(errorKind(err)).toBe(kind);
  });

  it("keeps the cloud's message for fatal errors, without the JSON wrapping", () => {
    const e = classifyError(gaxios(400, 'invalid', "Invalid value for field 'resource.machineType'"), { operation: 'insert', zone: 'us-east1-b' });
    expect(e.kind).toBe('fatal');
    expect(e.message).toBe("gcp insert in us-east1-b: Invalid value for field 'resource.machineType' (HTTP 400 invalid)");
    expect(e.details.zone).toBe('us-east1-b');
  });

  it('recognizes alreadyExists', () => {
    expect(isAlreadyExists(gaxios(409, 'alreadyExists'))).toBe(true);
    expect(isAlreadyExists({ error: { errors: [{ code: 'RESOURCE_ALREADY_EXISTS', message: 'x' }] } })).toBe(true);
    expect(isAlreadyExists(gaxios(404, 'notFound'))).toBe(false);
  });
});

describe('gcp zone choice', () => {
  const zones = ['a1-x1-a', 'a1-x1-b', 'a1-x1-c'];
  it('prefers zones in order and avoids a stocked-out zone for the cool-down', () => {
    let cd: ReadonlyMap<string, number> = new Map();
    expect(pickZone(zones, cd, 0)).toBe('a1-x1-a');
    cd = coolDown(cd, 'a1-x1-a', 1000, 600_000);
    expect(pickZone(zones, cd, 1000)).toBe('a1-x1-b');
    expect(pickZone(zones, cd, 600_999)).toBe('a1-x1-b');
    expect(pickZone(zones, cd, 601_000)).toBe('a1-x1-a');
    cd = coolDown(coolDown(cd, 'a1-x1-b', 1000, 600_000), 'a1-x1-c', 1000, 600_000);
    expect(pickZone(zones, cd, 2000)).toBeUndefined();
    expect(usableZones(zones, cd, 700_000)).toEqual(zones);
    expect(coolDown(cd, 'a1-x1-a', 700_000, 10).size).toBe(1); // expired entries dropped
  });
});

describe('gcp config', () => {
  it('validates providers.gcp with defaults and field paths', () => {
    expect(parseGcpConfig({ project: 'my-proj' })).toEqual({ project: 'my-proj', requestsPerSecond: 20, callTimeoutMs: 30_000, zoneCooldownMs: 600_000, retries: 4, retryBaseMs: 500, operationTimeoutMs: 600_000, pollIntervalMs: 2000, bulkInsertMin: 8 });
    expect(parseGcpConfig({ project: 'my-proj', endpoint: 'http://127.0.0.1:9999/', callTimeout: '5s', zoneCooldown: '1m' })).toMatchObject({ endpoint: 'http://127.0.0.1:9999', callTimeoutMs: 5000, zoneCooldownMs: 60_000 });
    expect(() => parseGcpConfig({})).toThrow(/providers\.gcp\.project/);
    expect(() => parseGcpConfig({ project: 'my-proj', endpoint: 'ftp://x' })).toThrow(/providers\.gcp\.endpoint/);
    expect(() => parseGcpConfig({ project: 'my-proj', callTimeout: 'soon' })).toThrow(/providers\.gcp\.callTimeout/);
    expect(() => parseGcpConfig({ project: 'my-proj', requestsPerSecond: 0 })).toThrow(/providers\.gcp\.requestsPerSecond/);
    expect(() => parseGcpConfig({ project: 'my-proj', zone: 'x' })).toThrow(/providers\.gcp\.zone: not a known field/);
  });

  it('points the real clients at an http endpoint on loopback without credentials', () => {
    const o = clientOptions({ project: 'p-1234', endpoint: 'http://127.0.0.1:8085' });
    expect(o).toMatchObject({ apiEndpoint: '127.0.0.1', port: 8085, protocol: 'http', fallback: true });
    expect(o.authClient?.constructor.name).toBe('PassThroughClient');
    expect(clientOptions({ project: 'p-1234', endpoint: 'https://compute.internal.example' })).toMatchObject({ apiEndpoint: 'compute.internal.example', port: 443, protocol: 'https' });
    expect(clientOptions({ project: 'p-1234', credentials: '/etc/sa.json' })).toEqual({ projectId: 'p-1234', fallback: true, keyFilename: '/etc/sa.json' });
  });

  it('names the field of an arm/x86 mismatch', () => {
    expect(validateGcpMachine('small-arm', { ...linux, machineType: 't2a-standard-2' })).toEqual([expect.stringMatching(/^classes\.small-arm\.machine\.imageArch: machine type t2a-standard-2 is arm64/)]);
    expect(validateGcpMachine('small', { ...linux, imageArch: 'arm64' })).toEqual([expect.stringMatching(/^classes\.small\.machine\.imageArch: .*x86_64/)]);
    expect(validateGcpMachine('arm', { ...linux, machineType: 'c4a-standard-4', imageArch: 'arm64', diskType: 'pd-balanced' })).toEqual([expect.stringMatching(/machine\.diskType: .*Hyperdisk/)]);
    expect(validateGcpMachine('ok', { ...linux, machineType: 't2a-standard-2', imageArch: 'arm64' })).toEqual([]);
  });

  it('requires zones and checks images, GPUs, labels and Windows options', () => {
    expect(validateGcpMachine('c', { ...linux, zones: [] })).toEqual([expect.stringMatching(/^classes\.c\.machine\.zones: expected a non-empty list/)]);
    expect(validateGcpMachine('c', { ...linux, zones: undefined })).toEqual([expect.stringMatching(/machine\.zones/)]);
    expect(validateGcpMachine('c', { ...linux, image: 'ubuntu' })).toEqual([expect.stringMatching(/machine\.image:/)]);
    expect(validateGcpMachine('c', { ...linux, gpu: { type: 'nvidia-tesla-t4', count: 1 } })).toEqual([expect.stringMatching(/machine\.gpu: .*N1/)]);
    expect(validateGcpMachine('c', { ...linux, labels: { 'runner-fleet-vm': 'x' } })).toEqual([expect.stringMatching(/machine\.labels\.runner-fleet-vm/)]);
    expect(validateGcpMachine('c', { ...linux, windowsAccess: 'password' })).toEqual([expect.stringMatching(/machine\.windowsAccess: only applies/)]);
    expect(validateGcpMachine('c', { ...linux, sizeGb: 3 })).toEqual([expect.stringMatching(/machine\.sizeGb: not a known field/)]);
    expect(validateGcpMachine('c', { ...linux, image: 'projects/windows-cloud/global/images/windows-server-2022-dc-v20250101', os: 'windows' })).toEqual([]);
  });

  it('reports every problem at once, in the order of the fields, unknown fields first', () => {
    expect(validateGcpMachine('c', { ...linux, machineType: 't2a-standard-2', zones: ['us-central1-a', 'mars'], diskSizeGb: 5, colour: 'red' })).toEqual([
      'classes.c.machine.colour: not a known field (known: machineType, image, imageArch, diskSizeGb, diskType, zones, networkTags, labels, gpu, os, windowsAccess, username)',
      'classes.c.machine.imageArch: machine type t2a-standard-2 is arm64: expected imageArch: arm64 and an arm64 image, got "x86_64 (default)"',
      'classes.c.machine.diskSizeGb: expected an integer 10..65536, got 5',
      'classes.c.machine.zones[1]: expected a zone like us-central1-a, got "mars"',
    ]);
  });
});

describe('gcp helpers', () => {
  it('derives the same requestId for the same VM and operation only', () => {
    const a = requestId('p', 'z', 'vm-1', 'insert');
    expect(a).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(requestId('p', 'z', 'vm-1', 'insert')).toBe(a);
    expect(requestId('p', 'z', 'vm-1', 'delete')).not.toBe(a);
    expect(requestId('p', 'z', 'vm-2', 'insert')).not.toBe(a);
  });

  it('maps GCE statuses', () => {
    expect(['PROVISIONING', 'STAGING', 'RUNNING', 'STOPPING', 'SUSPENDING', 'TERMINATED', 'SUSPENDED'].map((s) => vmState(s, false))).toEqual(['pending', 'pending', 'running', 'stopping', 'stopping', 'stopped', 'stopped']);
    expect(vmState('TERMINATED', true)).toBe('terminated');
    expect(vmState('STOPPING', true)).toBe('terminated');
  });

  it('builds a label filter', () => {
    expect(labelFilter({ [LABEL_VM]: 'v', [LABEL_SHARD]: 's' })).toBe('(labels.runner-fleet-shard = "s") (labels.runner-fleet-vm = "v")');
  });

  it("counts calls in GCE's rate-quota groups: mutations, reads and operation reads apart", () => {
    const methods = ['instances.insert', 'instances.bulkInsert', 'instances.setMetadata', 'instances.delete', 'instances.stop', 'firewalls.insert', 'instances.get', 'instances.aggregatedList', 'instances.getSerialPortOutput', 'instances.getGuestAttributes', 'firewalls.list', 'operations.wait', 'globalOperations.get'];
    expect(methods.map(quotaGroup)).toEqual(['mutation', 'mutation', 'mutation', 'mutation', 'mutation', 'mutation', 'read', 'read', 'read', 'read', 'read', 'operation', 'operation']);
  });

  it('rate-limits with a token bucket', () => {
    let t = 0;
    const b = new TokenBucket(10, 2, () => t);
    expect([b.reserve(), b.reserve(), b.reserve(), b.reserve()]).toEqual([0, 0, 100, 200]);
    t = 1000;
    expect(b.reserve()).toBe(0);
  });
});

describe('gcp windows password', () => {
  it('sets windows-keys and decrypts the RSA-OAEP answer from serial port 4', async () => {
    let metadata = [{ key: 'ssh-keys', value: 'x' }, { key: 'windows-keys', value: JSON.stringify({ userName: 'old', expireOn: '2000-01-01T00:00:00Z' }) }];
    let serial = 'boot noise\n';
    const polls: number[] = [];
    const password = await retrieveWindowsPassword(
      {
        getMetadata: async () => ({ items: metadata, fingerprint: 'fp1' }),
        setMetadata: async (items, fp) => {
          expect(fp).toBe('fp1');
          metadata = items;
          const entry = JSON.parse(items.find((i) => i.key === 'windows-keys')!.value.split('\n').pop()!) as { modulus: string; exponent: string; userName: string };
          const key = { key: { kty: 'RSA', n: Buffer.from(entry.modulus, 'base64').toString('base64url'), e: Buffer.from(entry.exponent, 'base64').toString('base64url') }, format: 'jwk' as const };
          const encryptedPassword = publicEncrypt({ key: (await import('node:crypto')).createPublicKey(key), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.from('S3cret!pw')).toString('base64');
          serial += `${JSON.stringify({ ready: true, userName: entry.userName, modulus: entry.modulus, encryptedPassword })}\n`;
        },
        serialPort4: async (start) => {
          polls.push(start);
          return { contents: serial.slice(start), next: serial.length };
        },
      },
      'runner',
      { pollMs: 1 },
    );
    expect(password).toBe('S3cret!pw');
    const keys = metadata.find((i) => i.key === 'windows-keys')!.value.split('\n');
    expect(keys).toHaveLength(1); // the expired entry is dropped
    expect(JSON.parse(keys[0]!)).toMatchObject({ userName: 'runner', email: expect.any(String), expireOn: expect.any(String) });
    expect(metadata.find((i) => i.key === 'ssh-keys')?.value).toBe('x');
  });

  it('finds only the line for our modulus', () => {
    const { entry, privateKey } = windowsKeyEntry('runner', 0);
    expect(findEncryptedPassword('{"modulus":"other","encryptedPassword":"x"}\n', entry.modulus)).toBeUndefined();
    expect(findEncryptedPassword(`{"modulus":"${entry.modulus}","errorMessage":"no"}`, entry.modulus)).toEqual({ errorMessage: 'no' });
    expect(mergeWindowsKeys('garbage', entry, 0)).toBe(JSON.stringify(entry));
    expect(() => decryptWindowsPassword('AAAA', privateKey)).toThrow();
  });
});
