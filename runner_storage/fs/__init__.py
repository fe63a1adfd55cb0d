"""The fsspec boundary: every storage that reads or writes through fsspec goes through here.

* :mod:`~runner_storage.fs.protocols`: which URLs are taken, and what each protocol needs
  installed;
* :mod:`~runner_storage.fs.pool`: filesystems built with resolved, checked settings, and
  pooled between pulls (:mod:`~runner_storage.fs.settings`, :mod:`~runner_storage.fs.s3`),
  and for pulls of ``s3://`` a reader over botocore's own client
  (:mod:`~runner_storage.fs.s3_direct`) that lists and reads as s3fs does;
* :mod:`~runner_storage.fs.ftp`: fsspec's FTP filesystem made safe to sync from (its own
  connection per use, MLSD listings, one download at a time);
* :mod:`~runner_storage.fs.listing` and :mod:`~runner_storage.fs.transfer`: one recursive
  listing, bounded concurrent downloads;
* :mod:`~runner_storage.fs.errors`: third-party errors translated once;
* :mod:`~runner_storage.fs.entries`: a listing's entries and the path checks (pure);
* :mod:`~runner_storage.fs.paths`: paths given under a base folder or URL, kept inside it;
* :mod:`~runner_storage.fs.checksums`: the MD5 a listing promises, and content compared;
* :mod:`~runner_storage.fs.ignore`: ignore rules in gitignore syntax, and the local tree
  they filter.

This package imports no storage family: ``remote/``, ``blocks/`` and ``snapshots/`` use it.
Importing the package itself loads nothing; each module imports fsspec as it needs it.
"""
