"""The demo: a small blog (authors, posts, comments) on Tortoise-ORM, instrumented.

``poolwatch demo`` runs it on an embedded SQLite file, or on PostgreSQL when
``DATABASE_URL`` is set. It has a deliberately N+1 endpoint and its
``prefetch_related`` twin, so the difference shows on ``/metrics``.
"""
