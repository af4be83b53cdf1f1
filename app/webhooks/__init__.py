"""Signed webhooks (spec §11): address checks, signing, one HTTP attempt, the delivery worker."""
