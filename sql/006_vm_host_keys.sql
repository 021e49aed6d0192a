-- Pinned SSH host keys: the fingerprint (SHA256:...) of the host key the manager made for each
-- VM and handed to it at creation. Every connection to the VM verifies it; a row without one
-- (made before this migration) is never connected to.
ALTER TABLE vms ADD COLUMN host_key_fingerprint text;
