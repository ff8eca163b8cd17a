"""[post_lifecycle]: field names the feed can project, distinct roles, and the watch option."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from worker.lifecycle_settings import PostLifecycleSettings


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"visible_fields": ["media.url"]}, "top-level field name"),
        ({"visible_fields": ["$x"]}, "top-level field name"),
        ({"visible_fields": ["author_id"]}, "another purpose"),
        ({"visible_fields": ["text"]}, "not repeat text"),
        ({"visible_fields": ["a", "a"]}, "distinct"),
        ({"soft_delete_field": "author_snapshot"}, "another purpose"),
        ({"version_field": "rev", "soft_delete_field": "rev"}, "must differ"),
        ({"visible_fields": ["rev"], "version_field": "rev"}, "must differ"),
        ({"pre_images": "sometimes"}, "'off', 'when-available' or 'required'"),
    ],
)
def test_bad_lifecycle_settings_are_refused_naming_the_problem(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        PostLifecycleSettings(**fields)


@pytest.mark.parametrize(
    ("mode", "option"), [("off", None), ("when-available", "whenAvailable"), ("required", "required")]
)
def test_the_pre_images_mode_is_the_streams_full_document_before_change(
    mode: str, option: str | None
) -> None:
    assert PostLifecycleSettings(pre_images=mode).before_change == option  # type: ignore[arg-type]
