"""poolwatch's Grafana dashboards, generated: ``python -m dashboards.build``.

``panel`` says what a panel is (its queries, title, description, unit) as plain data;
``pools``, ``queries`` and ``nplusone`` are the dashboards, one list of panels each;
``grafana`` turns them into Grafana's model with grafana-foundation-sdk, and ``build`` is
the command that writes the JSON. poolwatch never imports it.
"""
