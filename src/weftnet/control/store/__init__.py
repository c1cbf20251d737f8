"""The store: SQLAlchemy Core tables (models), the SQL ``Tx`` (sql) and the Alembic
migrations shipped in the package. Imports nothing from the server or the CLI."""
