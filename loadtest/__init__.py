"""Phase-3 load tests: locust scenarios where every user is an agent using the library.

Importing this package does not import locust (which monkey-patches the
standard library with gevent); only ``loadtest/locustfile.py``, run by the
``locust`` command in its own processes, does.
"""
