"""``poolwatch run``: poolwatch in an app that was not changed for it.

* :mod:`.command`: the launcher (options, the command, its environment, ``exec``);
* :mod:`.options`, :mod:`.workers`, :mod:`.shared_dir`: the settings as options, the
  worker count of a server command line, the multiprocess directory;
* ``_bootstrap/sitecustomize.py``: what every Python process of the command runs first
  (post-import hooks; imports nothing of poolwatch until a hook fires);
* :mod:`.hooks`: the wrappers put on Starlette, FastAPI, SQLAlchemy, Tortoise once they
  are imported; :mod:`.automatic`: what they instrument, with which PoolWatch;
  :mod:`.names`: the pools' names.

A front layer, like the ``poolwatch`` command: it uses the agent's public API (the
``automatic=True`` calls) and never an adapter.
"""
