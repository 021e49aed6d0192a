// User data of a Mac host's macOS instance (run once as root by ec2-macos-init at first boot):
// authorize the manager's key for this host, and fence the nested VMs in with pf. The key line
// has the same `  0) KEY='...' ;;` shape as the Linux script, which the EC2 emulator reads.
import { shq } from '../../gitlab/script-quote.js';

/** Tart's shared (NAT) network on the host: the nested VMs' addresses. */
export const TART_NAT_CIDR = '192.168.64.0/24';
const TART_HOST_ADDRESS = '192.168.64.1';

/**
 * `hostKey`: the SSH host key the manager made for this instance (it pins the fingerprint),
 * installed as sshd's ed25519 key, in the `HOSTKEY_B64` shape the Linux script uses.
 */
export function macHostUserData(username: string, publicKey: string, hostKey?: string): string {
  if (!/^[a-z_][a-z0-9_-]{0,31}$/.test(username)) throw new Error(`invalid host user name ${JSON.stringify(username)}`);
  return [
    '#!/bin/bash',
    '# runner-fleet: this Mac host accepts only the manager key made for it.',
    'set -euo pipefail',
    'case 0 in',
    `  0) KEY=${shq(publicKey.trim())} ;;`,
    'esac',
    `HOME_DIR=$(dscl . -read /Users/${username} NFSHomeDirectory | awk '{print $2}')`,
    'install -d -m 700 "$HOME_DIR/.ssh"',
    'printf \'%s\\n\' "$KEY" > "$HOME_DIR/.ssh/authorized_keys"',
    `chown -R ${username} "$HOME_DIR/.ssh" && chmod 600 "$HOME_DIR/.ssh/authorized_keys"`,
    // Jobs in nested VMs must not reach the instance metadata service through the host's NAT,
    // nor each other: only the host (the manager's jump) talks to a nested VM.
    'cat > /etc/pf.anchors/runner-fleet <<PF',
    `block drop quick from ${TART_NAT_CIDR} to 169.254.169.254`,
    `pass quick from ${TART_HOST_ADDRESS} to ${TART_NAT_CIDR} keep state`,
    `block drop quick from ${TART_NAT_CIDR} to ${TART_NAT_CIDR}`,
    'PF',
    'grep -q runner-fleet /etc/pf.conf || printf \'anchor "runner-fleet"\\nload anchor "runner-fleet" from "/etc/pf.anchors/runner-fleet"\\n\' >> /etc/pf.conf',
    'pfctl -E -f /etc/pf.conf || true',
    ...(hostKey
      ? [
          'case 0 in',
          `  0) HOSTKEY_B64=${shq(Buffer.from(hostKey.trim()).toString('base64'))} ;;`,
          'esac',
          '(umask 077 && printf \'%s\' "$HOSTKEY_B64" | base64 -D > /etc/ssh/ssh_host_ed25519_key)',
          'ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key > /etc/ssh/ssh_host_ed25519_key.pub',
          'launchctl kickstart -k system/com.openssh.sshd || true',
        ]
      : []),
    '',
  ].join('\n');
}
