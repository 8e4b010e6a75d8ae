"""Domain exceptions. Each mixes in the builtin a caller would naturally catch."""


class LiftGuardError(Exception):
    """Base of every error LiftGuard raises on purpose."""


class ConfigError(LiftGuardError, ValueError):
    """The configuration is invalid; the message names the field path."""


class ModelError(LiftGuardError, RuntimeError):
    """The model file is missing, corrupt, or does not match what the device expects."""


class CameraError(LiftGuardError, OSError):
    """The camera could not be opened or read."""


class PayloadError(LiftGuardError, ValueError):
    """An MQTT payload failed validation (rejected and counted, never applied)."""


class ActuatorError(LiftGuardError, OSError):
    """The door relay / pins could not be set up (no GPIO on this machine, a missing pin library)."""
