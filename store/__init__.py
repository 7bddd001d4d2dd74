"""The event log and everything derived from it.

``branchpoint.store.events`` defines the event contract (light: msgspec only, imported by
the SDK); ``log`` the log interface and the in-memory backend; ``sql`` the SQLite and
PostgreSQL backends; ``tree``, ``values``, ``pairs`` the pure fold into trees, value
propagation and pair extraction; ``exports`` the JSONL formats. This package's
``__init__`` imports nothing so that importing the schema stays cheap.
"""
