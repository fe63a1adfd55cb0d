"""Real servers for the test suite, as pytest fixtures (one module per server).

``tests/conftest.py`` registers every module below as a pytest plugin, so the fixtures are
available to all tests. Import the helper classes as ``servers.<module>`` (``tests/`` is on
``sys.path`` because it has no ``__init__.py``)::

    from servers.gitrepo import UpstreamRepo, git_env

Modules: :mod:`servers.procs` (shared start/readiness/stop logic), :mod:`servers.gitrepo`
(upstream repositories), :mod:`servers.git_http`, :mod:`servers.git_daemon`,
:mod:`servers.sshd`, :mod:`servers.s3`, :mod:`servers.gcs`, :mod:`servers.azurite`,
:mod:`servers.http_files`, :mod:`servers.ftp`, :mod:`servers.kv`, :mod:`servers.registry`
(Debian's docker-registry, and images pushed without a container engine),
:mod:`servers.webhook` (a flow server for Prefect 1's Webhook storage), and
:mod:`servers.codecommit_auth` (CodeCommit's SigV4 login, checked as the server would).
"""
