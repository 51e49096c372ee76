// What every lab page does, whatever its SDK: page views on the driver's cue (a burst of API
// calls with the token the SDK hands out), and a report of what the SDK said, through the
// function the driver exposes (window.labRecord). The SDK's own code decides when to renew.
const sha256 = async (text) => {
  const bytes = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text)));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('').slice(0, 16);
};

export const record = (what, fields = {}) => {
  if (typeof window.labRecord === 'function') window.labRecord({ t: Date.now() / 1000, kind: 'sdk', what, ...fields });
};

document.addEventListener('visibilitychange', () => record('visibility', { state: document.visibilityState }));

/**
 * Install window.lab. getToken() resolves to { token, expiresAt } (expiresAt: epoch seconds by
 * the SDK's own bookkeeping) or throws the SDK's error.
 */
export function install({ sdk, getToken, userinfo }) {
  window.lab = {
    sdk,
    ready: false,
    loggedOut: null,
    async pageView(burst) {
      const started = Date.now();
      let held = null;
      let error = null;
      try {
        held = await getToken();
      } catch (err) {
        error = err?.error || err?.message || String(err);
      }
      const tokenMs = Date.now() - started;
      if (!held?.token) return { t: started / 1000, tokenMs, error: error || 'no_token', attempts: [] };
      const access = await sha256(held.token);
      const attempts = await Promise.all(Array.from({ length: burst }, async () => {
        const sent = Date.now();
        try {
          const answer = await fetch(userinfo, { headers: { Authorization: `Bearer ${held.token}` } });
          return { t: sent / 1000, status: answer.status, ms: Date.now() - sent };
        } catch (err) {
          return { t: sent / 1000, status: 0, ms: Date.now() - sent };
        }
      }));
      return { t: started / 1000, tokenMs, error, access, expiresAt: held.expiresAt, attempts };
    },
  };
}
