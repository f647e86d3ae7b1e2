"""Tests of poolwatch.sizing: the controller, the limiter, the database budget, autosize in
every wiring.
"""
