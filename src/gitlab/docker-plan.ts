// What a Docker-executor job needs, decided from the payload alone (pure): the images and their
// pull policies, the services with the hostnames gitlab-runner gives them, registry credentials
// as a Docker config, and the names of everything the job creates on its VM. script.ts turns the
// plan into bash; nothing here touches the VM.
import type { JobImage, JobPayload, JobService, PullPolicy } from './job-payload.js';

/** The label every container and network of a job carries: the cleanup finds them by it. */
export const JOB_LABEL = 'runner-fleet.job';

/** The label of a job's step containers (script, release, after_script; not its services): a cancel removes them before after_script runs. */
export const STEP_LABEL = 'runner-fleet.step';

/** Where the build directory is mounted in every container of a job, as gitlab-runner mounts `/builds`. */
export const CONTAINER_BUILDS_DIR = '/builds';

export interface DockerImageRun {
  name: string;
  /** [] = the image's own entrypoint; [''] = none; else the first is `--entrypoint`, the rest go before the command. */
  entrypoint: string[] | null;
  command: string[] | null;
  pullPolicy: PullPolicy[];
  user: string | null;
  platform: string | null;
}

export interface DockerService extends DockerImageRun {
  /** Container name on the VM. */
  container: string;
  /** Network aliases: the explicit ones first, then the two derived from the image name. */
  aliases: string[];
  /** Ports to wait for (`ports:` of the payload); [] = the image's exposed TCP ports. */
  ports: number[];
  variables: { key: string; value: string }[];
}

export interface DockerPlan {
  network: string;
  image: DockerImageRun;
  services: DockerService[];
  /** `~/.docker/config.json` content for the pulls, or null without registry credentials. */
  authConfig: string | null;
}

export type DockerPlanResult = { ok: true; plan: DockerPlan } | { ok: false; error: string };

/**
 * The two hostnames gitlab-runner derives from a service image: tag and digest dropped, a
 * registry's port dropped, then `/` as `__` and as `-` (`registry.example.com:5000/tutum/wordpress:1`
 * gives `registry.example.com__tutum__wordpress` and `registry.example.com-tutum-wordpress`).
 */
export function derivedAliases(image: string): string[] {
  let name = image.split('@')[0]!;
  const slash = name.lastIndexOf('/');
  const colon = name.indexOf(':', slash + 1);
  if (colon >= 0) name = name.slice(0, colon);
  const parts = name.split('/');
  if (parts.length > 1) parts[0] = parts[0]!.replace(/:\d+$/, '');
  return [...new Set([parts.join('__'), parts.join('-')])].filter(validHostname);
}

/** A name Docker accepts as a network alias and a resolver as a hostname label sequence. */
function validHostname(s: string): boolean {
  return /^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252}[A-Za-z0-9_])?$/.test(s);
}

/** `alias` may list several names, separated by commas or spaces (service_multiple_aliases). */
export function explicitAliases(alias: string | null | undefined): string[] {
  return (alias ?? '').split(/[\s,]+/).filter(Boolean);
}

/** An image reference as the payload gives it: refused when Docker could read it as an option or it holds a space. */
function imageError(name: string, field: string): string | null {
  if (name.startsWith('-') || /\s/.test(name) || name.length > 512) return `${field}: ${JSON.stringify(name.slice(0, 100))} is not an image reference`;
  return null;
}

function imageRun(img: JobImage | { name: string }, defaults: PullPolicy[]): DockerImageRun {
  const i = img as JobImage;
  return {
    name: i.name,
    entrypoint: i.entrypoint?.length ? i.entrypoint : null,
    command: i.command?.length ? i.command : null,
    pullPolicy: i.pull_policy?.length ? [...new Set(i.pull_policy)] : defaults,
    user: i.executor_opts?.docker?.user || null,
    platform: i.executor_opts?.docker?.platform || null,
  };
}

/** Registry credentials as a Docker config (`auths`), from the payload's `credentials` of type registry. */
export function dockerAuthConfig(credentials: JobPayload['credentials']): string | null {
  const auths: Record<string, { auth: string }> = {};
  for (const c of credentials ?? []) {
    if (c.type !== 'registry' || !c.url || c.username === undefined || c.password === undefined) continue;
    auths[c.url] = { auth: Buffer.from(`${c.username}:${c.password}`).toString('base64') };
  }
  return Object.keys(auths).length ? JSON.stringify({ auths }) : null;
}

export function dockerPlan(job: JobPayload, opts: { defaultImage?: string | null; pullPolicy?: PullPolicy[] }): DockerPlanResult {
  const defaults: PullPolicy[] = opts.pullPolicy?.length ? opts.pullPolicy : ['always'];
  const img = job.image?.name ? job.image : opts.defaultImage ? { name: opts.defaultImage } : null;
  if (!img) return { ok: false, error: 'the job names no image and its runner class has no defaultImage' };
  const bad = imageError(img.name, 'image');
  if (bad) return { ok: false, error: bad };
  const services: DockerService[] = [];
  const taken = new Set<string>();
  for (const [i, s] of (job.services ?? []).entries()) {
    const err = imageError(s.name, `services[${i}]`);
    if (err) return { ok: false, error: err };
    const explicit = explicitAliases(s.alias);
    const badAlias = explicit.find((a) => !validHostname(a));
    if (badAlias !== undefined) return { ok: false, error: `services[${i}].alias: ${JSON.stringify(badAlias.slice(0, 100))} is not a valid hostname` };
    // A second service of the same image keeps only its explicit aliases, as in gitlab-runner.
    const aliases = [...new Set([...explicit, ...derivedAliases(s.name)])].filter((a) => !taken.has(a));
    for (const a of aliases) taken.add(a);
    services.push({
      ...imageRun(s, defaults),
      container: `rf-${job.id}-svc-${i}`,
      aliases,
      ports: (s.ports ?? []).map((p) => p.number),
      variables: ((s as JobService).variables ?? []).map((v) => ({ key: v.key, value: v.value })),
    });
  }
  return { ok: true, plan: { network: `rf-${job.id}`, image: imageRun(img, defaults), services, authConfig: dockerAuthConfig(job.credentials) } };
}
