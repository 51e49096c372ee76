// node-oidc-provider as a third-party peer for refreshlab's tests: configuration only, the
// token logic is the library's own. Login is its development interactions (HTML login and
// consent forms, any username and password). Every provider event the tests compare against is
// appended to PEER_EVENTS as one JSON line.
//
// Environment: PEER_PORT, PEER_EVENTS (file), PEER_ACCESS_S (access token lifetime, seconds),
// PEER_ROTATE (1: rotate refresh tokens on every use, the default for public clients; 0: never),
// PEER_CLOCK_TOLERANCE_S (seconds a token is still accepted past its exp; the library's default 15).
import { appendFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.env.PEER_PORT);
const events = process.env.PEER_EVENTS;
const rotate = process.env.PEER_ROTATE !== '0';
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'refreshlab',
    token_endpoint_auth_method: 'none', // a public client: PKCE is required
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  }],
  ttl: {
    AccessToken: Number(process.env.PEER_ACCESS_S || 3600),
    RefreshToken: 86400,
    Session: 86400,
    Grant: 86400,
    Interaction: 600,
    AuthorizationCode: 60,
  },
  rotateRefreshToken: rotate,
  clockTolerance: Number(process.env.PEER_CLOCK_TOLERANCE_S ?? 15),
  // a refresh token for every code exchange (the default wants offline_access and a consent prompt)
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  cookies: { keys: ['peer-tests-only-cookie-key'] },
});

function record(name, fields) {
  appendFileSync(events, `${JSON.stringify({ t: Date.now() / 1000, event: name, ...fields })}\n`);
}

// the token endpoint's own outcome per call: grant.success / grant.error carry the grant type
provider.on('grant.success', (ctx) => {
  record('grant.success', { grant_type: ctx.oidc.params.grant_type, account: ctx.oidc.entities.Account?.accountId });
});
provider.on('grant.error', (ctx, err) => {
  record('grant.error', {
    grant_type: ctx.oidc.params?.grant_type, error: err.error, detail: err.error_detail,
    account: ctx.oidc.entities?.Account?.accountId,
  });
});
provider.on('refresh_token.saved', (token) => record('refresh_token.saved', { jti: token.jti, grant: token.grantId, account: token.accountId }));
provider.on('refresh_token.consumed', (token) => record('refresh_token.consumed', { jti: token.jti, grant: token.grantId, account: token.accountId }));
provider.on('access_token.saved', (token) => record('access_token.saved', { jti: token.jti, grant: token.grantId, account: token.accountId }));
provider.on('grant.revoked', (ctx, grantId) => record('grant.revoked', { grant: grantId, account: ctx.oidc.entities?.Account?.accountId }));

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on http://127.0.0.1:${port}`);
});
