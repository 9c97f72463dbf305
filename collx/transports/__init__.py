"""Control plane of the transports: who is where, and the authenticated sockets that the C
transports (csrc/transport/) take over. Nothing here is on the data path."""
