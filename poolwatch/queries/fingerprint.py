"""SQL text -> fingerprint: the statement's shape, with every value and placeholder made alike.

Two statements that differ only in literals, placeholder style (``$1``, ``?``, ``%s``,
``%(name)s``, ``:name``), identifier quoting, letter case of keywords, whitespace,
comments, the length of an ``IN (...)`` list, or what they select share one fingerprint.
That is what groups the queries of a loop together for N+1 detection. Select lists (and
INSERT column lists, RETURNING lists) are collapsed to ``...``: they make fingerprints
long, and an ORM may order them differently in each process. A fingerprint never
contains a value, so it is safe to export and to log.

What is a value depends on the SQL dialect: MySQL strings take backslash escapes and may
be double-quoted; SQLite takes a double-quoted word that names no column as a string;
PostgreSQL has ``E''`` and dollar-quoted strings. Unknown dialects are read with every
rule that keeps values out.

Pure and cached: the same SQL text is fingerprinted once per dialect.

>>> fingerprint('SELECT "a"."id" FROM "a" WHERE "a"."id" IN ($1, $2, $3) LIMIT 10')
'select ... from a where a.id in (...) limit ?'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from poolwatch.queries.operations import operation_of
from poolwatch.queries.textcache import TextCache

__all__ = [
    "DIALECTS", "END", "READ", "WRITE", "SqlShape", "dialect_of", "fingerprint", "shape",
    "shaper", "shapes",
]  # fmt: skip

POSTGRESQL, MYSQL, SQLITE, GENERIC = "postgresql", "mysql", "sqlite", ""
DIALECTS = (POSTGRESQL, MYSQL, SQLITE, GENERIC)

# What a statement is to N+1 and duplicate detection.
READ, WRITE, END = "read", "write", "end"
"""A read of application data, a write, the end of a transaction; ``""`` otherwise."""

_NUMBER = r"""(?<![\w.$])-?(?:0[xX][0-9A-Fa-f_]+|0[bBoO][0-7_]+|\d[\d_]*\.?[\d_]*|\.\d[\d_]*)
              (?:[eE][-+]?\d+)?"""
_PARAM = r"\$\d+|\?|%s|%\([^)]*\)s|(?<![:\w]):[A-Za-z_]\w*"
# An unterminated quote takes the rest of the text: a value cut short still never shows.
_SQ = r"'(?:[^']|'')*(?:'|$)"  # standard: '' is the only escape
_SQ_BACKSLASH = r"'(?:[^'\\]|\\.|'')*(?:'|\\?$)"
_DQ_BACKSLASH = r'"(?:[^"\\]|\\.|"")*(?:"|\\?$)'

# One alternation per dialect, scanned left to right, so a quote inside a comment or a
# "?" inside a string literal is never mistaken for something else. ``dq`` is a
# double-quoted token that is an identifier unless it stands where a value does (SQLite).
_PARTS = {
    POSTGRESQL: (
        r"--[^\n]*|/\*.*?\*/",
        rf"(?<![\w$])(?:[eE]{_SQ_BACKSLASH}|(?:[uU]&|[bBxXnN])?{_SQ})",
        r'"(?:[^"]|"")*"',
        None,
    ),
    MYSQL: (
        r"--[^\n]*|\#[^\n]*|/\*.*?\*/",
        rf"(?<![\w$])(?:_[A-Za-z0-9]+)?[bBxXnN]?(?:{_SQ_BACKSLASH}|{_DQ_BACKSLASH})",
        r"`(?:[^`]|``)*`",
        None,
    ),
    SQLITE: (
        r"--[^\n]*|/\*.*?\*/",
        rf"(?<![\w$])[xX]?{_SQ}",
        r"`(?:[^`]|``)*`|(?<![\w\]])\[[^\]']*\]",
        r'"(?:[^"]|"")*(?:"|$)',
    ),
    GENERIC: (
        r"--[^\n]*|/\*.*?\*/",
        rf"(?<![\w$])(?:[eE]|[uU]&|[bBxXnN])?{_SQ_BACKSLASH}",
        r"`(?:[^`]|``)*`|(?<![\w\]])\[[^\]']*\]",
        r'"(?:[^"]|"")*(?:"|$)',
    ),
}


def _scanner(dialect: str) -> re.Pattern[str]:
    comment, string, quoted, dq = _PARTS[dialect]
    dollar = r"|(?P<dollar>\$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$)" if dialect in (
        POSTGRESQL,
        GENERIC,
    ) else ""  # fmt: skip
    return re.compile(
        rf"""
          (?P<comment>{comment})
        | (?P<string>{string})
        {dollar}
        | (?P<quoted>{quoted})
        {f"| (?P<dq>{dq})" if dq else ""}
        | (?P<param>{_PARAM})
        | (?P<number>{_NUMBER})
        | (?P<space>\s+)
        | (?P<word>[^\W\d][\w$]*)
        | (?P<other>.)
        """,
        re.VERBOSE | re.DOTALL,
    )


_SCANNERS = {dialect: _scanner(dialect) for dialect in DIALECTS}
_IDENTIFIER = re.compile(r"[^\W\d][\w$]*\Z")
# After these a double-quoted token stands where a value does (SQLite's "name" = "bob").
_VALUE_BEFORE = frozenset({"=", "<", ">", "like", "glob", "then", "else"})
_CLAUSES = frozenset({"select", "from", "where", "set", "by", "values", "into", "on", "having"})

# Tokens are joined by single spaces first, so "id=?" and "id = ?" agree; these then
# collapse "in ( ? , ? )" of any length and multi-row "values ( ? , ? ) , ( ? , ? )".
_IN_LIST = re.compile(r"\bin \( \?(?: , \?)* \)")
# A cast on a placeholder ("$1::INTEGER", SQLAlchemy on asyncpg) says nothing about the
# value; dropping it lets the IN-list rule below see "in ( ? , ? )".
_PARAM_CAST = re.compile(r"\? : : [a-z_]\w*(?: \[ \])?")
_VALUES_ROWS = re.compile(r"\bvalues (\( \?(?: , \?)* \))(?: , \( \?(?: , \?)* \))*")
_TIDY = (
    *(("( ", "("), (" )", ")"), (" , ", ", "), (" . ", "."), (" ;", ";"), (" : : ", "::")),
    *(("! =", "!="), ("< >", "<>"), ("< =", "<="), ("> =", ">="), ("| |", "||")),
)
# The database's own catalogs (a table's name, or its schema's): what dialects and drivers
# read about the schema and the server.
_CATALOG_PREFIXES = ("pg_", "sqlite_")
_CATALOG_SCHEMAS = frozenset({"information_schema", "performance_schema", "mysql", "sys"})


def dialect_of(name: str) -> str:
    """The fingerprint dialect of a driver's or ORM's dialect name (``""``: unknown)."""
    name = name.lower()
    if name.startswith("postgres"):
        return POSTGRESQL
    if name in ("mysql", "mariadb"):
        return MYSQL
    if name.startswith("sqlite"):
        return SQLITE
    return GENERIC


def _double_quoted_value(name: str, follows: str, before: str, listed: bool, clause: str) -> bool:
    """Whether SQLite's ``"name"`` is a string: it is where a value stands, or not a name."""
    if not _IDENTIFIER.match(name):
        return True
    if follows == ".":
        return False  # "table"."column"
    return (
        before in _VALUE_BEFORE
        or listed
        # a select list: collapsed when there is a FROM, a value when there is none
        or (clause == "select" and before in ("select", ",", "distinct"))
    )


class _Scan:
    """The tokens of one statement, and what the next double-quoted token depends on."""

    __slots__ = ("clause", "depth", "in_list", "tokens")

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.in_list = 0  # depth of an open "in (" or "values (" list: its items are values
        self.depth = 0
        self.clause = ""  # the last clause keyword seen

    def double_quoted(self, text: str, follows: str) -> None:
        name = text[1:-1].replace('""', '"')
        before = self.tokens[-1] if self.tokens else ""
        listed = bool(self.in_list) and self.in_list == self.depth
        value = _double_quoted_value(name, follows, before, listed, self.clause)
        self.tokens.append("?" if value else name.lower())

    def other(self, text: str) -> None:
        if text.isalnum():  # a character no rule knows: never kept, it may be a value
            self.tokens.append("?")
            return
        if text == "(":
            self.depth += 1
            if self.tokens and self.tokens[-1] in ("in", "values"):
                self.in_list = self.depth
        elif text == ")":
            if self.in_list == self.depth:
                self.in_list = 0
            self.depth -= 1
        self.tokens.append(text)


_VALUE_KINDS = frozenset({"string", "dollar", "param", "number"})
# Punctuation that changes no state of the scan (parentheses do).
_PLAIN = frozenset(",.=<>!;:*+-/%|&~^[]")


def _tokens(sql: str, dialect: str) -> list[str]:
    scan = _Scan()
    tokens = scan.tokens
    for match in _SCANNERS[dialect].finditer(sql):
        kind = match.lastgroup
        text = match.group()
        if kind in ("comment", "space"):
            continue
        if kind in _VALUE_KINDS:
            tokens.append("?")
        elif kind == "quoted":
            tokens.append(text[1:-1].replace(text[0] * 2, text[0]).lower())
        elif kind == "dq":
            scan.double_quoted(text, sql[match.end() : match.end() + 1])
        elif kind == "word":  # the commonest token: handled here, not in a method
            word = text.lower()
            if word in _CLAUSES:
                scan.clause = word
            tokens.append(word)
        elif text in _PLAIN:
            tokens.append(text)
        else:
            scan.other(text)
    return tokens


_LIST_ENDS = {"select": ("from",), "returning": (";",)}


def _collapse_lists(tokens: list[str]) -> list[str]:
    """``select a, b from`` -> ``select ... from`` (at each nesting level), ``insert into t
    (a, b)`` -> ``insert into t (...)``, ``returning a, b`` -> ``returning ...``."""
    out: list[str] = []
    i, n = 0, len(tokens)
    while i < n:
        token = tokens[i]
        out.append(token)
        i += 1
        if token in _LIST_ENDS:
            j = _list_end(tokens, i, _LIST_ENDS[token])
            # A select list without FROM ("select 1", "select version()") is the statement.
            if j > i and (token == "returning" or (j < n and tokens[j] != ")")):
                out.append("...")
                i = j
        elif token == "into" and out[-2:-1] == ["insert"] and tokens[i + 1 : i + 2] == ["("]:
            j = _list_end(tokens, i + 2, ())
            out += [tokens[i], "(", "...", ")"]
            i = j + 1
    return out


def _list_end(tokens: list[str], start: int, ends: tuple[str, ...]) -> int:
    """Where the list from ``start`` ends: at one of ``ends`` or an unmatched ``)``."""
    depth = 0
    for j in range(start, len(tokens)):
        token = tokens[j]
        if token == "(":
            depth += 1
        elif token == ")":
            if depth == 0:
                return j
            depth -= 1
        elif depth == 0 and token in ends:
            return j
    return len(tokens)


def _role(tokens: list[str], operation: str) -> str:
    first = tokens[0] if tokens else ""
    if first in ("commit", "rollback", "end", "abort"):
        return END
    if operation in ("INSERT", "UPDATE", "DELETE"):
        return WRITE
    if operation != "SELECT" or first in ("show", "explain", "values", "describe", "desc"):
        return ""
    tables = [
        tokens[i + 1]
        for i, token in enumerate(tokens[:-1])
        if token in ("from", "join") and _IDENTIFIER.match(tokens[i + 1])
    ]
    # "select pg_catalog.version()", "select 1", reads of the catalogs: the dialect's or
    # the driver's bookkeeping (first-connect probes, health checks), not the app's data.
    if not tables or all(t.startswith(_CATALOG_PREFIXES) or t in _CATALOG_SCHEMAS for t in tables):
        return ""
    return READ


def _collapse(text: str) -> str:
    text = _IN_LIST.sub("in (...)", text)
    text = _VALUES_ROWS.sub(r"values \1", text)
    for before, after in _TIDY:
        text = text.replace(before, after)
    return text


class SqlShape(NamedTuple):
    """What N+1 detection needs to know about one SQL text."""

    fingerprint: str
    operation: str
    """``SELECT``, ``INSERT``, ``UPDATE``, ``DELETE`` or ``OTHER`` (see :mod:`operations`)."""
    in_list: int
    """Items in the longest ``IN (...)`` list: more than one makes the query a batch."""
    role: str = ""
    """``READ``, ``WRITE``, ``END`` (COMMIT, ROLLBACK) or ``""`` (bookkeeping)."""


def _shaper(dialect: str) -> TextCache[SqlShape]:
    def compute(sql: str) -> SqlShape:
        tokens = _tokens(sql, dialect)
        operation = operation_of(sql)
        text = _PARAM_CAST.sub("?", " ".join(_collapse_lists(tokens)))
        longest = max((m.group().count("?") for m in _IN_LIST.finditer(text)), default=0)
        return SqlShape(_collapse(text), operation, longest, _role(tokens, operation))

    return TextCache(compute)


_memos = {dialect: _shaper(dialect) for dialect in DIALECTS}


def fingerprint(sql: str, dialect: str = GENERIC) -> str:
    """The fingerprint of ``sql`` (lower-case, values replaced by ``?``).

    >>> fingerprint("select * from t where id = 5") == fingerprint("SELECT a FROM t WHERE id=?")
    True
    """
    return shaper(dialect)(sql).fingerprint


def shaper(dialect: str = GENERIC) -> Callable[[str], SqlShape]:
    """``shape`` for one dialect, as one bound method."""
    return _memos.get(dialect, _memos[GENERIC]).get


def shapes(dialect: str = GENERIC) -> TextCache[SqlShape]:
    """The cache behind ``shape`` for one dialect: the recorder's hot path reads it with
    ``known(sql) or get(sql)``, a dict hit with no Python call."""
    return _memos.get(dialect, _memos[GENERIC])


def shape(sql: str, dialect: str = GENERIC) -> SqlShape:
    """Fingerprint, operation, ``IN``-list length and role of ``sql``, once per text.

    >>> shape("SELECT * FROM t WHERE id IN (?, ?)").fingerprint
    'select ... from t where id in (...)'
    >>> shape("SELECT * FROM t WHERE id IN (?, ?)")[1:]
    ('SELECT', 2, 'read')
    """
    return shaper(dialect)(sql)
