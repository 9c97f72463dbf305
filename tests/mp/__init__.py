"""Multi-process test helpers: ``launch`` (pytest side: run collxrun, collect per-rank
output) and ``worker`` (rank side: watchdog, exact checks, the final OK line). The other
modules here are worker scripts, run as plain ``python`` programs under collxrun."""
