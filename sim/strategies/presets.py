"""Named behaviours of real issuers and client SDKs (facts in docs/reference.md).

A preset is a table of scenario-file fields; the fields a scenario writes next to ``preset = …``
win over the preset's. Lifetimes a preset leaves out come from the scenario's ``[tokens]``.
"""

SERVER_PRESETS: dict[str, dict] = {
    # rotation per application; breach detection revokes the family; reuse interval (leeway) 0 s
    "auth0": {"kind": "dual_token", "rotation": True, "reuse_detection": "family", "grace_period": "0s"},
    "auth0-non-rotating": {"kind": "dual_token", "rotation": False},
    # rotation default for SPAs; grace 30 s; reuse outside it revokes tokens since authentication
    "okta": {
        "kind": "dual_token", "rotation": True, "reuse_detection": "family", "grace_period": "30s",
        "revoke_access_on_reuse": True,
    },
    # access 300 s; SSO idle 1800 s (+120 s window); SSO max 36000 s; revokeRefreshToken false:
    # a new refresh token each time, the old one stays valid
    "keycloak": {
        "kind": "dual_token", "access_ttl": "5m", "refresh_ttl": "10h", "refresh_idle_ttl": "32m",
        "rotation": True, "reuse_detection": "none",
    },
    # revokeRefreshToken true, refreshTokenMaxReuse 0: a reused token is refused
    "keycloak-revoke": {
        "kind": "dual_token", "access_ttl": "5m", "refresh_ttl": "10h", "refresh_idle_ttl": "32m",
        "rotation": True, "reuse_detection": "token",
    },
    # rotation_grace_period 0; reuse after grace revokes the whole chain
    "hydra": {"kind": "dual_token", "rotation": True, "reuse_detection": "family", "grace_period": "0s"},
    # reuseRefreshTokens true (no rotation); access 5 min, refresh 60 min
    "spring-authorization-server": {
        "kind": "dual_token", "access_ttl": "5m", "refresh_ttl": "60m", "rotation": False,
    },
    # access 5 min, refresh 1 day, ROTATE_REFRESH_TOKENS false
    "simplejwt": {"kind": "dual_token", "access_ttl": "5m", "refresh_ttl": "1d", "rotation": False},
    # ROTATE_REFRESH_TOKENS + BLACKLIST_AFTER_ROTATION: a reused token fails alone, no grace;
    # the blacklist is checked when the token is read, before the rotation writes (check-then-write)
    "simplejwt-blacklist": {
        "kind": "dual_token", "access_ttl": "5m", "refresh_ttl": "1d", "rotation": True,
        "reuse_detection": "token", "atomic": False,
    },
    # node-oidc-provider, public client: rotation on every use; a consumed token presented again
    # is destroyed and its grant revoked. Its consumed check and the rotation's write are separate
    # awaits, but with its in-memory adapter they run in one turn of Node's event loop: measured
    # against it (tests/test_peers.py), concurrent refreshes never both succeed, so atomic. A reuse
    # revokes the grant with everything issued under it, access tokens included
    # (lib/helpers/revoke.js: AccessToken.revokeByGrantId): the API then refuses them as invalid
    # One event loop serves its API and token endpoint and answers them in order: its target
    # profile sets network.in_order for validate (a refresh never overtakes a slower 401)
    "oidc-provider": {
        "kind": "dual_token", "refresh_ttl": "1d", "rotation": True, "reuse_detection": "family",
        "revoke_access_on_reuse": True,
    },
    # GoTrue (Supabase Auth), its refresh grant: rotation on by default; the refresh token row and
    # session are locked before the check (atomic); the parent of the session's active refresh
    # token is accepted at any time and answered with a new access token and that active refresh
    # token (the client never stored the answer); another rotated token inside the reuse interval
    # (GOTRUE_SECURITY_REFRESH_TOKEN_REUSE_INTERVAL, 10 s) is swapped for a new one; after it,
    # reuse revokes the token family; JWT_EXP 3600 s
    "gotrue": {
        "kind": "dual_token", "access_ttl": "1h", "rotation": True, "reuse_detection": "family",
        "grace_period": "10s", "grace_returns": "new_pair", "parent_replay": True,
    },
    # SuperTokens: access 3600 s, refresh 100 days; deferred commit (a child refresh token is
    # committed by its first use); any other token is theft detection, which revokes the session
    "supertokens": {
        "kind": "dual_token", "access_ttl": "1h", "refresh_ttl": "100d", "rotation": True,
        "reuse_detection": "family", "commit": "first_use",
    },
}

CLIENT_PRESETS: dict[str, dict] = {
    # the seed article's fetchWithRefresh: refresh on 401, retry once, no dedup
    "fetch-with-refresh": {"trigger": "reactive", "single_flight": False, "storage": "shared"},
    # the seed article's silent refresh: setInterval(…, 60000) from page load (a fixed phase),
    # refresh when exp - now < 300 (strict, whole seconds)
    "seed-silent-refresh": {
        "trigger": "timer", "check_interval": "60s", "threshold": "5m", "timer_phase": "fixed", "compare": "lt",
        "whole_seconds": True,
    },
    # one timer at expires_in - 60 s (accessTokenExpiringNotificationTimeInSeconds), rescheduled
    # on each new token; per-tab sessionStorage, no cross-tab
    "oidc-client-ts": {
        "trigger": "timer", "timer_phase": "exp", "check_interval": "5s", "threshold": "60s", "storage": "per_tab",
        "single_flight": False,
    },
    # cached token stale 60 s before expiry; lock across tabs (browser-tabs-lock), waited for 5 s,
    # then getTokenSilently throws a TimeoutError (no renewal without the lock)
    "auth0-spa-js": {
        "trigger": "proactive", "threshold": "60s", "single_flight": True, "cross_tab_lock": True,
        "storage": "per_tab", "lock_timeout": "5s", "on_lock_timeout": "fail",
    },
    # oidc-client-ts 3.5 as the browser lab runs it (loadtests/browser): the user in localStorage,
    # read when a page loads and kept in memory per tab; its Timer, armed when the tab loads a
    # token, polls every 5 s and renews at the first poll at or after exp - 60 s (whole
    # seconds), with the refresh token the store holds then, whether or not a sibling renewed;
    # after a refused renewal the tab keeps its dead session and its timer waits for a new token;
    # an API call's 401 is not the SDK's business (no reactive renewal, no resend)
    "oidc-client-ts-localstorage": {
        "trigger": "timer", "timer_phase": "poll", "check_interval": "5s", "threshold": "60s", "whole_seconds": True,
        "storage": "copied", "single_flight": False, "on_refused": "keep", "max_retries": 0,
    },
    # auth0-spa-js 2.27 as the browser lab runs it: cacheLocation localstorage (shared by every
    # tab, read on every getTokenSilently), stale 60 s before expiry, renewal under a Web Locks
    # lock (atomic) with the cache read again inside it; after invalid_grant the dead refresh
    # token stays in the cache and every later call tries it again; no reactive renewal on a 401;
    # a tab that waits for the lock more than 5 s gets a TimeoutError (its page view fails)
    "auth0-spa-js-localstorage": {
        "trigger": "proactive", "threshold": "60s", "single_flight": True, "cross_tab_lock": True,
        "storage": "shared", "on_refused": "keep", "max_retries": 0, "lock_timeout": "5s", "on_lock_timeout": "fail",
    },
    # tokenRenewalOffsetSeconds 300; concurrent calls share one promise; per-tab sessionStorage
    "msal": {"trigger": "proactive", "threshold": "300s", "single_flight": True, "storage": "per_tab"},
    # updateToken(minValidity=5) before a call; refresh queue
    "keycloak-js": {"trigger": "proactive", "threshold": "5s", "single_flight": True, "storage": "per_tab"},
    # reactive on 401, one shared refresh promise per axios instance
    "axios-auth-refresh": {"trigger": "reactive", "single_flight": True, "storage": "shared"},
    # supabase-js v1 (auth-js before PR 274): one timer per tab at exp - 60 s, session in
    # localStorage shared by every tab, no cross-tab coordination
    "supabase-js-v1": {
        "trigger": "timer", "timer_phase": "exp", "check_interval": "5s", "threshold": "60s", "storage": "shared",
        "single_flight": False,
    },
    # supabase-js v2: an auto-refresh tick every 30 s refreshes when the session expires within
    # three ticks (90 s); localStorage; concurrent refreshes share one promise and a lock across
    # tabs (navigator.locks)
    "supabase-js": {
        "trigger": "timer", "timer_phase": "fixed", "check_interval": "30s", "threshold": "90s", "storage": "shared",
        "single_flight": True, "cross_tab_lock": True,
    },
    # proactive with leeway 60 s, single-flight with a lock
    "authlib": {"trigger": "proactive", "threshold": "60s", "single_flight": True},
}
