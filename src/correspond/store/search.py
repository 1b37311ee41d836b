"""Full-text search over synced mail: the index (filled in the background) and the queries.

The index is a side structure of ``messages`` (migration ``0010_search``), never written by
ingest: :class:`SearchIndex` reads the messages past its watermark a batch at a time and
writes their :func:`~correspond.rules.search_query.search_document` in one transaction with
the watermark, so a crash loses at most the batch in flight and a re-run writes the same
entries again (idempotent).

- PostgreSQL: ``message_search.doc``, a ``tsvector`` built here from the tokens (cast from its
  text form, so no text search configuration or language is involved; the parser in ``rules``
  is the only tokenizer). Each token of a header field is there twice at the same position: as
  itself (found by a free word) and prefixed by its field (``f:ann``, found by ``from:ann``).
  One GIN index serves every query; ``(sort_at, message_id)`` serves the order.
- SQLite: the FTS5 table ``message_fts`` (rowid = message id), a column per field.

Results are read through ``messages`` (summary fields as in the message list, deleted
messages left out) and only from the accounts the viewer may see
(:func:`~correspond.store.visibility.visible_accounts_clause`), newest first, by keyset
cursor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    MetaData,
    Select,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal_column,
    not_,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import SQLAlchemyError

from correspond.errors import ConfigError, StoreError
from correspond.rules.search_query import (
    FIELDS,
    Field,
    SearchDocument,
    SearchQuery,
    TextTerm,
    search_document,
)
from correspond.store.engine import database_failure
from correspond.store.message_queries import (
    _ID,
    _LIST_COLUMNS,
    _SORT_AT,
    MAX_PAGE,
    MessagePage,
    _list_items,
    _when,
    decode_cursor,
    encode_cursor,
)
from correspond.store.message_tables import (
    AttachmentRow,
    MessageLocationRow,
    MessageRow,
    shown,
)
from correspond.store.tables import AccountRow, FolderRow, UtcDateTime
from correspond.store.visibility import Viewer, visible_accounts_clause

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_SETTLE_SECONDS",
    "IndexRound",
    "SearchIndex",
    "SearchQueries",
    "fts5_match",
    "tsquery_text",
    "tsvector_text",
]

#: Messages one indexing round reads and writes (bodies included) in its transaction.
DEFAULT_BATCH = 500
#: How long after its insert a message id is taken to be committed (on PostgreSQL a
#: transaction may commit a lower id after a higher one; ingest transactions are short).
DEFAULT_SETTLE_SECONDS = 300.0

_META = MetaData()
_STATE = Table(
    "search_index_state",
    _META,
    Column("id", Integer, primary_key=True),
    Column("last_indexed", BigInteger),
    Column("settled", BigInteger),
)
_PG = Table(
    "message_search",
    _META,
    Column("message_id", BigInteger, primary_key=True),
    Column("account_id", BigInteger),
    Column("sort_at", UtcDateTime()),
    Column("doc", postgresql.TSVECTOR()),
)
_FTS_COLUMNS: dict[Field, str] = {f: f"f_{f}" for f in FIELDS}
_FTS = Table(
    "message_fts",
    _META,
    Column("rowid", Integer, primary_key=True),
    *(Column(name, Text) for name in _FTS_COLUMNS.values()),
)
#: The field prefix of a token in the PostgreSQL document (the body has none: no operator).
_PREFIX: dict[Field, str] = {
    "subject": "s:",
    "from": "f:",
    "to": "t:",
    "cc": "c:",
    "bcc": "b:",
    "filename": "n:",
}
#: SQLite: a common word's page walks each visible account's list order up to this many
#: accounts (an admin of more reads the matches instead).
_MAX_WALK_ACCOUNTS = 50
#: PostgreSQL: how often the lexeme frequencies the planner keeps are read again (seconds).
_STATS_SECONDS = 300.0
_MAX_POSITION = 16383  # tsvector positions stop there
_MAX_POSITIONS_PER_LEXEME = 255
_FIELD_GAP = 8  # positions between fields, so no phrase spans two of them

_M = MessageRow
_DOC_COLUMNS = (
    _M.id,
    _M.account_id,
    _M.sort_at,
    _M.subject,
    _M.from_name,
    _M.from_email,
    _M.to_addrs,
    _M.cc_addrs,
    _M.bcc_addrs,
    _M.text_body,
    _M.html_body,
)


# --- backend forms of documents and queries (pure; tested by table) -----------------------------


def _quote(lexeme: str) -> str:
    if "'" not in lexeme and "\\" not in lexeme:
        return f"'{lexeme}'"
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def tsvector_text(doc: SearchDocument) -> str:
    """``doc`` as PostgreSQL's ``tsvector`` input: each token at its position, header fields'
    tokens also under their field prefix."""
    positions: dict[str, list[int]] = {}
    at = 1
    for fld in FIELDS:
        prefix = _PREFIX.get(fld)
        for token in doc.fields.get(fld, ()):
            pos = at if at < _MAX_POSITION else _MAX_POSITION
            for lexeme in (token, prefix + token) if prefix else (token,):
                found = positions.get(lexeme)
                if found is None:
                    positions[lexeme] = [pos]
                elif len(found) < _MAX_POSITIONS_PER_LEXEME and found[-1] != pos:
                    found.append(pos)
            at += 1
        at += _FIELD_GAP
    return " ".join(f"{_quote(lex)}:{','.join(map(str, pos))}" for lex, pos in positions.items())


def _ts_term(term: TextTerm) -> str:
    prefix = _PREFIX.get(term.field, "") if term.field else ""
    parts = [_quote(prefix + t) for t in term.tokens]
    if term.prefix:
        parts[-1] += ":*"
    phrase = " <-> ".join(parts)
    return f"!({phrase})" if term.negated else f"({phrase})"


def tsquery_text(query: SearchQuery) -> str | None:
    """The ``tsquery`` input for the text terms of ``query`` (None: it has none)."""
    if not query.terms:
        return None
    return " & ".join(_ts_term(t) for t in query.terms)


def _fts_term(term: TextTerm) -> str:
    phrase = '"' + " ".join(term.tokens) + '"' + (" *" if term.prefix else "")
    if term.field is not None:
        return f"{_FTS_COLUMNS[term.field]} : {phrase}"
    return phrase


def fts5_match(terms: Sequence[TextTerm]) -> str | None:
    """An FTS5 MATCH expression requiring every term of ``terms`` (their negation flags are
    ignored: the caller puts negated terms in a ``NOT`` of its own). Every token is inside a
    string, so nothing typed is an FTS5 operator."""
    if not terms:
        return None
    return " AND ".join(_fts_term(t) for t in terms)


# --- the indexer --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexRound:
    """What one :meth:`SearchIndex.index_batch` did."""

    indexed: int
    last_indexed: int
    settled: int
    #: True when nothing past the watermark was left (the next round may wait for new mail).
    caught_up: bool


class SearchIndex:
    """Keeps the search index up with ``messages``, a bounded batch at a time."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int = DEFAULT_BATCH,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        gap_check_seconds: float | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError("the search index batch must be at least 1")
        self.engine = engine
        self.batch_size = batch_size
        self.settle_seconds = settle_seconds
        #: The re-check of unsettled ids (an anti-join over them: after a bulk load, up to
        #: every message stored in the last settle time) runs at most this often; a tenth of
        #: the settle time by default, so each id is still checked many times before it settles.
        self.gap_check_seconds = (
            settle_seconds / 10 if gap_check_seconds is None else gap_check_seconds
        )
        self._gap_checked_at: float | None = None
        self.postgres = engine.dialect.name == "postgresql"

    def index_batch(self, *, now: datetime | None = None) -> IndexRound:
        """Index up to ``batch_size`` messages past the watermark (and, once caught up, any
        the watermark skipped while their transaction was open), in one transaction."""
        try:
            with self.engine.begin() as conn:
                return self._round(conn, now or datetime.now(UTC))
        except SQLAlchemyError as exc:
            raise StoreError(f"could not update the search index: {database_failure(exc)}") from exc

    def index_all(self, *, max_rounds: int | None = None) -> int:
        """Rounds until caught up (or ``max_rounds``); the number of messages indexed."""
        total = rounds = 0
        while max_rounds is None or rounds < max_rounds:
            done = self.index_batch()
            total += done.indexed
            rounds += 1
            if done.caught_up:
                break
        return total

    def state(self) -> tuple[int, int]:
        """(last_indexed, settled)."""
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(_STATE.c.last_indexed, _STATE.c.settled).where(_STATE.c.id == 1)
                ).one()
        except SQLAlchemyError as exc:
            raise StoreError(f"could not read the search index: {database_failure(exc)}") from exc
        return int(row[0]), int(row[1])

    def _round(self, conn: Connection, now: datetime) -> IndexRound:
        read_state = select(_STATE.c.last_indexed, _STATE.c.settled).where(_STATE.c.id == 1)
        if self.postgres:
            read_state = read_state.with_for_update()  # one indexer at a time
        last, settled = (int(v) for v in conn.execute(read_state).one())
        rows = list(
            conn.execute(
                select(*_DOC_COLUMNS).where(_M.id > last).order_by(_M.id).limit(self.batch_size)
            )
        )
        caught_up = len(rows) < self.batch_size
        new_last = max([last, *(int(r.id) for r in rows)])
        gap_done = False
        clock = time.monotonic()
        due = self._gap_checked_at is None or clock - self._gap_checked_at >= self.gap_check_seconds
        if caught_up and settled < last and due:
            self._gap_checked_at = clock
            room = self.batch_size - len(rows)
            gap = list(
                conn.execute(
                    select(*_DOC_COLUMNS)
                    .where(_M.id > settled, _M.id <= last, not_(self._indexed(_M.id)))
                    .order_by(_M.id)
                    .limit(room)
                )
            )
            gap_done = len(gap) < room
            rows = gap + rows
        elif caught_up and settled >= last:
            gap_done = True
        self._write(conn, rows)
        new_settled = settled
        if caught_up and gap_done:
            # Everything committed up to new_last is indexed now; ids inserted before the
            # settle time can no longer be waiting for an open transaction to commit.
            found = conn.scalar(
                select(func.max(_M.id)).where(
                    _M.id > settled,
                    _M.id <= new_last,
                    _M.created_at < now - timedelta(seconds=self.settle_seconds),
                )
            )
            if found is not None:
                new_settled = int(found)
        conn.execute(
            update(_STATE)
            .where(_STATE.c.id == 1)
            .values(last_indexed=new_last, settled=new_settled)
        )
        return IndexRound(len(rows), new_last, new_settled, caught_up)

    def _indexed(self, message_id: Any) -> ColumnElement[bool]:
        if self.postgres:
            return exists().where(_PG.c.message_id == message_id)
        return exists().where(_FTS.c.rowid == message_id)

    def _write(self, conn: Connection, rows: Sequence[Any]) -> None:
        if not rows:
            return
        ids = [int(r.id) for r in rows]
        names: dict[int, list[str | None]] = {}
        for mid, filename in conn.execute(
            select(AttachmentRow.message_id, AttachmentRow.filename).where(
                AttachmentRow.message_id.in_(ids)
            )
        ):
            names.setdefault(int(mid), []).append(filename)
        docs = [(r, _document(r, names.get(int(r.id), []))) for r in rows]
        if self.postgres:
            stmt = postgresql.insert(_PG).values(
                message_id=bindparam("b_id"),
                account_id=bindparam("b_account"),
                sort_at=bindparam("b_sort_at", type_=UtcDateTime()),
                doc=cast(bindparam("b_doc", type_=Text()), postgresql.TSVECTOR()),
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=[_PG.c.message_id],
                set_={"doc": stmt.excluded.doc, "sort_at": stmt.excluded.sort_at},
            )
            conn.execute(
                stmt,
                [
                    {
                        "b_id": int(r.id),
                        "b_account": int(r.account_id),
                        "b_sort_at": _aware(r.sort_at),
                        "b_doc": tsvector_text(doc),
                    }
                    for r, doc in docs
                ],
            )
            return
        conn.execute(delete(_FTS).where(_FTS.c.rowid.in_(ids)))
        conn.execute(
            insert(_FTS),
            [
                {"rowid": int(r.id), **{col: doc.text(f) for f, col in _FTS_COLUMNS.items()}}
                for r, doc in docs
            ],
        )


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _document(row: Any, filenames: Sequence[str | None]) -> SearchDocument:
    return search_document(
        subject=row.subject,
        from_name=row.from_name,
        from_email=row.from_email,
        to=row.to_addrs,
        cc=row.cc_addrs,
        bcc=row.bcc_addrs,
        text_body=row.text_body,
        html_body=row.html_body,
        filenames=filenames,
    )


# --- the queries --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LexemeStats:
    """What PostgreSQL's statistics say about ``message_search.doc`` (``pg_stats``): rows,
    the most common lexemes' frequencies (fractions of rows), and ``floor``, a frequency no
    lexeme left off that list reaches.

    A lexeme left off the list counts as rare (frequency 0), not as ``floor``: at a million
    messages the list holds only the few dozen lexemes above ~5%, so the floor would send
    every word to the list-order walk (a word in 20 messages: 2-3 s). A wrong guess costs
    at most reading ``cap`` matches before the walk (:meth:`SearchQueries._by_matches`)."""

    rows: float
    freqs: dict[str, float]
    floor: float

    def term_frequency(self, term: TextTerm) -> float:
        """The fraction of rows holding ``term`` as far as the list tells (a phrase: its
        rarest word; a prefix: every listed lexeme it starts; unlisted: 0)."""
        prefix = _PREFIX.get(term.field, "") if term.field else ""
        found = 1.0
        for i, token in enumerate(term.tokens):
            lexeme = prefix + token
            if term.prefix and i == len(term.tokens) - 1:
                share = sum(f for lx, f in self.freqs.items() if lx.startswith(lexeme))
            else:
                share = self.freqs.get(lexeme, 0.0)
            found = min(found, share)
        return found

    def matches(self, query: SearchQuery) -> float | None:
        """Estimated rows matching the text terms of ``query`` (None: no positive term)."""
        positive = query.positive_terms
        if not positive:
            return None
        return self.rows * min(self.term_frequency(t) for t in positive)


def _flag(flag: str) -> ColumnElement[bool]:
    # As in folder_counts: the JSON text of the flags holds "\\Seen" exactly when it is set.
    return cast(_M.flags, Text).contains(f'\\\\{flag}"', autoescape=True)


class SearchQueries:
    """Search pages over one engine (SQLite FTS5 or PostgreSQL full-text search)."""

    def __init__(self, engine: Engine, *, walk_threshold: int | None = None) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        #: Matches from which a query walks the list order instead of reading every match
        #: (None: by size, ~sqrt(128 x messages)). SQLite counts them; PostgreSQL estimates
        #: them from its statistics (:class:`LexemeStats`).
        self.walk_threshold = walk_threshold
        self._stats: LexemeStats | None = None
        self._stats_at = 0.0

    def account_id(self, name: str) -> int | None:
        try:
            with self.engine.connect() as conn:
                found = conn.scalar(select(AccountRow.id).where(AccountRow.name == name))
        except SQLAlchemyError as exc:
            raise StoreError(f"could not search: {database_failure(exc)}") from exc
        return None if found is None else int(found)

    def search(
        self,
        query: SearchQuery,
        viewer: Viewer,
        *,
        account_id: int | None = None,
        account_ids: Sequence[int] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MessagePage:
        """A page of the messages matching ``query`` among those ``viewer`` may see (only
        account ``account_id``'s, or those of ``account_ids`` (a team's inboxes), when given:
        a narrowing, never a widening of what the viewer may see), newest first; ``cursor``
        is the previous page's ``next_cursor``."""
        if not 1 <= limit <= MAX_PAGE:
            raise ConfigError(f"limit must be between 1 and {MAX_PAGE}")
        accounts: tuple[int, ...] | None = None
        if account_ids is not None or account_id is not None:
            chosen = set(account_ids) if account_ids is not None else {account_id}
            if account_id is not None:
                chosen &= {account_id}
            accounts = tuple(sorted(a for a in chosen if a is not None))
            if not accounts:  # nothing to search in: no statement at all
                return MessagePage(items=[], next_cursor=None)
        position = decode_cursor(cursor) if cursor is not None else None
        statement, params = self._statement(query, viewer, accounts, position is not None)
        if position is not None:
            params.update(pos_at=position[0], pos_id=position[1])
        params["lim"] = limit + 1
        try:
            with self.engine.connect() as conn:
                rows = self._walk(conn, query, viewer, accounts, position is not None, params)
                if rows is None:
                    rows = self._by_matches(
                        conn, query, viewer, accounts, position is not None, params
                    )
                if rows is None:
                    rows = conn.execute(statement, params).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"could not search: {database_failure(exc)}") from exc
        items = _list_items(rows[:limit])
        next_cursor = encode_cursor(items[-1].sort_at, items[-1].id) if len(rows) > limit else None
        return MessagePage(items=items, next_cursor=next_cursor)

    def _threshold(self, rows: float) -> int:
        if self.walk_threshold is not None:
            return self.walk_threshold
        # Walking costs a probe per message passed (limit x messages / matches), reading
        # the matches a row per match: they cross near sqrt(128 x messages).
        return max(1000, math.isqrt(128 * max(0, int(rows))))

    def lexeme_stats(self, conn: Connection) -> LexemeStats:
        """PostgreSQL's statistics of the index (read again every ``_STATS_SECONDS``)."""
        clock = time.monotonic()
        if self._stats is not None and clock - self._stats_at < _STATS_SECONDS:
            return self._stats
        row = conn.execute(
            text(
                "SELECT c.reltuples, s.most_common_elems::text::text[], "
                "s.most_common_elem_freqs FROM pg_class c LEFT JOIN pg_stats s "
                "ON s.schemaname = current_schema() AND s.tablename = 'message_search' "
                "AND s.attname = 'doc' WHERE c.oid = to_regclass('message_search')"
            )
        ).first()
        rows = float(row[0]) if row is not None and row[0] is not None else 0.0
        elems = list(row[1] or []) if row is not None else []
        freqs = list(row[2] or []) if row is not None else []
        # The frequencies end with the lowest and highest listed and the null fraction.
        floor = float(freqs[len(elems)]) if len(freqs) > len(elems) else 0.0
        self._stats = LexemeStats(
            rows=max(rows, 0.0),
            freqs={str(e): float(f) for e, f in zip(elems, freqs, strict=False)},
            floor=floor,
        )
        self._stats_at = clock
        return self._stats

    def _by_matches(
        self,
        conn: Connection,
        query: SearchQuery,
        viewer: Viewer,
        accounts: tuple[int, ...] | None,
        after: bool,
        params: dict[str, Any],
    ) -> Sequence[Any] | None:
        """PostgreSQL, for text that few messages hold (by the statistics): every match read
        first (GIN), at most ``cap`` of them, then filtered, sorted and cut to the page. Left
        to itself the planner may instead walk the list order testing each message's
        document, which for a rare word or a prefix reads most of the index (0.1-1.2 s at a
        million messages). When more than ``cap`` match (the statistics were wrong), None:
        the caller's statement walks the list order. None too where this does not apply."""
        if not self.postgres or "tsq" not in params:
            return None
        stats = self.lexeme_stats(conn)
        expected = stats.matches(query)
        threshold = self._threshold(stats.rows)
        if expected is None or expected >= threshold:
            return None
        cap = 2 * threshold
        statement = self._match_statement(query, viewer, accounts, after, params)
        rows = conn.execute(statement, {**params, "cap": cap + 1}).all()
        if rows:
            found = int(rows[0][-1])
        else:  # nothing left after the filters: were the matches all read?
            counted = select(func.count()).select_from(
                self._matches(viewer, accounts).limit(bindparam("cap")).subquery()
            )
            found = int(conn.scalar(counted, {**params, "cap": cap + 1}) or 0)
        if found > cap:
            return None
        return [tuple(r)[:-1] for r in rows]  # without the count

    @staticmethod
    def _matches(viewer: Viewer, accounts: tuple[int, ...] | None) -> Select[Any]:
        ms = _PG.c
        found = select(ms.message_id, ms.sort_at).where(
            ms.doc.op("@@")(cast(bindparam("tsq", type_=Text()), postgresql.TSQUERY())),
            visible_accounts_clause(viewer, ms.account_id),
        )
        if accounts is not None:
            found = found.where(ms.account_id.in_(bindparam("account_ids", expanding=True)))
        return found

    def _match_statement(
        self,
        query: SearchQuery,
        viewer: Viewer,
        accounts: tuple[int, ...] | None,
        after: bool,
        params: dict[str, Any],
    ) -> Select[Any]:
        # MATERIALIZED: the matches are read once, by the GIN index, before any ordering.
        hits = (
            self._matches(viewer, accounts)
            .limit(bindparam("cap"))
            .cte("hits")
            .prefix_with("MATERIALIZED")
        )
        total = select(func.count()).select_from(hits).scalar_subquery()
        # The matches in list order first, then their messages looked up one by one until
        # the page is full: ~50 lookups of ``messages`` instead of one per match (a prefix
        # with 1,000 matches read 1,000 message rows, cold ones from disk, for a page of 50).
        ordered = (
            select(hits.c.message_id, hits.c.sort_at)
            .order_by(hits.c.sort_at.desc(), hits.c.message_id.desc())
            .subquery("ordered")
        )
        stmt = (
            select(*_LIST_COLUMNS, total)
            .select_from(ordered)
            .join(_M, _M.id == ordered.c.message_id)
            .where(shown(_M.state))
            .where(*self._filters(query, ordered.c.sort_at, params))
        )
        if after:
            stmt = stmt.where(
                tuple_(ordered.c.sort_at, ordered.c.message_id)
                < tuple_(
                    bindparam("pos_at", type_=UtcDateTime()),
                    bindparam("pos_id", type_=BigInteger()),
                )
            )
        return stmt.order_by(ordered.c.sort_at.desc(), ordered.c.message_id.desc()).limit(
            bindparam("lim")
        )

    def _walk(
        self,
        conn: Connection,
        query: SearchQuery,
        viewer: Viewer,
        accounts: tuple[int, ...] | None,
        after: bool,
        params: dict[str, Any],
    ) -> Sequence[Any] | None:
        """SQLite, for words most messages hold: the page read by walking each visible
        account's list order (``ix_messages_account_sort``) and asking FTS5 about each
        message, instead of reading and sorting every match (3.5 s for a word in most of
        240,000 messages). Used when the matches reach the threshold, counted no further
        than that; None otherwise (the match-driven statement serves the query)."""
        if self.postgres or "match" not in params:
            return None
        threshold = self.walk_threshold
        if threshold is None:
            # Walking costs a probe per message passed (limit x messages / matches), the
            # match-driven read a row per match: they cross near sqrt(128 x messages).
            top = int(conn.scalar(select(func.max(_M.id))) or 0)
            threshold = max(1000, math.isqrt(128 * top))
        counted = conn.scalar(
            select(func.count()).select_from(
                select(_FTS.c.rowid)
                .where(literal_column("message_fts").op("MATCH")(bindparam("match", type_=Text())))
                .limit(threshold)
                .subquery()
            ),
            {"match": params["match"]},
        )
        if int(counted or 0) < threshold:
            return None
        accounts_query = select(AccountRow.id).where(visible_accounts_clause(viewer, AccountRow.id))
        if accounts is not None:
            accounts_query = accounts_query.where(AccountRow.id.in_(accounts))
        walked = [int(a) for a in conn.scalars(accounts_query)]
        if len(walked) > _MAX_WALK_ACCOUNTS:
            return None
        statement, _ = self._statement(query, viewer, accounts, after, walk=True)
        rows: list[Any] = []
        for aid in walked:
            rows.extend(conn.execute(statement, {**params, "walk_account": aid}).all())
        # Each account's page is in list order; the page across them is their merge.
        rows.sort(key=lambda r: (_when(r[_SORT_AT]), r[_ID]), reverse=True)
        return rows[: params["lim"]]

    def _statement(
        self,
        query: SearchQuery,
        viewer: Viewer,
        accounts: tuple[int, ...] | None,
        after: bool,
        *,
        walk: bool = False,
    ) -> tuple[Select[Any], dict[str, Any]]:
        params: dict[str, Any] = {}
        stmt = select(*_LIST_COLUMNS)
        if self.postgres:
            order_at: Any = _PG.c.sort_at
            order_id: Any = _PG.c.message_id
            owner: Any = _PG.c.account_id
            stmt = stmt.select_from(_PG).join(_M, _M.id == _PG.c.message_id)
            tsq = tsquery_text(query)
            if tsq is not None:
                params["tsq"] = tsq
                stmt = stmt.where(
                    _PG.c.doc.op("@@")(cast(bindparam("tsq", type_=Text()), postgresql.TSQUERY()))
                )
        else:
            order_at, order_id, owner = _M.sort_at, _M.id, _M.account_id
            positive = fts5_match(query.positive_terms)
            negated = query.negative_terms
            negative = " OR ".join(f"({_fts_term(t)})" for t in negated) if negated else None
            fts_match = literal_column("message_fts").op("MATCH")
            if positive is not None:
                match = positive if negative is None else f"({positive}) NOT ({negative})"
                params["match"] = match
                if walk:
                    # One account's list order, each message asked of FTS5 by its rowid.
                    stmt = stmt.where(
                        _M.account_id == bindparam("walk_account", type_=BigInteger()),
                        exists()
                        .where(_FTS.c.rowid == _M.id)
                        .where(fts_match(bindparam("match", type_=Text()))),
                    )
                else:
                    stmt = stmt.join(_FTS, _FTS.c.rowid == _M.id).where(
                        fts_match(bindparam("match", type_=Text()))
                    )
            elif negative is not None:
                params["neg"] = negative
                stmt = stmt.where(
                    _M.id.not_in(
                        select(_FTS.c.rowid).where(fts_match(bindparam("neg", type_=Text())))
                    )
                )
        stmt = stmt.where(visible_accounts_clause(viewer, owner), shown(_M.state))
        if accounts is not None:
            params["account_ids"] = list(accounts)
            stmt = stmt.where(owner.in_(bindparam("account_ids", expanding=True)))
        stmt = stmt.where(*self._filters(query, order_at, params))
        if after:
            stmt = stmt.where(
                tuple_(order_at, order_id)
                < tuple_(
                    bindparam("pos_at", type_=UtcDateTime()),
                    bindparam("pos_id", type_=BigInteger()),
                )
            )
        stmt = stmt.order_by(order_at.desc(), order_id.desc()).limit(bindparam("lim"))
        return stmt, params

    @staticmethod
    def _filters(
        query: SearchQuery, order_at: Any, params: dict[str, Any]
    ) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if query.has_attachment is not None:
            has = exists().where(AttachmentRow.message_id == _M.id, AttachmentRow.inline.is_(False))
            out.append(has if query.has_attachment else not_(has))
        if query.unread is not None:
            seen = _flag("Seen")
            out.append(not_(seen) if query.unread else seen)
        if query.starred is not None:
            flagged = _flag("Flagged")
            out.append(flagged if query.starred else not_(flagged))
        for i, folder in enumerate((*query.in_folders, *query.not_in_folders)):
            name = f"folder_{i}"
            params[name] = folder
            value = bindparam(name, type_=Text())
            inside = exists().where(
                MessageLocationRow.message_id == _M.id,
                FolderRow.id == MessageLocationRow.folder_id,
                or_(func.lower(FolderRow.name) == value, FolderRow.role == value),
            )
            out.append(inside if i < len(query.in_folders) else not_(inside))
        if query.before is not None:
            params["before"] = query.before
            out.append(order_at < bindparam("before", type_=UtcDateTime()))
        if query.after is not None:
            params["after"] = query.after
            out.append(order_at >= bindparam("after", type_=UtcDateTime()))
        return out or [true()]
