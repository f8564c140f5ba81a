"""Alembic's entry point: migrations run on the connection `monitor.playlog.store.migrate` hands over."""

from alembic import context

from monitor.playlog.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
