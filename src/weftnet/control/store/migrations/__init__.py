"""Alembic migrations of the control database, shipped inside the package.

``store.sql.SqlStore.migrate()`` runs them programmatically at server start. To write a new
one, change ``store/models.py`` and add ``versions/NNNN_what.py`` (by hand or with
``alembic revision --autogenerate`` against a scratch database, using a small
alembic.ini whose ``script_location`` points here); tests check that the migrated
schema matches ``models.py``.
"""
