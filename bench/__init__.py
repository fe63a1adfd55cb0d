"""The benchmark of issue 4: runner-storage against rclone, awscli, Prefect and git.

Run it with ``make bench`` or ``python -m bench`` (see bench/README.md).
"""
