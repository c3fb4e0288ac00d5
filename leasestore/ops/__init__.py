"""The store's operations, each written once as a step both faces run.

Every public function here validates its arguments at once (bad input raises
:class:`~leasestore.errors.InvalidArgument` before anything is written) and
returns an :data:`~leasestore.db.engine.Op`: the blocking face hands it to
``Database.run``, the asyncio face awaits ``AsyncDatabase.run``. The decisions
(which lease wins, why a write was refused, retry or dead letter) live here,
not in the faces and not in the drivers.
"""
