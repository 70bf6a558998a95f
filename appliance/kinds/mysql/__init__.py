"""The MySQL/MariaDB datasource kind (issue 23), in progress: its binding compiler (`binding`), its
config (`config`) and its engine (`engine`, over asyncmy's private names in `asyncmy_private`).

Owns nothing registered yet: the kind is NOT registered (no `@register`, and it is absent from
`appliance/kinds/__init__.py`) until the store migration widening `datasources.kind` lands and
the engine's remaining promises are tested (see docs/datasources.md, "MySQL/MariaDB"). Never
imports a driver.
"""
