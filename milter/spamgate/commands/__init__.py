"""The command line: run, check-config, explain, lists, the reference generator."""
