"""Schemas of ``/session`` and ``/tokens``. Passwords and tokens are write-only, except a new
token, shown once in the answer that creates it."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from correspond.auth import MAX_PASSWORD_CHARS, NewToken
from correspond.store.users import ApiToken, User

__all__ = [
    "Login",
    "NewTokenPublic",
    "TokenCreate",
    "TokenPublic",
    "UserPublic",
    "new_token_public",
    "token_public",
    "user_public",
]


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=1, max_length=320)
    password: SecretStr = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        if "\x00" in value.get_secret_value():
            raise ValueError("the password contains a NUL character")
        return value


class UserPublic(BaseModel):
    id: int
    email: str
    display_name: str
    role: str


def user_public(user: User) -> UserPublic:
    return UserPublic(id=user.id, email=user.email, display_name=user.display_name, role=user.role)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="What the token is for")


class TokenPublic(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="The token's first characters, to recognise it")
    user: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewTokenPublic(TokenPublic):
    token: str = Field(description="The token itself: shown this once, never again")


def token_public(t: ApiToken) -> TokenPublic:
    return TokenPublic(
        id=t.id,
        name=t.name,
        prefix=t.prefix,
        user=t.user_email,
        created_at=t.created_at,
        last_used_at=t.last_used_at,
        revoked_at=t.revoked_at,
    )


def new_token_public(t: NewToken) -> NewTokenPublic:
    return NewTokenPublic(token=t.token, **token_public(t.info).model_dump())
