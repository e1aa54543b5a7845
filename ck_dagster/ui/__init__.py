"""The UI behind a per-user token, for shared login nodes (``ck-dagster ui``)."""
