"""Tests of poolwatch.pools: one pool's account (drift, idle time between statements, held-
idle findings).
"""
