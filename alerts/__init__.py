"""poolwatch's Prometheus rules, generated: ``python -m alerts.build``.

``settings.toml`` holds the thresholds; ``settings`` reads it. ``model`` says what an
alert is (its rule and the promtool cases that test it), with ``series`` and ``humanize``
to build those cases; ``capacity``, ``traffic``, ``autosize`` and ``health`` are the rule
groups, ``recording`` the recording rules they read; ``render`` turns them into the rule
file and its unit tests, and ``build`` is the command. It imports poolwatch only for the
bucket bounds it exports; poolwatch never imports it.
"""
