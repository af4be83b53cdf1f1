"""HTTP routes. Each module exposes ``routes``: a list that app/main.py mounts."""
