"""Optional API keys: who may call which model, who may administer, how often.

Keys are compared in constant time and never logged; a key is known only by
its name in logs and errors.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable

from .config import AuthConfig, AuthKey
from .errors import Forbidden, TooManyRequests, Unauthorized


def _digest(secret: str) -> bytes:
    """Equal-length digests, so the comparison does not reveal a key's length either.
    ``surrogateescape`` keeps header bytes that are not UTF-8 (aiohttp decodes them so)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


class RateLimiter:
    """A token bucket per key: ``per_min`` requests a minute, bursting up to that many."""

    def __init__(self, per_min: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_min)
        self.rate = per_min / 60.0
        self.tokens = float(per_min)
        self.clock = clock
        self.stamp = clock()

    def take(self) -> float:
        """0 when allowed, else the seconds until a request would be."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


# Who a request is when the gateway has no keys: anyone may do anything.
ANYONE = AuthKey(name="anyone", key="", models="*", admin=True)


class Authenticator:
    """Open access: the null object used when no key is configured."""

    def identify(self, authorization: str | None) -> AuthKey:
        """The key a request presents (401 for a bad or missing one where keys are on)."""
        return ANYONE

    def check_rate(self, key: AuthKey) -> None:
        """429 with Retry-After when the key is over its rate limit."""

    @staticmethod
    def may_use(key: AuthKey, model: str) -> bool:
        return key.models == "*" or model in key.models

    def require_model(self, key: AuthKey, model: str) -> None:
        if not self.may_use(key, model):
            raise Forbidden(f"key '{key.name}' may not use model '{model}'")

    def require_admin(self, authorization: str | None) -> None:
        key = self.identify(authorization)
        if not key.admin:
            raise Forbidden(f"key '{key.name}' is not an admin key")

    def require_status(self, authorization: str | None) -> None:
        """Status, events and metrics: open unless ``auth.protect_status``."""


class KeyAuthenticator(Authenticator):
    """API keys from the config, compared in constant time."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.digests = [(_digest(key.key), key) for key in config.keys]
        self.limiters = {key.name: RateLimiter(key.rate_limit_per_min)
                         for key in config.keys if key.rate_limit_per_min}

    def identify(self, authorization: str | None) -> AuthKey:
        presented = ""
        if authorization and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        if not presented:
            raise Unauthorized("missing API key: send 'Authorization: Bearer KEY'")
        match = None
        digest = _digest(presented)
        for expected, key in self.digests:
            # Compare with every key, so timing does not tell which one was close.
            if hmac.compare_digest(digest, expected):
                match = key
        if match is None:
            raise Unauthorized("invalid API key")
        return match

    def check_rate(self, key: AuthKey) -> None:
        limiter = self.limiters.get(key.name)
        if limiter is None:
            return
        wait = limiter.take()
        if wait > 0:
            raise TooManyRequests(
                f"rate limit of key '{key.name}' exceeded ({key.rate_limit_per_min} requests per "
                "minute)", headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def require_status(self, authorization: str | None) -> None:
        if self.config.protect_status:
            self.identify(authorization)


def authenticator(config: AuthConfig | None) -> Authenticator:
    """Keys when the config has any, else open access."""
    if config is None or not config.keys:
        return Authenticator()
    return KeyAuthenticator(config)
