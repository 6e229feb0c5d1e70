"""The SQL of docs/operations/key-rotation.md that counts sealed credentials per key id, on real envelopes."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from seedline_server.crypto import KeyRing, parse_keys

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations" / "key-rotation.md"

# The expression in docs/operations/key-rotation.md's query (checked below).
KEY_ID_SQL = "convert_from(substring(credentials from 3 for get_byte(credentials, 1)), 'UTF8')"


def test_the_page_shows_this_expression() -> None:
    assert KEY_ID_SQL in DOC.read_text(encoding="utf-8")


@pytest.mark.asyncio(loop_scope="session")
async def test_key_id_expression_reads_the_envelopes_key_id(migrated: str) -> None:
    keys = "2025-01:" + "A" * 43 + "=," + "2025-07:" + "B" * 43 + "="
    old, new = KeyRing(parse_keys(keys), "2025-01"), KeyRing(parse_keys(keys), "2025-07")
    envelopes = [old.seal(b"x", b"a"), old.seal(b"y", b"b"), new.seal(b"z", b"c")]
    conn = await asyncpg.connect(make_url(migrated).set(drivername="postgresql").render_as_string(False))
    try:
        rows = await conn.fetch(
            f"SELECT {KEY_ID_SQL} AS key_id, count(*) AS n "
            "FROM unnest($1::bytea[]) AS t(credentials) GROUP BY 1 ORDER BY 1",
            envelopes,
        )
    finally:
        await conn.close()
    assert [(r["key_id"], r["n"]) for r in rows] == [("2025-01", 2), ("2025-07", 1)]
