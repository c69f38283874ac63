"""The fault and load suite: scenarios that send a known number of messages through a private
Postfix, spamgate, rbldnsd behind the fault-injecting DNS proxy and smtp-sink, and account for
every one of them (the ledger). `make soak` runs it in full (python -m tests.soak); its short
form runs inside `make test` (tests/e2e/test_soak.py)."""
