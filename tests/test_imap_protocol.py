"""The sans-IO IMAP response parser and command encoder: bytes in, values out, one case a line."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correspond.errors import ImapProtocolError
from correspond.imap.protocol import (
    Atom,
    Literal,
    Raw,
    ResponseParser,
    encode_command,
    format_sequence_set,
    parse_command,
    parse_response,
    parse_sequence_set,
    response_excerpt,
)
from correspond.imap.types import (
    Address,
    AppendUid,
    BodyPart,
    CapabilityResponse,
    ContinuationRequest,
    CopyUid,
    EnabledResponse,
    Envelope,
    ESearchResponse,
    ExistsResponse,
    ExpungeResponse,
    FetchResponse,
    FlagsResponse,
    GenericUntagged,
    IdResponse,
    ListResponse,
    Multipart,
    RecentResponse,
    ResponseCode,
    SearchResponse,
    StatusDataResponse,
    StatusResponse,
    TaggedResponse,
    VanishedResponse,
)

UTC = timezone.utc  # noqa: UP017  (kept beside the other timezone() offsets)


def code(name: str, value: Any = None) -> ResponseCode:
    return ResponseCode(name, value)


# ---------------------------------------------------------------------------------------------
# Whole responses: bytes -> the exact value
# ---------------------------------------------------------------------------------------------

WHOLE: list[tuple[bytes, object]] = [
    # tagged (RFC 3501 §7.1)
    (b"A1 OK LOGIN completed\r\n", TaggedResponse("A1", "OK", None, "LOGIN completed")),
    (
        b"A2 NO [TRYCREATE] no such mailbox\r\n",
        TaggedResponse("A2", "NO", code("TRYCREATE"), "no such mailbox"),
    ),
    (b"A3 BAD command unknown\r\n", TaggedResponse("A3", "BAD", None, "command unknown")),
    (b"a4 ok done\r\n", TaggedResponse("a4", "OK", None, "done")),  # lowercase from a broken server
    (b"A5 OK\r\n", TaggedResponse("A5", "OK", None, "")),
    (
        b"A6 OK [READ-WRITE] SELECT completed\r\n",
        TaggedResponse("A6", "OK", code("READ-WRITE"), "SELECT completed"),
    ),
    (
        b"A7 OK [READ-ONLY] EXAMINE completed\r\n",
        TaggedResponse("A7", "OK", code("READ-ONLY"), "EXAMINE completed"),
    ),
    (
        b"A8 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n",
        TaggedResponse(
            "A8", "OK", code("COPYUID", CopyUid(38505, (304, 319, 320), (3956, 3957, 3958))), "Done"
        ),
    ),
    (
        b"A9 OK [APPENDUID 38505 3955] APPEND completed\r\n",
        TaggedResponse(
            "A9", "OK", code("APPENDUID", AppendUid(38505, (3955,))), "APPEND completed"
        ),
    ),
    (
        b"A10 OK [COPYUID 1 bogus 2] moved\r\n",
        TaggedResponse("A10", "OK", code("COPYUID", "1 bogus 2"), "moved"),
    ),
    (
        b"A11 OK [CLOSED] previous mailbox closed\r\n",
        TaggedResponse("A11", "OK", code("CLOSED"), "previous mailbox closed"),
    ),
    (
        b"A12 NO [ALERT] Quota exceeded\r\n",
        TaggedResponse("A12", "NO", code("ALERT"), "Quota exceeded"),
    ),
    (
        b"A13 OK [CAPABILITY IMAP4rev1 idle] Logged in\r\n",
        TaggedResponse("A13", "OK", code("CAPABILITY", ("IMAP4REV1", "IDLE")), "Logged in"),
    ),
    (
        b"A14 NO [EXPUNGEISSUED] Some messages were expunged\r\n",
        TaggedResponse("A14", "NO", code("EXPUNGEISSUED"), "Some messages were expunged"),
    ),
    (
        b"A15 NO [BADCHARSET (UTF-8 US-ASCII)] bad charset\r\n",
        TaggedResponse("A15", "NO", code("BADCHARSET", ("UTF-8", "US-ASCII")), "bad charset"),
    ),
    (
        b"A16 OK [UNKNOWN-THING some text] ok\r\n",
        TaggedResponse("A16", "OK", code("UNKNOWN-THING", "some text"), "ok"),
    ),
    (
        b"A17 OK [MODIFIED 7,9] Conditional STORE failed\r\n",
        TaggedResponse("A17", "OK", code("MODIFIED", "7,9"), "Conditional STORE failed"),
    ),
    (
        b"A18 OK no code {5}\r\n",
        TaggedResponse("A18", "OK", None, "no code {5}"),
    ),  # resp-text never has literals
    # continuation (RFC 3501 §7.5)
    (b"+ Ready for literal data\r\n", ContinuationRequest("Ready for literal data")),
    (b"+\r\n", ContinuationRequest("")),
    (b"+ idling\r\n", ContinuationRequest("idling")),
    (b"+ dXNlcg==\r\n", ContinuationRequest("dXNlcg==")),
    (b"+ {5}\r\n", ContinuationRequest("{5}")),
    # untagged status (RFC 3501 §7.1)
    (b"* OK IMAP4rev1 Service Ready\r\n", StatusResponse("OK", None, "IMAP4rev1 Service Ready")),
    (
        b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n",
        StatusResponse("OK", code("UIDVALIDITY", 3857529045), "UIDs valid"),
    ),
    (
        b"* OK [UIDVALIDITY 1713632002544] too big but kept\r\n",
        StatusResponse("OK", code("UIDVALIDITY", 1713632002544), "too big but kept"),
    ),
    (
        b"* OK [UIDNEXT 4392] Predicted next UID\r\n",
        StatusResponse("OK", code("UIDNEXT", 4392), "Predicted next UID"),
    ),
    (
        b"* OK [UNSEEN 12] Message 12 is first unseen\r\n",
        StatusResponse("OK", code("UNSEEN", 12), "Message 12 is first unseen"),
    ),
    (
        b"* OK [HIGHESTMODSEQ 9223372036854775807] Highest\r\n",
        StatusResponse("OK", code("HIGHESTMODSEQ", 2**63 - 1), "Highest"),
    ),
    (
        b"* OK [NOMODSEQ] Sorry, this mailbox format doesn't support modsequences\r\n",
        StatusResponse(
            "OK", code("NOMODSEQ"), "Sorry, this mailbox format doesn't support modsequences"
        ),
    ),
    (
        b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n",
        StatusResponse("OK", code("PERMANENTFLAGS", ("\\Deleted", "\\Seen", "\\*")), "Limited"),
    ),
    (
        b"* OK [PERMANENTFLAGS ()] No permanent flags permitted\r\n",
        StatusResponse("OK", code("PERMANENTFLAGS", ()), "No permanent flags permitted"),
    ),
    (
        b"* OK [APPENDLIMIT 35651584] max\r\n",
        StatusResponse("OK", code("APPENDLIMIT", 35651584), "max"),
    ),
    (b"* OK [APPENDLIMIT] no value\r\n", StatusResponse("OK", code("APPENDLIMIT"), "no value")),
    (
        b"* OK [WEBALERT https://accounts.google.com/signin/continue?sarp=1] "
        b"Web login required.\r\n",
        StatusResponse(
            "OK",
            code("WEBALERT", "https://accounts.google.com/signin/continue?sarp=1"),
            "Web login required.",
        ),
    ),
    (
        b"* OK [ALERT] System shutdown in 10 minutes\r\n",
        StatusResponse("OK", code("ALERT"), "System shutdown in 10 minutes"),
    ),
    (
        b"* NO Disk is 98% full, please delete unnecessary data\r\n",
        StatusResponse("NO", None, "Disk is 98% full, please delete unnecessary data"),
    ),
    (b"* BAD garbage\r\n", StatusResponse("BAD", None, "garbage")),
    (
        b"* BYE Autologout; idle for too long\r\n",
        StatusResponse("BYE", None, "Autologout; idle for too long"),
    ),
    (
        b"* PREAUTH IMAP4rev1 server logged in as Smith\r\n",
        StatusResponse("PREAUTH", None, "IMAP4rev1 server logged in as Smith"),
    ),
    (b"* ok [uidnext 5] lower\r\n", StatusResponse("OK", code("UIDNEXT", 5), "lower")),
    (
        b"[COPYUID 55 31 6]\r\n",
        StatusResponse("OK", code("COPYUID", CopyUid(55, (31,), (6,))), ""),
    ),  # Exchange MOVE
    # capabilities (RFC 3501 §7.2.1, RFC 5161)
    (
        b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=GSSAPI LOGINDISABLED\r\n",
        CapabilityResponse(frozenset({"IMAP4REV1", "STARTTLS", "AUTH=GSSAPI", "LOGINDISABLED"})),
    ),
    (
        b"* capability imap4rev1 idle uidplus\r\n",
        CapabilityResponse(frozenset({"IMAP4REV1", "IDLE", "UIDPLUS"})),
    ),
    (b"* ENABLED CONDSTORE QRESYNC\r\n", EnabledResponse(frozenset({"CONDSTORE", "QRESYNC"}))),
    (b"* ENABLED\r\n", EnabledResponse(frozenset())),
    # mailbox size and updates (RFC 3501 §7.3, §7.4.1)
    (b"* 23 EXISTS\r\n", ExistsResponse(23)),
    (b"* 0 EXISTS\r\n", ExistsResponse(0)),
    (b"* 5 RECENT\r\n", RecentResponse(5)),
    (b"* 3 EXPUNGE\r\n", ExpungeResponse(3)),
    (b"* 4294967295 exists\r\n", ExistsResponse(4294967295)),
    (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $MDNSent NonJunk)\r\n",
        FlagsResponse(
            ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "$MDNSent", "NonJunk")
        ),
    ),
    (b"* FLAGS ()\r\n", FlagsResponse(())),
    # LIST / LSUB (RFC 3501 §7.2.2, RFC 6154, RFC 5258)
    (
        b'* LIST (\\Noselect) "/" ~/Mail/foo\r\n',
        ListResponse(("\\Noselect",), "/", b"~/Mail/foo", "~/Mail/foo"),
    ),
    (
        b'* LIST (\\HasNoChildren) "." "INBOX.Sent Items"\r\n',
        ListResponse(("\\HasNoChildren",), ".", b"INBOX.Sent Items", "INBOX.Sent Items"),
    ),
    (
        b'* LIST (\\HasNoChildren) NIL "Folder1"\r\n',
        ListResponse(("\\HasNoChildren",), None, b"Folder1", "Folder1"),
    ),
    (
        b'* LIST (\\HasNoChildren) "" "Folder1"\r\n',
        ListResponse(("\\HasNoChildren",), "", b"Folder1", "Folder1"),
    ),
    (b'* LIST () "/" INBOX\r\n', ListResponse((), "/", b"INBOX", "INBOX")),
    (
        b'* LIST (\\HasNoChildren \\Sent) "/" "[Gmail]/Sent Mail"\r\n',
        ListResponse(("\\HasNoChildren", "\\Sent"), "/", b"[Gmail]/Sent Mail", "[Gmail]/Sent Mail"),
    ),
    (
        b'* LIST (\\HasChildren \\Noselect) "/" [Gmail]\r\n',
        ListResponse(("\\HasChildren", "\\Noselect"), "/", b"[Gmail]", "[Gmail]"),
    ),
    (
        b'* LIST (\\HasNoChildren) "/" "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"\r\n',
        ListResponse(
            ("\\HasNoChildren",), "/", b"&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-", "Отправленные"
        ),
    ),
    (
        b'* LIST () "/" {11}\r\nFoo "Bar"/\\\r\n',
        ListResponse((), "/", b'Foo "Bar"/\\', 'Foo "Bar"/\\'),
    ),
    (b'* LIST () "/" "a\\"b\\\\c"\r\n', ListResponse((), "/", b'a"b\\c', 'a"b\\c')),
    (b'* LIST () "\\\\" "a\\\\b"\r\n', ListResponse((), "\\", b"a\\b", "a\\b")),
    (
        b'* LIST (\\Subscribed) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        ListResponse(("\\Subscribed",), "/", b"Foo", "Foo"),
    ),
    (b'* LIST () "/" "Foo" ("OLDNAME" ("Bar"))\r\n', ListResponse((), "/", b"Foo", "Foo")),
    (
        b'* LSUB () "." #news.comp.mail.misc\r\n',
        ListResponse((), ".", b"#news.comp.mail.misc", "#news.comp.mail.misc", "LSUB"),
    ),
    (
        b'* LIST () "/" "Entw\xc3\xbcrfe"\r\n',
        ListResponse((), "/", "Entwürfe".encode(), "Entwürfe"),
    ),  # UTF8=ACCEPT
    (
        b'* LIST () "/" "Entw\xfcrfe"\r\n',
        ListResponse((), "/", b"Entw\xfcrfe", "Entwürfe"),
    ),  # broken 8-bit
    (b'* LIST () "/" inbox\r\n', ListResponse((), "/", b"inbox", "inbox")),
    # STATUS (RFC 3501 §7.2.4)
    (
        b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n",
        StatusDataResponse(b"blurdybloop", "blurdybloop", {"MESSAGES": 231, "UIDNEXT": 44292}),
    ),
    (
        b'* STATUS "INBOX" (MESSAGES 1 RECENT 0 UIDNEXT 2 UIDVALIDITY 3 UNSEEN 0 '
        b"HIGHESTMODSEQ 9)\r\n",
        StatusDataResponse(
            b"INBOX",
            "INBOX",
            {
                "MESSAGES": 1,
                "RECENT": 0,
                "UIDNEXT": 2,
                "UIDVALIDITY": 3,
                "UNSEEN": 0,
                "HIGHESTMODSEQ": 9,
            },
        ),
    ),
    (
        b"* STATUS {8}\r\nFoo\r\nBar (MESSAGES 2)\r\n",
        StatusDataResponse(b"Foo\r\nBar", "Foo\r\nBar", {"MESSAGES": 2}),
    ),
    (
        b'* STATUS "INBOX" (APPENDLIMIT NIL MESSAGES 3)\r\n',
        StatusDataResponse(b"INBOX", "INBOX", {"MESSAGES": 3}),
    ),
    (
        b'* STATUS "&ZeVnLIqe-" (unseen 4)\r\n',
        StatusDataResponse(b"&ZeVnLIqe-", "日本語", {"UNSEEN": 4}),
    ),
    # SEARCH / ESEARCH (RFC 3501 §7.2.5, RFC 7162 §3.1.5, RFC 4731)
    (b"* SEARCH 2 3 6\r\n", SearchResponse((2, 3, 6))),
    (b"* SEARCH\r\n", SearchResponse(())),
    (
        b"* SEARCH 2 5 6 7 11 12 18 19 20 23 (MODSEQ 917162500)\r\n",
        SearchResponse((2, 5, 6, 7, 11, 12, 18, 19, 20, 23), 917162500),
    ),
    (b"* search 4294967295\r\n", SearchResponse((4294967295,))),
    (b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n', ESearchResponse("A282", False, min=2, count=3)),
    (b'* ESEARCH (TAG "A283") ALL 2,10:11\r\n', ESearchResponse("A283", False, all=(2, 10, 11))),
    (
        b'* ESEARCH (TAG "A284") UID MIN 4 MAX 9 COUNT 5 ALL 4:6,8:9 MODSEQ 124\r\n',
        ESearchResponse("A284", True, 4, 9, 5, (4, 5, 6, 8, 9), 124),
    ),
    (b'* ESEARCH (TAG "A285") UID\r\n', ESearchResponse("A285", True)),
    (b"* ESEARCH UID COUNT 0\r\n", ESearchResponse(None, True, count=0)),
    (
        b'* ESEARCH (TAG "A6") UID PARTIAL (1:10 101,102) COUNT 2\r\n',
        ESearchResponse("A6", True, count=2),
    ),
    # VANISHED (RFC 7162 §3.2.10)
    (
        b"* VANISHED (EARLIER) 300:303,405,411\r\n",
        VanishedResponse(True, (300, 301, 302, 303, 405, 411)),
    ),
    (b"* VANISHED 405,407,410\r\n", VanishedResponse(False, (405, 407, 410))),
    (b"* vanished (earlier) 1\r\n", VanishedResponse(True, (1,))),
    # uid-sets with ranges and lists (RFC 4315 §3), paired by position
    (
        b"A20 OK [COPYUID 7 1:3,5 10:13] Moved\r\n",
        TaggedResponse(
            "A20", "OK", code("COPYUID", CopyUid(7, (1, 2, 3, 5), (10, 11, 12, 13))), "Moved"
        ),
    ),
    (
        b"A21 OK [COPYUID 7 5,1:2 12,10:11] Done\r\n",
        TaggedResponse("A21", "OK", code("COPYUID", CopyUid(7, (5, 1, 2), (12, 10, 11))), "Done"),
    ),
    # unequal sets cannot be paired: the code's text is kept, the command's result is not lost
    (
        b"A22 OK [COPYUID 7 1:3,5 10:12] Done\r\n",
        TaggedResponse("A22", "OK", code("COPYUID", "7 1:3,5 10:12"), "Done"),
    ),
    (
        b"A23 OK [APPENDUID 7 1:3,5] Done\r\n",
        TaggedResponse("A23", "OK", code("APPENDUID", AppendUid(7, (1, 2, 3, 5))), "Done"),
    ),
    # numbers stop below 2^63 everywhere, response codes included
    (
        b"* OK [HIGHESTMODSEQ 9223372036854775808] too big\r\n",
        StatusResponse("OK", code("HIGHESTMODSEQ"), "too big"),
    ),
    (
        b"* OK [UIDVALIDITY 18446744073709551616] too big\r\n",
        StatusResponse("OK", code("UIDVALIDITY"), "too big"),
    ),
    (b"* OK [UIDNEXT x] odd\r\n", StatusResponse("OK", code("UIDNEXT"), "odd")),
    (b"* 9223372036854775807 EXISTS\r\n", ExistsResponse(2**63 - 1)),
    (b"* OK [] empty code\r\n", StatusResponse("OK", None, "empty code")),
    (b"A24 NO [TRYCREATE]\r\n", TaggedResponse("A24", "NO", code("TRYCREATE"), "")),
    (
        b"* BYE [UNAVAILABLE] Server shutting down\r\n",
        StatusResponse("BYE", code("UNAVAILABLE"), "Server shutting down"),
    ),
    # an unquoted name with spaces from a broken server is rejoined, not cut at the space
    (
        b'* LIST (\\HasNoChildren) "/" Sent Items\r\n',
        ListResponse(("\\HasNoChildren",), "/", b"Sent Items", "Sent Items"),
    ),
    (
        b'* LIST () "/" Sent Items ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        ListResponse((), "/", b"Sent Items", "Sent Items"),
    ),
    (
        b'* LIST (\\HasNoChildren) "/" {5}\r\nA&-B! ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        ListResponse(("\\HasNoChildren",), "/", b"A&-B!", "A&B!"),
    ),
    # Brackets in unquoted names: "[" is an ATOM-CHAR and "]" an ASTRING-CHAR (RFC 3501 §9),
    # balanced or not. Dovecot lists the parent of "[red]Alert[/red]" as [red]Alert[ unquoted.
    (b'* LIST () "/" [red]Alert[\r\n', ListResponse((), "/", b"[red]Alert[", "[red]Alert[")),
    (
        b'* LIST (\\HasChildren) "/" [red]Alert[/red]\r\n',
        ListResponse(("\\HasChildren",), "/", b"[red]Alert[/red]", "[red]Alert[/red]"),
    ),
    (b'* LIST () "/" a[b\r\n', ListResponse((), "/", b"a[b", "a[b")),
    (b'* LIST () "/" x]y\r\n', ListResponse((), "/", b"x]y", "x]y")),
    (b'* LIST () "/" ab]\r\n', ListResponse((), "/", b"ab]", "ab]")),
    (b'* LIST () "/" ]ab\r\n', ListResponse((), "/", b"]ab", "]ab")),
    (b'* LIST () "/" ab[\r\n', ListResponse((), "/", b"ab[", "ab[")),
    (b'* LIST () "/" [\r\n', ListResponse((), "/", b"[", "[")),
    (b'* LIST () "/" ]\r\n', ListResponse((), "/", b"]", "]")),
    (b'* LIST () "/" ][\r\n', ListResponse((), "/", b"][", "][")),
    (b'* LIST () "/" [bold]Boss\r\n', ListResponse((), "/", b"[bold]Boss", "[bold]Boss")),
    (b'* LIST () "/" foo[1]\r\n', ListResponse((), "/", b"foo[1]", "foo[1]")),
    (b'* LIST () "/" a[1]b[2]\r\n', ListResponse((), "/", b"a[1]b[2]", "a[1]b[2]")),
    (b'* LIST () "." INBOX.x]y[z\r\n', ListResponse((), ".", b"INBOX.x]y[z", "INBOX.x]y[z")),
    # a "]" later on the line does not turn an open "[" into a section swallowing the rest
    (
        b'* LIST () "/" a[b ("OLDNAME" ("x]y"))\r\n',
        ListResponse((), "/", b"a[b", "a[b"),
    ),
    (
        b'* LIST (\\Subscribed) "/" [x ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        ListResponse(("\\Subscribed",), "/", b"[x", "[x"),
    ),
    (b'* LSUB () "/" x]y\r\n', ListResponse((), "/", b"x]y", "x]y", "LSUB")),
    (
        b'* LSUB () "/" [red]Alert[\r\n',
        ListResponse((), "/", b"[red]Alert[", "[red]Alert[", "LSUB"),
    ),
    (b'* XLIST () "/" a[b\r\n', ListResponse((), "/", b"a[b", "a[b")),
    (b"* STATUS a[b (MESSAGES 1)\r\n", StatusDataResponse(b"a[b", "a[b", {"MESSAGES": 1})),
    (b"* STATUS x]y (MESSAGES 2)\r\n", StatusDataResponse(b"x]y", "x]y", {"MESSAGES": 2})),
    (b"* STATUS ]x[ (UNSEEN 0)\r\n", StatusDataResponse(b"]x[", "]x[", {"UNSEEN": 0})),
    (
        b"* STATUS [red]Alert[ (MESSAGES 3 UIDNEXT 4)\r\n",
        StatusDataResponse(b"[red]Alert[", "[red]Alert[", {"MESSAGES": 3, "UIDNEXT": 4}),
    ),
    (
        b"* STATUS [red]Alert[/red] (UIDNEXT 5)\r\n",
        StatusDataResponse(b"[red]Alert[/red]", "[red]Alert[/red]", {"UIDNEXT": 5}),
    ),
    # ... while a response code still opens resp-text, whatever brackets follow in the text
    (
        b"A30 OK [READ-WRITE] [red]Alert[ selected\r\n",
        TaggedResponse("A30", "OK", code("READ-WRITE"), "[red]Alert[ selected"),
    ),
    (
        b"* NO [TRYCREATE] x]y does not exist\r\n",
        StatusResponse("NO", code("TRYCREATE"), "x]y does not exist"),
    ),
    (
        b"* OK [PERMANENTFLAGS (\\Seen $a[b \\*)] Limited\r\n",
        StatusResponse("OK", code("PERMANENTFLAGS", ("\\Seen", "$a[b", "\\*")), "Limited"),
    ),
    (b"* FLAGS (\\Seen $a[b)\r\n", FlagsResponse(("\\Seen", "$a[b"))),
    # ESEARCH ALL keeps the server's order: ESORT (RFC 5267 §3.2) returns its sort order there
    (
        b'* ESEARCH (TAG "A7") UID ALL 7,14,6,3:1\r\n',
        ESearchResponse("A7", True, all=(7, 14, 6, 1, 2, 3)),
    ),
    # anything else
    (
        b'* NAMESPACE (("" "/")) NIL NIL\r\n',
        GenericUntagged("NAMESPACE", b'* NAMESPACE (("" "/")) NIL NIL'),
    ),
    (b'* ID ("name" "Dovecot")\r\n', IdResponse({"name": "Dovecot"})),
    (b'* QUOTA "" (STORAGE 10 512)\r\n', GenericUntagged("QUOTA", b'* QUOTA "" (STORAGE 10 512)')),
    (
        b'* METADATA "INBOX" (/private/comment {3}\r\nabc)\r\n',
        GenericUntagged("METADATA", b'* METADATA "INBOX" (/private/comment {3}\r\nabc)'),
    ),
    (b"* 3 XWEIRD foo\r\n", GenericUntagged("XWEIRD", b"* 3 XWEIRD foo")),
    # repeated spaces between tag or "*", status and text: sloppy, tolerated
    (b"C3  OK  noop done\r\n", TaggedResponse("C3", "OK", None, "noop done")),
    (b"C4   no   [TRYCREATE]  gone\r\n", TaggedResponse("C4", "NO", code("TRYCREATE"), "gone")),
    (b"C5  BAD\r\n", TaggedResponse("C5", "BAD", None, "")),
    (b"*  OK  [UIDNEXT 7]  ready\r\n", StatusResponse("OK", code("UIDNEXT", 7), "ready")),
    (b"*   BYE  going away\r\n", StatusResponse("BYE", None, "going away")),
    # resp-text is never a literal, even after repeated spaces (RFC 3501 §9)
    (b"*  NO  quota {5}\r\n", StatusResponse("NO", None, "quota {5}")),
    (b"*  3 EXISTS\r\n", ExistsResponse(3)),
]

# ID (RFC 2971 §3.2): string names, nstring values; quoted strings unescaped, literals decoded.
IDS: list[tuple[bytes, dict[str, str | None] | None]] = [
    (
        b'* ID ("name" "X" "os" NIL "quoted" "a\\"b" "lit" {5}\r\nHello)\r\n',
        {"name": "X", "os": None, "quoted": 'a"b', "lit": "Hello"},
    ),
    (b"* ID NIL\r\n", None),
    (b"* id nil\r\n", None),
    (b"* ID ()\r\n", {}),
    (b'* ID ("back" "c:\\\\dir")\r\n', {"back": "c:\\dir"}),
    (b'* ID ("empty" "" "nil-word" "NIL")\r\n', {"empty": "", "nil-word": "NIL"}),
    (b'* ID ({4}\r\nname "Dovecot")\r\n', {"name": "Dovecot"}),  # a literal name
    (b'* ID ("name" "Caf\xc3\xa9")\r\n', {"name": "Café"}),  # UTF-8 as sent
    (b'* ID ("v" {3}\r\n\xe9t\xe9)\r\n', {"v": "été"}),  # not UTF-8: Latin-1 best effort
    # a broken server: odd pairs are skipped, never a failed command
    (b'* ID ("name" "X" "lonely")\r\n', {"name": "X"}),
    (b'* ID ("name" ("a" "b") "os" "Linux")\r\n', {"os": "Linux"}),
    (b'* ID (NIL "x" "os" "Linux")\r\n', {"os": "Linux"}),
    (b"* ID (name X)\r\n", {"name": "X"}),  # atoms instead of strings
]


@pytest.mark.parametrize(("data", "fields"), IDS, ids=[c[0][:40].decode("latin-1") for c in IDS])
def test_id_response(data: bytes, fields: dict[str, str | None] | None) -> None:
    assert parse_response(data) == IdResponse(fields)


@pytest.mark.parametrize(
    ("data", "expected"), WHOLE, ids=[c[0][:40].decode("latin-1") for c in WHOLE]
)
def test_whole_response(data: bytes, expected: object) -> None:
    assert parse_response(data) == expected


# ---------------------------------------------------------------------------------------------
# FETCH items (RFC 3501 §7.4.2): bytes -> (attribute, value)
# ---------------------------------------------------------------------------------------------

AWARE = datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(timedelta(hours=-7)))
ENV_RFC = Envelope(
    date="Wed, 17 Jul 1996 02:23:25 -0700 (PDT)",
    subject="IMAP4rev1 WG mtg summary and minutes",
    from_=(Address("Terry Gray", None, "gray", "cac.washington.edu"),),
    sender=(Address("Terry Gray", None, "gray", "cac.washington.edu"),),
    reply_to=(Address("Terry Gray", None, "gray", "cac.washington.edu"),),
    to=(Address(None, None, "imap", "cac.washington.edu"),),
    cc=(
        Address(None, None, "minutes", "CNRI.Reston.VA.US"),
        Address("John Klensin", None, "KLENSIN", "MIT.EDU"),
    ),
    bcc=(),
    in_reply_to=None,
    message_id="<B27397-0100000@cac.washington.edu>",
)
ENV_RFC_WIRE = (
    b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" '
    b'"cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu")) ((NIL NIL "imap" '
    b'"cac.washington.edu")) ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL '
    b'"KLENSIN" "MIT.EDU")) NIL NIL "<B27397-0100000@cac.washington.edu>")'
)
ENV_NIL = Envelope(None, None, (), (), (), (), (), (), None, None)
TEXT_PLAIN = BodyPart(
    "text", "plain", {"charset": "US-ASCII"}, None, None, "7BIT", 3028, "1", lines=92
)

FETCH_ITEMS: list[tuple[bytes, str, object]] = [
    (b"* 1 FETCH (UID 4827313)\r\n", "uid", 4827313),
    (b"* 1 FETCH (uid 4294967295)\r\n", "uid", 4294967295),
    (
        b"* 1 FETCH (FLAGS (\\Seen \\Answered $Forwarded))\r\n",
        "flags",
        ("\\Seen", "\\Answered", "$Forwarded"),
    ),
    (b"* 1 FETCH (FLAGS ())\r\n", "flags", ()),
    (b'* 1 FETCH (INTERNALDATE "17-Jul-1996 02:44:25 -0700")\r\n', "internaldate", AWARE),
    (
        b'* 1 FETCH (INTERNALDATE " 1-Jan-2020 00:00:00 +0000")\r\n',
        "internaldate",
        datetime(2020, 1, 1, tzinfo=UTC),
    ),
    (
        b'* 1 FETCH (INTERNALDATE "1-jan-2020 23:59:59 +0530")\r\n',
        "internaldate",
        datetime(2020, 1, 1, 23, 59, 59, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ),
    (
        b'* 1 FETCH (INTERNALDATE "31-Feb-2020 00:00:00 +0000")\r\n',
        "extra",
        {"INTERNALDATE": "31-Feb-2020 00:00:00 +0000"},
    ),
    (b"* 1 FETCH (RFC822.SIZE 44827)\r\n", "size", 44827),
    (b"* 1 FETCH (RFC822.SIZE 3000000000)\r\n", "size", 3000000000),
    (b"* 1 FETCH (MODSEQ (624140003))\r\n", "modseq", 624140003),
    (b"* 1 FETCH (MODSEQ (9223372036854775807))\r\n", "modseq", 2**63 - 1),
    (b"* 1 FETCH (MODSEQ (0))\r\n", "modseq", 0),
    (b"* 1 FETCH (MODSEQ (-1))\r\n", "extra", {"MODSEQ": ("-1",)}),
    (b"* 1 FETCH (MODSEQ (9223372036854775808))\r\n", "modseq", None),
    (b"* 1 FETCH (X-GM-MSGID 1278455344230334865)\r\n", "gm_msgid", 1278455344230334865),
    (b"* 1 FETCH (X-GM-THRID 1266894439832287888)\r\n", "gm_thrid", 1266894439832287888),
    (
        b'* 1 FETCH (X-GM-LABELS (\\Inbox \\Sent Important "Muy Importante"))\r\n',
        "gm_labels",
        ("\\Inbox", "\\Sent", "Important", "Muy Importante"),
    ),
    (
        b'* 1 FETCH (X-GM-LABELS ("\\\\Important" {4}\r\nfoo\n "[Gmail]/Sent"))\r\n',
        "gm_labels",
        ("\\Important", "foo\n", "[Gmail]/Sent"),
    ),
    (b"* 1 FETCH (X-GM-LABELS ())\r\n", "gm_labels", ()),
    (b"* 1 FETCH (ENVELOPE " + ENV_RFC_WIRE + b")\r\n", "envelope", ENV_RFC),
    (b"* 1 FETCH (ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL))\r\n", "envelope", ENV_NIL),
    (
        b'* 1 FETCH (ENVELOPE ("d" {7}\r\nSub\r\nj! NIL NIL NIL NIL NIL NIL NIL "<m@x>"))\r\n',
        "envelope",
        Envelope("d", "Sub\r\nj!", (), (), (), (), (), (), None, "<m@x>"),
    ),
    # RFC 3501 §7.4.2 group syntax: an empty group leaves no address, markers are not addresses
    (
        b'* 1 FETCH (ENVELOPE ("d" "=?utf-8?q?caf=C3=A9?=" ((NIL NIL "undisclosed-recipients" NIL)'
        b"(NIL NIL NIL NIL)) NIL NIL NIL NIL NIL NIL NIL))\r\n",
        "envelope",
        Envelope("d", "=?utf-8?q?caf=C3=A9?=", (), (), (), (), (), (), None, None),
    ),
    (
        b'* 1 FETCH (ENVELOPE ("d" "caf\xc3\xa9" NIL NIL NIL NIL NIL NIL NIL NIL))\r\n',
        "envelope",
        Envelope("d", "café", (), (), (), (), (), (), None, None),
    ),
    (
        b'* 1 FETCH (ENVELOPE ("d" "caf\xe9" NIL NIL NIL NIL NIL NIL NIL NIL))\r\n',
        "envelope",
        Envelope("d", "café", (), (), (), (), (), (), None, None),
    ),
    (
        b'* 1 FETCH (ENVELOPE ("d" "short"))\r\n',
        "envelope",
        Envelope("d", "short", (), (), (), (), (), (), None, None),
    ),
    (
        b"* 2 FETCH (UID 14935 (ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)))\r\n",
        "envelope",
        ENV_NIL,
    ),  # Domino
    (b"* 1 FETCH (BODY[] {5}\r\nHello)\r\n", "sections", {"": b"Hello"}),
    (b"* 1 FETCH (BODY[] {0}\r\n)\r\n", "sections", {"": b""}),
    (b"* 1 FETCH (BODY[] NIL)\r\n", "sections", {"": None}),
    (b'* 1 FETCH (BODY[] "quoted")\r\n', "sections", {"": b"quoted"}),
    (b"* 1 FETCH (BODY[HEADER] {6}\r\nA: b\r\n)\r\n", "sections", {"HEADER": b"A: b\r\n"}),
    (
        b"* 1 FETCH (BODY[header.fields (From To)] {3}\r\nx\r\n)\r\n",
        "sections",
        {"HEADER.FIELDS (FROM TO)": b"x\r\n"},
    ),
    (b"* 1 FETCH (BODY[1.2.MIME] {2}\r\nab)\r\n", "sections", {"1.2.MIME": b"ab"}),
    (b"* 1 FETCH (BODY[TEXT]<0> {3}\r\nabc)\r\n", "partial_origins", {"TEXT": 0}),
    (b"* 1 FETCH (BODY[]<1024> {3}\r\nabc)\r\n", "sections", {"": b"abc"}),
    (b"* 1 FETCH (BINARY[1] ~{4}\r\n\x00\x01\x02\x03)\r\n", "sections", {"1": b"\x00\x01\x02\x03"}),
    (b"* 1 FETCH (BINARY.SIZE[1] 4)\r\n", "extra", {"BINARY.SIZE[1]": 4}),
    (b"* 1 FETCH (RFC822 {3}\r\nabc)\r\n", "sections", {"": b"abc"}),
    (b"* 1 FETCH (RFC822.HEADER {3}\r\nabc)\r\n", "sections", {"HEADER": b"abc"}),
    (b"* 1 FETCH (RFC822.TEXT {3}\r\nabc)\r\n", "sections", {"TEXT": b"abc"}),
    (
        b"* 1 FETCH (UID 3016 BODY[2.MIME] {3}\r\nabc BODY[2] )\r\n",
        "sections",
        {"2.MIME": b"abc", "2": None},
    ),  # Yandex
    (
        b"* 1 FETCH (BODY[1] {3}\r\n{5} BODY[2] {2}\r\n}\r)\r\n",
        "sections",
        {"1": b"{5}", "2": b"}\r"},
    ),
    (b"* 1 FETCH (BODY[] {6}\r\n)\r\n* 2)\r\n", "sections", {"": b")\r\n* 2"}),
    (
        b'* 1 FETCH (ANNOTATION (/comment (value.priv "x")))\r\n',
        "extra",
        {"ANNOTATION": ("/comment", ("value.priv", "x"))},
    ),
    (b"* 1 FETCH (PREVIEW {5}\r\nhello)\r\n", "extra", {"PREVIEW": b"hello"}),
    (
        b"* 1 FETCH (EMAILID (M6d99ac3275bb4e) THREADID NIL)\r\n",
        "extra",
        {"EMAILID": ("M6d99ac3275bb4e",), "THREADID": None},
    ),
    (
        b'* 1 FETCH (BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92))\r\n',
        "bodystructure",
        TEXT_PLAIN,
    ),
    # Group members carry the group name; a host-less address with no end marker is an address.
    (
        b'* 1 FETCH (ENVELOPE (NIL NIL NIL NIL NIL ((NIL NIL "team" NIL)("A" NIL "a" "x.org")'
        b'(NIL NIL "b" "y.org")(NIL NIL NIL NIL)("C" NIL "c" "z.org")) NIL NIL NIL NIL))\r\n',
        "envelope",
        Envelope(
            None,
            None,
            (),
            (),
            (),
            (
                Address("A", None, "a", "x.org", group="team"),
                Address(None, None, "b", "y.org", group="team"),
                Address("C", None, "c", "z.org"),
            ),
            (),
            (),
            None,
            None,
        ),
    ),
    (
        b'* 1 FETCH (ENVELOPE (NIL NIL (("Root" NIL "root" NIL)) NIL NIL NIL NIL NIL NIL NIL))\r\n',
        "envelope",
        Envelope(
            None, None, (Address("Root", None, "root", None),), (), (), (), (), (), None, None
        ),
    ),
    (
        b'* 1 FETCH (ENVELOPE (NIL NIL ((NIL NIL "g1" NIL)(NIL NIL "a" "x")(NIL NIL NIL NIL)'
        b'(NIL NIL "g2" NIL)(NIL NIL "b" "y")(NIL NIL NIL NIL)) NIL NIL NIL NIL NIL NIL NIL))\r\n',
        "envelope",
        Envelope(
            None,
            None,
            (Address(None, None, "a", "x", group="g1"), Address(None, None, "b", "y", group="g2")),
            (),
            (),
            (),
            (),
            (),
            None,
            None,
        ),
    ),
    # NIL or () where a list is required: the item goes to extra, the rest of the FETCH stays
    (b"* 1 FETCH (UID 3 ENVELOPE NIL)\r\n", "extra", {"ENVELOPE": None}),
    (b"* 1 FETCH (UID 3 BODYSTRUCTURE NIL)\r\n", "extra", {"BODYSTRUCTURE": None}),
    (b"* 1 FETCH (UID 3 BODYSTRUCTURE ())\r\n", "extra", {"BODYSTRUCTURE": ()}),
    (b"* 1 FETCH (BODYSTRUCTURE NIL UID 3)\r\n", "uid", 3),
    # Gmail ids are unsigned 64-bit; everything else stops below 2^63
    (b"* 1 FETCH (X-GM-MSGID 18446744073709551615)\r\n", "gm_msgid", 2**64 - 1),
    (b"* 1 FETCH (X-GM-THRID 9223372036854775808)\r\n", "gm_thrid", 2**63),
    # labels as sent (for STORE) and decoded for display
    (
        b'* 1 FETCH (X-GM-LABELS (\\Inbox "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-" Tom&-Jerry '
        b'"a \\"q\\"" &2D3eAA- {10}\r\n&ZeVnLIqe-))\r\n',
        "gm_label_names",
        ("\\Inbox", "Отправленные", "Tom&Jerry", 'a "q"', "😀", "日本語"),
    ),
    (
        b'* 1 FETCH (X-GM-LABELS ("&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-" Tom&-Jerry))\r\n',
        "gm_labels",
        ("&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-", "Tom&-Jerry"),
    ),
    (b"* 1 FETCH (UID 1)\r\n", "gm_label_names", None),
    # labels are astrings: lone brackets are part of them, and no "[" ... "]" spans two labels
    (
        b"* 1 FETCH (X-GM-LABELS (a[b x]y [red]Alert[ ]z \\Inbox))\r\n",
        "gm_labels",
        ("a[b", "x]y", "[red]Alert[", "]z", "\\Inbox"),
    ),
    (
        b"* 1 FETCH (X-GM-LABELS (a[b) BODY[HEADER.FIELDS (FROM)] {1}\r\nx)\r\n",
        "sections",
        {"HEADER.FIELDS (FROM)": b"x"},
    ),
    (b"* 1 FETCH (FLAGS ($a[b \\Seen) UID 2)\r\n", "flags", ("$a[b", "\\Seen")),
    # quoted header names in an echoed section give the same key as atoms
    (
        b'* 1 FETCH (BODY[HEADER.FIELDS ("From" "X-\\"Odd")] {3}\r\nx\r\n)\r\n',
        "sections",
        {'HEADER.FIELDS (FROM X-"ODD)': b"x\r\n"},
    ),
    (
        b"* 1 FETCH (BODY[1.HEADER.FIELDS.NOT (X-A X-B)]<0> {1}\r\nx)\r\n",
        "partial_origins",
        {"1.HEADER.FIELDS.NOT (X-A X-B)": 0},
    ),
    (b"* 1 FETCH (BINARY[2]<10> ~{1}\r\nx)\r\n", "partial_origins", {"2": 10}),
    (b"* 1 FETCH (BODY[]<9223372036854775807> {0}\r\n)\r\n", "partial_origins", {"": 2**63 - 1}),
]


@pytest.mark.parametrize(
    ("data", "attr", "expected"),
    FETCH_ITEMS,
    ids=[c[0][:50].decode("latin-1") for c in FETCH_ITEMS],
)
def test_fetch_item(data: bytes, attr: str, expected: object) -> None:
    resp = parse_response(data)
    assert isinstance(resp, FetchResponse)
    assert getattr(resp, attr) == expected


def test_fetch_whole_rfc_example() -> None:
    """RFC 3501 §8 sample FETCH, every attribute checked."""
    data = (
        b'* 12 FETCH (FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 02:44:25 -0700" RFC822.SIZE 4286 '
        b"ENVELOPE " + ENV_RFC_WIRE + b' BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL '
        b'"7BIT" 3028 92))\r\n'
    )
    assert parse_response(data) == FetchResponse(
        seq=12,
        flags=("\\Seen",),
        internaldate=AWARE,
        size=4286,
        envelope=ENV_RFC,
        bodystructure=TEXT_PLAIN,
    )


def test_fetch_lowercase_and_out_of_order_items() -> None:
    resp = parse_response(b"* 4 fetch (flags (\\seen) uid 9 x-gm-msgid 5 modseq (7))\r\n")
    assert resp == FetchResponse(seq=4, uid=9, flags=("\\seen",), gm_msgid=5, modseq=7)


# ---------------------------------------------------------------------------------------------
# BODYSTRUCTURE (RFC 3501 §7.4.2, §6.4.5 section numbers)
# ---------------------------------------------------------------------------------------------


def bodystructure(wire: bytes) -> Any:
    resp = parse_response(b"* 1 FETCH (BODYSTRUCTURE " + wire + b")\r\n")
    assert isinstance(resp, FetchResponse)
    return resp.bodystructure


ALT = Multipart(
    parts=(
        BodyPart("text", "plain", {"charset": "utf-8"}, None, None, "7BIT", 5235, "1", lines=112),
        BodyPart("text", "html", {"charset": "utf-8"}, None, None, "7BIT", 60479, "2", lines=873),
    ),
    subtype="alternative",
    section="",
)

BODYSTRUCTURES: list[tuple[bytes, object]] = [
    # Gmail, no extension data on the multipart
    (
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 5235 112 NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 60479 873 NIL NIL NIL) "ALTERNATIVE")',
        ALT,
    ),
    # single part, full extension data
    (
        b'("text" "plain" ("charset" "us-ascii" "format" "flowed") "<id@x>" "desc" '
        b'"quoted-printable"'
        b' 10 1 "md5sum" ("inline" ("filename" "a.txt")) ("en" "de") "http://x/loc")',
        BodyPart(
            "text",
            "plain",
            {"charset": "us-ascii", "format": "flowed"},
            "<id@x>",
            "desc",
            "quoted-printable",
            10,
            "1",
            lines=1,
            md5="md5sum",
            disposition="inline",
            disposition_params={"filename": "a.txt"},
            language=("en", "de"),
            location="http://x/loc",
        ),
    ),
    # basic part: no lines; language as a single string; NIL params; 0 size
    (
        b'("APPLICATION" "PDF" NIL NIL NIL "BASE64" 0 NIL ("ATTACHMENT" NIL) "EN")',
        BodyPart(
            "application",
            "pdf",
            {},
            None,
            None,
            "BASE64",
            0,
            "1",
            disposition="attachment",
            language=("EN",),
        ),
    ),
    # ("boundary" NIL): invalid params from imap.mail.ru -> empty value
    (
        b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1) "MIXED" ("boundary" NIL))',
        Multipart(
            (BodyPart("text", "plain", {}, None, None, "7BIT", 1, "1", lines=1),),
            "mixed",
            "",
            params={"boundary": ""},
        ),
    ),
    # NIL multipart subtype -> mixed
    (
        b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1) NIL)',
        Multipart(
            (BodyPart("text", "plain", {}, None, None, "7BIT", 1, "1", lines=1),), "mixed", ""
        ),
    ),
    # NIL where strings are expected (type, subtype, encoding)
    (
        b"(NIL NIL NIL NIL NIL NIL 5)",
        BodyPart("application", "octet-stream", {}, None, None, None, 5, "1"),
    ),
    # unescaped quotes inside a quoted string (Exchange/Domino)
    (
        b'("TEXT" "PLAIN" NIL NIL ""Quoted" description" "7BIT" 2 1)',
        BodyPart("text", "plain", {}, None, '"Quoted" description', "7BIT", 2, "1", lines=1),
    ),
    # literal where a string is expected
    (
        b'("TEXT" "PLAIN" ("NAME" {5}\r\nb\xc3\xa4r ) NIL NIL "8BIT" 2 1)',
        BodyPart("text", "plain", {"name": "bär "}, None, None, "8BIT", 2, "1", lines=1),
    ),
]


@pytest.mark.parametrize(("wire", "expected"), BODYSTRUCTURES)
def test_bodystructure(wire: bytes, expected: object) -> None:
    assert bodystructure(wire) == expected


def test_bodystructure_nested_message_rfc822_sections() -> None:
    """RFC 3501 §6.4.5 numbering: a message/rfc822 part's multipart body shares its number."""
    wire = (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 1 NIL NIL NIL)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 500 '
        b'(NIL "inner subject" NIL NIL NIL NIL NIL NIL NIL "<i@x>")'
        b'(("TEXT" "PLAIN" NIL NIL NIL "QUOTED-PRINTABLE" 20 2)'
        b'("IMAGE" "GIF" ("NAME" "a.gif") "<c@x>" NIL "BASE64" 300)'
        b' "MIXED") 30 NIL NIL NIL)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 50 (NIL "single" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b'("TEXT" "HTML" NIL NIL NIL "7BIT" 5 1) 3)'
        b' "MIXED" ("BOUNDARY" "xyz") ("inline" NIL) NIL)'
    )
    body = bodystructure(wire)
    assert isinstance(body, Multipart)
    assert body.section == "" and body.subtype == "mixed" and body.params == {"boundary": "xyz"}
    assert body.disposition == "inline"
    text, msg, msg2 = body.parts
    assert isinstance(text, BodyPart) and text.section == "1"
    assert isinstance(msg, BodyPart) and msg.section == "2" and msg.lines == 30
    assert msg.envelope is not None and msg.envelope.subject == "inner subject"
    inner = msg.body
    assert isinstance(inner, Multipart) and inner.section == "2"
    assert [p.section for p in inner.parts] == ["2.1", "2.2"]
    assert isinstance(inner.parts[1], BodyPart) and inner.parts[1].id == "<c@x>"
    assert isinstance(msg2, BodyPart) and msg2.section == "3"
    assert (
        isinstance(msg2.body, BodyPart)
        and msg2.body.section == "3.1"
        and msg2.body.subtype == "html"
    )


def test_bodystructure_gmail_pseudo_part_and_nil_subtype_inside_message() -> None:
    """MailKit #1393-style input: a part that is only ("RELATED" NIL ("ATTACHMENT" NIL) NIL),
    and a message/rfc822 whose multipart body has a NIL subtype; neither may fail the FETCH."""
    wire = (
        b'(("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 1)'
        b'("RELATED" NIL ("ATTACHMENT" NIL) NIL)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 9 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)'
        b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1) NIL) 2)'
        b' "MIXED")'
    )
    body = bodystructure(wire)
    assert isinstance(body, Multipart) and [p.section for p in body.parts] == ["1", "2", "3"]
    html, pseudo, msg = body.parts
    assert isinstance(html, BodyPart) and html.subtype == "html"
    assert isinstance(pseudo, BodyPart) and pseudo.type == "related" and pseudo.size == 0
    assert isinstance(msg, BodyPart) and isinstance(msg.body, Multipart)
    assert msg.body.subtype == "mixed" and msg.body.parts[0].section == "3.1"


def test_bodystructure_nested_multipart_sections() -> None:
    wire = (
        b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1)(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1)'
        b'("TEXT" "HTML" NIL NIL NIL "7BIT" 1 1) "ALTERNATIVE") "MIXED")'
    )
    body = bodystructure(wire)
    assert isinstance(body, Multipart)
    alt = body.parts[1]
    assert isinstance(alt, Multipart) and alt.section == "2" and alt.subtype == "alternative"
    assert [p.section for p in alt.parts] == ["2.1", "2.2"]


@pytest.mark.parametrize(
    ("wire", "envelope", "inner", "lines", "disposition"),
    [
        # Exchange-style attached message: NIL envelope and NIL body, lines still given
        (b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 50 NIL NIL 3)', None, None, 3, None),
        (b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 50 () () 3)', ENV_NIL, None, 3, None),
        (
            b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 50 NIL ("TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1)'
            b' 3 NIL ("ATTACHMENT" NIL))',
            None,
            BodyPart("text", "plain", {}, None, None, "7BIT", 1, "1.1", lines=1),
            3,
            "attachment",
        ),
        # a basic part with extension data is not mistaken for envelope/body/lines
        (
            b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 50 NIL ("ATTACHMENT" NIL) NIL NIL)',
            None,
            None,
            None,
            "attachment",
        ),
    ],
)
def test_bodystructure_message_rfc822_with_nil_or_empty_fields(
    wire: bytes, envelope: object, inner: object, lines: int | None, disposition: str | None
) -> None:
    body = bodystructure(wire)
    assert isinstance(body, BodyPart) and (body.type, body.subtype, body.size) == (
        "message",
        "rfc822",
        50,
    )
    assert (body.envelope, body.body, body.lines, body.disposition) == (
        envelope,
        inner,
        lines,
        disposition,
    )
    assert body.language == ()


def test_bodystructure_message_rfc822_without_envelope_is_a_basic_part() -> None:
    body = bodystructure(b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 50)')
    assert body == BodyPart("message", "rfc822", {}, None, None, "7BIT", 50, "1")


def test_deep_nesting_raises_protocol_error_not_recursion_error() -> None:
    depth = 5000
    wire = (
        b"* 1 FETCH (BODYSTRUCTURE "
        + b"(" * depth
        + b'"TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1'
        + b")" * depth
        + b")\r\n"
    )
    with pytest.raises(ImapProtocolError):
        parse_response(wire)


def test_deep_message_rfc822_nesting_is_bounded() -> None:
    inner = b'("TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1)'
    for _ in range(45):  # two lists per level: 90 deep, within the tokenizer's limit
        inner = (
            b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 1 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) '
            + inner
            + b" 1)"
        )
    body = bodystructure(inner)
    levels = 0
    while isinstance(body, BodyPart) and body.body is not None:
        body = body.body
        levels += 1
    assert levels == 45
    assert isinstance(body, BodyPart) and body.section == ".".join(["1"] * 46)


# ---------------------------------------------------------------------------------------------
# Errors and resync
# ---------------------------------------------------------------------------------------------

NOT_IMAP = [
    b"HELLO WORLD\r\n",
    b"* \r\n",
    b"*\r\n",
    b"A1 MAYBE ok\r\n",
    b"\r\n",
    b"* 1 FETCH (UID 1\r\n",
    b"* 1 FETCH UID 1)\r\n",
    b"* 1 FETCH (UID abc)\r\n",
    b"* 1 FETCH (UID 99999999999999999999999)\r\n",
    b"* 1 FETCH (UID -5)\r\n",
    b"* 1 FETCH (RFC822.SIZE 9223372036854775808)\r\n",
    b'* 1 FETCH (FLAGS "unterminated)\r\n',
    b"* LIST (\\Noselect)\r\n",
    b"* VANISHED\r\n",
    b"* VANISHED 1:*\r\n",
    b"* SEARCH 1 two 3\r\n",
    b"* STATUS (MESSAGES 1)\r\n",
    b"* 1 FETCH (BODY[]<9223372036854775808> {0}\r\n)\r\n",
    b"* 1 FETCH (BODY[]<> {0}\r\n)\r\n",
    b"* 9223372036854775808 EXISTS\r\n",
    b"* 99999999999999999999999 FETCH (UID 1)\r\n",
    b"* " + b"9" * 5000 + b" EXPUNGE\r\n",
    b"* 1 FETCH (BODY[] (1 2))\r\n",
    b"* 1 FETCH (]\r\n",
    b"* ID\r\n",
    b'* ID "name"\r\n',
    b'* ID ("name" "X") NIL\r\n',
]


@pytest.mark.parametrize("data", NOT_IMAP)
def test_not_imap_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ImapProtocolError):
        parse_response(data)


@pytest.mark.parametrize("data", NOT_IMAP)
def test_resync_after_error(data: bytes) -> None:
    parser = ResponseParser()
    parser.feed(data + b"* 3 EXISTS\r\nA1 OK done\r\n")
    with pytest.raises(ImapProtocolError):
        parser.next_response()
    assert parser.next_response() == ExistsResponse(3)
    assert parser.next_response() == TaggedResponse("A1", "OK", None, "done")
    assert parser.next_response() is None


def test_refused_response_carries_a_sanitised_excerpt() -> None:
    # What the server sent, for a person to see: control characters (an escape sequence could
    # drive the terminal) are replaced, and the excerpt stays short.
    with pytest.raises(ImapProtocolError) as info:
        parse_response(b'* LIST () "/" "a\x1b[31mb\x00' + b"x" * 200 + b"\r\n")
    excerpt = response_excerpt(info.value)
    assert excerpt is not None
    assert excerpt.startswith('* LIST () "/" "a?[31mb?xxx')
    assert excerpt.endswith("…") and len(excerpt) == 81
    assert "unterminated" in str(info.value)  # the message itself is unchanged
    assert response_excerpt(ImapProtocolError("no note")) is None


def test_excerpt_of_a_refused_response_keeps_utf8_text() -> None:
    with pytest.raises(ImapProtocolError) as info:
        parse_response("* STATUS Entwürfe (MESSAGES x\r\n".encode())
    assert response_excerpt(info.value) == "* STATUS Entwürfe (MESSAGES x"


@pytest.mark.parametrize(
    ("fast", "general"),
    [
        # The fast path for "(UID u BODY[sec] {n}" must equal what the general path builds.
        (b"* 1 FETCH (UID 5 BODY[] {3}\r\nabc)\r\n", b"* 1 fetch (uid 5 body[] {3}\r\nabc)\r\n"),
        (b"* 2 FETCH (BODY[] {3}\r\nabc UID 7)\r\n", b"* 2 fetch (body[] {3}\r\nabc uid 7)\r\n"),
        (b"* 3 FETCH (BODY[1.2] {1}\r\nx)\r\n", b"* 3 fetch (body[1.2] {1}\r\nx)\r\n"),
        (b"* 4 FETCH (UID 9 BODY[TEXT] {0}\r\n)\r\n", b"* 4 fetch (uid 9 body[text] {0}\r\n)\r\n"),
        (
            b"* 5 FETCH (UID 9 BODY[] {1}\r\nx UID 9)\r\n",
            b"* 5 fetch (uid 9 body[] {1}\r\nx uid 9)\r\n",
        ),
    ],
)
def test_fast_fetch_path_matches_general_path(fast: bytes, general: bytes) -> None:
    a, b = parse_response(fast), parse_response(general)
    assert isinstance(a, FetchResponse) and a == b
    assert a.sections and a.seq > 0


def test_buffered_counts_unreturned_bytes() -> None:
    parser = ResponseParser()
    assert parser.buffered() == 0
    parser.feed(b"A1 OK Begin TLS now\r\n* 1 EXI")
    assert parser.next_response() == TaggedResponse("A1", "OK", None, "Begin TLS now")
    assert parser.buffered() == 7  # injected plaintext after STARTTLS's OK is visible
    parser.feed(b"STS\r\n")
    assert parser.next_response() == ExistsResponse(1)
    assert parser.buffered() == 0
    parser.feed(b"* 1 FETCH (BODY[] {400000}\r\n" + b"x" * 300000)
    assert parser.next_response() is None
    assert parser.buffered() > 300000


def test_incomplete_response_for_parse_response() -> None:
    with pytest.raises(ImapProtocolError):
        parse_response(b"* 1 FETCH (BODY[] {10}\r\nabc")


def test_max_line_raises_then_skips_rest_of_line() -> None:
    parser = ResponseParser(max_line=100)
    parser.feed(b"* OK " + b"x" * 150)
    with pytest.raises(ImapProtocolError):
        parser.next_response()
    parser.feed(b"y" * 5000)
    assert parser.next_response() is None
    assert len(parser._buf) - parser._pos < 200  # the overlong line is not kept
    parser.feed(b"zzz\r\n* 2 EXISTS\r\n")
    assert parser.next_response() == ExistsResponse(2)


def test_max_line_in_one_chunk() -> None:
    parser = ResponseParser(max_line=100)
    parser.feed(b"* OK " + b"x" * 150 + b"\r\n* 2 EXISTS\r\n")
    with pytest.raises(ImapProtocolError):
        parser.next_response()
    assert parser.next_response() == ExistsResponse(2)


def test_max_literal_skips_the_literal_without_buffering_it() -> None:
    parser = ResponseParser(max_literal=1000)
    parser.feed(b"* 1 FETCH (UID 1 BODY[] {5000}\r\n")
    with pytest.raises(ImapProtocolError):
        parser.next_response()
    for _ in range(5):
        parser.feed(b"a" * 1000)
        assert parser.next_response() is None
        assert len(parser._buf) - parser._pos <= 1000
    parser.feed(b" FLAGS (\\Seen))\r\n* 2 EXISTS\r\n")
    assert parser.next_response() == ExistsResponse(2)


def test_endless_literals_in_one_response_are_refused() -> None:
    parser = ResponseParser()
    parser.feed(b"* 1 FETCH (X-A {1}\r\n" + b"a X-A {1}\r\n" * 10_050 + b"a)\r\n* 4 EXISTS\r\n")
    with pytest.raises(ImapProtocolError):
        parser.next_response()
    assert parser.next_response() == ExistsResponse(4)


def test_pending_literal() -> None:
    parser = ResponseParser()
    parser.feed(b"* 1 FETCH (BODY[] {10}\r\nabc")
    assert parser.next_response() is None
    assert parser.pending_literal() == 7
    parser.feed(b"defghij)\r\n")
    assert parser.pending_literal() == 0
    resp = parser.next_response()
    assert isinstance(resp, FetchResponse) and resp.sections == {"": b"abcdefghij"}
    assert parser.pending_literal() == 0


def test_large_literal_in_64k_chunks_is_exact_and_counted() -> None:
    size = 20 * 1024 * 1024 + 7
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    stream = (
        b"* 9 FETCH (UID 77 BODY[] {%d}\r\n" % size + body + b" FLAGS (\\Seen))\r\nA1 OK done\r\n"
    )
    parser = ResponseParser()
    out: list[object] = []
    for i in range(0, len(stream), 65536):
        parser.feed(stream[i : i + 65536])
        if i + 65536 < len(stream) - 100:
            assert parser.pending_literal() > 0 or i == 0
        while (resp := parser.next_response()) is not None:
            out.append(resp)
    assert len(out) == 2
    fetch = out[0]
    assert isinstance(fetch, FetchResponse)
    assert fetch.uid == 77 and fetch.flags == ("\\Seen",)
    assert fetch.sections[""] == body
    assert out[1] == TaggedResponse("A1", "OK", None, "done")


def test_bare_lf_line_endings_are_tolerated() -> None:
    parser = ResponseParser()
    parser.feed(b"* 2 EXISTS\n* 1 FETCH (BODY[] {3}\nab\n)\nA1 OK x\n")
    assert parser.next_response() == ExistsResponse(2)
    resp = parser.next_response()
    assert isinstance(resp, FetchResponse) and resp.sections == {"": b"ab\n"}
    assert parser.next_response() == TaggedResponse("A1", "OK", None, "x")


# ---------------------------------------------------------------------------------------------
# Any split of the byte stream gives the same responses
# ---------------------------------------------------------------------------------------------

SESSION = b"".join(
    [
        b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] ready\r\n",
        b"A1 OK [CAPABILITY IMAP4rev1 IDLE CONDSTORE] Logged in\r\n",
        b'* LIST (\\HasNoChildren \\Sent) "/" {9}\r\nSent "Me"\r\n',
        b"* 3 EXISTS\r\n* OK [UIDVALIDITY 42] x\r\n",
        b"* 1 FETCH (UID 5 FLAGS (\\Seen) ENVELOPE "
        + ENV_RFC_WIRE
        + b" BODY[] {14}\r\nab\r\n{3}\r\ncd)\r\n)\r\n",
        b"* 2 FETCH (UID 6 BINARY[1] ~{3}\r\n\x00\r\n X-GM-LABELS (\\Inbox {2}\r\nhi))\r\n",
        b"* VANISHED (EARLIER) 1:3\r\n",
        b"+ idling\r\n",
        b"A2 OK done\r\n",
    ]
)


def _collect(parser: ResponseParser, pieces: list[bytes]) -> list[object]:
    out: list[object] = []
    for piece in pieces:
        parser.feed(piece)
        while (resp := parser.next_response()) is not None:
            out.append(resp)
    return out


def test_session_parses_in_one_piece() -> None:
    out = _collect(ResponseParser(), [SESSION])
    assert len(out) == 10
    list_resp = out[2]
    assert list_resp == ListResponse(("\\HasNoChildren", "\\Sent"), "/", b'Sent "Me"', 'Sent "Me"')
    fetch = out[5]
    assert isinstance(fetch, FetchResponse) and fetch.sections == {"": b"ab\r\n{3}\r\ncd)\r\n"}
    assert fetch.envelope == ENV_RFC
    fetch2 = out[6]
    assert isinstance(fetch2, FetchResponse) and fetch2.sections == {"1": b"\x00\r\n"}
    assert fetch2.gm_labels == ("\\Inbox", "hi")


def test_one_byte_at_a_time_is_identical() -> None:
    whole = _collect(ResponseParser(), [SESSION])
    bytewise = _collect(ResponseParser(), [SESSION[i : i + 1] for i in range(len(SESSION))])
    assert bytewise == whole


@pytest.mark.parametrize("split", range(1, 200))
def test_split_at_every_boundary(split: int) -> None:
    """Every two-piece split of the start of the session (covers each line and literal edge)."""
    whole = _collect(ResponseParser(), [SESSION])
    assert _collect(ResponseParser(), [SESSION[:split], SESSION[split:]]) == whole


def test_split_at_every_boundary_whole_session() -> None:
    whole = _collect(ResponseParser(), [SESSION])
    for split in range(len(SESSION) + 1):
        assert _collect(ResponseParser(), [SESSION[:split], SESSION[split:]]) == whole, split


@pytest.mark.parametrize("seed", range(20))
def test_random_chunk_sizes(seed: int) -> None:
    rng = random.Random(seed)
    pieces = []
    i = 0
    while i < len(SESSION):
        n = rng.choice([1, 2, 3, 7, 16, 64, 500])
        pieces.append(SESSION[i : i + n])
        i += n
    assert _collect(ResponseParser(), pieces) == _collect(ResponseParser(), [SESSION])


def test_every_table_case_fed_one_byte_at_a_time() -> None:
    for data, expected in WHOLE:
        assert _collect(ResponseParser(), [data[i : i + 1] for i in range(len(data))]) == [
            expected
        ], data
    for data, attr, expected in FETCH_ITEMS:
        (resp,) = _collect(ResponseParser(), [data[i : i + 1] for i in range(len(data))])
        assert resp == parse_response(data), data
        assert getattr(resp, attr) == expected, data


# ---------------------------------------------------------------------------------------------
# Sequence sets (RFC 3501 §9)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uids", "text"),
    [
        ([1, 2, 3, 4, 5, 8, 10, 11, 12], "1:5,8,10:12"),
        ([5], "5"),
        ([3, 1, 2, 2], "1:3"),
        ([10, 1], "1,10"),
        ([4294967295, 4294967294], "4294967294:4294967295"),
    ],
)
def test_format_sequence_set(uids: list[int], text: str) -> None:
    assert format_sequence_set(uids) == text
    assert parse_sequence_set(text) == tuple(sorted(set(uids)))


@pytest.mark.parametrize("uids", [[], [0], [-1, 2]])
def test_format_sequence_set_rejects(uids: list[int]) -> None:
    with pytest.raises(ValueError):
        format_sequence_set(uids)


@pytest.mark.parametrize(
    ("text", "star", "expected"),
    [
        ("1:3,7", None, (1, 2, 3, 7)),
        (b"5:3", None, (3, 4, 5)),
        ("304,319:320", None, (304, 319, 320)),
        ("3,1", None, (3, 1)),  # order kept: COPYUID pairs by position
        ("1:*", 4, (1, 2, 3, 4)),
        ("*", 9, (9,)),
        ("*:8", 6, (6, 7, 8)),
    ],
)
def test_parse_sequence_set(text: str | bytes, star: int | None, expected: tuple[int, ...]) -> None:
    assert parse_sequence_set(text, star=star) == expected


@pytest.mark.parametrize("text", ["", "1,", "a", "1:2:3", "1:*", "-1", "1 2"])
def test_parse_sequence_set_rejects(text: str) -> None:
    with pytest.raises(ImapProtocolError):
        parse_sequence_set(text)


def test_parse_sequence_set_refuses_huge_expansion() -> None:
    with pytest.raises(ImapProtocolError):
        parse_sequence_set("1:4294967295")
    assert len(parse_sequence_set("1:100", limit=100)) == 100


# ---------------------------------------------------------------------------------------------
# Command encoder (RFC 3501 §9, RFC 7888)
# ---------------------------------------------------------------------------------------------

ENCODE: list[tuple[tuple[Any, ...], dict[str, bool], tuple[bytes, ...]]] = [
    (("A1", "NOOP"), {}, (b"A1 NOOP\r\n",)),
    (("A2", "LOGIN", "joe", "s3cret"), {}, (b"A2 LOGIN joe s3cret\r\n",)),
    (
        ("A3", "LOGIN", "joe@example.com", 'pa ss"\\'),
        {},
        (b'A3 LOGIN joe@example.com "pa ss\\"\\\\"\r\n',),
    ),
    (("A4", "SELECT", b"&ZeVnLIqe-"), {}, (b"A4 SELECT &ZeVnLIqe-\r\n",)),
    (("A5", "SELECT", b"Sent Items"), {}, (b'A5 SELECT "Sent Items"\r\n',)),
    (("A6", "SELECT", b""), {}, (b'A6 SELECT ""\r\n',)),
    (("A7", "SELECT", "NIL"), {}, (b'A7 SELECT "NIL"\r\n',)),
    (("A8", "SELECT", b"[Gmail]/Sent"), {}, (b'A8 SELECT "[Gmail]/Sent"\r\n',)),
    (("A9", "SELECT", "Entwürfe"), {}, (b"A9 SELECT {9}\r\n", b"Entw\xc3\xbcrfe\r\n")),
    (("A9", "SELECT", "Entwürfe"), {"utf8": True}, (b'A9 SELECT "Entw\xc3\xbcrfe"\r\n',)),
    (
        ("A10", "LOGIN", "joe", b"line\r\nbreak"),
        {},
        (b"A10 LOGIN joe {11}\r\n", b"line\r\nbreak\r\n"),
    ),
    (
        ("A10", "LOGIN", "joe", b"line\r\nbreak"),
        {"literal_plus": True},
        (b"A10 LOGIN joe {11+}\r\nline\r\nbreak\r\n",),
    ),
    (
        ("A11", "APPEND", b"INBOX", [Atom("\\Seen")], Literal(b"Subject: x\r\n\r\nhi\r\n")),
        {},
        (b"A11 APPEND INBOX (\\Seen) {18}\r\n", b"Subject: x\r\n\r\nhi\r\n\r\n"),
    ),
    (
        ("A12", "UID FETCH", Raw(b"1:*"), Raw(b"(UID BODY.PEEK[])")),
        {},
        (b"A12 UID FETCH 1:* (UID BODY.PEEK[])\r\n",),
    ),
    (
        ("A13", "UID STORE", Raw(b"5"), Atom("+FLAGS.SILENT"), (Atom("\\Deleted"), Atom("$Junk"))),
        {},
        (b"A13 UID STORE 5 +FLAGS.SILENT (\\Deleted $Junk)\r\n",),
    ),
    (
        ("A14", "UID SEARCH", Atom("SINCE"), Atom("1-Feb-2024"), Atom("UID"), Raw(b"100:*")),
        {},
        (b"A14 UID SEARCH SINCE 1-Feb-2024 UID 100:*\r\n",),
    ),
    (
        ("A15", "FETCH", 1, [Atom("UID"), [Atom("nested"), 42]]),
        {},
        (b"A15 FETCH 1 (UID (nested 42))\r\n",),
    ),
    (("A16", "X", Literal(b"a"), Literal(b"b")), {}, (b"A16 X {1}\r\n", b"a {1}\r\n", b"b\r\n")),
    (("A17", "X", "a" * 2000), {}, (b"A17 X " + b"a" * 2000 + b"\r\n",)),
    (("A18", "X", "a b" * 600), {}, (b"A18 X {1800}\r\n", b"a b" * 600 + b"\r\n")),
    (("A19", "X", b"one\x01byte\xff"), {}, (b"A19 X {9}\r\n", b"one\x01byte\xff\r\n")),
]


@pytest.mark.parametrize(("args", "opts", "chunks"), ENCODE)
def test_encode_command(
    args: tuple[Any, ...], opts: dict[str, bool], chunks: tuple[bytes, ...]
) -> None:
    cmd = encode_command(
        *args, literal_plus=opts.get("literal_plus", False), utf8=opts.get("utf8", False)
    )
    assert cmd.tag == args[0]
    assert cmd.chunks == chunks


@pytest.mark.parametrize(
    "args",
    [
        ("A 1", "NOOP"),
        ("", "NOOP"),
        ("A+", "NOOP"),
        ("A1", "NOOP", Atom("bad\r\natom")),
        ("A1", "NOOP", Raw(b"x\ny")),
        ("A1", "NOOP", -1),
        ("A1", "NOOP\r\n"),
    ],
)
def test_encode_command_rejects(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        encode_command(*args)


@pytest.mark.parametrize("literal_plus", [False, True])
@pytest.mark.parametrize(
    "args",
    [
        ("A1", "SELECT", "nul\x00"),
        ("A1", "LOGIN", "joe", b"pass\x00word"),
        ("A1", "X", [b"ok", [b"deep\x00"]]),
    ],
)
def test_encode_command_refuses_nul(args: tuple[Any, ...], literal_plus: bool) -> None:
    # RFC 3501 §9: a literal is CHAR8 (%x01-ff); no string form can carry NUL.
    with pytest.raises(ValueError, match="NUL") as info:
        encode_command(*args, literal_plus=literal_plus)
    assert b"word" not in str(info.value).encode()  # the data (a password?) is not echoed


@pytest.mark.parametrize("literal_plus", [False, True])
def test_a_message_literal_keeps_its_stray_nul(literal_plus: bool) -> None:
    # Real mail carries stray NULs; servers store them, and refusing would lose the message.
    message = b"Subject: x\r\n\r\nnul\x00here\r\n"
    encoded = encode_command("A1", "APPEND", b"INBOX", Literal(message), literal_plus=literal_plus)
    assert message in b"".join(encoded.chunks)


@pytest.mark.parametrize("bad", [True, 1.5, None, {"a": 1}])
def test_encode_command_rejects_types(bad: object) -> None:
    with pytest.raises(TypeError):
        encode_command("A1", "X", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"A1 NOOP\r\n", ("A1", "NOOP", [])),
        (
            b"a2 uid fetch 1:* (UID BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>)\r\n",
            (
                "a2",
                "UID FETCH",
                [Atom("1:*"), [Atom("UID"), Atom("BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>")]],
            ),
        ),
        (b'A3 LOGIN "a\\"b" {3}\r\nx\r\n\r\n', ("A3", "LOGIN", [b'a"b', b"x\r\n"])),
        (b"A4 X ~{2}\r\n\x00\x01 {1+}\r\nz ()\r\n", ("A4", "X", [b"\x00\x01", b"z", []])),
    ],
)
def test_parse_command(data: bytes, expected: tuple[str, str, list[object]]) -> None:
    assert parse_command(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"A1 NOOP",
        b"NOOP\r\n",
        b"A1 X (a\r\n",
        b"A1 X a)\r\n",
        b"A1 X {5}\r\nab\r\n",
        b'A1 X "a\r\n',
        b"A1 X a  b\r\n",
    ],
)
def test_parse_command_rejects(data: bytes) -> None:
    with pytest.raises(ImapProtocolError):
        parse_command(data)


# ---------------------------------------------------------------------------------------------
# Fuzz: whatever arrives, the parser returns responses or raises ImapProtocolError, nothing else
# ---------------------------------------------------------------------------------------------


def _drain_all(parser: ResponseParser, data: bytes) -> int:
    parser.feed(data)
    count = 0
    for _ in range(10_000):
        try:
            resp = parser.next_response()
        except ImapProtocolError:
            continue
        if resp is None:
            return count
        count += 1
    raise AssertionError("parser did not settle")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    parser = ResponseParser(max_line=200, max_literal=100)
    _drain_all(parser, data + b"\r\n")
    # Whatever came before, the parser is usable afterwards (resync at the next line).
    if parser.pending_literal() == 0 and not parser._discard:
        assert _drain_all(parser, b"\r\n* 7 EXISTS\r\n") >= 1


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_session(data: st.DataObject) -> None:
    wire = bytearray(SESSION)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.sampled_from(b'()"{}[]\\ \r\n*+~0123456789NILabc\x00\xff'))
    _drain_all(ResponseParser(), bytes(wire))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    b"(",
                    b")",
                    b"NIL",
                    b'"x"',
                    b'"a\\"b"',
                    b"{3}\r\nabc",
                    b"~{1}\r\n\x00",
                    b"BODY[]",
                    b"BODY[1.2]<5>",
                    b"UID",
                    b"FLAGS",
                    b"ENVELOPE",
                    b"BODYSTRUCTURE",
                    b"123",
                    b"\\Seen",
                    b"X-GM-LABELS",
                    b"MODSEQ",
                    b"INTERNALDATE",
                    b'"1-Jan-2020 00:00:00 +0000"',
                    b"RFC822.SIZE",
                    b"BINARY[1]",
                ]
            ),
        ),
        max_size=30,
    )
)
def test_fuzz_fetch_token_soup(tokens: list[bytes]) -> None:
    _drain_all(ResponseParser(), b"* 1 FETCH (" + b" ".join(tokens) + b")\r\n")


_MUTATION_BYTES = b'()"{}[]<>\\ \r\n*+~0123456789NILabc\x00\xff&-:,.'


def _mutants(rng: random.Random, data: bytes) -> list[bytes]:
    """Truncations at a random point, and 1-4 random substitutions, deletions or insertions."""
    out = [data[: rng.randrange(len(data))], data[: rng.randrange(len(data))] + b"\r\n"]
    for _ in range(6):
        wire = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(wire))
            op = rng.random()
            if op < 0.5:
                wire[i] = rng.choice(_MUTATION_BYTES)
            elif op < 0.75:
                del wire[i : i + rng.randint(1, 8)]
            else:
                wire[i:i] = bytes([rng.choice(_MUTATION_BYTES)]) * rng.randint(1, 3)
            if not wire:
                break
        out.append(bytes(wire))
    return out


def test_mutated_and_truncated_table_cases_parse_or_raise_protocol_error() -> None:
    """Every table response, cut short or damaged (about 1,400 inputs, seeded): each parses or
    raises ImapProtocolError, and the parser resyncs for the response after it."""
    rng = random.Random(2)
    seeds = [c[0] for c in WHOLE] + [c[0] for c in FETCH_ITEMS]
    seeds += [b"* 1 FETCH (UID 1 BODYSTRUCTURE " + w + b")\r\n" for w, _ in BODYSTRUCTURES]
    checked = 0
    for data in seeds:
        for mutant in _mutants(rng, data):
            parser = ResponseParser(max_line=10_000, max_literal=10_000)
            _drain_all(parser, mutant)
            if parser.pending_literal() == 0:
                # Whatever the damage, a fresh line after it is read again.
                _drain_all(parser, b"\r\n* 7 EXISTS\r\n")
            checked += 1
    assert checked >= 1000


@pytest.mark.parametrize(
    ("line", "takes_fast_path"),
    [
        (
            b'* 1 FETCH (UID 1 FLAGS (\\Seen) INTERNALDATE "01-Oct-2026 10:58:02 +0000" '
            b"RFC822.SIZE 3 MODSEQ (2) BODY[] {3}\r\nabc)\r\n",
            True,
        ),
        (b"* 2 FETCH (UID 1 FLAGS () RFC822.SIZE 3 BODY[HEADER] {3}\r\nabc)\r\n", True),
        (b"* 3 FETCH (FLAGS (\\Seen $Junk \\Flagged) UID 1 BODY[] {3}\r\nabc)\r\n", True),
        (b'* 4 FETCH (INTERNALDATE " 1-Jan-2020 00:00:00 -0130" BODY[] {1}\r\nx UID 3)\r\n', True),
        # Anything unusual goes the general way and still parses the same.
        (b"* 5 FETCH (UID 1 UID 2 BODY[] {3}\r\nabc)\r\n", False),
        (
            b'* 6 FETCH (UID 1 INTERNALDATE "99-Oct-2026 10:58:02 +0000" BODY[] {3}\r\nabc)\r\n',
            False,
        ),
        (b'* 7 FETCH (UID 1 FLAGS ("odd") BODY[] {3}\r\nabc)\r\n', False),
        (b"* 8 FETCH (UID 1 X-GM-MSGID 9 BODY[] {3}\r\nabc)\r\n", False),
    ],
)
def test_fast_fetch_with_simple_items_matches_general_path(
    line: bytes, takes_fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from correspond.imap import protocol

    taken: list[bool] = []
    real = protocol._fast_fetch

    def spy(*args: Any) -> FetchResponse | None:
        result = real(*args)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(protocol, "_fast_fetch", spy)
    fast = parse_response(line)
    monkeypatch.setattr(protocol, "_fast_fetch", lambda *args: None)
    try:
        general: object = parse_response(line)
    except ImapProtocolError as exc:
        general = exc
    assert taken == [takes_fast_path]
    assert fast == general
