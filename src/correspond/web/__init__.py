"""The web app: server-rendered pages (Jinja2) beside the JSON API, on the same app and port.

Pages call the same services the API's routes call (``app.state``), never SQL of their own;
see :mod:`correspond.web.pages` and docs/ARCHITECTURE.md ("The web app").
"""

from correspond.web import crm_forms as _crm_forms  # noqa: F401  (the same)
from correspond.web import crm_pages as _crm_pages  # noqa: F401  (adds its pages to router)
from correspond.web import inbox_pages as _inbox_pages  # noqa: F401  (the same)
from correspond.web import settings_edit as _settings_edit  # noqa: F401  (the same)
from correspond.web import settings_sync as _settings_sync  # noqa: F401  (the same)
from correspond.web.pages import STATIC_URL, mount_web, router

__all__ = ["STATIC_URL", "mount_web", "router"]
