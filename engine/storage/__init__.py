"""Storage: DuckDB as the source of truth for messages, fact versions and events.

``store`` opens the file and reads; ``writes`` is the one write path
(``with store.write() as tx:``); ``schema`` holds the numbered migrations;
``records`` turns rows into public types; ``exchange`` exports and imports.
"""
