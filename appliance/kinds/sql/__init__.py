"""What the SQL kinds (postgres, sqlite, mysql) share: one scanner for SQL text (`scanner`) and
one binding compiler (`binding`), each following a dialect's rules as data (`dialect`: PostgreSQL's
and SQLite's; MySQL's is in `kinds/mysql/binding.py`), and a SQL server's config keys (`config`,
for postgres and mysql). Not a kind: nothing here is registered.
"""
