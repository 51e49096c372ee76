// oidc-client-ts 3.5 as a single-page app uses it: UserManager with automatic silent renew
// (a timer per tab at expires_in - 60 s, renewing with the refresh token the store holds), the
// user kept in localStorage so that a new tab starts from it, no cross-tab lock.
import { UserManager, WebStorageStateStore } from 'oidc-client-ts';
import { install, record } from './page.js';

const cfg = window.LAB_CONFIG;
const here = `${window.location.origin}/oidc-client-ts/`;
const manager = new UserManager({
  authority: cfg.issuer,
  client_id: cfg.clientId,
  redirect_uri: here,
  response_type: 'code',
  scope: 'openid offline_access',
  prompt: 'consent', // oidc-provider issues a refresh token only for offline_access with consent
  // the fix (cfg.lock): the app renews itself, under a Web Locks lock across tabs
  automaticSilentRenew: !cfg.lock,
  loadUserInfo: false,
  monitorSession: false,
  userStore: new WebStorageStateStore({ store: window.localStorage }),
});

manager.events.addSilentRenewError((err) => {
  record('renew_error', { error: err?.error || err?.message || String(err), description: err?.error_description ?? null });
  if (err?.error === 'invalid_grant' && !window.lab.loggedOut) {
    window.lab.loggedOut = Date.now() / 1000;
    record('logged_out', { error: err.error });
  }
});
// the app keeps the user it loaded in memory, as react-oidc-context and most apps do: the page
// loads it once, and the tab's own renewals replace it (a sibling's renewal does not reach it)
let current = null;
manager.events.addUserLoaded((user) => {
  current = user;
  record('user_loaded', { expiresAt: user.expires_at ?? null });
});
manager.events.addAccessTokenExpired(() => record('access_expired'));

// The fix for the hidden-tab collapse: the same expiring timer, but the renewal runs under a
// cross-tab lock and first reads the store again — a sibling that renewed meanwhile left a fresh
// user there, which this tab adopts instead of presenting the same refresh token again.
if (cfg.lock) {
  manager.events.addAccessTokenExpiring(() => navigator.locks.request('refreshlab-renew', async () => {
    const stored = await manager.getUser();
    if (stored && stored.expires_in > 60) {
      current = stored;
      record('adopted', { expiresAt: stored.expires_at ?? null });
      return;
    }
    try {
      await manager.signinSilent();
    } catch (err) {
      record('renew_error', { error: err?.error || err?.message || String(err), description: err?.error_description ?? null });
      if (err?.error === 'invalid_grant' && !window.lab.loggedOut) {
        window.lab.loggedOut = Date.now() / 1000;
        record('logged_out', { error: err.error });
      }
    }
  }));
}

install({
  sdk: 'oidc-client-ts',
  userinfo: cfg.userinfo,
  async getToken() {
    // no getUser() here: it would load the store's newest user and re-arm this tab's timer
    if (!current) throw new Error('login_required');
    return { token: current.access_token, expiresAt: current.expires_at ?? null };
  },
});

async function main() {
  if (new URLSearchParams(window.location.search).has('code')) {
    await manager.signinRedirectCallback();
    window.history.replaceState({}, '', here);
  }
  const user = await manager.getUser();
  current = user;
  if (!user) {
    await manager.signinRedirect();
    return;
  }
  window.lab.ready = true;
  record('ready', { expiresAt: user.expires_at ?? null });
}

main().catch((err) => record('page_error', { error: err?.error || err?.message || String(err) }));
