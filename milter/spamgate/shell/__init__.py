"""The milter shell: the libmilter adapter, sessions, the daemon, systemd
notification, metrics and log formatting. Imports the layers below it."""
