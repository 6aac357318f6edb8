"""The step kinds a recipe can use: one module each, registered here by their recipe key.

Adding a kind is one new module with a ``StepKind`` subclass (see ``base``) and one line below.
"""

from workbench.recipe.kinds.base import RUNNER_OWNED, Processes, StepCall, StepKind
from workbench.recipe.kinds.distill import Distill
from workbench.recipe.kinds.evaluation import Eval
from workbench.recipe.kinds.import_model import Import
from workbench.recipe.kinds.merge import Merge
from workbench.recipe.kinds.merge_search import MergeSearch
from workbench.recipe.kinds.sft import Sft
from workbench.recipe.kinds.student import Student

KINDS: dict[str, StepKind] = {kind.name: kind for kind in (
    Import(),
    Sft(),
    Student(),
    Distill(),
    Merge(),
    MergeSearch(),
    Eval(),
)}

__all__ = ["KINDS", "RUNNER_OWNED", "Processes", "StepCall", "StepKind"]
