"""Filters compiled to SQL agree with the same filters checked in Python."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidInputError
from engine.retrieval.filters import compile_filters, matches, validate_filters

values = st.one_of(
    st.integers(-5, 5), st.sampled_from(["a", "b", "ab", "10", "x y"]), st.booleans(),
)
metadata = st.dictionaries(
    st.sampled_from(["n", "s", "tags", "deep"]),
    st.one_of(values, st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
              st.fixed_dictionaries({"k": values})),
    max_size=4,
)
conditions = st.one_of(
    values,
    st.fixed_dictionaries({}, optional={
        "eq": values, "ne": values, "gt": st.integers(-5, 5), "lte": st.integers(-5, 5),
        "in": st.lists(values, min_size=1, max_size=3), "nin": st.lists(values, min_size=1,
                                                                         max_size=3),
        "contains": st.sampled_from(["a", "b", "x"]),
    }).filter(bool),
)
filter_dicts = st.dictionaries(
    st.sampled_from(["n", "s", "tags", "deep.k", "category"]), conditions, min_size=1, max_size=2
)


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(":memory:")
    connection.execute("CREATE TABLE facts (category VARCHAR, agent_id VARCHAR, run_id VARCHAR,"
                       " metadata JSON)")
    return connection


@settings(max_examples=300, deadline=None)
@given(meta=metadata, category=st.sampled_from([None, "a", "food"]), filters=filter_dicts)
def test_sql_and_python_agree(con: duckdb.DuckDBPyConnection, meta: dict[str, Any],
                              category: str | None, filters: dict[str, Any]) -> None:
    con.execute("DELETE FROM facts")
    con.execute("INSERT INTO facts VALUES (?, NULL, NULL, ?)", [category, json.dumps(meta)])
    sql, params = compile_filters(filters)
    in_sql = con.execute(f"SELECT count(*) FROM facts WHERE {sql}", params).fetchone()[0] == 1
    record = {"category": category, "agent_id": None, "run_id": None, "metadata": meta}
    assert in_sql == matches(filters, record), (filters, meta, category, sql)


@pytest.mark.parametrize(
    ("filters", "record", "expected"),
    [
        ({"city": "Lisbon"}, {"metadata": {"city": "Lisbon"}}, True),
        ({"rating": {"gte": 4}}, {"metadata": {"rating": 4.5}}, True),
        ({"rating": {"lt": 4}}, {"metadata": {"rating": 4.5}}, False),
        ({"tags": {"contains": "vegan"}}, {"metadata": {"tags": ["vegan", "food"]}}, True),
        ({"note": {"contains": "ve"}}, {"metadata": {"note": "loves"}}, True),
        ({"place.city": {"in": ["Porto", "Lisbon"]}},
         {"metadata": {"place": {"city": "Lisbon"}}}, True),
        ({"city": {"nin": ["Lisbon"]}}, {"metadata": {}}, True),
        ({"city": {"ne": "Lisbon"}}, {"metadata": {"city": "Porto"}}, True),
        ({"category": "food"}, {"category": "food", "metadata": {}}, True),
    ],
)
def test_examples(filters: dict[str, Any], record: dict[str, Any], expected: bool) -> None:
    assert matches(filters, record) is expected


@pytest.mark.parametrize(
    "bad",
    [
        "city=Lisbon",
        {"bad key!": 1},
        {"x'; DROP TABLE facts; --": 1},
        {"a": {"between": [1, 2]}},
        {"a": {"in": []}},
        {"a": {"in": "abc"}},
        {"a": {"gt": [1]}},
        {"a": {"contains": 3}},
        {"a": {}},
    ],
)
def test_invalid_filters_are_rejected(bad: Any) -> None:
    with pytest.raises(InvalidInputError):
        validate_filters(bad)
