"""DNS: the stub resolver and its wire format, DNS lists, reverse DNS, list health.
Imports only the core."""
