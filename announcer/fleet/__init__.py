"""The fleet guard: the nodes of a group share their routes in etcd, so that a failure
every node sees at once never withdraws the last of them, and drains take turns.

Nothing here is imported unless the config has a ``[fleet]`` table (``requests`` is
loaded then): without one announcer behaves exactly as it always did.
"""
