"""collxrun, the launcher: ``spec`` says what runs where, ``local`` starts and supervises
the ranks of this machine, ``cli`` parses horovodrun-style arguments. Imports only
collx.config, collx.errors and collx.rendezvous, so it works without the C extension."""
