// A real OpenID provider (panva/oidc-provider) for lakescore's end-to-end auth tests.
//
//   node server.mjs [--host 127.0.0.1] [--port 0] [--resource api://lakescore]
//                   [--scopes 'lakescore.read lakescore.write'] [--ttl 300]
//                   [--clients '<JSON array>']
//
// Listens on plain http, issuer http://<host>:<port> (port 0: a free one), and prints exactly
// one line to stdout, `READY <issuer>`, once it answers; everything else goes to stderr. Runs
// until killed (SIGTERM/SIGINT exit 0).
//
// Clients (--clients or $OIDC_PROVIDER_CLIENTS) use the client_credentials grant with
// client_secret_basic or client_secret_post:
//   [{"client_id": "alice", "client_secret": "s1",
//     "roles": ["admin"],                 // -> "roles" claim (omitted when empty)
//     "scope": "lakescore.read",          // optional: the resource scopes it may get
//     "claims": {"groups": ["g1"]}}]      // optional: more claims, verbatim
// Default: admin-app/secret with roles ["admin"], reader-app/secret with no roles and
// scope "lakescore.read".
//
// Access tokens are RS256 JWTs (typ at+jwt) signed with an RSA key made at start-up:
//   iss, sub (= client id), aud (= the resource: --resource by default, or whatever
//   `resource=` asked for, for wrong-audience tests), exp, iat, jti, client_id, scope, roles.
// Discovery: <issuer>/.well-known/openid-configuration; keys: <issuer>/jwks.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

// stdout carries only the READY line: oidc-provider prints its notices with console.info.
for (const name of ['log', 'info', 'debug']) {
  console[name] = (...args) => console.error(...args);
}

const { values: opts } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    resource: { type: 'string', default: 'api://lakescore' },
    scopes: { type: 'string', default: 'lakescore.read lakescore.write' },
    ttl: { type: 'string', default: '300' },
    clients: { type: 'string', default: process.env.OIDC_PROVIDER_CLIENTS },
  },
  strict: true,
});

function fail(msg) {
  console.error(`oidc-provider harness: ${msg}`);
  process.exit(2);
}

const ttl = Number(opts.ttl);
if (!Number.isInteger(ttl) || ttl <= 0) fail(`--ttl must be a positive integer, got '${opts.ttl}'`);
const port = Number(opts.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port must be 0..65535, got '${opts.port}'`);

const DEFAULT_CLIENTS = [
  { client_id: 'admin-app', client_secret: 'secret', roles: ['admin'] },
  { client_id: 'reader-app', client_secret: 'secret', roles: [], scope: 'lakescore.read' },
];

let clientList = DEFAULT_CLIENTS;
if (opts.clients) {
  try {
    clientList = JSON.parse(opts.clients);
  } catch (e) {
    fail(`--clients is not JSON: ${e.message}`);
  }
}
if (!Array.isArray(clientList) || clientList.length === 0) fail('--clients must be a non-empty JSON array');
const clients = new Map();
for (const c of clientList) {
  if (typeof c?.client_id !== 'string' || !c.client_id) fail(`client without client_id: ${JSON.stringify(c)}`);
  if (typeof c.client_secret !== 'string' || !c.client_secret) fail(`client ${c.client_id} has no client_secret`);
  const roles = c.roles ?? [];
  if (!Array.isArray(roles) || !roles.every((r) => typeof r === 'string')) {
    fail(`client ${c.client_id}: roles must be an array of strings`);
  }
  if (c.claims !== undefined && (typeof c.claims !== 'object' || c.claims === null || Array.isArray(c.claims))) {
    fail(`client ${c.client_id}: claims must be an object`);
  }
  clients.set(c.client_id, { ...c, roles });
}

// The signing key: RSA 2048, made now, never written anywhere.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = privateKey.export({ format: 'jwk' });
const thumbprint = crypto
  .createHash('sha256')
  .update(JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n }))
  .digest('base64url');
const signingKey = { ...jwk, kid: thumbprint, alg: 'RS256', use: 'sig' };

// Imported only now, so its import-time notices go through the console patched above.
const { default: Provider } = await import('oidc-provider');

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, opts.host, resolve);
});
const address = server.address();
const hostPart = address.family === 'IPv6' ? `[${address.address}]` : address.address;
const issuer = `http://${hostPart}:${address.port}`;

const provider = new Provider(issuer, {
  clients: [...clients.values()].map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic', // client_secret_post is accepted too
  })),
  jwks: { keys: [signingKey] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No `resource` parameter: the lakescore API.
      defaultResource: async () => opts.resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator, client) => {
        const allowed = clients.get(client.clientId)?.scope ?? opts.scopes;
        return {
          scope: allowed,
          audience: resourceIndicator,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    const c = clients.get(token.clientId);
    if (!c) return undefined;
    const extra = { ...(c.claims ?? {}) };
    if (c.roles.length) extra.roles = c.roles;
    return extra;
  },
  ttl: { ClientCredentials: ttl, AccessToken: ttl },
  clientBasedCORS: () => false,
  // Reached only by user flows, which this harness does not offer.
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
});

provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err));
provider.on('grant.error', (ctx, err) => console.error(`oidc-provider grant.error: ${err.message} ${err.error_description ?? ''}`));

server.on('request', provider.callback());
process.stdout.write(`READY ${issuer}\n`);

function shutdown() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
