"""BPBENCH_API_TOKEN is stored under the name the API is given (`BPBENCH_API_TOKEN_NAME`), and a token an
earlier version stored under the default name takes it: on both databases."""

from __future__ import annotations

import secrets

from sqlalchemy.orm import Session

from services.api.main import bootstrap_token
from services.auth.service import add_token, authenticate
from services.core.config import DEFAULT_API_TOKEN_NAME, Settings

UP_NAME = "the token `bpbench up` made (/srv/bpbench-data/api-token)"


def settings_of(service_settings: Settings, token: str, name: str) -> Settings:
    return service_settings.model_copy(update={"api_token": token, "api_token_name": name})


def test_the_api_token_is_stored_under_the_name_it_is_given(
    service_settings: Settings, db_session: Session
) -> None:
    token = f"bpb_{secrets.token_urlsafe(16)}"
    bootstrap_token(settings_of(service_settings, token, UP_NAME))
    row = authenticate(db_session, token)
    assert row is not None and (row.name, row.scopes) == (UP_NAME, ["admin"])


def test_a_token_stored_under_the_default_name_takes_the_name_it_is_given_now(
    service_settings: Settings, db_session: Session
) -> None:
    token = f"bpb_{secrets.token_urlsafe(16)}"
    add_token(db_session, token, name=DEFAULT_API_TOKEN_NAME, scopes=["admin"])
    db_session.commit()
    bootstrap_token(settings_of(service_settings, token, UP_NAME))
    db_session.expire_all()
    row = authenticate(db_session, token)
    assert row is not None and row.name == UP_NAME


def test_a_token_a_person_named_keeps_its_name(service_settings: Settings, db_session: Session) -> None:
    token = f"bpb_{secrets.token_urlsafe(16)}"
    add_token(db_session, token, name="ci runner", scopes=["admin"])
    db_session.commit()
    bootstrap_token(settings_of(service_settings, token, UP_NAME))
    db_session.expire_all()
    row = authenticate(db_session, token)
    assert row is not None and row.name == "ci runner"
