"""The MySQL/MariaDB datasource kind (issue 23), in progress: its binding compiler only.

Owns nothing registered yet: the kind is NOT registered (no `@register`, and it is absent from
`appliance/kinds/__init__.py`) until its engine keeps every promise of the issue against a real
server. Never imports a driver.
"""
