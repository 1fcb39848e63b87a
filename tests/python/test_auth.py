"""Tokens against a real issuer (oidc-provider from npm) and a `lakescore serve` that
requires them, with per-model grants (default_permission = "granted")."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pyarrow.parquet as pq
import pytest

import lakescore
from lakescore import Registry, Scorer
from lakescore.auth import CallableToken, CliToken, jwt_expiry, token_provider

from conftest import RESOURCE, Issuer, Proc, lakescore_bin, unique

RF_FEATURES = [f"f{i}" for i in range(20)]


@pytest.fixture(scope="module")
def owned_model(auth_server: Proc, issuer: Issuer, models: Path) -> str:
    """A model the writer app owns (and so, with granted permissions, only it reaches)."""
    name = unique("owned")
    reg = Registry(auth_server.url, token=issuer.token_fn("writer-app"))
    reg.register(name, models / "rf.onnx", create_model=True, alias="champion")
    return name


def test_tokens_as_strings_and_their_absence(auth_server: Proc, issuer: Issuer, owned_model: str, models: Path) -> None:
    writer = issuer.token("writer-app")
    exp = jwt_expiry(writer)
    assert exp is not None and 250 < exp - time.time() <= 300
    reg = Registry(auth_server.url, token=writer)
    assert reg.get_model(owned_model).created_by == "writer-app"
    rows = pq.read_table(models / "rf.rows.parquet")
    scored = Scorer(auth_server.flight, token=writer).score(rows, model=f"{owned_model}@champion",
                                                             feature_columns=RF_FEATURES)
    assert scored.num_rows == 200

    with pytest.raises(lakescore.Unauthenticated) as e:
        Registry(auth_server.url, token="").get_model(owned_model)
    assert e.value.status == 401
    with pytest.raises(lakescore.Unauthenticated):
        Scorer(auth_server.flight, token="").describe(f"{owned_model}@champion")
    elsewhere = issuer.token("writer-app", resource="api://other")
    with pytest.raises(lakescore.Unauthenticated) as e2:
        Registry(auth_server.url, token=elsewhere).get_model(owned_model)
    assert "audience" in e2.value.detail
    with pytest.raises(lakescore.Unauthenticated) as e3:
        Scorer(auth_server.flight, token=elsewhere).score(rows, model=owned_model, feature_columns=RF_FEATURES)
    assert "audience" in e3.value.detail


def test_grants_decide_who_reads(auth_server: Proc, issuer: Issuer, owned_model: str, models: Path) -> None:
    owner = Registry(auth_server.url, token=issuer.token_fn("writer-app"))
    reader_reg = Registry(auth_server.url, token=issuer.token_fn("reader-app"))
    reader_scorer = Scorer(auth_server.flight, token=issuer.token_fn("reader-app"))
    rows = pq.read_table(models / "rf.rows.parquet")

    with pytest.raises(lakescore.PermissionDenied) as e:
        reader_reg.get_model(owned_model)
    assert e.value.status == 403 and e.value.detail
    with pytest.raises(lakescore.PermissionDenied) as f:
        reader_scorer.score(rows, model=f"{owned_model}@champion", feature_columns=RF_FEATURES)
    assert f.value.code == "PERMISSION_DENIED"
    with pytest.raises(lakescore.PermissionDenied):
        reader_reg.create_model(unique("nope"))  # a reader may not create

    g = owner.grant(owned_model, "app:reader-app", "read")
    assert (g.principal, g.permission) == ("app:reader-app", "read")
    assert [x.principal for x in owner.list_grants(owned_model)] == ["app:reader-app"]
    assert reader_reg.resolve(f"{owned_model}@champion").version == 1
    assert reader_scorer.score(rows, model=f"{owned_model}@champion", feature_columns=RF_FEATURES).num_rows == 200
    with pytest.raises(lakescore.PermissionDenied):
        reader_reg.grant(owned_model, "app:reader-app", "write")  # only owners and admins grant

    owner.revoke(owned_model, "app:reader-app")
    assert owner.list_grants(owned_model) == []
    with pytest.raises(lakescore.PermissionDenied):
        reader_reg.get_model(owned_model)


def test_tokens_are_renewed_before_they_expire(auth_server: Proc, issuer: Issuer, owned_model: str) -> None:
    """A source that reports a 2 s lifetime (as a credential's expires_on would) is asked
    again after half of it; every token it gives is a real one the server accepts."""
    fetch = issuer.token_fn("writer-app")
    given: list[str] = []

    def source() -> tuple[str, float]:
        tok = fetch()
        given.append(tok)
        return tok, time.time() + 2.0

    provider = CallableToken(source)
    reg = Registry(auth_server.url, token=provider)
    scorer = Scorer(auth_server.flight, token=provider)
    reg.get_model(owned_model)
    scorer.describe(f"{owned_model}@champion", feature_columns=RF_FEATURES)
    assert provider.fetches == 1, "reused while fresh"
    time.sleep(1.2)
    reg.get_model(owned_model)
    scorer.describe(f"{owned_model}@champion", feature_columns=RF_FEATURES)
    assert provider.fetches == 2, "renewed past half its lifetime, before it expired"
    assert len(set(given)) == 2


def test_a_refused_token_is_fetched_again_once(auth_server: Proc, issuer: Issuer, owned_model: str) -> None:
    good = issuer.token_fn("writer-app")
    calls: list[int] = []

    def source() -> str:
        calls.append(1)
        # The first token is for another audience (as if revoked or expired in between).
        return issuer.token("writer-app", resource="api://other") if len(calls) == 1 else good()

    reg = Registry(auth_server.url, token=source)
    assert reg.get_model(owned_model).name == owned_model
    assert len(calls) == 2
    calls.clear()
    scorer = Scorer(auth_server.flight, token=source)
    assert scorer.describe(f"{owned_model}@champion", feature_columns=RF_FEATURES).version == 1
    assert len(calls) == 2
    with pytest.raises(lakescore.Unauthenticated):
        Registry(auth_server.url, token=lambda: "not-a-jwt").get_model(owned_model)


def test_azure_identity_style_credential(auth_server: Proc, issuer: Issuer, owned_model: str) -> None:
    from azure.core.credentials import AccessToken

    fetch = issuer.token_fn("writer-app")

    class Credential:  # what azure.identity credentials look like: get_token(*scopes)
        scopes: list[str] = []

        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            self.scopes.extend(scopes)
            tok = fetch()
            return AccessToken(tok, int(jwt_expiry(tok) or time.time() + 300))

    cred = Credential()
    reg = Registry(auth_server.url, token=cred)
    assert reg.get_model(owned_model).name == owned_model
    assert cred.scopes == ["api://lakescore/.default"]
    assert lakescore.auth.azure(cred).scope == lakescore.DEFAULT_SCOPE


def test_environment_and_cli_login_tokens(
    auth_server: Proc, issuer: Issuer, owned_model: str, tmp_path: Path, monkeypatch: Any
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("LAKESCORE_TOKEN", raising=False)
    with pytest.raises(lakescore.Unauthenticated):
        Registry(auth_server.url).get_model(owned_model)  # nothing cached, no variable

    monkeypatch.setenv("LAKESCORE_TOKEN", issuer.token("writer-app"))
    assert Registry(auth_server.url).get_model(owned_model).name == owned_model
    monkeypatch.delenv("LAKESCORE_TOKEN")

    # `lakescore login` caches a token; the client uses it without being told.
    binary = lakescore_bin()
    assert binary is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKESCORE_")}
    env.update(HOME=str(home))
    subprocess.run(
        [str(binary), "login", "--issuer", issuer.issuer, "--client-id", "writer-app",
         "--client-secret", "writer-secret", "--scope", "lakescore.read lakescore.write"],
        env=env, check=True, capture_output=True, timeout=60,
    )
    cache = home / ".cache" / "lakescore" / "token.json"
    assert cache.is_file()
    reg = Registry(auth_server.url)
    created = reg.create_model(unique("from-login"))
    assert created.created_by == "writer-app"
    assert Scorer(auth_server.flight).describe(f"{owned_model}@champion", feature_columns=RF_FEATURES).version == 1


class _TokenEndpoint(BaseHTTPRequestHandler):
    """A token endpoint for the refresh_token grant, answering with real tokens."""

    issuer: Issuer
    seen: list[dict[str, list[str]]] = []

    def do_POST(self) -> None:  # noqa: N802
        form = parse_qs(self.rfile.read(int(self.headers["content-length"])).decode())
        self.seen.append(form)
        if form.get("refresh_token") != ["rt-1"]:
            body, status = {"error": "invalid_grant"}, 400
        else:
            body, status = {"access_token": self.issuer.token("writer-app"), "expires_in": 300,
                            "token_type": "Bearer", "refresh_token": "rt-2"}, 200
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_cli_cached_token_is_renewed_with_its_refresh_token(
    auth_server: Proc, issuer: Issuer, owned_model: str, tmp_path: Path
) -> None:
    _TokenEndpoint.issuer = issuer
    _TokenEndpoint.seen = []
    httpd = HTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        cache = tmp_path / "token.json"
        cache.write_text(json.dumps({
            "access_token": "expired", "expires_at": int(time.time()) - 10, "issuer": issuer.issuer,
            "refresh": {"refresh_token": "rt-1", "client_id": "writer-app",
                        "token_endpoint": f"http://127.0.0.1:{httpd.server_address[1]}/token",
                        "scope": "lakescore.read offline_access"},
        }))
        reg = Registry(auth_server.url, token=CliToken(cache))
        assert reg.get_model(owned_model).name == owned_model
        assert _TokenEndpoint.seen[0]["grant_type"] == ["refresh_token"]
        assert _TokenEndpoint.seen[0]["client_id"] == ["writer-app"]
        saved = json.loads(cache.read_text())
        assert saved["access_token"] != "expired" and saved["expires_at"] > time.time() + 200
        assert saved["refresh"]["refresh_token"] == "rt-2" and saved["issuer"] == issuer.issuer
        assert oct(cache.stat().st_mode & 0o777) == "0o600"
        reg.get_model(owned_model)
        assert len(_TokenEndpoint.seen) == 1, "the renewed token is used while valid"
    finally:
        httpd.shutdown()


def test_token_provider_forms() -> None:
    assert token_provider("abc").token() == "abc"
    assert token_provider(lambda: ("t", time.time() + 100)).token() == "t"
    assert token_provider(lambda: {"access_token": "d", "expires_in": 50}).token() == "d"
    with pytest.raises(TypeError):
        token_provider(42)
    assert RESOURCE == "api://lakescore"
