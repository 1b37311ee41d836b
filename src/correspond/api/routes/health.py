"""``GET /health``: the process is up and the database answers."""

from __future__ import annotations

from fastapi import APIRouter

from correspond.api.deps import ServiceDep
from correspond.api.schemas import Health

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(service: ServiceDep) -> Health:
    service.store.ping()
    return Health(status="ok", database=service.store.dialect)
