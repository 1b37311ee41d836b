"""The ``correspond`` command line.

Settings are built once, from ``--data-dir`` / the environment, and passed to every command.
Every command that shows data takes ``--json``. Secrets are read from a hidden prompt or from
standard input (``--password-stdin``), never from argv, and never printed.

Exit codes: 0 success, 1 a failed connection test or unexpected error, 2 bad input (ConfigError
or usage), 3 not found, 4 the mail server failed or refused, 5 the database failed, 6 a sync
finished but skipped some folder for an error. Output to a closed pipe ends with 0.

One module per command group (as ``correspond.api.routes``): each defines its commands and
groups unattached; this module attaches them to the root group :data:`main` (``base``), so no
command module imports another's registration and there is no import cycle.
"""

from __future__ import annotations

from correspond.cli import (
    accounts,
    compose,
    crm,
    drafts,
    maintenance,
    messages,
    notify,
    sending,
    serve,
    sync,
    teams,
    users,
)
from correspond.cli.base import CliContext, main

__all__ = ["CliContext", "main"]

for _command in (
    accounts.account,
    maintenance.doctor,
    crm.import_records,
    crm.relink,
    maintenance.info,
    messages.messages,
    messages.threads,
    sending.send,
    sending.outbox,
    drafts.drafts,
    sync.sync,
    sync.worker,
    users.users,
    users.tokens,
    teams.teams,
    notify.webhooks,
    notify.notifications,
    compose.identities,
    compose.templates,
    serve.serve,
):
    main.add_command(_command)
