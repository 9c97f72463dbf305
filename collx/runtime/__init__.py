"""Runtime: the communicator, the collectives on buffers, and the one background worker."""
