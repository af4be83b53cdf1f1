"""Use cases: each opens one transaction, applies the model rules, commits, then publishes."""
