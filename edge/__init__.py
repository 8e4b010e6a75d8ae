"""LiftGuard edge appliance: camera -> detector -> tracker -> policy -> relay/voice -> events."""

__version__ = "0.1.0"
