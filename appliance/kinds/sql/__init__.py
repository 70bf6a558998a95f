"""What the SQL kinds (postgres, sqlite) share: the binding compiler for SQL text (`binding`),
one lexer with a table per dialect. Not a kind: nothing here is registered.
"""
