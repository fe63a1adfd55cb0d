"""runner-storage: keep workers' code in sync with where it lives."""
