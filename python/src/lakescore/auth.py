"""Bearer tokens for the registry and the workers.

Every client takes ``token=``, which may be

* ``None`` (the default): ``$LAKESCORE_TOKEN`` when set, else the token ``lakescore login``
  cached in ``~/.cache/lakescore/token.json`` (renewed with its refresh token when it has
  one), else no token (a server without OIDC);
* a string: sent as it is;
* a callable returning a string, a ``(token, expires_at)`` pair, an ``azure.core``
  ``AccessToken`` or a dict with ``access_token`` and ``expires_at``/``expires_in``;
* an ``azure.identity`` credential (anything with ``get_token(scope)``), asked for scope
  ``api://lakescore/.default`` (``pip install lakescore[azure]``; :func:`azure` makes one
  from ``DefaultAzureCredential``);
* a :class:`TokenProvider`.

Tokens whose expiry is known (returned with it, or read from the JWT's ``exp``) are
fetched again before they expire, so long jobs keep working. Providers pickle (the
Spark integration ships them to executors): locks and cached values are not pickled.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._fs import atomic_file

__all__ = [
    "DEFAULT_SCOPE",
    "TokenProvider",
    "StaticToken",
    "CallableToken",
    "AzureToken",
    "CliToken",
    "EnvToken",
    "DefaultToken",
    "azure",
    "token_provider",
    "jwt_expiry",
    "TokenLike",
]

#: The scope an Entra ID (Azure AD) credential is asked for.
DEFAULT_SCOPE = "api://lakescore/.default"

#: Tokens are renewed this long before they expire (or at half their lifetime, if shorter).
DEFAULT_REFRESH_MARGIN = 300.0


@runtime_checkable
class TokenProvider(Protocol):
    """Gives the bearer token to send, or None for no ``authorization`` header."""

    def token(self) -> str | None: ...

    def invalidate(self) -> None:
        """Forget a cached token (the server refused it); the next call fetches a new one."""
        ...


TokenLike = str | TokenProvider | Callable[[], Any] | None | Any


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, unverified (only to know when to renew it), or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, (int, float)) else None
    except (ValueError, TypeError, AttributeError):
        return None


def _normalize(value: Any) -> tuple[str | None, float | None]:
    """(token, expires_at) from whatever a token callable returned."""
    if value is None:
        return None, None
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    if isinstance(value, str):
        return value, jwt_expiry(value)
    if isinstance(value, tuple) and len(value) == 2:
        tok, exp = value
        if isinstance(tok, (bytes, bytearray)):
            tok = tok.decode()
        return str(tok), (float(exp) if exp is not None else jwt_expiry(str(tok)))
    if isinstance(value, dict):
        tok = value.get("access_token") or value.get("token")
        if tok is None:
            raise TypeError("a token dict needs 'access_token'")
        exp = value.get("expires_at") or value.get("expires_on")
        if exp is None and value.get("expires_in") is not None:
            exp = time.time() + float(value["expires_in"])
        return str(tok), (float(exp) if exp is not None else jwt_expiry(str(tok)))
    tok = getattr(value, "token", None)
    if isinstance(tok, str):  # azure.core.credentials.AccessToken / AccessTokenInfo
        exp = getattr(value, "expires_on", None)
        return tok, (float(exp) if exp is not None else jwt_expiry(tok))
    raise TypeError(f"a token source returned {type(value).__name__}; expected a string or (token, expires_at)")


class _Refreshing:
    """Caches a token until shortly before it expires; thread-safe, picklable."""

    def __init__(self, refresh_margin: float = DEFAULT_REFRESH_MARGIN) -> None:
        self.refresh_margin = refresh_margin
        self._lock = threading.Lock()
        self._value: str | None = None
        self._expires_at: float | None = None
        self._fetched_at = 0.0
        self._have = False
        #: How many times the underlying source was asked (for tests and logs).
        self.fetches = 0

    def _fetch(self) -> tuple[str | None, float | None]:
        raise NotImplementedError

    def _fresh(self, now: float) -> bool:
        if not self._have:
            return False
        if self._expires_at is None:
            return True
        lifetime = max(self._expires_at - self._fetched_at, 0.0)
        margin = min(self.refresh_margin, lifetime / 2)
        return now < self._expires_at - margin

    def token(self) -> str | None:
        with self._lock:
            now = time.time()
            if not self._fresh(now):
                value, expires_at = self._fetch()
                self.fetches += 1
                self._value, self._expires_at, self._fetched_at, self._have = value, expires_at, now, True
            return self._value

    @property
    def expires_at(self) -> float | None:
        """When the cached token expires (Unix seconds), if known."""
        return self._expires_at

    def invalidate(self) -> None:
        with self._lock:
            self._have = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state.update(_value=None, _expires_at=None, _fetched_at=0.0, _have=False)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class StaticToken:
    """A fixed token string."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    def token(self) -> str | None:
        return self._token

    def invalidate(self) -> None:
        pass

    def __repr__(self) -> str:
        return "StaticToken(***)" if self._token else "StaticToken(None)"


class CallableToken(_Refreshing):
    """A function that returns a token (see the module doc for what it may return); called
    again when the token is about to expire, or after the server refused it."""

    def __init__(self, fn: Callable[[], Any], refresh_margin: float = DEFAULT_REFRESH_MARGIN) -> None:
        super().__init__(refresh_margin)
        self.fn = fn

    def _fetch(self) -> tuple[str | None, float | None]:
        return _normalize(self.fn())


class AzureToken(_Refreshing):
    """An ``azure.identity`` credential (``get_token(scope)``), asked for ``scope``.

    Without a credential, ``azure.identity.DefaultAzureCredential()`` is made on first use
    in each process (so a provider shipped to Spark executors uses theirs: managed
    identity, workload identity, environment variables)."""

    def __init__(
        self,
        credential: Any = None,
        scope: str = DEFAULT_SCOPE,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
    ) -> None:
        super().__init__(refresh_margin)
        self.credential = credential
        self.scope = scope
        self._own_credential = credential is None

    def _fetch(self) -> tuple[str | None, float | None]:
        if self.credential is None:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError as e:  # pragma: no cover - depends on the extra
                raise ImportError(
                    "azure-identity is not installed: pip install 'lakescore[azure]'"
                ) from e
            self.credential = DefaultAzureCredential()
        return _normalize(self.credential.get_token(self.scope))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if self._own_credential:
            state["credential"] = None
        return state


def azure(credential: Any = None, scope: str = DEFAULT_SCOPE) -> AzureToken:
    """A token provider over an ``azure.identity`` credential (default:
    ``DefaultAzureCredential``) for ``scope`` (default ``api://lakescore/.default``)."""
    return AzureToken(credential, scope)


def _cache_path() -> Path | None:
    base = os.environ.get("XDG_CACHE_HOME")
    if base:
        return Path(base) / "lakescore" / "token.json"
    home = os.environ.get("HOME")
    if home:
        return Path(home) / ".cache" / "lakescore" / "token.json"
    return None


class CliToken:
    """The token ``lakescore login`` cached (``$XDG_CACHE_HOME`` or ``~/.cache``,
    ``lakescore/token.json``). Used while valid for at least another minute (as the CLI
    does); an expired one is renewed with the cached refresh token, when there is one, and
    the cache is rewritten as the CLI writes it. None when nothing usable is cached."""

    EXPIRY_MARGIN = 60.0

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else None
        self.timeout = timeout
        self._lock = threading.Lock()

    def _file(self) -> Path | None:
        return self.path if self.path is not None else _cache_path()

    def _read(self) -> dict[str, Any] | None:
        path = self._file()
        if path is None:
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("access_token"), str) else None

    def token(self) -> str | None:
        with self._lock:
            cached = self._read()
            if cached is None:
                return None
            if float(cached.get("expires_at", 0)) > time.time() + self.EXPIRY_MARGIN:
                return str(cached["access_token"])
            refresh = cached.get("refresh")
            if not isinstance(refresh, dict) or not refresh.get("refresh_token"):
                return None
            return self._renew(cached, refresh)

    def _renew(self, cached: dict[str, Any], refresh: dict[str, Any]) -> str | None:
        import warnings

        import requests

        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh["refresh_token"],
            "client_id": refresh.get("client_id", ""),
        }
        if refresh.get("scope"):
            form["scope"] = refresh["scope"]
        try:
            resp = requests.post(
                refresh["token_endpoint"], data=form, timeout=self.timeout, allow_redirects=False
            )
            body = resp.json()
            if resp.status_code != 200 or not isinstance(body.get("access_token"), str):
                raise ValueError(f"{resp.status_code}: {body.get('error')}: {body.get('error_description', '')}")
        except (requests.RequestException, ValueError) as e:
            warnings.warn(
                f"the cached token expired and could not be refreshed: {e}; run `lakescore login` again",
                stacklevel=3,
            )
            return None
        expires_in = body.get("expires_in", 3600)
        new = {
            "access_token": body["access_token"],
            "expires_at": int(time.time() + float(expires_in)),
            "issuer": cached.get("issuer", ""),
            "refresh": {**refresh, "refresh_token": body.get("refresh_token") or refresh["refresh_token"]},
        }
        self._write(new)
        return str(body["access_token"])

    def _write(self, data: dict[str, Any]) -> None:
        path = self._file()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "w", private=True) as f:
            json.dump(data, f, indent=2)

    def invalidate(self) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class EnvToken:
    """``$LAKESCORE_TOKEN`` (or another variable), read at every call."""

    def __init__(self, variable: str = "LAKESCORE_TOKEN") -> None:
        self.variable = variable

    def token(self) -> str | None:
        return os.environ.get(self.variable) or None

    def invalidate(self) -> None:
        pass


class DefaultToken:
    """``$LAKESCORE_TOKEN``, else the CLI's cached token, else none."""

    def __init__(self) -> None:
        self.env = EnvToken()
        self.cli = CliToken()

    def token(self) -> str | None:
        return self.env.token() or self.cli.token()

    def invalidate(self) -> None:
        pass


def token_provider(token: TokenLike = None) -> TokenProvider:
    """A :class:`TokenProvider` for anything a client's ``token=`` accepts."""
    if token is None:
        return DefaultToken()
    if isinstance(token, str):
        return StaticToken(token)
    if isinstance(token, (StaticToken, CallableToken, AzureToken, CliToken, EnvToken, DefaultToken)):
        return token
    if hasattr(token, "get_token") and callable(token.get_token):
        return AzureToken(token)
    if isinstance(token, TokenProvider) and not callable(token):
        return token
    if callable(token):
        return CallableToken(token)
    raise TypeError(f"token must be a string, a callable or a credential, not {type(token).__name__}")
