"""run: the pipeline loop, the session wiring the rooms together, CLI, fleet commands and selftest."""
