"""Tables written into a docs page: each section's text replaces what stands between its pair
of marker comments, `<!-- bench:KEY -->` and `<!-- /bench:KEY -->`; the prose around them
stays as it is."""

from __future__ import annotations

from pathlib import Path


def markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"


def missing_markers(page: Path, keys) -> list[str]:
    """The keys whose marker pair is not in the page, in order (all of them if it is absent)."""
    text = page.read_text(encoding="utf-8") if page.is_file() else ""
    return [key for key in keys if not all(m in text for m in markers(key))]


def replace_sections(text: str, sections: dict[str, str]) -> str:
    """text with each key's marked part replaced by sections[key] (ValueError where a pair is
    missing or out of order)."""
    for key, body in sections.items():
        begin, end = markers(key)
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"no {begin} ... {end} pair")
        text = text[: start + len(begin)] + "\n\n" + body.strip("\n") + "\n\n" + text[stop:]
    return text


def write_sections(page: Path, sections: dict[str, str]) -> None:
    page.write_text(replace_sections(page.read_text(encoding="utf-8"), sections), encoding="utf-8")
