"""Launch options of a kind whose engine trains under torchrun (see docs/distributed.md):
``nproc: N`` runs the step as N data-parallel processes, ``fsdp: true`` (with ``nproc`` >= 2)
shards the model over them. The runner launches such a step as the ``Processes`` given by
``processes`` (``Runner._invoke``); without ``nproc`` it runs in the runner's process.
"""

from __future__ import annotations

from workbench.recipe.kinds.base import Processes, StepCall, as_strings


class TorchrunLaunch:
    """Mixin (before ``StepKind``) for a kind whose engine is the ``workbench COMMAND`` CLI."""

    command: str = ""  # the workbench subcommand that runs this kind's engine
    launch_options = {"fsdp": bool, "nproc": int}

    def check(self, step, problems) -> None:
        super().check(step, problems)
        nproc, fsdp = step.launch.get("nproc"), step.launch.get("fsdp")
        if isinstance(nproc, int) and nproc < 1:
            problems.add(f"expected at least 1 process, got {nproc}", step.group, "nproc")
        elif fsdp and nproc is None:
            problems.add("fsdp shards the model over several processes; add nproc: N (N >= 2)",
                         step.group, "fsdp")
        elif fsdp and isinstance(nproc, int) and nproc < 2:
            problems.add(f"fsdp shards the model over several processes: expected nproc >= 2, got {nproc}",
                         step.group, "nproc")
        elif isinstance(nproc, int) and not distributed_available():
            problems.add("this PyTorch build has no torch.distributed, which torchrun needs; "
                         "leave nproc out to run in one process", step.group, "nproc")

    def engine_values(self, call: StepCall) -> dict:
        """The engine config's values for this call: the parameters, where the output goes, and
        the launch options that are config fields (fsdp)."""
        values = {**as_strings(call.params), "out": str(call.out), "resume": call.resume,
                  "overwrite": not call.resume}
        if call.launch.get("fsdp"):
            values["fsdp"] = True
        return values

    def processes(self, call: StepCall) -> Processes | None:
        """``workbench COMMAND --config FILE`` on ``nproc`` processes, FILE holding what ``run``
        would give the engine."""
        if not call.launch.get("nproc"):
            return None
        return Processes(call.launch["nproc"], [self.command], self.engine_values(call))


def distributed_available() -> bool:
    """Whether this PyTorch has torch.distributed (imported only for a step that sets nproc)."""
    import torch.distributed

    return torch.distributed.is_available()
