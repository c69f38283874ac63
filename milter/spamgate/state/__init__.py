"""State: the SQLite and Redis stores, greylisting, remembered refusals. Imports only
the core."""
