"""Public signed documents: keyring versions, and manifests by digest."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from ferry.protocol.canonical import parse_json
from ferry.server.api.deps import DeviceReader, ReadSessionDep
from ferry.server.api.http_semantics import IMMUTABLE, check_conditions
from ferry.server.core.errors import ForbiddenError, NotFoundError
from ferry.server.core.schemas import SHA256_PATTERN
from ferry.server.trust import service as trust
from ferry.server.trust.tables import SignedManifest

router = APIRouter(tags=["trust"])

ENVELOPE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/json": {"schema": {"type": "object"}}},
        "description": "signed envelope {signed, signatures}",
    }
}


def _json(text: str) -> Response:
    return Response(text.encode("utf-8"), media_type="application/json")


@router.get("/keyring", response_class=Response, responses=ENVELOPE)
def latest_keyring(session: ReadSessionDep) -> Response:
    return _json(trust.get_envelope(session))


@router.get("/keyring/{version}", response_class=Response, responses=ENVELOPE)
def keyring_version(
    version: Annotated[int, Path(ge=1, le=2**31 - 1)], session: ReadSessionDep
) -> Response:
    return _json(trust.get_envelope(session, version))


@router.get("/manifests/{sha256}", response_class=Response, responses=ENVELOPE)
def manifest(
    sha256: Annotated[str, Path(pattern=SHA256_PATTERN)],
    request: Request,
    session: ReadSessionDep,
    reader: DeviceReader,
) -> Response:
    """Immutable once signed: the ETag is the digest it is stored under.

    Read once per process (`ManifestMemo` on ``app.state.manifests``); devices whose
    login is cached are answered from the memo before routing
    (`ferry.server.checkin.fast_path`).
    """
    memo: trust.ManifestMemo | None = getattr(request.app.state, "manifests", None)
    found = memo.get(sha256) if memo is not None else None
    if found is None:
        row = session.get(SignedManifest, sha256)
        if row is None:
            raise NotFoundError(f"manifest {sha256} does not exist")
        found = (row.envelope.encode("utf-8"), parse_json(row.envelope)["signed"]["namespace"])
        if memo is not None:
            memo.put(sha256, found)
    body, namespace = found
    if not reader.in_namespace(namespace):
        raise ForbiddenError(f"the token '{reader.name}' is not scoped to namespace '{namespace}'")
    etag = f'"{sha256}"'
    if (answer := check_conditions(request, etag, IMMUTABLE)) is not None:
        return answer
    response = Response(body, media_type="application/json")
    response.headers.update({"ETag": etag, **IMMUTABLE})
    return response
