"""The fault campaign: rounds of hostile traffic against realistic apps, with the driver's
and the server's own counts checked after every round.

``python -m tests.campaign`` runs it (``--profile long`` for the full length); the test
suite runs the short profile (``tests/test_fault_campaign.py``). See :mod:`.run`.
"""
