// auth0-spa-js 2.27 as a single-page app uses it: refresh tokens, the cache in localStorage
// (shared by every tab), getTokenSilently before each page view's API calls. The SDK treats a
// cached token as stale 60 s before expiry and renews under a cross-tab lock (Web Locks).
import { createAuth0Client } from '@auth0/auth0-spa-js';
import { install, record } from './page.js';

const cfg = window.LAB_CONFIG;
const here = `${window.location.origin}/auth0-spa-js/`;

async function main() {
  const client = await createAuth0Client({
    domain: cfg.issuerOrigin,
    clientId: cfg.clientId,
    cacheLocation: 'localstorage',
    useRefreshTokens: true,
    authorizationParams: { redirect_uri: here, scope: 'openid offline_access' },
  });
  install({
    sdk: 'auth0-spa-js',
    userinfo: cfg.userinfo,
    async getToken() {
      try {
        const answer = await client.getTokenSilently({ detailedResponse: true });
        return { token: answer.access_token, expiresAt: null };
      } catch (err) {
        record('renew_error', { error: err?.error || err?.message || String(err), description: err?.error_description ?? null });
        if (err?.error === 'invalid_grant' && !window.lab.loggedOut) {
          window.lab.loggedOut = Date.now() / 1000;
          record('logged_out', { error: err.error });
        }
        throw err;
      }
    },
  });
  if (new URLSearchParams(window.location.search).has('code')) {
    await client.handleRedirectCallback();
    window.history.replaceState({}, '', here);
  } else if (!(await client.isAuthenticated())) {
    await client.loginWithRedirect({ authorizationParams: { prompt: 'consent' } });
    return;
  }
  window.lab.ready = true;
  record('ready');
}

main().catch((err) => record('page_error', { error: err?.error || err?.message || String(err) }));
