"""SQL text -> operation label (``SELECT``, ``INSERT``, ``UPDATE``, ``DELETE``, ``OTHER``).

Pure and cached: an ORM sends the same parameterised SQL text again and again, so the
classification is a dictionary hit on the hot path.
"""

from __future__ import annotations

from poolwatch.queries.textcache import TextCache

OPERATIONS = ("SELECT", "INSERT", "UPDATE", "DELETE", "OTHER")


def _classify(sql: str) -> str:
    text = sql.lstrip(" \t\r\n(")
    # Skip leading SQL comments (ORMs and sqlcommenter prepend them).
    while text.startswith(("--", "/*")):
        if text.startswith("--"):
            end = text.find("\n")
            text = "" if end < 0 else text[end + 1 :]
        else:
            end = text.find("*/")
            text = "" if end < 0 else text[end + 2 :]
        text = text.lstrip(" \t\r\n(")
    word = text[:7].upper()
    if word.startswith("WITH"):
        # A CTE's verb comes after the WITH clauses; find the main statement's verb.
        upper = text.upper()
        for verb in ("INSERT", "UPDATE", "DELETE"):
            if f") {verb} " in upper or f")\n{verb} " in upper:
                return verb
        return "SELECT"
    for verb in ("SELECT", "INSERT", "UPDATE", "DELETE"):
        if word.startswith(verb):
            return verb
    if word.startswith(("VALUES", "SHOW", "EXPLAIN")):
        return "SELECT"
    if word.startswith("REPLACE"):
        return "INSERT"
    return "OTHER"


_memo = TextCache(_classify)


def operation_of(sql: str) -> str:
    """Return the operation label for ``sql``.

    >>> operation_of("  select 1")
    'SELECT'
    >>> operation_of("WITH x AS (SELECT 1) DELETE FROM t")
    'DELETE'
    """
    return _memo.get(sql)
