"""The stack matrix: every supported ORM and driver, wired every way apps wire poolwatch,
with autosize off and on, against the same app without poolwatch.

* :mod:`.stacks`: the stacks (ORM, driver, database) and how each reaches its database;
* :mod:`.app`: the app, written the way real apps are, on either ORM;
* :mod:`.cell`: one stack, one wiring, one setup, run in a process of its own;
* :mod:`.run`: the whole matrix, each stack on a database and login of its own;
* :mod:`.verdicts`: what a cell must show against its stack's control, and the table.

``python -m tests.stacks`` runs the full mode and prints the table; the test suite runs
the short mode (``tests/test_stack_matrix.py``).
"""
