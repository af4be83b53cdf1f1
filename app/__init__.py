"""paycode's faces: settings, the Starlette app, routes, pages, services and the CLI."""
