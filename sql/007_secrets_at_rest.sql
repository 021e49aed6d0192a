-- Secrets at rest (v2): a random scrypt salt per shard for passphrase keys, and secret columns
-- that are erased once nothing needs them any more.

-- Not secret: a passphrase is stretched with it (src/manager/secret-keys.ts). Every manager of the
-- shard reads the same row; losing it makes the shard's v2 ciphertexts unreadable.
CREATE TABLE shard_key_salts (
  shard       text PRIMARY KEY,
  salt        text NOT NULL,                  -- base64 of 16 random bytes
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- Erased (NULL) when no longer needed: a job's token once GitLab acknowledged its final state,
-- its payload once it finished, a VM's private key once the VM is deleted.
ALTER TABLE jobs ALTER COLUMN token_enc DROP NOT NULL;
ALTER TABLE vms ALTER COLUMN private_key_enc DROP NOT NULL;

-- Rows that ended before this migration hold secrets nothing will read again.
UPDATE jobs SET payload_enc = NULL WHERE state = 'finished' AND payload_enc IS NOT NULL;
UPDATE jobs SET token_enc = NULL WHERE state = 'finished' AND reported_at IS NOT NULL AND token_enc IS NOT NULL;
UPDATE vms SET private_key_enc = NULL WHERE state = 'deleted' AND private_key_enc IS NOT NULL;
