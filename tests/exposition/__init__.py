"""Tests of poolwatch.exposition: the metrics endpoint and server, the middleware, route
templates, multiprocess.
"""
