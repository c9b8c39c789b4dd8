"""turn/: REST credentials (known vectors, expiry maths), settings rules, coturn config."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from turn.config import PLACEHOLDER_SECRET, denied_peer_ranges, render, template
from turn.credentials import (
    BadUserId,
    TurnCredential,
    TurnError,
    ice_servers,
    mint,
    password_for,
    verify,
)
from turn.settings import TurnSettings

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"north-star-turn-secret"
NOW = 1_700_000_000.75
# Cross-checked with an independent implementation (openssl):
#   printf '%s' '1700003600:alice' \
#   | openssl dgst -sha1 -hmac north-star-turn-secret -binary | base64
VECTOR_USERNAME = "1700003600:alice"
VECTOR_PASSWORD = "svDID3mD5aV+HFWsEcEI5oBBs6I="
LONG_SECRET = "s3cret-" + "x" * 40


def turn_settings(**overrides: Any) -> TurnSettings:
    return TurnSettings.model_validate({"secret": LONG_SECRET, **overrides})


# --- credentials -------------------------------------------------------------------------------


def test_mint_matches_the_known_vector() -> None:
    cred = mint(SECRET, "alice", ttl_s=3600, now=NOW)

    assert cred == TurnCredential(VECTOR_USERNAME, VECTOR_PASSWORD, 1_700_003_600)


def test_password_is_base64_hmac_sha1_of_the_username() -> None:
    cred = mint(SECRET, "user-42", ttl_s=600, now=NOW)

    by_hand = base64.b64encode(hmac.new(SECRET, cred.username.encode(), hashlib.sha1).digest())
    assert cred.password == by_hand.decode()
    assert len(base64.b64decode(cred.password)) == 20  # a SHA-1 digest


def test_username_is_expiry_colon_user_id() -> None:
    cred = mint(SECRET, "u:with:colons", ttl_s=60, now=NOW)

    assert re.fullmatch(r"\d+:u:with:colons", cred.username)
    expiry, _, user = cred.username.partition(":")
    assert (int(expiry), user) == (cred.expires_at, "u:with:colons")


@pytest.mark.parametrize(("now", "ttl", "expires"), [(NOW, 3600, 1_700_003_600), (0.999, 60, 60)])
def test_expiry_is_whole_seconds_now_plus_ttl(now: float, ttl: int, expires: int) -> None:
    assert mint(SECRET, "alice", ttl_s=ttl, now=now).expires_at == expires


def test_verify_accepts_until_the_expiry_second_and_refuses_after() -> None:
    cred = mint(SECRET, "alice", ttl_s=60, now=NOW)

    assert verify(SECRET, cred.username, cred.password, now=NOW)
    assert verify(SECRET, cred.username, cred.password, now=cred.expires_at)
    assert not verify(SECRET, cred.username, cred.password, now=cred.expires_at + 0.001)


def test_verify_refuses_forged_and_transplanted_credentials() -> None:
    cred = mint(SECRET, "alice", ttl_s=60, now=NOW)
    expiry = cred.username.split(":", 1)[0]

    assert not verify(b"another secret", cred.username, cred.password, now=NOW)
    assert not verify(SECRET, cred.username, password_for(b"forged", cred.username), now=NOW)
    assert not verify(SECRET, f"{expiry}:mallory", cred.password, now=NOW)
    assert not verify(SECRET, f"{int(expiry) + 999}:alice", cred.password, now=NOW)
    for malformed in ("alice", ":alice", "soon:alice", f"{expiry}:"):
        assert not verify(SECRET, malformed, password_for(SECRET, malformed), now=NOW)


@pytest.mark.parametrize("user_id", ["", "a\nb", "tab\there", "x" * 401])
def test_mint_refuses_unusable_user_ids(user_id: str) -> None:
    with pytest.raises(BadUserId):
        mint(SECRET, user_id, ttl_s=60, now=NOW)


@pytest.mark.parametrize(("secret", "ttl"), [(b"", 60), (SECRET, 0), (SECRET, -5)])
def test_mint_refuses_empty_secret_and_non_positive_ttl(secret: bytes, ttl: int) -> None:
    with pytest.raises(TurnError):
        mint(secret, "alice", ttl_s=ttl, now=NOW)


def test_ice_servers_are_empty_without_a_secret() -> None:
    assert ice_servers(TurnSettings(), "alice", now=NOW) == []
    assert ice_servers(turn_settings(urls=[]), "alice", now=NOW) == []


def test_ice_servers_carry_every_url_and_a_verifiable_credential() -> None:
    settings = turn_settings(ttl_s=900, urls=["turn:turn.example.com:3478?transport=udp"])

    [server] = ice_servers(settings, "alice", now=NOW)

    assert server["urls"] == ["turn:turn.example.com:3478?transport=udp"]
    assert server["username"] == f"{int(NOW) + 900}:alice"
    assert verify(LONG_SECRET.encode(), server["username"], server["credential"], now=NOW)
    assert set(server) == {"urls", "username", "credential"}


# --- settings ----------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = TurnSettings()

    assert (s.secret, s.realm, s.ttl_s) == (None, "jalwa", 3600)
    assert (s.listening_ip, s.listening_port, s.min_port, s.max_port) == (
        "127.0.0.1",
        3478,
        49160,
        49200,
    )
    assert s.urls == ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"]
    assert not s.allow_loopback_peers and not s.production


def test_every_setting_is_described_for_genconfig() -> None:
    assert (TurnSettings.__doc__ or "").strip()
    for name, field in TurnSettings.model_fields.items():
        assert field.description and "\n" not in field.description, name


def test_settings_are_frozen_and_reject_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        TurnSettings.model_validate({"sekret": "x"})
    s = TurnSettings()
    with pytest.raises(ValidationError):
        s.ttl_s = 10  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad",
    [
        {"ttl_s": 59},
        {"secret": "too-short"},
        {"secret": "x" * 40 + "\nno-cli"},
        {"secret": "x" * 40 + " #comment"},
        {"secret": "x" * 40 + '"'},
        {"realm": "bad realm"},
        {"urls": ["http://example.com"]},
        {"listening_ip": "localhost"},
        {"min_port": 50000, "max_port": 49999},
        {"production": True, "allow_loopback_peers": True},
        {"log_file": "/tmp/a\nno-cli"},
    ],
)
def test_settings_refuse(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TurnSettings.model_validate(bad)


def test_secret_is_hidden_in_reprs() -> None:
    assert LONG_SECRET not in repr(turn_settings())


def test_production_problems() -> None:
    assert len(TurnSettings(production=True).production_problems()) == 1
    assert turn_settings(production=True).production_problems() == []


# --- coturn config -----------------------------------------------------------------------------


def directives(conf: str) -> list[str]:
    return [line for line in conf.splitlines() if line and not line.startswith("#")]


def test_render_has_the_required_directives() -> None:
    settings = turn_settings(realm="calls.example.com", listening_port=3479)

    lines = directives(render(settings, production=False))

    for required in (
        "listening-ip=127.0.0.1",
        "listening-port=3479",
        "min-port=49160",
        "max-port=49200",
        "realm=calls.example.com",
        "use-auth-secret",
        f"static-auth-secret={LONG_SECRET}",
        "fingerprint",
        "no-cli",
        "no-tls",
        "no-dtls",
        "no-multicast-peers",
        "log-file=stdout",
    ):
        assert required in lines
    assert len(lines) == len(set(lines))
    assert not [line for line in lines if line.startswith(("denied-peer-ip", "allowed-peer-ip"))]
    assert "allow-loopback-peers" not in lines


def test_production_denies_private_and_loopback_peers() -> None:
    lines = directives(render(turn_settings(production=True), production=True))

    denied = {line.removeprefix("denied-peer-ip=") for line in lines if "denied-peer" in line}
    for required in (
        "0.0.0.0-0.255.255.255",
        "10.0.0.0-10.255.255.255",
        "100.64.0.0-100.127.255.255",
        "127.0.0.0-127.255.255.255",
        "169.254.0.0-169.254.255.255",
        "172.16.0.0-172.31.255.255",
        "192.168.0.0-192.168.255.255",
        "::1",
        "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ):
        assert required in denied
    assert denied == set(denied_peer_ranges())
    assert "allow-loopback-peers" not in lines
    assert not [line for line in lines if line.startswith("allowed-peer-ip")]


def test_loopback_peers_only_when_explicitly_allowed() -> None:
    lines = directives(render(turn_settings(allow_loopback_peers=True), production=True))

    assert "allow-loopback-peers" in lines
    assert [line for line in lines if line.startswith("allowed-peer-ip")] == [
        "allowed-peer-ip=127.0.0.1"
    ]
    assert "denied-peer-ip=127.0.0.0-127.255.255.255" in lines


def test_log_file_setting() -> None:
    conf = render(turn_settings(log_file="/var/log/turn/jalwa.log"), production=False)

    assert "log-file=/var/log/turn/jalwa.log" in directives(conf)


def test_render_refuses_a_missing_or_placeholder_secret() -> None:
    with pytest.raises(TurnError, match="not set"):
        render(TurnSettings(), production=True)
    with pytest.raises(TurnError, match="placeholder"):
        render(turn_settings(secret=PLACEHOLDER_SECRET), production=True)


def test_configs_turnserver_conf_is_the_rendered_template() -> None:
    shipped = (ROOT / "configs" / "turnserver.conf").read_text()

    assert shipped == template(), "re-generate configs/turnserver.conf from turn.config.template()"
    assert f"static-auth-secret={PLACEHOLDER_SECRET}" in directives(shipped)
    assert "generated by `jalwa turn-config`" in shipped.splitlines()[0]
    assert "allow-loopback-peers" not in directives(shipped)
