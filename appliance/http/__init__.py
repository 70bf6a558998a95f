"""The HTTP face of the appliance: the application factory, middlewares and thin handlers.

Handlers parse, authorise, call a service and serialise; they never build error responses by
hand (they raise from `appliance.errors`).
"""
