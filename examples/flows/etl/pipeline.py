"""A second example flow, in a subdirectory, to show sparse checkouts (directories=)."""


def run() -> int:
    """Pretend to move some rows."""
    rows = [1, 2, 3]
    return sum(rows)
