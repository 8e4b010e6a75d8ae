"""The scene generator: labelled synthetic elevator scenes and demo clips (see README.md)."""
