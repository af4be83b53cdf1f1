"""The realtime hub: carries (account_id, seq, event) from whoever commits to every socket of
that account on every instance. It knows nothing of payments."""
