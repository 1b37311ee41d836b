"""Screenshots of the web app's main pages, for a reviewer to look at: the browser tests' pages
(``tests/test_web.py``'s ``web`` fixture calls :func:`watch_pages`) each save one PNG per page
kind per test run, the first time a page of that kind has loaded, into ``$CORRESPOND_SCREENSHOTS``
(default ``test-artifacts/screenshots`` at the repository's root, ignored by git). Test
artifacts, never committed; the run's last page of a kind does not replace the first.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["PAGES", "SCREENSHOTS_ENV", "screenshot_dir", "taken", "watch_pages"]

SCREENSHOTS_ENV = "CORRESPOND_SCREENSHOTS"
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"

#: Page kinds by path (the query is ignored): the file is ``<kind>.png``.
PAGES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("welcome", r"/welcome"),
        ("login", r"/login"),
        ("inbox", r"/"),
        ("team-inbox", r"/team/\d+"),
        ("thread", r"/conversation/\d+"),
        ("composer", r"/compose"),
        ("composer-reply", r"/conversation/\d+/reply"),
        ("scheduled", r"/compose/scheduled"),
        ("drafts", r"/compose/drafts"),
        ("contacts", r"/crm/contacts"),
        ("contact", r"/crm/contacts/\d+"),
        ("company", r"/crm/companies/\d+"),
        ("deal", r"/crm/deals/\d+"),
        ("activities", r"/crm/activities"),
        ("activity", r"/crm/activities/\d+"),
        ("crm-delete", r"/crm/\w+/\d+/delete"),
        ("settings-full-email-sync", r"/settings/sync"),
        ("settings-connect-mailbox", r"/settings/sync/new"),
        ("settings-smtp-bcc", r"/settings/smtp"),
        ("settings-identity", r"/settings/smtp/\d+"),
        ("settings-email-preferences", r"/preferences"),
        ("templates", r"/email-templates"),
        ("template-edit", r"/email-templates/(\d+|new)"),
    )
)

#: Kinds saved in this run (this process): one screenshot per page kind.
taken: set[str] = set()


def screenshot_dir() -> Path:
    return Path(os.environ.get(SCREENSHOTS_ENV) or DEFAULT_DIR)


def page_kind(url: str) -> str | None:
    path = urlsplit(url).path
    return next((name for name, pattern in PAGES if pattern.fullmatch(path)), None)


def watch_pages(page: Any) -> None:
    """Save a screenshot (the viewport) of each page kind the first time one loads (after its
    scripts ran: the ``load`` event); a page that fails to screenshot is skipped, never a
    test failure."""

    def loaded(_page: Any) -> None:
        kind = page_kind(page.url)
        if kind is None or kind in taken:
            return
        taken.add(kind)
        target = screenshot_dir()
        try:
            target.mkdir(parents=True, exist_ok=True)
            # The viewport only: a full-page shot resizes the viewport for a moment, and the
            # test's own call (a click) runs meanwhile (the sync API delivers the event in it).
            page.screenshot(path=str(target / f"{kind}.png"), timeout=5_000)
        except Exception:  # a reviewer's convenience, not what is tested
            taken.discard(kind)

    page.on("load", loaded)
