"""API tokens: only a SHA-256 of each token is stored; `prefix` (its first characters) names it in lists."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from services.core.config import MAX_TOKEN_NAME_CHARS
from services.core.db import Base, utcnow

TOKEN_SCOPES: tuple[str, ...] = ("read", "submit", "admin")


class ApiToken(Base):
    """A bearer token with scopes `read`, `submit` and/or `admin`; revoked tokens are kept, marked."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(MAX_TOKEN_NAME_CHARS))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, doc="hex SHA-256 of the token")
    prefix: Mapped[str] = mapped_column(String(16), doc="the token's first characters, for display")
    scopes: Mapped[list[str]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    revoked_at: Mapped[datetime | None] = mapped_column()

    def has_scope(self, scope: str) -> bool:
        """True if the token grants `scope`; `admin` grants every scope."""
        return not self.revoked and (scope in self.scopes or "admin" in self.scopes)

    def __repr__(self) -> str:
        return f"ApiToken(name={self.name!r}, prefix={self.prefix!r}, scopes={self.scopes!r})"
