"""Query analysis: what a statement is, where it came from, and what is wrong with it.

* :mod:`.fingerprint` (a statement's shape, parameters stripped), :mod:`.operations`
  (its operation name) and :mod:`.textcache`;
* :mod:`.callsite`: the call path in the application's own code that sent it, with
  :mod:`.frames` (which frames are the application's, how a file is shown) and
  :mod:`.tasks` (following a gathered task or a greenlet to the code waiting for it);
* :mod:`.groups` (a scope's statements, grouped as they arrive) and :mod:`.detect` (the
  pure rules that judge them: N+1, duplicates, per-row writes in a loop);
* :mod:`.recorder`: one request's (or scope's) statements fed to the rules;
* :mod:`.findings` (the log and the recent list), :mod:`.hints` and
  :mod:`.suggestions` (the advice: which loader to add, which bulk API).

Pure modules here import only the standard library and ``poolwatch.events``; none
imports an adapter, :mod:`poolwatch.sizing` or the agent.
"""
