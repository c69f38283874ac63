"""The pure core: policy types and their build from bytes, the schema, rules, scoring,
the decision, replies and the decision log's format. No sockets, files, clock or
threads of its own; it imports nothing from the other layers."""
