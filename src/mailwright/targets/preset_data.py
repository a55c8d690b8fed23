"""Provider presets are data (targets/presets/<type>.json), loaded the same way for every type."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from mailwright.plugins import Preset

_RATE_FIELDS = ("rate_per_second", "rate_per_minute", "rate_per_day")
# Connection-pool settings a provider needs (Gmail closes a connection after about 100 messages).
_POOL_FIELDS = ("max_connections", "max_messages_per_connection", "idle_timeout")


def load_presets(kind: str) -> dict[str, Preset]:
    text = resources.files("mailwright.targets").joinpath(f"presets/{kind}.json").read_text(encoding="utf-8")
    raw: dict[str, dict[str, Any]] = json.loads(text)
    return {
        key: Preset(
            key=key,
            label=item["label"],
            settings={
                "server": item["server"],
                "port": item["port"],
                "security": item["security"],
                # A provider's published sending limits come with its preset.
                **{k: item[k] for k in (*_RATE_FIELDS, *_POOL_FIELDS) if k in item},
            },
            alternatives=item.get("alternatives", []),
            note=item.get("note", ""),
            help_url=item.get("help_url", ""),
        )
        for key, item in raw.items()
    }
