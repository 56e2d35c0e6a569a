"""Write the JSON Schemas of every wire type into a directory (default ``contracts/``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vox_flow.contracts import wire_types


def render() -> dict[str, str]:
    """File name -> JSON text for every schema and the index, as they should be on disk."""
    files: dict[str, str] = {}
    index = []
    for name, model in wire_types().items():
        file = f"{name}.schema.json"
        schema = model.model_json_schema()
        schema["$id"] = f"vox_flow/{file}"
        files[file] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        index.append({"name": name, "file": file, "module": model.__module__})
    files["index.json"] = json.dumps({"version": 1, "schemas": index}, indent=2) + "\n"
    return files


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("contracts")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.json"):
        stale.unlink()
    for name, text in render().items():
        (out / name).write_text(text)
    print(f"wrote {len(render())} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
