// Registers the providers that ship with runner-fleet.
import './local/index.js';
import './gcp/index.js';
import './aws/index.js';
import './mac/index.js';
