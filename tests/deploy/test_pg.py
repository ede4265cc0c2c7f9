"""The throwaway PostgreSQL harness (tests/pg.py) that store and retrain tests run against."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.pg import PostgresServer


def test_postgres_url_accepts_a_connection_and_a_query(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_databases_created_on_the_server_are_isolated(postgres: PostgresServer) -> None:
    first = sa.create_engine(postgres.create_database("isolation_a"))
    second = sa.create_engine(postgres.create_database("isolation_b"))
    try:
        with first.begin() as conn:
            conn.execute(sa.text("CREATE TABLE marker (id integer)"))
        with second.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
        assert tables == []
    finally:
        first.dispose()
        second.dispose()


def test_the_server_listens_on_loopback_only_and_needs_the_password(
    postgres: PostgresServer,
) -> None:
    assert postgres.host == "127.0.0.1"
    wrong = sa.create_engine(postgres.url.replace(postgres.password, "wrong-password"))
    try:
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            wrong.connect()
    finally:
        wrong.dispose()
