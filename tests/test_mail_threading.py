"""correspond.mail.threading: JWZ-style incremental threading with a guarded subject fallback."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from correspond.mail.parse import parse_message
from correspond.mail.threading import (
    SUBJECT_WINDOW,
    KnownMessage,
    ThreadDecision,
    ThreadInput,
    choose_thread,
    is_trivial_subject,
    normalize_subject,
    thread_input,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Budget 2026", "budget 2026"),
        ("Re: Budget 2026", "budget 2026"),
        ("RE: re: Re:Budget 2026", "budget 2026"),
        ("Fwd: Budget 2026", "budget 2026"),
        ("FW: Budget 2026", "budget 2026"),
        ("Fw: Budget 2026 (fwd)", "budget 2026"),
        ("AW: WG: Budget 2026", "budget 2026"),
        ("SV: VS: Budget 2026", "budget 2026"),
        ("Réf. : Budget 2026", "budget 2026"),
        ("RE[2]: Budget 2026", "budget 2026"),
        ("Re(3): Budget 2026", "budget 2026"),
        ("[acme-dev] Re: [acme-dev] Budget   2026 ", "budget 2026"),
        ("Re: [EXTERNAL] Budget 2026", "budget 2026"),
        ("回复\uff1aBudget 2026", "budget 2026"),
        ("Ответ: Budget 2026", "budget 2026"),
        ("STRASSE", "strasse"),
        ("Straße", "strasse"),
        ("Regarding the budget", "regarding the budget"),  # "Re" only as a prefix with a colon
        ("", ""),
        ("Re:", ""),
    ],
)
def test_normalize_subject(subject: str, expected: str) -> None:
    assert normalize_subject(subject) == expected


@pytest.mark.parametrize(
    ("subject", "trivial"),
    [
        ("", True),
        ("update", True),
        ("hello", True),
        ("hi", True),
        ("question", True),
        ("quick question", True),
        ("test", True),
        ("meeting", True),
        ("invoice", True),
        ("thank you", True),
        ("follow up", True),
        ("12345", True),
        ("!!!", True),
        ("ok", True),
        ("budget 2026", False),
        ("acme renewal", False),
        ("invoice 2026-0042 for acme", False),
        ("q3 board deck", False),
    ],
)
def test_trivial_subjects(subject: str, trivial: bool) -> None:
    assert is_trivial_subject(normalize_subject(subject)) is trivial


def test_thread_input_from_a_parsed_message() -> None:
    raw = (
        b"Message-ID: <c@x>\r\nIn-Reply-To: <b@x>\r\nReferences: <a@x> <b@x> <c@x>\r\n"
        b"From: Ann <Ann@Example.com>\r\nTo: bob@example.com, undisclosed:;\r\n"
        b"Cc: Carol <carol@example.com>\r\nReply-To: list@example.com\r\n"
        b"Subject: Re: [team] Budget 2026\r\nDate: Sun, 1 Mar 2026 09:00:00 +0000\r\n\r\nx"
    )
    ti = thread_input(parse_message(raw))
    assert ti.message_id == "c@x"
    assert ti.parent_ids == ("a@x", "b@x")  # own id dropped, In-Reply-To already present
    assert ti.normalized_subject == "budget 2026"
    assert ti.participants == frozenset({"ann@example.com", "bob@example.com", "carol@example.com"})
    assert ti.date == T0
    assert ti.is_reply


def test_in_reply_to_is_added_after_references() -> None:
    raw = b"Message-ID: <d@x>\r\nIn-Reply-To: <c@x>\r\nReferences: <a@x>\r\n\r\n"
    assert thread_input(parse_message(raw)).parent_ids == ("a@x", "c@x")


# --------------------------------------------------------------------------------------------
# An in-memory store that asks choose_thread exactly what the sync engine will ask.


@dataclass
class Store:
    messages: list[KnownMessage] = field(default_factory=list)
    next_id: int = 1

    def add(
        self,
        mid: str | None,
        parents: Iterable[str] = (),
        subject: str = "Budget 2026",
        people: Iterable[str] = ("ann@example.com", "bob@example.com"),
        date: datetime | None = T0,
    ) -> int:
        msg = ThreadInput(
            message_id=mid,
            parent_ids=tuple(parents),
            normalized_subject=normalize_subject(subject),
            participants=frozenset(people),
            date=date,
            is_reply=subject.lower().startswith(("re:", "fwd:", "aw:")),
        )
        related = [
            k
            for k in self.messages
            if (k.message_id in msg.parent_ids) or (mid is not None and mid in k.parent_ids)
        ]
        same = [
            k
            for k in self.messages
            if k.normalized_subject == msg.normalized_subject
            and (k.date is None or date is None or abs(k.date - date) <= timedelta(days=30))
        ]
        decision = choose_thread(msg, related, same)
        tid = decision.thread_id
        if tid is None:
            tid = self.next_id
            self.next_id += 1
        for other in decision.merge_thread_ids:
            self.messages = [
                KnownMessage(
                    tid, k.message_id, k.parent_ids, k.normalized_subject, k.participants, k.date
                )
                if k.thread_id == other
                else k
                for k in self.messages
            ]
        self.messages.append(
            KnownMessage(tid, mid, msg.parent_ids, msg.normalized_subject, msg.participants, date)
        )
        return tid

    def thread_of(self, mid: str) -> int:
        return next(k.thread_id for k in self.messages if k.message_id == mid)


def test_reply_joins_its_parent() -> None:
    s = Store()
    a = s.add("a@x")
    b = s.add("b@x", ["a@x"], subject="Re: Budget 2026")
    assert a == b


def test_child_before_parent_merges_threads() -> None:
    # C (refs A, B) and B' (refs A) arrive before A: two threads, then A proves they are one.
    s = Store()
    c = s.add("c@x", ["a@x", "b@x"], subject="Re: Budget 2026")
    d = s.add("d@x", ["a@x"], subject="Re: Budget 2026", people=["zed@example.com"])
    a = s.add("a@x", people=["ann@example.com"])
    assert len({s.thread_of(m) for m in ("a@x", "c@x", "d@x")}) == 1
    assert a == min(c, d)


def test_merge_decision_names_the_other_threads() -> None:
    known = [
        KnownMessage(7, "c@x", ("a@x", "b@x"), "budget 2026", frozenset({"x@y"}), T0),
        KnownMessage(3, "d@x", ("a@x",), "budget 2026", frozenset({"x@y"}), T0),
        KnownMessage(5, "e@x", ("a@x",), "budget 2026", frozenset({"x@y"}), T0),
    ]
    msg = ThreadInput("a@x", (), "budget 2026", frozenset({"x@y"}), T0)
    assert choose_thread(msg, known, []) == ThreadDecision(3, (5, 7))


def test_missing_middle_message() -> None:
    # A, then C whose parent B never arrives: C still joins A through References.
    s = Store()
    a = s.add("a@x")
    c = s.add("c@x", ["a@x", "b@x"], subject="Re: Budget 2026")
    assert a == c


def test_siblings_of_a_missing_parent_join() -> None:
    # Two replies to a root we never saw: JWZ's empty container ties them together.
    known = [KnownMessage(4, "r1@x", ("root@x",), "budget 2026", frozenset({"a@x"}), T0)]
    msg = ThreadInput("r2@x", ("root@x",), "budget 2026", frozenset({"b@x"}), T0)
    assert choose_thread(msg, known, []) == ThreadDecision(4, ())


def test_arrival_order_does_not_change_the_grouping() -> None:
    msgs = [
        ("a@x", [], "Budget 2026"),
        ("b@x", ["a@x"], "Re: Budget 2026"),
        ("c@x", ["a@x", "b@x"], "Re: Budget 2026"),
        ("d@x", ["a@x", "b@x", "c@x"], "Re: Budget 2026"),
        ("z@x", [], "Something else entirely"),
    ]
    for order in itertools.permutations(msgs):
        s = Store()
        for mid, parents, subject in order:
            s.add(mid, parents, subject)
        groups = {s.thread_of(m) for m in ("a@x", "b@x", "c@x", "d@x")}
        assert len(groups) == 1
        assert s.thread_of("z@x") not in groups


def test_reply_without_references_joins_by_guarded_subject() -> None:
    s = Store()
    a = s.add("a@x", subject="Budget 2026", people=["ann@example.com", "bob@example.com"])
    b = s.add(
        "b@x",
        subject="RE: Budget 2026",
        people=["bob@example.com", "ann@example.com"],
        date=T0 + timedelta(days=2),
    )
    assert a == b


def test_generic_subject_from_unrelated_people_stays_apart() -> None:
    s = Store()
    a = s.add("a@x", subject="Update", people=["ann@example.com", "bob@example.com"])
    b = s.add("b@x", subject="Update", people=["carl@other.example", "dana@other.example"])
    assert a != b


def test_generic_subject_stays_apart_even_with_a_shared_participant() -> None:
    s = Store()
    a = s.add("a@x", subject="Update", people=["ann@example.com", "bob@example.com"])
    b = s.add("b@x", subject="Re: Update", people=["ann@example.com", "bob@example.com"])
    assert a != b


def test_specific_subject_without_shared_participant_stays_apart() -> None:
    s = Store()
    a = s.add("a@x", subject="Budget 2026", people=["ann@example.com"])
    b = s.add("b@x", subject="Re: Budget 2026", people=["carl@other.example"])
    assert a != b


def test_thirty_one_days_apart_stays_apart() -> None:
    known = [KnownMessage(1, "a@x", (), "budget 2026", frozenset({"ann@example.com"}), T0)]
    late = ThreadInput(
        "b@x", (), "budget 2026", frozenset({"ann@example.com"}), T0 + timedelta(days=31), True
    )
    assert choose_thread(late, [], known) == ThreadDecision(None)
    edge = ThreadInput(
        "b@x", (), "budget 2026", frozenset({"ann@example.com"}), T0 + SUBJECT_WINDOW, True
    )
    assert choose_thread(edge, [], known) == ThreadDecision(1)


def test_subject_fallback_needs_dates() -> None:
    known = [KnownMessage(1, "a@x", (), "budget 2026", frozenset({"ann@example.com"}), None)]
    msg = ThreadInput("b@x", (), "budget 2026", frozenset({"ann@example.com"}), T0, True)
    assert choose_thread(msg, [], known) == ThreadDecision(None)


def test_subject_fallback_picks_the_nearest_conversation() -> None:
    people = frozenset({"ann@example.com"})
    known = [
        KnownMessage(1, "a@x", (), "budget 2026", people, T0 - timedelta(days=20)),
        KnownMessage(2, "b@x", (), "budget 2026", people, T0 - timedelta(days=1)),
    ]
    msg = ThreadInput("c@x", (), "budget 2026", people, T0, True)
    assert choose_thread(msg, [], known) == ThreadDecision(2)


def test_references_win_over_subject() -> None:
    people = frozenset({"ann@example.com"})
    related = [KnownMessage(9, "p@x", (), "other topic", people, T0)]
    same = [KnownMessage(2, "s@x", (), "budget 2026", people, T0)]
    msg = ThreadInput("c@x", ("p@x",), "budget 2026", people, T0, True)
    assert choose_thread(msg, related, same) == ThreadDecision(9)


def test_unresolvable_references_fall_back_to_subject() -> None:
    people = frozenset({"ann@example.com"})
    same = [KnownMessage(2, "s@x", (), "budget 2026", people, T0)]
    msg = ThreadInput("c@x", ("never-seen@x",), "budget 2026", people, T0, True)
    assert choose_thread(msg, [], same) == ThreadDecision(2)


def test_over_broad_candidates_are_ignored() -> None:
    # The caller may over-fetch; unrelated rows must not pull the message in.
    people = frozenset({"ann@example.com"})
    related = [KnownMessage(9, "q@x", ("zzz@x",), "other", people, T0)]
    same = [KnownMessage(2, "s@x", (), "different subject", people, T0)]
    msg = ThreadInput("c@x", ("p@x",), "budget 2026", people, T0, True)
    assert choose_thread(msg, related, same) == ThreadDecision(None)


def test_no_message_id_still_threads_by_references() -> None:
    known = [KnownMessage(5, "a@x", (), "budget 2026", frozenset(), T0)]
    msg = ThreadInput(None, ("a@x",), "budget 2026", frozenset(), T0)
    assert choose_thread(msg, known, []) == ThreadDecision(5)


def test_duplicate_message_id_joins_the_same_thread() -> None:
    known = [KnownMessage(5, "a@x", (), "budget 2026", frozenset(), T0)]
    msg = ThreadInput("a@x", (), "budget 2026", frozenset(), T0)
    assert choose_thread(msg, known, []) == ThreadDecision(5)


def test_naive_store_dates_are_read_as_utc() -> None:
    # SQLite returns naive datetimes; they must still compare with aware ones.
    known = [
        KnownMessage(
            1, "a@x", (), "budget 2026", frozenset({"ann@example.com"}), T0.replace(tzinfo=None)
        )
    ]
    msg = ThreadInput(
        "b@x", (), "budget 2026", frozenset({"ann@example.com"}), T0 + timedelta(hours=1), True
    )
    assert choose_thread(msg, [], known) == ThreadDecision(1)
