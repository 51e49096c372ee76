"""The base of every validated, frozen object read from a scenario file."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class Model(BaseModel):
    """Frozen, validated; Python names carry units (``access_ttl_s``), files use the alias
    (``access_ttl``). Unknown keys are refused with the list of known ones."""

    # strict: a scenario file has real booleans and numbers; "yes" is not a boolean
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, validate_default=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = {f.alias or name for name, f in cls.model_fields.items()} | set(cls.model_fields)
            unknown = [k for k in data if k not in known]
            if unknown:
                shown = sorted(f.alias or n for n, f in cls.model_fields.items())
                hint = difflib.get_close_matches(str(unknown[0]), shown, n=1)
                guess = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ValueError(
                    f"unknown field {unknown[0]!r}{guess}; expected one of: {', '.join(shown)}"
                )
        return data

    def to_file_dict(self) -> dict[str, Any]:
        """The object as a scenario file would spell it (aliases, durations with units)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
