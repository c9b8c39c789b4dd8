"""JWT identities: verify (hub), mint (`jalwa token`), and the development key file.

Algorithms are pinned to the one configured, so a token cannot choose its own (no ``none``,
no HS256-with-a-public-key confusion). ``exp`` is always required.
"""

from __future__ import annotations

import enum
import os
import re
import secrets
from dataclasses import dataclass

import jwt

from .clock import Clock
from .errors import AuthError, ConfigError
from .protocol import UserInfo
from .settings import AuthSettings, Settings

USER_ID_RE = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")
MAX_NAME_CHARS = 64
PROFILE_WORD_RE = re.compile(r"^[a-z0-9_-]{1,32}$")


class Role(enum.StrEnum):
    CALLER = "caller"
    HOST = "host"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Profile:
    """What callers filter hosts on (§10). From the token's ``lang``, ``gender`` and
    ``tags`` claims, signed by the app's auth service, so nobody can forge their own."""

    languages: tuple[str, ...] = ()
    gender: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    role: Role
    name: str
    profile: Profile = Profile()


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """What verifying and (optionally) minting need; ``dev`` marks the development key."""

    algorithm: str
    verify_key: str | bytes
    signing_key: str | bytes | None
    dev: bool


def load_keys(settings: Settings, *, create_dev_key: bool) -> KeyMaterial:
    auth = settings.auth
    if auth.secret is not None:
        secret = auth.secret.get_secret_value().encode()
        return KeyMaterial(auth.algorithm, secret, secret, dev=False)
    if auth.public_key is not None:
        signing: bytes | None = None
        if auth.private_key_file is not None:
            signing = auth.private_key_file.read_bytes()
        return KeyMaterial(auth.algorithm, auth.public_key, signing, dev=False)
    if settings.env == "production":
        raise ConfigError("production needs JALWA_AUTH__SECRET or JALWA_AUTH__PUBLIC_KEY")
    if auth.algorithm != "HS256":
        raise ConfigError(f"{auth.algorithm} needs JALWA_AUTH__PUBLIC_KEY; no dev key for it")
    secret = _dev_secret(auth, create=create_dev_key)
    return KeyMaterial("HS256", secret, secret, dev=True)


def _dev_secret(auth: AuthSettings, *, create: bool) -> bytes:
    path = auth.dev_key_file
    if path.exists():
        data = path.read_bytes().strip()
        if len(data) < 32:
            raise ConfigError(f"development key file {path} is too short; delete it")
        return data
    if not create:
        raise ConfigError(f"no development key at {path}: run `jalwa serve` once or set a key")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_urlsafe(48).encode()
    # O_EXCL: two processes starting at once must not both write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _dev_secret(auth, create=False)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data + b"\n")
    return data


_JWT_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidSignatureError, ": bad signature"),
    (jwt.InvalidAlgorithmError, ": algorithm not accepted"),
    (jwt.InvalidAudienceError, ": wrong audience"),
    (jwt.InvalidIssuerError, ": wrong issuer"),
    (jwt.ImmatureSignatureError, ": not valid yet"),
    (jwt.DecodeError, ": malformed"),
)


class TokenVerifier:
    def __init__(self, keys: KeyMaterial, auth: AuthSettings) -> None:
        self._keys = keys
        self._audience = auth.audience
        self._issuer = auth.issuer
        self._leeway = auth.leeway_s
        required = ["exp", "sub"]
        if auth.audience is not None:
            required.append("aud")
        if auth.issuer is not None:
            required.append("iss")
        self._options: jwt.types.Options = {"require": required}

    def verify(self, token: str) -> Identity:
        if not token:
            raise AuthError("missing token", code="token_missing")
        try:
            claims = jwt.decode(
                token,
                self._keys.verify_key,
                algorithms=[self._keys.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired", code="token_expired") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"invalid token: no {exc.claim} claim", code="token_invalid") from exc
        except jwt.PyJWTError as exc:
            # A fixed text per kind of failure: the library's message can echo the token's
            # bytes and decoder internals back to whoever sent it.
            reason = next((text for kind, text in _JWT_REASONS if isinstance(exc, kind)), "")
            raise AuthError(f"invalid token{reason}", code="token_invalid") from exc
        return identity_from_claims(claims)


def identity_from_claims(claims: dict[str, object]) -> Identity:
    sub, role, name = claims.get("sub"), claims.get("role"), claims.get("name", "")
    if not isinstance(sub, str) or not USER_ID_RE.match(sub):
        raise AuthError("claim sub must be 1-64 of [A-Za-z0-9_.@:-]", code="token_invalid")
    if role not in {r.value for r in Role}:
        raise AuthError("claim role must be caller, host or admin", code="token_invalid")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise AuthError("claim name must be printable text up to 64 chars", code="token_invalid")
    return Identity(user_id=sub, role=Role(str(role)), name=name or sub, profile=_profile(claims))


def _words(value: object, claim: str, *, most: int) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > most:
        raise AuthError(f"claim {claim}: a word or a list of up to {most}", code="token_invalid")
    for item in items:
        if not isinstance(item, str) or not PROFILE_WORD_RE.match(item):
            raise AuthError(f"claim {claim}: words of 1-32 [a-z0-9_-]", code="token_invalid")
    return tuple(items)


def _profile(claims: dict[str, object]) -> Profile:
    gender = _words(claims.get("gender", []), "gender", most=1)
    return Profile(
        languages=_words(claims.get("lang", []), "lang", most=10),
        gender=gender[0] if gender else None,
        tags=_words(claims.get("tags", []), "tags", most=20),
    )


def mint_token(
    keys: KeyMaterial,
    auth: AuthSettings,
    identity: Identity,
    *,
    ttl_s: int,
    clock: Clock,
) -> str:
    if keys.signing_key is None:
        raise ConfigError("no signing key: set JALWA_AUTH__PRIVATE_KEY_FILE to mint tokens")
    if not USER_ID_RE.match(identity.user_id):
        raise ConfigError("user id must be 1-64 of [A-Za-z0-9_.@:-]")
    now = int(clock.time())
    claims: dict[str, object] = {
        "sub": identity.user_id,
        "role": identity.role.value,
        "name": identity.name,
        "iat": now,
        "exp": now + ttl_s,
    }
    profile = identity.profile
    if profile.languages:
        claims["lang"] = list(profile.languages)
    if profile.gender is not None:
        claims["gender"] = profile.gender
    if profile.tags:
        claims["tags"] = list(profile.tags)
    if auth.audience is not None:
        claims["aud"] = auth.audience
    if auth.issuer is not None:
        claims["iss"] = auth.issuer
    return jwt.encode(claims, keys.signing_key, algorithm=keys.algorithm)


def user_info(identity: Identity) -> UserInfo:
    """How a user is shown to others in protocol messages."""
    return UserInfo(id=identity.user_id, role=identity.role.value, name=identity.name)
