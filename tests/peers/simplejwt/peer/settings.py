"""Settings of a stock djangorestframework-simplejwt server, used as a third-party peer by the
tests. Only configuration: the token logic is simplejwt's own.

Environment:
- ``PEER_DB``: SQLite file (required);
- ``PEER_ROTATE``: ``1`` turns ROTATE_REFRESH_TOKENS and BLACKLIST_AFTER_ROTATION on;
- ``PEER_ACCESS_S`` / ``PEER_REFRESH_S``: token lifetimes in seconds (defaults: simplejwt's 300 / 86400).
"""

import os
from datetime import timedelta

SECRET_KEY = "peer-tests-only-not-a-secret-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "peer.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    # records every refresh token issued (OutstandingToken) and every blacklisted one
    "rest_framework_simplejwt.token_blacklist",
]

MIDDLEWARE = []

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["PEER_DB"],
        # threads of runserver write concurrently: wait for the lock instead of failing
        "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
    }
}

# logins hash passwords: the fastest hasher keeps the peer from being the bottleneck
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework_simplejwt.authentication.JWTAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}

ROTATE = os.environ.get("PEER_ROTATE", "0") == "1"
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=float(os.environ.get("PEER_ACCESS_S", "300"))),
    "REFRESH_TOKEN_LIFETIME": timedelta(seconds=float(os.environ.get("PEER_REFRESH_S", "86400"))),
    "ROTATE_REFRESH_TOKENS": ROTATE,
    "BLACKLIST_AFTER_ROTATION": ROTATE,
    "UPDATE_LAST_LOGIN": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    # the request log ("POST /api/token/refresh/ HTTP/1.1" 200 ...) is the server's record of calls
    "loggers": {"django.server": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
