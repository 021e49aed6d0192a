// deploy/kubernetes: every manifest valid against the Kubernetes API schemas (kubernetes-models'
// validators; the ServiceMonitor CRD through @kubernetes-models/prometheus-operator), and holding
// the rules the HA design and the house rules rely on. Broken copies must fail both checks.
import { readdirSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { ConfigMap, Secret, Service, ServiceAccount } from 'kubernetes-models/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { healthRoutes } from '../../src/api/health.js';
import { checkConfig } from '../../src/config/load.js';

const dir = resolve(import.meta.dirname, '../../deploy/kubernetes');
const TEMPLATE = 'secret.template.yaml';

type Obj = Record<string, any>;
interface Manifest {
  file: string;
  doc: Obj;
}

/** The API objects of the directory (kustomization.yaml is kustomize's, not the API's). */
function loadManifests(): Manifest[] {
  const out: Manifest[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml').sort()) {
    for (const d of parseAllDocuments(readFileSync(resolve(dir, file), 'utf8'))) {
      if (d.errors.length) throw new Error(`${file}: ${d.errors[0]!.message}`);
      const doc = d.toJS() as Obj | null;
      if (doc) out.push({ file, doc });
    }
  }
  return out;
}

// Each kind we ship, by apiVersion/kind, with the model whose validate() checks its schema.
const models: Record<string, new (data: never) => { validate(): void }> = {
  'v1/ServiceAccount': ServiceAccount,
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
};

/** Schema errors of one object, empty when valid. */
function schemaErrors(doc: Obj): string[] {
  const model = models[`${doc['apiVersion']}/${doc['kind']}`];
  if (!model) return [`no schema for ${doc['apiVersion']}/${doc['kind']}`];
  try {
    new model(structuredClone(doc) as never).validate();
    return [];
  } catch (err) {
    return [(err as Error).message];
  }
}

const one = (ms: Manifest[], kind: string, name?: string): Obj => {
  const found = ms.filter((m) => m.doc['kind'] === kind && (name === undefined || m.doc['metadata']?.name === name));
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  return found[0]!.doc;
};
const matches = (selector: Obj | undefined, labels: Obj): boolean =>
  !!selector && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

/** What the design needs of the manifests, as a list of problems (empty when all hold). */
function problems(ms: Manifest[]): string[] {
  const p: string[] = [];
  const need = (ok: unknown, what: string) => {
    if (!ok) p.push(what);
  };
  const dep = one(ms, 'Deployment');
  const pod = dep['spec'].template.spec as Obj;
  const podLabels = dep['spec'].template.metadata.labels as Obj;
  const c = pod['containers'].find((x: Obj) => x['name'] === 'manager') as Obj;
  need(c, 'Deployment: a container named manager');
  if (!c) return p;

  // Active and standby through the shard lock: two replicas of the same command.
  need(dep['spec'].replicas === 2, `Deployment: replicas must be 2 (active + standby), got ${dep['spec'].replicas}`);
  need(matches(dep['spec'].selector?.matchLabels, podLabels), 'Deployment: selector must match the pod labels');
  // --handover: a pod's SIGTERM hands the shard over in seconds instead of draining for hours.
  need(JSON.stringify(c['args']) === JSON.stringify(['start', '--config', '/etc/runner-fleet/shard.yaml', '--handover']), 'Deployment: args must be start --config /etc/runner-fleet/shard.yaml --handover');
  // One pod of two is Ready: a rollout must not wait for a second Ready pod.
  const ru = dep['spec'].strategy?.rollingUpdate as Obj | undefined;
  need(dep['spec'].strategy?.type === 'Recreate' || ru?.maxUnavailable === '100%' || ru?.maxUnavailable >= 2, 'Deployment: strategy must not wait for both pods to be Ready (the standby never is)');

  const ports = new Map<string, number>((c['ports'] ?? []).map((x: Obj) => [x['name'], x['containerPort']]));
  const httpPort = ports.get('http');
  need(httpPort !== undefined, 'Deployment: a container port named http');
  const probe = (name: string, path: string) => {
    const g = c[name]?.httpGet as Obj | undefined;
    need(g?.path === path, `Deployment: ${name} must GET ${path}, got ${g?.path}`);
    need(g && (g['port'] === 'http' || g['port'] === httpPort), `Deployment: ${name} must use the http port`);
  };
  probe('readinessProbe', '/readyz');
  probe('livenessProbe', '/healthz');

  // Security context: pod-level values count for the container unless it overrides them.
  const psc = (pod['securityContext'] ?? {}) as Obj;
  const csc = (c['securityContext'] ?? {}) as Obj;
  need((csc['runAsNonRoot'] ?? psc['runAsNonRoot']) === true, 'security: runAsNonRoot must be true');
  need((csc['runAsUser'] ?? psc['runAsUser']) !== 0, 'security: runAsUser must not be 0');
  need(csc['readOnlyRootFilesystem'] === true, 'security: readOnlyRootFilesystem must be true');
  need(csc['allowPrivilegeEscalation'] === false, 'security: allowPrivilegeEscalation must be false');
  need((csc['capabilities']?.drop ?? []).includes('ALL'), 'security: capabilities must drop ALL');
  need((csc['seccompProfile'] ?? psc['seccompProfile'])?.type === 'RuntimeDefault', 'security: seccompProfile must be RuntimeDefault');
  for (const kind of ['requests', 'limits']) for (const r of ['cpu', 'memory']) need(c['resources']?.[kind]?.[r], `resources: ${kind}.${r} must be set`);

  // The shard config: valid, every ${VAR} set by the container, its paths on mounted volumes.
  const mounts = (c['volumeMounts'] ?? []) as Obj[];
  const volumes = new Map<string, Obj>((pod['volumes'] ?? []).map((v: Obj) => [v['name'], v]));
  const configMount = mounts.find((m) => volumes.get(m['name'])?.['configMap']);
  need(configMount?.['mountPath'] === '/etc/runner-fleet', 'Deployment: the ConfigMap must be mounted at /etc/runner-fleet');
  const cm = one(ms, 'ConfigMap');
  need(volumes.get(configMount?.['name'])?.['configMap']?.name === cm['metadata'].name, 'Deployment: the config volume must be the ConfigMap');
  const yamlText = cm['data']?.['shard.yaml'] as string | undefined;
  need(yamlText, 'ConfigMap: a shard.yaml key');
  const env = Object.fromEntries(((c['env'] ?? []) as Obj[]).map((e) => [e['name'], sampleValue(e['name'])]));
  const checked = yamlText ? checkConfig(yamlText, { env, baseDir: '/etc/runner-fleet' }) : null;
  if (checked && !checked.ok) p.push(...checked.errors.map((e) => `ConfigMap shard.yaml: ${e}`));
  if (checked?.ok) {
    const cfg = checked.config;
    need(cfg.database.url.startsWith('postgres://'), 'ConfigMap: database.url must be PostgreSQL (PGlite has one session: no standby)');
    need(cfg.http.listen.host === '0.0.0.0' && cfg.http.listen.port === httpPort, `ConfigMap: http.listen must be 0.0.0.0:${httpPort} (the probes' port), got ${cfg.http.listen.host}:${cfg.http.listen.port}`);
    const writable = (path: string) => mounts.some((m) => !m['readOnly'] && volumes.get(m['name'])?.['emptyDir'] && (path + '/').startsWith(m['mountPath'] + '/'));
    need(writable(cfg.dataDir), `Deployment: dataDir ${cfg.dataDir} must be a writable volume (read-only root fs)`);
    need(writable('/tmp'), 'Deployment: /tmp must be a writable volume (read-only root fs)');
    const keyFile = cfg.secrets.keyFile;
    const keyMount = keyFile ? mounts.find((m) => volumes.get(m['name'])?.['secret'] && keyFile.startsWith(m['mountPath'] + '/')) : undefined;
    need(keyMount, 'ConfigMap: secrets.keyFile must be a file of a mounted Secret');
    const mode = keyMount ? (volumes.get(keyMount['name'])?.['secret'].defaultMode as number | undefined) : undefined;
    need(mode !== undefined && (mode & 0o007) === 0, `Deployment: the secrets key volume must not be world-readable (defaultMode ${mode?.toString(8)})`);
  }

  // The Secret template: placeholders only, and every key the Deployment reads.
  const secret = ms.find((m) => m.file === TEMPLATE)?.doc;
  need(secret?.['kind'] === 'Secret', `${TEMPLATE}: a Secret`);
  const values = { ...(secret?.['stringData'] ?? {}), ...(secret?.['data'] ?? {}) } as Record<string, string>;
  for (const [k, v] of Object.entries(values)) need(v === 'REPLACE_ME', `${TEMPLATE}: ${k} must be the placeholder REPLACE_ME, not a value`);
  const used = [
    ...((c['env'] ?? []) as Obj[]).map((e) => e['valueFrom']?.secretKeyRef).filter(Boolean).map((r: Obj) => [r['name'], r['key']]),
    ...[...volumes.values()].filter((v) => v['secret']).flatMap((v) => (v['secret'].items ?? []).map((i: Obj) => [v['secret'].secretName, i['key']])),
  ] as [string, string][];
  for (const [name, key] of used) need(name === secret?.['metadata']?.name && key in values, `${TEMPLATE}: the Deployment reads ${name}/${key}, which the template lacks`);

  // Services: the API Service reaches the pods; the metrics one lists the standby too.
  const services = ms.filter((m) => m.doc['kind'] === 'Service').map((m) => m.doc);
  for (const s of services) {
    need(matches(s['spec'].selector, podLabels), `Service ${s['metadata'].name}: selector must match the pods`);
    for (const sp of s['spec'].ports ?? []) need(sp['targetPort'] === 'http' || sp['targetPort'] === httpPort, `Service ${s['metadata'].name}: targetPort must be the http port`);
  }
  const sm = one(ms, 'ServiceMonitor');
  const scraped = services.filter((s) => matches(sm['spec'].selector?.matchLabels, s['metadata'].labels ?? {}));
  need(scraped.length === 1, `ServiceMonitor: must select exactly one Service, selects ${scraped.length}`);
  if (scraped[0]) {
    need(scraped[0]['spec'].publishNotReadyAddresses === true, 'ServiceMonitor: its Service must publish not-ready addresses (scrape the standby too)');
    for (const e of sm['spec'].endpoints ?? []) {
      need((scraped[0]['spec'].ports ?? []).some((sp: Obj) => sp['name'] === e['port']), `ServiceMonitor: endpoint port ${e['port']} is not a port of its Service`);
      need(e['path'] === '/metrics', 'ServiceMonitor: path must be /metrics');
    }
  }
  const pdb = one(ms, 'PodDisruptionBudget');
  need(matches(pdb['spec'].selector?.matchLabels, podLabels), 'PodDisruptionBudget: selector must match the pods');
  need(pdb['spec'].unhealthyPodEvictionPolicy === 'AlwaysAllow', 'PodDisruptionBudget: the standby (never Ready) must stay evictable: unhealthyPodEvictionPolicy AlwaysAllow');

  // NetworkPolicy: ingress only to the http port from named peers; egress only on named ports.
  const np = one(ms, 'NetworkPolicy');
  need(matches(np['spec'].podSelector?.matchLabels, podLabels), 'NetworkPolicy: podSelector must match the pods');
  need(['Ingress', 'Egress'].every((t) => (np['spec'].policyTypes ?? []).includes(t)), 'NetworkPolicy: policyTypes must be Ingress and Egress');
  const ingress = (np['spec'].ingress ?? []) as Obj[];
  for (const r of ingress) {
    need(r['from']?.length, 'NetworkPolicy: every ingress rule must name its sources');
    need(r['ports']?.length && r['ports'].every((x: Obj) => x['port'] === httpPort || x['port'] === 'http'), `NetworkPolicy: ingress only to port ${httpPort}`);
  }
  const peers = ingress.flatMap((r) => r['from'] ?? []) as Obj[];
  need(peers.some((x) => x['podSelector']?.matchLabels?.['app.kubernetes.io/name'] === 'prometheus' && x['namespaceSelector']), 'NetworkPolicy: ingress from Prometheus pods');
  need(peers.some((x) => x['namespaceSelector']?.matchLabels?.['runner-fleet.io/admin'] === 'true'), 'NetworkPolicy: ingress from namespaces labelled runner-fleet.io/admin=true');
  const egress = (np['spec'].egress ?? []) as Obj[];
  for (const r of egress) need(r['ports']?.length, 'NetworkPolicy: every egress rule must name its ports (no allow-all)');
  const egressPorts = egress.flatMap((r) => r['ports'] ?? []) as Obj[];
  const has = (proto: string, port: number, end?: number) =>
    egressPorts.some((x) => (x['protocol'] ?? 'TCP') === proto && x['port'] === port && (end === undefined || x['endPort'] === end));
  need(has('UDP', 53), 'NetworkPolicy: egress to DNS (UDP 53)');
  need(has('TCP', 443), 'NetworkPolicy: egress to the cloud APIs and GitLab (TCP 443)');
  need(has('TCP', 5432), 'NetworkPolicy: egress to PostgreSQL (TCP 5432)');
  need(has('TCP', 22), 'NetworkPolicy: egress to the runner subnet on SSH (TCP 22)');
  need(has('TCP', 5985, 5986), 'NetworkPolicy: egress to the runner subnet on WinRM (TCP 5985-5986)');
  return p;
}

/** A value of the right shape for each variable the Deployment sets (the Secret's are placeholders). */
function sampleValue(name: string): string {
  if (name === 'DATABASE_URL') return 'postgres://runner_fleet@127.0.0.1:5432/runner_fleet';
  return `sample-${name.toLowerCase()}-0123456789abcdef`;
}

const manifests = loadManifests();
const byKey = (ms: Manifest[], kind: string, name?: string) => ms.find((m) => m.doc['kind'] === kind && (!name || m.doc['metadata'].name === name))!.doc;

describe('deploy/kubernetes manifests', () => {
  it('are the kinds a shard needs', () => {
    expect(manifests.map((m) => m.doc['kind']).sort()).toEqual(
      ['ConfigMap', 'Deployment', 'NetworkPolicy', 'PodDisruptionBudget', 'Secret', 'Service', 'Service', 'ServiceAccount', 'ServiceMonitor'].sort(),
    );
  });

  it.each(manifests.map((m) => [`${m.file}: ${m.doc['kind']} ${m.doc['metadata']?.name}`, m.doc] as const))('%s is valid against its schema', (_, doc) => {
    expect(schemaErrors(doc)).toEqual([]);
  });

  it('kustomization.yaml lists every manifest except the Secret template', () => {
    const k = parse(readFileSync(resolve(dir, 'kustomization.yaml'), 'utf8')) as { resources: string[] };
    const files = [...new Set(manifests.map((m) => m.file))].filter((f) => f !== TEMPLATE);
    expect([...k.resources].sort()).toEqual(files.sort());
    expect(k.resources).not.toContain(TEMPLATE);
  });

  it('hold the design: 2 replicas, /readyz readiness, non-root, valid shard config, NetworkPolicy ports', () => {
    expect(problems(manifests)).toEqual([]);
  });

  it('probe the routes the manager serves', async () => {
    const app = Fastify();
    await app.register(healthRoutes, { db: {} as never });
    await app.ready();
    const c = byKey(manifests, 'Deployment')['spec'].template.spec.containers[0] as Obj;
    for (const probe of ['readinessProbe', 'livenessProbe', 'startupProbe']) {
      expect(app.hasRoute({ method: 'GET', url: c[probe].httpGet.path }), probe).toBe(true);
    }
    expect(app.hasRoute({ method: 'GET', url: '/ready' })).toBe(false);
    await app.close();
  });
});

describe('a broken copy fails', () => {
  // Each mutates a copy of the shipped manifests; the named check must catch it.
  const mutated = (kind: string, f: (doc: Obj) => void, name?: string): Manifest[] => {
    const copy = structuredClone(manifests);
    f(byKey(copy, kind, name));
    return copy;
  };
  const container = (d: Obj) => d['spec'].template.spec.containers[0] as Obj;

  it.each([
    ['replicas as a string', 'Deployment', (d: Obj) => void (d['spec'].replicas = 'two'), 'replicas'],
    ['a container without a name', 'Deployment', (d: Obj) => void delete container(d)['name'], 'name'],
    ['a Service port as a name', 'Service', (d: Obj) => void (d['spec'].ports[0].port = 'http'), 'port'],
    ['a ServiceMonitor endpoint port as a number', 'ServiceMonitor', (d: Obj) => void (d['spec'].endpoints[0].port = 8080), 'port'],
    ['NetworkPolicy ingress peers not a list', 'NetworkPolicy', (d: Obj) => void (d['spec'].ingress[0].from = { podSelector: {} }), 'from'],
    ['a PDB minAvailable as a list', 'PodDisruptionBudget', (d: Obj) => void (d['spec'].minAvailable = [1]), 'minAvailable'],
  ])('schema: %s', (_, kind, f, word) => {
    const errors = schemaErrors(byKey(mutated(kind, f), kind));
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.join('\n')).toContain(word);
  });

  it('schema: an unknown kind', () => {
    expect(schemaErrors({ apiVersion: 'apps/v1', kind: 'Deploymnet', metadata: { name: 'x' } })).toEqual(['no schema for apps/v1/Deploymnet']);
  });

  it.each([
    ['one replica', 'Deployment', (d: Obj) => void (d['spec'].replicas = 1), 'replicas must be 2'],
    ['readiness on /healthz', 'Deployment', (d: Obj) => void (container(d)['readinessProbe'].httpGet.path = '/healthz'), 'readinessProbe must GET /readyz'],
    ['a rollout waiting for Ready pods', 'Deployment', (d: Obj) => void (d['spec'].strategy.rollingUpdate.maxUnavailable = 1), 'strategy'],
    ['a writable root file system', 'Deployment', (d: Obj) => void delete container(d)['securityContext'].readOnlyRootFilesystem, 'readOnlyRootFilesystem'],
    ['running as root', 'Deployment', (d: Obj) => void (d['spec'].template.spec.securityContext.runAsUser = 0), 'runAsUser'],
    ['capabilities kept', 'Deployment', (d: Obj) => void (container(d)['securityContext'].capabilities.drop = []), 'drop ALL'],
    ['no memory limit', 'Deployment', (d: Obj) => void delete container(d)['resources'].limits.memory, 'limits.memory'],
    ['a token variable the Deployment does not set', 'ConfigMap', (d: Obj) => void (d['data']['shard.yaml'] = d['data']['shard.yaml'].replace('${TOKEN_WINDOWS_MEDIUM}', '${TOKEN_WINDOWS_LARGE}')), 'TOKEN_WINDOWS_LARGE is not set'],
    ['the manager listening on loopback only', 'ConfigMap', (d: Obj) => void (d['data']['shard.yaml'] = d['data']['shard.yaml'].replace('"0.0.0.0:8080"', '"127.0.0.1:8080"')), 'http.listen must be 0.0.0.0:8080'],
    ['a bad pool size in the shard config', 'ConfigMap', (d: Obj) => void (d['data']['shard.yaml'] = d['data']['shard.yaml'].replace('idle: 8,', 'idle: eight,')), 'classes.saas-linux-small-amd64.pool.idle'],
    ['a world-readable secrets key', 'Deployment', (d: Obj) => void (d['spec'].template.spec.volumes.find((v: Obj) => v['secret'])!.secret.defaultMode = 0o644), 'world-readable'],
    ['a real value in the Secret template', 'Secret', (d: Obj) => void (d['stringData']['admin-token'] = 's3cr3t-admin-token'), 'admin-token must be the placeholder'],
    ['no egress to PostgreSQL', 'NetworkPolicy', (d: Obj) => void (d['spec'].egress = d['spec'].egress.filter((r: Obj) => !r['ports'].some((x: Obj) => x['port'] === 5432))), 'PostgreSQL'],
    ['ingress open to the world', 'NetworkPolicy', (d: Obj) => void d['spec'].ingress.push({ ports: [{ protocol: 'TCP', port: 8080 }] }), 'name its sources'],
    ['an allow-all egress rule', 'NetworkPolicy', (d: Obj) => void d['spec'].egress.push({ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }] }), 'no allow-all'],
    ['a ServiceMonitor on the API Service', 'ServiceMonitor', (d: Obj) => void (d['spec'].selector.matchLabels = { 'app.kubernetes.io/name': 'runner-fleet' }), 'exactly one Service'],
  ])('design: %s', (_, kind, f, text) => {
    const found = problems(mutated(kind, f));
    expect(found.join('\n')).toContain(text);
  });
});
