"""Adapters: the only modules that touch an ORM's or driver's internals."""
