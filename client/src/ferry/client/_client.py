"""FerryClient: the typed, synchronous SDK over the registry REST API (docs/api.md).

Every httpx exception and every server error body is translated into the
``ClientError`` hierarchy in ``_send``; idempotent GET/HEAD requests are retried
on transient network errors. Uploads and downloads stream in chunks, so memory
stays flat whatever the artifact size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ferry.client._config import ClientConfig, TrustStore, load_config
from ferry.client._errors import ApiError, InputError, TransportError, api_error
from ferry.client._fleet import FleetMixin
from ferry.client._models import (
    AliasBinding,
    AuditEntry,
    DownloadResult,
    FileEntry,
    Identity,
    Model,
    Namespace,
    Token,
    TransferProgress,
    Version,
)
from ferry.client._search import MetricFilters, metric_params
from ferry.client._transfer import download_bundle, file_digest, iter_file, tick

API = "/api/v1"
CHUNK = 1024 * 1024
ProgressCallback = Callable[[TransferProgress], None]
_IDEMPOTENT = frozenset({"GET", "HEAD"})


class FerryClient(FleetMixin):
    """One authenticated session with a Ferry registry server. Example::

    with FerryClient("http://localhost:8080", "fry_...") as ferry:
        v = ferry.push_version("vision", "resnet", [Path("model.onnx")], format="onnx", ...)
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        trust: TrustStore | None = None,
        retries: int = 3,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.trust = trust if trust is not None else TrustStore()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        # Downloads may answer 307 to a presigned store URL; httpx drops the
        # Authorization header when a redirect leaves the server's origin.
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=True,
        )
        self._retrying = Retrying(
            retry=retry_if_exception_type(httpx.TransportError),
            stop=stop_after_attempt(max(1, retries)),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            reraise=True,
        )

    @classmethod
    def from_config(cls, config: ClientConfig | None = None, **kwargs: Any) -> Self:
        """Build a client from the config file and FERRY_SERVER / FERRY_TOKEN."""
        config = config or load_config()
        server, token = config.require()
        kwargs.setdefault("trust", TrustStore(config.path))
        return cls(server, token, **kwargs)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the one boundary where httpx meets our error hierarchy ----------------------

    def _send(
        self, method: str, path: str, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Send one request; translate transport failures and error statuses."""
        request = self._http.build_request(method, path, **kwargs)
        try:
            if method in _IDEMPOTENT:
                response = self._retrying(self._http.send, request, stream=stream)
            else:
                response = self._http.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise TransportError(
                f"no answer from {self.base_url} within {self._timeout:g}s ({method} {path}); "
                f"check the server is up: curl {self.base_url}/healthz"
            ) from exc
        except httpx.TransportError as exc:
            raise TransportError(
                f"cannot reach the server at {self.base_url} ({type(exc).__name__}: {exc}); "
                f"check it is running (curl {self.base_url}/healthz) and the server URL "
                f"(`ferry configure --server URL` or FERRY_SERVER)"
            ) from exc
        if response.status_code >= 400:
            if stream:
                response.read()
                response.close()
            raise api_error(response.status_code, _json_or_none(response))
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, API + path, **kwargs)
        body = _json_or_none(response)
        if body is None:
            raise ApiError(
                f"the server answered {method} {path} with non-JSON content",
                code="bad_response",
                status=response.status_code,
            )
        return body

    # --- identity and tokens ---------------------------------------------------------

    def health(self) -> bool:
        """True when ``/healthz`` answers ok (no token needed)."""
        body = _json_or_none(self._send("GET", "/healthz"))
        return isinstance(body, dict) and body.get("status") == "ok"

    def whoami(self) -> Identity:
        return Identity.from_json(self._json("GET", "/whoami"))

    def create_token(
        self,
        name: str,
        role: str,
        namespaces: Sequence[str] = ("*",),
        *,
        expires_at: str | None = None,
    ) -> Token:
        """Create an API token (admin); the returned ``token`` secret is shown only now."""
        body = {
            "name": name,
            "role": role,
            "namespaces": list(namespaces),
            "expires_at": expires_at,
        }
        return Token.from_json(self._json("POST", "/tokens", json=_drop_none(body)))

    def list_tokens(self) -> list[Token]:
        return [Token.from_json(t) for t in _items(self._json("GET", "/tokens"))]

    def revoke_token(self, token_id: int | str) -> None:
        self._send("DELETE", f"{API}/tokens/{_seg(token_id)}")

    # --- namespaces and models -------------------------------------------------------

    def create_namespace(
        self, name: str, *, description: str | None = None, require_distinct_approver: bool = False
    ) -> Namespace:
        body = {
            "name": name,
            "description": description,
            "require_distinct_approver": require_distinct_approver,
        }
        return Namespace.from_json(self._json("POST", "/namespaces", json=_drop_none(body)))

    def list_namespaces(self) -> list[Namespace]:
        return [Namespace.from_json(n) for n in _items(self._json("GET", "/namespaces"))]

    def get_namespace(self, name: str) -> Namespace:
        return Namespace.from_json(self._json("GET", f"/namespaces/{_seg(name)}"))

    def create_model(
        self, namespace: str, name: str, *, description: str | None = None, tags: Sequence[str] = ()
    ) -> Model:
        body = {
            "namespace": namespace,
            "name": name,
            "description": description,
            "tags": list(tags),
        }
        return Model.from_json(self._json("POST", "/models", json=_drop_none(body)))

    def list_models(
        self, namespace: str | None = None, *, q: str | None = None, tag: str | None = None
    ) -> list[Model]:
        params = _drop_none({"namespace": namespace, "q": q, "tag": tag})
        return [Model.from_json(m) for m in _items(self._json("GET", "/models", params=params))]

    def get_model(self, namespace: str, name: str) -> Model:
        return Model.from_json(self._json("GET", _model_path(namespace, name)))

    # --- blobs -----------------------------------------------------------------------

    def blob_size(self, sha256: str) -> int | None:
        """The stored size of a blob, or None when the server does not have it."""
        try:
            response = self._send("HEAD", f"{API}/blobs/{_seg(sha256)}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return int(response.headers.get("Content-Length", "-1"))

    def upload_blob(
        self, path: Path | str, *, progress: ProgressCallback | None = None, name: str | None = None
    ) -> FileEntry:
        """Hash ``path``, skip it if the server already has it, else stream it up.

        Returns the bundle entry (``name`` defaults to the file's base name).
        """
        path = _existing_file(path)
        sha256, size = file_digest(path)
        entry = FileEntry(path=name or path.name, sha256=sha256, size=size)
        if self.blob_size(sha256) == size:
            tick(progress, TransferProgress(entry.path, size, size, skipped=True))
            return entry
        chunks = iter_file(
            path,
            CHUNK,
            on_chunk=lambda done: tick(progress, TransferProgress(entry.path, done, size)),
        )
        self._send(
            "PUT",
            f"{API}/blobs/{sha256}",
            content=chunks,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        return entry

    # --- versions --------------------------------------------------------------------

    def push_version(
        self,
        namespace: str,
        model: str,
        files: Sequence[Path | str],
        *,
        format: str,
        flavor: str,
        signature: Mapping[str, Any],
        created_by: str,
        run_id: str,
        git_commit: str,
        hardware: Sequence[str] = (),
        metrics: Mapping[str, float] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        training_data: Mapping[str, Any] | None = None,
        environment_hash: str | None = None,
        model_card: str | None = None,
        tags: Sequence[str] = (),
        new_version: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Version:
        """Upload every file (skipping stored ones), then register the version.

        Files keep their base names inside the bundle. Registering the same files
        again returns the existing version (``existing`` is True, ``differences``
        lists the metadata fields this call gave differently), so a retried step
        is harmless; ``new_version=True`` registers them as a new version anyway.
        """
        paths = _bundle_paths(files)
        entries = [self.upload_blob(p, progress=progress) for p in paths]
        metadata = _drop_none(
            {
                "created_by": created_by,
                "run_id": run_id,
                "git_commit": git_commit,
                "metrics": dict(metrics) if metrics else None,
                "hyperparameters": dict(hyperparameters) if hyperparameters else None,
                "training_data": dict(training_data) if training_data else None,
                "environment_hash": environment_hash,
                "model_card": model_card,
            }
        )
        body = {
            "files": [e.to_json() for e in entries],
            "format": format,
            "flavor": flavor,
            "signature": dict(signature),
            "hardware": list(hardware),
            "metadata": metadata,
            "tags": list(tags),
            "new_version": new_version,
        }
        return Version.from_json(
            self._json("POST", f"{_model_path(namespace, model)}/versions", json=body)
        )

    def list_versions(self, namespace: str, model: str) -> list[Version]:
        body = self._json("GET", f"{_model_path(namespace, model)}/versions")
        return [Version.from_json(v) for v in _items(body)]

    def get_version(self, namespace: str, model: str, ref: int | str) -> Version:
        """``ref`` is a version number or an alias such as ``champion``."""
        return Version.from_json(self._json("GET", _version_path(namespace, model, ref)))

    def manifest(self, namespace: str, model: str, ref: int | str) -> dict[str, Any]:
        """The signed manifest envelope, unverified (``download_version`` verifies)."""
        return dict(self._json("GET", f"{_version_path(namespace, model, ref)}/manifest"))

    def manifest_bytes(self, namespace: str, model: str, ref: int | str) -> bytes:
        """The manifest envelope exactly as served, for verification."""
        return self._send("GET", f"{API}{_version_path(namespace, model, ref)}/manifest").content

    def version_deltas(
        self, namespace: str, model: str, ref: int | str, *, versions: int = 10
    ) -> dict[str, Any]:
        """The deltas the server offers between this version and its ``versions`` nearest
        others, both ways, per file: ``ready`` (with ``delta_size``), ``building``,
        ``not_built``, ``not_worth_it`` or ``missing_blob`` (docs/api.md)."""
        path = f"{_version_path(namespace, model, ref)}/deltas"
        return dict(self._json("GET", path, params={"versions": versions}))

    def update_tags(
        self,
        namespace: str,
        model: str,
        ref: int | str,
        *,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
    ) -> Version:
        body = {"add": list(add), "remove": list(remove)}
        return Version.from_json(
            self._json("POST", f"{_version_path(namespace, model, ref)}/tags", json=body)
        )

    def set_stage(
        self, namespace: str, model: str, ref: int | str, stage: str, *, comment: str | None = None
    ) -> Version:
        """Move a version to ``Staging``, ``Production``, ``Archived`` (or ``None``)."""
        body = _drop_none({"stage": stage, "comment": comment})
        return Version.from_json(
            self._json("POST", f"{_version_path(namespace, model, ref)}/stage", json=body)
        )

    def set_alias(self, namespace: str, model: str, alias: str, version: int) -> AliasBinding:
        path = f"{_model_path(namespace, model)}/aliases/{_seg(alias)}"
        return AliasBinding.from_json(self._json("PUT", path, json={"version": version}))

    def delete_alias(self, namespace: str, model: str, alias: str) -> None:
        self._send("DELETE", f"{API}{_model_path(namespace, model)}/aliases/{_seg(alias)}")

    def search(
        self,
        *,
        namespace: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        stage: str | None = None,
        alias: str | None = None,
        metrics: MetricFilters | None = None,
    ) -> list[Version]:
        """Versions matching every given filter; ``metrics`` as ``{"accuracy": (">=", 0.9)}``
        or ``["accuracy>=0.9"]``."""
        params: list[tuple[str, str]] = [
            (k, v)
            for k, v in (
                ("namespace", namespace),
                ("name", name),
                ("tag", tag),
                ("stage", stage),
                ("alias", alias),
            )
            if v is not None
        ]
        params += [("metric", m) for m in metric_params(metrics)]
        return [Version.from_json(v) for v in _items(self._json("GET", "/versions", params=params))]

    # --- audit -----------------------------------------------------------------------

    def list_audit(
        self, *, after_id: int | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        params = _drop_none({"after_id": after_id, "limit": limit})
        return [AuditEntry.from_json(e) for e in _items(self._json("GET", "/audit", params=params))]

    def export_audit(self, out: IO[bytes]) -> int:
        """Stream the JSON Lines export into ``out``; returns the bytes written."""
        written = 0
        with self.stream_bytes("/audit/export") as chunks:
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
        return written

    # --- verified download -----------------------------------------------------------

    def keyring_bytes(self, version: int | None = None) -> bytes:
        """The signed keyring envelope as served (latest, or a given version)."""
        path = f"{API}/keyring" if version is None else f"{API}/keyring/{int(version)}"
        return self._send("GET", path).content

    def download_version(
        self,
        namespace: str,
        model: str,
        ref: int | str,
        dest_dir: Path | str,
        *,
        progress: ProgressCallback | None = None,
        root_keyid: str | None = None,
        hardware: str | None = None,
    ) -> DownloadResult:
        """Fetch, verify and atomically write every file of a version into ``dest_dir``.

        The manifest must be signed by a ``bundles`` key of a keyring that chains to
        the trusted root: ``root_keyid`` if given, else the root pinned for this
        server on first use. ``hardware`` (e.g. ``jetson-orin``) refuses bundles that
        do not list it. Each file is streamed, checked against the manifest's
        size and sha256 while it arrives, and only then renamed into place.
        """
        version = self.get_version(namespace, model, ref)
        return download_bundle(
            self,
            version,
            Path(dest_dir),
            progress=progress,
            root_keyid=root_keyid,
            hardware=hardware,
        )

    @contextmanager
    def stream_bytes(self, path: str) -> Iterator[Iterator[bytes]]:
        """GET ``/api/v1`` + ``path`` and yield its body as chunks; always closes it."""
        response = self._send("GET", API + path, stream=True)
        try:
            yield self._chunks(response)
        finally:
            response.close()

    def _chunks(self, response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(CHUNK)
        except httpx.TransportError as exc:
            raise TransportError(
                f"the connection to {self.base_url} broke during a transfer "
                f"({type(exc).__name__}: {exc}); retry the command"
            ) from exc


# --- small helpers -------------------------------------------------------------------


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _items(body: Any) -> list[dict[str, Any]]:
    """List endpoints answer a JSON list, or an object with ``items``."""
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        body = body["items"]
    if not isinstance(body, list):
        raise ApiError(
            "the server answered a list request with something else", code="bad_response"
        )
    return body


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _seg(value: object) -> str:
    return quote(str(value), safe="")


def _model_path(namespace: str, name: str) -> str:
    return f"/models/{_seg(namespace)}/{_seg(name)}"


def _version_path(namespace: str, name: str, ref: int | str) -> str:
    return f"{_model_path(namespace, name)}/versions/{_seg(ref)}"


def _existing_file(path: Path | str) -> Path:
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise InputError(f"cannot upload {path}: it {what}")
    return path


def _bundle_paths(files: Sequence[Path | str]) -> list[Path]:
    if not files:
        raise InputError("a version needs at least one file")
    paths = [_existing_file(f) for f in files]
    names = [p.name for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"two files share the bundle name {dupes[0]!r}; rename one")
    return paths
