"""Tests of poolwatch.queries: fingerprints, call sites, the N+1 and duplicate rules,
findings and advice.
"""
