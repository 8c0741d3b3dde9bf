"""Backend tests: the CancelBackend contract, Redis faults, and several real workers."""
