"""API tokens: made, checked and revoked here; only their SHA-256 is stored.

A token is looked up by its first characters (`prefix`) and then checked with
`hmac.compare_digest` against the stored hash, so the comparison takes the same time however much of a
guessed token is right. Scopes: `read` (GET endpoints), `submit` (create and cancel jobs, implies `read`),
`admin` (everything).

The API keeps the valid tokens it has seen in a `TokenCache` for `BPBENCH_TOKEN_CACHE_TTL_S` seconds, so a
request with a known token costs no SELECT; a revoked token is therefore refused within that time, not at
once (0 turns the cache off).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.auth.models import TOKEN_SCOPES, ApiToken
from services.core.db import utcnow

PREFIX_LENGTH = 8
# Which token scopes satisfy a required scope.
SATISFIED_BY: dict[str, frozenset[str]] = {
    "read": frozenset({"read", "submit", "admin"}),
    "submit": frozenset({"submit", "admin"}),
    "admin": frozenset({"admin"}),
}
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token (tokens are random, so no salt or slow hash is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_token() -> str:
    """A new random token: `bpb_` and 43 URL-safe characters (256 bits)."""
    return "bpb_" + secrets.token_urlsafe(32)


def _check_scopes(scopes: Iterable[str]) -> list[str]:
    scopes = sorted(set(scopes))
    unknown = [s for s in scopes if s not in TOKEN_SCOPES]
    if unknown or not scopes:
        raise ValueError(f"token scopes {scopes!r}: accepted one or more of {', '.join(TOKEN_SCOPES)}")
    return scopes


def add_token(session: Session, token: str, *, name: str, scopes: Iterable[str]) -> ApiToken:
    """Store `token` (hashed) with these scopes; the caller commits."""
    row = ApiToken(
        name=name, token_hash=hash_token(token), prefix=token[:PREFIX_LENGTH], scopes=_check_scopes(scopes)
    )
    session.add(row)
    session.flush()
    return row


def create_token(session: Session, *, name: str, scopes: Iterable[str]) -> tuple[str, ApiToken]:
    """A new random token with these scopes: (the token, shown once, and its stored row)."""
    token = generate_token()
    return token, add_token(session, token, name=name, scopes=scopes)


def ensure_token(
    session: Session,
    token: str,
    *,
    name: str,
    scopes: Iterable[str] = ("admin",),
    renamed_from: Iterable[str] = (),
) -> ApiToken:
    """Store `token` unless it is already known (revoked stays revoked); used for the first admin token.

    A known token still called one of `renamed_from` (a name an earlier version gave it) takes `name`."""
    existing = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if existing is None:
        return add_token(session, token, name=name, scopes=scopes)
    if existing.name != name and existing.name in set(renamed_from):
        existing.name = name
        session.flush()
    return existing


def authenticate(session: Session, token: str) -> ApiToken | None:
    """The unrevoked token row matching `token`, compared in constant time; None if there is none."""
    if not token:
        return None
    wanted = hash_token(token)
    candidates = session.scalars(
        select(ApiToken).where(ApiToken.prefix == token[:PREFIX_LENGTH], ApiToken.revoked.is_(False))
    ).all()
    match = None
    for row in candidates:
        # Every candidate is compared, so timing says nothing about which one matched.
        if hmac.compare_digest(row.token_hash, wanted):
            match = row
    if match is not None:
        now = utcnow()
        if match.last_used_at is None or now - match.last_used_at > _LAST_USED_RESOLUTION:
            match.last_used_at = now
            session.commit()
    return match


class ScopedToken(Protocol):
    """What a scope check reads of a token: a stored row or its cached `TokenIdentity`."""

    @property
    def revoked(self) -> bool: ...

    @property
    def scopes(self) -> Iterable[str]: ...


def grants(token: ScopedToken, scope: str) -> bool:
    """True if `token` may do what `scope` allows (`submit` implies `read`, `admin` implies all)."""
    return not token.revoked and bool(SATISFIED_BY[scope] & set(token.scopes))


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token row, oldest first (hashes only)."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def active_token_named(session: Session, name: str) -> ApiToken | None:
    """The unrevoked token called `name`, if any (names of unrevoked tokens are unique by convention)."""
    return session.scalar(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked.is_(False)))


def find_active_tokens(session: Session, name_or_prefix: str, *, min_prefix: int) -> list[ApiToken]:
    """Unrevoked tokens whose name is `name_or_prefix`, whose prefix starts with it (at least `min_prefix`
    characters, so that a typo does not match many), or which it is (the whole token)."""
    wanted = name_or_prefix.strip()
    digest = hash_token(wanted)

    def matches(row: ApiToken) -> bool:
        if row.name == wanted:
            return True
        if len(wanted) <= len(row.prefix):
            return len(wanted) >= min_prefix and row.prefix.startswith(wanted)
        return row.token_hash == digest  # the whole token was given

    return [row for row in list_tokens(session) if not row.revoked and matches(row)]


def revoke_token(session: Session, token_id: int) -> ApiToken | None:
    """Mark a token revoked; the caller commits. None if no such token."""
    row = session.get(ApiToken, token_id)
    if row is not None and not row.revoked:
        row.revoked = True
        row.revoked_at = utcnow()
    return row


@dataclass(frozen=True)
class TokenIdentity:
    """A valid token as the API remembers it between requests: who it is and what it may do."""

    id: int
    name: str
    scopes: tuple[str, ...]
    revoked: bool = False

    @classmethod
    def of(cls, row: ApiToken) -> TokenIdentity:
        """The identity of a stored token row."""
        return cls(id=row.id, name=row.name, scopes=tuple(row.scopes), revoked=row.revoked)


class TokenCache:
    """Valid tokens seen by this process, each kept `ttl_s` seconds (0: nothing is kept).

    Only valid tokens are kept: an unknown token is looked up every time, so a token made a moment ago works
    at once, and a revoked one keeps working here until its entry expires, at most `ttl_s` later. Entries
    are keyed by the token's SHA-256, never the token itself; at most `max_entries` are kept (oldest first
    out).
    """

    def __init__(
        self, ttl_s: float, *, max_entries: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, TokenIdentity]] = {}

    def get(self, token: str) -> TokenIdentity | None:
        """The cached identity of `token`, or None when it is not cached or its entry expired."""
        if self.ttl_s <= 0:
            return None
        key = hash_token(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            self._entries.pop(key, None)
            return None
        return entry[1]

    def put(self, token: str, identity: TokenIdentity) -> None:
        """Remember a valid token for `ttl_s` seconds from now."""
        if self.ttl_s <= 0 or identity.revoked:
            return
        while len(self._entries) >= self.max_entries:
            # dicts keep insertion order: the first key is the oldest entry.
            self._entries.pop(next(iter(self._entries)), None)
        self._entries[hash_token(token)] = (self._clock() + self.ttl_s, identity)
