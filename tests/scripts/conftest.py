"""The files here are programs that the tests run (as ``python FILE`` or ``svdguard run FILE``),
not test modules: keep pytest's doctest collection from importing them."""

collect_ignore_glob = ["*.py"]
