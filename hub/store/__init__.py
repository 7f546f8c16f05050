"""PostgreSQL access: the pool, migrations and one query module per aggregate."""
