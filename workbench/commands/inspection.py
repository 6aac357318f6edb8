"""What a checkpoint holds, read from headers and JSON files only (no tensor data)."""

from __future__ import annotations

from collections import Counter

from workbench.checkpoint import Checkpoint


def describe(ckpt: Checkpoint) -> dict:
    dtypes = Counter()
    for info in ckpt.tensors.values():
        dtypes[info.dtype] += info.numel
    lineage = ckpt.lineage
    return {
        "path": str(ckpt.path),
        "architecture": ckpt.architecture,
        "model_type": ckpt.config.get("model_type"),
        "parameters": ckpt.num_parameters,
        "dtypes": dict(dtypes),
        "layers": ckpt.num_layers,
        "hidden_size": ckpt.text_config.get("hidden_size", ckpt.text_config.get("n_embd")),
        "vocab_size": ckpt.vocab_size,
        "tied_embeddings": ckpt.tie_word_embeddings,
        "tensors": len(ckpt.tensors),
        "shards": [{"file": p.name, "bytes": p.stat().st_size} for p in ckpt.shard_files],
        "chat_template": ckpt.chat_template is not None,
        "fingerprint": ckpt.fingerprint(),
        "lineage": lineage,
    }


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def format_description(d: dict) -> str:
    dtypes = ", ".join(f"{code} ({_human_count(n)})" for code, n in d["dtypes"].items())
    lines = [
        f"checkpoint     {d['path']}",
        f"architecture   {d['architecture']} ({d['model_type']})",
        f"parameters     {d['parameters']:,} ({_human_count(d['parameters'])})",
        f"dtypes         {dtypes}",
        f"layers         {d['layers']}",
        f"hidden size    {d['hidden_size']}",
        f"vocab          {d['vocab_size']}",
        f"tied embedding {'yes' if d['tied_embeddings'] else 'no'}",
        f"chat template  {'yes' if d['chat_template'] else 'no'}",
        f"tensors        {d['tensors']}",
        "shards         " + ", ".join(f"{s['file']} ({_human_bytes(s['bytes'])})" for s in d["shards"]),
        f"fingerprint    {d['fingerprint']}",
    ]
    lineage = d["lineage"]
    if lineage:
        lines.append(f"made by        {lineage.get('kind', '?')} at {lineage.get('created_utc', '?')}")
        for role, item in (lineage.get("inputs") or {}).items():
            lines.append(f"  input {role}: {item.get('path')} ({str(item.get('fingerprint'))[:12]})")
        for key, value in (lineage.get("parameters") or {}).items():
            lines.append(f"  {key} = {value}")
        for key, value in (lineage.get("metrics") or {}).items():
            lines.append(f"  metric {key} = {value}")
    else:
        lines.append("made by        unknown (no workbench.json)")
    return "\n".join(lines)
