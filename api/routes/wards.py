"""``GET /wards`` and ``POST /wards`` (admin): the hospital's wards (UF) and their bed counts,
which the IP per 100 beds per month reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from vigie.api.auth import Admin
from vigie.store import Ward

__all__ = ["WardCreate", "WardPublic", "router"]

router = APIRouter(prefix="/wards", tags=["wards"])


class WardCreate(BaseModel):
    """A ward to create, or whose label and bed count to change (same hospital and code)."""

    model_config = ConfigDict(extra="forbid")

    hospital: str = Field(min_length=1, max_length=64, description="hospital code")
    code: str = Field(min_length=1, max_length=128, description="ward (UF) code, as feeds send it")
    label: str = Field(min_length=1, max_length=255)
    beds: int = Field(ge=0, le=100_000)


class WardPublic(WardCreate):
    pass


@router.get("", response_model=list[WardPublic], summary="The wards and their beds")
def get_wards(
    caller: Admin,
    hospital: Annotated[str | None, Query(max_length=64)] = None,
) -> list[WardPublic]:
    return [WardPublic(**vars(ward)) for ward in caller.service.wards(hospital)]


@router.post(
    "",
    response_model=WardPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Create or change a ward",
)
def post_ward(body: WardCreate, caller: Admin) -> WardPublic:
    """Creates the ward, or changes its label and bed count; audited with the change."""
    entry = caller.entry("write", f"ward {body.hospital}/{body.code}", detail=body.model_dump())
    ward = caller.service.put_ward(Ward(**body.model_dump()), caller.user.name, audit=entry)
    return WardPublic(**vars(ward))
