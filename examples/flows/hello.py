"""An example flow file that runner-storage publishes from the demo's git repository."""


def hello(name: str = "world") -> str:
    """Return a greeting."""
    return f"hello, {name}"


if __name__ == "__main__":
    print(hello())
