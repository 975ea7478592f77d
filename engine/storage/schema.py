"""The DuckDB schema as numbered migrations.

Each migration is a list of SQL statements run once, in order, inside one
transaction; ``meta.schema_version`` records the last one applied. Add new
migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "migrations"]


def migrations(dim: int) -> list[list[str]]:
    """All migrations, oldest first. ``dim`` is the embedder's dimension."""
    return [
        # 1: messages, facts with bitemporal history, events, per-user index generations.
        [
            "CREATE SEQUENCE seq_messages START 1",
            "CREATE SEQUENCE seq_facts START 1",
            "CREATE SEQUENCE seq_events START 1",
            """CREATE TABLE messages (
                id BIGINT PRIMARY KEY,
                user_id VARCHAR NOT NULL,
                agent_id VARCHAR,
                run_id VARCHAR,
                role VARCHAR NOT NULL,
                name VARCHAR,
                content VARCHAR NOT NULL,
                metadata JSON,
                observed_at TIMESTAMP NOT NULL,
                ingested_at TIMESTAMP NOT NULL,
                status VARCHAR NOT NULL,
                mode VARCHAR NOT NULL,
                error VARCHAR,
                attempts INTEGER NOT NULL DEFAULT 0
            )""",
            f"""CREATE TABLE facts (
                id BIGINT PRIMARY KEY,
                lineage_id BIGINT NOT NULL,
                user_id VARCHAR NOT NULL,
                agent_id VARCHAR,
                run_id VARCHAR,
                text VARCHAR NOT NULL,
                category VARCHAR,
                metadata JSON,
                content_hash VARCHAR NOT NULL,
                embedding FLOAT[{dim}] NOT NULL,
                source_message_id BIGINT,
                valid_from TIMESTAMP NOT NULL,
                valid_to TIMESTAMP,
                recorded_at TIMESTAMP NOT NULL,
                expired_at TIMESTAMP,
                superseded_by BIGINT
            )""",
            """CREATE TABLE fact_sources (
                fact_id BIGINT NOT NULL,
                message_id BIGINT NOT NULL,
                linked_at TIMESTAMP NOT NULL
            )""",
            """CREATE TABLE events (
                id BIGINT PRIMARY KEY,
                kind VARCHAR NOT NULL,
                fact_id BIGINT,
                lineage_id BIGINT,
                user_id VARCHAR NOT NULL,
                agent_id VARCHAR,
                run_id VARCHAR,
                old_text VARCHAR,
                new_text VARCHAR,
                occurred_at TIMESTAMP NOT NULL,
                actor VARCHAR NOT NULL,
                reason VARCHAR,
                message_id BIGINT
            )""",
            """CREATE TABLE index_state (
                user_id VARCHAR PRIMARY KEY,
                generation BIGINT NOT NULL
            )""",
        ],
        # 2: slot-keyed facts: who the fact is about, which attribute, and its value
        # (all NULL for facts stored without a slot, e.g. every fact from before).
        [
            "ALTER TABLE facts ADD COLUMN subject VARCHAR",
            "ALTER TABLE facts ADD COLUMN slot VARCHAR",
            "ALTER TABLE facts ADD COLUMN value VARCHAR",
        ],
    ]


SCHEMA_VERSION = len(migrations(1))
