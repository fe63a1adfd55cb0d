"""Step functions a Prefect worker runs from a ``prefect.yaml`` pull section.

The module path mirrors ``prefect.deployments.steps``, so a deployment names them
directly: ``runner_storage.deployments.steps.pull_package``.
"""
