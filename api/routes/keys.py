"""API key administration (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from api.deps import ContextDep, R, allow
from api.routes.cases import ERRORS
from api.schemas import KeyCreate, KeyCreated, KeyInfo
from triage import auth
from triage.auth import Principal

router = APIRouter(prefix="/v1/keys", tags=["admin"])
Admin = Annotated[Principal, Depends(allow(R.admin))]


def _info(k: object) -> KeyInfo:
    return KeyInfo.model_validate(k, from_attributes=True)


@router.post(
    "",
    status_code=201,
    response_model=KeyCreated,
    responses=ERRORS,
    summary="Create an API key; the key is shown once",
)
def create_key(body: KeyCreate, ctx: ContextDep, principal: Admin) -> KeyCreated:
    with ctx.db.write() as s:
        k = auth.create_key(
            s, body.name, body.role, created_by=principal.actor, authorities=body.authorities
        )
    return KeyCreated(id=k.id, name=k.name, role=k.role.value, key=k.key, created_at=k.created_at)


@router.get("", response_model=list[KeyInfo], responses=ERRORS, summary="List API keys")
def list_keys(ctx: ContextDep, _p: Admin) -> list[KeyInfo]:
    with ctx.db.read() as s:
        return [_info(k) for k in auth.list_keys(s)]


@router.delete("/{key_id}", response_model=KeyInfo, responses=ERRORS, summary="Revoke an API key")
def revoke_key(key_id: str, ctx: ContextDep, principal: Admin) -> KeyInfo:
    with ctx.db.write() as s:
        info = _info(auth.revoke_key(s, key_id, by=principal.actor))
    ctx.keys.invalidate()
    return info
