"""The web console: static assets (HTML, CSS, plain ES modules) shipped as package data.

Owns nothing at run time but the files; `appliance.http.console_routes` serves them. Never renders
data on the server.
"""
