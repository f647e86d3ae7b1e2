"""The SQLAlchemy adapter, against real pools: SQLite (pysqlite, aiosqlite) and PostgreSQL.

Every test reads what a user would read, the metrics in the registry, and compares them
with the pool's own counters or with what the test itself did.
"""
