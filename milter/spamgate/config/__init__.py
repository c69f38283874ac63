"""Loading a policy: reading its files once, and the pre-flight checks against the
machine that run, check-config and a reload share. Imports only the core."""
