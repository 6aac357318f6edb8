"""Metrics out of the loop: RUN_DIR/events.jsonl (OpenAI's fine-tuning fields), TensorBoard
event files when tensorboard is installed, and a loss-curve PNG at the end."""

from __future__ import annotations

import io
import json
from pathlib import Path

from workbench import atomic

EVENTS_FILE = "events.jsonl"
PLOT_FILE = "loss.png"


class EventLog:
    """Appends one JSON object per step; on resume, drops what came after the checkpoint."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = run_dir / EVENTS_FILE
        self.tensorboard = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        kept = [e for e in read_events(self.path) if e["step"] <= resume_step] if resume_step else []
        atomic.write_text(self.path, "".join(json.dumps(e) + "\n" for e in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)

    def write(self, event: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
        if self.tensorboard is not None:
            for key, value in event.items():
                if key not in ("step", "total_steps") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, event["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_events(path: Path) -> list[dict]:
    """The logged events; a last line cut short by a kill mid-append is left out."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines[:-1]]
    try:
        events += [json.loads(line) for line in lines[-1:]]
    except json.JSONDecodeError:
        pass
    return events


def plot_loss_curve(run_dir: Path, out: Path | None = None, title: str | None = None) -> Path | None:
    """Train (and validation) loss against step from RUN_DIR/events.jsonl, as ``out``
    (RUN_DIR/loss.png by default); None when no loss was logged."""
    events = read_events(run_dir / EVENTS_FILE)
    train = [(e["step"], e["train_loss"]) for e in events if e.get("train_loss") is not None]
    valid = [(e["step"], e["valid_loss"]) for e in events if e.get("valid_loss") is not None]
    if not train and not valid:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label, style in ((train, "train loss", "-"), (valid, "valid loss", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = out or run_dir / PLOT_FILE
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic.write_bytes(out, png.getvalue())
    return out
