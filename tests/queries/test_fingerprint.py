"""Fingerprints: values and styles made alike, structure kept, no value ever kept."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolwatch.queries.fingerprint import END, READ, WRITE, fingerprint, shape


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("SELECT * FROM t WHERE id = 5", "select * from t where id=?"),
        (
            'SELECT "t"."id" FROM "t" WHERE "t"."id" = $1',
            "SELECT `t`.`id` FROM `t` WHERE `t`.`id` = %s",
        ),
        ("SELECT a FROM t WHERE a IN ($1, $2, $3)", "SELECT a FROM t WHERE a IN (?)"),
        ("SELECT a FROM t WHERE b = :name", "SELECT a FROM t WHERE b = %(name)s"),
        ("SELECT a FROM t WHERE s = 'it''s'", "SELECT a FROM t WHERE s = 'other'"),
        ("SELECT a /* hint */ FROM t -- why\nWHERE x = 1", "SELECT a FROM t WHERE x = 2"),
        ("INSERT INTO t (a, b) VALUES (1, 2), (3, 4)", "INSERT INTO t (a, b) VALUES (?, ?)"),
        ("SELECT 1.5e3, -2", "SELECT 7, 8"),
        ("SELECT a::text FROM t", "SELECT a :: text FROM t"),
    ],
)
def test_alike_statements_share_a_fingerprint(first: str, second: str) -> None:
    assert fingerprint(first) == fingerprint(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("SELECT a FROM t WHERE id = 1", "SELECT a FROM u WHERE id = 1"),
        ("SELECT a FROM t WHERE id = 1", "SELECT a FROM t WHERE id > 1"),
        ("SELECT a FROM t WHERE x IN (1, 2)", "SELECT a FROM t WHERE x = 1"),
        ("SELECT a FROM t WHERE t1 = 1", "SELECT a FROM t WHERE t2 = 1"),  # names, not values
        ("SELECT 1", "SELECT 1 FROM t"),
    ],
)
def test_different_statements_differ(first: str, second: str) -> None:
    assert fingerprint(first) != fingerprint(second)


def test_no_value_survives() -> None:
    sql = (
        "SELECT * FROM users WHERE email = 'alice@example.com' AND pin = 4711 "
        "AND note = $tag$ secret $tag$ AND id IN (90210, 31337)"
    )
    result = fingerprint(sql)
    for value in ("alice", "4711", "secret", "90210", "31337"):
        assert value not in result
    expected = "select ... from users where email = ? and pin = ? and note = ? and id in (...)"
    assert result == expected


@pytest.mark.parametrize(
    "literal",
    [
        "ARRAY['s3cr3t']",
        "ARRAY['a', 's3cr3t']",
        "e'O\\'s3cr3t'",
        "E'O\\'s3cr3t'",
        "0x5EC12E7",
        "0b1011011",
        "X'5EC12E7'",
        "N's3cr3t'",
    ],
)
def test_no_literal_of_these_syntaxes_survives(literal: str) -> None:
    result = fingerprint(f"SELECT * FROM t WHERE a = {literal} AND b = 1")
    for value in ("s3cr3t", "5ec12e7", "1011011"):
        assert value not in result.lower()
    assert result.endswith("and b = ?")


def test_subscripts_are_not_bracket_identifiers() -> None:
    subscript = fingerprint("SELECT a FROM t WHERE tags[1] = 2")
    assert subscript == "select ... from t where tags [ ? ] = ?"
    bracketed = fingerprint("SELECT [id] FROM [t] WHERE [t].[id] = 1")
    assert bracketed == "select ... from t where t.id = ?"


def test_select_lists_are_collapsed_so_column_order_never_matters() -> None:
    # Tortoise may order a model's columns differently in each process.
    first = 'SELECT "id","name","email" FROM "user" WHERE "id"=$1 LIMIT $2'
    second = 'SELECT "email","id","name" FROM "user" WHERE "id"=$1 LIMIT $2'
    assert fingerprint(first, "postgresql") == fingerprint(second, "postgresql")
    assert fingerprint(first, "postgresql") == "select ... from user where id = ? limit ?"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            'INSERT INTO "post" ("title","author_id") VALUES ($1,$2) RETURNING "id"',
            "insert into post (...) values (?, ?) returning ...",
        ),
        (
            "SELECT count(*) FROM (SELECT a, b FROM t WHERE x = 1) AS sub",
            "select ... from (select ... from t where x = ?) as sub",
        ),
        ("SELECT a FROM t UNION SELECT b FROM u", "select ... from t union select ... from u"),
        ("select pg_catalog.version()", "select pg_catalog.version ()"),
    ],
)
def test_lists_collapse_at_every_level(sql: str, expected: str) -> None:
    assert fingerprint(sql, "postgresql") == expected


@pytest.mark.parametrize(
    ("sql", "dialect", "role"),
    [
        ("SELECT a FROM t WHERE id = ?", "", READ),
        ("UPDATE t SET a = ? WHERE id = ?", "", WRITE),
        ("COMMIT", "", END),
        ("ROLLBACK TO SAVEPOINT sa_savepoint_1", "", END),
        # the driver's and the dialect's bookkeeping
        ("select pg_catalog.version()", "postgresql", ""),
        ("select current_schema()", "postgresql", ""),
        ("show standard_conforming_strings", "postgresql", ""),
        ("SELECT t.oid FROM pg_catalog.pg_type t WHERE t.typname = $1", "postgresql", ""),
        ("SELECT @@transaction_isolation", "mysql", ""),
        ("SHOW VARIABLES LIKE 'sql_mode'", "mysql", ""),
        ("SELECT * FROM information_schema.tables WHERE table_name = %s", "mysql", ""),
        ('PRAGMA main.table_info("t")', "sqlite", ""),
        ("SELECT name FROM sqlite_master WHERE type='table'", "sqlite", ""),
        ("SELECT 1", "sqlite", ""),
        ("SAVEPOINT sa_savepoint_1", "", ""),
        ("RELEASE SAVEPOINT sa_savepoint_1", "", ""),
    ],
)
def test_what_a_statement_is_to_detection(sql: str, dialect: str, role: str) -> None:
    assert shape(sql, dialect).role == role


# -- no literal value of any syntax survives, on any dialect ------------------------------

SECRET = "zqx"  # every generated value carries it; lower case, as fingerprints are
_text = st.text(alphabet=st.sampled_from("aZ09 '\"\\$%?:-_.,()[]`#\n/*"), max_size=12)


def _value(draw: st.DrawFn) -> str:
    tail = draw(st.text(alphabet="abcdef0123456789", max_size=6))
    return draw(_text) + SECRET + tail + draw(_text)


def _standard(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _backslashed(value: str, quote: str) -> str:
    escaped = value.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return quote + escaped + quote


def _dollar(value: str, tag: str) -> str:
    return f"${tag}${value.replace('$', '')}${tag}$"


_LITERALS = {
    "postgresql": [
        _standard,
        lambda v: "E" + _backslashed(v, "'"),
        lambda v: "e" + _backslashed(v, "'"),
        lambda v: "U&" + _standard(v),
        lambda v: _dollar(v, ""),
        lambda v: _dollar(v, "tag"),
        lambda v: "ARRAY[" + _standard(v) + ", " + _standard(v) + "]",
        lambda v: _standard(v) + "::text",
    ],
    "mysql": [
        lambda v: _standard(v.replace("\\", "\\\\")),  # backslashes are escapes in MySQL
        lambda v: _backslashed(v, "'"),
        lambda v: _backslashed(v, '"'),
        lambda v: '"' + v.replace("\\", "\\\\").replace('"', '""') + '"',
        lambda v: "_utf8mb4" + _backslashed(v, "'"),
        lambda v: "N" + _backslashed(v, "'"),
    ],
    "sqlite": [
        _standard,
        lambda v: '"' + v.replace('"', '""') + '"',
    ],
    # An unknown dialect: a backslash in a standard string is read as an escape.
    "": [
        lambda v: _standard(v.replace("\\", "")),
        lambda v: "E" + _backslashed(v, "'"),
        lambda v: _backslashed(v, "'"),
    ],
}
_NUMBERS = [
    lambda h: str(int(h, 16)),
    lambda h: "-" + str(int(h, 16)),
    lambda h: str(int(h, 16)) + ".5e3",
    lambda h: "0x" + h,
    lambda h: "X'" + h + "'",
    lambda h: "x'" + h + "'",
]


@st.composite
def _statement(draw: st.DrawFn) -> tuple[str, str, str]:
    dialect = draw(st.sampled_from(list(_LITERALS)))
    if draw(st.booleans()):
        value = _value(draw)
        literal = draw(st.sampled_from(_LITERALS[dialect]))(value)
        secret = SECRET
    else:  # a number, written in any of the ways SQL writes one
        digits = draw(st.text(alphabet="123456789abcdef", min_size=6, max_size=10))
        literal = draw(st.sampled_from(_NUMBERS))(digits)
        secret = literal.lower().removeprefix("-").removeprefix("0x").strip("x'")[:6]
    template = draw(
        st.sampled_from(
            [
                "SELECT a FROM t WHERE b = {} AND c = 1",
                "SELECT a, {} AS x FROM t",
                "INSERT INTO t (a, b) VALUES ({}, {})",
                "UPDATE t SET a = {} WHERE id IN (1, {})",
                "SELECT a FROM t WHERE b LIKE {} -- a note\nAND c > {}",
                "SELECT {}",
            ]
        )
    )
    return template.replace("{}", literal), dialect, secret


@settings(max_examples=1500, deadline=None, derandomize=True, database=None)
@given(_statement())
def test_no_literal_value_survives_on_any_dialect(case: tuple[str, str, str]) -> None:
    sql, dialect, secret = case
    assert secret not in fingerprint(sql, dialect).lower(), sql


def test_readable_output() -> None:
    sql = 'SELECT "a"."id","a"."name" FROM "author" "a" WHERE "a"."id"=$1 LIMIT $2'
    assert fingerprint(sql) == "select ... from author a where a.id = ? limit ?"
