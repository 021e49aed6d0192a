// A shard loads a cloud SDK only when one of its classes uses a provider that needs it: loading
// @google-cloud/compute alone costs ~110 MiB of heap, @aws-sdk/client-ec2 ~70 MiB of RSS.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const fixture = fileURLToPath(new URL('../fixtures/modules/loaded-sdks.ts', import.meta.url));

async function sdksLoadedBy(...providers: string[]): Promise<string[]> {
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', fixture, ...providers], { timeout: 60_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as string[];
}

describe('cloud SDKs load on demand', () => {
  it('a shard on the local provider loads no cloud SDK', async () => {
    expect(await sdksLoadedBy('local')).toEqual([]);
  }, 70_000);

  it('a shard with gcp and aws classes loads their SDKs (the check sees them)', async () => {
    const loaded = await sdksLoadedBy('local', 'gcp', 'aws');
    expect(loaded).toContain('@google-cloud/compute');
    expect(loaded).toContain('@aws-sdk/client-ec2');
  }, 70_000);
});
