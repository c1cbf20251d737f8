// A real OpenID Provider for weftnet's offline tests (oidc-provider with its devInteractions
// login form). Test-only by design: in-memory adapter, development keys, no consent screen.
//
// usage: node test-op.mjs CONFIG.json   -> prints one line: {"issuer": "http://127.0.0.1:PORT"}
// CONFIG: {"port": 0,                          0 = ephemeral
//          "clients": [{client metadata}],     e.g. {client_id, client_secret, redirect_uris}
//          "accounts": {"alice": {claims}},    sub -> claims (email, groups, name, ...)
//          "id_token_ttl": 3600}
// Test control: PUT /_test/accounts/<sub> {claims} replaces a user's claims; DELETE leaves
// only sub. To make the IdP refuse a login: GET /interaction/<uid>/abort.
// The process exits when its stdin closes (the test runner went away) or on SIGTERM.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { Provider } from 'oidc-provider';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = { ...(cfg.accounts ?? {}) };
const server = createServer();
await new Promise((ok) => server.listen(cfg.port ?? 0, '127.0.0.1', ok));
const issuer = `http://127.0.0.1:${server.address().port}`;
const SCOPE_CLAIMS = ['email', 'email_verified', 'name', 'preferred_username', 'groups'];

const provider = new Provider(issuer, {
  clients: cfg.clients ?? [],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  conformIdTokenClaims: false, // scope claims in the ID token, as most IdPs do
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, preferred_username: sub, ...(accounts[sub] ?? {}) }),
  }),
  loadExistingGrant: async (ctx) => { // first-party clients: grant what was asked, no consent
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope([...ctx.oidc.requestParamScopes].join(' '));
    grant.addOIDCClaims(SCOPE_CLAIMS);
    await grant.save();
    return grant;
  },
  cookies: { keys: ['test-only-cookie-key'] },
  ttl: { IdToken: cfg.id_token_ttl ?? 3600, AccessToken: 3600, Session: 3600, Grant: 3600 },
});
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

const callback = provider.callback();
server.on('request', (req, res) => {
  const m = req.url.match(/^\/_test\/accounts\/([^/?]+)$/);
  if (!m) return callback(req, res);
  const sub = decodeURIComponent(m[1]);
  if (req.method === 'DELETE') {
    delete accounts[sub];
    res.writeHead(204).end();
    return;
  }
  if (req.method !== 'PUT') {
    res.writeHead(405).end();
    return;
  }
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    try {
      accounts[sub] = JSON.parse(body || '{}');
      res.writeHead(204).end();
    } catch (e) {
      res.writeHead(400, { 'content-type': 'text/plain' }).end(String(e));
    }
  });
});

const stop = () => server.close(() => process.exit(0)) && setTimeout(() => process.exit(0), 500);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop).resume();
console.log(JSON.stringify({ issuer }));
