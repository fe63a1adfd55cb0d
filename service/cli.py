"""Command line entry point (placeholder until the daemon lands)."""


def main() -> None:
    """Run the CLI."""
