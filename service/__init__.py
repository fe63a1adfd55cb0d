"""The runner-storage daemon and CLI."""
