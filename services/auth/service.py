"""API tokens: made, checked and revoked here; only their SHA-256 is stored.

A token is looked up by its first characters (`prefix`) and then checked with
`hmac.compare_digest` against the stored hash, so the comparison takes the same time however much of a
guessed token is right. Scopes: `read` (GET endpoints), `submit` (create and cancel jobs, implies `read`),
`admin` (everything).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import timedelta

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


def ensure_token(session: Session, token: str, *, name: str, scopes: Iterable[str] = ("admin",)) -> ApiToken:
    """Store `token` unless it is already known (revoked stays revoked); used for the first admin token."""
    existing = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if existing is not None:
        return existing
    return add_token(session, token, name=name, scopes=scopes)


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


def grants(token: ApiToken, scope: str) -> bool:
    """True if `token` may do what `scope` allows (`submit` implies `read`, `admin` implies all)."""
    return not token.revoked and bool(SATISFIED_BY[scope] & set(token.scopes))


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token row, oldest first (hashes only)."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, token_id: int) -> ApiToken | None:
    """Mark a token revoked; the caller commits. None if no such token."""
    row = session.get(ApiToken, token_id)
    if row is not None and not row.revoked:
        row.revoked = True
        row.revoked_at = utcnow()
    return row
