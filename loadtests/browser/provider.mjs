// node-oidc-provider for the browser lab: configuration only, the token logic is the library's.
// One public client for the lab's single-page apps (authorization code + PKCE through the
// development login and consent forms; refresh tokens need offline_access and prompt=consent,
// as the library's defaults want); routes under Auth0's paths (/authorize, /oauth/token), which
// auth0-spa-js assumes, and discovery for oidc-client-ts. Every provider event the lab merges
// into its records is appended to LAB_EVENTS as one JSON line; a refresh token presented to the
// token endpoint is written as a SHA-256 prefix (the lab hashes what the browser sent the same way).
//
// Environment: LAB_PORT, LAB_EVENTS (file), LAB_SPA_ORIGIN (the single-page apps' origin),
// LAB_ACCESS_S (access token lifetime, seconds), LAB_ROTATE (1: rotate refresh tokens, the default),
// LAB_REFRESH_ANSWER_DELAY_MS (a slow answer leg: a refresh's answer is held back that long after
// the server has rotated and logged it; 0, the default: none).
import { appendFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.LAB_PORT);
const events = process.env.LAB_EVENTS;
const spa = process.env.LAB_SPA_ORIGIN;
// auth0-spa-js checks the ID token's iss against `${domain}/`: the issuer ends with a slash
const issuer = `http://127.0.0.1:${port}/`;

const digest = (token) => (token ? createHash('sha256').update(String(token)).digest('hex').slice(0, 16) : null);

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'refreshlab-spa',
    token_endpoint_auth_method: 'none',
    redirect_uris: [`${spa}/oidc-client-ts/`, `${spa}/auth0-spa-js/`],
    post_logout_redirect_uris: [`${spa}/`],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  }],
  routes: { authorization: '/authorize', token: '/oauth/token', userinfo: '/userinfo', end_session: '/v2/logout' },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  ttl: {
    AccessToken: Number(process.env.LAB_ACCESS_S || 90),
    IdToken: 3600,
    RefreshToken: 86400,
    Session: 86400,
    Grant: 86400,
    Interaction: 600,
    AuthorizationCode: 60,
  },
  rotateRefreshToken: process.env.LAB_ROTATE !== '0',
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  cookies: { keys: ['browser-lab-only-cookie-key'] },
});

function record(name, fields) {
  appendFileSync(events, `${JSON.stringify({ t: Date.now() / 1000, event: name, ...fields })}\n`);
}

const presented = (ctx) => digest(ctx.oidc?.params?.refresh_token);

provider.on('grant.success', (ctx) => {
  record('grant.success', {
    grant_type: ctx.oidc.params.grant_type, account: ctx.oidc.entities.Account?.accountId, presented: presented(ctx),
    grant: ctx.oidc.entities.RefreshToken?.grantId ?? ctx.oidc.entities.AuthorizationCode?.grantId,
  });
});
// the real reason of an invalid_grant is only here (error_detail): the client sees a generic text
provider.on('grant.error', (ctx, err) => {
  record('grant.error', {
    grant_type: ctx.oidc?.params?.grant_type, error: err.error, detail: err.error_detail,
    account: ctx.oidc?.entities?.Account?.accountId, presented: presented(ctx),
  });
});
provider.on('refresh_token.saved', (token) => record('refresh_token.saved', { jti: digest(token.jti), grant: token.grantId, account: token.accountId }));
provider.on('refresh_token.consumed', (token) => record('refresh_token.consumed', { jti: digest(token.jti), grant: token.grantId, account: token.accountId }));
provider.on('refresh_token.destroyed', (token) => record('refresh_token.destroyed', { jti: digest(token.jti), grant: token.grantId, account: token.accountId }));
provider.on('access_token.saved', (token) => record('access_token.saved', { jti: digest(token.jti), grant: token.grantId, account: token.accountId }));
provider.on('grant.revoked', (ctx, grantId) => record('grant.revoked', { grant: grantId, account: ctx.oidc?.entities?.Account?.accountId }));
provider.on('server_error', (ctx, err) => record('server_error', { message: String(err?.message ?? err) }));

const answerDelayMs = Number(process.env.LAB_REFRESH_ANSWER_DELAY_MS || 0);
if (answerDelayMs > 0) {
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.oidc?.params?.grant_type === 'refresh_token') await new Promise((resolve) => { setTimeout(resolve, answerDelayMs); });
  });
}

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
