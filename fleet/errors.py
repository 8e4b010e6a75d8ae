"""Fleet-side domain exceptions, rooted in the project's LiftGuardError tree."""

from contract.errors import LiftGuardError


class FleetError(LiftGuardError):
    """Base of the fleet server's deliberate errors."""


class StoreError(FleetError, RuntimeError):
    """The database is unreachable or refused an operation."""


class AuthError(FleetError, PermissionError):
    """Login failed, the session is missing/expired, or the role is not enough."""


class NotAuthenticated(AuthError):
    """Who is asking is unknown: wrong password, no session, an expired one (HTTP 401)."""


class Forbidden(AuthError):
    """Who is asking is known but their role does not allow it (HTTP 403)."""


class CertificateError(FleetError, ValueError):
    """The CA material is missing or a certificate request is invalid."""
