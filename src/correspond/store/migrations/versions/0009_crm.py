"""CRM records (contacts, companies, deals, activities), the participant index, timeline links.

Tables only: the participant index and the links are filled by the linker in the background
(``correspond.sync.linker``), from the last message id indexed (0 here), so an existing store
gets its timelines after the upgrade without a long migration.

Revision ID: 0009_crm
Revises: 0008_teams
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0009_crm"
down_revision = "0008_teams"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _stamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    ]


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def _unique(table: str, column: str) -> sa.UniqueConstraint:
    return sa.UniqueConstraint(column, name=op.f(f"uq_{table}_{column}"))


def upgrade() -> None:
    op.create_table(
        "companies",
        sa.Column("id", _Id, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=True),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_companies")),
        _unique("companies", "external_id"),
    )
    op.create_table(
        "company_domains",
        sa.Column("id", _Id, nullable=False),
        sa.Column("company_id", _Id, nullable=False),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_company_domains")),
        _fk("company_domains", "company_id", "companies", "CASCADE"),
        _unique("company_domains", "domain"),
    )
    op.create_index(op.f("ix_company_domains_company_id"), "company_domains", ["company_id"])
    op.create_table(
        "contacts",
        sa.Column("id", _Id, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("company_id", _Id, nullable=True),
        sa.Column("external_id", sa.String(200), nullable=True),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
        _fk("contacts", "company_id", "companies", "SET NULL"),
        _unique("contacts", "external_id"),
    )
    op.create_index(op.f("ix_contacts_company_id"), "contacts", ["company_id"])
    op.create_table(
        "contact_emails",
        sa.Column("id", _Id, nullable=False),
        sa.Column("contact_id", _Id, nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_emails")),
        _fk("contact_emails", "contact_id", "contacts", "CASCADE"),
        _unique("contact_emails", "address"),
    )
    op.create_index(op.f("ix_contact_emails_contact_id"), "contact_emails", ["contact_id"])
    op.create_table(
        "deals",
        sa.Column("id", _Id, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("company_id", _Id, nullable=True),
        sa.Column("external_id", sa.String(200), nullable=True),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deals")),
        sa.CheckConstraint("status IN ('open', 'won', 'lost')", name=op.f("ck_deals_status")),
        _fk("deals", "company_id", "companies", "SET NULL"),
        _unique("deals", "external_id"),
    )
    op.create_index(op.f("ix_deals_company_id"), "deals", ["company_id"])
    op.create_table(
        "deal_contacts",
        sa.Column("deal_id", _Id, nullable=False),
        sa.Column("contact_id", _Id, nullable=False),
        sa.PrimaryKeyConstraint("deal_id", "contact_id", name=op.f("pk_deal_contacts")),
        _fk("deal_contacts", "deal_id", "deals", "CASCADE"),
        _fk("deal_contacts", "contact_id", "contacts", "CASCADE"),
    )
    op.create_index("ix_deal_contacts_contact", "deal_contacts", ["contact_id"])
    op.create_table(
        "activities",
        sa.Column("id", _Id, nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=True),
        sa.Column("external_id", sa.String(200), nullable=True),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activities")),
        sa.CheckConstraint("kind IN ('meeting', 'call', 'task')", name=op.f("ck_activities_kind")),
        _unique("activities", "external_id"),
    )
    op.create_table(
        "activity_participants",
        sa.Column("activity_id", _Id, nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.PrimaryKeyConstraint("activity_id", "address", name=op.f("pk_activity_participants")),
        _fk("activity_participants", "activity_id", "activities", "CASCADE"),
    )
    op.create_index("ix_activity_participants_address", "activity_participants", ["address"])
    op.create_table(
        "message_participants",
        sa.Column("message_id", _Id, nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("role", sa.String(4), nullable=False),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint(
            "message_id", "address", "role", name=op.f("pk_message_participants")
        ),
        sa.CheckConstraint(
            "role IN ('from', 'to', 'cc', 'bcc')", name=op.f("ck_message_participants_role")
        ),
        _fk("message_participants", "message_id", "messages", "CASCADE"),
    )
    op.create_index(
        "ix_message_participants_address", "message_participants", ["address", "message_id"]
    )
    op.create_index(
        "ix_message_participants_domain", "message_participants", ["domain", "message_id"]
    )
    op.create_table(
        "timeline_links",
        sa.Column("id", _Id, nullable=False),
        sa.Column("message_id", _Id, nullable=False),
        sa.Column("target_kind", sa.String(10), nullable=False),
        sa.Column("target_id", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(6), nullable=False),
        sa.Column("sort_at", UtcDateTime(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_timeline_links")),
        sa.CheckConstraint(
            "target_kind IN ('contact', 'company', 'deal', 'activity')",
            name=op.f("ck_timeline_links_target_kind"),
        ),
        sa.CheckConstraint("source IN ('auto', 'manual')", name=op.f("ck_timeline_links_source")),
        _fk("timeline_links", "message_id", "messages", "CASCADE"),
        sa.UniqueConstraint(
            "message_id",
            "target_kind",
            "target_id",
            name=op.f("uq_timeline_links_message_id_target_kind_target_id"),
        ),
    )
    op.create_index(
        "ix_timeline_links_target",
        "timeline_links",
        ["target_kind", "target_id", "sort_at", "message_id"],
    )
    op.create_table(
        "thread_deal_links",
        sa.Column("thread_id", _Id, nullable=False),
        sa.Column("deal_id", _Id, nullable=False),
        sa.Column("linked", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("thread_id", "deal_id", name=op.f("pk_thread_deal_links")),
        _fk("thread_deal_links", "thread_id", "threads", "CASCADE"),
        _fk("thread_deal_links", "deal_id", "deals", "CASCADE"),
    )
    op.create_index("ix_thread_deal_links_deal", "thread_deal_links", ["deal_id"])
    op.create_table(
        "crm_linker_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("indexed_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_linker_state")),
    )
    op.create_table(
        "crm_relink_queue",
        sa.Column("id", _Id, nullable=False),
        sa.Column("address", sa.String(320), nullable=True),
        sa.Column("domain", sa.String(255), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("done_through", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_relink_queue")),
    )


def downgrade() -> None:
    for table in (
        "crm_relink_queue",
        "crm_linker_state",
        "thread_deal_links",
        "timeline_links",
        "message_participants",
        "activity_participants",
        "activities",
        "deal_contacts",
        "deals",
        "contact_emails",
        "contacts",
        "company_domains",
        "companies",
    ):
        op.drop_table(table)
