"""The JSON API (FastAPI). ``create_app(settings)`` builds it; OpenAPI docs at ``/docs``."""

from __future__ import annotations

from correspond.api.app import create_app

__all__ = ["create_app"]
