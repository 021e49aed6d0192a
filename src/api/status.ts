// GET / : a plain-text glance at the shard (VM counts by class and state, the latest jobs),
// for a human with curl. Counts and job ids only: nothing secret, nothing per-VM.
import type { FastifyInstance } from 'fastify';
import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { serverError, textReply } from './schemas.js';

export async function statusRoutes(app: FastifyInstance, opts: { db: Kysely<Database>; shard: string }): Promise<void> {
  app.get('/', {
    schema: {
      tags: ['health'], summary: 'Status at a glance',
      description: 'Plain text for a human: VM counts by class and state, the latest jobs. No token: nothing secret, nothing per VM.',
      response: { 200: textReply('The status text.'), 500: serverError },
    },
  }, async (_req, reply) => {
    const counts = await opts.db
      .selectFrom('vms')
      .select(['class', 'state', (eb) => eb.fn.countAll<string>().as('n')])
      .where('shard', '=', opts.shard)
      .where('state', '<>', 'deleted')
      .groupBy(['class', 'state'])
      .orderBy('class')
      .orderBy('state')
      .execute();
    const jobs = await opts.db
      .selectFrom('jobs')
      .select(['id', 'class', 'state', 'result', 'picked_at', 'finished_at'])
      .where('shard', '=', opts.shard)
      .orderBy('picked_at', 'desc')
      .limit(10)
      .execute();

    const byClass = new Map<string, string[]>();
    for (const c of counts) byClass.set(c.class, [...(byClass.get(c.class) ?? []), `${c.state}=${c.n}`]);
    const lines = [`runner-fleet shard ${opts.shard}`, '', 'VMs (not deleted):'];
    if (byClass.size === 0) lines.push('  none');
    for (const [cls, parts] of byClass) lines.push(`  ${cls}  ${parts.join(' ')}`);
    lines.push('', 'latest jobs:');
    if (jobs.length === 0) lines.push('  none');
    for (const j of jobs) {
      const took = j.finished_at ? ` in ${Math.round((j.finished_at.getTime() - j.picked_at.getTime()) / 1000)}s` : '';
      lines.push(`  #${j.id}  ${j.class}  ${j.state}${j.result ? ` (${j.result})` : ''}  picked ${j.picked_at.toISOString()}${took}`);
    }
    lines.push('', 'see /metrics, /readyz, /v1/vms and /v1/jobs (admin token)');
    return reply.type('text/plain; charset=utf-8').send(`${lines.join('\n')}\n`);
  });
}
