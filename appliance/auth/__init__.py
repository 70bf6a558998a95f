"""Users, roles, sessions, API tokens, TOTP two-factor login and login throttling.

Public face of the package. Never logs or audits a password, TOTP secret or code, token or
session id.
"""

from appliance.auth.passwords import Passwords
from appliance.auth.service import GENERIC_FAILURE, AuthService, LoginResult
from appliance.auth.sessions import COOKIE_NAME
from appliance.auth.users import User
from appliance.roles import ADMIN, DEVELOPER, ROLES, VIEWER, Principal, at_least, rank

__all__ = [
    "ADMIN",
    "COOKIE_NAME",
    "DEVELOPER",
    "GENERIC_FAILURE",
    "ROLES",
    "VIEWER",
    "AuthService",
    "LoginResult",
    "Passwords",
    "Principal",
    "User",
    "at_least",
    "rank",
]
