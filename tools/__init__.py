"""Offline tooling: dataset building, the scene generator (data engine), training helpers."""
