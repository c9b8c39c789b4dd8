"""Settings loading, JWT verification and the CLI's token / genconfig commands."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from pydantic import ValidationError

from signalling.auth import Identity, Role, TokenVerifier, load_keys, mint_token
from signalling.cli import genconfig, main
from signalling.clock import SystemClock
from signalling.errors import AuthError, ConfigError
from signalling.settings import Settings

SECRET = "s" * 40


def test_env_nesting_and_unknown_keys_rejected() -> None:
    s = Settings.from_env({"JALWA_HUB__RATE_PER_S": "7", "JALWA_ENV": "production", "PATH": "x"})
    assert s.hub.rate_per_s == 7 and s.env == "production"
    with pytest.raises(ValidationError, match="bogus"):
        Settings.from_env({"JALWA_BOGUS": "1"})
    with pytest.raises(ValidationError, match="rate_per_sec"):
        Settings.from_env({"JALWA_HUB__RATE_PER_SEC": "1"})
    with pytest.raises(ValidationError):
        Settings.from_env({"JALWA_AUTH__SECRET": "short"})


def test_production_says_what_is_missing(tmp_path: Path) -> None:
    s = Settings.from_env({"JALWA_ENV": "production"})
    problems = " ".join(s.production_problems())
    assert "JALWA_AUTH__SECRET" in problems and "JALWA_REDIS_URL" in problems
    with pytest.raises(ConfigError, match="JALWA_AUTH__SECRET"):
        load_keys(s, create_dev_key=True)
    from signalling.app import create_app

    with pytest.raises(ConfigError, match="JALWA_REDIS_URL"):
        create_app(s)
    assert "JALWA_DATABASE_URL" in problems and "JALWA_MONGO_URL" in problems
    ok = Settings.from_env(
        {
            "JALWA_ENV": "production",
            "JALWA_AUTH__SECRET": SECRET,
            "JALWA_REDIS_URL": "redis://x",
            "JALWA_DATABASE_URL": "postgresql://x",
            "JALWA_MONGO_URL": "mongodb://x",
        }
    )
    assert ok.production_problems() == []


def test_dev_key_created_once_and_shared(tmp_path: Path) -> None:
    s = Settings.model_validate({"auth": {"dev_key_file": tmp_path / "k"}})
    with pytest.raises(ConfigError, match="no development key"):
        load_keys(s, create_dev_key=False)
    first = load_keys(s, create_dev_key=True)
    again = load_keys(s, create_dev_key=False)
    assert first.dev and first.verify_key == again.verify_key
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600


def hs_settings(**auth: object) -> Settings:
    return Settings.model_validate({"auth": {"secret": SECRET, **auth}})


def test_verify_pins_algorithm_and_requires_exp() -> None:
    s = hs_settings()
    keys = load_keys(s, create_dev_key=False)
    verifier = TokenVerifier(keys, s.auth)
    good = mint_token(keys, s.auth, Identity("u1", Role.HOST, "U"), ttl_s=60, clock=SystemClock())
    assert verifier.verify(good) == Identity("u1", Role.HOST, "U")
    no_exp = jwt.encode({"sub": "u1", "role": "host"}, SECRET, algorithm="HS256")
    hs512 = jwt.encode({"sub": "u1", "role": "host", "exp": 2**40}, SECRET * 2, algorithm="HS512")
    unsigned = jwt.encode({"sub": "u1", "role": "host", "exp": 2**40}, "", algorithm="none")
    other_key = jwt.encode({"sub": "u1", "role": "host", "exp": 2**40}, "x" * 40, algorithm="HS256")
    with pytest.raises(AuthError, match="alg"):
        verifier.verify(hs512)  # refused for its algorithm, before any key is tried
    for bad in (no_exp, unsigned, other_key, good[:-3] + "abc", ""):
        with pytest.raises(AuthError):
            verifier.verify(bad)
    old = mint_token(keys, s.auth, Identity("u1", Role.HOST, "U"), ttl_s=-30, clock=SystemClock())
    with pytest.raises(AuthError) as info:
        verifier.verify(old)
    assert info.value.code == "token_expired"


def test_audience_and_issuer_checked_when_configured() -> None:
    s = hs_settings(audience="app", issuer="jalwa-auth")
    keys = load_keys(s, create_dev_key=False)
    verifier = TokenVerifier(keys, s.auth)
    ident = Identity("u1", Role.CALLER, "U")
    token = mint_token(keys, s.auth, ident, ttl_s=60, clock=SystemClock())
    assert verifier.verify(token).user_id == "u1"
    wrong_aud = jwt.encode(
        {"sub": "u1", "role": "caller", "exp": 2**40, "aud": "other", "iss": "jalwa-auth"},
        SECRET,
        algorithm="HS256",
    )
    no_iss = jwt.encode({"sub": "u1", "role": "caller", "exp": 2**40, "aud": "app"}, SECRET)
    for bad in (wrong_aud, no_iss):
        with pytest.raises(AuthError):
            verifier.verify(bad)


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "", "role": "caller"},
        {"sub": "a b", "role": "caller"},
        {"sub": 5, "role": "caller"},
        {"sub": "x" * 65, "role": "caller"},
        {"sub": "ok", "role": "superuser"},
        {"sub": "ok", "role": "caller", "name": "bad\nname"},
    ],
)
def test_bad_claims(claims: dict[str, object]) -> None:
    s = hs_settings()
    verifier = TokenVerifier(load_keys(s, create_dev_key=False), s.auth)
    with pytest.raises(AuthError):
        verifier.verify(jwt.encode({**claims, "exp": 2**40}, SECRET, algorithm="HS256"))


def test_cli_token_is_verifiable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"JALWA_AUTH__DEV_KEY_FILE": str(tmp_path / "k")}
    assert main(["token", "--user", "h1", "--role", "host", "--name", "Asha"], env) == 0
    token = capsys.readouterr().out.strip()
    s = Settings.from_env(env)
    ident = TokenVerifier(load_keys(s, create_dev_key=False), s.auth).verify(token)
    assert ident == Identity("h1", Role.HOST, "Asha")
    assert main(["token", "--user", "bad id", "--role", "host"], env) == 2
    assert "user id" in capsys.readouterr().err


def test_cli_bad_settings_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["genconfig"], {"JALWA_NOPE": "1"}) == 2
    assert "nope" in capsys.readouterr().err


def test_genconfig_lists_every_setting() -> None:
    text = genconfig()
    for key in (
        "JALWA_ENV=development",
        "JALWA_HUB__RATE_PER_S=50.0",
        "# JALWA_AUTH__SECRET=",
        "JALWA_PRESENCE__TTL_S=15",
        "# JALWA_REDIS_URL=",
        "JALWA_HUB__ICE_SERVERS=[]",
    ):
        assert key in text
    lines = [ln for ln in text.splitlines() if ln.lstrip("# ").startswith("JALWA_")]
    env = {}
    for ln in lines:
        if not ln.startswith("#"):
            key, _, value = ln.partition("=")
            env[key] = value
    assert Settings.from_env(env).hub == Settings().hub  # the printed defaults load back
