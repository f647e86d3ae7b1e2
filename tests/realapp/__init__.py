"""A small app shaped like real FastAPI apps: routers with prefixes at several levels, a
repository layer, a current-user dependency, two engines (read-write and read-only) and
SQLModel. tests/test_realapp.py runs its honest suite with the pytest plugin in raise mode.
"""
