"""The play log: every play as one row in a database, queried and reported the same way in both stores.

Embedded mode writes it to SQLite (a file), distributed mode to PostgreSQL (`airtrace plays consume` reads
`airtrace.plays`). The package depends only on the play event JSON (monitor/events.py) and the catalog
metadata those events carry: `schema` is the table, `migrations` its versions (Alembic), `store` applies
events idempotently, `queries` lists and reports, `consumer` is the Kafka side, `bench` the scale benchmark.
"""
