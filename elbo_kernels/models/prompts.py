"""Prompt sets: a generic default and FlowGRPO's prompt-file formats (.txt, .jsonl with metadata)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

DEFAULT_PROMPTS = [
    "a photo of a cat sitting on a windowsill", "a red bicycle leaning against a brick wall",
    "a bowl of fresh fruit on a wooden table", "a lighthouse on a rocky coast at sunset",
    "a dog running on a sandy beach", "a cup of coffee next to an open book",
    "a snowy mountain under a clear blue sky", "a vintage car parked on a city street",
    "a field of sunflowers in summer", "a small wooden boat on a calm lake",
    "a horse grazing in a green meadow", "a bunch of balloons floating in the air",
    "a stack of pancakes with berries", "an owl perched on a tree branch at night",
    "a green apple and a yellow banana", "a teddy bear on a bed",
]
"""Generic prompts used when an SD3 task is given no prompt file."""


def read_prompts(path) -> Tuple[List[str], Dict[str, dict]]:
    """Prompts (and per-prompt metadata) from a file, in FlowGRPO's dataset formats.

    ``*.txt``: one prompt per line (blank lines skipped), metadata {}.
    ``*.jsonl``: one JSON object per line with a "prompt" key; the whole object is that
    prompt's metadata (GenEval's ``train_metadata.jsonl`` layout).

    Returns:
        (prompts, {prompt: metadata}).
    Raises:
        FileNotFoundError naming the path; ValueError naming the line for bad JSON / missing "prompt"
        or an empty file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts: List[str] = []
    metadata: Dict[str, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not valid JSON: {error}") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"{path}:{number} must be a JSON object with a string 'prompt'")
            prompts.append(record["prompt"])
            metadata[record["prompt"]] = record
        else:
            prompts.append(line)
            metadata.setdefault(line, {})
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts")
    return prompts, metadata
