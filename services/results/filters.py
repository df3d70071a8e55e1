"""The one results filter: which results a question is about, and the SQL that picks them.

In the style of Prefect's server filters (`prefect.server.schemas.filters`): a pydantic model whose fields
are all optional, and which turns itself into SQL (`as_sql_filter`) for the table it is applied to. The
results list and count (`GET /api/v1/results`) and the comparison (`GET /api/v1/compare`, which reads
`spec_device_stats` to choose its spec) all filter through it, so a filter means the same everywhere.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, Select, and_, true

from services.results.models import Result, SpecDeviceStats

FilteredTable = type[Result] | type[SpecDeviceStats]
S = TypeVar("S", bound=Select[Any])


class ResultFilter(BaseModel):
    """Results of these comparison columns; a field left None does not filter. `spec_hash` pins the spec."""

    model_config = ConfigDict(frozen=True)

    kind: str | None = None
    model: str | None = None
    dataset: str | None = None
    batch_size: int | None = None
    dtype: str | None = None
    spec_hash: str | None = None
    device_ids: tuple[str, ...] | None = None

    def conditions(self, table: FilteredTable = Result) -> list[ColumnElement[bool]]:
        """One SQL condition per field that is set, on `results` or `spec_device_stats`."""
        columns: dict[Any, Any] = {
            table.kind: self.kind,
            table.model_name: self.model,
            table.dataset: self.dataset,
            table.batch_size: self.batch_size,
            table.dtype: self.dtype,
            table.spec_hash: self.spec_hash,
        }
        found = [column == value for column, value in columns.items() if value is not None]
        if self.device_ids is not None:
            found.append(table.device_id.in_(list(self.device_ids)))
        return found

    def as_sql_filter(self, table: FilteredTable = Result) -> ColumnElement[bool]:
        """The filter as one SQL condition (true when no field is set)."""
        return and_(true(), *self.conditions(table))

    def apply(self, query: S, table: FilteredTable = Result) -> S:
        """`query` with this filter's conditions added."""
        return query.where(*self.conditions(table))

    def given(self) -> dict[str, Any]:
        """The fields that are set, in declaration order."""
        return self.model_dump(exclude_none=True)

    def describe(self) -> str:
        """The filters in words, for messages."""
        return ", ".join(f"{name}={value}" for name, value in self.given().items()) or "no filters"
