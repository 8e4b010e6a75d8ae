"""install: first-time provisioning of a unit (questions, files, service unit)."""
