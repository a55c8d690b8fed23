"""The web UI: server-rendered pages (Jinja2), plain forms, a little JavaScript."""
