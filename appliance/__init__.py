"""Appliance: one process between browsers and an organisation's databases and HTTP APIs.

The public face of the package is the CLI (`appliance.cli`); everything else is internal.
"""

__version__ = "0.1.0"
