"""SQL text -> fingerprint: the statement with every value and placeholder made alike.

Two statements that differ only in literals, placeholder style (``$1``, ``?``, ``%s``,
``%(name)s``, ``:name``), identifier quoting, letter case of keywords, whitespace,
comments or the length of an ``IN (...)`` list share one fingerprint. That is what groups
the queries of a loop together for N+1 detection, and a fingerprint never contains a
value, so it is safe to export.

Pure and cached: the same SQL text is fingerprinted once.

>>> fingerprint('SELECT "a"."id" FROM "a" WHERE "a"."id" IN ($1, $2, $3) LIMIT 10')
'select a.id from a where a.id in (...) limit ?'
"""

from __future__ import annotations

import re
from typing import NamedTuple

from poolwatch.operations import operation_of
from poolwatch.textcache import TextCache

__all__ = ["SqlShape", "fingerprint", "shape"]

# One alternation, scanned left to right, so a quote inside a comment or a "?" inside a
# string literal is never mistaken for something else.
_TOKEN = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<string>'(?:[^']|'')*'|[eE]'(?:[^'\\]|\\.|'')*')
    | (?P<dollar>\$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$)
    | (?P<quoted>"(?:[^"]|"")*"|`[^`]*`|(?<![\w\]])\[[^\]']*\])
    | (?P<param>\$\d+|\?|%s|%\([^)]*\)s|(?<![:\w]):[A-Za-z_]\w*)
    | (?P<number>(?<![\w.])-?(?:0[xX][0-9A-Fa-f]+|0[bB][01]+|\d+\.?\d*|\.\d+)
                 (?:[eE][-+]?\d+)?(?![\w.]))
    | (?P<space>\s+)
    | (?P<word>[A-Za-z_][\w$]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
# Tokens are joined by single spaces first, so "id=?" and "id = ?" agree; these then
# collapse "in ( ? , ? )" of any length and multi-row "values ( ? , ? ) , ( ? , ? )".
_IN_LIST = re.compile(r"\bin \( \?(?: , \?)* \)")
# A cast on a placeholder ("$1::INTEGER", SQLAlchemy on asyncpg) says nothing about the
# value; dropping it lets the IN-list rule below see "in ( ? , ? )".
_PARAM_CAST = re.compile(r"\? : : [a-z_]\w*(?: \[ \])?")
_VALUES_ROWS = re.compile(r"\bvalues (\( \?(?: , \?)* \))(?: , \( \?(?: , \?)* \))*")
_TIDY = (("( ", "("), (" )", ")"), (" , ", ", "), (" . ", "."), (" ;", ";"), (" : : ", "::"))


def _tokens(sql: str) -> str:
    tokens: list[str] = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        text = match.group()
        if kind in ("comment", "space"):
            continue
        if kind in ("string", "dollar", "param", "number"):
            tokens.append("?")
        elif kind == "quoted":
            tokens.append(text[1:-1].replace('""', '"').lower())
        elif kind == "word":
            tokens.append(text.lower())
        else:
            tokens.append(text)
    return _PARAM_CAST.sub("?", " ".join(tokens))


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


def _shape(sql: str) -> SqlShape:
    text = _tokens(sql)
    longest = max((m.group().count("?") for m in _IN_LIST.finditer(text)), default=0)
    return SqlShape(_collapse(text), operation_of(sql), longest)


_memo = TextCache(_shape)


def fingerprint(sql: str) -> str:
    """The fingerprint of ``sql`` (lower-case, values replaced by ``?``).

    >>> fingerprint("select * from t where id = 5") == fingerprint("SELECT * FROM t WHERE id=?")
    True
    """
    return _memo.get(sql).fingerprint


def shape(sql: str) -> SqlShape:
    """Fingerprint, operation and ``IN``-list length of ``sql``, computed once per text.

    >>> shape("SELECT * FROM t WHERE id IN (?, ?)")
    SqlShape(fingerprint='select * from t where id in (...)', operation='SELECT', in_list=2)
    """
    return _memo.get(sql)
