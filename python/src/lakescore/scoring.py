"""Scoring over Arrow Flight: stream Arrow data to lakescore workers, get the rows back with
the model's predictions appended.

    from lakescore import Scorer

    scorer = Scorer("grpc://127.0.0.1:8815")
    scored = scorer.score(df, model="fraud@champion", feature_columns=[f"f{i}" for i in range(20)])

How a DoExchange is driven. One thread writes a batch and then reads that batch's rows
back before it writes the next one. The worker answers every batch as soon as it has it
(it never waits for more input), so the call never stalls on flow control, memory stays
bounded by one batch in each direction, and no second thread is ever writing while a read
fails: pyarrow's Flight client has been seen to abort the interpreter in that situation. A
server error at any point (before, between or during batches) is raised as the typed
:mod:`lakescore.errors` exception with the worker's message.

Several workers (a list, or one DNS name that resolves to several addresses, like the Helm
chart's headless worker Service) are tried in turn: a worker that goes away mid-stream
(``UNAVAILABLE``, a reset connection) costs a resend of the current batch to the next
worker, with the model version pinned by the first answer, so the rows scored before and
after the switch come from the same version.
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import json
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.flight as flight

from . import errors
from .auth import TokenLike, TokenProvider, token_provider

__all__ = ["Scorer", "Description", "ScoreCommand", "expand_workers", "DEFAULT_BATCH_ROWS"]

#: Rows per batch sent; the worker's default inference batch (``inference_batch_rows``).
DEFAULT_BATCH_ROWS = 65_536

#: Model outputs to append: names, ``{output: column}``, or OutputSpec dicts
#: (``{"name", "column", "layout": "list" | "columns"}``).
Outputs = Sequence[str | Mapping[str, Any]] | Mapping[str, str] | None


@dataclass(frozen=True)
class Description:
    """The worker's ``describe`` answer: the version a reference resolves to and the schema
    scoring produces."""

    model: str
    version: int
    sha256: str
    engine: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    input_schema: pa.Schema
    output_schema: pa.Schema
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def reference(self) -> str:
        """The pinned reference, ``name:version``."""
        return f"{self.model}:{self.version}"

    @property
    def prediction_fields(self) -> list[pa.Field]:
        """The fields scoring appends (those of the output not in the input)."""
        names = set(self.input_schema.names)
        return [f for f in self.output_schema if f.name not in names]


def _proto_double(value: float) -> float | str:
    """A double as proto3 JSON writes it: NaN and the infinities are strings (``json``
    would write bare ``NaN``, which is not JSON)."""
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


class ScoreCommand(dict):  # type: ignore[type-arg]
    """A score command (``proto/lakescore.proto``) in its JSON form."""

    @classmethod
    def build(
        cls,
        model: str,
        *,
        feature_columns: Sequence[str] | None = None,
        columns: Mapping[str, str | Sequence[str]] | None = None,
        outputs: Outputs = None,
        passthrough_columns: Sequence[str] | None = None,
        drop_input_columns: bool = False,
        fill_null: float | Mapping[str, float] | None = None,
        missing: str | None = None,
        batch_size: int | None = None,
        compression: str | None = None,
        job_id: str | None = None,
        output: str | None = None,
        input: str | None = None,
        batch: Mapping[str, Any] | None = None,
        output_format: str | None = None,
        input_version: int | None = None,
        input_timestamp: str | None = None,
        input_partitions: Mapping[str, str] | Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ScoreCommand:
        if not model:
            raise ValueError("model is required (a reference: name, name:7 or name@alias)")
        cmd = cls(model=model)
        if feature_columns:
            cmd["feature_columns"] = list(feature_columns)
        if columns:
            cmd["columns"] = {
                k: {"names": [v] if isinstance(v, str) else list(v)} for k, v in columns.items()
            }
        if outputs:
            specs: list[dict[str, Any]] = []
            items: Iterable[Any] = outputs.items() if isinstance(outputs, Mapping) else outputs
            for o in items:
                if isinstance(o, str):
                    specs.append({"name": o})
                elif isinstance(o, tuple):
                    specs.append({"name": o[0], "column": o[1]})
                else:
                    spec = dict(o)
                    layout = spec.get("layout")
                    if isinstance(layout, str) and not layout.startswith("OUTPUT_LAYOUT_"):
                        spec["layout"] = "OUTPUT_LAYOUT_" + layout.upper()
                    specs.append(spec)
            cmd["outputs"] = specs
        if passthrough_columns is not None:
            if len(passthrough_columns) == 0:
                cmd["drop_input_columns"] = True
            else:
                cmd["passthrough_columns"] = list(passthrough_columns)
        if drop_input_columns:
            cmd["drop_input_columns"] = True
        if isinstance(fill_null, Mapping):
            cmd["fill_null_columns"] = {str(c): _proto_double(v) for c, v in fill_null.items()}
        elif fill_null is not None:
            cmd["fill_null"] = _proto_double(fill_null)
        if missing is not None:
            if missing not in ("auto", "nan", "error"):
                raise ValueError(f"missing={missing!r}: expected 'auto', 'nan' or 'error'")
            cmd["missing"] = missing
        if batch_size:
            cmd["batch_size"] = int(batch_size)
        if compression:
            cmd["result_compression"] = compression
        if job_id:
            cmd["job_id"] = job_id
        if output:
            cmd["output"] = output
        if input:
            cmd["input"] = input
        if batch:
            cmd["batch"] = dict(batch)
        if output_format is not None:
            if output_format not in ("delta", "parquet"):
                raise ValueError(f"output_format={output_format!r}: expected 'delta' or 'parquet'")
            cmd["output_format"] = output_format
        if input_version is not None and input_timestamp is not None:
            raise ValueError("input_version and input_timestamp are exclusive: give one")
        if input_version is not None:
            cmd["input_version"] = int(input_version)
        if input_timestamp is not None:
            cmd["input_timestamp"] = input_timestamp
        if input_partitions:
            if isinstance(input_partitions, Mapping):
                cmd["input_partitions"] = [f"{c}={v}" for c, v in input_partitions.items()]
            else:
                cmd["input_partitions"] = list(input_partitions)
        if extra:
            cmd.update(extra)  # fields of newer workers, in their proto3 JSON form
        return cmd

    def pinned(self, reference: str) -> ScoreCommand:
        return ScoreCommand({**self, "model": reference})

    def encode(self) -> bytes:
        return json.dumps(self, separators=(",", ":")).encode()


def _split_location(location: str) -> tuple[str, str, int | None]:
    if "://" not in location:
        location = "grpc://" + location
    parts = urlsplit(location)
    return parts.scheme, parts.hostname or "", parts.port


def expand_workers(workers: str | Sequence[str]) -> list[str]:
    """Flight locations for ``workers``: a list of URLs, a comma-separated string, or one
    URL whose host name resolves to several addresses (each becomes a location). Plain
    ``grpc://`` names are expanded; TLS ones are kept as given (certificates name the host)."""
    items = [w.strip() for w in workers.split(",")] if isinstance(workers, str) else [str(w) for w in workers]
    out: list[str] = []
    for w in items:
        if not w:
            continue
        if "://" not in w:
            w = "grpc://" + w
        scheme, host, port = _split_location(w)
        if scheme not in ("grpc", "grpc+tcp") or not host or port is None:
            out.append(w)
            continue
        try:
            ipaddress.ip_address(host)
            out.append(w)
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            out.append(w)  # let the Flight client report it
            continue
        seen: list[str] = []
        for family, _, _, _, addr in infos:
            ip = addr[0]
            loc = f"{scheme}://[{ip}]:{port}" if family == socket.AF_INET6 else f"{scheme}://{ip}:{port}"
            if loc not in seen:
                seen.append(loc)
        out.extend(seen or [w])
    deduped: list[str] = []
    for loc in out:
        if loc not in deduped:
            deduped.append(loc)
    if not deduped:
        raise ValueError("no worker location given")
    return deduped


def _slices(batch: pa.RecordBatch, rows: int) -> Iterator[pa.RecordBatch]:
    n = batch.num_rows
    if n <= rows:
        yield batch
        return
    for start in range(0, n, rows):
        yield batch.slice(start, min(rows, n - start))


def _raise_flight(exc: BaseException) -> None:
    mapped = errors.from_flight(exc)
    if mapped is None:
        raise exc
    raise mapped from exc


class _Exchange:
    """One DoExchange call, driven in lock step by one thread."""

    def __init__(
        self,
        client: flight.FlightClient,
        cmd: ScoreCommand,
        schema: pa.Schema,
        options: flight.FlightCallOptions,
        write_options: pa.ipc.IpcWriteOptions | None,
    ) -> None:
        self.closed = False
        try:
            desc = flight.FlightDescriptor.for_command(cmd.encode())
            self.writer, self.reader = client.do_exchange(desc, options=options)
        except Exception as e:  # noqa: BLE001 - mapped below
            _raise_flight(e)
        try:
            self.writer.begin(schema, options=write_options)
        except Exception as e:  # noqa: BLE001
            self._fail(e)
        self._schema: pa.Schema | None = None

    def _fail(self, exc: BaseException) -> None:
        """A write failed: the worker's status (read from the other side) says why."""
        if errors.from_flight(exc) is None:
            self.close()
            raise exc
        try:
            self.reader.read_chunk()
        except StopIteration:
            pass
        except Exception as e:  # noqa: BLE001
            self.close()
            _raise_flight(e)
        self.close()
        _raise_flight(exc)

    @property
    def schema(self) -> pa.Schema:
        if self._schema is None:
            try:
                self._schema = self.reader.schema
            except Exception as e:  # noqa: BLE001
                self.close()
                _raise_flight(e)
        return self._schema

    def send(self, batch: pa.RecordBatch) -> None:
        """Write one batch (its answer must be read with :meth:`receive` before the next)."""
        try:
            self.writer.write_batch(batch)
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def receive(self, want: int) -> list[pa.RecordBatch]:
        """Read the rows of the batch sent last (the worker may answer in several chunks)."""
        got, out = 0, []
        while got < want:
            try:
                chunk = self.reader.read_chunk()
            except StopIteration:
                self.close()
                raise errors.InternalError(
                    f"the worker ended the stream after {got} of the {want} rows sent"
                ) from None
            except Exception as e:  # noqa: BLE001
                self.close()
                _raise_flight(e)
            if chunk.data is None:
                continue
            got += chunk.data.num_rows
            out.append(chunk.data)
        if got != want:
            self.close()
            raise errors.InternalError(f"the worker answered {got} rows for a batch of {want}")
        return out

    def score(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """Send one batch and read its rows back."""
        self.send(batch)
        return self.receive(batch.num_rows)

    def finish(self) -> None:
        """Half-close, and check that the worker ends the call cleanly."""
        try:
            self.writer.done_writing()
            while True:
                chunk = self.reader.read_chunk()
                if chunk.data is not None and chunk.data.num_rows:
                    raise errors.InternalError("the worker sent rows nobody asked for")
        except StopIteration:
            pass
        except errors.LakescoreError:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001
            self.close()
            _raise_flight(e)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - the status was reported already
            pass


def _retryable(e: errors.LakescoreError) -> bool:
    return isinstance(e, (errors.Unavailable, errors.Cancelled))


class _Failover:
    """One call's walk over the workers: where it is, how many moves it has made, and
    whether it has already asked for a fresh token once."""

    def __init__(self, scorer: Scorer, start: int | None) -> None:
        self.scorer = scorer
        self.order = scorer._order(start)
        self.attempt = 0
        self.refreshed = False

    def run(self, fn: Callable[[str], Any]) -> Any:
        """``fn(location)`` until it answers: the next worker when one is unavailable, the
        same one again once with a fresh token when refused as unauthenticated."""
        while True:
            loc = self.order[self.attempt % len(self.order)]
            try:
                return fn(loc)
            except errors.Unauthenticated:
                if self.refreshed or not self.scorer._token_changed():
                    raise
                self.refreshed = True
            except errors.LakescoreError as e:
                self.next_worker(e, loc)

    def next_worker(self, e: errors.LakescoreError, loc: str, backoff: bool = True) -> None:
        """After ``e`` at ``loc``: raise it when it is final or no move is left; else move on
        (pausing after each full round of the workers when ``backoff``)."""
        if not _retryable(e) or self.attempt >= self.scorer.retries:
            raise e
        self.scorer._drop_client(loc)
        self.attempt += 1
        self.scorer.failovers += 1
        if backoff and self.attempt % len(self.order) == 0:
            self.scorer._sleep(min(5.0, 0.5 * self.attempt))


class Scorer:
    """A client of lakescore scoring workers (Arrow Flight).

    Args:
        workers: a Flight location (``grpc://host:8815``, ``grpc+tls://…``), a list of
            them, or one whose host name resolves to several addresses.
        token: see :mod:`lakescore.auth`; sent as ``authorization: Bearer …`` on every call,
            and passed by the worker to the registry.
        batch_rows: rows per batch sent (larger inputs are sliced).
        retries: how many times a call that lost its worker is moved to another (or, with
            one worker, tried again after a pause).
        calls_per_stream: DoExchange calls a stream of batches is spread over, each in lock
            step (one batch out, its rows back), batches dealt to them in turn and answers
            read in order: the worker scores one batch while the next is on its way, and
            none of the calls can stall on flow control. 1: one call, strictly in turn.
        tls_root_certs, override_hostname, disable_server_verification: as
            ``pyarrow.flight.FlightClient`` takes them.
    """

    def __init__(
        self,
        workers: str | Sequence[str] = "grpc://127.0.0.1:8815",
        token: TokenLike = None,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        retries: int = 3,
        calls_per_stream: int = 2,
        tls_root_certs: bytes | None = None,
        override_hostname: str | None = None,
        disable_server_verification: bool = False,
    ) -> None:
        self.workers = workers
        self.tokens: TokenProvider = token_provider(token)
        self.batch_rows = max(1, int(batch_rows))
        self.retries = retries
        self.calls_per_stream = calls_per_stream
        self._client_kwargs: dict[str, Any] = {}
        if tls_root_certs is not None:
            self._client_kwargs["tls_root_certs"] = tls_root_certs
        if override_hostname is not None:
            self._client_kwargs["override_hostname"] = override_hostname
        if disable_server_verification:
            self._client_kwargs["disable_server_verification"] = True
        self._clients: dict[str, flight.FlightClient] = {}
        self._lock = threading.Lock()
        #: How many times a call moved to another worker (or retried) after losing one.
        self.failovers = 0
        self._sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:
        return f"Scorer({self.workers!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_clients"] = {}
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass
            self._clients.clear()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def locations(self) -> list[str]:
        """The workers' Flight locations, DNS names expanded."""
        return expand_workers(self.workers)

    def _client(self, location: str) -> flight.FlightClient:
        with self._lock:
            c = self._clients.get(location)
            if c is None:
                c = flight.FlightClient(location, **self._client_kwargs)
                self._clients[location] = c
            return c

    def _drop_client(self, location: str) -> None:
        with self._lock:
            c = self._clients.pop(location, None)
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass

    def _options(
        self, timeout: float | None = None, write_options: pa.ipc.IpcWriteOptions | None = None
    ) -> flight.FlightCallOptions:
        tok = self.tokens.token()
        headers = [(b"authorization", f"Bearer {tok}".encode())] if tok else []
        return flight.FlightCallOptions(headers=headers, timeout=timeout, write_options=write_options)

    def _order(self, start: int | None) -> list[str]:
        locs = self.locations()
        if start is None:
            start = random.randrange(len(locs))
        start %= len(locs)
        return locs[start:] + locs[:start]

    def _with_failover(self, fn: Callable[[str], Any], start: int | None = None) -> Any:
        """``fn(location)``, moved to the next worker when one is unavailable, and sent again
        once with a fresh token when the first is refused as unauthenticated."""
        return _Failover(self, start).run(fn)

    def _token_changed(self) -> bool:
        old = self.tokens.token()
        self.tokens.invalidate()
        return self.tokens.token() != old

    def _action(self, kind: str, body: bytes, start: int | None = None) -> Any:
        def call(loc: str) -> Any:
            try:
                results = list(self._client(loc).do_action(flight.Action(kind, body), options=self._options()))
            except Exception as e:  # noqa: BLE001
                _raise_flight(e)
            if not results:
                return None
            return json.loads(results[0].body.to_pybytes())

        return self._with_failover(call, start)

    # ------------------------------------------------------------------ actions
    def describe(
        self,
        model: str,
        schema: pa.Schema | None = None,
        **options: Any,
    ) -> Description:
        """What scoring ``model`` produces: the resolved version and the output schema for
        an input ``schema`` (default: the one the model's signature implies). ``options``
        are those of :meth:`score` (``feature_columns``, ``outputs``, …)."""
        cmd = ScoreCommand.build(model, **options)
        req: dict[str, Any] = {"command": cmd}
        if schema is not None:
            req["schema"] = base64.b64encode(schema.serialize().to_pybytes()).decode()
        raw = self._action("describe", json.dumps(req).encode())
        return _description(raw)

    def warm(self, model: str) -> dict[str, Any]:
        """Have the worker(s) load ``model`` ahead of use; returns the first one's answer."""
        result: dict[str, Any] = {}
        for i, _ in enumerate(self.locations()):
            answer = self._action("warm", ScoreCommand.build(model).encode(), start=i)
            if i == 0:
                result = answer
        return result

    def score_dataset(
        self,
        input: str,
        output: str,
        model: str,
        *,
        batch: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Score ``input`` (a Delta table, or Parquet files: a storage URL, file or prefix)
        and write the enriched rows to ``output``, all on the worker (the ``score-dataset``
        action); returns the summary. ``output`` becomes a Delta table (created, or appended
        to), or with ``output_format="parquet"`` Parquet parts and a ``_lakescore.json``
        manifest. A Delta ``input`` is read at its latest version, or ``input_version=`` /
        ``input_timestamp=`` (time travel), only the partitions ``input_partitions=`` picks
        (``{"day": "2026-11-01"}``). ``batch``: batch-job settings (``mini_batch_size``,
        ``max_retries``, ``error_threshold_rows``, … as the README's *Batch jobs* lists
        them), with ``job_id=`` to resume a job."""
        cmd = ScoreCommand.build(model, input=input, output=output, batch=batch, **options)
        summary: dict[str, Any] = self._action("score-dataset", cmd.encode())
        return summary

    # ------------------------------------------------------------------ DoExchange
    def score_batches(
        self,
        batches: Iterable[pa.RecordBatch],
        model: str,
        *,
        schema: pa.Schema | None = None,
        start: int | None = None,
        on_schema: Callable[[pa.Schema], None] | None = None,
        **options: Any,
    ) -> Iterator[pa.RecordBatch]:
        """The streaming core: score record batches as they come, yielding the enriched
        batches in order. Memory: one batch each way. ``schema`` is needed when the
        iterable may be empty; ``start`` picks the first worker (index into
        :meth:`locations`)."""
        cmd = ScoreCommand.build(model, **options)
        write_options = None
        if options.get("compression"):
            write_options = pa.ipc.IpcWriteOptions(compression=options["compression"])
        it = iter(batches)
        first: pa.RecordBatch | None = None
        if schema is None:
            first = next(it, None)
            if first is None:
                raise ValueError("no batches and no schema: pass schema= to score an empty stream")
            schema = first.schema
        state: dict[str, Any] = {"cmd": cmd, "loc": None}
        failover = _Failover(self, start)
        depth = max(1, int(self.calls_per_stream))
        calls: list[_Exchange | None] = [None] * depth  # lock-step DoExchange calls
        free: collections.deque[int] = collections.deque(range(depth))
        pending: collections.deque[tuple[int, pa.RecordBatch]] = collections.deque()  # sent, unanswered

        def open_at(loc: str) -> _Exchange:
            ex = _Exchange(self._client(loc), state["cmd"], schema, self._options(), write_options)
            out_schema = ex.schema
            if state["cmd"]["model"] == cmd["model"]:
                meta = out_schema.metadata or {}
                name, ver = meta.get(b"lakescore.model"), meta.get(b"lakescore.version")
                if name and ver:
                    # Pin the version: the other calls, and a retry elsewhere, score
                    # with the same one.
                    state["cmd"] = cmd.pinned(f"{name.decode()}:{ver.decode()}")
                if on_schema is not None:
                    on_schema(out_schema)
            state["loc"] = loc
            return ex

        def open_exchange() -> _Exchange:
            ex: _Exchange = failover.run(open_at)
            return ex

        def close_all() -> None:
            for i, ex in enumerate(calls):
                if ex is not None:
                    ex.close()
                    calls[i] = None

        def lost_worker(e: errors.LakescoreError) -> None:
            """A call failed: give up, or move every call to the next worker and send the
            unanswered batches again, in order."""
            close_all()
            failover.next_worker(e, state["loc"], backoff=False)
            resend = list(pending)
            pending.clear()
            free.clear()
            free.extend(range(depth))
            for _, piece in resend:
                send(piece)

        def send(piece: pa.RecordBatch) -> None:
            while True:
                slot = free[0]
                try:
                    if calls[slot] is None:
                        calls[slot] = open_exchange()
                    calls[slot].send(piece)  # type: ignore[union-attr]
                except errors.LakescoreError as e:
                    lost_worker(e)  # re-sends what is pending; then try this one again
                    continue
                free.popleft()
                pending.append((slot, piece))
                return

        def receive_oldest() -> list[pa.RecordBatch]:
            while True:
                slot, piece = pending[0]
                try:
                    out = calls[slot].receive(piece.num_rows)  # type: ignore[union-attr]
                except errors.LakescoreError as e:
                    lost_worker(e)
                    continue
                pending.popleft()
                free.append(slot)
                return out

        try:
            # Calls open with the first non-empty batch: an empty stream costs nothing.
            if first is not None:
                it = _chain_one(first, it)
            for batch in it:
                if batch.schema != schema:
                    if batch.schema.names != schema.names:
                        raise ValueError(
                            f"batch columns {batch.schema.names} differ from the stream's {schema.names}"
                        )
                    batch = batch.cast(schema)
                for piece in _slices(batch, self.batch_rows):
                    if piece.num_rows == 0:
                        continue
                    if not free:
                        yield from receive_oldest()
                    send(piece)
            while pending:
                yield from receive_oldest()
            for i, ex in enumerate(calls):
                if ex is not None:
                    calls[i] = None
                    try:
                        ex.finish()
                    except errors.LakescoreError as e:
                        # Every row was answered: a worker lost only now costs nothing.
                        if not _retryable(e):
                            raise
        finally:
            close_all()

    def score(
        self,
        data: Any,
        model: str,
        *,
        feature_columns: Sequence[str] | None = None,
        outputs: Outputs = None,
        passthrough_columns: Sequence[str] | None = None,
        **options: Any,
    ) -> Any:
        """Score ``data`` with ``model`` (``name``, ``name:7``, ``name@alias``) and return
        the same rows, in the same order, with the model's outputs appended, as the same
        kind of object: a ``pyarrow.Table`` or ``RecordBatch``, a pandas or Polars
        DataFrame (index kept), or, for a ``RecordBatchReader`` (streamed, never held
        whole), a ``RecordBatchReader``.

        Args:
            feature_columns: for a model with one 2-D input ``[N, F]``: its F columns, in
                order. Models whose inputs are named like columns need nothing.
            outputs: model outputs to append: names, ``{output: column}``, or dicts
                ``{"name", "column", "layout": "list" | "columns"}`` (default: all).
            passthrough_columns: input columns to keep (default all; ``[]``: none).
            options: ``columns`` (model input → column(s)); ``missing``: what a null
                in a model input becomes, ``"auto"`` (default: ``NaN`` in float inputs of a
                model that defines missing values, a tree ensemble such as LightGBM's or
                XGBoost's, refused for others), ``"nan"`` (``NaN`` in every float input) or
                ``"error"`` (every null refused); ``fill_null``: a number (``nan``
                allowed) that replaces nulls in every column, or ``{column: number}`` per
                column; ``compression`` (``lz4``/``zstd``, both ways), ``batch_size``.
        """
        opts = dict(options, feature_columns=feature_columns, outputs=outputs, passthrough_columns=passthrough_columns)
        kind, table_or_reader = _to_arrow(data)
        if kind == "reader":
            reader: pa.RecordBatchReader = table_or_reader
            desc = self.describe(model, reader.schema, **opts)
            out_schema = desc.output_schema
            batches = self.score_batches(reader, desc.reference, schema=reader.schema, **opts)
            return pa.RecordBatchReader.from_batches(out_schema, _cast_each(batches, out_schema))
        table: pa.Table = table_or_reader
        if table.num_rows == 0:
            desc = self.describe(model, table.schema, **opts)
            return _from_arrow(kind, desc.output_schema.empty_table(), data)
        schemas: list[pa.Schema] = []
        out = list(
            self.score_batches(
                table.to_batches(max_chunksize=self.batch_rows),
                model,
                schema=table.schema,
                on_schema=schemas.append,
                **opts,
            )
        )
        result = pa.Table.from_batches(out, schema=schemas[0] if schemas else None)
        return _from_arrow(kind, result, data)

    # ------------------------------------------------------------------ DoPut
    def score_to(
        self,
        output: str,
        data: Any,
        model: str,
        *,
        feature_columns: Sequence[str] | None = None,
        outputs: Outputs = None,
        passthrough_columns: Sequence[str] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Stream ``data`` to a worker that writes the enriched rows to ``output`` (a
        storage URL: ``file:///…/``, ``s3://…``, ``az://…``) in one commit (DoPut): a Delta
        table there (created, or appended to), or with ``output_format="parquet"`` Parquet
        parts and the ``_lakescore.json`` manifest last; returns the worker's summary
        (``rows``, ``files``, ``bytes``, ``table`` and ``table_version`` or ``manifest``,
        …). A worker that is unavailable
        before it answers costs a retry on the next one when ``data`` can be read again
        (not a ``RecordBatchReader``)."""
        opts = dict(options, feature_columns=feature_columns, outputs=outputs, passthrough_columns=passthrough_columns)
        cmd = ScoreCommand.build(model, output=output, **opts)
        kind, table_or_reader = _to_arrow(data)
        replayable = kind != "reader"
        write_options = None
        if options.get("compression"):
            write_options = pa.ipc.IpcWriteOptions(compression=options["compression"])

        def put(loc: str) -> dict[str, Any]:
            if kind == "reader":
                schema = table_or_reader.schema
                batches: Iterable[pa.RecordBatch] = table_or_reader
            else:
                schema = table_or_reader.schema
                batches = table_or_reader.to_batches(max_chunksize=self.batch_rows)
            desc = flight.FlightDescriptor.for_command(cmd.encode())
            try:
                writer, meta_reader = self._client(loc).do_put(
                    desc, schema, options=self._options(write_options=write_options)
                )
            except Exception as e:  # noqa: BLE001
                _raise_flight(e)
            try:
                for batch in batches:
                    for piece in _slices(batch, self.batch_rows):
                        if piece.num_rows:
                            writer.write_batch(piece)
                writer.done_writing()
                buf = meta_reader.read()
            except Exception as e:  # noqa: BLE001
                try:
                    writer.close()
                except Exception as e2:  # noqa: BLE001 - the worker's status, if any
                    if errors.from_flight(e2) is not None:
                        _raise_flight(e2)
                _raise_flight(e)
            try:
                writer.close()
            except Exception as e:  # noqa: BLE001
                _raise_flight(e)
            if buf is None:
                raise errors.InternalError("the worker answered the DoPut without a summary")
            summary: dict[str, Any] = json.loads(buf.to_pybytes())
            return summary

        if replayable:
            result: dict[str, Any] = self._with_failover(put)
            return result
        return put(self._order(None)[0])


def _chain_one(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest


def _cast_each(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    for b in batches:
        yield b if b.schema.equals(schema) else b.cast(schema)


def _description(raw: dict[str, Any]) -> Description:
    out_schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(raw["output_schema_ipc"])))
    names = {f["name"] for f in raw.get("input_schema", [])}
    in_fields = [f for f in out_schema if f.name in names]
    return Description(
        model=raw["model"],
        version=int(raw["version"]),
        sha256=raw.get("sha256", ""),
        engine=raw.get("engine", ""),
        inputs=list(raw.get("inputs", [])),
        outputs=list(raw.get("outputs", [])),
        input_schema=pa.schema(in_fields),
        output_schema=out_schema,
        raw=raw,
    )


def _to_arrow(data: Any) -> tuple[str, Any]:
    """("table" | "batch" | "pandas" | "polars" | "reader", Table or RecordBatchReader)."""
    if isinstance(data, pa.Table):
        return "table", data
    if isinstance(data, pa.RecordBatch):
        return "batch", pa.Table.from_batches([data])
    if isinstance(data, pa.RecordBatchReader):
        return "reader", data
    mod = type(data).__module__.split(".")[0]
    if mod == "pandas":
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            return "pandas", pa.Table.from_pandas(data, preserve_index=False)
    if mod == "polars":
        import polars as pl

        if isinstance(data, pl.DataFrame):
            return "polars", data.to_arrow()
        if isinstance(data, pl.LazyFrame):
            return "polars", data.collect().to_arrow()
    if hasattr(data, "__arrow_c_stream__"):
        return "reader", pa.RecordBatchReader.from_stream(data)
    raise TypeError(
        f"cannot score a {type(data).__name__}: pass a pyarrow Table, RecordBatch or RecordBatchReader, "
        "or a pandas or Polars DataFrame"
    )


def _from_arrow(kind: str, table: pa.Table, original: Any) -> Any:
    if kind == "table":
        return table
    if kind == "batch":
        if not table.num_rows:
            return pa.RecordBatch.from_pylist([], table.schema)
        return table.combine_chunks().to_batches()[0]
    if kind == "pandas":
        df = table.to_pandas()
        if len(df) == len(original):
            df.index = original.index
        return df
    if kind == "polars":
        import polars as pl

        return pl.from_arrow(table)
    return table
