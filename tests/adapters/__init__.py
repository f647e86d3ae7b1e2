"""Tests of poolwatch.adapters: SQLAlchemy and Tortoise-ORM, against real databases, on
every supported version.
"""
