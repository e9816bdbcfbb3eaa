"""Request bodies of the Label Studio ML backend protocol (extra fields are allowed: LS sends many)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class SetupRequest(_Body):
    project: str | int
    schema_: str = Field(alias="schema")
    hostname: Optional[str] = None
    access_token: Optional[str] = None
    extra_params: Optional[dict[str, Any]] = None


class PredictRequest(_Body):
    tasks: list[dict[str, Any]]
    project: Optional[str | int] = None
    label_config: Optional[str] = None
    params: Optional[dict[str, Any]] = None


class SearchRequest(_Body):
    project: str | int
    text: Optional[str] = None
    image: Optional[str] = None
    audio: Optional[str] = None
    item: Optional[str] = None
    k: int = Field(default=10, ge=1, le=1000)
    modality: Optional[str] = None
    label: Optional[str] = None
    has_label: Optional[bool] = None
    to_labelstudio: bool = False  # also make the hits the project's search tab in Label Studio
